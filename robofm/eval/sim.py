"""`robofm-eval-sim policy=PATH env=metaworld task=TASK [episodes=10] [max_steps=100] [seed=0] [out=DIR]
[videos=3] [ensemble=M] [fps=20]`: closed-loop rollouts of a policy in simulation (one action per control step
at `fps`, the rate of the data it was trained on; the demo's is 20), its success rate with a 95% Wilson interval,
and rollout videos. Needs the sim extra (`pip install robofm[sim]`); rendering is headless
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


@dataclass
class SimEvalConfig:
    """What `robofm-eval-sim` runs: the keys of its command line."""

    policy: str = field(metadata={"help": "a run, checkpoint or export folder"})
    task: str = field(metadata={"help": "a MetaWorld v3 task, e.g. reach-v3"})
    env: str = field(default="metaworld", metadata={"help": "the simulator (only metaworld)"})
    episodes: int = 10
    max_steps: int = field(default=100, metadata={"help": "control steps per episode"})
    seed: int = field(default=0, metadata={"help": "seeds the layouts and the policy's sampling"})
    out: str | None = field(default=None, metadata={"help": "output folder; null: outputs/eval_sim/TASK"})
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


def evaluate(cfg: SimEvalConfig, console: Console) -> dict:
    """Roll cfg.policy out for cfg.episodes episodes of cfg.task; writes results.json and the videos into the output
    folder and returns the result. UsageError for bad input, HeadlessGLError where MuJoCo cannot render (checked
    before the policy is loaded)."""
    if cfg.env != "metaworld":
        raise UsageError(f"env={cfg.env}: only metaworld is available")
    from robofm.sim import metaworld as mw

    mw.find_backend()
    from robofm.policy import load_policy
    from robofm.viz.video import write_mp4

    policy = load_policy(cfg.policy, ensemble=cfg.ensemble, seed=cfg.seed)
    cameras = policy.builder.cameras
    unknown = [c for c in cameras if c not in mw.CAMERAS]
    if unknown:
        raise UsageError(f"the policy's cameras {unknown} are not MetaWorld cameras ({sorted(mw.CAMERAS)})")
    fps = cfg.fps
    env, layouts, repeat = mw.make_env(cfg.task, cfg.seed, fps, cfg.max_steps)
    renderer = mw.Renderer(env, cameras, cfg.render_size)
    instruction = mw.INSTRUCTIONS.get(cfg.task, cfg.task)
    out = Path(cfg.out or Path("outputs") / "eval_sim" / cfg.task)
    out.mkdir(parents=True, exist_ok=True)
    episodes = []
    columns = [TextColumn("[bold]rollouts"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
               TimeElapsedColumn()]  # fmt: skip
    with Progress(*columns, console=console) as bar:
        job = bar.add_task("episodes", total=cfg.episodes, rate="")
        for i in range(cfg.episodes):
            env.set_task(layouts[i % len(layouts)])
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
            episodes.append({"episode": i, "success": success, "steps": steps, "video": video})
            done = sum(e["success"] for e in episodes)
            bar.update(job, advance=1, rate=f"{done}/{len(episodes)} succeeded")
    renderer.close()
    env.close()
    n, k = len(episodes), sum(e["success"] for e in episodes)
    lo, hi = wilson(k, n)
    result = {"policy": str(cfg.policy), "env": "metaworld", "task": cfg.task, "instruction": instruction,
              "episodes": n, "successes": k, "success_rate": k / n if n else 0.0, "ci95": [lo, hi],
              "max_steps": cfg.max_steps, "seed": cfg.seed, "rollouts": episodes}  # fmt: skip
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
    print(f"{r['task']}: {r['successes']}/{r['episodes']} succeeded, success rate {r['success_rate']:.0%} "
          f"(95% CI {r['ci95'][0]:.0%}-{r['ci95'][1]:.0%}); videos and results.json in {r['out']}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
