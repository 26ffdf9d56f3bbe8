"""`robofm-eval-sim policy=PATH env=metaworld task=TASK [episodes=20] [max_steps=100] [seed=0] [out=DIR]
[train_store=auto|none|STORE,...] [videos=3] [execute=N] [ensemble=M] [fps=20]`: closed-loop rollouts of a policy
in simulation (one action per control step at `fps`, the rate of the data it was trained on; the demo's is 20),
its success rate with a 95% Wilson interval, and rollout videos.

Held-out layouts: episodes run on MetaWorld MT1 layouts (seed, index) drawn from `seed` upward, skipping every
layout that an episode of this task in a training store was recorded on (the store's `layout` record, written by
scripts/collect_metaworld.py). `train_store=auto` (the default) reads the stores the policy's export says trained
it, the base's included; `train_store=none` skips no layout (say so where you report the number). A training
episode of the task without a layout record is an error: its layout cannot be told apart. Needs the sim extra (`pip install robofm[sim]`); rendering is headless
(robofm.sim.gl chooses MUJOCO_GL; where neither OSMesa nor EGL works the error names the package to install).
The keys are SimEvalConfig's fields (`--help` lists them with their types and defaults, `--cfg job` prints the
resolved config). Exit status 2 on a usage error or without a headless GL."""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from robofm.cli import parse_command
from robofm.errors import RobofmError, UsageError
from robofm.models.card import export_of, record_eval


@dataclass
class SimEvalConfig:
    """What `robofm-eval-sim` runs: the keys of its command line."""

    policy: str = field(metadata={"help": "a run, checkpoint or export folder"})
    task: str = field(metadata={"help": "a MetaWorld v3 task, e.g. reach-v3"})
    env: str = field(default="metaworld", metadata={"help": "the simulator (only metaworld)"})
    episodes: int = field(default=20, metadata={"help": "20 give an interval of about +-20% at 50%"})
    max_steps: int = field(default=100, metadata={"help": "control steps per episode"})
    seed: int = field(default=0, metadata={"help": "seeds the layouts and the policy's sampling"})
    out: str | None = field(default=None, metadata={"help": "output folder; null: outputs/eval_sim/TASK"})
    train_store: tuple[str, ...] = field(default=("auto",), metadata={
        "help": "stores whose layouts are skipped: auto (the policy's training stores), none, or paths"})
    embodiment: str | None = field(default=None, metadata={"help": "null: the one the policy was trained on"})
    execute: int | None = field(default=None, metadata={"help": "actions of a chunk played before predicting "
                                                                 "again; null: the whole chunk"})
    hide_past_actions: bool | None = field(default=None, metadata={"help": "predict without the executed actions "
                                                                           "in view; null: as trained"})
    videos: int = field(default=3, metadata={"help": "episodes recorded as mp4"})
    ensemble: float | None = field(default=None, metadata={"help": "temporal ensembling weight m; null: off"})
    render_size: int = field(default=96, metadata={"help": "square camera image size in pixels"})
    fps: float = field(default=20.0, metadata={"help": "control rate; the training data's"})


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The 95% Wilson score interval of a success rate (sound for small n and rates near 0 or 1)."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def train_stores(given: tuple[str, ...], recorded: list[str], policy: str) -> list[str] | None:
    """The stores whose layouts are held out: `given` paths, none, or (auto) those the policy's export records;
    None where auto finds no record. UsageError for a store that is not on disk."""
    if not given or (len(given) > 1 and {"auto", "none"} & set(given)):
        raise UsageError(f"train_store={','.join(given)}: give auto, none, or store paths")
    if tuple(given) == ("none",):
        return []
    if tuple(given) == ("auto",):
        if not recorded:
            return None
        missing = [s for s in recorded if not (Path(s) / "manifest.json").is_file()]
        if missing:
            raise UsageError(f"{policy} was trained on store(s) {missing}, which are not on disk here: pass "
                             "train_store=STORE,... where they are now, or train_store=none to skip no layout")  # fmt: skip
        return list(recorded)
    return [str(s) for s in given]


def used_layouts(stores: list[str], instruction: str) -> set[tuple[int, int]]:
    """The (MT1 seed, layout index) of every episode of the task (its instruction) in the stores, train and val.
    UsageError for a store that cannot be opened or an episode of the task that carries no layout."""
    from robofm.data.store import EpisodeStore

    used = set()
    for path in stores:
        unknown = []
        try:
            store = EpisodeStore(path, validate=False)
        except (RobofmError, OSError) as e:
            raise UsageError(f"train_store {path}: {e}") from e
        for ep in store.episodes:
            if ep.task != instruction:
                continue
            if not ep.layout or not {"mt1_seed", "mt1_index"} <= ep.layout.keys():
                unknown.append(ep.id)
            else:
                used.add((int(ep.layout["mt1_seed"]), int(ep.layout["mt1_index"])))
        if unknown:
            raise UsageError(f"train_store {path}: {len(unknown)} episode(s) of {instruction!r} ({', '.join(unknown[:3])}"
                             f"{', ...' if len(unknown) > 3 else ''}) carry no layout record, so their layouts "
                             "cannot be held out: recollect them with scripts/collect_metaworld.py, or pass "
                             "train_store=none to skip no layout")  # fmt: skip
    return used


def held_out_layouts(task: str, seed: int, n: int, used: set[tuple[int, int]]) -> tuple[list, int]:
    """([((seed, index), layout)] * n, how many were skipped): MT1 layouts from `seed` upward (50 per seed)
    that are not in `used`."""
    from robofm.sim.metaworld import mt1_layouts

    chosen, skipped = [], 0
    for s in range(seed, seed + len(used) // 50 + 1 + n):  # at most this many seeds hold n unused layouts
        for index, layout in enumerate(mt1_layouts(task, s)):
            if (s, index) in used:
                skipped += 1
            else:
                chosen.append(((s, index), layout))
            if len(chosen) == n:
                return chosen, skipped
    return chosen, skipped


def evaluate(cfg: SimEvalConfig, console: Console) -> dict:
    """Roll cfg.policy out for cfg.episodes episodes of cfg.task; writes results.json and the videos into the output
    folder and returns the result. UsageError for bad input, HeadlessGLError where MuJoCo cannot render (checked
    before the policy is loaded)."""
    if cfg.env != "metaworld":
        raise UsageError(f"env={cfg.env}: only metaworld is available")
    if cfg.episodes < 1 or cfg.max_steps < 1:
        raise UsageError(f"episodes={cfg.episodes}, max_steps={cfg.max_steps}: both must be >= 1")
    from robofm.sim import metaworld as mw

    mw.find_backend()
    from robofm.policy import load_policy
    from robofm.viz.video import write_mp4

    policy = load_policy(cfg.policy, ensemble=cfg.ensemble, seed=cfg.seed, embodiment=cfg.embodiment,
                         execute=cfg.execute, hide_past_actions=cfg.hide_past_actions)  # fmt: skip
    cameras = policy.builder.cameras
    unknown = [c for c in cameras if c not in mw.CAMERAS]
    if unknown:
        raise UsageError(f"the policy's cameras {unknown} are not MetaWorld cameras ({sorted(mw.CAMERAS)})")
    fps = cfg.fps
    env, repeat = mw.make_env(cfg.task, fps, cfg.max_steps)
    instruction = mw.INSTRUCTIONS[cfg.task]
    stores = train_stores(cfg.train_store, policy.trained_stores, cfg.policy)
    if stores and tuple(cfg.train_store) == ("auto",) and not policy.trained_stores_known:
        console.print(f"[yellow]warning:[/yellow] {cfg.policy} was fine-tuned from a base that does not record its "
                      "training stores: only the fine-tuning stores' layouts are held out; add the base's with "
                      "train_store=STORE,...")  # fmt: skip
    if stores is None:
        console.print(f"[yellow]warning:[/yellow] {cfg.policy} does not record its training stores (an older "
                      "export or a checkpoint): layouts are not checked against training; pass train_store=STORE")
    used = used_layouts(stores or [], instruction)
    layouts, skipped = held_out_layouts(cfg.task, cfg.seed, cfg.episodes, used)
    if stores:
        console.print(f"held-out layouts: skipped {skipped} of the {len(used)} MT1 layouts that training episodes "
                      f"of {cfg.task} in {len(stores)} store(s) used")  # fmt: skip
    renderer = mw.Renderer(env, cameras, cfg.render_size)
    out = Path(cfg.out or Path("outputs") / "eval_sim" / cfg.task)
    out.mkdir(parents=True, exist_ok=True)
    episodes = []
    columns = [TextColumn("[bold]rollouts"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
               TimeElapsedColumn()]  # fmt: skip
    with Progress(*columns, console=console) as bar:
        job = bar.add_task("episodes", total=cfg.episodes, rate="")
        for i, (layout_id, layout) in enumerate(layouts):
            env.set_task(layout)
            obs, _ = env.reset()
            policy.reset()
            frames, success, steps = [], False, 0
            while steps < cfg.max_steps and not success:
                steps += 1
                images = renderer.render()
                if i < cfg.videos:
                    frames.append(np.concatenate([images[c] for c in cameras], axis=1))
                state, _ = mw.split_obs(obs)
                action = np.clip(policy.select_action({"images": images, "state": state, "task": instruction}), -1, 1)
                for _ in range(repeat):
                    obs, _, _, _, info = env.step(action)
                    success |= bool(info["success"])
            video = str(write_mp4(out / f"episode_{i:03d}.mp4", frames, fps)) if frames else None
            episodes.append({"episode": i, "layout": {"mt1_seed": layout_id[0], "mt1_index": layout_id[1]},
                             "success": success, "steps": steps, "video": video})  # fmt: skip
            done = sum(e["success"] for e in episodes)
            bar.update(job, advance=1, rate=f"{done}/{len(episodes)} succeeded")
    renderer.close()
    env.close()
    n, k = len(episodes), sum(e["success"] for e in episodes)
    lo, hi = wilson(k, n)
    result = {"policy": str(cfg.policy), "env": "metaworld", "task": cfg.task, "instruction": instruction,
              "episodes": n, "successes": k, "success_rate": k / n if n else 0.0, "ci95": [lo, hi],
              "max_steps": cfg.max_steps, "seed": cfg.seed, "embodiment": policy.embodiment,
              "execute": policy.execute, "ensemble": cfg.ensemble, "hide_past_actions": cfg.hide_past_actions,
              "train_stores": stores, "skipped_layouts": skipped, "rollouts": episodes}  # fmt: skip
    (out / "results.json").write_text(json.dumps(result, indent=1))
    result["out"] = str(out)
    return result


def main(argv: list[str] | None = None) -> int:
    cfg = parse_command(SimEvalConfig, argv, prog="robofm-eval-sim", description=__doc__)
    console = Console(stderr=True)
    try:
        r = evaluate(cfg, console)
    except RobofmError as e:
        console.print(f"[red]robofm-eval-sim: error:[/red] {e}")
        return 2
    held_out = "" if r["train_stores"] is None else " on held-out layouts" if r["train_stores"] else \
        " (layouts not checked against training: train_store=none)"  # fmt: skip
    print(f"{r['task']}: {r['successes']}/{r['episodes']} succeeded{held_out}, success rate {r['success_rate']:.0%} "
          f"(95% CI {r['ci95'][0]:.0%}-{r['ci95'][1]:.0%}); videos and results.json in {r['out']}")  # fmt: skip
    export = export_of(cfg.policy)
    if export is not None:  # an export (or a run's): its model card shows this evaluation
        print(f"model card updated: {record_eval(export, 'robofm-eval-sim', r)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
