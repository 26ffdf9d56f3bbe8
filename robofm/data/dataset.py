"""EpisodeWindowDataset: random K-step windows of episodes from one or several stores, for training.

A window of K observation steps at stride s starting at frame f covers frames f, f+s, ..., f+K*s: the
frames at steps 0..K-1 are observations and the frame at step K is the target of the last frame
prediction. Between step k and k+1 lie the s actions of frames f+k*s .. f+(k+1)*s-1 (the action chunk).
"""

from __future__ import annotations

import bisect
import logging
import os
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import h5py
import numpy as np
import torch

from robofm.data.store import OPEN_EPISODES, EpisodeInfo, EpisodeStore
from robofm.errors import StoreError, UsageError

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
      kind          int: the episode's kind (robofm.sim.tasks.EPISODE_KINDS), NO_KIND (-1) where it records none
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
        self._rows: OrderedDict[tuple[int, str], _EpisodeRows] = OrderedDict()  # per process, see _episode
        self._fds: dict[str, int] = {}
        self._pid = os.getpid()
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
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[dict]:
        """Items `indices`, read together (torch's DataLoader calls this with each batch's indices): one
        allocation per field for the batch, so each item's tensors are views into arrays shared by the batch."""
        keys = [self.sample_key(i) for i in indices]
        items = self.read_windows([self.locate(i) for i in indices])
        for item, key in zip(items, keys, strict=True):
            if self.shift:
                item["frames"] = random_shift(item["frames"], self.shift, np.random.default_rng(key))
            item["key"] = key - 2**64 if key >= 2**63 else key  # as int64
        return items

    def read_window(self, s: int, info: EpisodeInfo, start: int) -> dict:
        """The window of episode `info` of store `s` that starts at frame `start` (an item without "key")."""
        return self.read_windows([(s, info, start)])[0]

    def read_windows(self, where: Sequence[tuple[int, EpisodeInfo, int]]) -> list[dict]:
        """read_window for each (store, episode, first frame) of `where`."""
        n, k, stride, cams = len(where), self.window_len, self.stride, self.cameras
        frames = np.zeros((n, len(cams), k + 1, *self.frame_size, 3), dtype=np.uint8)
        camera_mask = np.zeros((n, len(cams)), dtype=bool)
        state = np.zeros((n, k, self.state_dim), dtype=np.float32)
        state_mask = np.zeros((n, self.state_dim), dtype=bool)
        actions = np.zeros((n, k, stride, self.action_dim), dtype=np.float32)
        action_mask = np.zeros((n, self.action_dim), dtype=bool)
        latents = None if self.latent_shape is None else np.zeros((n, len(cams), k + 1, *self.latent_shape), np.float16)
        for b, (s, info, start) in enumerate(where):
            ep = self._episode(s, info)
            steps = range(start, start + k * stride + 1, stride)
            for c, cam in enumerate(cams):
                if cam in ep.frames:
                    ep.frames[cam].read_rows(steps, frames[b, c])
                    camera_mask[b, c] = True
                if latents is not None and cam in ep.latents:
                    ep.latents[cam].read_rows(steps, latents[b, c])
            raw_state = ep.state.read(start, start + k * stride)[::stride]  # contiguous read, then stride in numpy
            state[b, :, : raw_state.shape[1]] = raw_state
            state_mask[b, : raw_state.shape[1]] = True
            if ep.action is not None:
                raw = ep.action.read(start, start + k * stride)
                actions[b, ..., : raw.shape[1]] = raw.reshape(k, stride, raw.shape[1])
                action_mask[b, : raw.shape[1]] = True
        frame_index = np.array([start for _, _, start in where], np.int64)[:, None] + stride * np.arange(k + 1)
        fields = {
            "frames": frames,
            "camera_mask": camera_mask,
            "state": state,
            "state_mask": state_mask,
            "actions": actions,
            "action_mask": action_mask,
            "frame_index": frame_index,
        }
        if latents is not None:
            fields["latents"] = latents
        per_item = {name: torch.from_numpy(arr).unbind(0) for name, arr in fields.items()}  # views, no copies
        items = []
        for b, (s, info, _) in enumerate(where):
            item = {name: per_item[name][b] for name in fields if name != "latents"}
            item.update(task=info.task, embodiment=info.embodiment, episode_id=info.id, store=s, kind=info.kind)
            if latents is not None:
                item["latents"] = per_item["latents"][b]
            items.append(item)
        return items

    def _episode(self, s: int, info: EpisodeInfo) -> _EpisodeRows:
        """The row readers of one episode, made once per process and kept for the most recent episodes."""
        if os.getpid() != self._pid:  # forked into a worker: its own h5py handles (inherited descriptors still read)
            self._rows, self._pid = OrderedDict(), os.getpid()
        key = (s, info.id)
        ep = self._rows.get(key)
        if ep is None:
            arrays, fd = self.stores[s].arrays(info.id), self._fd(s, info.shard)
            ep = _EpisodeRows({c: RowReader(d, fd) for c, d in arrays.frames.items()}, RowReader(arrays.state, fd),
                              None if arrays.action is None else RowReader(arrays.action, fd),
                              {c: RowReader(d, fd) for c, d in arrays.latents.items()})  # fmt: skip
            self._rows[key] = ep
            if len(self._rows) > OPEN_EPISODES:
                self._rows.popitem(last=False)
        else:
            self._rows.move_to_end(key)
        return ep

    def _fd(self, s: int, shard: str) -> int:
        """A read-only descriptor of a shard (one per shard and process, closed with the process)."""
        path = str(self.stores[s].shard_path(shard))
        if path not in self._fds:
            self._fds[path] = os.open(path, os.O_RDONLY)
        return self._fds[path]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_rows": OrderedDict(), "_fds": {}}

    def close(self) -> None:
        """Close the shard descriptors the readers use (they reopen on the next read)."""
        self._rows.clear()
        for fd in self._fds.values():
            os.close(fd)
        self._fds = {}

    def __del__(self) -> None:
        if getattr(self, "_fds", None):
            self.close()


class RowReader:
    """Rows of one HDF5 dataset [T, ...]. A dataset that HDF5 keeps as plain bytes (contiguous, or chunked one row
    per chunk, unfiltered, in native byte order: what the store writes without --compression) is read with
    os.preadv at the rows' offsets in the shard, ~5 us a frame; through h5py, a selection costs ~15 us however
    small, and a strided one 20-45 ms on chunked datasets (h5py/h5py#1832). Any other dataset is read through
    h5py one row at a time."""

    def __init__(self, ds: h5py.Dataset, fd: int) -> None:
        self.ds, self.fd = ds, fd
        self.shape, self.dtype = ds.shape, ds.dtype
        self.row_bytes = int(np.prod(ds.shape[1:], dtype=np.int64)) * ds.dtype.itemsize
        self.offset: int | None = None  # contiguous: the first row's byte offset
        self.row_offsets: np.ndarray | None = None  # one row per chunk: each row's byte offset
        plist = ds.id.get_create_plist()
        if not ds.dtype.isnative or plist.get_nfilters() or ds.shape[0] == 0 or ds.dtype.hasobject:
            return
        if ds.chunks is None:
            self.offset = ds.id.get_offset()  # None when nothing was written
        elif ds.chunks == (1, *ds.shape[1:]) and ds.id.get_num_chunks() == ds.shape[0]:
            offsets = np.full(ds.shape[0], -1, dtype=np.int64)

            def visit(chunk) -> None:
                offsets[chunk.chunk_offset[0]] = chunk.byte_offset

            if hasattr(ds.id, "chunk_iter"):  # HDF5 1.14: one call for every chunk
                ds.id.chunk_iter(visit)
            else:
                for i in range(ds.shape[0]):
                    visit(ds.id.get_chunk_info(i))
            self.row_offsets = offsets if (offsets >= 0).all() else None

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows start..stop-1, [stop - start, ...]."""
        out = np.empty((stop - start, *self.shape[1:]), dtype=self.dtype)
        if self.offset is not None:
            self._pread(out, self.offset + start * self.row_bytes)
        else:
            self.read_rows(range(start, stop), out)
        return out

    def read_rows(self, rows: Sequence[int], out: np.ndarray) -> None:
        """Rows `rows` into out [len(rows), ...] (C-contiguous, of the dataset's dtype)."""
        if self.row_offsets is not None:
            for j, t in enumerate(rows):
                self._pread(out[j], int(self.row_offsets[t]))
        elif self.offset is not None:
            for j, t in enumerate(rows):
                self._pread(out[j], self.offset + t * self.row_bytes)
        else:
            for j, t in enumerate(rows):  # one read per row: HDF5's strided selections are ~100x slower
                out[j] = self.ds[t]

    def _pread(self, out: np.ndarray, offset: int) -> None:
        if os.preadv(self.fd, [out], offset) != out.nbytes:
            raise StoreError(f"{self.ds.file.filename}: {self.ds.name} is shorter than its {self.shape[0]} rows")


class _EpisodeRows(NamedTuple):
    frames: dict[str, RowReader]
    state: RowReader
    action: RowReader | None
    latents: dict[str, RowReader]


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
