"""Training throughput of a config on this machine, and the fraction of step time spent waiting for data.

Runs `robofm-train` (the real command, in a subprocess) for a few steps with the DataLoader's workers and reads
its metrics.jsonl: tokens/s, samples/s and the data-wait fraction after the first `--skip` steps (the first
batches include forking the workers and filling the prefetch queue). Several `--precision` values are run side by
side, alternating `--rounds` times (fp32, bf16, fp32, bf16, ...), so that a change of load on shared cores hits
each; each reports its median round. `--revisions` also runs robofm's code at other git revisions (its `robofm/`
package, exported with `git archive`, first on PYTHONPATH; the configs are the checkout's) beside the working tree:
the steps per minute before and after a change, in one run.

    .venv/bin/python benchmarks/train.py --write-results
    .venv/bin/python benchmarks/train.py --precision fp32 bf16 --rounds 2
    .venv/bin/python benchmarks/train.py --model mini --revisions 57ac9b3 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, cpu_name, load_now, publish, robofm_revision, verdict

SECTION = "## Training throughput"
TARGET_DATA_WAIT = 0.05
BIN = Path(sys.executable).parent  # the robofm commands of the environment running this script


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--store", default="outputs/demo/store", help="converted with `make demo` if missing")
    p.add_argument("--model", default="small")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--skip", type=int, default=2, help="first steps left out of the steady-state numbers")
    p.add_argument("--precision", nargs="+", default=["auto"], choices=["auto", "fp32", "bf16"], help="one run each")
    p.add_argument("--rounds", type=int, default=1, help="runs of each precision, alternating")
    p.add_argument("--revisions", nargs="*", default=[], help="git revisions run beside the working tree")
    p.add_argument("--write-results", action="store_true")
    return p.parse_args(argv)


def export_revision(revision: str, root: Path) -> Path:
    """robofm's package at `revision`, under root (for PYTHONPATH)."""
    root.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", revision, "robofm"], check=True, cwd=REPO, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(root)], input=archive.stdout, check=True)
    return root


def run(args: argparse.Namespace, run_dir: Path, precision: str, code: Path | None = None) -> list[dict]:
    cmd = [str(BIN / "robofm-train"), "experiment=demo", f"model={args.model}",
           f"data.path={args.store}", f"data.batch_size={args.batch_size}", f"data.num_workers={args.workers}",
           f"trainer.max_steps={args.steps}", "trainer.max_minutes=null", "trainer.log_every=1",
           "trainer.checkpoint_every=0", "trainer.val_every=0", f"trainer.precision={precision}",
           f"hydra.run.dir={run_dir}"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(code)} if code is not None else None
    subprocess.run(cmd, check=True, cwd=REPO, stdout=subprocess.DEVNULL, env=env)
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [m for m in lines if "elapsed_s" in m]


def steady_state(steps: list[dict], args: argparse.Namespace) -> dict:
    """Step time, tokens/s, samples/s and data-wait fraction over the steps after the first `skip`."""
    first, last = steps[args.skip - 1], steps[-1]
    seconds = last["elapsed_s"] - first["elapsed_s"]
    per_step = seconds / (len(steps) - args.skip)
    tokens = last["tokens_per_s"] * last["elapsed_s"] - first["tokens_per_s"] * first["elapsed_s"]
    wait = (last["data_wait_s"] - first["data_wait_s"]) / seconds
    ran = last.get("precision", "fp32")  # what trainer.precision resolved to
    return {
        "step": per_step,
        "samples": args.batch_size / per_step,
        "tokens": tokens / seconds,
        "wait": wait,
        "wait_all": last["data_wait"],
        "ran": ran,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not (REPO / args.store / "manifest.json").exists():
        subprocess.run([str(BIN / "robofm-convert"), "lerobot", "datasets/metaworld_mt10", "--out",
                        args.store, "--overwrite"], check=True, cwd=REPO)  # fmt: skip
    load_start = os.getloadavg()
    here = f"working tree ({robofm_revision()})"
    variants = [(rev, p) for rev in [here, *args.revisions] for p in args.precision]
    label = {v: (v[1] if not args.revisions else f"{v[0]}, {v[1]}") for v in variants}
    results: dict[str, list[dict]] = {label[v]: [] for v in variants}
    with tempfile.TemporaryDirectory() as tmp:
        code = {rev: export_revision(rev, Path(tmp) / f"code-{rev}") for rev in args.revisions}
        for r in range(args.rounds):
            for rev, p in variants:
                run_dir = Path(tmp) / f"run-{variants.index((rev, p))}-{r}"
                m = steady_state(run(args, run_dir, p, code.get(rev)), args)
                results[label[rev, p]].append(m)
                print(f"round {r + 1}: {label[rev, p]} ran {m['ran']}: {m['step']:.2f} s/step, load {load_now()}",
                      file=sys.stderr)  # fmt: skip
    load_end = os.getloadavg()
    median = {p: {k: statistics.median(x[k] for x in rs) for k in rs[0] if k != "ran"} for p, rs in results.items()}
    for p, rs in results.items():
        median[p]["ran"] = "/".join(sorted({x["ran"] for x in rs}))
    result = verdict(all(m["wait"] < TARGET_DATA_WAIT for m in median.values()))
    cmd = "    .venv/bin/python benchmarks/train.py " + " ".join(argv if argv is not None else sys.argv[1:])
    runs = f"{args.rounds} round(s) of " + ", ".join(f"{p} ({m['ran']})" for p, m in median.items())
    rows = ""
    for p, m in median.items():
        name = f" ({p}: {m['ran']})" if len(median) > 1 or p != m["ran"] else ""
        each = " (rounds: " + ", ".join(f"{x['step']:.2f}" for x in results[p]) + ")" if args.rounds > 1 else ""
        rows += f"""| step time{name} | {m["step"]:.2f} s{each} | | |
| steps per minute{name} | {60 / m["step"]:.1f} | | |
| tokens/s (valid tokens){name} | {m["tokens"]:,.0f} | | |
| samples/s{name} | {m["samples"]:.2f} | | |
| time waiting for data{name} | {100 * m["wait"]:.1f}% of step time | < {100 * TARGET_DATA_WAIT:.0f}% | {verdict(m["wait"] < TARGET_DATA_WAIT)} |
| data wait including the first {args.skip} steps (worker start-up){name} | {100 * m["wait_all"]:.1f}% | | |
"""
    text = f"""{SECTION}

Measured {time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())} with

{cmd}

Machine: {cpu_name()}, {os.cpu_count()} cores (OMP_NUM_THREADS {os.environ.get("OMP_NUM_THREADS", "unset")}); load average
at start {load_start[0]:.1f}, at the end {load_end[0]:.1f}.
robofm at {robofm_revision()}. `robofm-train experiment=demo model={args.model}` on `{args.store}`, batch
{args.batch_size}, {args.workers} loader workers, {args.steps} steps; steady state over steps {args.skip + 1}..{args.steps};
{runs} (trainer.precision, and what it ran), alternating; the median round of each.

| measurement | value | target | result |
|---|---|---|---|
{rows}"""
    publish(SECTION, text, args.write_results)
    return 0 if result == "pass" else 1


if __name__ == "__main__":
    sys.exit(main())
