"""HDF5 episodes: ALOHA/ACT files, robomimic files, or any layout that a mapping YAML describes.

The mapping format is documented in docs/hdf5_mapping.md. The source holds paths only and opens each
HDF5 file inside load(), so it pickles to converter worker processes without an open handle.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import posixpath
import re
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import yaml

from robofm.data.episode import FRAME_CHUNK, Episode, resize_chunks
from robofm.data.sources.base import FPS, EpisodeRef
from robofm.errors import EpisodeError, UsageError

HELP = "HDF5 episodes: ALOHA/ACT files, robomimic files, or any layout described by a mapping YAML"

LAYOUT_FPS = {"aloha": 50.0, "robomimic": 20.0}  # native rates; --source-fps overrides
SUFFIXES = (".hdf5", ".h5")
IMAGE_SUFFIX = "_image"  # robomimic: obs keys holding camera frames
INT_LIMIT = 2**31  # integers in state or action beyond it are garbage (e.g. -1 wrapped to 2^64 - 1)
JPEG_SOI, JPEG_EOI, PNG_MAGIC, PNG_END = b"\xff\xd8", b"\xff\xd9", b"\x89PNG", b"IEND\xaeB`\x82"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The hdf5 source's own options; convert.py adds the store options (--out, --fps, ...)."""
    parser.add_argument("src", type=Path, help="an HDF5 file, or a folder searched recursively for .hdf5/.h5 files")
    parser.add_argument("--layout", required=True, metavar="aloha|robomimic|PATH.yaml",
                        help="aloha: one ACT/ALOHA episode per file; robomimic: data/demo_<i> groups; or a mapping "
                             "YAML for any other layout (see docs/hdf5_mapping.md)")  # fmt: skip
    parser.add_argument("--task", metavar="TEXT",
                        help="instruction for episodes that carry none (default: the layout's own, else the "
                             "file's folder name with underscores as spaces)")  # fmt: skip
    parser.add_argument("--source-fps", type=FPS, metavar="HZ",
                        help="the files' frame rate, for files without timestamps and as the store's rate unless "
                             "--fps (default: aloha 50, robomimic 20, a mapping's `fps`)")  # fmt: skip
    parser.add_argument("--state-keys", type=lambda s: [k for k in s.split(",") if k], metavar="A,B,C",
                        help="aloha/robomimic: observation keys concatenated into the state (default: aloha qpos; "
                             "robomimic every low-dimensional obs key, sorted)")  # fmt: skip


def from_args(args: argparse.Namespace) -> Hdf5Source:
    """Build the source from parsed arguments; raise UsageError for a missing SRC, no HDF5 files or a bad layout."""
    src = Path(args.src)
    if not src.exists():
        raise UsageError(f"{src} does not exist")
    files = find_files(src)
    if not files:
        raise UsageError(f"{src} holds no .hdf5 or .h5 files")
    mapping = None
    if args.layout in LAYOUT_FPS:
        layout, fps = args.layout, LAYOUT_FPS[args.layout]
    elif args.layout.endswith((".yaml", ".yml")) or Path(args.layout).is_file():
        mapping = load_mapping(Path(args.layout))
        layout, fps = "mapping", mapping.fps
        if args.state_keys:
            raise UsageError(f"--state-keys is for --layout aloha|robomimic; mapping {args.layout} sets `state`")
    else:
        raise UsageError(f"--layout must be aloha, robomimic or a mapping .yaml file, got {args.layout!r}")
    if args.source_fps is not None:
        fps = args.source_fps
    if fps is None:
        raise UsageError(f"mapping {args.layout} has no `fps`: add it or pass --source-fps")
    return Hdf5Source(src, layout, float(fps), task=args.task, state_keys=tuple(args.state_keys or ()) or None,
                      mapping=mapping, files=files)  # fmt: skip


def find_files(src: Path) -> list[Path]:
    """SRC itself if it is a file, else its .hdf5/.h5 files (recursive, hidden ones skipped) in natural order."""
    if src.is_file():
        return [src]
    found = [p for p in src.rglob("*") if p.suffix.lower() in SUFFIXES and p.is_file()
             and not any(part.startswith(".") for part in p.relative_to(src).parts)]  # fmt: skip
    return sorted(found, key=lambda p: _natural_key(str(p.relative_to(src))))


def _natural_key(text: str) -> list:
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", text)]


# --------------------------------------------------------------------------- mapping YAML

_STR, _NUM = ((str,), "a string"), ((int, float), "a number")
_MAPPING_KEYS: dict[str, tuple[tuple[type, ...], str]] = {
    "episodes": _STR, "cameras": ((dict,), "a mapping of camera names to paths"),
    "state": ((str, list), "a string or a list of paths"), "action": _STR, "timestamp": _STR, "fps": _NUM,
    "task": _STR, "task_attr": _STR, "image_layout": _STR, "embodiment": _STR,
}  # fmt: skip


@dataclass(frozen=True)
class Mapping:
    """A validated mapping YAML. Paths are relative to the episode group; a leading "/" starts at the file root."""

    path: str
    cameras: dict[str, str]
    state: tuple[str, ...]
    episodes: str = "/"
    action: str | None = None
    timestamp: str | None = None
    fps: float | None = None
    task: str | None = None
    task_attr: str | None = None
    image_layout: str = "HWC"
    embodiment: str = "default"


def load_mapping(path: Path) -> Mapping:
    """Read and validate a mapping YAML; raise UsageError naming the file and the bad key."""

    def bad(problem: str) -> UsageError:
        return UsageError(f"mapping {path}: {problem} (the format is described in docs/hdf5_mapping.md)")

    try:
        doc = yaml.safe_load(path.read_text())
    except OSError as e:
        raise UsageError(f"mapping {path} cannot be read: {e}") from e
    except yaml.YAMLError as e:
        raise bad(f"not valid YAML: {e}") from e
    if not isinstance(doc, dict):
        raise bad(f"expected keys such as cameras, state, action, got a {type(doc).__name__}")
    unknown = sorted(str(k) for k in doc if k not in _MAPPING_KEYS)
    if unknown:
        raise bad(f"unknown key(s) {unknown}; known keys are {sorted(_MAPPING_KEYS)}")
    doc = {k: v for k, v in doc.items() if v is not None}  # `action: null` is the same as no action
    for key in ("cameras", "state"):
        if not doc.get(key):
            raise bad(f"missing key {key!r}: it is required")
    for key, value in doc.items():
        types, want = _MAPPING_KEYS[key]
        if isinstance(value, bool) or not isinstance(value, types):
            raise bad(f"key {key!r} must be {want}, got {value!r}")
    cams = doc["cameras"]
    if not all(isinstance(k, str) and isinstance(v, str) and v for k, v in cams.items()):
        raise bad(f"key 'cameras' must map camera names to dataset paths, got {cams!r}")
    state = [doc["state"]] if isinstance(doc["state"], str) else doc["state"]
    if not all(isinstance(p, str) and p for p in state):
        raise bad(f"key 'state' must be a path or a list of paths, got {doc['state']!r}")
    if doc.get("fps", 1) <= 0:
        raise bad(f"key 'fps' must be positive, got {doc['fps']}")
    if doc.get("image_layout", "HWC") not in ("HWC", "CHW"):
        raise bad(f"key 'image_layout' must be HWC or CHW, got {doc['image_layout']!r}")
    rest = {k: v for k, v in doc.items() if k not in ("cameras", "state")}
    return Mapping(str(path), dict(cams), tuple(state), **rest)


# --------------------------------------------------------------------------- reading one file


class _Reader:
    """Reads datasets of one open file; every problem becomes an EpisodeError naming the file and episode."""

    def __init__(self, f: h5py.File, file: str, episode: str, frame_size: tuple[int, int] | None = None,
                 resize_mode: str = "crop") -> None:  # fmt: skip
        self.f, self.file, self.episode = f, file, episode
        self.frame_size, self.resize_mode = frame_size, resize_mode

    def fail(self, problem: str) -> EpisodeError:
        return EpisodeError(problem, file=self.file, episode=self.episode)

    def node(self, base: h5py.Group, path: str) -> h5py.Group | h5py.Dataset:
        """The object at `path` (relative to base, or absolute); a missing one names what exists at its level."""
        full = path if path.startswith("/") else posixpath.join(base.name, path)
        here = self.f if path.startswith("/") else base
        for part in (p for p in path.split("/") if p):
            if not isinstance(here, h5py.Group):
                raise self.fail(f"missing {full!r}: {here.name!r} is a dataset, not a group")
            if part not in here:
                raise self.fail(f"missing {full!r}: {here.name!r} has {sorted(here.keys())}")
            try:
                here = here[part]
            except (KeyError, OSError, RuntimeError) as e:  # h5py's words for a dangling soft or external link
                raise self.fail(f"cannot open {full!r} (a dangling link, or a damaged file): {e}") from e
        return here

    def group(self, base: h5py.Group, path: str) -> h5py.Group:
        node = self.node(base, path)
        if not isinstance(node, h5py.Group):
            raise self.fail(f"{node.name!r} is a dataset; expected a group")
        return node

    def dataset(self, base: h5py.Group, path: str) -> h5py.Dataset:
        """The dataset at `path`, after checking that the file stores data for all of its declared shape."""
        node = self.node(base, path)
        if not isinstance(node, h5py.Dataset):
            raise self.fail(f"{node.name!r} is a group holding {sorted(node.keys())}; expected a dataset")
        self._check_stored(node)
        return node

    def _check_stored(self, ds: h5py.Dataset) -> None:
        """A declared shape that the file holds no data for (a few KB declaring 2^31 frames) is an error before
        anything is read: HDF5 would hand back its fill value, chunk after chunk. Metadata only."""
        if ds.size == 0 or ds.external:
            return
        if ds.chunks is None:
            stored, declared = ds.id.get_storage_size(), ds.size * ds.dtype.itemsize
            if ds.dtype.kind != "O" and stored < declared:
                raise self.fail(f"{ds.name!r} declares shape {ds.shape} ({declared} bytes) but the file stores "
                                f"{stored} bytes of it: truncated or never written")  # fmt: skip
            return
        declared = int(np.prod([-(-n // c) for n, c in zip(ds.shape, ds.chunks, strict=True)], dtype=object))
        stored = ds.id.get_num_chunks()
        if stored < declared:
            raise self.fail(f"{ds.name!r} declares shape {ds.shape} but the file stores data for {stored} of its "
                            f"{declared} chunks: truncated or never written")  # fmt: skip

    def same_length(self, datasets: dict[str, h5py.Dataset]) -> None:
        """The declared first dimensions of an episode's datasets agree: checked before any of them is read."""
        lengths = {name: ds.shape[0] if ds.ndim else None for name, ds in datasets.items()}
        if len(set(lengths.values())) > 1:
            listed = ", ".join(f"{name} {n}" for name, n in lengths.items())
            raise self.fail(f"the episode's datasets declare different lengths: {listed}")

    def array(self, base: h5py.Group, path: str) -> np.ndarray:
        """A numeric dataset as float32 [T, D] ([T] becomes [T, 1]); NaN/Inf are errors."""
        ds = self.dataset(base, path)
        arr = ds[()]
        if arr.dtype.kind not in "biuf":
            raise self.fail(f"{ds.name!r}: expected numbers, got dtype {arr.dtype}")
        peak = max(abs(int(arr.min())), abs(int(arr.max()))) if arr.dtype.kind in "iu" and arr.size else 0
        if peak > INT_LIMIT:
            raise self.fail(f"{ds.name!r}: {arr.dtype} values reach {peak}, beyond the int32 range: a wrapped "
                            "negative integer or garbage")  # fmt: skip
        if arr.ndim == 1:
            arr = arr[:, None]
        if arr.ndim != 2:
            raise self.fail(f"{ds.name!r}: expected shape [T] or [T, D], got {tuple(arr.shape)}")
        bad = ~np.isfinite(arr)
        if bad.any():
            step, dim = np.argwhere(bad)[0]
            raise self.fail(f"{ds.name!r} has {int(bad.sum())} NaN/Inf values (first at step {step}, dim {dim})")
        return arr.astype(np.float32)

    def concat(self, base: h5py.Group, paths: tuple[str, ...] | list[str]) -> tuple[np.ndarray, list[str]]:
        """Datasets concatenated along the last axis, with one name per dimension ("key" or "key.i")."""
        parts = [self.array(base, p) for p in paths]
        if len({len(a) for a in parts}) > 1:
            lengths = ", ".join(f"{p} {len(a)}" for p, a in zip(paths, parts, strict=True))
            raise self.fail(f"state parts differ in length: {lengths}")
        names = []
        for p, a in zip(paths, parts, strict=True):
            key = p.rstrip("/").rsplit("/", 1)[-1]
            names += [key] if a.shape[1] == 1 else [f"{key}.{i}" for i in range(a.shape[1])]
        return np.concatenate(parts, axis=1), names

    def frames(self, base: h5py.Group, path: str, chw: bool = False) -> np.ndarray:
        """Images as uint8 [T, H, W, 3], read, checked and resized (to self.frame_size) in chunks of frames."""
        ds = self.dataset(base, path)
        if ds.ndim == 0:
            raise self.fail(f"{ds.name!r}: expected images [T, H, W, 3], got a scalar")
        chunks = (self._frames_chunk(ds, ds[i : i + FRAME_CHUNK], i, chw) for i in range(0, len(ds), FRAME_CHUNK))
        return resize_chunks(chunks, self.frame_size, self.resize_mode)

    def _frames_chunk(self, ds: h5py.Dataset, arr: np.ndarray, first: int, chw: bool) -> np.ndarray:
        """One chunk of images (`arr`, frames first..first+n of `ds`) as uint8 [n, H, W, 3].

        Rows of encoded bytes ([T, L] uint8, zero-padded, or variable-length) are decoded with OpenCV: ALOHA's
        `compress` files. Channel order is kept as stored (imencode/imdecode round-trip it unchanged). Float
        images with values in [0, 1] are scaled to 0..255 and rounded; any other dtype is an error.
        """
        decoded = arr.dtype == object or (arr.ndim == 2 and arr.dtype == np.uint8)
        if decoded:
            arr = self._decode_rows(ds.name, arr, first)
        elif chw and arr.ndim == 4:
            arr = arr.transpose(0, 2, 3, 1)  # (T, C, H, W) -> (T, H, W, C)
        if arr.ndim != 4 or arr.shape[-1] != 3:
            want = "[T, 3, H, W] (image_layout CHW)" if chw and not decoded else "[T, H, W, 3]"
            got = f"decoded images of shape {tuple(arr.shape)}" if decoded else f"shape {tuple(ds.shape)}"
            raise self.fail(f"{ds.name!r}: expected images {want}, got {got}")
        if arr.dtype == np.uint8:
            return arr
        if arr.dtype.kind == "f" and (arr.size == 0 or (np.isfinite(arr).all() and arr.min() >= 0 and arr.max() <= 1)):
            return np.rint(arr * 255).astype(np.uint8)
        lo, hi = (float(np.nanmin(arr)), float(np.nanmax(arr))) if arr.size and arr.dtype.kind in "biuf" else (0, 0)
        raise self.fail(f"{ds.name!r}: expected uint8 images (or floats in [0, 1]), got {arr.dtype} in [{lo}, {hi}]")

    def _decode_rows(self, name: str, rows: np.ndarray, first: int = 0) -> np.ndarray:
        import cv2  # opencv-python-headless, installed with lerobot

        images = []
        for step, row in enumerate(rows):
            buf = np.frombuffer(row, np.uint8) if isinstance(row, bytes) else np.asarray(row, np.uint8)
            img = cv2.imdecode(buf, cv2.IMREAD_COLOR)  # trailing zero padding is ignored by the decoder
            if img is None:
                raise self.fail(f"{name!r}: step {first + step} is not a decodable JPEG/PNG image")
            if not _complete_image(buf):  # the decoder fills a cut-short JPEG with grey and says nothing
                raise self.fail(f"{name!r}: step {first + step} is a truncated image (no end marker)")
            if images and img.shape != images[0].shape:
                raise self.fail(f"{name!r}: step {first + step} decodes to {img.shape}, step {first} to {images[0].shape}")
            images.append(img)
        if not images:
            raise self.fail(f"{name!r} holds no images")
        return np.stack(images)

    def timestamps(self, base: h5py.Group, path: str) -> np.ndarray:
        """Seconds as float64 [T], read at full precision ([T, 1] is flattened); NaN/Inf are errors."""
        ds = self.dataset(base, path)
        arr = ds[()]
        if arr.dtype.kind not in "iuf" or arr.ndim not in (1, 2) or (arr.ndim == 2 and arr.shape[1] != 1):
            raise self.fail(f"{ds.name!r}: expected numeric timestamps [T], got {arr.dtype} {tuple(arr.shape)}")
        arr = arr.reshape(-1).astype(np.float64)
        if not np.isfinite(arr).all():
            raise self.fail(f"{ds.name!r} has NaN/Inf timestamps (first at step {int(np.argmin(np.isfinite(arr)))})")
        return arr

    def text_attr(self, obj: h5py.Group, name: str) -> str | None:
        """A string attribute (str, bytes or a one-element array of either); None when absent or blank."""
        value = obj.attrs.get(name)
        if isinstance(value, np.ndarray) and value.size == 1:
            value = value.reshape(-1)[0]
        if isinstance(value, bytes | np.bytes_):
            value = value.decode("utf-8", "replace")
        if value is None:
            return None
        return str(value).strip() or None


def _complete_image(buf: np.ndarray) -> bool:
    """Whether an encoded JPEG or PNG ends with its end marker (after ALOHA's zero padding); other formats pass."""
    head = buf[:4].tobytes()
    if head.startswith(JPEG_SOI):
        nonzero = np.flatnonzero(buf)
        return len(nonzero) > 0 and buf[max(nonzero[-1] - 1, 0) : nonzero[-1] + 1].tobytes() == JPEG_EOI
    if head == PNG_MAGIC:
        nonzero = np.flatnonzero(buf)
        return len(nonzero) > 0 and buf[max(nonzero[-1] - 7, 0) : nonzero[-1] + 1].tobytes() == PNG_END
    return True


def _env_task(f: h5py.File) -> str | None:
    """robomimic's env_args JSON names the environment: "PickPlaceCan" -> "pick place can"."""
    raw = f["data"].attrs.get("env_args") if isinstance(f.get("data"), h5py.Group) else None
    if isinstance(raw, bytes | np.bytes_):
        raw = raw.decode("utf-8", "replace")
    try:
        name = json.loads(raw).get("env_name") if raw else None
    except (ValueError, AttributeError):
        return None
    if not isinstance(name, str) or not name:
        return None
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", name).replace("_", " ").lower().strip()


def _mask_split(f: h5py.File, demo: str) -> tuple[str | None, dict[str, int]]:
    """robomimic masks: in a mask named val* -> "val", in mask/train -> "train", in none -> None. Also the
    entries per mask that could not be read as UTF-8 demo names, which were skipped (the rest of the mask counts)."""
    masks = f.get("mask")
    if not isinstance(masks, h5py.Group):
        return None, {}
    split, skipped = None, {}
    for name in masks:
        try:
            ds = masks[name]
            if not isinstance(ds, h5py.Dataset):
                continue
            entries = np.atleast_1d(ds[()])
        except Exception:  # noqa: BLE001 -- a damaged or dangling mask: reported, and it names no demo
            skipped[f"mask/{name}"] = -1
            continue
        members = set()
        for m in entries:
            try:
                members.add(m.decode() if isinstance(m, bytes) else str(m))
            except UnicodeDecodeError:
                skipped[f"mask/{name}"] = skipped.get(f"mask/{name}", 0) + 1
        if demo in members and name.startswith("val"):
            split = "val"
        elif demo in members and name == "train" and split is None:
            split = "train"
    return split, skipped


def _folder_task(file: str) -> str:
    return Path(file).resolve().parent.name.replace("_", " ")


# --------------------------------------------------------------------------- the source


@dataclass
class Hdf5Source:
    """Episodes of HDF5 files in one layout: "aloha", "robomimic" or "mapping" (with `mapping` set).

    fps is the files' frame rate, used for timestamps when a file has none. EpisodeRef.key is
    (file path, episode group path), the group being None when the file could not be listed.
    """

    src: Path
    layout: str
    fps: float
    task: str | None = None
    state_keys: tuple[str, ...] | None = None
    mapping: Mapping | None = None
    files: list[Path] = field(default_factory=list)

    def __str__(self) -> str:
        return f"hdf5 {self.mapping.path if self.mapping else self.layout} {self.src}"

    def _episode_pattern(self) -> str | None:
        """Pattern of the episode groups inside a file; None for one episode per file."""
        if self.layout == "robomimic":
            return "data/demo_*"
        if self.layout == "mapping" and self.mapping.episodes.strip("/"):
            return self.mapping.episodes.strip("/")
        return None

    def episodes(self) -> list[EpisodeRef]:
        """Every episode, file by file in natural order. A file that cannot be listed still gets one ref
        (index = file stem) so that load() raises its error and the converter records it as failed."""
        refs = []
        for file in self.files:
            if self._episode_pattern() is None:
                refs.append(EpisodeRef(str(file), file.stem, (str(file), "/")))
                continue
            try:
                with h5py.File(file, "r") as f:
                    groups = self._groups(_Reader(f, str(file), file.stem))
            except Exception:  # noqa: BLE001 -- h5py raises KeyError, RuntimeError, OSError...: load() says which
                refs.append(EpisodeRef(str(file), file.stem, (str(file), None)))
                continue
            for g in groups:
                index = g.rsplit("/", 1)[-1] if self.layout == "robomimic" else g.lstrip("/")
                refs.append(EpisodeRef(str(file), index, (str(file), g)))
        return refs

    def _groups(self, r: _Reader) -> list[str]:
        """Absolute paths of the episode groups in one file, in natural order; EpisodeError when there are none."""
        pattern = self._episode_pattern()
        level, broken = [r.f], []  # broken: matching links that do not open (dangling, external): they fail alone
        for part in pattern.split("/"):
            found = []
            for g in level:
                for k in (k for k in g if fnmatch.fnmatchcase(k, part)):
                    try:
                        node = g[k]
                    except (KeyError, OSError, RuntimeError):
                        broken.append(posixpath.join(g.name, k))
                        continue
                    if isinstance(node, h5py.Group):
                        found.append(node)
            level = found
        names = [g.name for g in level] + broken
        if self.layout == "robomimic":
            names = [n for n in names if re.fullmatch(r"demo_\d+", n.rsplit("/", 1)[-1])]
        if not names:
            top = r.group(r.f, "data") if self.layout == "robomimic" else r.f
            raise r.fail(f"no episode group matches {pattern!r}; {top.name!r} has {sorted(top.keys())[:20]}")
        return sorted(names, key=_natural_key)

    def load(self, ref: EpisodeRef, frame_size: tuple[int, int] | None = None, resize_mode: str = "crop") -> Episode:
        """Decode one episode; raise EpisodeError naming the file and episode for any bad input."""
        file, group = ref.key
        try:
            f = h5py.File(file, "r")
        except OSError as e:
            raise EpisodeError(f"cannot be opened as HDF5 (truncated, or not an HDF5 file): {e}", file=file,
                               episode=ref.index) from e  # fmt: skip
        with f:
            r = _Reader(f, file, ref.index, frame_size, resize_mode)
            try:
                if group is None:  # listing failed: say why
                    self._groups(r)
                    raise r.fail("the file changed since its episodes were listed; convert again")
                if self.layout == "aloha":
                    return self._load_aloha(r)
                if self.layout == "robomimic":
                    return self._load_robomimic(r, group)
                return self._load_mapping(r, group)
            except (OSError, KeyError, RuntimeError, ValueError, TypeError) as e:  # a damaged file that opened
                raise r.fail(f"read error: {type(e).__name__}: {e}") from e

    def _episode(self, r: _Reader, frames: dict[str, np.ndarray], state: tuple[np.ndarray, list[str]],
                 action: np.ndarray | None, timestamp: np.ndarray | None, task: str, **kw) -> Episode:  # fmt: skip
        """Assemble the Episode; without timestamps in the file, frame i is at i / fps."""
        ts = np.arange(len(state[0]), dtype=np.float64) / self.fps if timestamp is None else timestamp
        return Episode(frames=frames, state=state[0], action=action, timestamp=ts, task=task, source=r.file,
                       source_index=r.episode, state_names=state[1], **kw)  # fmt: skip

    def _load_aloha(self, r: _Reader) -> Episode:
        images = r.group(r.f, "observations/images")
        if not len(images):
            raise r.fail("'/observations/images' holds no camera datasets")
        obs, state_keys = r.group(r.f, "observations"), self.state_keys or ("qpos",)
        r.same_length({**{cam: r.dataset(images, cam) for cam in images}, **{k: r.dataset(obs, k) for k in state_keys},
                       "action": r.dataset(r.f, "action")})  # fmt: skip
        frames = {cam: r.frames(images, cam) for cam in sorted(images)}
        state = r.concat(obs, state_keys)
        action = r.array(r.f, "action")
        task = r.text_attr(r.f, "task") or self.task or _folder_task(r.file)
        return self._episode(r, frames, state, action, None, task, embodiment="aloha")

    def _load_robomimic(self, r: _Reader, group: str) -> Episode:
        demo = r.group(r.f, group)
        obs = r.group(demo, "obs")
        keys = sorted(obs)
        cams = {k[: -len(IMAGE_SUFFIX)]: k for k in keys if k.endswith(IMAGE_SUFFIX)}
        if not cams:
            raise r.fail(f"no image observations (obs keys ending in {IMAGE_SUFFIX!r}) in {obs.name!r}, which has "
                         f"{keys}: a low-dim robomimic file has no frames; use its image variant")  # fmt: skip
        low_dim = [k for k in keys if k not in cams.values() and isinstance(node := r.node(obs, k), h5py.Dataset)
                   and node.ndim <= 2]  # fmt: skip
        if not (self.state_keys or low_dim):
            raise r.fail(f"no low-dimensional obs keys for the state in {obs.name!r}, which has {keys}")
        r.same_length({**{k: r.dataset(obs, k) for k in (*cams.values(), *(self.state_keys or low_dim))},
                       "actions": r.dataset(demo, "actions")})  # fmt: skip
        frames = {cam: r.frames(obs, k) for cam, k in cams.items()}
        state = r.concat(obs, self.state_keys or low_dim)
        action = r.array(demo, "actions")
        task = self.task or _env_task(r.f) or _folder_task(r.file)
        split, skipped = _mask_split(r.f, r.episode)
        notes = {"mask_entries_skipped": skipped} if skipped else {}  # -1: the whole mask could not be read
        return self._episode(r, frames, state, action, None, task, embodiment="robomimic", split=split,
                             extra=notes)  # fmt: skip

    def _load_mapping(self, r: _Reader, group: str) -> Episode:
        m = self.mapping
        g = r.group(r.f, group)
        paths = [*m.cameras.values(), *m.state, *(p for p in (m.action, m.timestamp) if p)]
        r.same_length({p: r.dataset(g, p) for p in paths})
        frames = {cam: r.frames(g, p, chw=m.image_layout == "CHW") for cam, p in m.cameras.items()}
        state = r.concat(g, m.state)
        action = r.array(g, m.action) if m.action else None
        timestamp = r.timestamps(g, m.timestamp) if m.timestamp else None
        task = (r.text_attr(g, m.task_attr) if m.task_attr else None) or self.task or m.task
        if task is None and m.task_attr:
            raise r.fail(f"{g.name!r} has no attribute {m.task_attr!r} (it has {sorted(g.attrs)}); "
                         "give a default with `task:` in the mapping or --task")  # fmt: skip
        return self._episode(r, frames, state, action, timestamp, task or _folder_task(r.file),
                             embodiment=m.embodiment)  # fmt: skip
