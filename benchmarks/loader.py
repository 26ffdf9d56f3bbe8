"""Loader and converter benchmark: robofm's episode store against lerobot and plain PyAV, in one run.

On one generated LeRobot v3 dataset (moving images with noise, lerobot's default video encoding):
  1. conversion: `robofm-convert lerobot --resolution native --workers N` camera frames/s against plain PyAV
     sequential decoding of the same mp4 files to rgb24 arrays;
  2. loading: samples/s of EpisodeWindowDataset against LeRobotDataset with delta_timestamps for the same
     window (K+1 frames per camera at stride s, K states, K*s actions), both through the same DataLoader;
  3. memory: summed RSS of the loader's main process and workers over --rss-samples samples.
Every comparison runs side by side in one process and is reported as a ratio, since the machine is shared.

    .venv/bin/python benchmarks/loader.py --write-results
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import logging
import os
import platform
import shlex
import shutil
import sys
import time
from pathlib import Path

import av
import numpy as np
import psutil
import torch
from common import REPO, cpu_name, load_now, publish, robofm_revision, verdict
from torch.utils.data import DataLoader, RandomSampler

SECTION = "## Loader and converter"
TARGET_LOADER_SPEEDUP, TARGET_CONVERT_RATIO, TARGET_RSS_GROWTH = 10.0, 0.5, 0.10
FPS, STATE_DIM, ACTION_DIM, CAMERAS = 30, 7, 7, ("front", "wrist")
WARM_IMPORTS = ("lerobot.datasets.lerobot_dataset", "lerobot.datasets.video_utils", "robofm.data.convert",
                "robofm.data.sources.lerobot")  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--episodes", type=int, default=20)
    p.add_argument("--length", type=int, default=300, help="frames per episode (10 s at 30 fps, a typical demo)")
    p.add_argument("--size", type=int, default=96, help="square frame size of both cameras")
    p.add_argument("--window", type=int, default=4, help="K: observation steps per window")
    p.add_argument("--stride", type=int, default=2, help="s: frames between steps (actions per step)")
    p.add_argument("--samples", type=int, default=2000, help="timed samples per loader, after warm-up")
    p.add_argument("--rounds", type=int, default=4, help="loader comparison rounds, run in ABBA order")
    p.add_argument("--rss-samples", type=int, default=5000, help="samples of the memory run")
    p.add_argument("--rss-warmup", type=int, default=500, help="samples before the memory baseline")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--num-workers", type=int, default=2, help="DataLoader workers")
    p.add_argument("--convert-workers", type=int, default=1,
                   help="robofm-convert --workers (default 1, the converter's default: on 2 cores one process "
                        "already decodes with both, and worker processes only add transfer costs)")  # fmt: skip
    p.add_argument("--repeats", type=int, default=2, help="interleaved conversion/decode runs; the best counts")
    p.add_argument("--lerobot-backend", choices=["auto", "torchcodec", "pyav"], default="auto",
                   help="auto: torchcodec when it loads (it needs FFmpeg's shared libraries), else pyav")  # fmt: skip
    p.add_argument("--workdir", type=Path, default=None, help="default: outputs/bench/loader-<episodes>x<length>")
    p.add_argument("--write-results", action="store_true", help=f"update the '{SECTION}' section of RESULTS.md")
    return p.parse_args(argv)


# --------------------------------------------------------------------------- data


def synthetic_frames(episode: int, camera: int, length: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """(T, H, W, 3) uint8: a drifting colour gradient, a moving disk and sensor noise, so that the video codec
    works about as hard as on camera footage (constant frames compress unrealistically well)."""
    t = np.arange(length, dtype=np.float32)[:, None, None]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    phase = 0.9 * episode + 2.1 * camera
    wave = np.sin(2 * np.pi * (1.3 * xx + 0.7 * yy) + 0.08 * t + phase)  # (T, H, W)
    cx = 0.5 + 0.3 * np.sin(0.05 * t + phase)
    cy = 0.5 + 0.3 * np.cos(0.07 * t + phase)
    disk = ((xx - cx) ** 2 + (yy - cy) ** 2) < 0.012  # (T, H, W)
    rgb = np.stack([110 + 60 * wave, 120 + 50 * np.roll(wave, size // 3, axis=2), 100 + 40 * yy + 0 * wave], -1)
    rgb[disk] = (220, 60 + 20 * camera, 40)
    rgb += rng.normal(0, 5, rgb.shape)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def make_dataset(root: Path, episodes: int, length: int, size: int) -> Path:
    """A LeRobot v3 dataset written by lerobot itself; reused when `root` already holds one with these sizes."""
    params = {"episodes": episodes, "length": length, "size": size, "fps": FPS, "cameras": list(CAMERAS), "v": 1}
    marker = root / "robofm_bench.json"
    if marker.exists() and json.loads(marker.read_text()) == params:
        return root
    shutil.rmtree(root, ignore_errors=True)
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    features = {
        "observation.state": {"dtype": "float32", "shape": (STATE_DIM,), "names": [f"s{i}" for i in range(STATE_DIM)]},
        "action": {"dtype": "float32", "shape": (ACTION_DIM,), "names": [f"a{i}" for i in range(ACTION_DIM)]},
    }
    for cam in CAMERAS:
        features[f"observation.images.{cam}"] = {"dtype": "video", "shape": (size, size, 3),
                                                 "names": ["height", "width", "channels"]}  # fmt: skip
    ds = LeRobotDataset.create(repo_id="robofm/bench", fps=FPS, features=features, root=root, use_videos=True)
    rng = np.random.default_rng(0)
    t = np.arange(length, dtype=np.float32)[:, None] / FPS
    for e in range(episodes):
        frames = [synthetic_frames(e, c, length, size, rng) for c in range(len(CAMERAS))]
        state = np.sin(t * (1 + np.arange(STATE_DIM)) + e).astype(np.float32)  # (T, Ds): smooth joint motion
        action = np.cos(t * (1 + np.arange(ACTION_DIM)) + e).astype(np.float32)
        for i in range(length):
            frame = {"task": f"task {e % 4}", "observation.state": state[i], "action": action[i]}
            frame.update({f"observation.images.{cam}": frames[c][i] for c, cam in enumerate(CAMERAS)})
            ds.add_frame(frame)
        ds.save_episode()
    ds.finalize()
    marker.write_text(json.dumps(params))
    return root


# --------------------------------------------------------------------------- conversion


def run_converter(src: Path, out: Path, workers: int) -> dict:
    """One `robofm-convert` run in this process (imports already warm): camera frames written per second."""
    from robofm.data.convert import main as convert_main

    argv = ["lerobot", str(src), "--out", str(out), "--resolution", "native", "--workers", str(workers),
            "--overwrite", "--keep", "duplicate,near_duplicate,idle"]  # fmt: skip
    start = time.perf_counter()
    with contextlib.redirect_stderr(io.StringIO()):  # its progress bar and summary tables
        code = convert_main(argv)
    seconds = time.perf_counter() - start
    if code != 0:
        raise RuntimeError(f"robofm-convert {' '.join(argv)} exited with {code}")
    manifest = json.loads((out / "manifest.json").read_text())
    frames = sum(e["length"] for e in manifest["episodes"]) * len(manifest["cameras"])
    return {"frames": frames, "seconds": seconds, "fps": frames / seconds}


def run_pyav_decode(videos: list[Path]) -> dict:
    """Plain sequential PyAV: every frame of every video to an rgb24 ndarray, one file after another."""
    frames, start = 0, time.perf_counter()
    for path in videos:
        with av.open(str(path)) as container:
            for frame in container.decode(video=0):
                frame.to_ndarray(format="rgb24")
                frames += 1
    seconds = time.perf_counter() - start
    return {"frames": frames, "seconds": seconds, "fps": frames / seconds}


def bench_conversion(src: Path, out: Path, workers: int, repeats: int) -> dict:
    for module in WARM_IMPORTS:  # imports belong to process start, which the conversion time excludes
        importlib.import_module(module)
    videos = sorted((src / "videos").rglob("*.mp4"))
    runs = {"convert": [], "pyav": []}
    for _ in range(repeats):  # interleaved, so that a burst of load elsewhere hits both sides alike
        runs["convert"].append(run_converter(src, out, workers))
        runs["pyav"].append(run_pyav_decode(videos))
    best = {k: max(v, key=lambda r: r["fps"]) for k, v in runs.items()}
    return {**best, "videos": len(videos), "ratio": best["convert"]["fps"] / best["pyav"]["fps"],
            "encoding": video_encoding(src)}  # fmt: skip


def video_encoding(src: Path) -> str:
    """How lerobot encoded the first camera, from its info.json: codec, GOP, CRF, pixel format."""
    info = json.loads((src / "meta" / "info.json").read_text())["features"][f"observation.images.{CAMERAS[0]}"]["info"]
    return f"{info['video.codec']}, GOP {info.get('video.g')}, CRF {info.get('video.crf')}, {info['video.pix_fmt']}"


# --------------------------------------------------------------------------- loading


def lerobot_backend() -> str:
    """lerobot's own choice: torchcodec when it loads (it needs system FFmpeg libraries), else pyav."""
    from lerobot.utils.import_utils import get_safe_default_video_backend

    logging.getLogger("lerobot.utils.import_utils").setLevel(logging.ERROR)
    backend = get_safe_default_video_backend()
    if backend == "torchcodec":
        try:
            from torchcodec.decoders import VideoDecoder  # noqa: F401 -- the import lerobot's decoder makes
        except (ImportError, OSError, RuntimeError):
            backend = "pyav"
    return backend


def robofm_dataset(store: Path, window: int, stride: int, samples: int):
    from robofm.data.dataset import EpisodeWindowDataset

    return EpisodeWindowDataset(store, window_len=window, stride=stride, split=None, samples_per_epoch=samples)


def lerobot_dataset(src: Path, window: int, stride: int, backend: str):
    """The same window as EpisodeWindowDataset's: K+1 frames per camera and K states at stride s, K*s actions."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    cams = [f"observation.images.{c}" for c in CAMERAS]
    delta = {c: [k * stride / FPS for k in range(window + 1)] for c in cams}
    delta["observation.state"] = [k * stride / FPS for k in range(window)]
    delta["action"] = [j / FPS for j in range(window * stride)]
    # uint8 frames, as EpisodeWindowDataset returns and as lerobot's own training factory asks for
    return LeRobotDataset("robofm/bench", root=src, delta_timestamps=delta, video_backend=backend, return_uint8=True)


def make_loader(ds, samples: int, batch_size: int, workers: int) -> DataLoader:
    # shuffle=True, with as many samples as asked even where len(ds) is smaller (RandomSampler repeats epochs)
    sampler = RandomSampler(ds, num_samples=samples, generator=torch.Generator().manual_seed(0))
    return DataLoader(ds, batch_size=batch_size, num_workers=workers, sampler=sampler)


def batch_len(batch: dict) -> int:
    return len(next(iter(batch.values())))


def throughput(ds, samples: int, batch_size: int, workers: int) -> dict:
    """Samples/s through a DataLoader, timed after one warm-up batch per worker (worker start, file opens)."""
    warmup = workers * batch_size
    it = iter(make_loader(ds, warmup + samples, batch_size, workers))
    for _ in range(max(workers, 1)):
        batch = next(it)
    n, start = 0, time.perf_counter()
    for batch in it:
        n += batch_len(batch)
    seconds = time.perf_counter() - start
    return {"samples": n, "seconds": seconds, "sps": n / seconds}


def compare_loaders(datasets: dict, args: argparse.Namespace) -> dict:
    """Throughput of each dataset over --samples samples, split into --rounds rounds run in ABBA order (A B, B A,
    ...), so that load from other jobs drifting over the run weighs on both sides alike."""
    per_round = args.samples // args.rounds
    totals = {name: {"samples": 0, "seconds": 0.0} for name in datasets}
    for r in range(args.rounds):
        for name in list(datasets)[:: 1 if r % 2 == 0 else -1]:
            run = throughput(datasets[name], per_round, args.batch_size, args.num_workers)
            totals[name]["samples"] += run["samples"]
            totals[name]["seconds"] += run["seconds"]
    return {name: {**t, "sps": t["samples"] / t["seconds"]} for name, t in totals.items()}


def tree_rss(proc: psutil.Process) -> int:
    total = proc.memory_info().rss
    for child in proc.children(recursive=True):
        with contextlib.suppress(psutil.Error):  # a worker may exit between listing and reading
            total += child.memory_info().rss
    return total


def rss_run(ds, samples: int, warmup: int, batch_size: int, workers: int) -> dict:
    """Summed RSS of this process and its DataLoader workers, read after every batch."""
    proc, seen, trace = psutil.Process(), 0, []
    for batch in make_loader(ds, samples, batch_size, workers):
        seen += batch_len(batch)
        trace.append((seen, tree_rss(proc)))
    baseline = next(rss for n, rss in trace if n >= warmup)
    peak = max(rss for n, rss in trace if n >= warmup)
    return {"samples": seen, "warmup": warmup, "baseline": baseline, "peak": peak, "growth": peak / baseline - 1,
            "first": trace[0][1]}  # fmt: skip


# --------------------------------------------------------------------------- report


def machine() -> dict:
    import h5py
    import lerobot

    cpu = cpu_name()
    return {
        "cpu": cpu, "cores": os.cpu_count(), "affinity": len(os.sched_getaffinity(0)),
        "python": platform.python_version(), "torch": torch.__version__, "lerobot": lerobot.__version__,
        "av": av.__version__, "h5py": h5py.__version__, "os": platform.platform(),
        "load": load_now(), "robofm": robofm_revision(),
    }  # fmt: skip


def report(argv: list[str], args: argparse.Namespace, m: dict, backend: str, conv: dict, load: dict, rss: dict) -> str:
    """The RESULTS.md section, also printed: command, machine, numbers, ratios against the targets."""
    c, p = conv["convert"], conv["pyav"]
    speedup = load["robofm"]["sps"] / load["lerobot"]["sps"]
    mib = 2**20
    lines = [
        SECTION,
        "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M %Z')} with",
        "",
        f"    .venv/bin/python benchmarks/loader.py {shlex.join(argv)}".rstrip(),
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores ({m['affinity']} usable), {m['os']}; Python {m['python']}, "
        f"torch {m['torch']}, lerobot {m['lerobot']} (video backend: {backend}), PyAV {m['av']}, h5py {m['h5py']}. "
        f"robofm at {m['robofm']}. Load average (1, 5, 15 min) at start: {m['load']}, at the end: {load_now()} "
        "(the machine is shared: every number is compared with its counterpart from the same run).",
        "",
        f"Data: {args.episodes} episodes x {args.length} frames, {len(CAMERAS)} cameras at {args.size}x{args.size}, "
        f"{FPS} fps, written by lerobot's LeRobotDataset writer with its default encoder ({conv['encoding']}), "
        f"{conv['videos']} mp4 files. Window: K={args.window} steps at stride s={args.stride}: "
        f"{args.window + 1} frames per camera, {args.window} states, {args.window * args.stride} actions per sample. "
        f"DataLoader: batch {args.batch_size}, {args.num_workers} workers, shuffled; uint8 frames on both sides "
        "(LeRobotDataset with return_uint8=True). LeRobotDataset starts a window at every frame (near an episode's "
        "end it repeats the last frame and marks it *_is_pad); EpisodeWindowDataset draws only full windows. "
        "torchcodec, lerobot's default backend, loads only with FFmpeg's shared libraries (Debian: "
        "`apt-get install ffmpeg`); without them lerobot falls back to pyav.",
        "",
        "| measurement | robofm | baseline | ratio | target | result |",
        "|---|---|---|---|---|---|",
        f"| conversion, camera frames/s ({c['frames']} frames; convert vs plain PyAV sequential decode) | "
        f"{c['fps']:.0f} | {p['fps']:.0f} | {conv['ratio']:.2f} | >= {TARGET_CONVERT_RATIO:.2f} | "
        f"{verdict(conv['ratio'] >= TARGET_CONVERT_RATIO)} |",
        f"| loader samples/s ({load['robofm']['samples']} samples; EpisodeWindowDataset vs LeRobotDataset "
        f"[{backend}]) | {load['robofm']['sps']:.0f} | {load['lerobot']['sps']:.1f} | {speedup:.1f}x | "
        f">= {TARGET_LOADER_SPEEDUP:.0f}x | {verdict(speedup >= TARGET_LOADER_SPEEDUP)} |",
        f"| loader RSS over {rss['samples']} samples (main + workers; after {rss['warmup']} samples vs peak after) | "
        f"{rss['baseline'] / mib:.0f} MiB -> {rss['peak'] / mib:.0f} MiB | | +{100 * rss['growth']:.1f}% | "
        f"< {100 * TARGET_RSS_GROWTH:.0f}% | {verdict(rss['growth'] < TARGET_RSS_GROWTH)} |",
        "",
        f"Times: conversion {c['seconds']:.2f} s, PyAV decode {p['seconds']:.2f} s (best of {args.repeats}, "
        f"interleaved); loaders {load['robofm']['seconds']:.2f} s vs {load['lerobot']['seconds']:.2f} s "
        f"({args.rounds} rounds in ABBA order, each after its own warm-up batch per worker). "
        f"RSS at the first batch: {rss['first'] / mib:.0f} MiB.",
        "",
    ]
    if c["frames"] != p["frames"]:
        lines += [f"Note: the converter wrote {c['frames']} camera frames where PyAV decoded {p['frames']} "
                  "from the same videos.", ""]  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.getLogger("lerobot").setLevel(logging.ERROR)
    torch.manual_seed(0)
    m = machine()
    t0 = time.perf_counter()
    args.workdir = args.workdir or REPO / "outputs" / "bench" / f"loader-{args.episodes}x{args.length}"
    src = make_dataset(args.workdir / "lerobot", args.episodes, args.length, args.size)
    print(f"dataset ready in {time.perf_counter() - t0:.1f} s: {src}", flush=True)
    store = args.workdir / "store"
    conv = bench_conversion(src, store, args.convert_workers, args.repeats)
    print(f"conversion {conv['convert']['fps']:.0f} vs PyAV {conv['pyav']['fps']:.0f} camera frames/s", flush=True)

    backend = lerobot_backend() if args.lerobot_backend == "auto" else args.lerobot_backend
    ours = robofm_dataset(store, args.window, args.stride, args.samples)
    theirs = lerobot_dataset(src, args.window, args.stride, backend)
    load = compare_loaders({"robofm": ours, "lerobot": theirs}, args)
    print(f"EpisodeWindowDataset {load['robofm']['sps']:.0f} samples/s, LeRobotDataset [{backend}] "
          f"{load['lerobot']['sps']:.1f} samples/s", flush=True)  # fmt: skip

    rss = rss_run(robofm_dataset(store, args.window, args.stride, args.rss_samples), args.rss_samples,
                  args.rss_warmup, args.batch_size, args.num_workers)  # fmt: skip
    section = report(argv, args, m, backend, conv, load, rss)
    publish(SECTION, section, args.write_results)
    print(f"total {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
