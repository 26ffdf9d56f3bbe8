"""The dataset card and the episode inspector: the card's numbers are the store's, every plot it links is a real
PNG, quality verdicts appear with their reasons, and the inspector draws a row per camera and names unknown ids."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from robofm.data.card import QUALITY_EXAMPLES, histograms, inspect_episode, write_card
from robofm.data.dataset import EpisodeWindowDataset
from robofm.data.store import QUALITY, EpisodeStore, write_json_atomic
from robofm.errors import UsageError
from robofm.tokenization.build import TokenizerConfig, build_sequence_builder
from robofm.tokenization.sequence import SequenceConfig
from tests.conftest import write_store
from tests.models.conftest import make_store, textured_episode

WINDOW, STRIDE, PATCH = 2, 2, 4  # 8x8 frames in 4x4 patches, windows of 5 frames
TASKS = ["pick", "pick", "pick", "place | stack", "place | stack", "open drawer"]  # a pipe must not break a table
IDLE_DROPS = 23  # more rejected verdicts than the card lists


def arm_episode(i: int, task: str):
    ep = textured_episode(10 + 2 * i, seed=i, task=task)
    ep.state_names, ep.action_names = ["x", "y", "z"], ["dx", "gripper"]
    return ep


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """Six arm episodes of 10..20 frames over three tasks, two action-free "camera" episodes, both splits, and
    quality.json with kept, idle, duplicate and failed verdicts."""
    eps = [arm_episode(i, task) for i, task in enumerate(TASKS)]
    eps += [textured_episode(12, seed=10 + i, task="watch", embodiment="camera", with_action=False, state_dim=2)
            for i in range(2)]  # fmt: skip
    root = write_store(tmp_path_factory.mktemp("card") / "store", eps, val_fraction=0.4)
    kept = [{"source": e.source, "source_index": e.source_index, "status": "kept", "episode_id": e.id}
            for e in EpisodeStore(root).episodes]  # fmt: skip
    motion = {"action_std": 0.0, "state_std": 0.0, "frame_change": 0.1}
    idle = [{"source": "idle.h5", "source_index": str(i), "status": "dropped", "reason": "idle", "value": motion}
            for i in range(IDLE_DROPS)]  # fmt: skip
    duplicate = {"source": "dup.h5", "source_index": "0", "status": "dropped", "reason": "duplicate",
                 "duplicate_of": "ep-000001"}  # fmt: skip
    message = "file bad.h5, episode 7: camera 'front' has 3 frames but the episode has 4 timestamps"
    failed = {"source": "bad.h5", "source_index": "7", "status": "failed", "reason": "error", "message": message}
    write_json_atomic(root / QUALITY, kept + idle + [duplicate, failed])
    return root


@pytest.fixture(scope="module")
def card(store, tmp_path_factory) -> Path:
    return write_card(store, tmp_path_factory.mktemp("out"), window_len=WINDOW, stride=STRIDE, patch_size=PATCH)


def section(markdown: str, heading: str) -> str:
    """The text under `## heading...` up to the next `## ` heading."""
    match = re.search(rf"^## {re.escape(heading)}.*?\n(.*?)(?=^## |\Z)", markdown, re.S | re.M)
    assert match, f"no section {heading!r} in the card"
    return match.group(1)


def table(text: str) -> list[list[str]]:
    """The rows (cells, unescaped) of the first Markdown table in `text`, without its header."""
    lines = text.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("|"))
    end = next((i for i in range(first, len(lines)) if not lines[i].startswith("|")), len(lines))
    rows = lines[first + 2 : end]
    return [[c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", row)[1:-1]] for row in rows]


def test_card_counts_match_the_store(store, card):
    md, st = card.read_text(), EpisodeStore(store)
    overview = dict(row[:2] for row in table(section(md, "Overview")))
    assert overview["episodes"] == str(len(st.episodes)) == "8"
    assert overview["frames"] == str(sum(e.length for e in st.episodes))
    assert overview["fps"] == "10"
    assert overview["cameras (height x width)"] == "front (8x8), wrist (8x8)"
    splits = {row[0]: int(row[1]) for row in table(section(md, "Splits"))}
    assert splits == {s: sum(e.split == s for e in st.episodes) for s in ("train", "val")}
    assert splits["train"] and splits["val"]
    tasks = [(row[0], int(row[1])) for row in table(section(md, "Tasks"))]
    assert tasks == [("pick", 3), ("place | stack", 2), ("watch", 2), ("open drawer", 1)]  # most common first
    embodiments = {row[0]: row[2:] for row in table(section(md, "Embodiments"))}
    assert embodiments == {"arm": ["3", "2", "x, y, z", "dx, gripper"],
                           "camera": ["2", "none", "state[0], state[1]", "-"]}  # fmt: skip
    lengths = {row[0]: int(row[1]) for row in table(section(md, "Episode lengths"))}
    assert lengths == {"min": 10, "median": 13, "max": 20}


def test_card_tokens_are_windows_times_tokens_per_sample(store, card):
    span = WINDOW * STRIDE + 1
    train = [e for e in EpisodeStore(store).episodes if e.split == "train"]
    windows = sum(e.length - span + 1 for e in train if e.length >= span)
    ds = EpisodeWindowDataset(store, WINDOW, STRIDE, split="train")
    builder = build_sequence_builder(ds, SequenceConfig(window_len=WINDOW, stride=STRIDE),
                                     TokenizerConfig(patch_size=PATCH))  # fmt: skip
    text = section(card.read_text(), "Tokens per epoch")
    rows = dict(table(text))
    assert int(rows["windows"].replace(",", "")) == windows
    per_sample = len(builder.layout(tuple(range(1, WINDOW + 1))))  # the default: a NOISY block for every frame
    assert int(rows["tokens per sample"].replace(",", "")) == per_sample
    assert rows["tokens per epoch"].split()[0].replace(",", "") == str(windows * per_sample)
    assert f"windows of {WINDOW} steps at stride {STRIDE}" in text and f"{PATCH}x{PATCH} pixel patches" in text


def test_card_says_why_tokens_cannot_be_counted(store, tmp_path):
    md = write_card(store, tmp_path, window_len=WINDOW, stride=STRIDE, patch_size=3).read_text()
    assert "Not counted: frames of 8x8 do not divide into 3x3 patches" in section(md, "Tokens per epoch")


def test_every_linked_png_exists_and_loads(card):
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", card.read_text())
    # lengths; arm state and action; camera state (it has no actions)
    assert len(links) == 4 and sorted(links) == sorted(set(links))
    for link in links:
        assert not Path(link).is_absolute()
        with Image.open(card.parent / link) as image:
            image.load()
            assert 300 <= image.width <= 3000 and 200 <= image.height <= 3000, (link, image.size)
    assert "No action data." in card.read_text()


def test_histograms_count_every_frame(store):
    st = EpisodeStore(store)
    hists = histograms(st)
    assert set(hists) == {("arm", "state"), ("arm", "action"), ("camera", "state")}
    for (emb, _), h in hists.items():
        frames = sum(e.length for e in st.episodes if e.embodiment == emb)
        np.testing.assert_array_equal(h.counts.sum(axis=1), frames)
    assert hists["arm", "action"].names == ["dx", "gripper"]


def test_card_lists_quality_verdicts_with_reasons(card):
    text = section(card.read_text(), "Quality verdicts")
    counts = dict(table(text))
    assert counts == {"kept": "8", "dropped: duplicate": "1", "dropped: idle": str(IDLE_DROPS), "failed": "1"}
    examples = table(text.split("Dropped or failed", 1)[1])
    assert len(examples) == QUALITY_EXAMPLES
    assert f"({QUALITY_EXAMPLES} of {IDLE_DROPS + 2} shown" in text
    by_reason = {row[1]: row for row in examples}  # every reason shows, however many idle drops precede it
    assert by_reason["duplicate"][4] == "duplicate of ep-000001"
    assert by_reason["error"][:4] == ["failed", "error", "bad.h5", "7"] and "has 3 frames" in by_reason["error"][4]
    assert "action_std 0" in by_reason["idle"][4]


def test_inspect_draws_a_row_per_camera(tmp_path):
    sizes = {}
    for cameras in (("front",), ("front", "wrist")):
        root = make_store(tmp_path / f"store{len(cameras)}", n=2, length=16, cameras=cameras)
        paths = inspect_episode(root, "ep-000001", tmp_path / f"out{len(cameras)}", frames=5)
        assert [p.name for p in paths] == ["ep-000001_frames.png", "ep-000001_actions.png"]
        for p in paths:
            with Image.open(p) as image:
                image.load()
                sizes[len(cameras), p.name] = image.size
    one, two = sizes[1, "ep-000001_frames.png"], sizes[2, "ep-000001_frames.png"]
    assert one[0] == two[0] and two[1] > 1.5 * one[1]  # as wide (5 frames), a row taller
    assert sizes[1, "ep-000001_actions.png"][1] > 200


def test_inspect_of_an_action_free_episode_plots_state_only(store, tmp_path):
    with_actions, without = (inspect_episode(store, i, tmp_path)[1] for i in ("ep-000000", "ep-000006"))
    with Image.open(with_actions) as a, Image.open(without) as b:
        assert b.width < a.width  # one column (state) instead of two (actions, state)


def test_inspect_of_an_unknown_episode_names_the_ids(tmp_path):
    root = write_store(tmp_path / "store", [textured_episode(3, seed=i) for i in range(23)])
    with pytest.raises(UsageError, match=r"no episode 'ep-9'; it has ep-000000, ep-000001, .*ep-000019 \.\.\. \(23"):
        inspect_episode(root, "ep-9", tmp_path / "out")
    assert not (tmp_path / "out").exists()
