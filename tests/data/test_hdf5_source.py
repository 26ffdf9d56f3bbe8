"""The hdf5 converter source: ALOHA, robomimic and mapped layouts through robofm-convert, and bad input."""

from __future__ import annotations

import json
import pickle
from argparse import Namespace
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest

from robofm.data.convert import main
from robofm.data.sources import hdf5
from robofm.data.store import EpisodeStore
from robofm.errors import EpisodeError, UsageError

REPO = Path(__file__).resolve().parents[2]
T, H, W = 24, 32, 32


def walk(seed: int, t: int = T, d: int = 4) -> np.ndarray:
    """A random walk: moves, and differs between seeds (convert drops idle episodes and duplicates)."""
    return np.cumsum(np.random.default_rng(seed).normal(0, 0.1, (t, d)), axis=0).astype(np.float32)


def video(seed: int, t: int = T) -> np.ndarray:
    """uint8 [t, H, W, 3]: a random image sliding sideways one pixel per frame."""
    base = np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)
    return np.stack([np.roll(base, i, axis=1) for i in range(t)])


def smooth_video(seed: int, t: int = T) -> np.ndarray:
    """Like video() but smooth, so that JPEG keeps it close."""
    y, x = np.mgrid[0:H, 0:W]
    phase = np.random.default_rng(seed).uniform(0, 6)
    frames = [np.stack([128 + 100 * np.sin(x / 6 + i / 4 + phase + c) for c in range(3)], -1) for i in range(t)]
    return np.stack(frames).astype(np.uint8)


def write_aloha(path: Path, seed: int, *, task: str | None = None, compress: bool = False,
                nan: bool = False, action: bool = True) -> dict:  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    images = smooth_video if compress else video
    data = {"qpos": walk(seed, d=14), "action": walk(seed + 100, d=14),
            "cam_high": images(seed), "cam_left_wrist": images(seed + 1)}  # fmt: skip
    if nan:
        data["qpos"][5, 2] = np.nan
    with h5py.File(path, "w") as f:
        f.create_dataset("observations/qpos", data=data["qpos"])
        f.create_dataset("observations/qvel", data=np.zeros((T, 14), np.float32))
        for cam in ("cam_high", "cam_left_wrist"):
            if compress:  # ALOHA's record_episodes: JPEG rows zero-padded to the longest, lengths in /compress_len
                rows = [cv2.imencode(".jpg", im, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].ravel() for im in data[cam]]
                padded = np.zeros((T, max(map(len, rows))), np.uint8)
                for i, r in enumerate(rows):
                    padded[i, : len(r)] = r
                f.create_dataset(f"observations/images/{cam}", data=padded)
            else:
                f.create_dataset(f"observations/images/{cam}", data=data[cam])
        if action:
            f.create_dataset("action", data=data["action"])
        f.attrs["sim"] = True
        f.attrs["compress"] = compress
        if task:
            f.attrs["task"] = task
    return data


def convert(src: Path, out: Path, layout: str, *extra: str) -> tuple[int, list[dict]]:
    rc = main(["hdf5", str(src), "--layout", layout, "--out", str(out), "--resolution", "native", *extra])
    quality = json.loads((out / "quality.json").read_text()) if (out / "quality.json").exists() else []
    return rc, quality


def by_index(store: EpisodeStore) -> dict[str, object]:
    return {e.source_index: e for e in store.episodes}


def test_aloha_folder_converts_cameras_values_and_task(tmp_path: Path) -> None:
    src = tmp_path / "aloha_sim_insertion"
    written = {
        "episode_0": write_aloha(src / "episode_0.hdf5", 0, task="insert the peg"),
        "episode_1": write_aloha(src / "episode_1.hdf5", 1),
        "episode_2": write_aloha(src / "episode_2.hdf5", 2, compress=True),
    }
    rc, quality = convert(src, tmp_path / "out", "aloha")
    assert rc == 0, quality
    store = EpisodeStore(tmp_path / "out")
    assert store.fps == 50 and sorted(store.cameras) == ["cam_high", "cam_left_wrist"]
    infos = by_index(store)
    assert sorted(infos) == sorted(written)
    assert infos["episode_0"].task == "insert the peg"
    assert infos["episode_1"].task == "aloha sim insertion"  # no attribute, no --task: the folder name
    for index, data in written.items():
        ep = store.read_episode(infos[index].id)
        np.testing.assert_array_equal(ep.state, data["qpos"])
        np.testing.assert_array_equal(ep.action, data["action"])
        np.testing.assert_allclose(ep.timestamp, np.arange(T) / 50)
        for cam in ("cam_high", "cam_left_wrist"):
            if index == "episode_2":  # JPEG rows decode close to the original, in the original channel order
                assert np.abs(ep.frames[cam].astype(int) - data[cam]).mean() < 3
            else:
                np.testing.assert_array_equal(ep.frames[cam], data[cam])
    assert all(q["status"] == "kept" for q in quality)


def test_aloha_task_flag_and_source_fps(tmp_path: Path) -> None:
    write_aloha(tmp_path / "src" / "a.hdf5", 3)
    rc, _ = convert(tmp_path / "src", tmp_path / "out", "aloha", "--task", "fold the towel", "--source-fps", "25")
    assert rc == 0
    store = EpisodeStore(tmp_path / "out")
    ep = store.read_episode(store.episodes[0].id)
    assert store.fps == 25 and ep.task == "fold the towel"
    np.testing.assert_allclose(ep.timestamp, np.arange(T) / 25)


def write_robomimic(path: Path, demos: list[str], masks: dict[str, list[str]]) -> dict:
    written = {}
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["env_args"] = json.dumps({"env_name": "PickPlaceCan", "type": 1, "env_kwargs": {}})
        for seed, name in enumerate(demos):
            d = written[name] = {"agentview_image": video(10 + seed), "robot0_eye_in_hand_image": video(20 + seed),
                                 "robot0_eef_pos": walk(30 + seed, d=3), "robot0_gripper_qpos": walk(40 + seed, d=2),
                                 "actions": walk(50 + seed, d=7)}  # fmt: skip
            g = data.create_group(name)
            for key, value in d.items():
                g.create_dataset(key if key == "actions" else f"obs/{key}", data=value)
            g.create_dataset("obs/agentview_depth", data=np.zeros((T, H, W, 1), np.float32))  # not state, not frames
            g.attrs["num_samples"] = T
        for split, names in masks.items():
            f.create_dataset(f"mask/{split}", data=np.array([n.encode() for n in names], dtype="S"))
    return written


def test_robomimic_demos_splits_and_task(tmp_path: Path) -> None:
    demos = ["demo_0", "demo_1", "demo_2", "demo_10"]
    written = write_robomimic(tmp_path / "image.hdf5", demos, {"train": ["demo_0", "demo_1"], "valid": ["demo_2"],
                                                               "20_percent": ["demo_0"]})  # fmt: skip
    rc, quality = convert(tmp_path / "image.hdf5", tmp_path / "out", "robomimic")
    assert rc == 0, quality
    store = EpisodeStore(tmp_path / "out")
    assert [e.source_index for e in store.episodes] == demos  # sorted by the demo number, not as text
    assert store.fps == 20 and sorted(store.cameras) == ["agentview", "robot0_eye_in_hand"]
    infos = by_index(store)
    assert [infos[d].split for d in demos[:3]] == ["train", "train", "val"]
    assert infos["demo_10"].split in ("train", "val")  # in no mask: assigned from the content hash
    assert {e.task for e in store.episodes} == {"pick place can"}
    for name, d in written.items():
        ep = store.read_episode(infos[name].id)
        np.testing.assert_array_equal(ep.state, np.concatenate([d["robot0_eef_pos"], d["robot0_gripper_qpos"]], 1))
        np.testing.assert_array_equal(ep.action, d["actions"])
        np.testing.assert_array_equal(ep.frames["agentview"], d["agentview_image"])
    names = store.manifest["embodiments"]["robomimic"]["state_names"]
    assert names == ["robot0_eef_pos.0", "robot0_eef_pos.1", "robot0_eef_pos.2", "robot0_gripper_qpos.0",
                     "robot0_gripper_qpos.1"]  # fmt: skip


def source_for(src: Path, layout: str, **kw: object) -> hdf5.Hdf5Source:
    args = Namespace(src=src, layout=layout, task=None, source_fps=None, state_keys=None)
    for k, v in kw.items():
        setattr(args, k, v)
    return hdf5.from_args(args)


def test_robomimic_state_keys_and_unlistable_file(tmp_path: Path) -> None:
    write_robomimic(tmp_path / "a.hdf5", ["demo_0", "demo_1"], {})
    (tmp_path / "b.hdf5").write_text("not hdf5")
    source = pickle.loads(pickle.dumps(source_for(tmp_path, "robomimic", state_keys=["robot0_gripper_qpos"])))
    refs = source.episodes()
    assert [(Path(r.source).name, r.index) for r in refs] == [("a.hdf5", "demo_0"), ("a.hdf5", "demo_1"),
                                                              ("b.hdf5", "b")]  # fmt: skip
    ep = source.load(refs[1])
    assert ep.state.shape == (T, 2) and ep.split is None and ep.task == "pick place can"
    with pytest.raises(EpisodeError, match="cannot be opened as HDF5") as err:
        source.load(refs[2])
    assert err.value.file.endswith("b.hdf5") and err.value.episode == "b"


def write_mapped(path: Path) -> dict:
    """A file in the layout of examples/hdf5_mapping.yaml: CHW frames, per-episode instructions."""
    written = {}
    with h5py.File(path, "w") as f:
        for i in range(3):
            g = f.create_group(f"episodes/ep_{i}")
            d = written[f"episodes/ep_{i}"] = {"front": video(60 + i), "wrist": video(70 + i),
                                              "joint_pos": walk(80 + i, d=6), "gripper": walk(90 + i, d=1)[:, 0],
                                              "act": walk(100 + i, d=7), "t": 2.0 + np.arange(T) / 30}  # fmt: skip
            g.create_dataset("obs/front_rgb", data=d["front"].transpose(0, 3, 1, 2))  # (T, 3, H, W)
            g.create_dataset("obs/wrist_rgb", data=d["wrist"].transpose(0, 3, 1, 2))
            for key in ("joint_pos", "gripper"):
                g.create_dataset(f"obs/{key}", data=d[key])
            g.create_dataset("act", data=d["act"])
            g.create_dataset("t", data=d["t"])
            if i != 1:
                g.attrs["instruction"] = f"open drawer {i}"
        f.create_dataset("calibration", data=np.eye(3))  # not a group: never an episode
    return written


def test_mapping_example_converts(tmp_path: Path) -> None:
    written = write_mapped(tmp_path / "drawer_run.h5")
    rc, quality = convert(tmp_path / "drawer_run.h5", tmp_path / "out", str(REPO / "examples" / "hdf5_mapping.yaml"))
    assert rc == 0, quality
    store = EpisodeStore(tmp_path / "out")
    infos = by_index(store)
    assert sorted(infos) == sorted(written) and store.fps == 30
    assert sorted(store.cameras) == ["front", "wrist"]
    assert [infos[f"episodes/ep_{i}"].task for i in range(3)] == ["open drawer 0", "open the drawer", "open drawer 2"]
    for index, d in written.items():
        ep = store.read_episode(infos[index].id)
        np.testing.assert_array_equal(ep.frames["front"], d["front"])  # CHW transposed back
        np.testing.assert_array_equal(ep.state, np.concatenate([d["joint_pos"], d["gripper"][:, None]], 1))
        np.testing.assert_array_equal(ep.action, d["act"])
        np.testing.assert_allclose(ep.timestamp, d["t"])


def test_mapping_example_is_in_the_docs() -> None:
    example = (REPO / "examples" / "hdf5_mapping.yaml").read_text()
    assert example.strip() in (REPO / "docs" / "hdf5_mapping.md").read_text()


def test_bad_files_fail_alone_and_are_named(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_aloha(src / "good_0.hdf5", 0)
    write_aloha(src / "good_1.hdf5", 1)
    write_aloha(src / "truncated.hdf5", 2)
    raw = (src / "truncated.hdf5").read_bytes()
    (src / "truncated.hdf5").write_bytes(raw[: len(raw) // 2])
    (src / "notes.hdf5").write_text("this is a text file\n")
    write_aloha(src / "no_action.hdf5", 3, action=False)
    write_aloha(src / "nan.hdf5", 4, nan=True)
    rc, quality = convert(src, tmp_path / "out", "aloha")
    assert rc == 3
    verdicts = {q["source_index"]: q for q in quality}
    assert {k: v["status"] for k, v in verdicts.items()} == {
        "good_0": "kept", "good_1": "kept", "truncated": "failed", "notes": "failed", "no_action": "failed",
        "nan": "failed"}  # fmt: skip
    for index in ("truncated", "notes"):
        assert "cannot be opened as HDF5" in verdicts[index]["message"]
    assert "missing '/action'" in verdicts["no_action"]["message"]
    assert "['observations']" in verdicts["no_action"]["message"]  # what exists at that level
    assert "'/observations/qpos' has 1 NaN/Inf values (first at step 5, dim 2)" in verdicts["nan"]["message"]
    for index, q in verdicts.items():
        assert q["source"].endswith(f"{index}.hdf5")
        if q["status"] == "failed":
            assert f"{index}.hdf5" in q["message"] and f"episode {index}" in q["message"]
    assert len(EpisodeStore(tmp_path / "out").episodes) == 2


def test_nothing_converted_exits_1(tmp_path: Path) -> None:
    write_aloha(tmp_path / "src" / "no_action.hdf5", 0, action=False)
    rc, quality = convert(tmp_path / "src", tmp_path / "out", "aloha")
    assert rc == 1 and [q["status"] for q in quality] == ["failed"]


def test_bad_images_are_named(tmp_path: Path) -> None:
    with h5py.File(tmp_path / "gray.hdf5", "w") as f:
        f.create_dataset("observations/qpos", data=walk(0))
        f.create_dataset("observations/images/top", data=np.zeros((T, H, W), np.uint16))
        f.create_dataset("action", data=walk(1))
    source = source_for(tmp_path / "gray.hdf5", "aloha")
    with pytest.raises(EpisodeError, match=r"'/observations/images/top': expected images \[T, H, W, 3\]"):
        source.load(source.episodes()[0])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("cameras: {front: rgb}\nstate: q\nfps: 10\nactions: a\n", "unknown key(s) ['actions']"),
        ("state: q\nfps: 10\n", "missing key 'cameras'"),
        ("cameras: {front: rgb}\nstate: 5\nfps: 10\n", "key 'state' must be a string or a list"),
        ("cameras: {front: rgb}\nstate: q\nfps: fast\n", "key 'fps' must be a number"),
        ("cameras: {front: rgb}\nstate: q\nfps: 10\nimage_layout: WHC\n", "HWC or CHW"),
        ("cameras: [front\n", "not valid YAML"),
    ],
)
def test_bad_mapping_is_a_usage_error(tmp_path: Path, text: str, message: str) -> None:
    write_aloha(tmp_path / "src" / "a.hdf5", 0)
    (tmp_path / "bad.yaml").write_text(text)
    with pytest.raises(UsageError, match="mapping .*bad.yaml") as err:
        source_for(tmp_path / "src", str(tmp_path / "bad.yaml"))
    assert message in str(err.value)
    assert convert(tmp_path / "src", tmp_path / "out", str(tmp_path / "bad.yaml"))[0] == 2


def test_bad_source_arguments_exit_2(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    write_aloha(tmp_path / "src" / "a.hdf5", 0)
    assert convert(tmp_path / "missing", tmp_path / "o1", "aloha")[0] == 2
    assert convert(tmp_path / "empty", tmp_path / "o2", "aloha")[0] == 2
    assert convert(tmp_path / "src", tmp_path / "o3", "lerobot")[0] == 2


def hostile_aloha(src: Path) -> dict[str, str]:
    """ALOHA files damaged as a hostile user would, beside good ones: name -> what its failure must say."""
    for i in range(5):
        write_aloha(src / f"episode_{i}.hdf5", i, compress=i == 3)
    with h5py.File(src / "episode_1.hdf5", "a") as f:  # declares 2^31 frames, stores none: must not hang
        del f["observations/images/cam_high"]
        f.create_dataset("observations/images/cam_high", shape=(2**31, H, W, 3), dtype=np.uint8)
    with h5py.File(src / "episode_2.hdf5", "a") as f:  # -1 wrapped to uint64
        del f["action"]
        f.create_dataset("action", data=np.full((T, 14), 2**64 - 1, np.uint64))
    with h5py.File(src / "episode_3.hdf5", "a") as f:  # one JPEG row cut short, as by a full disk
        rows = f["observations/images/cam_high"][:]
        end = np.flatnonzero(rows[7])[-1]
        rows[7, end - 8 :] = 0  # still decodes: the lost bytes come back grey
        f["observations/images/cam_high"][...] = rows
    return {"episode_1": "declares shape (2147483648, 32, 32, 3)", "episode_2": "beyond the int32 range",
            "episode_3": "step 7 is a truncated image"}  # fmt: skip


def test_hostile_aloha_files_fail_alone_fast(tmp_path: Path) -> None:
    expected = hostile_aloha(tmp_path / "src")
    rc, quality = convert(tmp_path / "src", tmp_path / "out", "aloha")
    status = {q["source_index"]: q for q in quality}
    assert rc == 3 and {k for k, q in status.items() if q["status"] == "kept"} == {"episode_0", "episode_4"}
    for name, message in expected.items():
        assert status[name]["status"] == "failed" and message in status[name]["message"], status[name]


def test_dangling_links_and_non_utf8_masks_in_robomimic(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    write_robomimic(tmp_path / "src" / "a.hdf5", ["demo_0", "demo_1", "demo_2"], {"train": ["demo_0", "demo_2"]})
    with h5py.File(tmp_path / "src" / "a.hdf5", "a") as f:
        f["data/demo_1/obs/robot0_eef_pos_link"] = h5py.SoftLink("/nowhere")  # a low-dim key, read as state
        f["data/demo_9"] = h5py.ExternalLink("missing.hdf5", "/x")  # listed, and fails alone
        del f["mask/train"]
        f.create_dataset("mask/train", data=np.array([b"demo_0", b"\xff\xfe", b"demo_2"], dtype="S"))
    rc, quality = convert(tmp_path / "src", tmp_path / "out", "robomimic")
    status = {q["source_index"]: q for q in quality}
    assert rc == 3 and [status[d]["status"] for d in ("demo_0", "demo_1", "demo_2")] == ["kept", "failed", "kept"]
    assert "dangling link" in status["demo_1"]["message"] and status["demo_9"]["status"] == "failed"
    assert status["demo_0"]["notes"] == {"mask_entries_skipped": {"mask/train": 1}}
    assert {e.source_index: e.split for e in EpisodeStore(tmp_path / "out").episodes} == {"demo_0": "train",
                                                                                         "demo_2": "train"}
