"""Checks of a store's JSON files (manifest.json, stats.json, quality.json) as they are read: a damaged file gives a
StoreError naming the file, the entry and the field, never a TypeError or KeyError later.

They are plain loops of key and type checks, cheap beside the HDF5 lookups of EpisodeStore.validate even for a
manifest of 100k episodes.
"""

from __future__ import annotations

import json
from numbers import Real
from pathlib import Path, PurePath
from typing import Any

from robofm.errors import StoreError
from robofm.sim.tasks import EPISODE_KINDS

# the manifest's episode row (EpisodeInfo): key -> (type, what a value must be); layout is optional
ROW_TYPES: dict[str, tuple[type, str]] = {
    "id": (str, "a string"),
    "shard": (str, "a string"),
    "length": (int, "a non-negative integer"),
    "task": (str, "a string"),
    "embodiment": (str, "a string"),
    "split": (str, "a string"),
    "content_hash": (str, "a string"),
    "source": (str, "a string"),
    "source_index": (str, "a string"),
    "has_action": (bool, "true or false"),
}
OPTIONAL_ROW_KEYS = {"layout"}
STAT_LISTS = ("mean", "std", "min", "max", "q01", "q99")


def read_json(path: Path, default: Any = None) -> Any:
    """The JSON value of `path` (`default` when the file is absent and a default is given)."""
    if default is not None and not path.exists():
        return default
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise StoreError(f"{path} cannot be read: {e}") from e
    except json.JSONDecodeError as e:
        raise StoreError(f"{path} is not valid JSON: {e}") from e


JSON_NAMES = {dict: "object", list: "list", str: "string", bool: "boolean", int: "number", float: "number"}


def _kind(value: Any) -> str:
    """The JSON name of a value's type."""
    return "null" if value is None else JSON_NAMES.get(type(value), type(value).__name__)


def _is_number(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def check_manifest(path: Path, m: Any) -> None:
    """The manifest's top-level keys (format_version is checked by the caller, before anything else)."""
    if not isinstance(m, dict):
        raise StoreError(f"{path}: expected a JSON object, got {_kind(m)}")
    fps = m.get("fps")
    if not _is_number(fps) or not fps > 0:
        raise StoreError(f"{path}: fps must be a positive number, got {fps!r}")
    cameras = m.get("cameras")
    if not isinstance(cameras, dict) or not cameras:
        raise StoreError(f"{path}: cameras must be {{name: [height, width]}}, got {cameras!r}")
    for name, hw in cameras.items():
        if not (isinstance(hw, list) and len(hw) == 2 and all(type(v) is int and v > 0 for v in hw)):
            raise StoreError(f"{path}: cameras: {name!r} must be [height, width] (positive integers), got {hw!r}")
    for key, kind in (
        ("episodes", list),
        ("embodiments", dict),
        ("provenance", list),
        ("latents", dict),
        ("view_of", str),
    ):
        required = key in ("episodes", "embodiments")
        if (required or key in m) and not isinstance(m.get(key), kind):
            raise StoreError(f"{path}: {key} must be a JSON {JSON_NAMES[kind]}, got {_kind(m.get(key))}")
    latents = m.get("latents")
    if latents is not None and not (isinstance(latents.get("shape"), list) and len(latents["shape"]) == 3):
        raise StoreError(f"{path}: latents: shape must be [C, h, w], got {latents.get('shape')!r}")
    check_rows(path, m["episodes"])


def check_rows(path: Path, rows: list) -> None:
    """Every episode row has exactly EpisodeInfo's keys, with values of their types, unique ids and a shard
    name that stays inside the shards folder."""
    required, seen_ids, safe_shards = ROW_TYPES.keys(), set(), set()
    for i, row in enumerate(rows):
        where = f"{path}: episodes[{i}]"
        if not isinstance(row, dict):
            raise StoreError(f"{where}: expected a JSON object, got {_kind(row)}")
        if row.keys() != required:
            keys = row.keys()
            unknown = sorted(keys - required - OPTIONAL_ROW_KEYS)
            if unknown:
                raise StoreError(f"{where}: unknown key {unknown[0]!r}")
            missing = [k for k in required if k not in keys]
            if missing:
                raise StoreError(f"{where}: missing key {missing[0]!r}")
        for key, (kind, what) in ROW_TYPES.items():
            value = row[key]
            if not isinstance(value, kind) or (kind is int and (isinstance(value, bool) or value < 0)):
                raise StoreError(f"{where}: {key} must be {what}, got {value!r}")
        layout = row.get("layout")
        if layout is not None and not isinstance(layout, dict):
            raise StoreError(f"{where}: layout must be a JSON object or absent, got {_kind(layout)}")
        kind = (layout or {}).get("kind", 0)
        if not isinstance(kind, int) or isinstance(kind, bool) or not 0 <= kind < len(EPISODE_KINDS):
            raise StoreError(f"{where}: layout.kind must be an index of {list(EPISODE_KINDS)}, got {kind!r}")
        if row["id"] in seen_ids:
            raise StoreError(f"{where}: episode id {row['id']!r} appears twice")
        seen_ids.add(row["id"])
        if row["shard"] not in safe_shards:
            check_shard_name(f"{where} (episode {row['id']})", row["shard"])
            safe_shards.add(row["shard"])


def check_shard_name(where: str, shard: str) -> None:
    """A shard is named relative to the store's shards folder and never leaves it (no `..`, not absolute)."""
    parts = PurePath(shard).parts
    if not parts or PurePath(shard).is_absolute() or ".." in parts or "\\" in shard:
        raise StoreError(f"{where}: shard {shard!r} is not a file inside the store's shards folder")


def check_stats(path: Path, stats: Any) -> None:
    """stats.json: {embodiment: {"state" | "action": {} or {count, mean, std, min, max, q01, q99}}}."""
    if not isinstance(stats, dict):
        raise StoreError(f"{path}: expected a JSON object {{embodiment: statistics}}, got {_kind(stats)}")
    for emb, kinds in stats.items():
        if not isinstance(kinds, dict):
            raise StoreError(f"{path}: {emb}: expected a JSON object {{state, action}}, got {_kind(kinds)}")
        for kind, st in kinds.items():
            if not isinstance(st, dict):
                raise StoreError(f"{path}: {emb}.{kind}: expected a JSON object, got {_kind(st)}")
            dims = None
            for key in STAT_LISTS:
                if key not in st:
                    if st:  # {} is the statistics of no values (an embodiment without actions)
                        raise StoreError(f"{path}: {emb}.{kind}: missing key {key!r}")
                    continue
                values = st[key]
                if not isinstance(values, list) or not all(_is_number(v) for v in values):
                    raise StoreError(f"{path}: {emb}.{kind}.{key} must be a list of numbers")
                if dims is not None and len(values) != dims:
                    raise StoreError(f"{path}: {emb}.{kind}.{key} has {len(values)} values, mean has {dims}")
                dims = len(values)


def check_quality(path: Path, quality: Any) -> None:
    """quality.json: a list of verdicts, each an object with source, source_index and status."""
    if not isinstance(quality, list):
        raise StoreError(f"{path}: expected a JSON list of verdicts, got {_kind(quality)}")
    for i, entry in enumerate(quality):
        if not isinstance(entry, dict):
            raise StoreError(f"{path}: [{i}]: expected a JSON object, got {_kind(entry)}")
        for key in ("source", "source_index", "status"):
            if key not in entry:
                raise StoreError(f"{path}: [{i}]: missing key {key!r}")
        if not isinstance(entry["status"], str):
            raise StoreError(f"{path}: [{i}]: status must be a string, got {entry['status']!r}")
