"""Does pretraining help? The same fine-tuning run from the pretrained base and from scratch, side by side.

    .venv/bin/python benchmarks/finetune.py --base outputs/demo/run --store outputs/handle_press/store \
        [--steps 30] [--sim-episodes 5] [--write-results]

Both runs use `experiment=demo` (the small model) on the new task's store with the same seed, data, batch, learning
rate schedule and number of steps; one starts from the base (`robofm-finetune init_from=BASE`), the other from a
random initialisation (`robofm-train`). Reported: the held-out (val) action loss every 10 steps, robofm-eval's
held-out action MSE against its baselines, and robofm-eval-sim's success rate in MetaWorld.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from common import REPO, cpu_name, load_now, publish, robofm_revision

SECTION = "## Fine-tuning: pretrained base against scratch"
BIN = Path(sys.executable).parent


def run(cmd: list[str]) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=REPO, check=True)


def val_curve(run_dir: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {r["step"]: r["val/action"] for r in rows if "val/action" in r}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", type=Path, required=True, help="the pretrained run or export folder")
    p.add_argument("--store", type=Path, required=True, help="the new task's store (with a val split)")
    p.add_argument("--task", default="handle-press-v3", help="the MetaWorld task of --store, for robofm-eval-sim")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--sim-episodes", type=int, default=5)
    p.add_argument("--out", type=Path, default=REPO / "outputs" / "bench_finetune")
    p.add_argument("--write-results", action="store_true")
    args = p.parse_args()
    common = ["experiment=demo", f"data.path={args.store}", f"trainer.max_steps={args.steps}", "trainer.val_every=10",
              "trainer.checkpoint_every=0", "trainer.max_minutes=null", "optim.warmup_steps=5", "seed=0"]  # fmt: skip
    runs = {"pretrained": args.out / "pretrained", "scratch": args.out / "scratch"}
    run([str(BIN / "robofm-finetune"), f"init_from={args.base}", *common, f"hydra.run.dir={runs['pretrained']}"])
    run([str(BIN / "robofm-train"), *common, f"hydra.run.dir={runs['scratch']}"])
    results = {}
    for name, run_dir in runs.items():
        out = run_dir / "eval.json"
        run([str(BIN / "robofm-eval"), f"checkpoint={run_dir}", f"data.path={args.store}", f"out={out}",
             "horizons=1", "sampler_steps=1", "batches=8", "batch_size=4"])  # fmt: skip
        ev = json.loads(out.read_text())
        sim = {}
        if args.sim_episodes:
            run([str(BIN / "robofm-eval-sim"), f"policy={run_dir}", f"task={args.task}", f"episodes={args.sim_episodes}",
                 "max_steps=60", "videos=1", f"out={run_dir / 'sim'}"])  # fmt: skip
            sim = json.loads((run_dir / "sim" / "results.json").read_text())
        results[name] = {"val": val_curve(run_dir), "eval": ev, "sim": sim}
    steps = sorted(set(results["pretrained"]["val"]) & set(results["scratch"]["val"]))
    lines = [SECTION, "",
             f"`.venv/bin/python benchmarks/finetune.py --base {args.base} --store {args.store} --steps {args.steps} "
             f"--sim-episodes {args.sim_episodes} --write-results` (robofm {robofm_revision()}, {cpu_name()}, load "
             f"{load_now()}). The small model, {args.steps} steps of 8 windows on {args.task} "
             f"({json.loads((args.store / 'manifest.json').read_text())['episodes'].__len__()} episodes), from the "
             "base and from scratch, same seed and schedule.", "",
             "| held-out action loss at step | " + " | ".join(str(s) for s in steps) + " |",
             "| --- |" + " ---: |" * len(steps)]  # fmt: skip
    for name in runs:
        lines.append(f"| {name} | " + " | ".join(f"{results[name]['val'][s]:.3f}" for s in steps) + " |")
    lines += ["", "| run | action MSE (robot units) | train-mean baseline | repeat-last baseline | token accuracy | "
              "sim success |", "| --- | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
    for name in runs:
        mse, sim = results[name]["eval"]["actions"]["mse"], results[name]["sim"]
        acc = results[name]["eval"]["actions"]["token_accuracy"]
        success = (f"{sim['successes']}/{sim['episodes']} (95% CI {sim['ci95'][0]:.0%}-{sim['ci95'][1]:.0%})"
                   if sim else "not run")  # fmt: skip
        lines.append(f"| {name} | {mse['model']:.4f} | {mse['train_mean']:.4f} | {mse['repeat_last']:.4f} | "
                     f"{acc:.3f} | {success} |")  # fmt: skip
    text = "\n".join(lines)
    (args.out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    publish(SECTION, text, args.write_results)


if __name__ == "__main__":
    main()
