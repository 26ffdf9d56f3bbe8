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


def _failed(out) -> dict[str, str]:
    return {q["source_index"]: q["message"] for q in json.loads((out / "quality.json").read_text())
            if q["status"] == "failed"}  # fmt: skip


def test_a_data_table_missing_its_last_rows_fails_that_episode(tmp_path):
    import pyarrow.parquet as pq

    ds = make_lerobot_dataset(tmp_path / "ds", episodes=2, length=16)
    table_file = next((ds / "data").rglob("*.parquet"))
    table = pq.read_table(table_file)
    pq.write_table(table.slice(0, table.num_rows - 5), table_file)  # episode 1 keeps 11 of its 16 rows
    assert main(["lerobot", str(ds), "--out", str(tmp_path / "store"), *UNIFORM]) == 3
    failed = _failed(tmp_path / "store")
    assert list(failed) == ["1"], failed
    assert "11 rows in the data table for this episode, but the metadata declares" in failed["1"]
    assert "length = 16" in failed["1"] and "info.json total_frames = 32" in failed["1"]


def test_a_video_with_fewer_frames_than_timestamps_fails_the_episodes_it_does_not_cover(tmp_path):
    import av

    from tests.video import add_stream, open_output

    ds = make_lerobot_dataset(tmp_path / "ds", episodes=2, length=16)
    video_file = next((ds / "videos").rglob("*.mp4"))
    with av.open(str(video_file)) as src:
        frames = [f.to_ndarray(format="rgb24") for f in src.decode(video=0)][:28]  # of 32: episode 1 loses 4
    with open_output(video_file) as dst:
        stream = add_stream(dst, "mpeg4", 10)
        stream.height, stream.width, stream.pix_fmt = 32, 32, "yuv420p"
        for img in frames:
            dst.mux(stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        dst.mux(stream.encode())
    assert main(["lerobot", str(ds), "--out", str(tmp_path / "store"), *UNIFORM]) == 3
    failed = _failed(tmp_path / "store")
    assert list(failed) == ["1"], failed
    assert "file-000.mp4" in failed["1"] and "the video ends at 2.7000 s, before the episode's last timestamp" in failed["1"]
    assert "(4 of 16 timestamps have no frame): truncated video" in failed["1"]
