"""Small LeRobot v3 datasets written with lerobot's own writer, for converter tests and benchmarks."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def make_lerobot_dataset(
    root: Path,
    *,
    episodes: int = 3,
    length: int = 12,
    cameras: tuple[str, ...] = ("front",),
    size: tuple[int, int] = (32, 32),
    state_dim: int = 4,
    action_dim: int = 3,
    fps: int = 10,
    seed: int = 0,
    repo_id: str = "robofm/test",
    layouts: bool = False,
) -> Path:
    """Write a dataset whose frame t of episode e is filled with grey level (10 * e + 3 * t) % 256 in camera 0
    and state[t, 0] = action[t, 0] = t, so tests can check alignment. Task of episode e: "task e". With layouts,
    every frame carries scripts/collect_metaworld.py's `layout` feature, [seed, e]."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    h, w = size
    features = {
        "observation.state": {"dtype": "float32", "shape": (state_dim,), "names": [f"s{i}" for i in range(state_dim)]},
        "action": {"dtype": "float32", "shape": (action_dim,), "names": [f"a{i}" for i in range(action_dim)]},
    }
    for cam in cameras:
        features[f"observation.images.{cam}"] = {"dtype": "video", "shape": (h, w, 3), "names": ["height", "width", "channels"]}
    if layouts:
        features["layout"] = {"dtype": "int64", "shape": (2,), "names": ["mt1_seed", "mt1_index"]}
    from tests.video import ENCODER_THREADS

    ds = LeRobotDataset.create(repo_id=repo_id, fps=fps, features=features, root=root, use_videos=True,
                               encoder_threads=ENCODER_THREADS)  # fmt: skip
    rng = np.random.default_rng(seed)
    for e in range(episodes):
        for t in range(length):
            frame = {"task": f"task {e}"}
            for c, cam in enumerate(cameras):
                frame[f"observation.images.{cam}"] = np.full((h, w, 3), (10 * e + 3 * t + 50 * c) % 256, np.uint8)
            state = rng.normal(size=state_dim).astype(np.float32)
            state[0] = t
            action = rng.normal(size=action_dim).astype(np.float32)
            action[0] = t
            frame["observation.state"], frame["action"] = state, action
            if layouts:
                frame["layout"] = np.array([seed, e], dtype=np.int64)
            ds.add_frame(frame)
        ds.save_episode()
    ds.finalize()
    return root
