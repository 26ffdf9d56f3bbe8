"""Shared fixtures: synthetic episodes whose pixels and actions encode the frame index."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import pytest
import torch

from robofm.data.episode import Episode, content_hash
from robofm.data.sources.video import leave_realtime_scheduling
from robofm.data.store import StoreWriter, split_from_hash


@pytest.fixture(autouse=True)
def time_shared():
    """Every test leaves pytest's threads time-shared: the test videos' and lerobot's AV1 encoder, run as root, make
    the thread that feeds it SCHED_FIFO 99, which every later subprocess and thread pool of the suite would inherit
    (see leave_realtime_scheduling). It also starts each test time-shared, whatever a fixture or plugin that ran
    before it left behind."""
    leave_realtime_scheduling()
    yield
    leave_realtime_scheduling()


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def indexed_episode(length: int = 20, *, seed: int = 0, cameras=("front", "wrist"), size=(8, 8), state_dim=3,
                    action_dim=2, task: str = "pick", embodiment: str = "arm", with_action: bool = True) -> Episode:  # fmt: skip
    """Frame t of camera c has every pixel = (t + 100 * c) % 256; state[t] = [t, seed, ...]; action[t] = [t, -t, ...].

    A window read back from a store can therefore be checked value by value against its frame indices."""
    t = np.arange(length)
    frames = {cam: np.broadcast_to(((t + 100 * c) % 256).astype(np.uint8)[:, None, None, None], (length, *size, 3)).copy()
              for c, cam in enumerate(cameras)}  # fmt: skip
    state = np.zeros((length, state_dim), np.float32)
    state[:, 0], state[:, 1] = t, seed
    action = np.zeros((length, action_dim), np.float32)
    action[:, 0] = t
    action[:, 1] = -t
    return Episode(frames=frames, state=state, action=action if with_action else None, timestamp=t / 10.0, task=task,
                   source=f"synthetic-{seed}", source_index=str(seed), embodiment=embodiment)  # fmt: skip


def write_store(root: Path, episodes: list[Episode], fps: float = 10.0, val_fraction: float = 0.0) -> Path:
    first = episodes[0]
    cams = {c: fr.shape[1:3] for c, fr in first.frames.items()}
    writer = StoreWriter(root, fps=fps, cameras=cams, shard_size_mb=0.001)  # tiny shards: several per store
    for ep in episodes:
        h = content_hash(ep)
        writer.add(ep, h, split_from_hash(h, val_fraction))
    writer.close()
    return root


@pytest.fixture
def store_factory(tmp_path):
    def make(name: str = "store", n: int = 4, length: int = 20, **kw) -> Path:
        eps = [indexed_episode(length, seed=i, **kw) for i in range(n)]
        return write_store(tmp_path / name, eps)

    return make


@contextlib.contextmanager
def torch_threads(n: int):
    """torch's intra-op thread count set to n within, restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture
def one_thread():
    """Tiny models run faster on one thread; two threads on a busy 2-core machine are ~30x slower (OpenMP)."""
    with torch_threads(1):
        yield
