import json

import numpy as np
import pytest

from robofm.data.convert import main
from robofm.data.store import EpisodeStore
from tests.lerobot_fixture import make_lerobot_dataset


@pytest.fixture(scope="module")
def lerobot_dataset(tmp_path_factory):
    return make_lerobot_dataset(tmp_path_factory.mktemp("lr") / "ds", episodes=4, length=12, cameras=("front", "side"))

UNIFORM = ["--keep", "blank"]  # the fixture's frames are uniform on purpose (a value per frame), so "blank"


def test_lerobot_dataset_converts_with_cameras_state_action_and_task(lerobot_dataset, tmp_path):
    out = tmp_path / "store"
    rc = main(["lerobot", str(lerobot_dataset), "--out", str(out), "--resolution", "16x16", "--workers", "2", *UNIFORM])
    assert rc == 0
    store = EpisodeStore(out)
    assert len(store.episodes) == 4 and store.fps == 10.0
    assert store.manifest["cameras"] == {"front": [16, 16], "side": [16, 16]}
    assert [e.task for e in store.episodes] == [f"task {e}" for e in range(4)]
    for e, info in enumerate(store.episodes):
        ep = store.read_episode(info.id)
        np.testing.assert_array_equal(ep.state[:, 0], np.arange(12))
        np.testing.assert_array_equal(ep.action[:, 0], np.arange(12))
        np.testing.assert_allclose(ep.timestamp, np.arange(12) / 10, atol=1e-6)
        expected = (10 * e + 3 * np.arange(12)) % 256  # video is lossy: grey levels within a few steps
        assert np.abs(ep.frames["front"][:, 8, 8, 0].astype(int) - expected).max() <= 4
        assert info.source_index == str(e)
    emb = store.manifest["embodiments"]
    assert list(emb) == ["default"] and emb["default"]["state_names"] == ["s0", "s1", "s2", "s3"]
    quality = json.loads((out / "quality.json").read_text())
    assert [q["status"] for q in quality] == ["kept"] * 4
    assert store.manifest["provenance"][0]["arguments"][:2] == ["robofm-convert", "lerobot"]
    assert all(info.layout is None for info in store.episodes)  # the dataset has no layout feature


def test_append_twice_changes_nothing_and_existing_store_needs_a_flag(lerobot_dataset, tmp_path):
    out = tmp_path / "store"
    args = ["lerobot", str(lerobot_dataset), "--out", str(out), "--resolution", "16x16", *UNIFORM]
    assert main([*args, "--episodes", "0,1"]) == 0
    assert main(args) == 2  # a store is there: neither --overwrite nor --append
    assert main([*args, "--append"]) == 0
    files = {p.name: p.read_bytes() for p in [out / "manifest.json", out / "quality.json", out / "stats.json"]}
    shards = sorted(p.name for p in (out / "shards").iterdir())
    assert len(EpisodeStore(out).episodes) == 4
    assert main([*args, "--append"]) == 0  # the same conversion again: nothing changes
    assert {p: (out / p).read_bytes() for p in files} == files
    assert sorted(p.name for p in (out / "shards").iterdir()) == shards
    assert main([*args, "--overwrite", "--episodes", "3"]) == 0
    assert len(EpisodeStore(out).episodes) == 1


def test_unreadable_lerobot_source_is_a_usage_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["lerobot", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    assert "meta/info.json is missing" in capsys.readouterr().err


def test_the_layout_feature_of_a_simulated_dataset_reaches_the_store(tmp_path):
    """scripts/collect_metaworld.py's per-frame `layout` ([MT1 seed, index]) becomes the episode row's layout."""
    ds = make_lerobot_dataset(tmp_path / "ds", episodes=2, length=12, seed=7, layouts=True)
    assert main(["lerobot", str(ds), "--out", str(tmp_path / "store"), *UNIFORM]) == 0
    store = EpisodeStore(tmp_path / "store")
    assert [e.layout for e in store.episodes] == [{"mt1_seed": 7, "mt1_index": 0}, {"mt1_seed": 7, "mt1_index": 1}]
