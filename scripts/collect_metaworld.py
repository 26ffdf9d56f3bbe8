#!/usr/bin/env python
"""Collect scripted-expert demonstrations on MetaWorld v3 tasks and write them as a LeRobot v3 dataset.

For every task of ``--tasks`` (the MT10 tasks by default; any of the 50 MetaWorld v3 tasks, which all have a
scripted expert, or ``all``) the script builds MetaWorld's MT1 benchmark for that task (50 goal/object layouts
drawn with ``--seed``), runs the task's scripted expert from ``metaworld.policies`` on successive layouts, renders
the chosen cameras offscreen, and keeps only the episodes in which the expert succeeded, until it has
``--episodes-per-task`` of them. Episodes are written with lerobot's own writer (``LeRobotDataset.create`` /
``add_frame`` / ``save_episode`` / ``finalize``), videos encoded by lerobot's PyAV encoder. Each frame carries the
task's instruction (robofm.sim.metaworld.INSTRUCTIONS) and its episode's layout, ``layout = [MT1 seed, layout
index]``, which robofm-convert keeps in the store and robofm-eval-sim reads to evaluate on layouts no training
episode used.

Timing: MetaWorld steps its controller at 80 Hz (frame_skip 5 x 2.5 ms). At ``--fps F`` the expert is queried
once per recorded frame and its action is held for 80/F simulator steps (action repeat), so every recorded
(observation, action) pair is exactly what the controller saw and did. Recording stops ``--tail`` frames after
the first success, or at ``--max-frames`` (then the episode counts as failed and is dropped).

Needs the sim extra (``pip install metaworld==3.1.1``, which pins mujoco 3.3.0) and an offscreen GL: importing
robofm.sim.metaworld sets MUJOCO_GL to a backend that renders (OSMesa or EGL, see robofm/sim/gl.py); where neither
does, the script exits 2 naming the package to install (``apt-get install -y libosmesa6``). Downloads nothing. Deterministic for a given ``--seed`` (and machine/MuJoCo build).

    python scripts/collect_metaworld.py --out datasets/metaworld_mt10 --overwrite
    python scripts/collect_metaworld.py --out outputs/button_press --tasks button-press-v3 --episodes-per-task 20
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach the hub: the dataset is local
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")  # one "Map" bar per saved episode otherwise
os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1: errors only, not its config banner per episode

import argparse  # noqa: E402
import logging  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
import zlib  # noqa: E402
from collections import Counter  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from robofm.errors import RobofmError  # noqa: E402
from robofm.sim.metaworld import (  # noqa: E402  (chooses MUJOCO_GL: before anything imports mujoco)
    CAMERAS,
    ENV_STATE_NAMES,
    INSTRUCTIONS,
    MT10_TASKS,
    STATE_NAMES,
    TASKS,
    Renderer,
    find_backend,
    make_env,
    mt1_layouts,
    split_obs,
)

ACTION_NAMES = ["dx", "dy", "dz", "grip"]
LAYOUT_NAMES = ["mt1_seed", "mt1_index"]
ONE_OBJECT = [*range(7), *range(14, 17)]  # ENV_STATE_NAMES without the second object's slot


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--out", type=Path, default=Path("datasets/metaworld_mt10"), help="dataset folder to create")
    p.add_argument("--repo-id", default="robofm/metaworld_mt10", help="repo id recorded in the dataset")
    p.add_argument("--episodes-per-task", type=int, default=10, help="successful episodes kept per task")
    p.add_argument("--tasks", default=",".join(MT10_TASKS),
                   help="comma-separated MetaWorld v3 task names, or 'all' (robofm.sim.metaworld.TASKS)")  # fmt: skip
    p.add_argument("--resolution", type=int, default=96, help="square image size in pixels")
    p.add_argument("--cameras", default="corner2,left", help=f"comma-separated, from {sorted(CAMERAS)}")
    p.add_argument(
        "--fps", type=int, default=20, help="recorded frames per second; must divide 80 (MetaWorld's control rate)"
    )
    p.add_argument(
        "--max-frames",
        type=int,
        default=150,
        help="cap on recorded frames per episode (unfinished episodes are dropped)",
    )
    p.add_argument("--tail", type=int, default=5, help="frames recorded after the first success")
    p.add_argument(
        "--noise",
        type=float,
        default=0.1,
        help="std of Gaussian noise added to the expert's action (then clipped to [-1, 1])",
    )
    p.add_argument("--max-attempts", type=int, default=50, help="layouts tried per task (MT1 has 50 per seed)")
    p.add_argument("--seed", type=int, default=0, help="seeds the MT1 layouts and the action noise")
    p.add_argument(
        "--vcodec", default="libsvtav1", help="video codec for lerobot's encoder (libsvtav1, h264, hevc, ...)"
    )
    p.add_argument("--crf", type=int, default=25, help="video quality (lower = better, bigger)")
    p.add_argument("--gop", type=int, default=2, help="keyframe interval of the videos (lerobot's default is 2)")
    p.add_argument("--overwrite", action="store_true", help="delete --out first if it exists")
    args = p.parse_args(argv)
    args.tasks = TASKS if args.tasks == "all" else [t.strip() for t in args.tasks.split(",") if t.strip()]
    args.cameras = [c.strip() for c in args.cameras.split(",") if c.strip()]
    bad = [t for t in args.tasks if t not in INSTRUCTIONS]
    if bad or not args.tasks:
        p.error(f"unknown tasks {bad}; the MetaWorld v3 tasks are {', '.join(TASKS)}")
    bad = [c for c in args.cameras if c not in CAMERAS]
    if bad or not args.cameras or len(set(args.cameras)) != len(args.cameras):
        p.error(f"--cameras must be distinct names from {sorted(CAMERAS)}")
    # MetaWorld's model sets a 640x480 offscreen buffer, which bounds the square image size.
    if args.episodes_per_task < 1 or not 16 <= args.resolution <= 480 or args.max_frames < 2 or args.tail < 0:
        p.error("need --episodes-per-task >= 1, 16 <= --resolution <= 480, --max-frames >= 2, --tail >= 0")
    return args


@dataclass
class Episode:
    frames: list[dict] = field(default_factory=list)
    success_frame: int | None = None  # first recorded frame whose action led to success


def run_episode(env, policy, renderer: Renderer | None, rng: np.random.Generator, args, repeat: int) -> Episode:
    """One expert rollout on the env's current layout. Without a renderer only the trajectory is computed (cheap);
    the same layout and rng seed replay the identical trajectory with images."""
    obs, _ = env.reset()
    ep = Episode()
    for t in range(args.max_frames):
        images = renderer.render() if renderer is not None else {}
        state, env_state = split_obs(obs)
        action = np.asarray(policy.get_action(obs), dtype=np.float64)
        if args.noise > 0:
            action = action + rng.normal(0.0, args.noise, size=action.shape)
        action = np.clip(action, -1.0, 1.0).astype(np.float32)
        success = False
        for _ in range(repeat):
            obs, _, _, truncated, info = env.step(action)
            success |= bool(info["success"])
        ep.frames.append({"images": images, "state": state, "env_state": env_state, "action": action})
        if success and ep.success_frame is None:
            ep.success_frame = t
        if ep.success_frame is not None and t >= ep.success_frame + args.tail:
            break
    return ep


def make_features(cameras: list[str], size: int, env_state_names: list[str]) -> dict:
    features = {
        f"observation.images.{cam}": {
            "dtype": "video",
            "shape": (size, size, 3),
            "names": ["height", "width", "channels"],
        }
        for cam in cameras
    }
    features["observation.state"] = {"dtype": "float32", "shape": (len(STATE_NAMES),), "names": STATE_NAMES}
    features["observation.environment_state"] = {
        "dtype": "float32",
        "shape": (len(env_state_names),),
        "names": env_state_names,
    }
    features["action"] = {"dtype": "float32", "shape": (len(ACTION_NAMES),), "names": ACTION_NAMES}
    features["layout"] = {"dtype": "int64", "shape": (len(LAYOUT_NAMES),), "names": LAYOUT_NAMES}
    return features


def has_second_object(env, layout) -> bool:
    env.set_task(layout)
    obs, _ = env.reset()
    return bool(np.any(split_obs(obs)[1][7:14] != 0))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        find_backend()  # before metaworld imports mujoco, which fails inside without a GL backend
    except RobofmError as e:
        print(f"collect_metaworld: error: {e}", file=sys.stderr)
        return 2
    warnings.filterwarnings("ignore", message="Constant\\(s\\) may be too high")  # metaworld.policies.move
    logging.getLogger("lerobot.utils.import_utils").setLevel(logging.ERROR)  # torchcodec probe noise

    from lerobot.configs.video import RGBEncoderConfig
    from lerobot.datasets.lerobot_dataset import LeRobotDataset
    from lerobot.utils.io_utils import load_json, write_json
    from metaworld.policies import ENV_POLICY_MAP

    try:  # every task's env, checked before the output folder is touched
        envs = {task: make_env(task, args.fps, args.max_frames) for task in args.tasks}
    except RobofmError as e:
        print(f"collect_metaworld: error: {e}", file=sys.stderr)
        return 2
    if args.out.exists():
        if not args.overwrite:
            print(f"{args.out} exists; pass --overwrite to replace it", file=sys.stderr)
            return 2
        shutil.rmtree(args.out)
    args.out.parent.mkdir(parents=True, exist_ok=True)

    # The second object's slot of the environment state is kept only where a task has one (hammer, stick-*), so
    # the one-object tasks' datasets have the 10 columns they always had.
    two_objects = any(has_second_object(env, mt1_layouts(task, args.seed)[0]) for task, (env, _) in envs.items())
    env_columns = list(range(len(ENV_STATE_NAMES))) if two_objects else ONE_OBJECT
    encoder = RGBEncoderConfig(vcodec=args.vcodec, crf=args.crf, g=args.gop)
    features = make_features(args.cameras, args.resolution, [ENV_STATE_NAMES[i] for i in env_columns])
    ds = LeRobotDataset.create(
        repo_id=args.repo_id,
        fps=args.fps,
        features=features,
        root=args.out,
        use_videos=True,
        robot_type="sawyer",
        rgb_encoder=encoder,
        encoder_threads=1,  # deterministic, and the 96 px videos do not need more
    )

    t_start = time.perf_counter()
    kept: dict[str, list[int]] = {}
    failed: dict[str, list[int]] = {}  # MT1 layout indices where the expert did not succeed
    attempts: Counter = Counter()
    for task in args.tasks:
        t_task = time.perf_counter()
        env, repeat = envs[task]
        dt = float(env.model.opt.timestep) * env.frame_skip  # 0.0125 s
        policy = ENV_POLICY_MAP[task]()
        renderer = Renderer(env, args.cameras, args.resolution)
        instruction = INSTRUCTIONS[task]
        kept[task], failed[task] = [], []
        layouts = mt1_layouts(task, args.seed)[: args.max_attempts]  # drawn from np.random seeded by --seed
        for layout_index, layout in enumerate(layouts):
            if len(kept[task]) >= args.episodes_per_task:
                break
            attempts[task] += 1
            env.set_task(layout)
            task_index = MT10_TASKS.index(task) if task in MT10_TASKS else 100 + zlib.crc32(task.encode()) % 10_000
            noise_seed = [args.seed, task_index, layout_index]  # independent of --tasks order
            # Dry run without rendering (software GL is the slow part), then replay the successes with cameras.
            dry = run_episode(env, policy, None, np.random.default_rng(noise_seed), args, repeat)
            if dry.success_frame is None:
                failed[task].append(layout_index)
                continue
            ep = run_episode(env, policy, renderer, np.random.default_rng(noise_seed), args, repeat)
            if ep.success_frame != dry.success_frame or not all(
                np.array_equal(a["action"], b["action"]) and np.array_equal(a["state"], b["state"])
                for a, b in zip(ep.frames, dry.frames, strict=True)
            ):
                raise RuntimeError(f"{task} layout {layout_index}: the replay diverged from the dry run")
            for fr in ep.frames:
                frame = {f"observation.images.{cam}": img for cam, img in fr["images"].items()}
                frame["observation.state"] = fr["state"]
                frame["observation.environment_state"] = fr["env_state"][env_columns]
                frame["layout"] = np.array([args.seed, layout_index], dtype=np.int64)
                frame["action"] = fr["action"]
                frame["task"] = instruction
                ds.add_frame(frame)
            ds.save_episode()
            kept[task].append(len(ep.frames))
        renderer.close()
        env.close()
        if len(kept[task]) < args.episodes_per_task:
            print(f"warning: {task}: only {len(kept[task])} successes in {attempts[task]} layouts", file=sys.stderr)
        print(
            f"{task:<24} kept {len(kept[task]):>3}  lengths {kept[task]}  "
            f"failed layouts {failed[task]}  ({time.perf_counter() - t_task:.1f}s)",
            flush=True,
        )
    ds.finalize()
    # lerobot writes stats.json keys in set order (varies with PYTHONHASHSEED); sort them so reruns are byte-identical.
    stats_path = args.out / "meta" / "stats.json"
    if stats_path.is_file():
        write_json(dict(sorted(load_json(stats_path).items())), stats_path)
    images_tmp = args.out / "images"  # lerobot's temporary PNG folder; empty after encoding
    if images_tmp.is_dir() and not any(p.is_file() for p in images_tmp.rglob("*")):
        shutil.rmtree(images_tmp)
    elapsed = time.perf_counter() - t_start

    total_eps = sum(len(v) for v in kept.values())
    total_frames = sum(sum(v) for v in kept.values())
    size = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file())
    print()
    print(f"dataset      {args.out} (repo_id {args.repo_id})")
    print(
        f"episodes     {total_eps} kept, {sum(len(v) for v in failed.values())} failed and dropped, {sum(attempts.values())} attempted"
    )
    print(f"frames       {total_frames} at {args.fps} fps (action repeat {repeat} x {dt * 1000:g} ms)")
    print(
        f"cameras      {', '.join(args.cameras)} at {args.resolution}x{args.resolution}, {args.vcodec} crf {args.crf} g {args.gop}"
    )
    print(f"seed         {args.seed}, action noise std {args.noise}")
    print(f"size         {size / 1e6:.2f} MB")
    print(f"time         {elapsed:.1f}s")
    return 0 if total_eps > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
