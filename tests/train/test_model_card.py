"""The model card every export carries (robofm.models.card): what trained it, how to load it, and the held-out
results of robofm-eval and robofm-eval-sim, in the Hub's format."""

from __future__ import annotations

import json

import pytest
from huggingface_hub import ModelCard

from robofm.data.store import EpisodeStore
from robofm.models.card import record_eval
from tests.models.conftest import make_store
from tests.train.conftest import TINY, train_in_process


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("card")
    store = make_store(root / "store", n=4, length=16, val_fraction=0.5)
    manifest = json.loads((store / "manifest.json").read_text())
    manifest["provenance"] = [{"source": "hdf5 aloha /data/towels", "license": "cc-by-4.0"}]
    (store / "manifest.json").write_text(json.dumps(manifest))  # as robofm-convert --license cc-by-4.0 records it
    train_in_process(root / "run", [*TINY, f"data.path={store}", "trainer.max_steps=2"])
    return root / "run", store


def test_the_card_says_what_trained_the_export_in_the_hubs_format(run):
    run_dir, store = run
    card = ModelCard.load(run_dir / "export" / "README.md")  # huggingface_hub's own parser: the upload takes it
    assert card.data.library_name == "robofm" and card.data.license == "cc-by-4.0"
    assert "robotics" in card.data.tags
    train = [e for e in EpisodeStore(store).episodes if e.split == "train"]
    row = next(line for line in card.text.splitlines() if str(store.resolve()) in line)
    assert f"| train | {len(train)} | {sum(e.length for e in train)} |" in row and "cc-by-4.0" in row
    assert "Converted from: `hdf5 aloha /data/towels`" in card.text
    assert f"`EXPORT` below is this folder (`{run_dir / 'export'}` where it was written)" in card.text
    for how in ("robofm.load_policy(EXPORT)", "lerobot-eval --policy.path=EXPORT", "robofm-serve policy=EXPORT"):
        assert how in card.text
    assert "## Training config" in card.text and "max_steps: 2" in card.text
    assert "## Recipe\n\n`robofm-train`: from scratch, 2 steps of 4 windows at lr" in card.text
    assert "Not evaluated yet" in card.text


def test_robofm_eval_and_eval_sim_results_appear_in_the_card(run, capsys):
    from robofm.eval.__main__ import main as eval_main

    run_dir, store = run
    fast = ["horizons=1", "sampler_steps=2", "batches=1", "batch_size=2"]
    assert eval_main([f"checkpoint={run_dir}", f"data.path={store}", *fast]) == 0
    assert f"model card updated: {run_dir / 'export' / 'README.md'}" in " ".join(capsys.readouterr().out.split())
    sim = {"task": "button-press-v3", "episodes": 20, "successes": 18, "success_rate": 0.9, "ci95": [0.7, 0.97],
           "seed": 0, "train_stores": [str(store)], "rollouts": [{"success": True}] * 20}  # fmt: skip
    text = record_eval(run_dir / "export", "robofm-eval-sim", sim).read_text()
    assert "**`robofm-eval`** on 2 `val` windows" in text and "for copying the last frame" in text
    assert "`button-press-v3`: 18/20 episodes succeeded (90%, 95% CI 70%-97%)" in text
    assert "no training episode used" in text and "Not evaluated yet" not in text
    again = record_eval(run_dir / "export", "robofm-eval-sim", {**sim, "successes": 19}).read_text()
    assert again.count("**`robofm-eval-sim`**") == 1 and "19/20" in again  # a rerun replaces its entry
