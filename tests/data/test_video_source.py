"""`robofm-convert video`: per-camera videos plus a telemetry table, aligned by timestamp, into a store.

Frame i of a test video has every pixel = 10 + 6 * i and telemetry columns are linear in time, so the
store's frames and state can be checked against the frame times exactly (up to codec rounding).
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import av
import numpy as np
import pandas as pd
import pytest

from robofm.data.convert import main
from robofm.data.sources import video
from robofm.data.store import EpisodeStore
from tests.video import add_stream, open_output

T0 = 100.0  # telemetry clock at its first row: video PTS 0 lands here


def write_video(path: Path, n: int, fps: int = 30, size: tuple[int, int] = (48, 64)) -> Path:
    """n frames of size (h, w); frame i is uniformly grey at 10 + 6 * i."""
    with open_output(path, movflags="+faststart") as container:
        stream = add_stream(container, "libx264", fps)
        stream.height, stream.width, stream.pix_fmt = *size, "yuv420p"
        for i in range(n):
            img = np.full((*size, 3), 10 + 6 * i, np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        container.mux(stream.encode())
    return path


def frame_index(frames: np.ndarray) -> np.ndarray:
    """Frame index encoded in each frame's mean grey level."""
    return np.round((frames.reshape(len(frames), -1).mean(axis=1) - 10) / 6).astype(int)


def state_at(t: np.ndarray, slope: float) -> np.ndarray:
    return np.stack([slope * (t - T0), 1.0 - 2.0 * (t - T0)], axis=1)


def action_at(t: np.ndarray, slope: float) -> np.ndarray:
    return 3.0 * slope * (t - T0)[:, None]


def telemetry(slope: float, rows: int = 100, rate: float = 100.0, with_action: bool = True) -> pd.DataFrame:
    t = T0 + np.arange(rows) / rate
    cols = {"timestamp": t, "state_x": state_at(t, slope)[:, 0], "state_y": state_at(t, slope)[:, 1]}
    if with_action:
        cols["action_x"] = action_at(t, slope)[:, 0]
    cols["gripper_temp"] = np.full(rows, 30.0)  # matched by neither prefix
    return pd.DataFrame(cols)


def episode_dir(root: Path, name: str, slope: float = 1.0, frames: int = 40, task: str | None = "pick the cube",
                table: str = "csv", df: pd.DataFrame | None = None, **kw) -> Path:  # fmt: skip
    folder = root / name
    folder.mkdir(parents=True)
    write_video(folder / "front.mp4", frames)
    df = telemetry(slope, **kw) if df is None else df
    if table == "csv":
        df.to_csv(folder / "telemetry.csv", index=False)
    elif table == "parquet":
        df.to_parquet(folder / "telemetry.parquet", index=False)
    if task is not None:
        (folder / "task.txt").write_text(task + "\n")
    return folder


def convert(src: Path, out: Path, *extra: str) -> tuple[int, dict]:
    # the fixture's frames are uniform on purpose (a value per frame), which the blank filter would drop
    rc = main(["video", str(src), "--out", str(out), "--resolution", "native", "--keep", "blank", *extra])
    quality = json.loads((out / "quality.json").read_text())
    return rc, {q["source_index"]: q for q in quality}


def test_frames_and_telemetry_align_by_timestamp(tmp_path):
    src = tmp_path / "src"
    episode_dir(src, "ep0", slope=1.0)
    episode_dir(src, "ep1", slope=-0.5, task="open the drawer")
    rc, quality = convert(src, tmp_path / "out")
    assert rc == 0, quality
    store = EpisodeStore(tmp_path / "out")
    assert store.fps == pytest.approx(30.0)
    emb = store.manifest["embodiments"]["default"]
    assert emb["state_names"] == ["state_x", "state_y"] and emb["action_names"] == ["action_x"]
    for info, slope in zip(store.episodes, (1.0, -0.5), strict=True):
        ep = store.read_episode(info.id)
        # telemetry spans 0.99 s and the video 1.3 s: frames 0..29 (t = i / 30) overlap
        assert ep.length == 30
        np.testing.assert_allclose(ep.timestamp, T0 + np.arange(30) / 30, atol=1e-6)
        np.testing.assert_array_equal(frame_index(ep.frames["front"]), np.arange(30))
        np.testing.assert_allclose(ep.state, state_at(ep.timestamp, slope), atol=1e-4)
        np.testing.assert_allclose(ep.action, action_at(ep.timestamp, slope), atol=1e-4)
        assert ep.frames["front"].shape[1:] == (48, 64, 3)
    assert [store.info(e.id).task for e in store.episodes] == ["pick the cube", "open the drawer"]
    assert {q["status"] for q in quality.values()} == {"kept"}
    assert quality["ep1"]["source"] == str(src / "ep1")
    # the 10 video frames past the telemetry's end (40 decoded, 30 kept) are not stored, and the verdict says so
    assert quality["ep0"]["notes"] == {"frames_outside_telemetry": 10}


def test_parquet_column_map_task_flag_and_offset(tmp_path):
    src = tmp_path / "src"
    for i, slope in enumerate((1.0, 2.0)):
        t = T0 + np.arange(100) / 50.0  # 50 Hz over 1.98 s: the whole video shifted by 0.5 s lies inside
        df = pd.DataFrame({"t": t, "cmd": 4.0 * slope * (t - T0), "joint_a": slope * (t - T0), "joint_b": -(t - T0)})
        episode_dir(src, f"ep{i}", slope, task=None, table="parquet", df=df)
    mapping = tmp_path / "columns.yaml"
    mapping.write_text("timestamp: t\nstate: [joint_b, joint_a]\naction: [cmd]\n")
    rc, quality = convert(src, tmp_path / "out", "--columns", str(mapping), "--task", "stack",
                          "--video-time-offset", "0.5", "--resolution", "32x32")  # fmt: skip
    assert rc == 0, quality
    store = EpisodeStore(tmp_path / "out")
    assert store.manifest["embodiments"]["default"]["state_names"] == ["joint_b", "joint_a"]
    for info, slope in zip(store.episodes, (1.0, 2.0), strict=True):
        ep = store.read_episode(info.id)
        assert info.task == "stack" and ep.length == 40
        np.testing.assert_allclose(ep.timestamp, T0 + 0.5 + np.arange(40) / 30, atol=1e-6)
        dt = ep.timestamp - T0
        np.testing.assert_allclose(ep.state, np.stack([-dt, slope * dt], axis=1), atol=1e-4)
        np.testing.assert_allclose(ep.action[:, 0], 4.0 * slope * dt, atol=1e-4)
        assert ep.frames["front"].shape[1:] == (32, 32, 3)
        np.testing.assert_array_equal(frame_index(ep.frames["front"]), np.arange(40))


def test_task_txt_wins_over_task_flag(tmp_path):
    src = tmp_path / "src"
    episode_dir(src, "a", 1.0, task="from the file")
    episode_dir(src, "b", 2.0, task=None)
    rc, _ = convert(src, tmp_path / "out", "--task", "from the flag")
    assert rc == 0
    store = EpisodeStore(tmp_path / "out")
    assert {e.source_index: e.task for e in store.episodes} == {"a": "from the file", "b": "from the flag"}


def test_action_free_episode_with_two_cameras(tmp_path):
    src = tmp_path / "src"
    for i, slope in enumerate((1.0, 3.0)):
        folder = episode_dir(src, f"ep{i}", slope, with_action=False)
        write_video(folder / "wrist.mp4", 30, fps=20, size=(32, 40))  # 1.45 s at 20 fps covers the telemetry
    rc, quality = convert(src, tmp_path / "out")
    assert rc == 0, quality
    store = EpisodeStore(tmp_path / "out")
    assert store.cameras == ["front", "wrist"]
    for info, slope in zip(store.episodes, (1.0, 3.0), strict=True):
        ep = store.read_episode(info.id)
        assert ep.action is None and not info.has_action
        i = np.arange(30)
        np.testing.assert_array_equal(frame_index(ep.frames["front"]), i)
        np.testing.assert_array_equal(frame_index(ep.frames["wrist"]), np.round(i * 20 / 30).astype(int))
        assert ep.frames["wrist"].shape[1:] == (32, 40, 3)
        np.testing.assert_allclose(ep.state, state_at(ep.timestamp, slope), atol=1e-4)


def bad_episodes(src: Path) -> dict[str, tuple[str, str]]:
    """Write one broken episode per kind of bad input; return name -> (file the error names, words it says)."""
    cases = {}
    folder = episode_dir(src, "garbage_video", 1.5)
    (folder / "front.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    cases["garbage_video"] = ("front.mp4", "video")
    folder = episode_dir(src, "truncated_video", 1.6)
    data = (folder / "front.mp4").read_bytes()
    (folder / "front.mp4").write_bytes(data[: len(data) * 6 // 10])
    cases["truncated_video"] = ("front.mp4", "video")
    df = telemetry(1.7)
    df.loc[17, "state_y"] = np.nan
    episode_dir(src, "nan_state", df=df)
    cases["nan_state"] = ("telemetry.csv", "column 'state_y' has 1 NaN/Inf value(s), the first at row 17")
    df = telemetry(1.8)
    df.loc[50, "timestamp"] = T0 + 0.2
    episode_dir(src, "backwards", df=df)
    cases["backwards"] = ("telemetry.csv", "timestamp goes backwards at row 50")
    folder = episode_dir(src, "no_table", 1.9)
    (folder / "telemetry.csv").unlink()
    cases["no_table"] = ("no_table", "telemetry table is missing")
    df = telemetry(2.0)
    df["state_x"] = df["state_x"].astype(object)
    df.loc[3, "state_x"] = "oops"
    episode_dir(src, "text_value", df=df)
    cases["text_value"] = ("telemetry.csv", "non-numeric value 'oops' at row 3")
    episode_dir(src, "no_state", df=telemetry(2.1).rename(columns={"state_x": "x", "state_y": "y"}))
    cases["no_state"] = ("telemetry.csv", "no state columns")
    folder = episode_dir(src, "no_video", 2.2)
    (folder / "front.mp4").unlink()
    cases["no_video"] = ("no_video", "no video file")
    episode_dir(src, "no_task", 2.3, task=None)
    cases["no_task"] = ("no_task", "no task")
    return cases


def test_bad_episodes_fail_with_file_and_reason_and_others_convert(tmp_path):
    src = tmp_path / "src"
    cases = bad_episodes(src)
    episode_dir(src, "good", 1.0)
    rc, quality = convert(src, tmp_path / "out")
    assert rc == 3
    assert quality["good"]["status"] == "kept"
    for name, (file, words) in cases.items():
        q = quality[name]
        assert q["status"] == "failed", (name, q)
        assert f"file {src / name}" in q["message"] and file in q["message"], q["message"]
        assert f"episode {name}" in q["message"] and words in q["message"], q["message"]
    assert len(EpisodeStore(tmp_path / "out").episodes) == 1


def test_exit_1_when_nothing_converts(tmp_path):
    src = tmp_path / "src"
    folder = episode_dir(src, "only", 1.0)
    (folder / "front.mp4").write_bytes(b"\x00" * 100)
    rc, quality = convert(src, tmp_path / "out")
    assert rc == 1
    assert quality["only"]["status"] == "failed" and "front.mp4" in quality["only"]["message"]


def test_no_time_overlap_is_reported(tmp_path):
    src = tmp_path / "src"
    episode_dir(src, "late", 1.0)
    rc, quality = convert(src, tmp_path / "out", "--video-time-offset", "5")
    assert rc == 1
    assert "no time overlap" in quality["late"]["message"] and "telemetry.csv" in quality["late"]["message"]


def test_usage_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    assert main(["video", str(tmp_path / "missing"), "--out", str(tmp_path / "o1")]) == 2
    assert main(["video", str(tmp_path / "empty"), "--out", str(tmp_path / "o2")]) == 2
    episode_dir(tmp_path / "src", "ep", 1.0)
    bad_map = tmp_path / "map.yaml"
    bad_map.write_text("state: [a]\nvelocity: [b]\n")
    assert main(["video", str(tmp_path / "src"), "--out", str(tmp_path / "o3"), "--columns", str(bad_map)]) == 2


def test_source_is_picklable_and_lists_folders_sorted(tmp_path):
    for name in ("b", "a", "c"):
        episode_dir(tmp_path, name, 1.0)
    source = video.VideoSource(tmp_path)
    assert source.fps == pytest.approx(30.0)
    clone = pickle.loads(pickle.dumps(source))
    assert [r.index for r in clone.episodes()] == ["a", "b", "c"]
    assert clone.load(clone.episodes()[0]).length == 30


def test_reader_goes_on_across_spans_and_seeks_back(tmp_path):
    """One reader over the spans of consecutive episodes (as in a LeRobot v3 file), then back and far ahead:
    each read returns exactly the frames presented in its span, whether it decodes on or seeks."""
    path = write_video(tmp_path / "many.mp4", 40)
    spans = [(0.0, 0.31), (0.32, 0.64), (0.65, 0.99), (0.1, 0.2), (1.2, 1.3), (0.5, 0.6)]
    with video.VideoReader(path, "ep") as reader:
        for first, last in spans:
            frames, times = reader.read("ep", span=(first, last))
            expected = np.arange(40)[(np.arange(40) / 30 >= first) & (np.arange(40) / 30 <= last)]
            np.testing.assert_array_equal(frame_index(frames), expected)
            np.testing.assert_allclose(times, expected / 30, atol=1e-6)
        whole, _ = reader.read("ep")
    np.testing.assert_array_equal(frame_index(whole), np.arange(40))


@pytest.mark.parametrize("size", [None, (32, 32), (16, 24)])
def test_decoded_frames_equal_pyav_across_chunks_at_any_size(tmp_path, size):
    """Longer than a chunk (FRAME_CHUNK): frames are decoded into buffers, resized a chunk at a time, and none is
    overwritten by the next chunk, also when the target size is the source's (no resize: the buffer itself)."""
    from robofm.data.episode import FRAME_CHUNK, resize_frames
    from robofm.data.sources.video import decode_video
    from tests.data.fuzzing import frames

    n = 2 * FRAME_CHUNK + 22
    path = tmp_path / "long.mp4"
    with open_output(path) as out:
        stream = add_stream(out, "libx264", 30)
        stream.height = stream.width = 32
        for image in frames(3, n):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        out.mux(stream.encode())
    with av.open(str(path)) as c:
        want = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
    got, pts = decode_video(path, "e", size)
    assert len(pts) == n
    np.testing.assert_array_equal(got, want if size is None else resize_frames(want, size))
