"""The plan of a run (printed at start) and `robofm-plan`, the inverse question: for a compute budget and a
dataset, which model size and how many steps (Chinchilla: ~20 tokens per parameter, C = 6 N D)."""

from __future__ import annotations

import argparse
import logging
import math

from rich.console import Console
from rich.table import Table

from robofm.models.config import SIZES, ModelConfig
from robofm.tokenization.build import epoch_tokens

log = logging.getLogger(__name__)
TOKENS_PER_PARAM = 20.0
RATIO_RANGE = (5.0, 500.0)


PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0}  # dense


def peak_flops(device) -> float:
    """Dense bf16 peak FLOP/s of a known GPU (0 for the CPU and unknown GPUs: no MFU is reported)."""
    import torch

    if device.type != "cuda":
        return 0.0
    name = torch.cuda.get_device_name(device)
    return next((t * 1e12 for key, t in PEAK_BF16_TFLOPS.items() if key in name), 0.0)


def non_embedding_parameters(cfg: ModelConfig) -> int:
    return cfg.depth * (4 * cfg.dim**2 + 3 * cfg.dim * cfg.ffn_dim)


def plan_rows(cfg, model, builder, dataset, precision: str | None = None) -> list[tuple[str, str]]:
    """The plan's (name, value) rows; `precision` is what trainer.precision resolved to and why ("bf16: ...")."""
    n = sum(p.numel() for p in model.parameters())
    epoch = epoch_tokens(dataset, builder)
    per_sample, windows = epoch.tokens_per_sample, epoch.windows
    steps = cfg.trainer.max_steps
    world = dataset.world_size
    trained = steps * cfg.data.batch_size * world * per_sample
    ratio = trained / n
    flops = 6 * n * trained
    rows = [
        ("parameters", f"{n / 1e6:,.2f}M ({non_embedding_parameters(model.cfg) / 1e6:,.2f}M non-embedding)"),
        ("tokens per sample", f"{per_sample:,}"),
        ("windows per epoch", f"{windows:,} ({epoch.tokens / 1e6:,.2f}M tokens)"),
        ("tokens trained", f"{trained / 1e6:,.2f}M over {steps:,} steps of {cfg.data.batch_size} x {world} samples "
                           f"({trained / max(epoch.tokens, 1):.1f} epochs)"),
        ("tokens / parameter", f"{ratio:.1f} (Chinchilla guide ~{TOKENS_PER_PARAM:.0f})"),
        ("compute", f"6ND = {flops:.3g} FLOPs"),
    ]
    if precision:
        rows.append(("precision", precision))
    mix = dataset.mixture()
    if len(mix) > 1:  # what each store of the mixture gets, and what the sampler actually draws
        rows += [(f"mixture {i}", f"{m['store']}: {m['sampled']:.1%} of {m['draws']:,} draws (weight "
                                  f"{m['weight']:.1%}; {m['episodes']:,} episodes, {m['windows']:,} windows)")
                 for i, m in enumerate(mix)]  # fmt: skip
    if not RATIO_RANGE[0] <= ratio <= RATIO_RANGE[1]:
        rows.append(("warning", f"tokens/parameter {ratio:.1f} is outside [{RATIO_RANGE[0]:.0f}, {RATIO_RANGE[1]:.0f}]: "
                                "the model is " + ("under-trained" if ratio < RATIO_RANGE[0] else "small for this data")))
    return rows


def print_plan(cfg, model, builder, dataset, console: Console | None = None, precision: str | None = None) -> None:
    table = Table(title="robofm-train plan", show_header=False)
    for k, v in plan_rows(cfg, model, builder, dataset, precision):
        table.add_row(k, v, style="yellow" if k == "warning" else None)
        if k == "warning":
            log.warning(v)
    (console or Console(stderr=True)).print(table)


def suggest(flops: float, dataset_tokens: float, io: dict) -> list[dict]:
    """Each size with the tokens and compute it would use at ~20 tokens/parameter, marking the one whose
    compute-optimal budget is closest to `flops` (and how many epochs of the dataset that is)."""
    n_opt = math.sqrt(flops / (6 * TOKENS_PER_PARAM))
    rows = []
    for size in SIZES:
        n = ModelConfig.sized(size, **io).expected_parameters()
        tokens = flops / (6 * n)
        rows.append({"size": size, "parameters": n, "tokens": tokens, "tokens_per_param": tokens / n,
                     "epochs": tokens / dataset_tokens if dataset_tokens else float("nan"),
                     "distance": abs(math.log(n / n_opt))})  # fmt: skip
    best = min(rows, key=lambda r: r["distance"])
    for r in rows:
        r["best"] = r is best
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="robofm-plan", description=__doc__.split("\n\n")[0])
    p.add_argument("--flops", type=float, help="compute budget in FLOPs")
    p.add_argument("--gpu-hours", type=float, help="compute budget in GPU hours (with --tflops and --mfu)")
    p.add_argument("--tflops", type=float, default=989.0, help="peak TFLOP/s of one GPU (H100 bf16 dense: 989)")
    p.add_argument("--mfu", type=float, default=0.35, help="expected model FLOPs utilization")
    p.add_argument("--store", nargs="+", required=True, help="the episode store(s) to train on")
    p.add_argument("--window-len", type=int, default=4)
    p.add_argument("--stride", type=int, default=2)
    p.add_argument("--patch-size", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=256, help="global samples per step, to turn tokens into steps")
    args = p.parse_args(argv)
    from robofm.data.dataset import EpisodeWindowDataset
    from robofm.errors import UsageError
    from robofm.models.config import model_config
    from robofm.tokenization.build import TokenizerConfig, build_sequence_builder
    from robofm.tokenization.sequence import SequenceConfig

    if (args.flops is None) == (args.gpu_hours is None):
        raise SystemExit("robofm-plan: give exactly one of --flops or --gpu-hours")
    flops = args.flops or args.gpu_hours * 3600 * args.tflops * 1e12 * args.mfu
    try:
        ds = EpisodeWindowDataset(args.store, args.window_len, args.stride, split="train")
        builder = build_sequence_builder(ds, SequenceConfig(window_len=args.window_len, stride=args.stride),
                                         TokenizerConfig(patch_size=args.patch_size))  # fmt: skip
    except UsageError as e:
        raise SystemExit(f"robofm-plan: {e}") from e
    cfg = model_config(builder, "debug")
    io = {k: getattr(cfg, k) for k in ("vocab_size", "patch_dim", "state_dim", "max_cameras", "max_patches")}
    epoch = epoch_tokens(ds, builder)
    per_sample, dataset_tokens = epoch.tokens_per_sample, epoch.tokens
    table = Table(title=f"robofm-plan: {flops:.3g} FLOPs on {dataset_tokens / 1e6:,.2f}M tokens per epoch")
    for col in ("size", "parameters", "tokens", "tokens/param", "epochs", "steps"):
        table.add_column(col, justify="right")
    for r in suggest(flops, dataset_tokens, io):
        steps = r["tokens"] / (per_sample * args.batch_size)
        table.add_row(("-> " if r["best"] else "") + r["size"], f"{r['parameters'] / 1e6:,.1f}M",
                      f"{r['tokens'] / 1e6:,.1f}M", f"{r['tokens_per_param']:,.1f}", f"{r['epochs']:,.1f}",
                      f"{steps:,.0f}", style="bold" if r["best"] else None)  # fmt: skip
    Console().print(table)
