"""`robofm-eval-sim policy=PATH env=metaworld task=TASK [episodes=10] [max_steps=100] [seed=0] [out=DIR]
[videos=3] [ensemble=M] [fps=20]`: closed-loop rollouts of a policy in simulation (one action per control step
at `fps`, the rate of the data it was trained on; the demo's is 20), its success rate with a 95% Wilson interval,
and rollout videos. Needs the sim extra (`pip install robofm[sim]`); rendering is headless
(robofm.sim.metaworld chooses MUJOCO_GL). Exit status 2 on a usage error."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from robofm.cli import parse_settings
from robofm.errors import RobofmError, UsageError

KEYS = {"policy": str, "env": str, "task": str, "episodes": int, "max_steps": int, "seed": int, "out": str,
        "videos": int, "ensemble": float, "render_size": int, "fps": float}  # fmt: skip
DEFAULTS = {"env": "metaworld", "episodes": 10, "max_steps": 100, "seed": 0, "out": None, "videos": 3,
            "ensemble": None, "render_size": 96, "fps": 20.0}  # fmt: skip


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The 95% Wilson score interval of a success rate (sound for small n and rates near 0 or 1)."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def evaluate(args: dict, console: Console) -> dict:
    if args["env"] != "metaworld":
        raise UsageError(f"env={args['env']}: only metaworld is available")
    try:
        from robofm.sim import metaworld as mw
    except ImportError as e:
        raise UsageError(f"simulated evaluation needs the sim extra: pip install 'robofm[sim]' ({e})") from e
    from robofm.policy import load_policy
    from robofm.viz.video import write_mp4

    policy = load_policy(args["policy"], ensemble=args["ensemble"], seed=args["seed"])
    cameras = policy.builder.cameras
    unknown = [c for c in cameras if c not in mw.CAMERAS]
    if unknown:
        raise UsageError(f"the policy's cameras {unknown} are not MetaWorld cameras ({sorted(mw.CAMERAS)})")
    fps = args["fps"]
    env, layouts, repeat = mw.make_env(args["task"], args["seed"], fps, args["max_steps"])
    renderer = mw.Renderer(env, cameras, args["render_size"])
    instruction = mw.INSTRUCTIONS.get(args["task"], args["task"])
    out = Path(args["out"] or Path("outputs") / "eval_sim" / args["task"])
    out.mkdir(parents=True, exist_ok=True)
    episodes = []
    columns = [TextColumn("[bold]rollouts"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
               TimeElapsedColumn()]  # fmt: skip
    with Progress(*columns, console=console) as bar:
        job = bar.add_task("episodes", total=args["episodes"], rate="")
        for i in range(args["episodes"]):
            env.set_task(layouts[i % len(layouts)])
            obs, _ = env.reset()
            policy.reset()
            frames, success, steps = [], False, 0
            while steps < args["max_steps"] and not success:
                steps += 1
                images = renderer.render()
                if i < args["videos"]:
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
    result = {"policy": str(args["policy"]), "env": "metaworld", "task": args["task"], "instruction": instruction,
              "episodes": n, "successes": k, "success_rate": k / n if n else 0.0, "ci95": [lo, hi],
              "max_steps": args["max_steps"], "seed": args["seed"], "rollouts": episodes}  # fmt: skip
    (out / "results.json").write_text(json.dumps(result, indent=1))
    result["out"] = str(out)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="robofm-eval-sim", description=__doc__.split("\n\n")[0])
    parser.add_argument("settings", nargs="*", metavar="key=value", help=f"keys: {', '.join(KEYS)}")
    args = {**DEFAULTS, **parse_settings(parser, parser.parse_args(argv).settings, KEYS, ("policy", "task"))}
    console = Console(stderr=True)
    try:
        r = evaluate(args, console)
    except RobofmError as e:
        console.print(f"[red]robofm-eval-sim: error:[/red] {e}")
        return 2
    print(f"{r['task']}: {r['successes']}/{r['episodes']} succeeded, success rate {r['success_rate']:.0%} "
          f"(95% CI {r['ci95'][0]:.0%}-{r['ci95'][1]:.0%}); videos and results.json in {r['out']}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
