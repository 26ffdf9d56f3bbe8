"""What pretraining buys a policy: `experiment=finetune` from a base against the same recipe from scratch, on
MetaWorld tasks outside the demo's MT10 set, scored by closed-loop success on held-out layouts.

    .venv/bin/python benchmarks/finetune.py --base outputs/demo/run [--base-noframe RUN] \
        [--tasks handle-press-v3,button-press-v3,door-close-v3] [--demos 20] [--episodes 20] [--write-results]

For each task: collect `--demos` scripted-expert demonstrations (scripts/collect_metaworld.py, seed 0) and convert
them with a 25% val split, unless ROOT/TASK/store exists; then per arm fine-tune (`robofm-finetune
experiment=finetune init_from=BASE`, or `robofm-train experiment=finetune` for scratch) and run `robofm-eval-sim`
for `--episodes` seeded episodes on layouts no demonstration used (train_store=auto). Arms: pretrained (the demo
base), scratch, and with --base-noframe a base pretrained without the frame objective (objective.frame_weight=0).
`--parallel 2` runs two arms at once with one thread each (on 2 cores that finishes sooner than one after the
other). Steps already done (an export, a results.json) are not redone, so the script can be stopped and rerun.
`--choices` also scores closed-loop settings of the pretrained policy on the first task (execute, ensembling,
hidden past actions at inference) and fine-tunes one more arm there that learns without the past actions in view
(sequence.past_action_dropout=0.5, the copycat answer).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import REPO, cpu_name, load_now, publish, robofm_revision

SECTION = "## Fine-tuning: pretrained base against scratch"
BIN = Path(sys.executable).parent
sys.path.insert(0, str(REPO))
from robofm.eval.sim import wilson  # noqa: E402

CHOICES = {"execute=2 (the chunk)": [], "execute=1": ["execute=1"], "ensemble=0.5": ["ensemble=0.5"],
           "hide_past_actions": ["hide_past_actions=true"]}  # fmt: skip


def run(cmd: list[str], log: Path, threads: int | None) -> float:
    """Run cmd with its output in `log`; its wall seconds. Raises with the log's tail on failure."""
    env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "osmesa")}
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    print("+", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, env=env)
    if proc.returncode:
        raise RuntimeError(f"{cmd[0]} failed ({proc.returncode}); see {log}:\n{log.read_text()[-2000:]}")
    return time.perf_counter() - t0


def collect(task: str, root: Path, demos: int) -> Path:
    store = root / task / "store"
    if not (store / "manifest.json").is_file():
        (root / task).mkdir(parents=True, exist_ok=True)
        run([str(BIN / "python"), "scripts/collect_metaworld.py", "--out", str(root / task / "lerobot"), "--repo-id",
             f"robofm/{task}", "--tasks", task, "--episodes-per-task", str(demos), "--overwrite"],
            root / task / "collect.log", None)  # fmt: skip
        run([str(BIN / "robofm-convert"), "lerobot", str(root / task / "lerobot"), "--out", str(store),
             "--val-fraction", "0.25", "--overwrite"], root / task / "convert.log", None)  # fmt: skip
    return store


HIDDEN = "pretrained, past actions dropped"
NOFRAME = "pretrained without frames"


def arm(task: str, name: str, base: Path | None, store: Path, out: Path, args, threads: int | None) -> dict:
    """Train one arm (unless its export exists) and score it in simulation (unless scored)."""
    run_dir = out / task / name.replace(",", "").replace(" ", "_")  # a Hydra override value: no spaces
    run_dir.mkdir(parents=True, exist_ok=True)
    timing = run_dir / "train_seconds.json"
    if not (run_dir / "export" / "model.json").is_file():
        cmd = [str(BIN / ("robofm-finetune" if base else "robofm-train")), "experiment=finetune",
               f"data.path={store}", f"hydra.run.dir={run_dir}", "seed=0", *args.overrides]  # fmt: skip
        if name == HIDDEN:
            cmd.append("sequence.past_action_dropout=0.5")
        if base:
            cmd.append(f"init_from={base}")
        timing.write_text(json.dumps(run(cmd, run_dir / "train.log", threads)))
    sims = {}
    for choice, keys in (CHOICES.items() if args.choices and name == "pretrained" and task == args.tasks[0]
                         else [("execute=2 (the chunk)", [])]):  # fmt: skip
        sim = run_dir / ("sim" if not keys else "sim-" + "-".join(k.replace("=", "") for k in keys))
        if not (sim / "results.json").is_file():
            run([str(BIN / "robofm-eval-sim"), f"policy={run_dir}", f"task={task}", f"episodes={args.episodes}",
                 f"max_steps={args.max_steps}", "videos=2", f"out={sim}", *keys], run_dir / f"{sim.name}.log",
                threads)  # fmt: skip
        sims[choice] = json.loads((sim / "results.json").read_text())
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    trained_on = json.loads((run_dir / "export" / "trained_on.json").read_text())
    return {"val": {r["step"]: r["val/action"] for r in rows if "val/action" in r}, "sim": sims,
            "selected": trained_on["selected"], "train_s": json.loads(timing.read_text()) if timing.is_file() else None,
            "steps": max(r["step"] for r in rows)}  # fmt: skip


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(results)
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.2), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        for name, r in results[task].items():
            steps = sorted(r["val"])
            k, n = r["sim"]["execute=2 (the chunk)"]["successes"], r["sim"]["execute=2 (the chunk)"]["episodes"]
            ax.plot(steps, [r["val"][s] for s in steps], marker=".", label=f"{name}: {k}/{n} succeed")
            if r["selected"]["step"] in r["val"]:
                ax.scatter([r["selected"]["step"]], [r["val"][r["selected"]["step"]]], marker="*", s=90, zorder=3)
        ax.set_title(task, fontsize=10)
        ax.set_xlabel("fine-tuning step")
        ax.set_ylabel("held-out action loss (nats)")
        ax.legend(fontsize=8)
    fig.suptitle("experiment=finetune: held-out action loss (star: the exported step), success on held-out layouts",
                 fontsize=10)  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def ci(sim: dict) -> str:
    k, n = sim["successes"], sim["episodes"]
    lo, hi = wilson(k, n)
    return f"{k}/{n} ({k / n:.0%}, 95% CI {lo:.0%}-{hi:.0%})"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", type=Path, required=True, help="the pretrained run or export folder (the demo's)")
    p.add_argument("--base-noframe", type=Path, help="a base trained with objective.frame_weight=0")
    p.add_argument("--tasks", default="handle-press-v3,button-press-v3,door-close-v3")
    p.add_argument("--demos", type=int, default=20, help="demonstrations collected per task")
    p.add_argument("--episodes", type=int, default=20, help="simulated episodes per task and arm")
    p.add_argument("--max-steps", type=int, default=100, help="control steps per simulated episode (5 s at 20 fps)")
    p.add_argument("--root", type=Path, default=REPO / "outputs" / "ft", help="where the task stores live")
    p.add_argument("--out", type=Path, default=REPO / "outputs" / "bench_finetune")
    p.add_argument("--parallel", type=int, default=2, help="arms run at once (one thread each when > 1)")
    p.add_argument("--choices", action="store_true", help="also score closed-loop settings (first task)")
    p.add_argument("--overrides", nargs="*", default=[], help="extra training overrides for every arm")
    p.add_argument("--write-results", action="store_true")
    args = p.parse_args()
    args.tasks = [t for t in args.tasks.split(",") if t]
    args.out.mkdir(parents=True, exist_ok=True)
    first = args.out / "started.json"  # a rerun that only gathers finished arms reports the first run's start
    if not first.is_file():
        first.write_text(json.dumps({"at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "load": load_now()}))
    started, load_start = json.loads(first.read_text()).values()
    arms = {"pretrained": args.base.resolve(), "scratch": None}
    if args.base_noframe:
        arms[NOFRAME] = args.base_noframe.resolve()
    stores = {task: collect(task, args.root, args.demos) for task in args.tasks}
    threads = 1 if args.parallel > 1 else None
    jobs = [(task, name, base) for name, base in arms.items() if name != NOFRAME for task in args.tasks]
    jobs += [(task, NOFRAME, arms[NOFRAME]) for task in args.tasks if NOFRAME in arms]  # the main comparison first
    if args.choices:
        jobs.append((args.tasks[0], HIDDEN, args.base.resolve()))
    with ThreadPoolExecutor(args.parallel) as pool:
        futures = {(t, n): pool.submit(arm, t, n, b, stores[t], args.out, args, threads) for t, n, b in jobs}
        results = {t: {} for t in args.tasks}
        for (t, n), f in futures.items():
            try:
                results[t][n] = f.result()
            except Exception as e:  # noqa: BLE001 -- one failed arm must not lose the others' table
                print(f"{t} / {n} failed: {e}", file=sys.stderr)
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    plot(results, REPO / "benchmarks" / "finetune.png")

    counts = {t: json.loads((stores[t] / "manifest.json").read_text())["episodes"] for t in args.tasks}
    lines = [SECTION, "",
             f"Started {started} with `.venv/bin/python benchmarks/finetune.py --base {args.base}"
             + (f" --base-noframe {args.base_noframe}" if args.base_noframe else "")
             + f" --tasks {','.join(args.tasks)} --demos {args.demos} --episodes {args.episodes} --max-steps "
             f"{args.max_steps} --parallel {args.parallel}{' --choices' if args.choices else ''}"
             + (f" --overrides {' '.join(args.overrides)}" if args.overrides else "") + " --write-results`",
             f"(robofm {robofm_revision()}, {cpu_name()}, 2 cores; load average {load_start} at the start, "
             f"{load_now()} at the end; {args.parallel} arm(s) at a time"
             + (", one thread each" if threads else "") + ").", "",
             "| task | demos (train + val) | arm | steps | val action loss: lowest (step), exported | train min | "
             f"success on {args.episodes} held-out layouts |", "|---|---|---|---:|---:|---:|---|"]  # fmt: skip
    for t in args.tasks:
        n_val = sum(e["split"] == "val" for e in counts[t])
        for name, r in results[t].items():
            minutes = f"{r['train_s'] / 60:.1f}" if r["train_s"] else "-"
            low = min(r["val"], key=r["val"].get)
            exported = f"{r['val'][r['selected']['step']]:.3f}" if r["selected"]["step"] in r["val"] else "-"
            lines.append(f"| {t} | {len(counts[t]) - n_val} + {n_val} | {name} | {r['steps']} | "
                         f"{r['val'][low]:.3f} ({low}), {exported} | {minutes} | "
                         f"{ci(r['sim']['execute=2 (the chunk)'])} |")  # fmt: skip
    lines += ["", "![held-out action loss of each arm, and its success](finetune.png)"]
    if args.choices and "pretrained" in results[args.tasks[0]]:
        first = results[args.tasks[0]]["pretrained"]["sim"]
        lines += ["", f"Closed-loop settings of the pretrained policy on {args.tasks[0]} (the same export and "
                  "layouts):", "", "| setting | success |", "|---|---|"]  # fmt: skip
        lines += [f"| {choice} | {ci(sim)} |" for choice, sim in first.items()]
    publish(SECTION, "\n".join(lines), args.write_results)


if __name__ == "__main__":
    main()
