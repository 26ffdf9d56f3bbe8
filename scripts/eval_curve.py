"""The steps-against-metric curve of one run: score every kept checkpoint of RUN with robofm-eval on
a store's held-out split, and print one Markdown row per checkpoint (the world model against copy-last at each
horizon, its action use, and the action MSE against the baselines). Usage, from the repository root:

    .venv/bin/python scripts/eval_curve.py RUN STORE [--out DIR] [robofm-eval keys, e.g. horizons=1,4 batches=16]

Each checkpoint's result is written to DIR/eval-step-N.json (default RUN/curve/) and reused by the next run with the
same settings (store, split, seed, batches, horizons, sampler steps), so an interrupted curve continues where it
stopped. The frame columns read verdict_sampler_steps (1 unless given).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from robofm.cli import parse_command
from robofm.errors import RobofmError
from robofm.eval.__main__ import NAMES
from robofm.eval.evaluate import EvalConfig, evaluate

DEFAULTS = ["horizons=1,4", "batches=16", "batch_size=4", "sampler_steps=1", "verdict_sampler_steps=1"]


def checkpoints(run: Path) -> list[tuple[int, Path]]:
    """(step, folder) of RUN/checkpoints/step-N, oldest first."""
    found = [(int(p.name.removeprefix("step-")), p) for p in (run / "checkpoints").glob("step-*") if p.is_dir()]
    if not found:
        raise SystemExit(f"eval_curve: {run} has no checkpoints/step-N folder")
    return sorted(found)


def row(step: int, result: dict) -> str:
    """One Markdown row; "-" where robofm-eval had no number (a PSNR not finite, a baseline not computed)."""
    steps = str(result["verdict_sampler_steps"])
    wm = {h: result["world_model"][str(h)]["sampler_steps"][steps] for h in result["horizons"]}
    cells = [f"{step:,}", *(_db(wm[h]["gain_over_copy_last"]["psnr"]) for h in wm)]
    cells.append(_db(wm[result["horizons"][-1]]["action_use"]["psnr"]))
    mse = result["actions"]["mse"]
    cells.append(" / ".join("-" if mse[m] is None else f"{mse[m]:.3f}" for m in ("model", "repeat_last", "train_mean")))
    return "| " + " | ".join(cells) + " |"


def _db(x: float | None) -> str:
    return "-" if x is None else f"{x:+.2f} dB"


def same_settings(result: dict, cfg: EvalConfig) -> bool:
    """Whether a saved result was scored as `cfg` asks (horizons it dropped for short episodes count as asked; a
    store with fewer windows than batches x batch_size is scored again each time)."""
    asked = {"store": str(cfg.data_path), "split": cfg.split, "seed": cfg.seed, "batch_size": cfg.batch_size,
             "horizons": sorted(set(cfg.horizons)), "verdict_sampler_steps": cfg.verdict_sampler_steps or cfg.sampler_steps,
             "sampler_steps": cfg.sampler_settings()}  # fmt: skip
    saved = {k: result.get(k) for k in asked}
    saved["horizons"] = sorted(result.get("horizons", []) + result.get("dropped_horizons", []))
    return saved == asked and result.get("batches") == cfg.batches


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="eval_curve", description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path)
    p.add_argument("store")
    p.add_argument("--out", type=Path, help="where the eval-step-N.json files go (default RUN/curve)")
    p.add_argument("keys", nargs="*", help="robofm-eval keys (default: " + " ".join(DEFAULTS) + ")")
    args = p.parse_intermixed_args(argv)
    out = args.out or args.run / "curve"
    rows = []
    for step, ckpt in checkpoints(args.run):
        path = out / f"eval-step-{step}.json"
        keys = [f"checkpoint={ckpt}", f"data.path={args.store}", f"out={path}", *DEFAULTS, *args.keys]
        cfg = parse_command(EvalConfig, keys, prog="eval_curve", names=NAMES)
        if not path.is_file() or not same_settings(json.loads(path.read_text()), cfg):
            try:
                evaluate(cfg)
            except RobofmError as e:
                raise SystemExit(f"eval_curve: {ckpt}: {e}") from e
        result = json.loads(path.read_text())
        rows.append(row(step, result))
        print(rows[-1], file=sys.stderr, flush=True)
    horizons = " | ".join(f"h{h} vs copy-last" for h in result["horizons"])
    print(f"| step | {horizons} | action use h{result['horizons'][-1]} | action MSE (model / repeat-last / train-mean) |")
    print("|" + "---:|" * (len(result["horizons"]) + 3))
    print("\n".join(rows))


if __name__ == "__main__":
    main()
