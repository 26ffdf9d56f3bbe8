#!/usr/bin/env python
"""Collect MetaWorld v3 episodes (scripted experts, perturbed and exploring) and write them as a LeRobot v3 dataset.

For every task of ``--tasks`` (``mt10``, the default; ``ml45``, MetaWorld ML45's 45 train tasks; ``ml45-test``, its
5 test tasks; or task names) the script builds MetaWorld's MT1 benchmark for that task (50 goal/object layouts drawn
with ``--seed``), runs the task's scripted expert from ``metaworld.policies`` on successive layouts, renders the
chosen cameras offscreen, and keeps only the episodes that end in success, until it has ``--episodes-per-task`` of
them. ML45's five test tasks (robofm.sim.tasks.HELD_OUT_TASKS) are refused unless ``--allow-held-out``: a
pretraining corpus must not hold them.

Episode kinds (``--mix``, fractions of each task's episodes; the summary counts them). A smooth expert's next action
is nearly a function of its past, so a world model trained on experts alone can ignore the actions; the other kinds
make the action informative:
- ``expert``: the scripted expert, with ``--noise`` Gaussian noise on its action;
- ``dart``: the expert under temporally correlated noise (AR(1), ``--dart-std``, ``--dart-rho``) that pushes the arm
  visibly off its path, from which the expert recovers (DART);
- ``explore``: a first segment of ``--explore-frames`` random actions (a new uniform draw every 4 frames), after
  which the expert takes over and finishes.
The recorded action is always the executed one. Each frame carries ``layout = [MT1 seed, layout index, kind]``
(kind: the index in KINDS).

``--workers N`` runs tasks in N spawned processes; episodes are written in task order by the main process, so the
dataset does not depend on N. Episodes are written with lerobot's own writer (``LeRobotDataset.create`` /
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

    python scripts/collect_metaworld.py --out datasets/metaworld_mt10 --episodes-per-task 20 \
        --mix expert=0.4,dart=0.3,explore=0.3 --workers 2 --overwrite
    python scripts/collect_metaworld.py --out outputs/corpus/lerobot --tasks ml45 --episodes-per-task 24 \
        --mix expert=0.4,dart=0.3,explore=0.3 --workers 2 --overwrite
    python scripts/collect_metaworld.py --out outputs/button_press --tasks button-press-v3 --episodes-per-task 20
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach the hub: the dataset is local
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")  # one "Map" bar per saved episode otherwise
os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1: errors only, not its config banner per episode

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import multiprocessing  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
import zlib  # noqa: E402
from collections import Counter  # noqa: E402
from concurrent.futures import ProcessPoolExecutor  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from functools import partial  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from robofm.data.sources.video import leave_realtime_scheduling  # noqa: E402
from robofm.errors import RobofmError  # noqa: E402
from robofm.sim.metaworld import (  # noqa: E402  (chooses MUJOCO_GL: before anything imports mujoco)
    CAMERAS,
    ENV_STATE_NAMES,
    HELD_OUT_TASKS,
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
from robofm.sim.tasks import EPISODE_KINDS as KINDS  # noqa: E402
from robofm.sim.tasks import ML45_TRAIN_TASKS  # noqa: E402

ACTION_NAMES = ["dx", "dy", "dz", "grip"]
LAYOUT_NAMES = ["mt1_seed", "mt1_index", "kind"]
TASK_SETS = {"mt10": MT10_TASKS, "ml45": ML45_TRAIN_TASKS, "ml45-test": HELD_OUT_TASKS, "all": TASKS}
EXPLORE_HOLD = 4  # frames each random action of an exploring segment is held
ONE_OBJECT = [*range(7), *range(14, 17)]  # ENV_STATE_NAMES without the second object's slot


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--out", type=Path, default=Path("datasets/metaworld_mt10"), help="dataset folder to create")
    p.add_argument("--repo-id", default="robofm/metaworld_mt10", help="repo id recorded in the dataset")
    p.add_argument("--episodes-per-task", type=int, default=10, help="successful episodes kept per task")
    p.add_argument("--tasks", default="mt10",
                   help="mt10, ml45 (ML45's train tasks), ml45-test (its test tasks), all, or comma-separated task names")  # fmt: skip
    p.add_argument("--allow-held-out", action="store_true",
                   help=f"collect ML45's test tasks too ({', '.join(HELD_OUT_TASKS)}): never for a pretraining corpus")  # fmt: skip
    p.add_argument("--mix", default="expert=1",
                   help=f"fractions of each task's episodes per kind, from {', '.join(KINDS)} (e.g. expert=0.4,dart=0.3,explore=0.3)")  # fmt: skip
    p.add_argument("--dart-std", type=float, default=0.3, help="std of the dart kind's correlated action noise")
    p.add_argument("--dart-rho", type=float, default=0.8, help="frame-to-frame correlation of the dart noise")
    p.add_argument("--explore-frames", default="8,20", help="min,max frames of random actions before the expert")
    p.add_argument("--workers", type=int, default=1, help="processes that simulate and render tasks in parallel")
    p.add_argument("--resolution", type=int, default=96, help="square image size in pixels")
    p.add_argument("--cameras", default="corner2", help=f"comma-separated, from {sorted(CAMERAS)}")
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
    args.tasks = list(TASK_SETS.get(args.tasks) or [t.strip() for t in args.tasks.split(",") if t.strip()])
    args.cameras = [c.strip() for c in args.cameras.split(",") if c.strip()]
    bad = [t for t in args.tasks if t not in INSTRUCTIONS]
    if bad or not args.tasks:
        p.error(f"unknown tasks {bad}; the MetaWorld v3 tasks are {', '.join(TASKS)}")
    held = [t for t in args.tasks if t in HELD_OUT_TASKS]
    if held and not args.allow_held_out:
        p.error(f"{', '.join(held)}: test tasks of MetaWorld ML45, held out of every pretraining corpus; pass "
                f"--allow-held-out to collect them (for fine-tuning or evaluation)")  # fmt: skip
    try:
        args.mix = parse_mix(args.mix)
        low, high = (int(v) for v in args.explore_frames.split(","))
    except ValueError as e:
        p.error(f"--mix or --explore-frames: {e}")
    if not 1 <= low <= high or args.dart_std < 0 or not 0 <= args.dart_rho < 1 or args.workers < 1:
        p.error("need 1 <= --explore-frames min <= max, --dart-std >= 0, 0 <= --dart-rho < 1, --workers >= 1")
    args.explore_frames = (low, high)
    bad = [c for c in args.cameras if c not in CAMERAS]
    if bad or not args.cameras or len(set(args.cameras)) != len(args.cameras):
        p.error(f"--cameras must be distinct names from {sorted(CAMERAS)}")
    # MetaWorld's model sets a 640x480 offscreen buffer, which bounds the square image size.
    if args.episodes_per_task < 1 or not 16 <= args.resolution <= 480 or args.max_frames < 2 or args.tail < 0:
        p.error("need --episodes-per-task >= 1, 16 <= --resolution <= 480, --max-frames >= 2, --tail >= 0")
    return args


def parse_mix(text: str) -> dict[str, float]:
    """'expert=0.4,dart=0.3,explore=0.3' -> {kind: fraction}, normalised to sum to 1; ValueError naming the part."""
    mix = {}
    for part in text.split(","):
        kind, _, value = part.partition("=")
        if kind.strip() not in KINDS or not value:
            raise ValueError(f"{part!r} is not KIND=FRACTION with KIND one of {', '.join(KINDS)}")
        mix[kind.strip()] = float(value)
    if any(v < 0 for v in mix.values()) or sum(mix.values()) <= 0:
        raise ValueError(f"fractions must be >= 0 and not all 0: {text!r}")
    return {k: v / sum(mix.values()) for k, v in mix.items() if v > 0}


def kind_schedule(mix: dict[str, float], n: int) -> list[str]:
    """The kind of each of a task's n episodes: counts by largest remainder, the kinds spread evenly in order."""
    exact = {k: f * n for k, f in mix.items()}
    counts = {k: int(v) for k, v in exact.items()}
    for k in sorted(exact, key=lambda k: (counts[k] - exact[k], KINDS.index(k)))[: n - sum(counts.values())]:
        counts[k] += 1
    slots = [((i + 0.5) / c, KINDS.index(k), k) for k, c in counts.items() for i in range(c)]
    return [k for *_, k in sorted(slots)]


@dataclass
class Episode:
    frames: list[dict] = field(default_factory=list)
    success_frame: int | None = None  # first recorded frame whose action led to success
    render_s: float = 0.0


def run_episode(env, policy, renderer: Renderer | None, rng: np.random.Generator, args, repeat: int,
                kind: str = "expert") -> Episode:  # fmt: skip
    """One rollout of `kind` on the env's current layout. Without a renderer only the trajectory is computed
    (cheap); the same layout and rng seed replay the identical trajectory with images."""
    obs, _ = env.reset()
    ep = Episode()
    explore = int(rng.integers(args.explore_frames[0], args.explore_frames[1] + 1)) if kind == "explore" else 0
    dart = np.zeros(4)
    for t in range(args.max_frames):
        start = time.perf_counter()
        images = renderer.render() if renderer is not None else {}
        ep.render_s += time.perf_counter() - start
        state, env_state = split_obs(obs)
        action = np.asarray(policy.get_action(obs), dtype=np.float64)
        if t < explore:  # random actions, each held EXPLORE_HOLD frames, then the expert takes over
            if t % EXPLORE_HOLD == 0:
                held = rng.uniform(-1.0, 1.0, size=action.shape)
            action = held
        elif kind == "dart":  # AR(1) noise: the arm drifts off the expert's path for several frames at a time
            dart = args.dart_rho * dart + np.sqrt(1 - args.dart_rho**2) * rng.normal(0.0, args.dart_std, size=4)
            action = action + dart
        elif args.noise > 0:
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


@dataclass
class TaskResult:
    """What one task's collection gives the writer: its kept episodes (kind, MT1 layout index, frames) in order,
    the layouts each kind failed on, and where the time went."""

    task: str
    episodes: list[tuple[str, int, list[dict]]] = field(default_factory=list)
    failed: dict[str, list[int]] = field(default_factory=dict)
    attempts: int = 0
    simulate_s: float = 0.0
    render_s: float = 0.0


def task_index(task: str) -> int:
    """A task's number in the noise seeds: independent of --tasks and its order."""
    return MT10_TASKS.index(task) if task in MT10_TASKS else 100 + zlib.crc32(task.encode()) % 10_000


def collect_task(task: str, args: argparse.Namespace) -> TaskResult:
    """Collect one task's episodes, in this process (a worker's, or the main one with --workers 1)."""
    warnings.filterwarnings("ignore", message="Constant\\(s\\) may be too high")  # metaworld.policies.move
    from metaworld.policies import ENV_POLICY_MAP

    env, repeat = make_env(task, args.fps, args.max_frames)
    policy = ENV_POLICY_MAP[task]()
    renderer = Renderer(env, args.cameras, args.resolution)
    out = TaskResult(task, failed={k: [] for k in args.mix})
    kinds = kind_schedule(args.mix, args.episodes_per_task)
    start = time.perf_counter()
    layouts = mt1_layouts(task, args.seed)[: args.max_attempts]  # drawn from np.random seeded by --seed
    for layout_index, layout in enumerate(layouts):
        if len(out.episodes) >= args.episodes_per_task:
            break
        kind = kinds[len(out.episodes)]
        out.attempts += 1
        env.set_task(layout)
        seed = [args.seed, task_index(task), layout_index, *([KINDS.index(kind)] if kind != "expert" else [])]
        # Dry run without rendering (software GL is the slow part), then replay the successes with cameras.
        dry = run_episode(env, policy, None, np.random.default_rng(seed), args, repeat, kind)
        if dry.success_frame is None:
            out.failed[kind].append(layout_index)
            continue
        ep = run_episode(env, policy, renderer, np.random.default_rng(seed), args, repeat, kind)
        if ep.success_frame != dry.success_frame or not all(
            np.array_equal(a["action"], b["action"]) and np.array_equal(a["state"], b["state"])
            for a, b in zip(ep.frames, dry.frames, strict=True)
        ):
            raise RuntimeError(f"{task} layout {layout_index}: the replay diverged from the dry run")
        out.render_s += ep.render_s
        out.episodes.append((kind, layout_index, ep.frames))
    out.simulate_s = time.perf_counter() - start - out.render_s
    renderer.close()
    env.close()
    return out


def collected(args: argparse.Namespace):
    """Each task's TaskResult in task order: from --workers spawned processes (not forked: a forked MuJoCo GL
    context or thread pool can hang the child), or from this one. A worker that dies raises BrokenProcessPool
    here instead of leaving the collection waiting for it."""
    if args.workers == 1:
        yield from (collect_task(task, args) for task in args.tasks)
        return
    pool = ProcessPoolExecutor(min(args.workers, len(args.tasks)), mp_context=multiprocessing.get_context("spawn"))
    try:
        yield from pool.map(partial(collect_task, args=args), args.tasks)
    finally:
        pool.shutdown(cancel_futures=True)  # on an error, the tasks not yet started are not started


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

    # The second object's slot of the environment state is kept only where a task has one (hammer, stick-*), so
    # the one-object tasks' datasets have the 10 columns they always had. Every task's env is built here, before
    # the output folder is touched.
    two_objects = False
    try:
        for task in args.tasks:
            env, _ = make_env(task, args.fps, args.max_frames)
            two_objects |= has_second_object(env, mt1_layouts(task, args.seed)[0])
            env.close()
    except RobofmError as e:
        print(f"collect_metaworld: error: {e}", file=sys.stderr)
        return 2
    if args.out.exists():
        if not args.overwrite:
            print(f"{args.out} exists; pass --overwrite to replace it", file=sys.stderr)
            return 2
        shutil.rmtree(args.out)
    args.out.parent.mkdir(parents=True, exist_ok=True)
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
    results: list[TaskResult] = []
    write_s = 0.0
    for result in collected(args):
        t_write = time.perf_counter()
        for kind, layout_index, frames in result.episodes:
            for fr in frames:
                frame = {f"observation.images.{cam}": img for cam, img in fr["images"].items()}
                frame["observation.state"] = fr["state"]
                frame["observation.environment_state"] = fr["env_state"][env_columns]
                frame["layout"] = np.array([args.seed, layout_index, KINDS.index(kind)], dtype=np.int64)
                frame["action"] = fr["action"]
                frame["task"] = INSTRUCTIONS[result.task]
                ds.add_frame(frame)
            ds.save_episode()
            leave_realtime_scheduling()
        write_s += time.perf_counter() - t_write
        lengths = [len(frames) for *_, frames in result.episodes]
        if len(lengths) < args.episodes_per_task:
            print(f"warning: {result.task}: only {len(lengths)} successes in {result.attempts} layouts", file=sys.stderr)
        failed = {k: v for k, v in result.failed.items() if v}
        print(f"{result.task:<28} kept {len(lengths):>3}  lengths {lengths}  failed layouts {failed or '{}'}  "
              f"({result.simulate_s + result.render_s:.1f}s)", flush=True)  # fmt: skip
        result.episodes = [(kind, index, len(frames)) for kind, index, frames in result.episodes]  # free the frames
        results.append(result)
    ds.finalize()
    leave_realtime_scheduling()
    # lerobot writes stats.json keys in set order (varies with PYTHONHASHSEED); sort them so reruns are byte-identical.
    stats_path = args.out / "meta" / "stats.json"
    if stats_path.is_file():
        write_json(dict(sorted(load_json(stats_path).items())), stats_path)
    images_tmp = args.out / "images"  # lerobot's temporary PNG folder; empty after encoding
    if images_tmp.is_dir() and not any(p.is_file() for p in images_tmp.rglob("*")):
        shutil.rmtree(images_tmp)
    elapsed = time.perf_counter() - t_start

    episodes = [e for r in results for e in r.episodes]
    per_kind = Counter(kind for kind, *_ in episodes)
    failed_kind = sum((Counter({k: len(v) for k, v in r.failed.items()}) for r in results), Counter())
    frames = sum(n for *_, n in episodes)
    size = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file())
    simulate, render = sum(r.simulate_s for r in results), sum(r.render_s for r in results)
    summary = {
        "episodes": len(episodes), "frames": frames, "tasks": len(results),
        "per_kind": {k: per_kind[k] for k in args.mix}, "failed_per_kind": {k: failed_kind[k] for k in args.mix},
        "attempts": sum(r.attempts for r in results), "seconds": round(elapsed, 1),
        "episodes_per_minute": round(len(episodes) / elapsed * 60, 1), "workers": args.workers,
        "profile_s": {"simulate": round(simulate, 1), "render": round(render, 1), "write": round(write_s, 1)},
        "mujoco_gl": os.environ.get("MUJOCO_GL"), "mix": args.mix, "seed": args.seed,
        "dart": {"std": args.dart_std, "rho": args.dart_rho}, "explore_frames": list(args.explore_frames),
    }  # fmt: skip
    # the record of a finished collection (`make corpus` reuses a dataset that has one)
    (args.out / "meta" / "collect.json").write_text(json.dumps(summary, indent=1) + "\n")
    print()
    print(f"dataset      {args.out} (repo_id {args.repo_id})")
    print(f"episodes     {len(episodes)} kept ({', '.join(f'{k} {per_kind[k]}' for k in args.mix)}), "
          f"{sum(failed_kind.values())} failed and dropped, {summary['attempts']} attempted, {len(results)} tasks")  # fmt: skip
    print(f"frames       {frames} at {args.fps} fps (action repeat {80 // args.fps} x 12.5 ms)")
    print(f"cameras      {', '.join(args.cameras)} at {args.resolution}x{args.resolution}, {args.vcodec} crf {args.crf} "
          f"g {args.gop}")  # fmt: skip
    print(f"seed         {args.seed}, action noise std {args.noise}, mix {args.mix}")
    print(f"size         {size / 1e6:.2f} MB")
    print(f"time         {elapsed:.1f}s, {summary['episodes_per_minute']} episodes/min with {args.workers} worker(s); "
          f"simulate {simulate:.0f}s, render {render:.0f}s (MUJOCO_GL={summary['mujoco_gl']}), write {write_s:.0f}s")  # fmt: skip
    return 0 if episodes else 1


if __name__ == "__main__":
    sys.exit(main())
