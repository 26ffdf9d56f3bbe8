"""Episode quality: the converter's filters and near-duplicate detection (docs/design.md and the README, "Quality filters").

Per-episode checks, each with the value it measured:
  non_finite     NaN/Inf in state, action or timestamps (checked on the source episode, before anything else)
  timestamp_gap  a gap between timestamps longer than max_gap times the episode's median frame period
                 (checked before resampling, which would hide it)
  too_short      fewer frames than min_length (a training window and its target frame)
  blank          a camera whose share of blank frames (grey-level std below blank_std) exceeds blank_fraction
  frozen         a camera repeating the identical frame for frozen_frames frames or more while the other cameras
                 change (with one camera: while the state moves by a quarter of its range); a still or creeping
                 robot in a noise-free render is not a stalled camera
  idle           neither actions, state nor frames move (std and frame change below their thresholds)

Near duplicates: every episode gets a `Fingerprint` (its state and actions, and 8x8 grey thumbnails of its
frames). Candidates come from MinHash with locality-sensitive hashing over two shingle sets, the cells a
trajectory visits on a coarse grid and SimHashes of the changes between frames (a time shift keeps both), so
the cost grows with the number of episodes, not with its square. A candidate is a near duplicate when, at some
time shift up to max_shift frames, the trajectories differ by at most signal_tol (RMS, in units of each
dimension's range) and the thumbnails by at most frame_tol grey levels (the largest difference of any thumbnail
pixel, averaged over frames): small noise and a few frames of shift pass, a different goal or object position
does not.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass, fields

import numpy as np

from robofm.data.episode import Episode, grid_thumbnail, motion
from robofm.data.store import EpisodeStore
from robofm.errors import UsageError

REASONS = ("non_finite", "timestamp_gap", "too_short", "blank", "frozen", "idle", "duplicate", "near_duplicate")


@dataclass
class QualityConfig:
    """Thresholds of the filters (see the module docstring); `keep`: reasons not to drop for."""

    min_length: int = 9  # a window of 4 steps at stride 2 with its target frame
    max_gap: float = 3.0
    blank_std: float = 2.0
    blank_fraction: float = 0.1
    frozen_frames: int = 10
    idle_action_std: float = 1e-4
    idle_frame_change: float = 0.5
    near_duplicates: bool = True
    signal_tol: float = 0.03
    frame_tol: float = 6.0
    max_shift: int = 5
    num_perm: int = 128
    bands: int = 32
    min_jaccard: float = 0.4
    keep: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        unknown = [r for r in self.keep if r not in REASONS]
        if unknown:
            raise UsageError(f"--keep {','.join(unknown)}: unknown reason(s); the reasons are {', '.join(REASONS)}")
        if self.num_perm % self.bands:
            raise UsageError(f"quality num_perm={self.num_perm} must be a multiple of bands={self.bands}")

    @classmethod
    def from_settings(cls, settings: list[str], keep: tuple[str, ...] = ()) -> QualityConfig:
        """From KEY=VALUE strings (`robofm-convert --quality min_length=20 frame_tol=4`)."""
        types = {f.name: f.type for f in fields(cls) if f.name != "keep"}
        values: dict = {}
        for item in settings:
            key, sep, value = item.partition("=")
            if not sep or key not in types:
                raise UsageError(f"--quality {item!r}: expected KEY=VALUE with KEY one of {', '.join(types)}")
            kind = {"int": int, "float": float, "bool": lambda v: v.lower() in ("1", "true", "yes")}[types[key]]
            try:
                values[key] = kind(value)
            except ValueError:
                raise UsageError(f"--quality {item!r}: {value!r} is not a valid {types[key]}") from None
            if types[key] != "bool" and not (math.isfinite(values[key]) and values[key] >= 0):
                raise UsageError(f"--quality {item!r}: thresholds are finite and not negative")
        return cls(**values, keep=tuple(keep))


@dataclass
class Verdict:
    """Why an episode is dropped: the reason, what was measured against which threshold, and in words."""

    reason: str
    value: dict
    message: str


# ------------------------------------------------------------------------------------------------ checks


def check_source(ep: Episode, cfg: QualityConfig) -> Verdict | None:
    """The checks that must see the episode as the source gave it: non_finite, then timestamp_gap."""
    for name, arr in (("state", ep.state), ("action", ep.action), ("timestamp", ep.timestamp)):
        if arr is None:
            continue
        bad = ~np.isfinite(np.asarray(arr, dtype=np.float64))
        if bad.any() and "non_finite" not in cfg.keep:
            where = np.argwhere(bad)[0].tolist()
            at = f"step {where[0]}" + (f", dim {where[1]}" if len(where) > 1 else "")
            return Verdict("non_finite", {"field": name, "count": int(bad.sum()), "first": where},
                           f"{name} has {int(bad.sum())} NaN/Inf values (first at {at})")  # fmt: skip
    ts = np.asarray(ep.timestamp, dtype=np.float64)
    if len(ts) > 2 and "timestamp_gap" not in cfg.keep:
        dt = np.diff(ts)
        period = float(np.median(dt))
        worst = int(np.argmax(dt))
        if period > 0 and dt[worst] > cfg.max_gap * period:
            value = {"gap_s": float(dt[worst]), "median_period_s": period, "at_frame": worst + 1,
                     "max_gap": cfg.max_gap}  # fmt: skip
            return Verdict("timestamp_gap", value, f"a {dt[worst]:.3f} s gap before frame {worst + 1}, over "
                           f"{cfg.max_gap:g} x the median frame period {period:.3f} s")  # fmt: skip
    return None


def measure(ep: Episode, cfg: QualityConfig, thumbs: dict[str, Thumbnails] | None = None) -> dict:
    """Everything the content checks read, for quality.json: motion, and per camera the blank share and the
    longest frozen run. `thumbs`: the episode's `thumbnails` per camera when the caller has them already."""
    m = {"length": ep.length, **motion(ep)}
    frozen = _frozen_runs(ep)
    thumbs = thumbs or {c: thumbnails(fr) for c, fr in ep.frames.items()}
    for cam in sorted(ep.frames):
        grey = thumbs[cam].grey16
        m[f"blank_fraction/{cam}"] = float((grey.std(axis=(1, 2)) < cfg.blank_std).mean())
        m[f"frozen_run/{cam}"] = frozen[cam]
    return m


def check_content(
    ep: Episode, cfg: QualityConfig, thumbs: dict[str, Thumbnails] | None = None
) -> tuple[Verdict | None, dict]:
    """(the first failed check among too_short, blank, frozen, idle or None, the measured values). `thumbs` as
    for `measure`."""
    m = measure(ep, cfg, thumbs)
    if m["length"] < cfg.min_length and "too_short" not in cfg.keep:
        return Verdict("too_short", m, f"{m['length']} frames, fewer than min_length={cfg.min_length}"), m
    for cam in sorted(ep.frames):
        share = m[f"blank_fraction/{cam}"]
        if share > cfg.blank_fraction and "blank" not in cfg.keep:
            return Verdict("blank", m, f"camera {cam!r}: {share:.0%} of the frames are blank (more than "
                           f"blank_fraction={cfg.blank_fraction:g})"), m  # fmt: skip
    for cam in sorted(ep.frames):
        run = m[f"frozen_run/{cam}"]
        if run >= cfg.frozen_frames and "frozen" not in cfg.keep:
            return Verdict("frozen", m, f"camera {cam!r} repeats one frame {run} times while the scene moves "
                           f"(frozen_frames={cfg.frozen_frames})"), m  # fmt: skip
    still = max(m["action_std"], m["state_std"]) < cfg.idle_action_std and m["frame_change"] < cfg.idle_frame_change
    if still and "idle" not in cfg.keep:
        return Verdict("idle", m, "neither actions, state nor frames move"), m
    return None, m


def _travel(ep: Episode) -> np.ndarray:
    """float [T, D]: the state (or, without state, the action) in units of each dimension's range."""
    signal = ep.state if ep.state is not None and ep.state.size else ep.action
    if signal is None or not signal.size:
        return np.zeros((ep.length, 1))
    return signal / np.maximum(signal.max(0) - signal.min(0), 1e-6)


def _frozen_runs(ep: Episode, min_travel: float = 0.25) -> dict[str, int]:
    """Per camera, the frames in its longest run of identical consecutive frames during which the scene moved:
    another camera's frames changed or, with one camera, the state moved by min_travel of a dimension's range.
    (A still or slowly creeping robot leaves a noise-free render unchanged; that is not a frozen camera.)"""
    same = {c: _same_as_next(f) for c, f in ep.frames.items()}
    path = _travel(ep)
    out = {}
    for cam, flags in same.items():
        best, start = 0, None
        for t, s in enumerate(flags):
            if s and start is None:
                start = t
            elif not s and start is not None:
                others = [o for o in same if o != cam]
                moved = (not all(same[o][start:t].all() for o in others) if others
                         else np.abs(path[t] - path[start]).max() >= min_travel)  # fmt: skip
                if moved:
                    best = max(best, t - start + 1)
                start = None
        out[cam] = best
    return out


def _same_as_next(frames: np.ndarray) -> np.ndarray:
    """bool [T]: frame t equals frame t + 1 exactly (False for the last). Only pairs whose pixels on a coarse
    grid agree are compared in full: camera frames differ on the grid almost always."""
    small = grid_thumbnail(frames)  # a view, no copy
    flags = np.zeros(len(frames), dtype=bool)
    if len(frames) > 1:
        candidates = np.flatnonzero((small[1:] == small[:-1]).reshape(len(frames) - 1, -1).all(axis=1))
        flags[candidates] = [np.array_equal(frames[t], frames[t + 1]) for t in candidates]
    return flags


@dataclass
class Thumbnails:
    """Block-mean grey thumbnails of one camera's frames: grey16 float32 [T, 16, 16] (the blank check) and grey8
    float32 [T, 8, 8] (fingerprints); fewer rows or columns for frames smaller than that."""

    grey16: np.ndarray
    grey8: np.ndarray


def thumbnails(frames: np.ndarray) -> Thumbnails:
    """Both thumbnails of uint8 frames [T, H, W, 3] in one pass over the pixels where the 8x8 blocks are 2x2 of
    the 16x16 ones (H and W each 16 or more and below a multiple of 16 by less than 8), else in two."""
    sums16, count16 = _grey_block_sums(frames, 16)
    t, h, w, _ = frames.shape
    if min(h, w) >= 16 and (h // 8, w // 8) == (2 * (h // 16), 2 * (w // 16)):
        sums8, count8 = sums16.reshape(t, 8, 2, 8, 2).sum(axis=(2, 4)), 4 * count16  # exact: integer sums
    else:
        sums8, count8 = _grey_block_sums(frames, 8)
    return Thumbnails((sums16 / count16).astype(np.float32), (sums8 / count8).astype(np.float32))


def _grey_block_sums(frames: np.ndarray, size: int) -> tuple[np.ndarray, int]:
    """(float64 [T, size, size] sums of R+G+B over each block of the frame cropped to a multiple of size, the
    number of values summed per block): the grey block mean is their quotient. Integer sums on uint8 without a
    float copy of the frames: rows within a block in uint16 (uint32 for blocks over 257 rows), then the columns
    with one float32 matmul, exact for sums below 2^24 (blocks up to ~21,000 pixels)."""
    t, h, w, _ = frames.shape
    sh, sw = min(size, h), min(size, w)
    bh, bw = max(1, h // size), max(1, w // size)
    blocks = frames[:, : bh * sh, : bw * sw].reshape(t, sh, bh, bw * sw * 3)  # (T, rows, block rows, W' x RGB)
    rows = blocks.sum(axis=2, dtype=np.uint16 if bh <= 257 else np.uint32)  # (T, rows, W' x RGB)
    pool = np.repeat(np.eye(sw, dtype=np.float32), bw * 3, axis=0)  # (W' x RGB, cols): sums each block's columns
    sums = rows.astype(np.float32) @ pool if 3 * bh * bw * 255 < 2**24 else rows.astype(np.float64) @ pool
    return sums.astype(np.float64), 3 * bh * bw


# ------------------------------------------------------------------------------------------------ near duplicates

_PRIME = (1 << 61) - 1  # shingle hashes are taken modulo this
_MINHASH_PRIME = (1 << 31) - 1


@dataclass
class Fingerprint:
    """What near-duplicate detection keeps of an episode (a few KB): signal [T, D] float32 (state, then action),
    thumbs [T, C, 8, 8] uint8 grey, and two MinHash signatures: of the signal's shingles and of the frames'."""

    signal: np.ndarray
    thumbs: np.ndarray
    signatures: tuple[np.ndarray, np.ndarray]


def fingerprint(ep: Episode, num_perm: int = 128, thumbs: dict[str, Thumbnails] | None = None) -> Fingerprint:
    """The episode's Fingerprint; `thumbs` as for `measure`."""
    parts = [a for a in (ep.state, ep.action) if a is not None and a.size]
    signal = np.concatenate(parts, axis=1).astype(np.float32) if parts else np.zeros((ep.length, 0), np.float32)
    thumbs = thumbs or {c: thumbnails(fr) for c, fr in ep.frames.items()}
    grey = np.stack([thumbs[c].grey8 for c in sorted(ep.frames)], axis=1)  # (T, C, 8, 8)
    return Fingerprint(signal, grey.round().astype(np.uint8), (minhash(signal_shingles(signal), num_perm),
                                                               minhash(frame_shingles(grey), num_perm)))  # fmt: skip


SIGNAL_PROJECTIONS, SIGNAL_CELLS = 3, 4


def signal_shingles(signal: np.ndarray) -> np.ndarray:
    """uint64 hashes of each step's bucket under SIGNAL_PROJECTIONS random projections of unit width (Euclidean
    LSH) of the (state, action) vector in absolute coordinates, each dimension in units of the power of two
    nearest a quarter of its range (at least 5% of the largest): where the trajectory goes, not only its shape;
    trimming a few frames rarely changes the units, and few values per shingle let noise in one dimension
    seldom change it."""
    if not signal.shape[1] or len(signal) < 2:
        return np.zeros(0, np.uint64)
    span = signal.max(0) - signal.min(0)
    unit = 2.0 ** np.round(np.log2(np.maximum(span, max(0.05 * float(span.max()), 1e-6)) / SIGNAL_CELLS))
    rng = np.random.default_rng(11)
    a = rng.standard_normal((64, SIGNAL_PROJECTIONS))[: signal.shape[1]] / np.sqrt(signal.shape[1])
    b = rng.uniform(0, 1, SIGNAL_PROJECTIONS)
    cells = np.floor((signal / unit) @ a + b).astype(np.int64)
    return np.unique(_hash_rows(cells, salt=1))  # negative cells wrap to uint64, still one hash each


FRAME_BITS = 12
MOTION_FLOOR = 20.0  # grey levels, the norm of a thumbnail change: below it, sensor noise rather than motion


def frame_shingles(thumbs: np.ndarray) -> np.ndarray:
    """uint64 hashes of the FRAME_BITS-bit SimHash (signs of fixed random projections) of each change between
    consecutive frames beyond MOTION_FLOOR, per camera: where and how the scene moves, which tells look-alike
    episodes of one task apart; pixel noise moves a projection far less than motion does, and a shift in time
    keeps the set."""
    t, c = thumbs.shape[:2]
    if t < 2:
        return np.zeros(0, np.uint64)
    change = np.diff(thumbs.reshape(t, c, 64).astype(np.float32), axis=0)  # (T-1, C, 64)
    planes = np.random.default_rng(7).standard_normal((64, FRAME_BITS)).astype(np.float32)
    bits = (change @ planes > 0).astype(np.int64)
    codes = (bits << np.arange(FRAME_BITS)).sum(-1)
    rows = np.stack([codes, np.broadcast_to(np.arange(c)[None, :], codes.shape)], axis=-1)
    moving = np.linalg.norm(change, axis=-1) > MOTION_FLOOR  # (T-1, C)
    return np.unique(_hash_rows(rows[moving], salt=2))


def _hash_rows(rows: np.ndarray, salt: int) -> np.ndarray:
    """One 61-bit hash per row of ints (as uint64 bit patterns)."""
    rows = rows.astype(np.uint64)
    h = np.full(len(rows), salt * 0x9E3779B97F4A7C15 & 0xFFFFFFFFFFFFFFFF, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(rows.shape[1]):
            h = (h ^ rows[:, j]) * np.uint64(0x100000001B3)
            h ^= h >> np.uint64(29)
    return h % np.uint64(_PRIME)


def _permutations(num_perm: int) -> tuple[np.ndarray, np.ndarray]:
    seed = int.from_bytes(hashlib.blake2b(b"robofm-minhash", digest_size=8).digest(), "little")
    rng = np.random.default_rng(seed)
    p = _MINHASH_PRIME
    return rng.integers(1, p, num_perm, dtype=np.uint64), rng.integers(0, p, num_perm, dtype=np.uint64)


def minhash(hashes: np.ndarray, num_perm: int) -> np.ndarray:
    """MinHash signature [num_perm] of a set of shingle hashes: the minimum of (a * x + b) mod p per random
    (a, b), with p the Mersenne prime 2^31 - 1 (a * x stays below 2^62). The share of equal entries of two
    signatures estimates the Jaccard similarity of their sets."""
    if not len(hashes):
        return np.full(num_perm, _MINHASH_PRIME, dtype=np.uint64)
    a, b = _permutations(num_perm)
    x = (hashes % np.uint64(_MINHASH_PRIME))[None, :]
    return ((a[:, None] * x + b[:, None]) % np.uint64(_MINHASH_PRIME)).min(axis=1)


def similarity(a: Fingerprint, b: Fingerprint) -> dict:
    """MinHash estimates of the Jaccard similarity of two episodes' signal and frame shingle sets (0 for an empty
    set)."""
    return {name: float(((x == y) & (x != _MINHASH_PRIME)).mean())
            for name, x, y in zip(("signal", "frames"), a.signatures, b.signatures, strict=True)}  # fmt: skip


def distance(a: Fingerprint, b: Fingerprint, max_shift: int, signal_tol: float = np.inf,
             min_overlap: float = 0.8) -> dict | None:  # fmt: skip
    """The closest alignment of b against a within +-max_shift frames: {"shift", "signal", "frames"}: the RMS
    signal difference in units of each dimension's range over both episodes (at least 5% of the largest range, so
    a constant dimension with a little noise still matches), and the mean over frames of the largest thumbnail difference in
    grey levels, computed only at shifts whose signal difference is within signal_tol (else inf). None when they
    are not comparable (other dimensions or cameras, or an overlap under min_overlap of the shorter one)."""
    if a.signal.shape[1] != b.signal.shape[1] or a.thumbs.shape[1:] != b.thumbs.shape[1:]:
        return None
    if a.signal.size:
        span = np.maximum(np.ptp(a.signal, axis=0), np.ptp(b.signal, axis=0))
        scale = np.maximum(span, max(0.05 * float(span.max()), 1e-6))
        xs, ys = a.signal / scale, b.signal / scale
    best = None
    for shift in range(-max_shift, max_shift + 1):
        sa, sb = max(shift, 0), max(-shift, 0)
        n = min(len(a.signal) - sa, len(b.signal) - sb)
        if n < min_overlap * min(len(a.signal), len(b.signal)) or n < 2:
            continue
        sig = 0.0
        if a.signal.size:
            d = xs[sa : sa + n] - ys[sb : sb + n]
            sig = float(np.sqrt(np.mean(d * d)))
        frames = np.inf
        if sig <= signal_tol:  # the thumbnails cost more: only where the trajectories already agree
            diff = np.abs(a.thumbs[sa : sa + n].astype(np.int16) - b.thumbs[sb : sb + n].astype(np.int16))
            frames = float(diff.reshape(n, -1).max(axis=1).mean())
        if best is None or (sig, frames) < (best["signal"], best["frames"]):
            best = {"shift": shift, "signal": sig, "frames": frames}
    return best


class NearDuplicateIndex:
    """LSH over both MinHash signatures: `bands` bands of num_perm / bands rows each; episodes that agree on a
    whole band of either are candidates; a candidate whose estimated Jaccard similarity is at least min_jaccard
    in one of them is verified, and is a near duplicate when `distance` is within the tolerances."""

    def __init__(self, cfg: QualityConfig) -> None:
        self.cfg = cfg
        self.rows = cfg.num_perm // cfg.bands
        self.buckets: list[dict[bytes, list[str]]] = [{} for _ in range(2 * cfg.bands)]
        self.prints: dict[str, Fingerprint] = {}
        self.candidates_checked = 0

    def __len__(self) -> int:
        return len(self.prints)

    def _keys(self, fp: Fingerprint) -> list[tuple[int, bytes]]:
        """(bucket table, key) per band of each signature; none for an empty shingle set (it would match every
        other empty one)."""
        r, out = self.rows, []
        for s, sig in enumerate(fp.signatures):
            if sig[0] != _MINHASH_PRIME:
                out += [(s * self.cfg.bands + i, sig[i * r : (i + 1) * r].tobytes()) for i in range(self.cfg.bands)]
        return out

    def add(self, key: str, fp: Fingerprint) -> None:
        self.prints[key] = fp
        for band, k in self._keys(fp):
            self.buckets[band].setdefault(k, []).append(key)

    def query(self, fp: Fingerprint) -> dict | None:
        """The closest near duplicate of fp in the index: {"of", "shift", "signal", "frames", "jaccard"}, or None."""
        seen: set[str] = set()
        for band, k in self._keys(fp):
            seen.update(self.buckets[band].get(k, ()))
        best = None
        for key in sorted(seen):
            if max(similarity(self.prints[key], fp).values()) < self.cfg.min_jaccard:
                continue  # a chance collision in one band: far from the similarity of any near duplicate
            self.candidates_checked += 1
            d = distance(self.prints[key], fp, self.cfg.max_shift, self.cfg.signal_tol)
            if d is None or d["signal"] > self.cfg.signal_tol or d["frames"] > self.cfg.frame_tol:
                continue
            if best is None or (d["signal"], d["frames"]) < (best["signal"], best["frames"]):
                best = {"of": key, **d, "jaccard": similarity(self.prints[key], fp)}
        return best


class Seen:
    """Episodes a new one must not repeat: their content hashes (exact duplicates) and a NearDuplicateIndex, each
    naming where the earlier episode is ("ep-000003", or "STORE:ep-000003" for another store's)."""

    def __init__(self, cfg: QualityConfig) -> None:
        self.cfg = cfg
        self.hashes: dict[str, str] = {}
        self.index = NearDuplicateIndex(cfg)

    def add(self, name: str, content_hash: str, fp: Fingerprint) -> None:
        self.hashes.setdefault(content_hash, name)
        self.index.add(name, fp)

    def add_store(self, store: EpisodeStore, prefix: str = "", advance: Callable[[], None] | None = None) -> None:
        """Every episode of `store` (names prefixed with `prefix`)."""
        for info in store.episodes:
            self.add(prefix + info.id, info.content_hash, fingerprint(store.read_episode(info.id), self.cfg.num_perm))
            if advance is not None:
                advance()
        store.close()

    def match(self, content_hash: str, fp: Fingerprint) -> tuple[str, dict] | None:
        """("duplicate", {"duplicate_of"}) or ("near_duplicate", {"duplicate_of", "value"}) unless `keep`."""
        if content_hash in self.hashes and "duplicate" not in self.cfg.keep:
            return "duplicate", {"duplicate_of": self.hashes[content_hash]}
        if self.cfg.near_duplicates and "near_duplicate" not in self.cfg.keep:
            hit = self.index.query(fp)
            if hit is not None:
                value = {**{k: v for k, v in hit.items() if k != "of"}, "signal_tol": self.cfg.signal_tol,
                         "frame_tol": self.cfg.frame_tol}  # fmt: skip
                return "near_duplicate", {"duplicate_of": hit["of"], "value": value}
        return None
