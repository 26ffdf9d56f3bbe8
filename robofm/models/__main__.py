"""`python -m robofm.models [--store STORE ...]`: the model sizes and their parameter counts.

With stores, the vocabulary, patch, state and camera shapes come from a builder for those stores (pixel
patches, binning with 256 bins); without, from a typical setup (2 cameras at 96x96 in 16x16 patches)."""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.table import Table

from robofm.models.config import SIZES, ModelConfig

TYPICAL = dict(vocab_size=533, patch_dim=768, state_dim=14, max_cameras=2, max_patches=36)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--store", nargs="*", default=[], help="episode stores the model would train on")
    p.add_argument("--patch-size", type=int, default=16, help="pixel patch size for --store (default 16)")
    args = p.parse_args(argv)
    io = TYPICAL
    if args.store:
        from robofm.data.dataset import EpisodeWindowDataset
        from robofm.models.config import model_config
        from robofm.tokenization.build import TokenizerConfig, build_sequence_builder
        from robofm.tokenization.sequence import SequenceConfig

        builder = build_sequence_builder(EpisodeWindowDataset(args.store, 4, 2, split=None), SequenceConfig(),
                                         TokenizerConfig(patch_size=args.patch_size))  # fmt: skip
        cfg = model_config(builder, "debug")
        io = dict(vocab_size=cfg.vocab_size, patch_dim=cfg.patch_dim, state_dim=cfg.state_dim,
                  max_cameras=cfg.max_cameras, max_patches=cfg.max_patches)  # fmt: skip
    table = Table(title="robofm model sizes (" + ", ".join(f"{k} {v}" for k, v in io.items()) + ")")
    for col in ("size", "dim", "depth", "heads", "ffn", "parameters", "non-embedding"):
        table.add_column(col, justify="right")
    for size in SIZES:
        cfg = ModelConfig.sized(size, **io)
        total = cfg.expected_parameters()
        non_embedding = cfg.depth * (4 * cfg.dim**2 + 3 * cfg.dim * cfg.ffn_dim)
        table.add_row(size, str(cfg.dim), str(cfg.depth), str(cfg.heads), str(cfg.ffn_dim), f"{total / 1e6:,.2f}M",
                      f"{non_embedding / 1e6:,.2f}M")  # fmt: skip
    Console().print(table)


if __name__ == "__main__":
    main()
