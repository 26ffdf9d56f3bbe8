"""One episode in memory, as every converter produces it, with the checks and transforms it goes through."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from robofm.errors import EpisodeError


@dataclass
class Episode:
    """A decoded episode. T is the number of frames; every array shares it.

    frames: camera -> uint8 [T, H, W, 3]; state: float32 [T, Ds]; action: float32 [T, Da] or None for
    action-free video; timestamp: float64 [T] seconds, strictly increasing; latents: camera -> float16
    [T, C, h, w] VAE latents of the frames, set by the converter when the store keeps latents (else None).
    """

    frames: dict[str, np.ndarray]
    state: np.ndarray
    action: np.ndarray | None
    timestamp: np.ndarray
    task: str
    source: str
    source_index: str
    embodiment: str = "default"
    split: str | None = None  # set when the source defines splits (robomimic masks); else assigned by hash
    state_names: list[str] | None = None
    action_names: list[str] | None = None
    extra: dict = field(default_factory=dict)
    layout: dict | None = None  # the simulator layout it was recorded on, e.g. {"mt1_seed": 0, "mt1_index": 3}
    latents: dict[str, np.ndarray] | None = None

    @property
    def length(self) -> int:
        return len(self.timestamp)

    def fail(self, problem: str) -> EpisodeError:
        return EpisodeError(problem, file=self.source, episode=self.source_index)

    def validate(self) -> None:
        """Raise EpisodeError naming the first problem found; return None for a usable episode."""
        t = self.length
        if t == 0:
            raise self.fail("episode has no frames")
        if not self.frames:
            raise self.fail("episode has no camera")
        for cam, fr in self.frames.items():
            if fr.ndim != 4 or fr.shape[-1] != 3:
                raise self.fail(f"camera {cam!r}: expected frames [T, H, W, 3], got shape {tuple(fr.shape)}")
            if fr.dtype != np.uint8:
                raise self.fail(f"camera {cam!r}: expected uint8 frames, got {fr.dtype}")
            if len(fr) != t:
                raise self.fail(f"camera {cam!r} has {len(fr)} frames but the episode has {t} timestamps")
        for cam, lat in (self.latents or {}).items():
            if cam not in self.frames:
                raise self.fail(f"latents of camera {cam!r}, which has no frames")
            if lat.ndim != 4 or len(lat) != t:
                raise self.fail(f"camera {cam!r}: expected latents [{t}, C, h, w], got shape {tuple(lat.shape)}")
        for name, arr in (("state", self.state), ("action", self.action)):
            if arr is None:
                continue
            if arr.ndim != 2:
                raise self.fail(f"{name}: expected [T, D], got shape {tuple(arr.shape)}")
            if len(arr) != t:
                raise self.fail(f"{name} has {len(arr)} steps but the frames have {t}")
            bad = ~np.isfinite(arr)
            if bad.any():
                step, dim = np.argwhere(bad)[0]
                raise self.fail(f"{name} has {int(bad.sum())} NaN/Inf values (first at step {step}, dim {dim})")
        ts = self.timestamp
        if not np.isfinite(ts).all():
            raise self.fail("timestamp has NaN/Inf values")
        if t > 1 and not (np.diff(ts) > 0).all():
            step = int(np.argmax(np.diff(ts) <= 0))
            raise self.fail(f"timestamps are not increasing at step {step + 1} ({ts[step]:.6f} -> {ts[step + 1]:.6f})")


def resize_frames(frames: np.ndarray, size: tuple[int, int], mode: str = "crop", chunk: int = 64) -> np.ndarray:
    """Resize uint8 [T, H, W, 3] frames to size (h, w) with antialiasing.

    mode: "crop" centre-crops to the target aspect ratio first (nothing is stretched, borders are lost),
    "pad" letterboxes with black (nothing is lost), "stretch" ignores the aspect ratio.
    """
    h, w = size
    t, fh, fw, _ = frames.shape
    if (fh, fw) == (h, w):
        return frames
    if mode == "crop":
        if fw * h > fh * w:  # too wide
            cw = round(fh * w / h)
            x0 = (fw - cw) // 2
            frames = frames[:, :, x0 : x0 + cw]
        else:
            ch = round(fw * h / w)
            y0 = (fh - ch) // 2
            frames = frames[:, y0 : y0 + ch]
        inner = (h, w)
    elif mode == "pad":
        scale = min(h / fh, w / fw)
        inner = (max(1, round(fh * scale)), max(1, round(fw * scale)))
    elif mode == "stretch":
        inner = (h, w)
    else:
        raise ValueError(f"unknown resize mode {mode!r}: use crop, pad or stretch")
    out = np.zeros((t, h, w, 3), dtype=np.uint8)
    y0, x0 = (h - inner[0]) // 2, (w - inner[1]) // 2
    for i in range(0, t, chunk):
        x = torch.from_numpy(np.ascontiguousarray(frames[i : i + chunk])).permute(0, 3, 1, 2).float()  # (B, 3, H, W)
        x = F.interpolate(x, size=inner, mode="bilinear", antialias=True, align_corners=False)
        out[i : i + chunk, y0 : y0 + inner[0], x0 : x0 + inner[1]] = (
            x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
        )
    return out


FRAME_CHUNK = 64  # frames decoded and resized at a time


def resize_chunks(chunks, size: tuple[int, int] | None, mode: str = "crop") -> np.ndarray:
    """Concatenate an iterable of uint8 [n, H, W, 3] chunks, resizing each to `size` (None keeps it) as it
    arrives: only one chunk is held at source resolution."""
    out = [c if size is None else resize_frames(c, size, mode) for c in chunks]
    if len(out) == 1:
        return out[0]
    return np.concatenate(out) if out else np.zeros((0, *(size or (0, 0)), 3), np.uint8)


def nearest_index(times: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Index of the element of increasing `times` nearest to each target (the earlier one on a tie)."""
    right = np.clip(np.searchsorted(times, targets), 0, len(times) - 1)
    left = np.maximum(right - 1, 0)
    return np.where(np.abs(times[left] - targets) <= np.abs(times[right] - targets), left, right)


def resample(ep: Episode, fps: float) -> Episode:
    """Resample an episode onto a regular timeline at `fps`, from its first to its last timestamp.

    Frames take the nearest source frame; state and action are linearly interpolated per dimension.
    """
    ts = ep.timestamp
    # a quarter-frame tolerance: float32 timestamps (LeRobot's) put the last frame a hair before k / fps
    n = int(np.floor((ts[-1] - ts[0]) * fps + 0.25)) + 1
    target = ts[0] + np.arange(n) / fps
    if n == len(ts) and np.allclose(target, ts, atol=0.25 / fps):
        return ep
    nearest = nearest_index(ts, target)

    def interp(arr: np.ndarray | None) -> np.ndarray | None:
        if arr is None:
            return None
        return np.stack([np.interp(target, ts, arr[:, d]) for d in range(arr.shape[1])], axis=1).astype(np.float32)

    ep.frames = {cam: fr[nearest] for cam, fr in ep.frames.items()}
    if ep.latents is not None:
        ep.latents = {cam: lat[nearest] for cam, lat in ep.latents.items()}
    ep.state, ep.action = interp(ep.state), interp(ep.action)
    ep.timestamp = target
    return ep


def grid_thumbnail(frames: np.ndarray) -> np.ndarray:
    """Every frame sampled on a grid of about 16 x 16 pixels: a strided view, no copy."""
    return frames[:, :: max(1, frames.shape[1] // 16), :: max(1, frames.shape[2] // 16)]


def content_hash(ep: Episode) -> str:
    """Hash of the actions, the state and 16x16 downsampled frames: equal for exact duplicates."""
    h = hashlib.blake2b(digest_size=16)
    for arr in (ep.action, ep.state):
        if arr is not None:
            h.update(np.ascontiguousarray(arr, dtype=np.float32).tobytes())
    for cam in sorted(ep.frames):
        h.update(np.ascontiguousarray(grid_thumbnail(ep.frames[cam])).tobytes())
    return h.hexdigest()


def motion(ep: Episode) -> dict[str, float]:
    """How much an episode moves: largest per-dimension std of action and state, and the largest mean
    absolute change of any frame against the first one, in grey levels (0..255), over a 16x16 pixel grid."""
    out = {}
    for name, arr in (("action_std", ep.action), ("state_std", ep.state)):
        out[name] = float(arr.std(axis=0).max()) if arr is not None and arr.size else 0.0
    frame_change = 0.0
    for fr in ep.frames.values():
        small = grid_thumbnail(fr).astype(np.int16)
        frame_change = max(frame_change, float(np.abs(small - small[:1]).mean(axis=(1, 2, 3)).max()))
    out["frame_change"] = frame_change
    return out
