"""Which model size is best for a budget on this machine: held-out losses of sizes trained for the same minutes on
the demo store (an iso-time curve, the CPU's form of an isoFLOP curve), against the pick of `robofm-plan`.

The budget is wall-clock minutes on this machine, the unit `robofm-plan --minutes` and the CPU demo plan in. For
each size the plan's own probe (robofm.train.plan.probe_step_seconds, in the precision robofm-train resolves)
gives seconds per step, so each size gets the steps that fill the same minutes: the data-constrained rule of
`plan_minutes` then names its pick. Every size is then trained for its steps with the real command
(`robofm-train experiment=demo model=SIZE trainer.max_steps=STEPS`, warmup 10% of the steps, one cosine
schedule), and its held-out loss is read from the validation at its last step (the val split, the objective's
action cross-entropy and frame MSE, `data.val_batches` batches). The sizes run one after another; the machine
must be otherwise idle, or the minutes are not the same compute.

    .venv/bin/python benchmarks/scaling.py --minutes 5 --write-results
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

from common import REPO, cpu_name, load_now, publish, robofm_revision

SECTION = "## Model size for a budget: equal minutes per size"
BIN = Path(sys.executable).parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--store", default="outputs/demo/store")
    p.add_argument("--minutes", type=float, default=5.0, help="the budget of every size")
    p.add_argument("--sizes", nargs="+", default=["debug", "tiny", "mini", "small"])
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--probe-steps", type=int, default=3)
    p.add_argument("--out", type=Path, default=REPO / "outputs" / "scaling", help="run folders and the PNG")
    p.add_argument("--write-results", action="store_true")
    return p.parse_args(argv)


def plan(args: argparse.Namespace) -> list[dict]:
    """plan_minutes' rows for every size (probed on this machine, in the precision robofm-train would use)."""
    import torch

    from robofm.data.dataset import EpisodeWindowDataset
    from robofm.models.config import ModelConfig
    from robofm.tokenization.build import TokenizerConfig, build_sequence_builder, epoch_tokens
    from robofm.tokenization.sequence import SequenceConfig
    from robofm.train.plan import _io, _timed_batch, plan_minutes, probe_step_seconds
    from robofm.train.precision import resolve_precision

    ds = EpisodeWindowDataset(REPO / args.store, 4, 2, split="train")
    builder = build_sequence_builder(ds, SequenceConfig(), TokenizerConfig(patch_size=16))
    seq, load_s = _timed_batch(ds, builder, args.batch_size)
    cpu = torch.device("cpu")
    parameters = {s: ModelConfig.sized(s, **_io(builder)).expected_parameters() for s in args.sizes}
    precision = {s: resolve_precision("auto", cpu, ModelConfig.sized(s, **_io(builder)).dim) for s in args.sizes}

    def measure(size: str) -> float:  # as robofm-plan: the probe plus loading a batch shared by 2 workers
        return probe_step_seconds(builder, seq, size, cpu, precision[size][0], args.probe_steps) + load_s / 2

    epoch = epoch_tokens(ds, builder)
    rows = plan_minutes(args.minutes, args.sizes, parameters, measure, args.batch_size * epoch.tokens_per_sample,
                        epoch.tokens, stop_early=False)  # fmt: skip
    for r in rows:
        r["precision"], r["unique"] = precision[r["size"]][0], epoch.tokens
    return rows


def train(args: argparse.Namespace, row: dict) -> dict:
    """Train one size for its planned steps; its final validation losses and wall time."""
    run_dir = args.out / row["size"]
    steps = max(row["steps"], 1)
    cmd = [str(BIN / "robofm-train"), "experiment=demo", f"model={row['size']}", f"data.path={args.store}",
           f"data.batch_size={args.batch_size}", f"trainer.max_steps={steps}",
           f"optim.warmup_steps={max(steps // 10, 1)}", "trainer.max_minutes=null", f"trainer.val_every={steps}",
           "trainer.checkpoint_every=0", "trainer.log_every=10", f"hydra.run.dir={run_dir}"]  # fmt: skip
    start = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    metrics = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    val = [m for m in metrics if "val/total" in m][-1]
    return {"wall_s": wall, "val_total": val["val/total"], "val_action": val["val/action"],
            "val_frame": val["val/frame"], "val_step": val["step"]}  # fmt: skip


def plot(rows: list[dict], path: Path, minutes: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    n = [r["parameters"] for r in rows]
    for ax, key, title in ((axes[0], "val_action", "held-out action loss"), (axes[1], "val_frame", "held-out frame loss")):
        ax.plot(n, [r[key] for r in rows], "o-", color="tab:blue")
        for r in rows:
            ax.annotate(f"{r['size']}\n{r['steps']} steps", (r["parameters"], r[key]), fontsize=7,
                        textcoords="offset points", xytext=(4, 4))  # fmt: skip
            if r["best"]:
                ax.plot(r["parameters"], r[key], "*", ms=14, color="tab:red", label="robofm-plan's pick")
        ax.set_xscale("log")
        ax.set_xlabel("parameters")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
    fig.suptitle(f"{minutes:g} minutes per size on {cpu_name()}", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not (REPO / args.store / "manifest.json").exists():
        subprocess.run([str(BIN / "robofm-convert"), "lerobot", "datasets/metaworld_mt10", "--out", args.store,
                        "--overwrite"], check=True, cwd=REPO)  # fmt: skip
    load_start = os.getloadavg()
    rows = plan(args)
    for r in rows:
        print(f"{r['size']}: {r['step_s']:.2f} s/step ({r['precision']}), {r['steps']} steps, D'/N {r['ratio']:.1f}; "
              f"training, load {load_now()}", file=sys.stderr)  # fmt: skip
        r.update(train(args, r))
        print(f"  val action {r['val_action']:.3f}, frame {r['val_frame']:.4f}, {r['wall_s'] / 60:.1f} min", file=sys.stderr)
    load_end = os.getloadavg()
    png = REPO / "benchmarks" / "scaling.png"
    plot(rows, png, args.minutes)
    best_action = min(rows, key=lambda r: r["val_action"])
    best_frame = min(rows, key=lambda r: r["val_frame"])
    pick = next(r for r in rows if r["best"])
    table = "\n".join(
        f"| {r['size']}{' (pick)' if r['best'] else ''} | {r['parameters'] / 1e6:.2f}M | {r['precision']} | "
        f"{r['step_s']:.2f} | {r['steps']} | {r['epochs']:.1f} | {r['ratio']:.1f} | {6 * r['parameters'] * r['tokens']:.2e} | "
        f"{r['wall_s'] / 60:.1f} | {r['val_action']:.3f}{' (best)' if r is best_action else ''} | "
        f"{r['val_frame']:.4f}{' (best)' if r is best_frame else ''} |"
        for r in rows
    )
    cmd = "    .venv/bin/python benchmarks/scaling.py " + " ".join(argv if argv is not None else sys.argv[1:])
    within = {k: math.log(pick[f"val_{k}"] / best[f"val_{k}"]) for k, best in (("action", best_action), ("frame", best_frame))}
    text = f"""{SECTION}

Measured {time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())} with

{cmd}

Machine: {cpu_name()}, {os.cpu_count()} cores; load average at start {load_start[0]:.1f}, at the end {load_end[0]:.1f}.
robofm at {robofm_revision()}. Each size trained for the steps its probed step time allows in {args.minutes:g} minutes
(`robofm-train experiment=demo model=SIZE trainer.max_steps=STEPS`, batch {args.batch_size}, warmup 10%), scored by
the validation at its last step. D'/N: effective tokens (Muennighoff et al. 2023) per parameter, the plan's rule
picks the size closest to 20. FLOPs: 6 x parameters x tokens trained (they differ: on a CPU small models run
further from the matmul peak, so equal minutes are not equal FLOPs).

| size | parameters | precision | s/step (probe) | steps | epochs | D'/N | FLOPs | wall min | val action loss | val frame loss |
|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|
{table}

![held-out losses of each size after the same minutes](scaling.png)

The plan picks **{pick["size"]}**; the best held-out action loss is {best_action["size"]}'s and the best frame loss
{best_frame["size"]}'s. The pick's losses are {100 * (math.exp(within["action"]) - 1):+.1f}% (action) and
{100 * (math.exp(within["frame"]) - 1):+.1f}% (frame) from the best size's.
"""
    publish(SECTION, text, args.write_results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
