"""Model benchmark on the CPU: robofm's training step against a plain causal Transformer, FLOP/s against the
measured matmul peak, and imagination with and without the KV cache, in one run.

On a fixed batch of real windows (the demo store, converted from datasets/metaworld_mt10 when missing):
  1. training: forward+backward tokens/s of RobofmModel under the real Objective (block-causal boolean mask,
     multimodal embeddings, token head at target positions, frame head at NOISY positions) against a plain
     causal Transformer of the same width, depth, heads, FFN, vocabulary and token count (SDPA is_causal, token
     head and cross-entropy at every position), steps interleaved in ABBA order;
  2. FLOP/s: both models' analytic step FLOPs over their step time, as a fraction of the best fp32 matmul
     throughput measured in the same run on the model's own matmul shapes;
  3. imagination: frames/s of `imagine` at horizon H with and without the KV cache, rollouts in ABBA order, and
     the largest difference between the two rollouts.
Every comparison runs side by side in one process and is reported as a ratio, since the machine is shared.

    .venv/bin/python benchmarks/model.py --write-results
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from common import REPO, cpu_name, load_now, publish, robofm_revision, verdict
from torch import Tensor, nn
from torch.utils.data import default_collate

SECTION = "## Model"
TARGET_TRAIN_RATIO, TARGET_CACHE_SPEEDUP = 0.8, 3.0
DEMO_SRC = REPO / "datasets" / "metaworld_mt10"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--store", type=Path, default=REPO / "outputs" / "demo" / "store",
                   help="episode store (default: the demo store, converted from datasets/metaworld_mt10 if missing)")  # fmt: skip
    p.add_argument("--size", default="small", help="model size of the training comparison")
    p.add_argument("--window", type=int, default=4, help="K: observation steps per window")
    p.add_argument("--stride", type=int, default=2, help="s: frames between steps")
    p.add_argument("--patch", type=int, default=16, help="pixel patch size (96x96 frames: 36 patches per camera)")
    p.add_argument("--text-len", type=int, default=32, help="task-text slots")
    p.add_argument("--batch-size", type=int, default=4, help="samples per training step")
    p.add_argument("--rounds", type=int, default=4, help="timed training steps per model, in ABBA order")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads (default 1: on a shared 2-core machine, 2 threads beside one busy "
                        "process ran slower than 1, as each OpenMP region waits for the busy core)")  # fmt: skip
    p.add_argument("--imagine-size", default="small", help="model size of the imagination comparison")
    p.add_argument("--horizon", type=int, default=16, help="H: imagined frames per rollout")
    p.add_argument("--sampler-steps", type=int, default=10, help="denoising steps per imagined frame")
    p.add_argument("--imagine-batch", type=int, default=1, help="rollouts run together")
    p.add_argument("--imagine-repeats", type=int, default=1, help="rollouts each way, in ABBA order; the best counts")
    p.add_argument("--profile", action="store_true", help="also print torch.profiler tables of one step of each model")
    p.add_argument("--write-results", action="store_true", help=f"update the '{SECTION}' section of RESULTS.md")
    return p.parse_args(argv)


# --------------------------------------------------------------------------- the plain baseline


class PlainBlock(nn.Module):
    """A pre-norm decoder block: RMSNorm, causal SDPA (is_causal), RMSNorm, SwiGLU; no biases."""

    def __init__(self, dim: int, heads: int, ffn_dim: int, eps: float) -> None:
        super().__init__()
        self.heads = heads
        self.attn_norm, self.mlp_norm = nn.RMSNorm(dim, eps=eps), nn.RMSNorm(dim, eps=eps)
        self.qkv, self.out = nn.Linear(dim, 3 * dim, bias=False), nn.Linear(dim, dim, bias=False)
        self.gate_up, self.down = nn.Linear(dim, 2 * ffn_dim, bias=False), nn.Linear(ffn_dim, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        b, length, d = x.shape
        q, k, v = self.qkv(self.attn_norm(x)).view(b, length, 3, self.heads, d // self.heads).unbind(2)
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
        x = x + self.out(y.transpose(1, 2).reshape(b, length, d))  # (B, L, D)
        gate, up = self.gate_up(self.mlp_norm(x)).chunk(2, dim=-1)
        return x + self.down(F.silu(gate) * up)


class PlainCausalTransformer(nn.Module):
    """nanoGPT-style language model of robofm's width, depth, heads and FFN: token and learned position
    embeddings, PlainBlocks, a final RMSNorm and a token head; `forward(ids [B, L])` -> next-token loss over
    every position."""

    def __init__(self, vocab_size: int, max_len: int, dim: int, depth: int, heads: int, ffn_dim: int,
                 eps: float) -> None:  # fmt: skip
        super().__init__()
        self.tok_emb, self.pos_emb = nn.Embedding(vocab_size, dim), nn.Embedding(max_len, dim)
        self.blocks = nn.ModuleList(PlainBlock(dim, heads, ffn_dim, eps) for _ in range(depth))
        self.norm, self.head = nn.RMSNorm(dim, eps=eps), nn.Linear(dim, vocab_size, bias=False)
        for m in self.modules():
            if isinstance(m, nn.Linear | nn.Embedding):
                nn.init.normal_(m.weight, std=0.02)

    def forward(self, ids: Tensor) -> Tensor:
        x = self.tok_emb(ids) + self.pos_emb.weight[: ids.shape[1]]
        for block in self.blocks:
            x = block(x)
        logits = self.head(self.norm(x))  # (B, L, V)
        return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten())


# --------------------------------------------------------------------------- data and models


def ensure_store(store: Path) -> Path:
    """The store; when missing, converted from the demo dataset (what `make demo` does)."""
    if not (store / "manifest.json").exists():
        cmd = [str(REPO / ".venv" / "bin" / "robofm-convert"), "lerobot", str(DEMO_SRC), "--out", str(store),
               "--overwrite"]  # fmt: skip
        print("converting the demo dataset:", shlex.join(cmd), flush=True)
        subprocess.run(cmd, check=True, cwd=REPO)
    return store


def make_builder(store: Path, args: argparse.Namespace):
    from robofm.data.dataset import EpisodeWindowDataset
    from robofm.tokenization.build import TokenizerConfig, build_sequence_builder
    from robofm.tokenization.sequence import SequenceConfig

    ds = EpisodeWindowDataset(store, args.window, args.stride, split=None, seed=0)
    seq = SequenceConfig(window_len=args.window, stride=args.stride, noisy="all", text_len=args.text_len)
    return ds, build_sequence_builder(ds, seq, TokenizerConfig(patch_size=args.patch))


def robofm_model(builder, size: str):
    from robofm.models.config import model_config
    from robofm.models.robofm import RobofmModel

    torch.manual_seed(0)
    model = RobofmModel(model_config(builder, size))
    nn.init.normal_(model.frame_head.weight, std=0.02)  # the zero-initialised head would make every frame zero
    return model


def plain_model(cfg, length: int) -> PlainCausalTransformer:
    torch.manual_seed(0)
    return PlainCausalTransformer(cfg.vocab_size, length, cfg.dim, cfg.depth, cfg.heads, cfg.ffn_dim, cfg.norm_eps)


# --------------------------------------------------------------------------- FLOPs and the matmul peak


def robofm_step_flops(cfg, seq) -> float:
    """Forward+backward FLOPs of one Objective step, counting matmuls as they run:
    6 T (depth (4 d^2 + 3 d f))            block weights at every one of T = B L tokens
    + 4 T d (patch_dim + 2 Ds + 256)       patch, state and time-MLP input projections at every token (no input
                                           gradient), + 6 T d^2 the time MLP's second layer
    + 6 d (n_target V + n_noisy patch_dim) token head at target positions, frame head at NOISY positions
    + 12 B depth d L^2                     attention scores and values (the full L x L, as SDPA computes it)"""
    b, length = seq.ids.shape
    d, f, t = cfg.dim, cfg.ffn_dim, b * length
    blocks = 6 * t * cfg.depth * (4 * d * d + 3 * d * f)
    inputs = 4 * t * d * (cfg.patch_dim + 2 * cfg.state_dim + 256) + 6 * t * d * d
    heads = 6 * d * (int((seq.targets != -100).sum()) * cfg.vocab_size + b * len(seq.noisy_index) * cfg.patch_dim)
    return blocks + inputs + heads + 12 * b * cfg.depth * d * length**2


def plain_step_flops(cfg, b: int, length: int) -> float:
    """6 T (depth (4 d^2 + 3 d f) + d V) + 12 B depth d L^2 (the same convention, full L x L attention)."""
    d, f, t = cfg.dim, cfg.ffn_dim, b * length
    return 6 * t * (cfg.depth * (4 * d * d + 3 * d * f) + d * cfg.vocab_size) + 12 * b * cfg.depth * d * length**2


def matmul_peak(cfg, tokens: int, repeats: int = 5) -> dict:
    """The best fp32 matmul FLOP/s over the model's own GEMM shapes (qkv, gate_up, down) and a square 1024^3,
    best of `repeats` each."""
    d, f = cfg.dim, cfg.ffn_dim
    shapes = {"qkv": (tokens, d, 3 * d), "gate_up": (tokens, d, 2 * f), "down": (tokens, f, d),
              "1024^3": (1024, 1024, 1024)}  # fmt: skip
    out = {}
    for name, (m, k, n) in shapes.items():
        a, w = torch.randn(m, k), torch.randn(k, n)
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            torch.mm(a, w)
            best = min(best, time.perf_counter() - start)
        out[name] = 2 * m * k * n / best
    return out


# --------------------------------------------------------------------------- training throughput


def train_steps(models: dict, rounds: int) -> dict:
    """Seconds of each forward+backward step, one warm-up step each, then `rounds` steps per model in ABBA order
    (A B, B A, ...), so that load from other jobs drifting over the run weighs on both sides alike."""
    times = {name: [] for name in models}
    for step in models.values():
        step()
    for r in range(rounds):
        for name in list(models)[:: 1 if r % 2 == 0 else -1]:
            start = time.perf_counter()
            models[name]()
            times[name].append(time.perf_counter() - start)
    return times


def step_fn(model: nn.Module, loss_fn):
    def step() -> None:
        model.zero_grad(set_to_none=True)
        loss_fn().backward()

    return step


def profile_step(name: str, step, rows: int = 18) -> None:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    print(f"\n{name}: one forward+backward step, by self CPU time")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


def bench_training(builder, ds, args: argparse.Namespace) -> dict:
    from robofm.objectives.objective import Objective, ObjectiveConfig

    seq = builder.build(default_collate([ds[i] for i in range(args.batch_size)]))
    b, length = seq.ids.shape
    model = robofm_model(builder, args.size).train()
    cfg = model.cfg
    plain = plain_model(cfg, length).train()
    objective, gen = Objective(ObjectiveConfig()), torch.Generator().manual_seed(0)
    ids = torch.randint(0, cfg.vocab_size, (b, length), generator=gen)
    steps = {"robofm": step_fn(model, lambda: objective(model, seq, gen)["total"]),
             "plain": step_fn(plain, lambda: plain(ids))}  # fmt: skip
    peak_before = matmul_peak(cfg, b * length)
    times = train_steps(steps, args.rounds)
    peak_after = matmul_peak(cfg, b * length)
    if args.profile:
        for name, step in steps.items():
            profile_step(name, step)
    peak = {k: max(peak_before[k], peak_after[k]) for k in peak_before}
    flops = {"robofm": robofm_step_flops(cfg, seq), "plain": plain_step_flops(cfg, b, length)}
    res = {"cfg": cfg, "batch": b, "length": length, "params": model.num_parameters(), "peak": peak,
           "peak_best": max(peak.values()), "modalities": modality_counts(seq)}  # fmt: skip
    for name, ts in times.items():  # interference from other jobs only adds time: the best step is the model's
        best = min(ts)
        res[name] = {"times": ts, "median": statistics.median(ts), "best": best, "tps": b * length / best,
                     "flops": flops[name], "flops_per_s": flops[name] / best}  # fmt: skip
    res["ratio"] = res["robofm"]["tps"] / res["plain"]["tps"]
    return res


def modality_counts(seq) -> str:
    from robofm.tokenization.layout import ACTION, NOISY, OBS, SPECIAL, STATE, TEXT

    names = {SPECIAL: "special", TEXT: "text", OBS: "obs", STATE: "state", ACTION: "action", NOISY: "noisy"}
    row = seq.modality[0]
    return ", ".join(f"{int((row == m).sum())} {n}" for m, n in names.items())


# --------------------------------------------------------------------------- imagination


def bench_imagination(builder, ds, args: argparse.Namespace) -> dict:
    """Frames/s of --imagine-batch rollouts of --horizon frames from a K-step context, with the KV cache and
    without (best of --imagine-repeats each, in ABBA order), and the largest difference between the two (same
    noise)."""
    from robofm.models.diffusion import FrameDiffusion
    from robofm.models.sampling import imagine

    k = args.window
    batch = default_collate([ds[i] for i in range(args.imagine_batch)])
    context = {**batch, "frames": batch["frames"][:, :, :k], "state": batch["state"][:, :k],
               "actions": batch["actions"][:, :k]}  # fmt: skip
    reps = -(-args.horizon // k)
    future = batch["actions"].repeat(1, reps, 1, 1)[:, : args.horizon]  # (B, H, s, Da)
    model = robofm_model(builder, args.imagine_size).eval()
    for use_cache in (True, False):  # warm-up: one frame, one sampler step each way
        imagine(model, builder, FrameDiffusion(), context, future[:, :1], sampler_steps=1, use_cache=use_cache)
    runs = {"cache": [], "nocache": []}
    for r in range(args.imagine_repeats):  # ABBA: cache, none, none, cache, ...
        for use_cache in (True, False)[:: 1 if r % 2 == 0 else -1]:
            start = time.perf_counter()
            x = imagine(model, builder, FrameDiffusion(), context, future, sampler_steps=args.sampler_steps,
                        generator=torch.Generator().manual_seed(0), use_cache=use_cache)  # fmt: skip
            runs["cache" if use_cache else "nocache"].append((time.perf_counter() - start, x))
    out = {}
    for name, rs in runs.items():
        seconds, x = min(rs, key=lambda run: run[0])
        out[name] = {"x": x, "seconds": seconds, "all": [t for t, _ in rs], "fps": x.shape[0] * x.shape[1] / seconds}
    diff = (out["cache"]["x"] - out["nocache"]["x"]).abs().max().item()
    scale = out["nocache"]["x"].abs().max().item()
    return {**out, "speedup": out["cache"]["fps"] / out["nocache"]["fps"], "max_diff": diff, "scale": scale,
            "shape": tuple(out["cache"]["x"].shape), "params": model.num_parameters()}  # fmt: skip


# --------------------------------------------------------------------------- report


def machine(threads: int) -> dict:
    cpu = cpu_name()
    return {"cpu": cpu, "cores": os.cpu_count(), "affinity": len(os.sched_getaffinity(0)), "threads": threads,
            "python": platform.python_version(), "torch": torch.__version__, "os": platform.platform(),
            "load": load_now(), "robofm": robofm_revision()}  # fmt: skip


def report(argv: list[str], args: argparse.Namespace, m: dict, tr: dict, im: dict) -> str:
    """The RESULTS.md section, also printed: command, machine, numbers, ratios against the targets."""
    cfg, r, p = tr["cfg"], tr["robofm"], tr["plain"]
    gf = 1e9
    frac_r, frac_p = r["flops_per_s"] / tr["peak_best"], p["flops_per_s"] / tr["peak_best"]
    peaks = ", ".join(f"{k} {v / gf:.1f}" for k, v in tr["peak"].items())
    c, n = im["cache"], im["nocache"]
    repeats = "one rollout each, with the cache first" if args.imagine_repeats == 1 else (
        f"best of {args.imagine_repeats} each in ABBA order; all: {fmt_times(c['all'])} s and {fmt_times(n['all'])} s")  # fmt: skip
    lines = [
        SECTION,
        "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M %Z')} with",
        "",
        f"    .venv/bin/python benchmarks/model.py {shlex.join(argv)}".rstrip(),
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores ({m['affinity']} usable), {m['os']}; Python {m['python']}, "
        f"torch {m['torch']}, {m['threads']} torch thread{'s' if m['threads'] > 1 else ''}, fp32. robofm at {m['robofm']}. Load average (1, 5, "
        f"15 min) at start: {m['load']}, at the end: {load_now()} (the machine is shared: every number is compared "
        "with its counterpart from the same run).",
        "",
        f"Training: `{cfg.size}` (dim {cfg.dim}, depth {cfg.depth}, {cfg.heads} heads, FFN {cfg.ffn_dim}, "
        f"vocabulary {cfg.vocab_size}; {tr['params'] / 1e6:.1f}M parameters) on {tr['batch']} windows of the store "
        f"`{store_label(args.store)}` (K={args.window}, s={args.stride}, {args.patch}-pixel patches, NOISY blocks for "
        f"frames 1..K): L={tr['length']} tokens per sample ({tr['modalities']}). One step: the real Objective's "
        "forward and backward (no optimizer). Baseline: a plain causal Transformer (token and learned position "
        "embeddings; RMSNorm, SDPA `is_causal`, SwiGLU; no rotary, no QK-norm) of the same width, depth, heads, "
        "FFN, vocabulary, batch and L, with the token head and cross-entropy at every position. "
        f"{args.rounds} timed steps each after one warm-up, in ABBA order; the best step of each counts (other jobs "
        "on the machine only add time), medians below.",
        "",
        "| measurement | robofm | baseline | ratio | target | result |",
        "|---|---|---|---|---|---|",
        f"| training tokens/s, forward+backward ({tr['batch']} x {tr['length']} tokens) | {r['tps']:.0f} | "
        f"{p['tps']:.0f} | {tr['ratio']:.2f} | >= {TARGET_TRAIN_RATIO:.1f} | {verdict(tr['ratio'] >= TARGET_TRAIN_RATIO)} |",
        f"| achieved GFLOP/s (fraction of the measured fp32 matmul peak, {tr['peak_best'] / gf:.1f} GFLOP/s) | "
        f"{r['flops_per_s'] / gf:.1f} ({100 * frac_r:.0f}%) | {p['flops_per_s'] / gf:.1f} ({100 * frac_p:.0f}%) | "
        f"{frac_r / frac_p:.2f} | | |",
        f"| imagined frames/s, horizon {args.horizon}, {args.sampler_steps} sampler steps (KV cache vs none) | "
        f"{c['fps']:.2f} | {n['fps']:.2f} | {im['speedup']:.1f}x | >= {TARGET_CACHE_SPEEDUP:.0f}x | "
        f"{verdict(im['speedup'] >= TARGET_CACHE_SPEEDUP)} |",
        "",
        f"Step times: robofm {fmt_times(r['times'])} s, baseline {fmt_times(p['times'])} s (medians "
        f"{r['median']:.2f} s and {p['median']:.2f} s: ratio {p['median'] / r['median']:.2f}). Step FLOPs: robofm "
        f"{r['flops'] / gf:.0f} G, baseline {p['flops'] / gf:.0f} G (6 x weights x tokens for the matmuls each "
        "model runs, 4x for the input projections that need no input gradient, plus 12 x depth x dim x L^2 per "
        "sample for attention: `robofm_step_flops`, `plain_step_flops`). Matmul peak: best of 5 fp32 `torch.mm` "
        f"per shape, before and after the training steps, GFLOP/s: {peaks}.",
        "",
        f"Imagination: `{args.imagine_size}` ({im['params'] / 1e6:.1f}M parameters, untrained, frame head drawn "
        f"like the other weights so that frames are not all zero), {im['shape'][0]} rollout(s) of "
        f"{args.horizon} frames x {im['shape'][2]} cameras from a {args.window}-step context, flow matching: "
        f"{c['seconds']:.1f} s with the cache, {n['seconds']:.1f} s without ({repeats}). Largest difference between the two "
        f"rollouts: {im['max_diff']:.1e} (largest patch value {im['scale']:.1f}).",
        "",
    ]
    return "\n".join(lines)


def store_label(store: Path) -> str:
    return os.path.relpath(store, REPO) if store.is_relative_to(REPO) else str(store)


def fmt_times(ts: list[float]) -> str:
    return ", ".join(f"{t:.2f}" for t in ts)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    m = machine(torch.get_num_threads())
    t0 = time.perf_counter()
    ds, builder = make_builder(ensure_store(args.store), args)
    tr = bench_training(builder, ds, args)
    print(f"training: robofm {tr['robofm']['tps']:.0f} vs plain {tr['plain']['tps']:.0f} tokens/s "
          f"({time.perf_counter() - t0:.0f} s)", flush=True)  # fmt: skip
    im = bench_imagination(builder, ds, args)
    print(f"imagination: {im['cache']['fps']:.2f} vs {im['nocache']['fps']:.2f} frames/s "
          f"({time.perf_counter() - t0:.0f} s)", flush=True)  # fmt: skip
    section = report(argv, args, m, tr, im)
    publish(SECTION, section, args.write_results)
    print(f"total {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
