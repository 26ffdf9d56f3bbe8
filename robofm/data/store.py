"""The episode store: HDF5 shards of decoded frames plus JSON metadata. See docs/design.md and the README, "The episode store".

Layout of a store folder:
  manifest.json   format version, fps, cameras, embodiments, the episode table, provenance
  stats.json      per embodiment: count, mean, std, min, max, q01, q99 of state and action per dimension
  quality.json    every source episode with its verdict: kept, dropped (with reason) or failed (with error)
  shards/shard-NNNNN.h5   /<episode_id>/{frames/<camera>, latents/<camera>?, state, action?, timestamp},
                          attrs task, embodiment, ...

Shards are immutable once closed: the writer fills `shard-NNNNN.h5.partial` and renames it when it is
full or the conversion ends; the manifest only ever lists episodes of closed shards and is replaced
atomically, so a crash leaves the previous store readable. An overwrite builds the new store beside the old one
(new shard numbers, its metadata in .overwrite/) and swaps it in when complete: see settle_overwrite.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import h5py
import numpy as np

from robofm.data.episode import Episode
from robofm.data.stats import RunningStats
from robofm.data.store_checks import check_manifest, check_quality, check_stats, read_json
from robofm.errors import StoreError, UsageError
from robofm.sim.tasks import EPISODE_KINDS, NO_KIND
from robofm.version import __version__

FORMAT_VERSION = 1
OPEN_EPISODES = 128  # per process: episodes whose datasets EpisodeStore.arrays keeps open
CHUNK_CACHE_BYTES = 256 * 1024  # per open dataset; h5py's 1 MiB default grows a loader's memory with the store
MANIFEST, STATS, QUALITY = "manifest.json", "stats.json", "quality.json"
FAILED_OVERWRITE = "quality-failed-overwrite.json"  # the verdicts of an overwrite that converted nothing
OVERWRITE = ".overwrite"  # the metadata of an overwrite under way (StoreWriter.close, settle_overwrite)


class EpisodeArrays(NamedTuple):
    """Open HDF5 datasets of one episode. latents is empty in a store converted without --latents."""

    frames: dict[str, h5py.Dataset]
    state: h5py.Dataset
    action: h5py.Dataset | None
    timestamp: h5py.Dataset
    latents: dict[str, h5py.Dataset]


@dataclass
class EpisodeInfo:
    """One row of the manifest's episode table."""

    id: str
    shard: str
    length: int
    task: str
    embodiment: str
    split: str
    content_hash: str
    source: str
    source_index: str
    has_action: bool
    layout: dict | None = None  # the simulator layout it was recorded on (Episode.layout); not written when None

    def row(self) -> dict:
        """The manifest row: without `layout` when the episode has none, as stores before it had."""
        row = asdict(self)
        if row["layout"] is None:
            del row["layout"]
        return row

    @property
    def kind(self) -> int:
        """The episode's kind, an index of robofm.sim.tasks.EPISODE_KINDS (layout["kind"]), or NO_KIND."""
        return int((self.layout or {}).get("kind", NO_KIND))

    @property
    def kind_name(self) -> str | None:
        """The name of the episode's kind (EPISODE_KINDS), None for an episode that records none."""
        return None if self.kind == NO_KIND else EPISODE_KINDS[self.kind]


def write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def task_hash(task: str) -> str:
    """A content hash of a task text, for splits that hold out whole tasks (`split_from_hash(task_hash(...))`)."""
    return hashlib.blake2b(task.strip().encode(), digest_size=16).hexdigest()


def split_from_hash(content_hash: str, val_fraction: float) -> str:
    """Deterministic split from the content hash: an episode keeps its split however the store grows."""
    return "val" if int(content_hash[:8], 16) / 2**32 < val_fraction else "train"


class StoreWriter:
    """Streams episodes into a store, one episode at a time; nothing of a dataset is held in memory.

    mode: "create" (the folder must not hold a store), "overwrite" (replace it, in close(): until then, and if
    nothing was added, the old store stays as it was) or "append" (add
    episodes to an existing store with the same fps and cameras; shards already written stay as they are).
    latents: the manifest's record of the VAE latents every episode carries, {"vae_path", "shape": [C, h, w],
    "scaling_factor"}, or None for a store of frames only; an append must match the store's.
    """

    def __init__(
        self,
        root: str | Path,
        *,
        fps: float,
        cameras: dict[str, tuple[int, int]],
        mode: str = "create",
        shard_size_mb: float = 1024,
        compression: str | None = None,
        provenance: dict | None = None,
        latents: dict | None = None,
    ) -> None:
        self.root = Path(root)
        self.latents = latents
        self.compression = None if compression in (None, "none") else compression
        self.shard_bytes = int(shard_size_mb * 2**20)
        self.episodes: list[EpisodeInfo] = []
        self.quality: list[dict] = []
        self.embodiments: dict[str, dict] = {}
        self.provenance: list[dict] = []  # earlier conversions into this store
        self._this_provenance = provenance or {}
        self.fps, self.cameras = float(fps), {c: [int(h), int(w)] for c, (h, w) in cameras.items()}
        self.stats: dict[str, dict[str, RunningStats]] = {}
        settle_overwrite(self.root)  # an overwrite that was killed: finish it if it was complete, else drop it
        self.overwriting = False  # building a new store beside the old one, swapped in by close()
        if (self.root / MANIFEST).exists():
            if mode == "create":
                raise StoreError(f"{self.root} already holds a store: pass --overwrite to replace it or --append")
            if mode == "overwrite":
                self.overwriting = True
                (self.root / OVERWRITE).mkdir()
            else:
                self._load_existing()
        (self.root / "shards").mkdir(parents=True, exist_ok=True)
        for stale in (self.root / "shards").glob("*.partial"):
            stale.unlink()  # left by a conversion that crashed; its episodes were never in the manifest
        self._shard: h5py.File | None = None
        self._shard_name = ""
        self._shard_written = 0
        numbers = [int(p.name[6:11]) for p in (self.root / "shards").glob("shard-[0-9][0-9][0-9][0-9][0-9].h5")]
        self._next_shard = max(numbers, default=-1) + 1  # after an overwrite's old shards, which stay until close
        self._next_id = len(self.episodes)
        self._hash_to_id = {e.content_hash: e.id for e in self.episodes}
        self._quality_index = {(q["source"], str(q["source_index"])): i for i, q in enumerate(self.quality)}
        self._added = 0

    def _load_existing(self) -> None:
        store = EpisodeStore(self.root)
        m = store.manifest
        if abs(m["fps"] - self.fps) > 1e-6 or m["cameras"] != self.cameras:
            raise StoreError(
                f"{self.root}: cannot append episodes at {self.fps} fps with cameras {self.cameras} to a store at "
                f"{m['fps']} fps with cameras {m['cameras']}"
            )
        if m.get("latents") != self.latents:
            raise StoreError(f"{self.root}: cannot append episodes with latents {self.latents} to a store with "
                             f"latents {m.get('latents')}")  # fmt: skip
        self.episodes, self.quality = list(store.episodes), list(store.quality)
        self.embodiments, self.provenance = dict(m["embodiments"]), list(m["provenance"])
        for info in store.episodes:  # statistics are recomputed over the low-dimensional arrays only
            ep_stats = self._stats_for(info.embodiment)
            with h5py.File(store.shard_path(info.shard), "r") as f:
                g = f[info.id]
                ep_stats["state"].update(g["state"][:])
                if "action" in g:
                    ep_stats["action"].update(g["action"][:])
        store.close()

    @property
    def hash_to_id(self) -> dict[str, str]:
        return self._hash_to_id

    def _stats_for(self, embodiment: str) -> dict[str, RunningStats]:
        return self.stats.setdefault(embodiment, {"state": RunningStats(), "action": RunningStats()})

    def _open_shard(self) -> h5py.File:
        if self._shard is None:
            self._shard_name = f"shard-{self._next_shard:05d}.h5"
            self._next_shard += 1
            self._shard = h5py.File(self.root / "shards" / (self._shard_name + ".partial"), "w")
            self._shard.attrs["format_version"] = FORMAT_VERSION
            self._shard_written = 0
        return self._shard

    def _close_shard(self) -> None:
        if self._shard is None:
            return
        self._shard.close()
        self._shard = None
        partial = self.root / "shards" / (self._shard_name + ".partial")
        os.replace(partial, partial.with_suffix(""))
        if not self.overwriting:  # an overwrite's manifest appears only when it is complete
            self._write_metadata(self.root)

    def add(self, ep: Episode, content_hash: str, split: str) -> EpisodeInfo:
        """Write one validated episode; on any error nothing of it stays in the shard."""
        self._check_latents(ep)
        self._register_embodiment(ep)  # raises before anything is written if the dims disagree
        f = self._open_shard()
        ep_id = f"ep-{self._next_id:06d}"
        try:
            g = f.create_group(ep_id)
            # frames and latents: one frame per chunk when compressed (windows read single frames), else contiguous,
            # which writes 2-3x faster than a chunk per frame and reads a frame with one pread (dataset.RowReader)
            chunked = (lambda a: (1, *a.shape[1:])) if self.compression else (lambda a: None)
            for cam, fr in ep.frames.items():
                g.create_dataset(f"frames/{cam}", data=fr, chunks=chunked(fr), compression=self.compression)
            for cam, lat in (ep.latents or {}).items():
                lat = lat.astype(np.float16)
                g.create_dataset(f"latents/{cam}", data=lat, chunks=chunked(lat), compression=self.compression)
            g.create_dataset("state", data=ep.state.astype(np.float32))
            if ep.action is not None:
                g.create_dataset("action", data=ep.action.astype(np.float32))
            g.create_dataset("timestamp", data=ep.timestamp.astype(np.float64))
            attrs = dict(task=ep.task, embodiment=ep.embodiment, fps=self.fps, source=ep.source,
                         source_index=str(ep.source_index), content_hash=content_hash)  # fmt: skip
            g.attrs.update(attrs)
            st = self._stats_for(ep.embodiment)  # last: an episode whose statistics fail is not in the store
            st["state"].update(ep.state)
            if ep.action is not None:
                st["action"].update(ep.action)
        except BaseException:
            if ep_id in f:
                del f[ep_id]
            raise
        self._next_id += 1
        info = EpisodeInfo(ep_id, self._shard_name, ep.length, ep.task, ep.embodiment, split, content_hash,
                           ep.source, str(ep.source_index), ep.action is not None, ep.layout)  # fmt: skip
        self.episodes.append(info)
        self._hash_to_id[content_hash] = ep_id
        self._added += 1
        self._shard_written += sum(fr.nbytes for fr in ep.frames.values())
        if self._shard_written >= self.shard_bytes:
            self._close_shard()
        return info

    def _check_latents(self, ep: Episode) -> None:
        if self.latents is None:
            if ep.latents is not None:
                raise ep.fail(f"episode has latents but the store {self.root} keeps none")
            return
        want = tuple(self.latents["shape"])
        for cam in ep.frames:
            lat = (ep.latents or {}).get(cam)
            if lat is None or lat.shape[1:] != want:
                got = "none" if lat is None else f"shape {tuple(lat.shape[1:])}"
                raise ep.fail(f"camera {cam!r}: the store keeps latents of {want} per frame; the episode has {got}")

    def _register_embodiment(self, ep: Episode) -> None:
        dims = {
            "state_dim": int(ep.state.shape[1]),
            "action_dim": int(ep.action.shape[1]) if ep.action is not None else None,
            "state_names": ep.state_names,
            "action_names": ep.action_names,
        }
        known = self.embodiments.get(ep.embodiment)
        if known is None:
            self.embodiments[ep.embodiment] = dims
        elif known["state_dim"] != dims["state_dim"] or (
            dims["action_dim"] is not None and known["action_dim"] not in (None, dims["action_dim"])
        ):
            raise ep.fail(
                f"embodiment {ep.embodiment!r} has state/action dims {known['state_dim']}/{known['action_dim']} "
                f"in this store but this episode has {dims['state_dim']}/{dims['action_dim']}; "
                "pass a different --embodiment for it"
            )
        elif known["action_dim"] is None:
            known.update(action_dim=dims["action_dim"], action_names=dims["action_names"])

    def record(self, entry: dict) -> None:
        """Add one verdict to quality.json: {source, source_index, status, reason?, message?, episode_id?}.

        A later verdict on the same source episode replaces the earlier one, so converting twice changes nothing.
        """
        key = (entry["source"], str(entry["source_index"]))
        if key in self._quality_index:
            self.quality[self._quality_index[key]] = entry
        else:
            self._quality_index[key] = len(self.quality)
            self.quality.append(entry)

    def _write_metadata(self, folder: Path) -> None:
        manifest = {
            "format_version": FORMAT_VERSION,
            "robofm_version": __version__,
            "fps": self.fps,
            "cameras": self.cameras,
            "embodiments": self.embodiments,
            **({"latents": self.latents} if self.latents else {}),
            "episodes": [e.row() for e in self.episodes],
            # an append that added nothing leaves the provenance (and so the whole store) unchanged
            "provenance": self.provenance + ([self._this_provenance] if self._added else []),
        }
        stats = {emb: {k: v.result() for k, v in st.items()} for emb, st in self.stats.items()}
        write_json_atomic(folder / STATS, stats)
        write_json_atomic(folder / QUALITY, self.quality)
        write_json_atomic(folder / MANIFEST, manifest)  # last: it is what makes the store valid

    def close(self) -> None:
        """Write the metadata; an overwrite swaps its new store in for the old one here, and only here."""
        if self._shard is not None:
            self._close_shard()  # writes the metadata, but an overwrite's
        elif not self.overwriting:
            self._write_metadata(self.root)
        if not self.overwriting:
            return
        if self._added:
            self._write_metadata(self.root / OVERWRITE)
        else:  # every episode failed: the old store stays as it was, and FAILED_OVERWRITE beside it tells why
            write_json_atomic(self.root / FAILED_OVERWRITE, self.quality)
        settle_overwrite(self.root)
        self.overwriting = False


def settle_overwrite(root: Path) -> None:
    """Finish or drop an overwrite of the store at `root` (see StoreWriter.close). The new store is built beside the
    old one: its shards in root/shards under new numbers (the old manifest never names them), its metadata in
    root/.overwrite/, where manifest.json comes last. Here, a complete one (with manifest.json) replaces stats.json,
    quality.json and, last, manifest.json of the old store; then every shard the store's manifest does not name
    (the old store's, or the new one's that was never completed) and the .overwrite folder are removed. A kill at
    any moment leaves the old store or the new one readable, and the next writer of the store calls this again."""
    staging = root / OVERWRITE
    if not staging.is_dir():
        return
    if (staging / MANIFEST).is_file():
        for name in (STATS, QUALITY, MANIFEST):
            if (staging / name).is_file():
                os.replace(staging / name, root / name)
    manifest = read_json(root / MANIFEST) if (root / MANIFEST).is_file() else None
    if isinstance(manifest, dict) and "view_of" not in manifest and isinstance(manifest.get("episodes"), list):
        named = {row.get("shard") for row in manifest["episodes"] if isinstance(row, dict)}
        for shard in (root / "shards").glob("shard-*.h5*"):
            if shard.name not in named:
                shard.unlink()
    shutil.rmtree(staging)


def write_view(base: EpisodeStore, out: Path, keep: set[str], verdicts: list[dict], provenance: dict,
               drop_actions: bool = False) -> Path:
    """A view of `base` at `out` that holds only the episodes `keep`: its own manifest.json (naming the base in
    "view_of"; the shards stay where they are and are never copied or deleted), stats.json over the kept
    episodes, and `verdicts` as its quality.json. Anything that opens a store opens a view. With `drop_actions`
    every kept episode reads as action-free video (has_action false: NO_ACTION tokens, no action loss)."""
    out.mkdir(parents=True, exist_ok=True)
    rows = [{**e.row(), **({"has_action": False} if drop_actions else {})} for e in base.episodes if e.id in keep]
    manifest = {**base.manifest, "episodes": rows, "view_of": str(Path(base.manifest.get("view_of", base.root)).resolve()),
                "provenance": [*base.manifest.get("provenance", []), provenance]}  # fmt: skip
    stats: dict[str, dict[str, RunningStats]] = {}
    for e in base.episodes:
        if e.id in keep:
            arrays = base.arrays(e.id)
            st = stats.setdefault(e.embodiment, {"state": RunningStats(), "action": RunningStats()})
            st["state"].update(arrays.state[:])
            if arrays.action is not None and not drop_actions:
                st["action"].update(arrays.action[:])
    write_json_atomic(out / STATS, {emb: {k: v.result() for k, v in st.items()} for emb, st in stats.items()})
    write_json_atomic(out / QUALITY, verdicts)
    write_json_atomic(out / MANIFEST, manifest)
    return out


def subset(store: str | Path, out: str | Path, *, task: str | None = None, skip: int = 0, first: int | None = None,
           drop_actions: bool = False) -> tuple[Path, int, int]:
    """A view (write_view) of the episodes of `store`, in its order, of `task` (an instruction; None: every task),
    past the first `skip`, at most `first` of them: a few-shot training set, or with `drop_actions` the same
    episodes as action-free video. Every episode left out is a verdict of the view's quality.json with its reason.
    Returns (view, kept, left out). UsageError for a negative count, or a task or range that keeps nothing."""
    if skip < 0 or (first is not None and first < 1):
        raise UsageError(f"skip={skip}, first={first}: skip must be >= 0 and first >= 1")
    base = EpisodeStore(store)
    of_task = [e for e in base.episodes if task is None or e.task == task]
    keep = of_task[skip : None if first is None else skip + first]
    if not keep:
        tasks = sorted({e.task for e in base.episodes})
        raise UsageError(f"{store}: nothing to keep: {len(of_task)} episode(s) of task {task!r} (the store's tasks: "
                         f"{tasks[:10]}), skip={skip}, first={first}")  # fmt: skip
    if first is not None and len(keep) < first:
        raise UsageError(f"{store}: {first} episode(s) asked for after skipping {skip}, but {len(of_task)} of task "
                         f"{task!r} are there")  # fmt: skip
    kept = {e.id for e in keep}
    verdicts = [{"source": str(base.root), "source_index": e.id, "episode_id": e.id, "status": "dropped",
                 "reason": "outside_subset" if e.task == task or task is None else "other_task"}
                for e in base.episodes if e.id not in kept]  # fmt: skip
    provenance = {"converter": "robofm-data subset", "task": task, "skip": skip, "first": first,
                  "drop_actions": drop_actions, "robofm_version": __version__}  # fmt: skip
    view = write_view(base, Path(out), kept, verdicts, provenance, drop_actions=drop_actions)
    base.close()
    return view, len(kept), len(verdicts)


class EpisodeStore:
    """Reads a store. Validates the manifest against the shards on open.

    HDF5 handles are opened lazily and per process, so a store object can be passed to DataLoader
    workers (fork or spawn) and each worker opens its own files.
    """

    def __init__(self, root: str | Path, *, validate: bool = True) -> None:
        self.root = Path(root)
        path = self.root / MANIFEST
        if not path.exists():
            hint = " (it looks like a LeRobot dataset: convert it with `robofm-convert lerobot`)" if (
                self.root / "meta" / "info.json").exists() else ""  # fmt: skip
            raise StoreError(f"{self.root} is not a robofm episode store: {MANIFEST} is missing{hint}")
        self.manifest = read_json(path)
        if not isinstance(self.manifest, dict):
            raise StoreError(f"{path}: expected a JSON object, got {type(self.manifest).__name__}")
        version = self.manifest.get("format_version")
        if not isinstance(version, int):
            raise StoreError(f"{path} has no format_version")
        if version > FORMAT_VERSION:
            raise StoreError(
                f"{self.root} was written by robofm {self.manifest.get('robofm_version', '?')} in store format "
                f"{version}; this robofm ({__version__}) reads format {FORMAT_VERSION} and older: upgrade robofm"
            )
        check_manifest(path, self.manifest)
        self.episodes = [EpisodeInfo(**e) for e in self.manifest["episodes"]]
        self.by_id = {e.id: e for e in self.episodes}
        self.stats = read_json(self.root / STATS, {})
        check_stats(self.root / STATS, self.stats)
        self.quality = read_json(self.root / QUALITY, [])
        check_quality(self.root / QUALITY, self.quality)
        self._files: dict[str, h5py.File] = {}
        self._arrays: OrderedDict[str, EpisodeArrays] = OrderedDict()
        self._pid = os.getpid()
        if validate:
            self.validate()

    @property
    def fps(self) -> float:
        return self.manifest["fps"]

    @property
    def cameras(self) -> list[str]:
        return list(self.manifest["cameras"])

    @property
    def latents(self) -> dict | None:
        """{"vae_path", "shape": [C, h, w], "scaling_factor"} of the latents every episode carries, or None."""
        return self.manifest.get("latents")

    def shard_path(self, shard: str) -> Path:
        """Where a shard is: under this store, or under the store a view (`write_view`) filters."""
        base = Path(self.manifest["view_of"]) if "view_of" in self.manifest else self.root
        return base / "shards" / shard

    def validate(self) -> None:
        """Every shard the manifest names exists and holds its episodes, each dataset (frames and latents of every
        camera, state, action when it has one, timestamp) at the recorded length. Reads shapes only, no data."""
        by_shard: dict[str, list[EpisodeInfo]] = {}
        for e in self.episodes:
            by_shard.setdefault(e.shard, []).append(e)
        missing = sorted(s for s in by_shard if not self.shard_path(s).exists())
        if missing:
            n = sum(len(by_shard[s]) for s in missing)
            raise StoreError(f"{self.root}: {len(missing)} shard(s) listed in the manifest are missing "
                             f"({', '.join(missing[:5])}{'...' if len(missing) > 5 else ''}), holding {n} episodes")  # fmt: skip
        names = ["timestamp", "state", *(f"frames/{c}" for c in self.cameras)]
        names += [f"latents/{c}" for c in self.cameras] if self.latents else []
        for shard, eps in by_shard.items():
            path = self.shard_path(shard)
            try:
                with h5py.File(path, "r") as f:
                    for e in eps:
                        _check_episode(path, f, e, names + ["action"] if e.has_action else names)
            except (OSError, KeyError) as err:
                raise StoreError(f"{path} cannot be read as HDF5: {err}") from err

    def _file(self, shard: str) -> h5py.File:
        if os.getpid() != self._pid:  # forked into a worker: never share the parent's HDF5 handles
            self._files, self._arrays, self._pid = {}, OrderedDict(), os.getpid()
        f = self._files.get(shard)
        if f is None:
            f = self._files[shard] = h5py.File(self.shard_path(shard), "r", rdcc_nbytes=CHUNK_CACHE_BYTES)
        return f

    def group(self, episode_id: str) -> h5py.Group:
        info = self.info(episode_id)
        return self._file(info.shard)[episode_id]

    def arrays(self, episode_id: str) -> EpisodeArrays:
        """The episode's HDF5 datasets, opened once per process and kept for the most recent episodes:
        looking them up costs more than reading a frame."""
        if os.getpid() != self._pid:
            self._files, self._arrays, self._pid = {}, OrderedDict(), os.getpid()
        arrays = self._arrays.get(episode_id)
        if arrays is None:
            g = self.group(episode_id)
            latents = {c: g["latents"][c] for c in g["latents"]} if "latents" in g else {}
            action = g["action"] if "action" in g and self.info(episode_id).has_action else None
            arrays = EpisodeArrays({c: g["frames"][c] for c in g["frames"]}, g["state"], action, g["timestamp"], latents)
            self._arrays[episode_id] = arrays
            if len(self._arrays) > OPEN_EPISODES:
                self._arrays.popitem(last=False)
        else:
            self._arrays.move_to_end(episode_id)
        return arrays

    def info(self, episode_id: str) -> EpisodeInfo:
        """The episode's manifest row; UsageError naming the ids there are (the first 20) for an unknown one."""
        try:
            return self.by_id[episode_id]
        except KeyError:
            ids = [e.id for e in self.episodes]
            shown = ", ".join(ids[:20]) + (f" ... ({len(ids)} in all)" if len(ids) > 20 else "")
            raise UsageError(f"{self.root} has no episode {episode_id!r}; it has {shown or 'none'}") from None

    def read_episode(self, episode_id: str) -> Episode:
        g, info = self.group(episode_id), self.info(episode_id)
        return Episode(
            frames={cam: g["frames"][cam][:] for cam in g["frames"]},
            state=g["state"][:],
            action=g["action"][:] if "action" in g and info.has_action else None,  # a view may drop it
            timestamp=g["timestamp"][:],
            task=info.task,
            source=info.source,
            source_index=info.source_index,
            embodiment=info.embodiment,
            split=info.split,
            latents={cam: g["latents"][cam][:] for cam in g["latents"]} if "latents" in g else None,
        )

    def close(self) -> None:
        self._arrays.clear()
        for f in self._files.values():
            f.close()
        self._files = {}

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_files": {}, "_arrays": OrderedDict()}

    def summary(self) -> dict:
        """Counts a person wants before spending compute on a store."""
        frames = sum(e.length for e in self.episodes)
        status: dict[str, int] = {}
        for q in self.quality:
            status[q["status"]] = status.get(q["status"], 0) + 1
        return {
            "episodes": len(self.episodes),
            "frames": frames,
            "hours": frames / self.fps / 3600,
            "fps": self.fps,
            "cameras": self.manifest["cameras"],
            "tasks": len({e.task for e in self.episodes}),
            "embodiments": self.manifest["embodiments"],
            "splits": {s: sum(e.split == s for e in self.episodes) for s in sorted({e.split for e in self.episodes})},
            "quality": status,
        }


def _check_episode(path: Path, f: h5py.File, e: EpisodeInfo, names: list[str]) -> None:
    """The episode is in the shard and each of its datasets `names` has the manifest's length. Shapes only, through
    h5py's low-level API: it runs for every episode on every open, and h5py's objects cost twice as much."""
    try:
        group = h5py.h5g.open(f.id, e.id.encode())
    except (KeyError, ValueError):
        raise StoreError(f"{path}: episode {e.id} is in the manifest but not in the shard") from None
    for name in names:
        try:
            shape = h5py.h5d.open(group, name.encode()).shape
        except (KeyError, ValueError):
            raise StoreError(f"{path}: episode {e.id} has no dataset {name!r}") from None
        if not shape or shape[0] != e.length:
            what = "frames" if name == "timestamp" else f"rows in {name}"
            raise StoreError(f"{path}: episode {e.id} has {shape[0] if shape else 0} {what}, manifest says {e.length}")
