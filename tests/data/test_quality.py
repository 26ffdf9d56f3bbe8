"""The converter's quality filters: planted duplicates (exact, noisy, shifted) and broken episodes are dropped with
the right reason and measured value, clean episodes never are, splits stay put as a store grows, and
--dedup-against keeps another store's episodes out."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
from rich.console import Console

from robofm.data.convert import ConvertOptions, convert, main
from robofm.data.episode import Episode
from robofm.data.quality import QualityConfig, fingerprint, measure, thumbnails
from robofm.data.sources.base import EpisodeRef
from robofm.data.store import EpisodeStore
from robofm.errors import UsageError

SIZE = 24
BACKGROUND = np.random.default_rng(123).integers(40, 200, (SIZE, SIZE, 3), dtype=np.uint8)


def scene_episode(seed: int, length: int = 30, task: str = "push the block", with_action: bool = True) -> Episode:
    """One scene for every seed (a fixed textured background) with a bright block moving along a seed-dependent
    smooth path: the hard case, episodes of one task that look alike and differ in where things go."""
    rng = np.random.default_rng(seed)
    t = np.arange(length)
    start, goal = rng.uniform(2, SIZE - 6, 2), rng.uniform(2, SIZE - 6, 2)
    ease = (1 - np.cos(np.pi * t / (length - 1))) / 2
    pos = start + (goal - start) * ease[:, None]  # (T, 2)
    frames = np.repeat(BACKGROUND[None], length, axis=0)
    for i, (y, x) in enumerate(pos.round().astype(int)):
        frames[i, y : y + 4, x : x + 4] = (250, 240, 30)
    wrist = np.roll(frames, shift=seed % 7, axis=2)  # a second camera that is not a copy of the first
    state = np.concatenate([pos, rng.uniform(-1, 1, (1, 2)).repeat(length, 0)], axis=1).astype(np.float32)
    action = np.gradient(pos, axis=0).astype(np.float32)
    return Episode(frames={"front": frames, "wrist": wrist}, state=state, action=action if with_action else None,
                   timestamp=t / 10.0, task=task, source=f"scene-{seed}", source_index=str(seed))  # fmt: skip


def noisy(ep: Episode, seed: int = 0) -> Episode:
    """Small sensor noise: +-3 grey levels per pixel, 0.5% of each dimension's std on state and actions."""
    rng = np.random.default_rng(seed)
    out = copy.deepcopy(ep)
    out.frames = {c: np.clip(f.astype(np.int16) + rng.integers(-3, 4, f.shape), 0, 255).astype(np.uint8)
                  for c, f in ep.frames.items()}  # fmt: skip
    for name in ("state", "action"):
        arr = getattr(ep, name)
        if arr is not None:
            setattr(out, name, (arr + rng.normal(0, 0.005 * (arr.std(0) + 1e-3), arr.shape)).astype(np.float32))
    return out


def shifted(ep: Episode, frames: int) -> Episode:
    """The same recording starting `frames` frames later."""
    out = copy.deepcopy(ep)
    out.frames = {c: f[frames:] for c, f in ep.frames.items()}
    out.state, out.action, out.timestamp = ep.state[frames:], ep.action[frames:], ep.timestamp[frames:] - 0.0
    return out


class ListSource:
    fps = 10.0

    def __init__(self, episodes: list[Episode]) -> None:
        self.items = episodes

    def __str__(self) -> str:
        return "planted"

    def episodes(self) -> list[EpisodeRef]:
        return [EpisodeRef("planted.h5", str(i), (i,)) for i in range(len(self.items))]

    def load(self, ref, frame_size=None, resize_mode="crop") -> Episode:
        ep = copy.deepcopy(self.items[ref.key[0]])
        ep.source, ep.source_index = ref.source, ref.index
        return ep


def run(out, episodes, **kw) -> tuple[list[dict], EpisodeStore | None]:
    opts = ConvertOptions(out=out, resolution=None, **kw)
    convert(ListSource(episodes), opts, Console(quiet=True))
    quality = json.loads((out / "quality.json").read_text())
    return quality, EpisodeStore(out) if (out / "manifest.json").exists() else None


def verdicts(quality: list[dict]) -> list[str]:
    return [q["reason"] if q["status"] == "dropped" else q["status"] for q in quality]


def test_planted_exact_noisy_and_shifted_duplicates_are_found(tmp_path):
    clean = [scene_episode(s) for s in range(8)]
    planted = [clean[0], noisy(clean[1]), shifted(clean[2], 3), shifted(noisy(clean[3], 1), 2)]
    quality, store = run(tmp_path / "store", clean + planted)
    assert verdicts(quality) == ["kept"] * 8 + ["duplicate"] + ["near_duplicate"] * 3
    assert [q["duplicate_of"] for q in quality[8:]] == ["ep-000000", "ep-000001", "ep-000002", "ep-000003"]
    shift = quality[10]["value"]
    assert shift["shift"] == 3 and shift["signal"] <= shift["signal_tol"] and shift["frames"] <= shift["frame_tol"]
    assert len(store.episodes) == 8


def test_broken_episodes_are_dropped_with_the_reason_and_measured_value(tmp_path):
    base = [scene_episode(s) for s in range(7)]
    idle = copy.deepcopy(base[0])
    idle.state[:], idle.action[:] = idle.state[0], 0.0
    idle.frames = {c: np.repeat(f[:1], len(f), 0) for c, f in idle.frames.items()}
    frozen = copy.deepcopy(base[1])
    frozen.frames["wrist"][5:20] = frozen.frames["wrist"][5]  # the camera stalls while the block moves on
    black = copy.deepcopy(base[2])
    black.frames["front"][:] = 0
    nan = copy.deepcopy(base[3])
    nan.state[4, 1] = np.nan
    gap = copy.deepcopy(base[4])
    gap.timestamp[15:] += 1.0  # a second lost between frames 14 and 15
    short = shifted(base[5], 24)  # 6 frames
    quality, store = run(tmp_path / "store", [idle, frozen, black, nan, gap, short, base[6]])
    assert verdicts(quality) == ["idle", "frozen", "blank", "non_finite", "timestamp_gap", "too_short", "kept"]
    stall = quality[1]["value"]["frozen_run/wrist"]  # 15 stalled frames, and those of the slow start before them
    assert stall >= 15 and f"'wrist' repeats one frame {stall} times" in quality[1]["message"]
    assert quality[2]["value"]["blank_fraction/front"] == 1.0
    assert quality[3]["value"] == {"field": "state", "count": 1, "first": [4, 1]}
    assert quality[4]["value"]["at_frame"] == 15 and quality[4]["value"]["gap_s"] == pytest.approx(1.1)
    assert quality[5]["value"]["length"] == 6
    assert [e.source_index for e in store.episodes] == ["6"]


def test_varied_clean_episodes_are_never_dropped(tmp_path):
    """Look-alike episodes of one task, other tasks, lengths from 9 to 60 frames, a still robot under a moving
    scene, an action-free episode, and a robot that holds still for a while in a noise-free render."""
    episodes = [scene_episode(s, length=9 + (s * 7) % 52) for s in range(30)]
    episodes += [scene_episode(100 + s, task="open the drawer") for s in range(5)]
    still_robot = scene_episode(200)
    still_robot.state[:] = still_robot.state[0]
    still_robot.action[:] = 0.0
    paused = scene_episode(201)
    for name in ("state", "action"):
        getattr(paused, name)[10:22] = getattr(paused, name)[10]
    for f in paused.frames.values():
        f[10:22] = f[10]  # identical frames, but nothing moved: not a frozen camera
    episodes += [still_robot, paused, scene_episode(202, with_action=False)]
    quality, store = run(tmp_path / "store", episodes)
    assert verdicts(quality) == ["kept"] * len(episodes), [q.get("message") or q.get("value") for q in quality]
    assert len(store.episodes) == len(episodes)


def test_splits_are_stable_as_the_store_grows_and_can_hold_out_whole_tasks(tmp_path):
    tasks = ["reach", "push", "pick", "open", "close", "press"]
    first = [scene_episode(s, task=tasks[s % 6]) for s in range(24)]
    more = [scene_episode(s, task=tasks[s % 6]) for s in range(24, 48)]
    _, small = run(tmp_path / "a", first, val_fraction=0.3)
    before = {e.content_hash: e.split for e in small.episodes}
    _, grown = run(tmp_path / "a", first + more, val_fraction=0.3, mode="append")
    after = {e.content_hash: e.split for e in grown.episodes}
    assert len(after) == 48 and all(after[h] == s for h, s in before.items())
    assert set(after.values()) == {"train", "val"}

    _, by_task = run(tmp_path / "b", first + more, val_fraction=0.3, split_by="task")
    splits_of = {t: {e.split for e in by_task.episodes if e.task == t} for t in tasks}
    assert all(len(s) == 1 for s in splits_of.values()), splits_of
    assert {s for v in splits_of.values() for s in v} == {"train", "val"}


def test_dedup_against_another_store_drops_its_episodes_and_names_them(tmp_path):
    eps = [scene_episode(s) for s in range(8)]
    run(tmp_path / "old", eps[:5])
    quality, store = run(tmp_path / "new", [eps[3], noisy(eps[4]), *eps[5:]], dedup_against=[tmp_path / "old"])
    assert verdicts(quality) == ["duplicate", "near_duplicate", "kept", "kept", "kept"]
    assert quality[0]["duplicate_of"] == f"{tmp_path / 'old'}:ep-000003"
    assert quality[1]["duplicate_of"] == f"{tmp_path / 'old'}:ep-000004"
    assert len(store.episodes) == 3


def test_filters_can_be_kept_and_thresholds_set_from_the_command_line(tmp_path, capsys):
    cfg = QualityConfig.from_settings(["min_length=20", "frame_tol=4.5", "near_duplicates=false"], ("blank",))
    assert (cfg.min_length, cfg.frame_tol, cfg.near_duplicates, cfg.keep) == (20, 4.5, False, ("blank",))
    with pytest.raises(UsageError, match="expected KEY=VALUE with KEY one of min_length"):
        QualityConfig.from_settings(["min_len=3"])
    with pytest.raises(UsageError, match="unknown reason"):
        QualityConfig(keep=("dupes",))
    missing = tmp_path / "nostore"
    assert main(["video", str(tmp_path), "--out", str(tmp_path / "o"), "--dedup-against", str(missing)]) == 2


@pytest.mark.parametrize("shape", [(6, 96, 96), (4, 100, 120), (3, 7, 9), (2, 480, 640)])
def test_thumbnails_are_block_means_of_grey_and_shared_ones_measure_the_same(shape):
    """One pass gives both thumbnails; they are the mean grey level of each block of the frame cropped to a
    multiple of the size, and measure/fingerprint read the same values from them as they compute themselves."""
    frames = np.random.default_rng(0).integers(0, 256, (*shape, 3), dtype=np.uint8)
    thumbs = thumbnails(frames)
    for size, got in ((16, thumbs.grey16), (8, thumbs.grey8)):
        bh, bw = max(1, shape[1] // size), max(1, shape[2] // size)
        sh, sw = min(size, shape[1]), min(size, shape[2])
        grey = frames[:, : bh * sh, : bw * sw].astype(np.float64).mean(-1)
        want = grey.reshape(shape[0], sh, bh, sw, bw).mean(axis=(2, 4))
        np.testing.assert_allclose(got, want, atol=1e-4)
    ep = scene_episode(3)
    shared = {c: thumbnails(fr) for c, fr in ep.frames.items()}
    assert measure(ep, QualityConfig(), shared) == measure(ep, QualityConfig())
    a, b = fingerprint(ep, thumbs=shared), fingerprint(ep)
    assert (a.thumbs == b.thumbs).all() and all((x == y).all() for x, y in zip(a.signatures, b.signatures, strict=True))
