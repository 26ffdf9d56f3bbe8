"""Seeded hostile inputs for robofm-convert, and the judge of what the converter made of them.

A case copies a small template source (good episodes of one kind: ALOHA or robomimic HDF5, video folders in one
container, or a LeRobot v3 dataset), damages it with one seeded mutation, converts it in this process under a time
limit, and compares every episode with the conversion of the undamaged template. The converter must
  - never crash (an exception out of robofm-convert's main, or a traceback) and never hang (the time limit);
  - convert every episode the mutation did not touch, exactly as without it ("lost" otherwise);
  - end every touched episode as a typed failure or a drop in quality.json, or keep it. Kept, it is either
    identical to the undamaged one (the mutation was harmless), or altered: damage no check can see, such as a
    flipped byte in raw HDF5 data, which carries no checksum;
  - refuse a source that is unreadable as a whole (a LeRobot dataset whose metadata is garbage) with a usage error.

tests/data/test_fuzz.py runs a few hundred cases in CI; benchmarks/fuzz.py a larger campaign with counts.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import av
import h5py
import numpy as np
import pandas as pd

from robofm.data.convert import main
from robofm.data.store import EpisodeStore
from tests.video import ENCODER_THREADS, add_stream, open_output

EPISODES, T, SIZE = 3, 24, 32  # episodes per template, frames per episode, frame side
TARGET = 1  # the episode a mutation damages (per-episode sources)
CONTAINERS = {"mp4": ("h264", "yuv420p"), "mkv": ("mpeg4", "yuv420p"), "webm": ("libvpx-vp9", "yuv420p"),
              "ts": ("mpeg2video", "yuv420p")}  # fmt: skip
SOURCES = ("aloha", "aloha-jpeg", "robomimic", *(f"video-{c}" for c in CONTAINERS), "lerobot")
OUTCOMES_OK = ("failed", "dropped", "kept-same", "kept-altered", "refused")
VIOLATIONS = ("crash", "hang", "lost", "unjudged")


class CaseTimeout(BaseException):
    """Raised by the alarm: a BaseException, so that no `except Exception` in the converter swallows it."""


def frames(seed: int, t: int = T) -> np.ndarray:
    """uint8 [t, SIZE, SIZE, 3]: a smooth random texture drifting one pixel per frame (no filter drops it)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    k = rng.uniform(0.1, 0.4, 6)
    out = [np.stack([128 + 90 * np.sin(k[c] * (x + i) + k[c + 3] * y + seed) for c in range(3)], -1) for i in range(t)]
    return np.stack(out).astype(np.uint8)


def walk(seed: int, d: int, t: int = T) -> np.ndarray:
    return np.cumsum(np.random.default_rng(seed).normal(0, 0.1, (t, d)), axis=0).astype(np.float32)


# ------------------------------------------------------------------------------------------------ templates


def write_aloha(path: Path, seed: int, jpeg: bool = False) -> None:
    import cv2

    with h5py.File(path, "w") as f:
        f.create_dataset("observations/qpos", data=walk(seed, 14))
        f.create_dataset("action", data=walk(seed + 100, 14))
        for c, cam in enumerate(("cam_high", "cam_low")):
            images = frames(10 * seed + c)
            if jpeg:  # ALOHA's compressed files: JPEG rows zero-padded to the longest
                rows = [cv2.imencode(".jpg", im, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].ravel() for im in images]
                padded = np.zeros((T, max(map(len, rows)) + 16), np.uint8)
                for i, r in enumerate(rows):
                    padded[i, : len(r)] = r
                images = padded
            f.create_dataset(f"observations/images/{cam}", data=images)
        f.attrs["task"] = f"fold towel {seed}"


def write_robomimic(path: Path, seeds: list[int]) -> None:
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["env_args"] = json.dumps({"env_name": "PickPlaceCan", "env_kwargs": {}})
        for i, seed in enumerate(seeds):
            g = data.create_group(f"demo_{i}")
            g.create_dataset("obs/agentview_image", data=frames(seed))
            g.create_dataset("obs/robot0_eef_pos", data=walk(seed, 3))
            g.create_dataset("actions", data=walk(seed + 100, 7))
            g.attrs["num_samples"] = T
        f.create_dataset("mask/train", data=np.array([f"demo_{i}".encode() for i in range(len(seeds))], dtype="S"))


def write_video(path: Path, seed: int, container: str) -> None:
    codec, pix_fmt = CONTAINERS[container]
    with open_output(path) as out:
        stream = add_stream(out, codec, 10)
        stream.height = stream.width = SIZE
        stream.pix_fmt = pix_fmt
        for im in frames(seed):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(im, format="rgb24")))
        out.mux(stream.encode())


def write_video_episode(folder: Path, seed: int, container: str) -> None:
    folder.mkdir(parents=True)
    write_video(folder / f"front.{container}", seed, container)
    t = 50.0 + np.arange(3 * T) / 30  # telemetry at 30 Hz over the video's 10 fps
    state, action = walk(seed, 3, 3 * T), walk(seed + 100, 2, 3 * T)
    cols = {"timestamp": t, **{f"state_{i}": state[:, i] for i in range(3)},
            **{f"action_{i}": action[:, i] for i in range(2)}}  # fmt: skip
    pd.DataFrame(cols).to_csv(folder / "telemetry.csv", index=False)
    (folder / "task.txt").write_text(f"stack cups {seed}\n")


def write_lerobot(root: Path) -> None:
    from robofm.data.sources.lerobot import _quiet_lerobot

    _quiet_lerobot()
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    features = {"observation.state": {"dtype": "float32", "shape": (3,), "names": ["x", "y", "z"]},
                "action": {"dtype": "float32", "shape": (2,), "names": ["a", "b"]},
                "observation.images.front": {"dtype": "video", "shape": (SIZE, SIZE, 3),
                                             "names": ["height", "width", "channels"]}}  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        ds = LeRobotDataset.create(repo_id="robofm/fuzz", fps=10, features=features, root=root, use_videos=True,
                                   encoder_threads=ENCODER_THREADS)  # fmt: skip
        for e in range(EPISODES):
            state, action, images = walk(e, 3), walk(e + 100, 2), frames(e)
            for t in range(T):
                ds.add_frame({"task": f"open drawer {e}", "observation.state": state[t], "action": action[t],
                              "observation.images.front": images[t]})  # fmt: skip
            ds.save_episode()
        ds.finalize()


def write_template(source: str, src: Path) -> None:
    src.mkdir(parents=True)
    if source.startswith("aloha"):
        for e in range(EPISODES):
            write_aloha(src / f"episode_{e}.hdf5", e, jpeg=source == "aloha-jpeg")
    elif source == "robomimic":  # the target in a file of its own, so that damage to that file touches it alone
        write_robomimic(src / "a.hdf5", [0, 2])
        write_robomimic(src / "b.hdf5", [1])
    elif source.startswith("video-"):
        for e in range(EPISODES):
            write_video_episode(src / f"episode_{e}", e, source.removeprefix("video-"))
    else:
        write_lerobot(src / "dataset")


def convert_argv(source: str, src: Path, out: Path) -> list[str]:
    store = ["--out", str(out), "--resolution", "native"]
    if source.startswith("aloha"):
        return ["hdf5", str(src), "--layout", "aloha", *store]
    if source == "robomimic":
        return ["hdf5", str(src), "--layout", "robomimic", *store]
    if source.startswith("video-"):
        return ["video", str(src), *store]
    return ["lerobot", str(src / "dataset"), *store]


def episode_key(entry: dict, src: Path) -> tuple[str, str]:
    """(source relative to the case's src folder, index): the same for a case and its template."""
    return os.path.relpath(entry["source"], src), str(entry["source_index"])


def target_keys(source: str) -> set[tuple[str, str]]:
    if source.startswith("aloha"):
        return {(f"episode_{TARGET}.hdf5", f"episode_{TARGET}")}
    if source == "robomimic":
        return {("b.hdf5", "demo_0")}
    if source.startswith("video-"):
        return {(f"episode_{TARGET}", f"episode_{TARGET}")}
    return {("dataset", str(TARGET))}


# ------------------------------------------------------------------------------------------------ mutations


def flip_bytes(path: Path, rng: np.random.Generator, lo: int = 0, hi: int | None = None, n: int | None = None) -> str:
    data = bytearray(path.read_bytes())
    hi = len(data) if hi is None else min(hi, len(data))
    if hi <= lo:
        return "nothing to flip"
    n = n or int(rng.integers(1, 9))
    at = rng.integers(lo, hi, n)
    for i in at:
        data[i] ^= int(rng.integers(1, 256))
    path.write_bytes(bytes(data))
    return f"{n} byte(s) at {sorted(int(i) for i in at)[:4]}"


def truncate(path: Path, rng: np.random.Generator) -> str:
    size = path.stat().st_size
    keep = int(size * rng.uniform(0.05, 0.98))
    with open(path, "r+b") as f:
        f.truncate(keep)
    return f"kept {keep} of {size} bytes"


def _replace(f: h5py.File, name: str, **kw) -> None:
    del f[name]
    f.create_dataset(name, **kw)


def _hdf5_paths(source: str) -> tuple[str, list[str], list[str]]:
    """(target file name, numeric dataset paths, image dataset paths) of a template's target episode."""
    if source == "robomimic":
        return "b.hdf5", ["data/demo_0/obs/robot0_eef_pos", "data/demo_0/actions"], ["data/demo_0/obs/agentview_image"]
    return (f"episode_{TARGET}.hdf5", ["observations/qpos", "action"],
            ["observations/images/cam_high", "observations/images/cam_low"])  # fmt: skip


def hdf5_mutation(kind: str) -> Callable[[str, Path, np.random.Generator], str]:
    def mutate(source: str, src: Path, rng: np.random.Generator) -> str:
        name, numeric, images = _hdf5_paths(source)
        path = src / name
        every = numeric + images
        pick = every[int(rng.integers(len(every)))]
        if kind == "flip":
            return flip_bytes(path, rng)
        if kind == "flip_header":
            return flip_bytes(path, rng, 0, 4096)
        if kind == "truncate":
            return truncate(path, rng)
        if kind == "garbage_file":
            path.write_bytes(rng.integers(0, 256, int(rng.integers(0, 5000)), dtype=np.uint8).tobytes())
            return "random bytes"
        with h5py.File(path, "a") as f:
            ds = f[pick]
            shape, dtype = ds.shape, ds.dtype
            if kind == "flip_data":  # raw data bytes: HDF5 keeps no checksum of them
                offset, size = ds.id.get_offset(), ds.id.get_storage_size()
                if offset is None:
                    return "dataset is not contiguous"
                f.close()
                return flip_bytes(path, rng, offset, offset + size, n=1)
            if kind == "dtype":
                choice = int(rng.integers(6 if pick in images else 5))  # floats in [0, 255]: garbage only as images
                n = int(np.prod(shape))
                data = [np.full(shape, 2**64 - int(rng.integers(1, 100)), np.uint64), np.full(shape, np.nan),
                        np.full(shape, np.inf, np.float32), np.ones(shape, np.complex64),
                        np.array([b"garbage"] * shape[0], dtype="S7"),
                        (rng.uniform(0, 255, n).reshape(shape)).astype(np.float64)][choice]  # fmt: skip
                _replace(f, pick, data=data)
                return f"{pick} as {data.dtype} {data.shape}"
            if kind == "shape":
                choice = int(rng.integers(5))
                cut = int(rng.integers(1, shape[0]))
                data = [np.zeros(shape[1:], dtype), np.zeros((shape[0] - cut, *shape[1:]), dtype),
                        np.zeros((shape[0] + cut, *shape[1:]), dtype), np.zeros((0, *shape[1:]), dtype),
                        np.zeros((*shape, 2), dtype)][choice]  # fmt: skip
                _replace(f, pick, data=data)
                return f"{pick} as shape {data.shape}"
            if kind == "huge":
                big = (2 ** int(rng.integers(24, 40)), *shape[1:])
                chunks = (1, *shape[1:]) if rng.random() < 0.5 else None
                _replace(f, pick, shape=big, dtype=dtype, chunks=chunks)
                return f"{pick} declares {big}, stores nothing"
            if kind == "link":
                del f[pick]
                if rng.random() < 0.5:
                    f[pick] = h5py.SoftLink("/nowhere/at/all")
                else:
                    f[pick] = h5py.ExternalLink("missing.h5", "/x")
                return f"{pick} is a dangling link"
            if kind == "delete":
                del f[pick]
                return f"{pick} deleted"
            if kind == "attr":
                target = f if source.startswith("aloha") else f["data"]
                key = "task" if source.startswith("aloha") else "env_args"
                target.attrs[key] = np.void(rng.integers(0, 256, 64, dtype=np.uint8).tobytes())
                return f"attribute {key} is opaque bytes"
            if kind == "mask":
                if source != "robomimic":
                    return "no mask"
                _replace(f, "mask/train", data=np.array([b"demo_0", b"\xff\xfe\xfd"], dtype="S"))
                return "a non-UTF8 mask entry"
            if kind == "jpeg":
                if dtype != np.uint8 or len(shape) != 2:
                    return "not JPEG rows"
                rows = ds[:]
                step = int(rng.integers(shape[0]))
                end = int(np.flatnonzero(rows[step])[-1])
                if rng.random() < 0.5:
                    rows[step, int(end * rng.uniform(0.5, 1.0)) :] = 0
                    what = "cut short"
                else:
                    rows[step, rng.integers(200, end, 4)] ^= rng.integers(1, 256, 4).astype(np.uint8)
                    what = "4 bytes flipped"
                ds[...] = rows
                return f"{pick} step {step}: {what}"
        raise ValueError(kind)

    return mutate


def _video_target(src: Path) -> Path:
    return next(p for p in (src / f"episode_{TARGET}").iterdir() if p.stem == "front")


def video_mutation(kind: str) -> Callable[[str, Path, np.random.Generator], str]:
    def mutate(source: str, src: Path, rng: np.random.Generator) -> str:
        folder = src / f"episode_{TARGET}"
        video, table = _video_target(src), folder / "telemetry.csv"
        if kind == "flip":
            return flip_bytes(video, rng, 0)
        if kind == "flip_stream":  # past the header, among the coded frames
            return flip_bytes(video, rng, min(1024, video.stat().st_size // 4))
        if kind == "truncate":
            return truncate(video, rng)
        if kind == "empty":
            video.write_bytes(b"")
            return "empty video file"
        if kind == "text":
            video.write_text("not a video\n" * int(rng.integers(1, 100)))
            return "text as video"
        if kind == "task":
            (folder / "task.txt").write_bytes(b"\xff\xfe garbage \x80")
            return "task.txt not UTF-8"
        if kind == "table_bytes":
            return flip_bytes(table, rng)
        if kind == "table_truncate":
            return truncate(table, rng)
        df = pd.read_csv(table)
        choice = kind.removeprefix("table_")
        if choice == "ms":
            df["timestamp"] *= 1e3
        elif choice == "ns":
            df["timestamp"] = (df["timestamp"] * 1e9).astype(np.int64)
        elif choice == "nan":
            df.loc[int(rng.integers(len(df))), "state_1"] = np.nan
        elif choice == "text":
            df["state_0"] = df["state_0"].astype(object)
            df.loc[int(rng.integers(len(df))), "state_0"] = "oops"
        elif choice == "shuffle":
            df = df.sample(frac=1.0, random_state=int(rng.integers(1000)))
        elif choice == "repeat":
            i = int(rng.integers(1, len(df)))
            df.loc[i, "timestamp"] = df.loc[i - 1, "timestamp"]
        elif choice == "huge":
            df.loc[int(rng.integers(len(df))), "action_0"] = 1e300
        elif choice == "short":
            df = df.iloc[: int(rng.integers(0, 3))]
        elif choice == "no_timestamp":
            df = df.drop(columns=["timestamp"])
        elif choice == "gap":  # the clock jumps mid-table: the video covers a fraction of the telemetry's span
            df.loc[len(df) // 2 :, "timestamp"] += float(rng.uniform(10, 1e4))
        else:
            raise ValueError(kind)
        df.to_csv(table, index=False)
        return f"telemetry {choice}"

    return mutate


def _lerobot_video(src: Path) -> Path:
    return next((src / "dataset" / "videos").rglob("*.mp4"))


def _target_packets(video: Path) -> tuple[int, int]:
    """Byte range of the target episode's packets inside the shared video, its first and last two frames left
    alone (a damaged frame may be the reference of its neighbour across an episode's edge)."""
    with av.open(str(video)) as c:
        stream = c.streams.video[0]
        packets = [(float(p.pts * stream.time_base), p.pos, p.size) for p in c.demux(stream) if p.pts is not None]
    lo_t, hi_t = TARGET * T / 10 + 0.2, (TARGET + 1) * T / 10 - 0.3
    inside = [(pos, size) for t, pos, size in packets if lo_t <= t <= hi_t and pos is not None and pos >= 0]
    return min(p for p, _ in inside), max(p + s for p, s in inside)


def lerobot_mutation(kind: str) -> Callable[[str, Path, np.random.Generator], str]:
    def mutate(source: str, src: Path, rng: np.random.Generator) -> str:
        root = src / "dataset"
        data = next((root / "data").rglob("*.parquet"))
        if kind == "flip_frames":
            return flip_bytes(_lerobot_video(src), rng, *_target_packets(_lerobot_video(src)))
        if kind == "flip_header":
            return flip_bytes(_lerobot_video(src), rng, 0, 64, n=2)
        if kind == "truncate_video":
            return truncate(_lerobot_video(src), rng)
        if kind == "info":
            info = root / "meta" / "info.json"
            info.write_text(info.read_text()[: int(rng.integers(0, 200))])
            return "meta/info.json cut short"
        if kind == "flip_table":
            return flip_bytes(data, rng)
        if kind == "truncate_table":
            return truncate(data, rng)
        if kind == "flip_episodes":
            return flip_bytes(next((root / "meta" / "episodes").rglob("*.parquet")), rng)
        df = pd.read_parquet(data)
        rows = df["episode_index"] == TARGET
        if kind == "drop_last_rows":  # the last episode's last rows: the table ends early
            keep = len(df) - int(rng.integers(1, T // 2))
            df.iloc[:keep].to_parquet(data, index=False)
            return f"data table cut to {keep} of {len(df)} rows"
        if kind == "nan_state":
            i = int(np.flatnonzero(rows)[int(rng.integers(rows.sum()))])
            state = np.array(df.at[i, "observation.state"], dtype=np.float32)
            state[int(rng.integers(3))] = np.nan
            df.at[i, "observation.state"] = state
            df.to_parquet(data, index=False)
            return f"NaN in the state at row {i}"
        if kind == "timestamps":
            idx = np.flatnonzero(rows)
            df.loc[idx, "timestamp"] = df.loc[idx, "timestamp"].to_numpy()[::-1]
            df.to_parquet(data, index=False)
            return "the target's timestamps reversed"
        raise ValueError(kind)

    return mutate


HDF5_KINDS = ("flip", "flip_header", "truncate", "garbage_file", "flip_data", "dtype", "shape", "huge", "link",
              "delete", "attr")  # fmt: skip
VIDEO_KINDS = ("flip", "flip_stream", "truncate", "empty", "text", "task", "table_bytes", "table_truncate",
               "table_ms", "table_ns", "table_nan", "table_text", "table_shuffle", "table_repeat", "table_huge",
               "table_short", "table_no_timestamp", "table_gap")  # fmt: skip
LEROBOT_KINDS = ("flip_frames", "flip_header", "truncate_video", "info", "flip_table", "truncate_table",
                 "flip_episodes", "drop_last_rows", "nan_state", "timestamps")  # fmt: skip


def mutations(source: str) -> dict[str, Callable]:
    if source.startswith("aloha") or source == "robomimic":
        kinds = HDF5_KINDS + (("jpeg",) if source == "aloha-jpeg" else ()) + (("mask",) if source == "robomimic" else ())
        return {k: hdf5_mutation(k) for k in kinds}
    if source.startswith("video-"):
        return {k: video_mutation(k) for k in VIDEO_KINDS}
    return {k: lerobot_mutation(k) for k in LEROBOT_KINDS}


def touched(source: str, kind: str) -> set[tuple[str, str]] | None:
    """The episodes a mutation may damage; None: any of them (damage to a file every episode shares)."""
    if source == "lerobot" and kind not in ("flip_frames", "nan_state", "timestamps"):
        return None
    return target_keys(source)


# ------------------------------------------------------------------------------------------------ running


@dataclass
class Template:
    source: str
    src: Path
    episodes: dict[tuple[str, str], dict]  # kept episode key -> its arrays in the undamaged conversion


@dataclass
class Result:
    source: str
    kind: str
    seed: int
    what: str
    outcome: str  # the touched episodes' worst outcome: failed, dropped, kept-same, kept-altered, refused
    violations: list[str] = field(default_factory=list)  # crash, hang, lost, unjudged: each a bug
    detail: str = ""
    seconds: float = 0.0
    altered_by: float = 0.0  # kept-altered: largest mean absolute frame difference of a touched episode


def episode_arrays(store: EpisodeStore, src: Path) -> dict[tuple[str, str], dict]:
    out = {}
    for info in store.episodes:
        ep = store.read_episode(info.id)
        out[os.path.relpath(info.source, src), info.source_index] = {
            "frames": ep.frames, "state": ep.state, "action": ep.action, "timestamp": ep.timestamp}  # fmt: skip
    return out


def quietly(fn: Callable[[], int]) -> tuple[int | None, str, BaseException | None]:
    """Run fn with stdout and stderr captured: (its return or exit code, what it printed, what escaped)."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        try:
            return fn(), buf.getvalue(), None
        except SystemExit as e:
            return int(e.code or 0), buf.getvalue(), None
        except CaseTimeout:
            raise
        except BaseException as e:  # noqa: BLE001 -- what the judge reports as a crash
            return None, buf.getvalue(), e


def make_template(source: str, root: Path) -> Template:
    src = root / source / "src"
    if not src.exists():
        write_template(source, src)
    out = root / source / "store"
    if not (out / "manifest.json").exists():
        rc, log, err = quietly(lambda: main(convert_argv(source, src, out)))
        if rc != 0 or err is not None:
            raise RuntimeError(f"the undamaged {source} template does not convert cleanly (exit {rc}): {err}\n{log}")
    store = EpisodeStore(out)
    if len(store.episodes) != EPISODES:
        raise RuntimeError(f"the {source} template keeps {len(store.episodes)} of {EPISODES} episodes")
    return Template(source, src, episode_arrays(store, src))


def _reset_caches() -> None:
    """The LeRobot source keeps datasets and videos open per process: a case's copy must not see another's."""
    from robofm.data.sources import lerobot

    lerobot._OPEN_DATASETS.clear()
    for reader in lerobot._READERS.values():
        reader.close()
    lerobot._READERS.clear()


def _alarm(signum: int, frame: object) -> None:
    raise CaseTimeout


def run_case(template: Template, kind: str, seed: int, work: Path, time_limit: float = 20.0) -> Result:
    """Damage a copy of the template with mutation `kind` (seeded), convert it and judge the outcome."""
    case = work / f"{template.source}-{kind}-{seed}"
    shutil.rmtree(case, ignore_errors=True)
    src, out = case / "src", case / "out"
    shutil.copytree(template.src, src)
    rng = np.random.default_rng(seed)
    what = mutations(template.source)[kind](template.source, src, rng)
    result = Result(template.source, kind, seed, what, "")
    _reset_caches()
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, time_limit)
    start = time.perf_counter()
    try:
        rc, log, err = quietly(lambda: main(convert_argv(template.source, src, out)))
    except CaseTimeout:
        result.outcome, result.violations = "hang", ["hang"]
        result.detail = f"no result after {time_limit:g} s"
        return result
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        result.seconds = time.perf_counter() - start
    try:
        judge(template, kind, src, out, rc, log, err, result)
    finally:
        shutil.rmtree(case, ignore_errors=True)
    return result


def judge(template: Template, kind: str, src: Path, out: Path, rc: int | None, log: str, err: BaseException | None,
          result: Result) -> None:  # fmt: skip
    """Fill result.outcome and result.violations from what the conversion did (see the module docstring)."""
    if err is not None or rc not in (0, 1, 2, 3) or "Traceback" in log:
        result.outcome, result.violations = "crash", ["crash"]
        result.detail = f"{type(err).__name__}: {err}" if err is not None else f"exit {rc}: {log[-500:]}"
        return
    if rc == 2:  # a usage error: the source as a whole is unreadable; only right for damage every episode shares
        result.outcome = "refused"
        result.detail = " ".join(log.split())[:300]
        if touched(template.source, kind) is not None:
            result.violations = ["lost"]
        return
    quality = json.loads((out / "quality.json").read_text()) if (out / "quality.json").exists() else None
    if quality is None:
        result.outcome, result.violations, result.detail = "crash", ["crash"], f"exit {rc} without quality.json"
        return
    verdicts = {episode_key(q, src): q for q in quality}
    kept = episode_arrays(EpisodeStore(out), src) if (out / "manifest.json").exists() else {}
    damaged = touched(template.source, kind)
    outcomes = []
    for key, want in template.episodes.items():
        verdict = verdicts.get(key)
        may_differ = damaged is None or key in damaged
        if verdict is None and may_differ:  # a file that cannot be listed fails once, under its own name
            verdict = verdicts.get((key[0], Path(key[0]).stem))
        if verdict is None:
            result.violations.append("unjudged")
            result.detail += f" {key}: no verdict;"
            continue
        got = kept.get(key)
        same = got is not None and _same(want, got)
        if not may_differ and not same:
            result.violations.append("lost")
            result.detail += f" {key}: {verdict['status']} {verdict.get('message', verdict.get('reason', ''))[:200]};"
            continue
        if may_differ:
            if verdict["status"] in ("failed", "dropped"):
                outcomes.append(verdict["status"])
                result.detail += f" {verdict.get('message') or verdict.get('reason')}"[:300]
            elif same:
                outcomes.append("kept-same")
            else:
                outcomes.append("kept-altered")
                result.altered_by = max(result.altered_by, _frame_change(want, got))
    order = ["kept-altered", "failed", "dropped", "kept-same"]  # damage kept first, then what was caught
    result.outcome = next((o for o in order if o in outcomes), "kept-same")
    result.violations = sorted(set(result.violations))


def _same(a: dict, b: dict) -> bool:
    if a["frames"].keys() != b["frames"].keys() or a["state"].shape != b["state"].shape:
        return False
    if (a["action"] is None) != (b["action"] is None):
        return False
    arrays = [(a["state"], b["state"]), (a["timestamp"], b["timestamp"])]
    arrays += [(a["action"], b["action"])] if a["action"] is not None else []
    arrays += [(a["frames"][c], b["frames"][c]) for c in a["frames"]]
    return all(x.shape == y.shape and np.array_equal(x, y) for x, y in arrays)


def _frame_change(a: dict, b: dict) -> float:
    """The largest mean absolute difference of a frame, in grey levels; inf where the frames differ in number."""
    worst = 0.0
    for cam, fr in a["frames"].items():
        other = b["frames"].get(cam)
        if other is None or other.shape != fr.shape:
            return float("inf")
        diff = np.abs(fr.astype(np.int16) - other.astype(np.int16)).reshape(len(fr), -1).mean(axis=1)
        worst = max(worst, float(diff.max()))
    return worst


def cases(n: int, seed: int = 0, sources: tuple[str, ...] = SOURCES) -> list[tuple[str, str, int]]:
    """n seeded (source, mutation, seed) triples, cycling over the sources and each source's mutations."""
    per = {s: list(mutations(s)) for s in sources}
    out = []
    for i in range(n):
        source = sources[i % len(sources)]
        kinds = per[source]
        out.append((source, kinds[(i // len(sources)) % len(kinds)], seed * 100_003 + i))
    return out


# Mutations whose damage always carries a sign a check can see: their episode must never be kept as it is. (A
# truncated video is not among them: one cut short by a frame or two is within the duration check's tolerance.)
ALWAYS_VISIBLE = {
    "hdf5": {"truncate", "garbage_file", "huge", "link", "shape", "delete", "dtype"},
    "video": {"empty", "text", "task", "table_nan", "table_text", "table_shuffle", "table_repeat",
              "table_short", "table_no_timestamp", "table_gap"},
    "lerobot": {"info", "drop_last_rows", "nan_state", "timestamps", "truncate_video"},
}  # fmt: skip


def family(source: str) -> str:
    return "video" if source.startswith("video-") else "lerobot" if source == "lerobot" else "hdf5"


def campaign(n: int, work: Path, seed: int = 0, sources: tuple[str, ...] = SOURCES, time_limit: float = 20.0,
             progress: Callable[[Result], None] | None = None) -> list[Result]:  # fmt: skip
    """Run n cases (see cases()) with templates under work/templates; returns every Result."""
    templates: dict[str, Template] = {}
    results = []
    for source, kind, case_seed in cases(n, seed, sources):
        if source not in templates:
            templates[source] = make_template(source, work / "templates")
        results.append(run_case(templates[source], kind, case_seed, work / "cases", time_limit))
        if progress:
            progress(results[-1])
    return results
