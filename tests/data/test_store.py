import json

import h5py
import numpy as np
import pytest

from robofm.data.episode import content_hash
from robofm.data.store import FORMAT_VERSION, EpisodeStore, StoreWriter
from robofm.errors import StoreError, UsageError
from tests.conftest import indexed_episode, write_store


def test_round_trip_keeps_every_array_and_attribute(tmp_path):
    eps = [indexed_episode(15, seed=i) for i in range(3)]
    eps[2].action = None  # action-free video episodes are stored without an action dataset
    store = EpisodeStore(write_store(tmp_path / "s", eps))
    assert [e.id for e in store.episodes] == ["ep-000000", "ep-000001", "ep-000002"]
    assert len({e.shard for e in store.episodes}) > 1  # tiny shard size: the store spans shards
    for info, ep in zip(store.episodes, eps, strict=True):
        back = store.read_episode(info.id)
        for cam in ep.frames:
            np.testing.assert_array_equal(back.frames[cam], ep.frames[cam])
        np.testing.assert_array_equal(back.state, ep.state)
        np.testing.assert_array_equal(back.timestamp, ep.timestamp)
        assert (back.action is None) == (ep.action is None) == (not info.has_action)
        assert info.content_hash == content_hash(ep) and info.task == "pick" and info.length == 15
    m = store.manifest
    assert m["format_version"] == FORMAT_VERSION and m["fps"] == 10.0
    assert m["cameras"] == {"front": [8, 8], "wrist": [8, 8]}
    assert m["embodiments"]["arm"]["state_dim"] == 3 and m["embodiments"]["arm"]["action_dim"] == 2
    st = store.stats["arm"]
    allstate = np.concatenate([e.state for e in eps])
    np.testing.assert_allclose(st["state"]["mean"], allstate.mean(0), rtol=1e-6)
    np.testing.assert_allclose(st["action"]["max"], [14, 0])
    with h5py.File(store.shard_path(store.episodes[0].shard)) as f:
        assert f["ep-000000/frames/front"].chunks is None  # uncompressed: contiguous (compressed: a chunk per frame)


def test_failed_episode_write_leaves_nothing_in_the_shard(tmp_path):
    writer = StoreWriter(tmp_path / "s", fps=10, cameras={"front": (8, 8), "wrist": (8, 8)})
    good = indexed_episode(10, seed=1)
    writer.add(good, content_hash(good), "train")
    bad = indexed_episode(10, seed=2)
    bad.state = "not an array"  # fails after the frames were written
    with pytest.raises(AttributeError):
        writer.add(bad, "x", "train")
    writer.close()
    store = EpisodeStore(tmp_path / "s")
    assert [e.id for e in store.episodes] == ["ep-000000"]
    with h5py.File(store.shard_path(store.episodes[0].shard)) as f:
        assert list(f) == ["ep-000000"]


def test_newer_format_and_missing_shards_give_clear_errors(tmp_path, store_factory):
    root = store_factory()
    m = json.loads((root / "manifest.json").read_text())
    m["format_version"] = FORMAT_VERSION + 1
    (root / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(StoreError, match="upgrade robofm"):
        EpisodeStore(root)
    m["format_version"] = FORMAT_VERSION
    (root / "manifest.json").write_text(json.dumps(m))
    shard = root / "shards" / m["episodes"][0]["shard"]
    shard.unlink()
    with pytest.raises(StoreError, match="missing") as err:
        EpisodeStore(root)
    assert shard.name in str(err.value)
    with pytest.raises(StoreError, match="not a robofm episode store"):
        EpisodeStore(tmp_path / "nothing")


def test_manifest_that_disagrees_with_shards_is_rejected(store_factory):
    root = store_factory()
    m = json.loads((root / "manifest.json").read_text())
    m["episodes"][1]["length"] += 1
    (root / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(StoreError, match="ep-000001 has 20 frames, manifest says 21"):
        EpisodeStore(root)


def test_unknown_episode_lists_what_exists(store_factory):
    store = EpisodeStore(store_factory())
    with pytest.raises(UsageError, match="has no episode 'ep-999'; it has ep-000000, ep-000001"):
        store.info("ep-999")


def test_store_is_never_half_written(store_factory):
    """The manifest is the last file written: a store without one is not a store, and partial shards
    from a crashed conversion are removed by the next writer."""
    root = store_factory()
    (root / "shards" / "shard-00099.h5.partial").write_bytes(b"crashed")
    StoreWriter(root, fps=10, cameras={"front": (8, 8), "wrist": (8, 8)}, mode="append").close()
    assert not list((root / "shards").glob("*.partial"))
    assert len(EpisodeStore(root).episodes) == 4


def test_an_episode_keeps_its_simulator_layout_and_rows_without_one_have_no_key(tmp_path):
    """The layout a simulated episode was recorded on survives the store (robofm-eval-sim holds it out); episodes
    without one write the same rows as before layouts existed, so older robofm still reads such a store."""
    placed, plain = indexed_episode(8, seed=0), indexed_episode(8, seed=1)
    placed.layout = {"mt1_seed": 3, "mt1_index": 17}
    root = write_store(tmp_path / "store", [placed, plain])
    rows = json.loads((root / "manifest.json").read_text())["episodes"]
    assert rows[0]["layout"] == {"mt1_seed": 3, "mt1_index": 17} and "layout" not in rows[1]
    store = EpisodeStore(root)
    assert [e.layout for e in store.episodes] == [{"mt1_seed": 3, "mt1_index": 17}, None]


# ----------------------------------------------------------------------------------------------- subsets


def test_subset_keeps_n_episodes_of_a_task_in_order_and_names_every_other(tmp_path):
    from robofm.data.cli import main as data_main

    eps = [indexed_episode(12, seed=i, task="pick" if i % 3 else "push") for i in range(9)]
    root = write_store(tmp_path / "s", eps)
    assert data_main(["subset", str(root), "--out", str(tmp_path / "v"), "--task", "pick", "--skip", "1",
                      "--first", "3"]) == 0  # fmt: skip
    view = EpisodeStore(tmp_path / "v")
    assert [e.id for e in view.episodes] == ["ep-000002", "ep-000004", "ep-000005"]  # pick: 1, 2, 4, 5, 7, 8
    reasons = {v["source_index"]: v["reason"] for v in view.quality}
    assert len(reasons) == 6 and reasons["ep-000000"] == "other_task" and reasons["ep-000001"] == "outside_subset"
    assert view.stats["arm"]["state"]["count"] == 3 * 12  # statistics of the kept episodes alone
    np.testing.assert_array_equal(view.read_episode("ep-000004").action, eps[4].action)


def test_a_subset_without_actions_reads_as_action_free_video(tmp_path):
    from robofm.data.dataset import EpisodeWindowDataset
    from robofm.data.store import subset

    root = write_store(tmp_path / "s", [indexed_episode(12, seed=i) for i in range(4)])
    view, kept, left = subset(root, tmp_path / "v", skip=2, drop_actions=True)
    assert (kept, left) == (2, 2)
    store = EpisodeStore(view)
    assert not any(e.has_action for e in store.episodes) and store.read_episode("ep-000003").action is None
    assert store.stats["arm"]["action"] == {} and store.stats["arm"]["state"]["count"] == 24
    ds = EpisodeWindowDataset(view, 2, 2, split=None)
    assert len(ds) and not any(ds[i]["action_mask"].any() for i in range(len(ds)))
    assert EpisodeStore(root).read_episode("ep-000003").action is not None  # the base store keeps its actions


@pytest.mark.parametrize(("kw", "fragment"), [({"task": "lift"}, "nothing to keep"), ({"skip": 4}, "nothing to keep"),
                                              ({"first": 5}, "5 episode(s) asked for"), ({"skip": -1}, "skip must be")])  # fmt: skip
def test_a_subset_that_cannot_be_made_is_refused(tmp_path, kw, fragment):
    from robofm.data.store import subset

    root = write_store(tmp_path / "s", [indexed_episode(12, seed=i) for i in range(4)])
    with pytest.raises(UsageError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        subset(root, tmp_path / "v", **kw)
    assert not (tmp_path / "v").exists()
