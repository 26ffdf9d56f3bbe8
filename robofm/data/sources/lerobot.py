"""LeRobot v3 datasets, read with lerobot's own LeRobotDataset: cameras, state, action and task per episode."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import numpy as np

from robofm.data.episode import FRAME_CHUNK, Episode, resize_chunks
from robofm.data.sources.base import EpisodeRef
from robofm.errors import EpisodeError, UsageError

HELP = "a LeRobot v3 dataset: a local folder (with meta/info.json), or a hub repo id when online"
IMAGE_PREFIX = "observation.images."
_OPEN_DATASETS: dict = {}


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


class LeRobotSource:
    """Reads episodes through lerobot 0.6: metadata and tabular columns from LeRobotDataset, video frames with
    lerobot's decode_video_frames at the episode's own timestamps. One LeRobotDataset per process, opened lazily."""

    def __init__(self, src: str, *, repo_id: str | None = None, revision: str | None = None,
                 episodes: list[int] | None = None, task: str | None = None) -> None:  # fmt: skip
        _quiet_lerobot()
        from lerobot.datasets.dataset_metadata import LeRobotDatasetMetadata

        local = Path(src)
        if local.exists():
            if not (local / "meta" / "info.json").exists():
                raise UsageError(f"{src} is not a LeRobot v3 dataset: meta/info.json is missing")
            self.root, self.repo_id = local, repo_id or f"local/{local.resolve().name}"
        else:
            self.root, self.repo_id = None, src
        self.revision, self.task = revision, task
        try:
            meta = LeRobotDatasetMetadata(self.repo_id, root=self.root, revision=revision)
        except Exception as e:  # noqa: BLE001 -- lerobot raises many kinds for an unreadable dataset
            where = self.root or f"hub repo {self.repo_id} (needs a network)"
            raise UsageError(f"cannot open LeRobot dataset {where}: {type(e).__name__}: {e}") from e
        self.fps = float(meta.fps)
        self.cameras = [k for k in meta.camera_keys]
        self.state_names = _names(meta.features.get("observation.state"))
        self.action_names = _names(meta.features.get("action"))
        self.robot_type = meta.robot_type or "default"
        n = meta.total_episodes
        bad = [i for i in episodes or [] if not 0 <= i < n]
        if bad:
            raise UsageError(f"episodes {bad} do not exist in {src}: it has episodes 0..{n - 1}")
        self.indices = episodes if episodes is not None else list(range(n))

    def __str__(self) -> str:
        return str(self.root or self.repo_id)

    def episodes(self) -> list[EpisodeRef]:
        return [EpisodeRef(str(self), str(i), (i,)) for i in self.indices]

    def _open(self):
        key = (self.repo_id, str(self.root), self.revision)
        if key not in _OPEN_DATASETS:  # the source is pickled per episode; the dataset stays open per process
            _quiet_lerobot()
            from lerobot.datasets.lerobot_dataset import LeRobotDataset

            _OPEN_DATASETS[key] = LeRobotDataset(self.repo_id, root=self.root, revision=self.revision,
                                                 video_backend="pyav")  # fmt: skip
        return _OPEN_DATASETS[key]

    def load(self, ref: EpisodeRef, frame_size: tuple[int, int] | None = None, resize_mode: str = "crop") -> Episode:
        from lerobot.datasets.video_utils import decode_video_frames

        (index,) = ref.key
        ds = self._open()
        meta = ds.meta.episodes[index]
        start, stop = int(meta["dataset_from_index"]), int(meta["dataset_to_index"])
        columns = ["timestamp", "observation.state", "action", *[k for k in ds.meta.image_keys]]
        rows = ds.hf_dataset.select(range(start, stop)).select_columns([c for c in columns if c in ds.features])
        rows = rows.with_format("numpy")
        if "observation.state" not in rows.column_names:
            raise EpisodeError("the dataset has no 'observation.state' feature", file=str(self), episode=ref.index)
        timestamp = np.asarray(rows["timestamp"], dtype=np.float64)
        frames = {}
        for key in self.cameras:
            cam = key.removeprefix(IMAGE_PREFIX)
            if key in ds.meta.video_keys:
                t0 = meta[f"videos/{key}/from_timestamp"]
                video = ds.root / ds.meta.get_video_file_path(index, key)
                times = [float(t0 + t) for t in timestamp]

                def decode(times=times, video=video, key=key):
                    for i in range(0, len(times), FRAME_CHUNK):
                        try:
                            chw = decode_video_frames(video, times[i : i + FRAME_CHUNK], ds.tolerance_s, "pyav",
                                                      return_uint8=True)  # fmt: skip
                        except Exception as e:  # noqa: BLE001 -- a broken video is this episode's failure
                            raise EpisodeError(f"camera {key}: cannot decode: {type(e).__name__}: {e}",
                                               file=str(video), episode=ref.index) from e  # fmt: skip
                        yield chw.permute(0, 2, 3, 1).numpy()  # (n, H, W, 3)

                frames[cam] = resize_chunks(decode(), frame_size, resize_mode)
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
            frames=frames,
            state=np.asarray(rows["observation.state"], dtype=np.float32),
            action=np.asarray(rows["action"], dtype=np.float32) if "action" in rows.column_names else None,
            timestamp=timestamp,
            task=str(task),
            source=str(self),
            source_index=ref.index,
            embodiment=self.robot_type,
            state_names=self.state_names,
            action_names=self.action_names,
        )


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
