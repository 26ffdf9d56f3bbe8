"""Training throughput of a config on this machine, and the fraction of step time spent waiting for data.

Runs `robofm-train` (the real command, in a subprocess) for a few steps with the DataLoader's workers and reads
its metrics.jsonl: tokens/s, samples/s and the data-wait fraction after the first `--skip` steps (the first
batches include forking the workers and filling the prefetch queue).

    .venv/bin/python benchmarks/train.py --write-results
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, cpu_name, publish, robofm_revision, verdict

SECTION = "## Training throughput"
TARGET_DATA_WAIT = 0.05


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--store", default="outputs/demo/store", help="converted with `make demo` if missing")
    p.add_argument("--model", default="small")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--skip", type=int, default=2, help="first steps left out of the steady-state numbers")
    p.add_argument("--write-results", action="store_true")
    return p.parse_args(argv)


def run(args: argparse.Namespace, run_dir: Path) -> list[dict]:
    cmd = [str(REPO / ".venv" / "bin" / "robofm-train"), "experiment=demo", f"model={args.model}",
           f"data.path={args.store}", f"data.batch_size={args.batch_size}", f"data.num_workers={args.workers}",
           f"trainer.max_steps={args.steps}", "trainer.max_minutes=null", "trainer.log_every=1",
           "trainer.checkpoint_every=0", "trainer.val_every=0", f"hydra.run.dir={run_dir}"]  # fmt: skip
    subprocess.run(cmd, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [m for m in lines if "elapsed_s" in m]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not (REPO / args.store / "manifest.json").exists():
        subprocess.run([str(REPO / ".venv" / "bin" / "robofm-convert"), "lerobot", "datasets/metaworld_mt10", "--out",
                        args.store, "--overwrite"], check=True, cwd=REPO)  # fmt: skip
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        steps = run(args, Path(tmp) / "run")
    first, last = steps[args.skip - 1], steps[-1]
    seconds = last["elapsed_s"] - first["elapsed_s"]
    wait = (last["data_wait_s"] - first["data_wait_s"]) / seconds
    per_step = seconds / (len(steps) - args.skip)
    tokens = (last["tokens_per_s"] * last["elapsed_s"] - first["tokens_per_s"] * first["elapsed_s"]) / seconds
    samples = args.batch_size / per_step
    result = verdict(wait < TARGET_DATA_WAIT)
    cmd = "    .venv/bin/python benchmarks/train.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = f"""{SECTION}

Measured {time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())} with

{cmd}

Machine: {cpu_name()}, {os.cpu_count()} cores; load average at start {load_start[0]:.1f}. robofm at {robofm_revision()}.
`robofm-train experiment=demo model={args.model}` on `{args.store}`, batch {args.batch_size}, {args.workers} loader
workers, fp32 on the CPU, {args.steps} steps; steady state over steps {args.skip + 1}..{args.steps}.

| measurement | value | target | result |
|---|---|---|---|
| step time | {per_step:.2f} s | | |
| tokens/s (valid tokens) | {tokens:,.0f} | | |
| samples/s | {samples:.2f} | | |
| time waiting for data | {100 * wait:.1f}% of step time | < {100 * TARGET_DATA_WAIT:.0f}% | {result} |
| data wait including the first {args.skip} steps (worker start-up) | {100 * last["data_wait"]:.1f}% | | |
"""
    publish(SECTION, text, args.write_results)
    return 0 if result == "pass" else 1


if __name__ == "__main__":
    sys.exit(main())
