"""robofm-data decontaminate removes the planted leaks of held-out data (exact, noisy and shifted copies, and an
overlapping task) and nothing else, into a view that training reads like a store; report and inspect run."""

from __future__ import annotations

import json

import pytest

from robofm.data.cli import main
from robofm.data.dataset import EpisodeWindowDataset
from robofm.data.decontaminate import ngrams, task_overlap
from robofm.data.store import EpisodeStore
from tests.conftest import write_store
from tests.data.test_quality import noisy, scene_episode, shifted


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("decon")
    heldout = [scene_episode(s, task="close the drawer") for s in range(4)]
    leaked_task = scene_episode(50, task="Close the drawer, slowly")  # new content, but the held-out task
    train = [scene_episode(10 + s) for s in range(8)]
    train[1:1] = [heldout[0]]
    train[4:4] = [noisy(heldout[1]), shifted(heldout[2], 3), leaked_task]
    return write_store(root / "heldout", heldout), write_store(root / "train", train)


def test_ngram_overlap_is_a_share_of_the_heldout_task():
    assert ngrams("Open the drawer!", 3) == {("open", "the", "drawer")}
    assert ngrams("open it", 3) == {("open", "it")}
    assert task_overlap("open the drawer", ["close the drawer"], 3) == (0.0, None)
    share, which = task_overlap("please pick up the red block now", ["pick up the red block"], 3)
    assert share == 1.0 and which == "pick up the red block"


def test_decontaminate_removes_the_planted_leaks_and_nothing_else(stores, tmp_path, capsys):
    heldout, train = stores
    before = (train / "manifest.json").read_text()
    view = tmp_path / "view"
    assert main(["decontaminate", "--train", str(train), "--heldout", str(heldout), "--out", str(view)]) == 0
    report = json.loads((view / "decontamination.json").read_text())
    removed = {r["episode_id"]: (r["reason"], r["of"]) for r in report["train"][0]["removed"]}
    assert removed == {"ep-000001": ("duplicate", "ep-000000"), "ep-000004": ("near_duplicate", "ep-000001"),
                       "ep-000005": ("near_duplicate", "ep-000002"),
                       "ep-000006": ("task_overlap", "close the drawer")}  # fmt: skip
    kept = EpisodeStore(view)
    assert len(kept.episodes) == 12 - 4 and not set(removed) & set(kept.by_id)
    assert not (view / "shards").exists() and (train / "manifest.json").read_text() == before  # nothing moved
    assert {q["reason"] for q in kept.quality} == {"duplicate", "near_duplicate", "task_overlap"}
    ds = EpisodeWindowDataset(view, 4, 2, split=None)  # training reads the view like any store
    assert ds[0]["frames"].shape[0] == 2 and len(ds) > 0
    assert f"data.path={view}" in capsys.readouterr().err.replace("\n", "")  # (the console wraps long lines)


def test_decontaminate_without_out_only_reports_and_bad_paths_exit_2(stores, tmp_path, capsys):
    heldout, train = stores
    assert main(["decontaminate", "--train", str(train), "--heldout", str(heldout)]) == 0
    assert not (tmp_path / "view").exists()
    assert main(["decontaminate", "--train", str(train), "--heldout", str(tmp_path)]) == 2
    assert "neither an episode store nor a LeRobot v3 dataset" in " ".join(capsys.readouterr().err.split())
    assert main(["decontaminate", "--train", str(tmp_path / "none"), "--heldout", str(heldout)]) == 2


def test_report_and_inspect_write_their_files(stores, tmp_path, capsys):
    _, train = stores
    assert main(["report", str(train), "--out", str(tmp_path / "card"), "--patch-size", "8"]) == 0
    card = (tmp_path / "card" / "README.md").read_text()
    assert "push the block" in card and (tmp_path / "card" / "episode_lengths.png").is_file()
    assert main(["inspect", str(train), "ep-000002", "--out", str(tmp_path / "look")]) == 0
    assert sorted(p.name for p in (tmp_path / "look").iterdir()) == ["ep-000002_actions.png", "ep-000002_frames.png"]
    assert main(["inspect", str(train), "ep-999"]) == 2
    assert "ep-000000" in " ".join(capsys.readouterr().err.split())
