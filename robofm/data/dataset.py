"""EpisodeWindowDataset: random K-step windows of episodes from one or several stores, for training.

A window of K observation steps at stride s starting at frame f covers frames f, f+s, ..., f+K*s: the
frames at steps 0..K-1 are observations and the frame at step K is the target of the last frame
prediction. Between step k and k+1 lie the s actions of frames f+k*s .. f+(k+1)*s-1 (the action chunk).
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from robofm.data.store import EpisodeInfo, EpisodeStore
from robofm.errors import UsageError

log = logging.getLogger(__name__)


@dataclass
class StoreSpec:
    """One store of a mixture and its sampling weight (None: proportional to its number of windows)."""

    path: str | Path
    weight: float | None = None


class EpisodeWindowDataset(torch.utils.data.Dataset):
    """Map-style dataset: item i of epoch e is drawn from a generator seeded by (seed, e, global index), so
    samples do not depend on num_workers, batch order or restarts. Rank r of world_size w sees global
    indices r, r + w, r + 2w, ...: every rank draws different windows.

    Items (collatable by torch's default_collate), with C cameras, K steps, s stride:
      frames        uint8   [C, K+1, H, W, 3]   camera_mask bool [C] (False for a camera the store lacks)
      state         float32 [K, Ds]             state_mask  bool [Ds]  (Ds: largest state dim of the mixture)
      actions       float32 [K, s, Da]          action_mask bool [Da] (all False: an action-free episode)
      frame_index   int64   [K+1]               (times are frame_index / store fps)
      task, embodiment, episode_id: str; store: int (index into `stores`)
      key           int64: the sample's key (see sample_key)
      latents       float16 [C, K+1, c, h, w]   only with latents=True: the VAE latents of `frames`, stored by
                                                `robofm-convert --latents` (zeros for a camera the store lacks)
    State and actions are in robot units; normalization uses `stats(store, embodiment)`.
    Episodes too short for a window are listed in `too_short` and logged as a warning (unless warn_short=False).
    """

    def __init__(
        self,
        stores: str | Path | StoreSpec | Sequence[str | Path | StoreSpec],
        window_len: int,
        stride: int = 1,
        *,
        split: str | None = "train",
        cameras: Sequence[str] | None = None,
        seed: int = 0,
        samples_per_epoch: int | None = None,
        rank: int = 0,
        world_size: int = 1,
        latents: bool = False,
        mix_by: str = "frames",
        warn_short: bool = True,
        shift: int = 0,
    ) -> None:
        if window_len < 1 or stride < 1:
            raise UsageError(f"window_len and stride must be >= 1, got {window_len} and {stride}")
        if shift < 0 or (shift and latents):
            raise UsageError(f"shift={shift}: random shifts move frames by 0 or more pixels, and not latents")
        self.shift = shift
        if not 0 <= rank < world_size:
            raise UsageError(f"rank {rank} is outside world_size {world_size}")
        specs = [s if isinstance(s, StoreSpec) else StoreSpec(s) for s in _as_list(stores)]
        self.stores = [EpisodeStore(s.path) for s in specs]
        self.window_len, self.stride, self.split, self.seed = window_len, stride, split, seed
        self.rank, self.world_size, self.epoch = rank, world_size, 0
        self.cameras = list(cameras) if cameras else list(dict.fromkeys(c for st in self.stores for c in st.cameras))
        self._check_cameras()
        self.latent_shape = self._check_latents() if latents else None
        span = window_len * stride + 1  # frames a window covers
        self.episodes: list[list[EpisodeInfo]] = []
        self.cum_windows: list[np.ndarray] = []
        self.too_short: list[tuple[str, str, int]] = []  # (store, episode, length): reported, never silently lost
        for st in self.stores:
            eps = [e for e in st.episodes if split is None or e.split == split]
            usable = [e for e in eps if e.length >= span]
            self.too_short += [(str(st.root), e.id, e.length) for e in eps if e.length < span]
            self.episodes.append(usable)
            self.cum_windows.append(np.cumsum([e.length - span + 1 for e in usable]))
        if self.too_short and warn_short:
            log.warning("%d episodes are shorter than a window of %d frames and are not sampled: %s",
                        len(self.too_short), span, self.too_short[:5])  # fmt: skip
        windows = np.array([c[-1] if len(c) else 0 for c in self.cum_windows], dtype=np.float64)
        if windows.sum() == 0:
            raise UsageError(f"no episode in split {split!r} of {[str(s.path) for s in specs]} is long enough for "
                             f"a window of {window_len} steps at stride {stride} ({span} frames)")  # fmt: skip
        if mix_by not in ("frames", "episodes"):
            raise UsageError(f"data.mix_by must be frames or episodes, not {mix_by!r}")
        size = windows if mix_by == "frames" else np.array([len(e) for e in self.episodes], np.float64)
        weights = np.array([size[i] if s.weight is None else s.weight for i, s in enumerate(specs)], np.float64)
        weights[windows == 0] = 0.0
        self.weights = weights / weights.sum()
        self._cum_weights = np.cumsum(self.weights).tolist()
        self.samples_per_epoch = int(samples_per_epoch or windows.sum())
        self.state_dim = max(e["state_dim"] for st in self.stores for e in st.manifest["embodiments"].values())
        self.action_dim = max(e["action_dim"] or 0 for st in self.stores for e in st.manifest["embodiments"].values())

    def _check_cameras(self) -> None:
        sizes = {tuple(hw) for st in self.stores for c, hw in st.manifest["cameras"].items() if c in self.cameras}
        if len(sizes) > 1:
            detail = {str(st.root): st.manifest["cameras"] for st in self.stores}
            raise UsageError(f"stores of one mixture must share a frame size; got {detail}: convert with one --resolution")
        for c in self.cameras:
            if not any(c in st.cameras for st in self.stores):
                raise UsageError(f"camera {c!r} is in none of the stores; they have {[st.cameras for st in self.stores]}")
        self.frame_size = sizes.pop()

    def _check_latents(self) -> tuple[int, int, int]:
        """The latent shape (c, h, w) every store of the mixture shares; UsageError if one has no latents."""
        for st in self.stores:
            if st.latents is None:
                raise UsageError(f"{st.root} holds no latents: convert it with `robofm-convert ... --latents VAE_DIR`")
        records = {str(st.root): st.latents for st in self.stores}
        if len({tuple(r["shape"]) for r in records.values()}) > 1:
            raise UsageError(f"stores of one mixture must hold latents of one shape; got {records}")
        if len({r["vae_path"] for r in records.values()}) > 1:  # may be one VAE copied to several machines
            log.warning("the stores' latents were made by VAEs at different paths: %s", records)
        return tuple(self.stores[0].latents["shape"])

    def set_epoch(self, epoch: int) -> None:
        """Draw a different set of windows in each epoch (call before iterating, like DistributedSampler)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(range(self.rank, self.samples_per_epoch, self.world_size))

    def stats(self, store: int, embodiment: str) -> dict:
        return self.stores[store].stats[embodiment]

    def sample_key(self, index: int) -> int:
        """The 64-bit key of item `index` of this rank in the current epoch: it picks the window, and seeds the
        randomness drawn for the sample in training (noise, diffusion times), whatever the worker or rank."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        return _mix(_mix(_mix(self.seed) ^ self.epoch) ^ (self.rank + index * self.world_size))

    def _store_of(self, key: int) -> int:
        return min(bisect.bisect_right(self._cum_weights, _mix(key ^ 1) / 2.0**64), len(self.stores) - 1)

    def mixture(self) -> list[dict]:
        """Per store: its episodes and windows, the share it is meant to get, and the share this rank's epoch
        actually draws (counted over the epoch's first 100,000 samples)."""
        n = min(len(self), 100_000)
        drawn = np.bincount([self._store_of(self.sample_key(i)) for i in range(n)], minlength=len(self.stores))
        return [{"store": str(st.root), "episodes": len(self.episodes[i]),
                 "windows": int(self.cum_windows[i][-1]) if len(self.cum_windows[i]) else 0,
                 "weight": float(self.weights[i]), "sampled": float(drawn[i] / max(n, 1)), "draws": n}
                for i, st in enumerate(self.stores)]  # fmt: skip

    def locate(self, index: int) -> tuple[int, EpisodeInfo, int]:
        """(store, episode, first frame) of item `index` of this rank in the current epoch."""
        key = self.sample_key(index)
        s = self._store_of(key)
        w = _mix(key ^ 2) % int(self.cum_windows[s][-1])
        e = int(np.searchsorted(self.cum_windows[s], w, side="right"))
        start = w - (int(self.cum_windows[s][e - 1]) if e > 0 else 0)
        return s, self.episodes[s][e], start

    def __getitem__(self, index: int) -> dict:
        s, info, start = self.locate(index)
        key = self.sample_key(index)
        item = self.read_window(s, info, start)
        if self.shift:
            item["frames"] = random_shift(item["frames"], self.shift, np.random.default_rng(key))
        return {**item, "key": key - 2**64 if key >= 2**63 else key}  # as int64

    def read_window(self, s: int, info: EpisodeInfo, start: int) -> dict:
        k, stride = self.window_len, self.stride
        arrays = self.stores[s].arrays(info.id)
        steps = range(start, start + k * stride + 1, stride)
        span = slice(start, start + k * stride)
        frames, camera_mask = self._read_steps(arrays.frames, steps, (*self.frame_size, 3), np.uint8)
        state = np.zeros((k, self.state_dim), dtype=np.float32)
        raw_state = arrays.state[span][::stride]  # contiguous read, then stride in numpy (see _read_steps)
        state[:, : raw_state.shape[1]] = raw_state
        actions = np.zeros((k, stride, self.action_dim), dtype=np.float32)
        action_mask = np.zeros(self.action_dim, dtype=bool)
        if arrays.action is not None:
            raw = arrays.action[span]
            actions[..., : raw.shape[1]] = raw.reshape(k, stride, raw.shape[1])
            action_mask[: raw.shape[1]] = True
        state_mask = np.zeros(self.state_dim, dtype=bool)
        state_mask[: raw_state.shape[1]] = True
        item = {
            "frames": torch.from_numpy(frames),
            "camera_mask": torch.from_numpy(camera_mask),
            "state": torch.from_numpy(state),
            "state_mask": torch.from_numpy(state_mask),
            "actions": torch.from_numpy(actions),
            "action_mask": torch.from_numpy(action_mask),
            "frame_index": torch.arange(start, start + k * stride + 1, stride),
            "task": info.task,
            "embodiment": info.embodiment,
            "episode_id": info.id,
            "store": s,
        }
        if self.latent_shape is not None:
            latents, _ = self._read_steps(arrays.latents, steps, self.latent_shape, np.float16)
            item["latents"] = torch.from_numpy(latents)
        return item

    def _read_steps(self, per_camera: dict, steps: range, shape: tuple, dtype) -> tuple[np.ndarray, np.ndarray]:
        """Each camera's rows at `steps`, [C, len(steps), *shape] (zeros for a camera the episode lacks), and
        the camera mask [C]."""
        out = np.zeros((len(self.cameras), len(steps), *shape), dtype=dtype)
        mask = np.zeros(len(self.cameras), dtype=bool)
        for c, cam in enumerate(self.cameras):
            if cam in per_camera:
                ds = per_camera[cam]
                for j, t in enumerate(steps):  # one read per frame: HDF5's strided selections are ~100x slower
                    out[c, j] = ds[t]
                mask[c] = True
        return out, mask


def _as_list(stores) -> list:
    if isinstance(stores, (str, Path, StoreSpec)):
        return [stores]
    return list(stores)


_MASK64 = 2**64 - 1


def _mix(x: int) -> int:
    """splitmix64: a counter-based generator, so item i's window is a pure function of (seed, epoch, i) and
    costs ~1 us instead of the ~150 us of seeding a numpy Generator per item."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def random_shift(frames: torch.Tensor, pad: int, rng: np.random.Generator) -> torch.Tensor:
    """Frames [C, T, H, W, 3] with each camera's view moved by up to `pad` pixels in x and y (edges repeated), the
    same move for every frame of the window, so motion between frames is kept (DrQ's random shift, the
    augmentation that lets visual policies learn from a few demonstrations)."""
    c, _, h, w, _ = frames.shape
    padded = np.pad(frames.numpy(), ((0, 0), (0, 0), (pad, pad), (pad, pad), (0, 0)), mode="edge")
    dy, dx = rng.integers(0, 2 * pad + 1, size=(2, c))
    return torch.from_numpy(np.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(c)]))
