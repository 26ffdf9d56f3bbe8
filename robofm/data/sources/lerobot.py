"""LeRobot v3 datasets, read with lerobot's own LeRobotDataset: cameras, state, action and task per episode."""

from __future__ import annotations

import argparse
import logging
import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from robofm.data.episode import FRAME_CHUNK, Episode, nearest_index, resize_chunks
from robofm.data.sources.base import EpisodeRef
from robofm.data.sources.video import VideoReader
from robofm.errors import EpisodeError, UsageError

HELP = "a LeRobot v3 dataset: a local folder (with meta/info.json), or a hub repo id when online"
IMAGE_PREFIX = "observation.images."
LAYOUT = "layout"  # per-frame ints naming the simulator layout of the episode (scripts/collect_metaworld.py)
_OPEN_DATASETS: dict = {}
_READERS: dict[tuple, VideoReader] = {}  # open videos of this process by (path, mtime, size), most recent last
_MAX_READERS = 8


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", help="LeRobot v3 dataset folder, or a hub repo id (downloaded, needs a network)")
    parser.add_argument("--repo-id", help="repo id recorded for a local folder (default: the folder name)")
    parser.add_argument("--revision", help="hub revision (branch, tag or commit) of a repo id")
    parser.add_argument("--episodes", type=lambda s: [int(v) for v in s.split(",")], help="comma-separated indices")
    parser.add_argument("--task", help="instruction for episodes that carry no task string")


def from_args(args: argparse.Namespace) -> LeRobotSource:
    return LeRobotSource(args.src, repo_id=args.repo_id, revision=args.revision, episodes=args.episodes, task=args.task)


def _quiet_lerobot() -> None:
    # lerobot probes torchcodec first and logs a traceback when the system FFmpeg it needs is absent;
    # robofm decodes with PyAV, so that probe is noise.
    logging.getLogger("lerobot.utils.import_utils").setLevel(logging.ERROR)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


@dataclass
class _Opened:
    """What a process keeps open of one LeRobot dataset."""

    dataset: object  # lerobot.datasets.lerobot_dataset.LeRobotDataset
    rows: object  # its frame table, tabular columns only, formatted as numpy (sliced without copying metadata)
    episodes: object  # its episode table: frame range, task and video offsets per episode


class LeRobotSource:
    """Reads episodes through lerobot 0.6's LeRobotDataset: its metadata, frame table and video file layout.
    Videos are decoded with PyAV, one sequential pass over each episode's span of the file, and frames are
    matched to the episode's timestamps within the dataset's tolerance, as lerobot does.

    The dataset is opened once per process and kept in a module-level cache, so the worker processes that
    `robofm-convert --workers N` forks inherit it."""

    def __init__(self, src: str, *, repo_id: str | None = None, revision: str | None = None,
                 episodes: list[int] | None = None, task: str | None = None) -> None:  # fmt: skip
        local = Path(src)
        if local.exists():
            if not (local / "meta" / "info.json").exists():
                raise UsageError(f"{src} is not a LeRobot v3 dataset: meta/info.json is missing")
            self.root, self.repo_id = local, repo_id or f"local/{local.resolve().name}"
        else:
            self.root, self.repo_id = None, src
        self.revision, self.task = revision, task
        try:
            meta = self._open().dataset.meta
        except Exception as e:  # noqa: BLE001 -- lerobot raises many kinds for an unreadable dataset
            where = self.root or f"hub repo {self.repo_id} (needs a network)"
            raise UsageError(f"cannot open LeRobot dataset {where}: {type(e).__name__}: {e}") from e
        self.fps = float(meta.fps)
        self.cameras = [k for k in meta.camera_keys]
        self.state_names = _names(meta.features.get("observation.state"))
        self.action_names = _names(meta.features.get("action"))
        self.layout_names = _names(meta.features.get(LAYOUT))
        self.robot_type = meta.robot_type or "default"
        n = meta.total_episodes
        bad = [i for i in episodes or [] if not 0 <= i < n]
        if bad:
            raise UsageError(f"episodes {bad} do not exist in {src}: it has episodes 0..{n - 1}")
        self.indices = episodes if episodes is not None else list(range(n))
        self.license = _card_license(Path(meta.root) / "README.md")

    def __str__(self) -> str:
        return str(self.root or self.repo_id)

    def episodes(self) -> list[EpisodeRef]:
        return [EpisodeRef(str(self), str(i), (i,)) for i in self.indices]

    def _open(self) -> _Opened:
        key = (self.repo_id, str(self.root), self.revision)
        if key not in _OPEN_DATASETS:  # the source is pickled per episode; the dataset stays open per process
            _quiet_lerobot()
            from lerobot.datasets.lerobot_dataset import LeRobotDataset

            ds = LeRobotDataset(self.repo_id, root=self.root, revision=self.revision, video_backend="pyav")
            columns = [c for c in ("timestamp", "episode_index", "frame_index", "observation.state", "action", LAYOUT,
                                   *ds.meta.image_keys) if c in ds.features]  # fmt: skip
            ep_columns = ["dataset_from_index", "dataset_to_index", "tasks",
                          *[f"videos/{k}/from_timestamp" for k in ds.meta.video_keys]]  # fmt: skip
            ep_columns += [c for c in ("length",) if c in ds.meta.episodes.column_names]
            _OPEN_DATASETS[key] = _Opened(ds, ds.hf_dataset.select_columns(columns).with_format("numpy"),
                                          ds.meta.episodes.select_columns(ep_columns))  # fmt: skip
        return _OPEN_DATASETS[key]

    def load(self, ref: EpisodeRef, frame_size: tuple[int, int] | None = None, resize_mode: str = "crop") -> Episode:
        (index,) = ref.key
        opened = self._open()
        ds, meta = opened.dataset, opened.episodes[index]
        start, stop = int(meta["dataset_from_index"]), int(meta["dataset_to_index"])
        if "observation.state" not in ds.features:
            raise EpisodeError("the dataset has no 'observation.state' feature", file=str(self), episode=ref.index)
        try:
            rows = opened.rows[start:stop]  # one batch of numpy columns
            timestamp = np.asarray(rows["timestamp"], dtype=np.float64)
        except Exception as e:  # noqa: BLE001 -- datasets/pyarrow raise many kinds for a damaged table
            raise EpisodeError(f"cannot read the episode's rows {start}..{stop - 1} of the data table: "
                               f"{type(e).__name__}: {e}", file=str(self), episode=ref.index) from e  # fmt: skip
        self._check_rows(rows, timestamp, meta, index, len(opened.rows), ref.index)
        frames = {}
        for key in self.cameras:
            cam = key.removeprefix(IMAGE_PREFIX)
            if key in ds.meta.video_keys:
                video = ds.root / ds.meta.get_video_file_path(index, key)
                frames[cam] = self._video_frames(video, meta[f"videos/{key}/from_timestamp"] + timestamp, ds.tolerance_s,
                                                 ref.index, frame_size, resize_mode)  # fmt: skip
            else:
                images = rows[key]
                chunks = (_to_uint8_hwc(np.stack([np.asarray(im) for im in images[i : i + FRAME_CHUNK]]))
                          for i in range(0, len(images), FRAME_CHUNK))  # fmt: skip
                frames[cam] = resize_chunks(chunks, frame_size, resize_mode)
        tasks = list(meta["tasks"]) if "tasks" in meta else []
        task = tasks[0] if tasks else self.task
        if not task:
            raise EpisodeError("episode has no task string: pass --task", file=str(self), episode=ref.index)
        return Episode(
            layout=self._layout(rows, ref.index),
            frames=frames,
            state=np.asarray(rows["observation.state"], dtype=np.float32),
            action=np.asarray(rows["action"], dtype=np.float32) if "action" in rows else None,
            timestamp=timestamp,
            task=str(task),
            source=str(self),
            source_index=ref.index,
            embodiment=self.robot_type,
            state_names=self.state_names,
            action_names=self.action_names,
        )

    def _check_rows(self, rows, timestamp: np.ndarray, meta, index: int, table_rows: int, episode: str) -> None:
        """The rows read must be those the metadata declares: its length, all of this episode, in frame order,
        with timestamps that increase. A table missing rows, or holding other episodes' rows, fails here."""
        start, stop = int(meta["dataset_from_index"]), int(meta["dataset_to_index"])
        declared = {"dataset_to_index - dataset_from_index": stop - start}
        if "length" in meta:
            declared["length"] = int(meta["length"])
        fail = partial(EpisodeError, file=str(self), episode=episode)
        wrong = {k: v for k, v in declared.items() if v != len(timestamp)}
        if wrong:
            total = self._open().dataset.meta.total_frames
            raise fail(f"{len(timestamp)} rows in the data table for this episode, but the metadata declares "
                       + ", ".join(f"{k} = {v}" for k, v in wrong.items())
                       + f" (the table has {table_rows} rows, info.json total_frames = {total}): the data table is "
                       "missing rows, or its metadata is damaged")  # fmt: skip
        if "episode_index" in rows:
            other = np.asarray(rows["episode_index"]).reshape(-1) != index
            if other.any():
                raise fail(f"row {start + int(np.argmax(other))} of the data table (step {int(np.argmax(other))}) "
                           "belongs to another episode: the data table does not match its metadata")  # fmt: skip
        if "frame_index" in rows:
            order = np.asarray(rows["frame_index"]).reshape(-1) != np.arange(len(timestamp))
            if order.any():
                raise fail(f"frame_index is not 0..{len(timestamp) - 1} (step {int(np.argmax(order))} differs): rows "
                           "are missing or out of order")  # fmt: skip
        steps = np.diff(timestamp)
        if not np.isfinite(timestamp).all() or (steps <= 0).any():
            raise fail("the episode's timestamps are not finite and increasing")

    def _layout(self, rows, episode: str) -> dict | None:
        """The `layout` feature (scripts/collect_metaworld.py: [MT1 seed, layout index]) as {name: int}; one per
        episode, so every frame must carry the same."""
        if LAYOUT not in rows:
            return None
        column = list(rows[LAYOUT])  # one array per frame (an object array when the table formats it so)
        values = np.stack([np.asarray(v, dtype=np.int64).reshape(-1) for v in column]) if column else None
        if values is None or (values != values[0]).any():
            raise EpisodeError(f"the {LAYOUT!r} feature changes within the episode", file=str(self), episode=episode)
        names = self.layout_names or [str(i) for i in range(values.shape[1])]
        return {name: int(v) for name, v in zip(names, values[0], strict=True)}

    @staticmethod
    def _video_frames(video: Path, times: np.ndarray, tolerance: float, episode: str,
                      frame_size: tuple[int, int] | None, resize_mode: str) -> np.ndarray:  # fmt: skip
        """The frames presented at `times` (seconds in the file), matched as lerobot does: the nearest decoded
        frame, within `tolerance`. One sequential decode of the episode's span of the file."""
        reader = _reader(video, episode)
        try:
            decoded, pts = reader.read(episode, frame_size, resize_mode, (times[0] - tolerance, times[-1] + tolerance))
        except Exception:
            _forget_reader(video)  # its decoder stopped mid-file: the next episode opens the file afresh
            raise
        if times[-1] > pts[-1] + tolerance:
            late = int((times > pts[-1] + tolerance).sum())
            raise EpisodeError(f"the video ends at {pts[-1]:.4f} s, before the episode's last timestamp "
                               f"{times[-1]:.4f} s ({late} of {len(times)} timestamps have no frame): truncated video",
                               file=str(video), episode=episode)  # fmt: skip
        nearest = nearest_index(pts, times)
        off = np.abs(pts[nearest] - times)
        if (off > tolerance).any():
            i = int(np.argmax(off > tolerance))
            raise EpisodeError(f"no frame within {tolerance} s of {times[i]:.4f} s (step {i}); the nearest is at "
                               f"{pts[nearest[i]]:.4f} s", file=str(video), episode=episode)  # fmt: skip
        if len(decoded) == len(times) and (nearest == np.arange(len(times))).all():
            return decoded  # one decoded frame per timestamp, in order: no copy
        return decoded[nearest]


def _reader(video: Path, episode: str) -> VideoReader:
    """This process's open reader of a video file. Episodes come in file order, so each reader goes on from where
    the previous episode ended. A reader opened before a fork belongs to the parent and is not used."""
    try:
        st = video.stat()
    except OSError as e:
        raise EpisodeError(f"cannot read the video: {e}", file=str(video), episode=episode) from e
    key = (video, st.st_mtime_ns, st.st_size)  # a file rewritten since it was opened is opened again
    reader = _READERS.pop(key, None)
    if reader is None or reader.pid != os.getpid():
        reader = VideoReader(video, episode)
    _READERS[key] = reader
    while len(_READERS) > _MAX_READERS:
        _READERS.pop(next(iter(_READERS))).close()
    return reader


def _forget_reader(video: Path) -> None:
    for key in [k for k in _READERS if k[0] == video]:
        _READERS.pop(key).close()


def _card_license(card: Path) -> str | None:
    """The `license` of a dataset card's YAML header (the Hub's README.md), or None."""
    import yaml

    try:
        text = card.read_text(encoding="utf-8")
        if not text.startswith("---"):
            return None
        header = yaml.safe_load(text.split("---", 2)[1])
    except (OSError, UnicodeDecodeError, IndexError, yaml.YAMLError):
        return None
    value = header.get("license") if isinstance(header, dict) else None
    return str(value) if isinstance(value, str | int) and str(value).strip() else None


def _names(feature: dict | None) -> list[str] | None:
    names = (feature or {}).get("names")
    if isinstance(names, dict):  # older datasets: {"motors": [...]}
        names = next(iter(names.values()), None)
    return [str(n) for n in names] if isinstance(names, list) else None


def _to_uint8_hwc(imgs: np.ndarray) -> np.ndarray:
    if imgs.ndim == 4 and imgs.shape[1] == 3 and imgs.shape[-1] != 3:
        imgs = imgs.transpose(0, 2, 3, 1)
    if imgs.dtype != np.uint8:
        imgs = (np.clip(imgs, 0, 1) * 255).round().astype(np.uint8)
    return imgs
