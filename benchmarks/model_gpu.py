"""GPU model benchmark: MFU of a robofm training step (bf16 autocast, FlexAttention, torch.compile per block).

A synthetic batch in the layout of the default SequenceConfig (K=4 steps at stride 2, NOISY blocks for frames 1..K,
32 text slots) with 2 cameras of 96x96 pixels at the default 8-pixel patch and 7-dim actions: L=2398 tokens per
sample. One step: the real Objective's forward and backward and a fused AdamW step. MFU: the step's model FLOPs
(benchmarks/model.py `robofm_step_flops`, full L x L attention as in PaLM's convention; also given counting only
the (query, key) pairs the mask allows) over the step time, as a fraction of --peak-tflops (dense bf16; H100 SXM and
H200: 989). Also times building the FlexAttention block mask, which Backbone.forward does eagerly on every
forward. Writes mfu.json to $OUT when it is set.

    .venv/bin/python benchmarks/model_gpu.py
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from model import robofm_step_flops  # noqa: E402 -- the same FLOP count as the CPU benchmark

TARGET_MFU = 0.35


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="base")
    p.add_argument("--batch-size", type=int, default=8, help="samples per step (8 x 2398 tokens fit an 80 GB GPU)")
    p.add_argument("--window", type=int, default=4, help="K: observation steps")
    p.add_argument("--cameras", type=int, default=2)
    p.add_argument("--patches", type=int, default=144, help="patches per camera and frame (96x96 at patch 8)")
    p.add_argument("--patch-dim", type=int, default=192, help="values per patch (8 x 8 x 3)")
    p.add_argument("--action-len", type=int, default=14, help="action slots per step (binning: stride x action dim)")
    p.add_argument("--state-dim", type=int, default=7)
    p.add_argument("--text-len", type=int, default=32)
    p.add_argument("--attention", choices=["flex", "sdpa"], default="flex")
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps (compilation)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per measurement (3 measurements, median)")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak of the GPU (H100 SXM: 989)")
    p.add_argument("--device", default="cuda", help="cuda; cpu only as a smoke test (--attention sdpa --no-compile)")
    return p.parse_args(argv)


def synthetic_sequence(args: argparse.Namespace, vocab, device: str):
    """A Sequence of random tokens, patches and states in the layout SequenceBuilder gives such windows (every text
    slot filled, no padding)."""
    from robofm.models.backbone import TokenMeta
    from robofm.tokenization.layout import Layout, Vocab
    from robofm.tokenization.sequence import IGNORE, TARGET_ACTION, TARGET_TEXT, Sequence

    k, b = args.window, args.batch_size
    lay = Layout(k, args.cameras, args.patches, args.text_len, args.action_len, tuple(range(1, k + 1)))
    g = torch.Generator().manual_seed(0)
    ids = torch.full((b, len(lay)), Vocab.PAD, dtype=torch.long)
    ids[:, 0], ids[:, 1] = Vocab.BOS, vocab.embodiment(0)
    ids[:, lay.text_index] = torch.randint(vocab.text_offset, vocab.action_offset, (b, args.text_len), generator=g)
    ids[:, lay.act_index] = torch.randint(vocab.action_offset, vocab.size, (b, *lay.act_index.shape), generator=g)
    targets, kind = torch.full_like(ids, IGNORE), torch.zeros_like(ids)
    for index, target_kind in ((lay.text_index, TARGET_TEXT), (lay.act_index, TARGET_ACTION)):
        targets[:, index - 1], kind[:, index - 1] = ids[:, index], target_kind
    patches = torch.zeros(b, len(lay), args.patch_dim)
    patches[:, lay.obs_index] = torch.randn(b, *lay.obs_index.shape, args.patch_dim, generator=g)
    state = torch.zeros(b, len(lay), 2 * args.state_dim)
    state[:, lay.state_index] = torch.randn(b, k, 2 * args.state_dim, generator=g)
    noisy = torch.from_numpy(lay.noisy_index.reshape(-1))
    rows = {name: torch.from_numpy(getattr(lay, name)).expand(b, -1)
            for name in ("modality", "camera", "patch", "pos", "block", "group")}  # fmt: skip
    meta = TokenMeta(rows.pop("block"), rows.pop("group"), torch.ones(b, len(lay), dtype=torch.bool))
    seq = Sequence(ids=ids, patches=patches, state=state, noise_level=torch.zeros(b, len(lay)), targets=targets,
                   target_kind=kind, meta=meta, frame_x0=torch.randn(b, len(noisy), args.patch_dim, generator=g),
                   frame_prev=torch.randn(b, len(noisy), args.patch_dim, generator=g),
                   frame_valid=torch.ones(b, len(noisy), dtype=torch.bool), noisy_index=noisy,
                   noisy_block=torch.arange(k).repeat_interleave(args.cameras * args.patches),
                   actions=torch.randn(b, k, 2 * args.action_len, generator=g), sample_key=torch.arange(b), **rows)  # fmt: skip
    return seq.to(device)


def timed(fn, device: str) -> float:
    """Seconds of one call of fn, synchronized on the GPU."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def summary(args: argparse.Namespace, model, seq, times: list[float], warmup_s: float, mask_s: float,
            density: float) -> dict:  # fmt: skip
    """The JSON record: step time, tokens/s and MFU, with full L x L attention FLOPs and with allowed pairs only."""
    cfg, (b, length) = model.cfg, seq.ids.shape
    med, flops = statistics.median(times), robofm_step_flops(cfg, seq)
    attn, peak = 12 * b * cfg.depth * cfg.dim * length**2, args.peak_tflops * 1e12
    cuda = args.device == "cuda"
    return {"device": torch.cuda.get_device_name() if cuda else args.device, "size": args.size,
            "params": model.num_parameters(), "batch": b, "length": length, "attention": args.attention,
            "compile": not args.no_compile, "step_s": med, "best_step_s": min(times), "warmup_s": warmup_s,
            "tokens_per_s": b * length / med, "block_mask_s": mask_s, "step_tflop": flops / 1e12,
            "mask_density": density, "mfu": flops / med / peak,
            "mfu_allowed_pairs": (flops - attn * (1 - density)) / med / peak, "peak_tflops": args.peak_tflops,
            "max_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
            "torch": torch.__version__}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("benchmarks/model_gpu.py needs a CUDA device (torch.cuda.is_available() is False)", file=sys.stderr)
        return 2
    from robofm.models.backbone import TokenMeta, allowed, flex_block_mask
    from robofm.models.config import ModelConfig
    from robofm.models.robofm import RobofmModel
    from robofm.objectives.objective import Objective, ObjectiveConfig
    from robofm.tokenization.layout import Vocab

    torch.manual_seed(0)
    torch.set_float32_matmul_precision("high")
    vocab = Vocab(256, 256)  # byte text, 256 action bins, 16 embodiment slots
    cfg = ModelConfig.sized(args.size, vocab_size=vocab.size, patch_dim=args.patch_dim, state_dim=args.state_dim,
                            max_cameras=args.cameras, max_patches=args.patches, attention=args.attention)  # fmt: skip
    model = RobofmModel(cfg).to(args.device)
    if not args.no_compile:  # per block, as torchtitan does; the block mask is built eagerly once per step
        for block in model.backbone.blocks:
            block.compile()
    seq = synthetic_sequence(args, vocab, args.device)
    objective, opt = Objective(ObjectiveConfig()), torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)

    def step() -> None:  # no .item(): only the Objective's own host syncs (masks, .any(), .tolist()) stall it
        opt.zero_grad(set_to_none=True)
        with torch.autocast(args.device, dtype=torch.bfloat16):
            loss = objective(model, seq)["total"]
        loss.backward()
        opt.step()

    warmup_s = sum(timed(step, args.device) for _ in range(args.warmup))
    times = [timed(lambda: [step() for _ in range(args.steps)], args.device) / args.steps for _ in range(3)]
    mask_s = 0.0
    if args.attention == "flex":  # built on every forward, outside the compiled blocks
        mask_s = statistics.median(timed(lambda: flex_block_mask(seq.meta, seq.meta), args.device) for _ in range(5))
    first = TokenMeta(*(t[:1] for t in seq.meta.astuple()))
    density = allowed(first, first).float().mean().item()  # the fraction of (query, key) pairs attended
    res = summary(args, model, seq, times, warmup_s, mask_s, density)
    print(f"| {res['device']} | {args.size} ({res['params'] / 1e6:.0f}M) | {res['batch']} x {res['length']} tokens | "
          f"{res['step_s'] * 1e3:.0f} ms/step (block mask {mask_s * 1e3:.1f} ms) | {res['tokens_per_s']:.0f} tokens/s "
          f"| MFU {100 * res['mfu']:.1f}% ({100 * res['mfu_allowed_pairs']:.1f}% counting allowed pairs only) | "
          f"target >= {100 * TARGET_MFU:.0f}% | {'pass' if res['mfu'] >= TARGET_MFU else 'FAIL'} |")  # fmt: skip
    print(json.dumps(res, indent=1))
    if os.environ.get("OUT"):
        (Path(os.environ["OUT"]) / "mfu.json").write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
