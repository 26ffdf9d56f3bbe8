"""A damaged store is refused on open with a StoreError naming the file, the entry and the field; an overwrite
that is killed leaves the old store readable."""

import json
import shutil

import h5py
import pytest

from robofm.data.cli import main as data_main
from robofm.data.episode import content_hash
from robofm.data.store import FAILED_OVERWRITE, OVERWRITE, EpisodeStore, StoreWriter, split_from_hash, write_view
from robofm.errors import StoreError
from tests.conftest import indexed_episode, write_store

CAMERAS = {"front": (8, 8), "wrist": (8, 8)}


def _edit_manifest(root, edit):
    m = json.loads((root / "manifest.json").read_text())
    edit(m)
    (root / "manifest.json").write_text(json.dumps(m))


def _raises(root, *fragments):
    with pytest.raises(StoreError) as err:
        EpisodeStore(root)
    for fragment in fragments:
        assert fragment in str(err.value), str(err.value)
    return str(err.value)


@pytest.mark.parametrize(
    ("edit", "fragments"),
    [
        (lambda m: m["episodes"][3].update(foo=1), ["episodes[3]: unknown key 'foo'"]),
        (lambda m: m["episodes"][2].pop("length"), ["episodes[2]: missing key 'length'"]),
        (lambda m: m["episodes"][1].update(length=-1), ["episodes[1]: length must be a non-negative integer"]),
        (lambda m: m["episodes"][1].update(length="20"), ["episodes[1]: length must be a non-negative integer"]),
        (lambda m: m["episodes"][1].update(length=True), ["episodes[1]: length must be a non-negative integer"]),
        (lambda m: m["episodes"][0].update(shard=3), ["episodes[0]: shard must be a string"]),
        (lambda m: m["episodes"][0].update(has_action="yes"), ["episodes[0]: has_action must be true or false"]),
        (lambda m: m["episodes"][0].update(layout=[1]), ["episodes[0]: layout must be a JSON object"]),
        (lambda m: m["episodes"][0].update(layout={"kind": 3}), ["episodes[0]: layout.kind must be an index of"]),
        (lambda m: m["episodes"][0].update(layout={"kind": "dart"}), ["episodes[0]: layout.kind must be an index"]),
        (lambda m: m["episodes"].__setitem__(1, "ep"), ["episodes[1]: expected a JSON object, got string"]),
        (lambda m: m["episodes"][1].update(id="ep-000000"), ["episodes[1]: episode id 'ep-000000' appears twice"]),
        (lambda m: m.update(fps=0), ["fps must be a positive number, got 0"]),
        (lambda m: m.update(fps="10"), ["fps must be a positive number"]),
        (lambda m: m.update(cameras=["front"]), ["cameras must be {name: [height, width]}"]),
        (lambda m: m.update(cameras={"front": [8]}), ["cameras: 'front' must be [height, width]"]),
        (lambda m: m.update(episodes={}), ["episodes must be a JSON list, got object"]),
        (lambda m: m.pop("embodiments"), ["embodiments must be a JSON object, got null"]),
    ],
)
def test_a_damaged_manifest_names_the_file_and_the_field(store_factory, edit, fragments):
    root = store_factory()
    _edit_manifest(root, edit)
    _raises(root, str(root / "manifest.json"), *fragments)


def test_a_manifest_that_is_not_an_object_or_has_no_version(store_factory):
    root = store_factory()
    (root / "manifest.json").write_text("[1, 2]")
    _raises(root, "manifest.json: expected a JSON object, got list")
    (root / "manifest.json").write_text('{"fps": 10}')
    _raises(root, "manifest.json has no format_version")
    (root / "manifest.json").write_text("{not json")
    _raises(root, "manifest.json is not valid JSON")


def test_rows_without_layout_still_open(store_factory):
    """Stores from before layouts existed: no `layout` key in any row."""
    root = store_factory()
    assert all("layout" not in row for row in json.loads((root / "manifest.json").read_text())["episodes"])
    assert len(EpisodeStore(root).episodes) == 4


@pytest.mark.parametrize(
    ("name", "text", "fragment"),
    [
        ("stats.json", "{garbage", "stats.json is not valid JSON"),
        ("stats.json", "[]", "stats.json: expected a JSON object"),
        ("stats.json", '{"arm": {"state": {"mean": [1]}}}', "stats.json: arm.state: missing key 'std'"),
        ("stats.json", '{"arm": {"state": 3}}', "stats.json: arm.state: expected a JSON object"),
        ("quality.json", "{garbage", "quality.json is not valid JSON"),
        ("quality.json", '{"a": 1}', "quality.json: expected a JSON list of verdicts, got object"),
        ("quality.json", '[{"source": "s", "source_index": "0"}]', "quality.json: [0]: missing key 'status'"),
    ],
)
def test_garbage_stats_or_quality_is_a_store_error(store_factory, name, text, fragment):
    root = store_factory()
    (root / name).write_text(text)
    _raises(root, fragment)


def test_report_on_a_damaged_store_prints_one_line_and_exits_2(store_factory, capsys):
    root = store_factory()
    (root / "stats.json").write_text("{garbage")
    assert data_main(["report", str(root), "--out", str(root / "card")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "stats.json is not valid JSON" in err and "Traceback" not in err


def test_every_dataset_is_checked_against_the_manifest_length(store_factory):
    root = store_factory()
    shard = root / "shards" / json.loads((root / "manifest.json").read_text())["episodes"][2]["shard"]
    with h5py.File(shard, "r+") as f:
        frames = f["ep-000002/frames/wrist"][:]
        del f["ep-000002/frames/wrist"]
        f.create_dataset("ep-000002/frames/wrist", data=frames[:-3])
    _raises(root, str(shard), "ep-000002 has 17 rows in frames/wrist, manifest says 20")
    for name, fragment in [("state", "has 19 rows in state"), ("action", "has 19 rows in action")]:
        root = store_factory(f"store-{name}")
        shard = root / "shards" / json.loads((root / "manifest.json").read_text())["episodes"][0]["shard"]
        with h5py.File(shard, "r+") as f:
            data = f[f"ep-000000/{name}"][:]
            del f[f"ep-000000/{name}"]
            f.create_dataset(f"ep-000000/{name}", data=data[:-1])
        _raises(root, fragment)


def test_a_camera_missing_from_an_episode_is_refused(store_factory):
    root = store_factory()
    shard = root / "shards" / json.loads((root / "manifest.json").read_text())["episodes"][1]["shard"]
    with h5py.File(shard, "r+") as f:
        del f["ep-000001/frames/front"]
    _raises(root, "episode ep-000001 has no dataset 'frames/front'")


def test_latents_are_checked_when_the_store_has_them(store_factory):
    root = store_factory()
    _edit_manifest(root, lambda m: m.update(latents={"vae_path": "vae", "shape": [4, 1, 1], "scaling_factor": 1}))
    _raises(root, "ep-000000 has no dataset 'latents/front'")


@pytest.mark.parametrize("shard", ["../outside.h5", "/tmp/outside.h5", "sub/../../outside.h5", ""])
def test_a_shard_outside_the_store_is_refused(store_factory, shard):
    root = store_factory()
    _edit_manifest(root, lambda m: m["episodes"][1].update(shard=shard))
    _raises(root, "episodes[1] (episode ep-000001)", f"shard {shard!r} is not a file inside the store's shards folder")


def test_a_view_still_reads_its_base_shards(store_factory, tmp_path):
    base = EpisodeStore(store_factory())
    view = EpisodeStore(write_view(base, tmp_path / "view", {"ep-000001", "ep-000003"}, [], {"by": "test"}))
    assert [e.id for e in view.episodes] == ["ep-000001", "ep-000003"]
    assert view.read_episode("ep-000003").length == 20
    _edit_manifest(view.root, lambda m: m["episodes"][0].update(shard="../../elsewhere.h5"))
    _raises(view.root, "shard '../../elsewhere.h5' is not a file inside")


# ----------------------------------------------------------------------------------------------- overwrite


def _overwrite(root, seeds):
    """An overwrite of `root` with episodes of `seeds`, left open (not closed): a kill in the middle of it."""
    writer = StoreWriter(root, fps=10, cameras=CAMERAS, mode="overwrite", shard_size_mb=0.01)  # 3 episodes a shard
    for seed in seeds:
        ep = indexed_episode(12, seed=seed, task="new")
        h = content_hash(ep)
        writer.add(ep, h, split_from_hash(h, 0.0))
    return writer


def test_a_killed_overwrite_leaves_the_old_store(tmp_path):
    root = write_store(tmp_path / "store", [indexed_episode(20, seed=i) for i in range(3)])
    old = {name: (root / name).read_bytes() for name in ("manifest.json", "stats.json", "quality.json")}
    writer = _overwrite(root, range(10, 15))  # several shards closed, one open: never closed
    assert writer._shard is not None and len(list((root / "shards").glob("*.h5"))) > 3
    store = EpisodeStore(root)
    assert [e.task for e in store.episodes] == ["pick"] * 3 and store.read_episode("ep-000002").length == 20
    assert {name: (root / name).read_bytes() for name in old} == old
    writer._shard.close()  # the killed process's handle
    # the next conversion cleans what the killed one left, and its own overwrite completes
    _overwrite(root, [20, 21]).close()
    store = EpisodeStore(root)
    assert [e.task for e in store.episodes] == ["new"] * 2
    named = {e.shard for e in store.episodes}
    assert {p.name for p in (root / "shards").iterdir()} == named
    assert not (root / OVERWRITE).exists()


def test_an_overwrite_that_raises_midway_leaves_the_old_store(tmp_path):
    root = write_store(tmp_path / "store", [indexed_episode(20, seed=i) for i in range(2)])
    writer = _overwrite(root, [10])
    with pytest.raises(ValueError):
        try:
            raise ValueError("the source broke")
        finally:
            writer._shard.close()  # what the process exit does; close() is never reached
    assert len(EpisodeStore(root).episodes) == 2
    StoreWriter(root, fps=10, cameras=CAMERAS, mode="append").close()  # any next writer cleans the leftovers
    assert not (root / OVERWRITE).exists()
    assert {p.name for p in (root / "shards").iterdir()} == {e.shard for e in EpisodeStore(root).episodes}


def test_a_completed_overwrite_leaves_only_the_new_store(tmp_path):
    root = write_store(tmp_path / "store", [indexed_episode(20, seed=i) for i in range(3)])
    _overwrite(root, [10, 11, 12, 13]).close()
    store = EpisodeStore(root)
    assert [e.task for e in store.episodes] == ["new"] * 4
    assert [e.id for e in store.episodes] == [f"ep-{i:06d}" for i in range(4)]
    assert {p.name for p in (root / "shards").iterdir()} == {e.shard for e in store.episodes}
    assert sorted(p.name for p in root.iterdir()) == ["manifest.json", "quality.json", "shards", "stats.json"]
    assert set(store.stats) == {"arm"} and store.stats["arm"]["state"]["count"] == 4 * 12
    # and the store grows as any other: an append numbers its shards after the overwrite's
    writer = StoreWriter(root, fps=10, cameras=CAMERAS, mode="append", shard_size_mb=0.001)
    ep = indexed_episode(5, seed=99)
    writer.add(ep, content_hash(ep), "train")
    writer.close()
    assert len(EpisodeStore(root).episodes) == 5


def test_a_kill_after_the_new_store_was_staged_completes_it(tmp_path):
    """A kill between the staged metadata and the swap: the next writer finishes the swap."""
    root = write_store(tmp_path / "store", [indexed_episode(20, seed=i) for i in range(2)])
    writer = _overwrite(root, [10, 11, 12])
    writer._close_shard()
    writer._write_metadata(root / OVERWRITE)  # everything close() does but settle_overwrite
    assert len(EpisodeStore(root).episodes) == 2  # still the old store
    StoreWriter(root, fps=10, cameras=CAMERAS, mode="append").close()
    store = EpisodeStore(root)
    assert [e.task for e in store.episodes] == ["new"] * 3
    assert {p.name for p in (root / "shards").iterdir()} == {e.shard for e in store.episodes}


def test_an_overwrite_that_added_nothing_keeps_the_old_store(tmp_path):
    root = write_store(tmp_path / "store", [indexed_episode(20, seed=i) for i in range(2)])
    shards = sorted(p.name for p in (root / "shards").iterdir())
    before = EpisodeStore(root).quality
    writer = StoreWriter(root, fps=10, cameras=CAMERAS, mode="overwrite")
    writer.record({"source": "s", "source_index": "0", "status": "failed", "reason": "error", "message": "broken"})
    writer.close()
    store = EpisodeStore(root)
    assert len(store.episodes) == 2 and sorted(p.name for p in (root / "shards").iterdir()) == shards
    assert store.quality == before  # the old store's verdicts stay; the failed attempt's are beside them
    assert [q["status"] for q in json.loads((root / FAILED_OVERWRITE).read_text())] == ["failed"]
    assert not (root / OVERWRITE).exists()


def test_an_overwrite_of_a_folder_without_a_store_writes_in_place(tmp_path):
    root = tmp_path / "store"
    root.mkdir()
    _overwrite(root, [1, 2]).close()
    assert len(EpisodeStore(root).episodes) == 2 and not (root / OVERWRITE).exists()
    shutil.rmtree(root)
