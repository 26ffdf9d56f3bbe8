"""Does pretraining pay off? Few-shot fine-tuning on tasks the base never saw, against scratch, scored by closed-loop
success on layouts no demonstration used.

    .venv/bin/python benchmarks/finetune.py --base outputs/corpus/run [--base-noframe outputs/corpus/run_noframe] \
        [--tasks ml45-test] [--demos 5,20] [--video 15] [--episodes 20] [--parallel 2] [--write-results]

Data, per task (`--tasks`: ml45-test, ML45's five test tasks, which no corpus holds; or MetaWorld task names): the
scripted expert's demonstrations, collected once (scripts/collect_metaworld.py, seed 0, as many as the largest of
`--demos` and the smallest plus `--video`) and converted into ROOT/TASK/store with no val split; then views of it
(`robofm-data subset`): demos-N, its first N episodes, and video-V, the V episodes after the smallest N with their
actions removed (action-free video: NO_ACTION tokens, no action loss).

Arms, each fine-tuned on demos-N of every task and N of `--demos`:
- base: `robofm-finetune experiment=finetune init_from=BASE`;
- scratch: `robofm-train experiment=finetune`, the same recipe from a random initialisation;
- tuned scratch: `robofm-train experiment=finetune_scratch`, the recipe tuned for scratch (augmentation, its own
  steps and learning rate);
- base without frames (with --base-noframe): a base pretrained with objective.frame_weight=0, fine-tuned as base;
- base + action-free video (at the smallest N only): base fine-tuned on demos-N plus video-V.
`--arm NAME INIT OVERRIDE...` adds an arm (INIT: base, base-noframe or scratch; `{demos}` and `{video}` in an override
are the views' paths; an override starting `sim:` goes to robofm-eval-sim, e.g. `sim:execute=1`), for recipe
searches on the same footing; `--only NAME,...` runs some arms alone.

Scoring: `robofm-eval-sim` for `--episodes` episodes per task and arm, on the same MT1 layouts for every arm, none of
them used by any collected episode of the task (train_store names the task's whole store and the base's stores);
pooled over the tasks with 95% Wilson intervals. Every step already done (a view, an export, a results.json) is kept,
so the script resumes where it stopped. `--layout-seed 100` scores on other layouts (MT1 seed 100 on): recipes are
chosen there, and reported on the default's. `--parallel 2` runs two arms at once with one thread each, and each arm's
train and sim seconds are recorded. `--report` prints the table of the cells scored so far (of this grid or one still
running, whose cells it never starts) and names the rest.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import REPO, cpu_name, load_now, publish, robofm_revision

SECTION = "## Few-shot fine-tuning on tasks the base never saw (issue 23)"
BIN = Path(sys.executable).parent
sys.path.insert(0, str(REPO))
from robofm.eval.sim import wilson  # noqa: E402
from robofm.sim.tasks import HELD_OUT_TASKS  # noqa: E402

VIDEO = "base + action-free video"
ARMS = {  # name: (init, overrides)
    "base": ("base", []),
    "scratch": ("scratch", []),
    "tuned scratch": ("scratch", ["experiment=finetune_scratch"]),
    "base without frames": ("base-noframe", []),
    VIDEO: ("base", ["data.path=[{demos},{video}]"]),
}


def run(cmd: list[str], log: Path, threads: int | None) -> float:
    """Run cmd with its output in `log`; its wall seconds. Raises with the log's tail on failure."""
    env = dict(os.environ)
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    print("+", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, env=env)
    if proc.returncode:
        raise RuntimeError(f"{cmd[0]} failed ({proc.returncode}); see {log}:\n{log.read_text()[-2000:]}")
    return time.perf_counter() - t0


def task_data(task: str, root: Path, demos: list[int], video: int) -> dict[str, Path]:
    """The task's store (every collected episode) and its views: demos-N for each N, video-V (after the smallest N,
    actions removed). Collected and converted once; views made once."""
    folder = root / task
    store = folder / "store"
    n = max(max(demos), min(demos) + video)
    if not (store / "manifest.json").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        run(
            [
                str(BIN / "python"),
                "scripts/collect_metaworld.py",
                "--out",
                str(folder / "lerobot"),
                "--repo-id",
                f"robofm/fewshot_{task}",
                "--tasks",
                task,
                "--allow-held-out",
                "--episodes-per-task",
                str(n),
                "--overwrite",
            ],
            folder / "collect.log",
            None,
        )
        run(
            [
                str(BIN / "robofm-convert"),
                "lerobot",
                str(folder / "lerobot"),
                "--out",
                str(store),
                "--val-fraction",
                "0",
                "--overwrite",
            ],
            folder / "convert.log",
            None,
        )
    views = {"store": store}
    wanted = [(f"demos-{d}", ["--first", str(d)]) for d in demos]
    if video:
        wanted.append((f"video-{video}", ["--skip", str(min(demos)), "--first", str(video), "--drop-actions"]))
    for name, args in wanted:
        if not (folder / name / "manifest.json").is_file():
            run(
                [str(BIN / "robofm-data"), "subset", str(store), "--out", str(folder / name), *args],
                folder / f"{name}.log",
                None,
            )
        views[name] = folder / name
    return views


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


class NotScored(Exception):
    """--report: the cell has no results.json yet."""


def cell(task: str, n: int, name: str, args, data: dict[str, Path], threads: int | None) -> dict:
    """Fine-tune one arm on demos-n of the task (unless its export exists) and score it (unless scored)."""
    init, overrides = args.arms[name]
    run_dir = args.out / task / f"demos{n}" / slug(name)
    sim = run_dir / ("sim" if not args.layout_seed else f"sim-seed{args.layout_seed}")
    if args.report and not (sim / "results.json").is_file():
        raise NotScored(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    fill = {"demos": str(data.get(f"demos-{n}", "")), "video": str(data.get(f"video-{args.video}", ""))}
    overrides = [o.format(**fill) for o in overrides]
    train = [o for o in overrides if not o.startswith("sim:")]
    sim_keys = [o[4:] for o in overrides if o.startswith("sim:")]
    timing = run_dir / "seconds.json"
    seconds = json.loads(timing.read_text()) if timing.is_file() else {}
    if not (run_dir / "export" / "model.json").is_file():
        experiment = next((o for o in train if o.startswith("experiment=")), "experiment=finetune")
        cmd = [
            str(BIN / ("robofm-train" if init == "scratch" else "robofm-finetune")),
            experiment,
            f"data.path={data[f'demos-{n}']}",
            f"hydra.run.dir={run_dir}",
            "seed=0",
            "resume=auto",
            "trainer.max_minutes=null",  # every arm trains all its steps, however loaded the machine
            *[o for o in train if not o.startswith("experiment=")],
            *args.overrides,
        ]
        if init != "scratch":
            cmd.append(f"init_from={args.bases[init]}")
        seconds["train"] = run(cmd, run_dir / "train.log", threads)
        timing.write_text(json.dumps(seconds))
    if not (sim / "results.json").is_file():
        held = ",".join([str(data["store"]), *args.base_stores])
        seconds[sim.name] = run(  # "sim", or "sim-seed100" for the dev layouts: each scoring keeps its time
            [
                str(BIN / "robofm-eval-sim"),
                f"policy={run_dir}",
                f"task={task}",
                f"episodes={args.episodes}",
                f"max_steps={args.max_steps}",
                f"seed={args.layout_seed}",
                f"train_store=[{held}]",
                "videos=2",
                f"out={sim}",
                *sim_keys,
            ],
            run_dir / f"{sim.name}.log",
            threads,
        )
        timing.write_text(json.dumps(seconds))
    result = json.loads((sim / "results.json").read_text())
    return {
        "successes": result["successes"],
        "episodes": result["episodes"],
        "seconds": {"train": seconds.get("train", 0), "sim": seconds.get(sim.name, 0)},
        "layouts": [(r["layout"]["mt1_seed"], r["layout"]["mt1_index"]) for r in result["rollouts"]],
    }


def jobs(args) -> list[tuple[str, int, str]]:
    """(task, n, arm) in the order they matter: the smallest N's base and scratch arms first."""
    order = []
    for n in sorted(args.demos):
        for name in args.arms:
            if VIDEO == name and n != min(args.demos):
                continue
            order += [(task, n, name) for task in args.tasks]
    return order


def pooled(cells: list[dict]) -> tuple[int, int]:
    return sum(c["successes"] for c in cells), sum(c["episodes"] for c in cells)


def rate(k: int, n: int) -> str:
    lo, hi = wilson(k, n)
    return f"{k}/{n} ({k / max(n, 1):.0%}, {lo:.0%}-{hi:.0%})" if n else "-"


def plot(table: dict, args, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for i, (name, by_n) in enumerate(table.items()):
        ns = sorted(by_n)
        ks = [by_n[n] for n in ns]
        p = [k / max(m, 1) for k, m in ks]
        lo_hi = [wilson(k, m) for k, m in ks]
        x = [n * (1 + 0.03 * (i - len(table) / 2)) for n in ns]  # a small offset: overlapping bars stay readable
        err = [
            [v - lo for v, (lo, _) in zip(p, lo_hi, strict=True)],
            [hi - v for v, (_, hi) in zip(p, lo_hi, strict=True)],
        ]
        label = name if name != VIDEO else f"{name} ({args.video} episodes)"
        ax.errorbar(x, p, yerr=err, marker="o" if len(ns) > 1 else "s", capsize=3, label=label)
    ax.set_xscale("log")
    ax.set_xticks(sorted(args.demos), [str(n) for n in sorted(args.demos)])
    ax.minorticks_off()  # the log axis's minor labels would crowd out the demonstration counts
    ax.set_xlabel("demonstrations per task")
    ax.set_ylabel(f"success, pooled over {len(args.tasks)} tasks (95% Wilson)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(
        f"fine-tuned on tasks the base never saw: {args.episodes} held-out layouts per task and arm", fontsize=9
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def report(results: dict, args, started: dict, pending: list) -> str:
    table = {name: {} for name in args.arms}
    for (_task, n, name), c in results.items():
        k, m = table[name].get(n, (0, 0))
        table[name][n] = (k + c["successes"], m + c["episodes"])
    table = {name: by_n for name, by_n in table.items() if by_n}
    # RESULTS.md's plot only with --write-results: a dev or partial run draws beside its runs
    plot(table, args, (REPO / "benchmarks" if args.write_results else args.out) / "fewshot.png")
    ns = sorted(args.demos)
    command = shlex.join(sys.argv[1:])
    lines = [
        SECTION,
        "",
        f"Started {started['at']} with `.venv/bin/python benchmarks/finetune.py {command}` (robofm "
        f"{robofm_revision()}, {cpu_name()}, 2 cores; load average {started['load']} at the start, {load_now()} "
        f"at the end; {args.parallel} arm(s) at a time). Tasks: {', '.join(args.tasks)}.",
        "",
        f"Success pooled over the tasks ({args.episodes} episodes per task and arm, 95% Wilson interval):",
        "",
        "| arm | " + " | ".join(f"{n} demos" for n in ns) + " | minutes per arm: train, sim (mean; max) |",
        "|---|" + "---|" * len(ns) + "---:|",
    ]
    for name, by_n in table.items():
        cells = [c["seconds"] for (_, _, a), c in results.items() if a == name]
        train, sim = ([s.get(k, 0) / 60 for s in cells] for k in ("train", "sim"))
        cols = [rate(*by_n[n]) if n in by_n else "-" for n in ns]
        minutes = f"{sum(train) / len(train):.1f}, {sum(sim) / len(sim):.1f}; {max(train):.1f}, {max(sim):.1f}"
        lines.append(f"| {name} | " + " | ".join(cols) + f" | {minutes} |")
    lines += [
        "",
        "![success against demonstrations per arm](fewshot.png)",
        "",
        "Per task:",
        "",
        "| task | demos | " + " | ".join(table) + " |",
        "|---|---:|" + "---|" * len(table),
    ]
    for task in args.tasks:
        for n in ns:
            cols = [rate(*pooled([results[(task, n, a)]])) if (task, n, a) in results else "-" for a in table]
            lines.append(f"| {task} | {n} | " + " | ".join(cols) + " |")
    if pending:
        count = collections.Counter((a, n) for _, n, a in pending)
        missing = "; ".join(f"{a} with {n} demos on {k} task(s)" for (a, n), k in count.items())
        lines += ["", f"Not scored yet ({len(pending)} of {len(pending) + len(results)} cells): {missing}."]
    bars = bar_lines(table, ns)
    return "\n".join(lines + ([""] + bars if bars else []))


def bar_lines(table: dict, ns: list[int]) -> list[str]:
    """Issue 23's bars, where the table has what they read."""
    scratch = [a for a in ("scratch", "tuned scratch") if a in table]
    if "base" not in table or not scratch or ns[0] not in table["base"]:
        return []
    lines = []
    k, m = table["base"][ns[0]]
    best = max((table[a][ns[0]] for a in scratch if ns[0] in table[a]), key=lambda km: km[0] / km[1], default=None)
    if best:
        gap = 100 * (k / m - best[0] / best[1])
        lines.append(
            f"- At {ns[0]} demonstrations the base beats the better scratch recipe by {gap:+.0f} points "
            f"(bar: +15): {rate(k, m)} against {rate(*best)}."
        )
    top = max((table[a][ns[-1]] for a in scratch if ns[-1] in table[a]), key=lambda km: km[0] / km[1], default=None)
    if top and len(ns) > 1:
        verdict = "matches or beats" if k / m >= top[0] / top[1] else "falls short of"
        lines.append(
            f"- Data efficiency: the base with {ns[0]} demonstrations {verdict} the better scratch recipe "
            f"with {ns[-1]}: {rate(k, m)} against {rate(*top)}."
        )
    return lines


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", type=Path, required=True, help="the pretrained base: a run or export folder")
    p.add_argument("--base-noframe", type=Path, help="a base pretrained with objective.frame_weight=0")
    p.add_argument("--tasks", default="ml45-test", help="ml45-test (the five held-out tasks) or task names, a,b,...")
    p.add_argument("--demos", default="5,20", help="demonstrations per task, one fine-tune per count")
    p.add_argument("--video", type=int, default=15, help="action-free episodes beside the smallest count (0: none)")
    p.add_argument("--episodes", type=int, default=20, help="simulated episodes per task and arm")
    p.add_argument("--max-steps", type=int, default=150, help="control steps per episode (the collector's cap)")
    p.add_argument(
        "--layout-seed",
        type=int,
        default=0,
        help="MT1 seed the scored layouts start from: another one (100) gives dev layouts to choose recipes on",
    )
    p.add_argument(
        "--arm",
        nargs="+",
        action="append",
        default=[],
        metavar="NAME INIT OVERRIDE",
        help="another arm: its name, base | base-noframe | scratch, and its overrides",
    )
    p.add_argument("--only", help="run these arms alone (comma-separated names)")
    p.add_argument("--root", type=Path, default=REPO / "outputs" / "fewshot", help="the tasks' data")
    p.add_argument("--out", type=Path, default=REPO / "outputs" / "bench_fewshot", help="the runs and scores")
    p.add_argument("--parallel", type=int, default=2, help="arms at once (one thread each when > 1)")
    p.add_argument("--overrides", nargs="*", default=[], help="training overrides for every arm")
    p.add_argument("--write-results", action="store_true")
    p.add_argument(
        "--report",
        action="store_true",
        help="report the cells scored so far (of this or a running grid); train and score nothing",
    )
    args = p.parse_args(argv)
    args.tasks = HELD_OUT_TASKS if args.tasks == "ml45-test" else [t for t in args.tasks.split(",") if t]
    args.demos = sorted(int(n) for n in args.demos.split(","))
    args.arms = dict(ARMS)
    for spec in args.arm:
        if len(spec) < 2 or spec[1] not in ("base", "base-noframe", "scratch"):
            p.error(f"--arm {' '.join(spec)}: give NAME, then base, base-noframe or scratch, then overrides")
        args.arms[spec[0]] = (spec[1], spec[2:])
    if not args.base_noframe:
        args.arms = {k: v for k, v in args.arms.items() if v[0] != "base-noframe"}
    if not args.video:
        args.arms.pop(VIDEO, None)
    if args.only:
        unknown = set(args.only.split(",")) - set(args.arms)
        if unknown:
            p.error(f"--only: no arm {sorted(unknown)}; the arms are {list(args.arms)}")
        args.arms = {k: v for k, v in args.arms.items() if k in args.only.split(",")}
    args.bases = {"base": args.base.resolve(), "base-noframe": args.base_noframe and args.base_noframe.resolve()}
    return args


def base_stores(base: Path) -> list[str]:
    """The stores the base trained on, as its export records them (their layouts of a task are held out too)."""
    export = base / "export" if (base / "export").is_dir() else base
    record = export / "trained_on.json"
    trained = json.loads(record.read_text()) if record.is_file() else {}
    return trained.get("stores", []) + (trained.get("base_stores") or [])


def main() -> None:
    args = parse()
    args.out.mkdir(parents=True, exist_ok=True)
    first = args.out / "started.json"  # a rerun that gathers finished arms reports the first run's start
    if not first.is_file():
        first.write_text(json.dumps({"at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "load": load_now()}))
    started = json.loads(first.read_text())
    stores = sorted({s for b in args.bases.values() if b for s in base_stores(b)})
    args.base_stores = [s for s in stores if (Path(s) / "manifest.json").is_file()]
    if len(args.base_stores) < len(stores):  # a base from another machine: its corpus may be elsewhere
        held_out = all(t in HELD_OUT_TASKS for t in args.tasks)
        print(
            f"warning: the bases' training stores {sorted(set(stores) - set(args.base_stores))} are not on disk: "
            + (
                "pretraining refuses the held-out tasks, so they hold none of their layouts"
                if held_out
                else "their layouts of these tasks cannot be held out"
            ),
            file=sys.stderr,
        )
    data = {} if args.report else {task: task_data(task, args.root, args.demos, args.video) for task in args.tasks}
    threads = 1 if args.parallel > 1 else None
    results, failed, pending = {}, [], []
    with ThreadPoolExecutor(1 if args.report else args.parallel) as pool:
        futures = {job: pool.submit(cell, *job, args, data.get(job[0], {}), threads) for job in jobs(args)}
        for job, f in futures.items():
            try:
                results[job] = f.result()
            except NotScored:
                pending.append(job)
            except Exception as e:  # noqa: BLE001 -- one failed arm must not lose the others' table
                failed.append(job)
                print(f"{' / '.join(map(str, job))} failed: {e}", file=sys.stderr)
    if pending:
        print(f"--report: {len(pending)} of {len(futures)} cells are not scored yet", file=sys.stderr)
    (args.out / "results.json").write_text(
        json.dumps([{"task": t, "demos": n, "arm": a, **c} for (t, n, a), c in results.items()], indent=1)
    )
    publish(SECTION, report(results, args, started, pending), args.write_results and not failed)
    if failed:
        sys.exit(f"{len(failed)} arm(s) failed: rerun the same command to retry them (finished ones are kept)")


if __name__ == "__main__":
    main()
