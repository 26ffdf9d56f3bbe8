"""Hostile video input: damaged, truncated or gappy videos and telemetry in another time unit fail the episode
(or, for the unit, are converted with a note) instead of reaching the store as garbage.

The damaged files are built here: seeded byte flips inside the packets in the middle of a small textured video
(a flat one hides damage), and truncation to 60% of the file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pandas as pd
import pytest

from robofm.data.convert import main
from robofm.data.sources import video
from robofm.errors import EpisodeError
from tests.video import add_stream, open_output

FPS, FRAMES = 30, 60  # 2 s of video
ROOT = Path(__file__).resolve().parents[2]


def write_textured(path: Path, codec: str, n: int = FRAMES, size: tuple[int, int] = (32, 32), skip: range = range(0),
                   options: dict | None = None) -> Path:  # fmt: skip
    """n frames of noise over a grey ramp (frame i at 10 + 3 * i), at FPS; frames in `skip` are left out, so their
    presentation times are missing from the stream."""
    rng = np.random.default_rng(0)
    with open_output(path) as container:
        stream = add_stream(container, codec, FPS, options)
        stream.height, stream.width, stream.pix_fmt = *size, "yuv420p"
        for i in range(n):
            img = np.clip(10 + 3 * i + rng.integers(-20, 20, (*size, 3)), 0, 255).astype(np.uint8)
            if i in skip:
                continue
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, FPS)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def flip_bytes(path: Path, seed: int, flips: int = 1) -> Path:
    """Flip `flips` bytes at seeded offsets inside the packets of the middle half of the video, past each packet's
    first 8 bytes (its length field and NAL header), so the container stays readable and the damage is in the
    coded pictures."""
    with av.open(str(path)) as container:
        packets = [(p.pos, p.size) for p in container.demux(container.streams.video[0]) if p.size and p.pos >= 0]
    middle = packets[len(packets) // 4 : 3 * len(packets) // 4]
    rng = np.random.default_rng(seed)
    data = bytearray(path.read_bytes())
    for _ in range(flips):
        pos, size = middle[int(rng.integers(len(middle)))]
        data[pos + int(rng.integers(min(8, size - 1), size))] ^= int(rng.integers(1, 256))
    path.write_bytes(bytes(data))
    return path


def truncate(path: Path, fraction: float = 0.6) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


def has_encoder(name: str) -> bool:
    try:
        av.codec.Codec(name, "w")
    except (av.codec.codec.UnknownCodecError, ValueError):
        return False
    return True


def decode_error(path: Path) -> str | None:
    """The problem decode_video reports for a file, or None if it decodes cleanly."""
    try:
        video.decode_video(path, "ep")
    except EpisodeError as e:
        return e.problem
    return None


CLEAN = [("libx264", "mp4"), ("libx264", "mkv"), ("libx264", "ts"), ("libvpx-vp9", "webm"), ("mpeg4", "mp4"),
         ("libsvtav1", "mp4")]  # fmt: skip


@pytest.mark.parametrize(("codec", "ext"), CLEAN)
def test_clean_videos_of_every_container_decode_without_alarm(tmp_path, codec, ext):
    if not has_encoder(codec):
        pytest.skip(f"no {codec} encoder")
    path = write_textured(tmp_path / f"clean.{ext}", codec)
    frames, times = video.decode_video(path, "ep")
    assert len(frames) == FRAMES
    np.testing.assert_allclose(times - times[0], np.arange(FRAMES) / FPS, atol=1e-3)


SEEDS = range(20)  # flips per codec; most are noticed for mpeg4, about a third for h264 and half for AV1


def noticed(path: Path) -> str | None:
    """What a plain FFmpeg decode of the file, frame by frame, notices: the words robofm must report for it, or
    None. Decoded with robofm's thread settings (one thread, dav1d's fixed pool), which make the answer the same on
    every machine."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        video._fix_decoder_threads(stream.codec_context)
        corrupt, n = [], 0
        try:
            for frame in container.decode(stream):
                if frame.is_corrupt:
                    corrupt.append(n)
                n += 1
        except (av.FFmpegError, OSError, EOFError, ValueError):
            return f"cannot decode the video after {n} frames"
    return f"decoder reported {len(corrupt)} damaged frame(s) (first at frame {corrupt[0]}" if corrupt else None


@pytest.fixture(scope="module")
def clean_videos(tmp_path_factory) -> Path:
    """One clean textured video per codec of CLEAN, written by a fresh Python process. In the long-lived test
    process, one full-suite run wrote h264 bytes in which no seeded flip was noticed; a fresh process has always
    written the same bytes."""
    folder = tmp_path_factory.mktemp("clean")
    codecs = [c for c in CLEAN if has_encoder(c[0])]
    script = ("import sys; from pathlib import Path; from tests.data.test_video_damage import write_textured\n"
              f"for codec, ext in {codecs!r}: write_textured(Path(sys.argv[1]) / f'{{codec}}.{{ext}}', codec)")
    subprocess.run([sys.executable, "-c", script, str(folder)], check=True, timeout=300, cwd=ROOT,
                   env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    return folder


@pytest.mark.parametrize(("codec", "ext"), CLEAN)
def test_a_flipped_byte_the_decoder_notices_fails_the_video(tmp_path, clean_videos, codec, ext):
    """Each seeded flip (tests/video.py writes the same bytes on every machine) that the decoder notices, by
    concealing a frame it marks corrupt or by failing, must fail the video in the decoder's words, at the frame
    where it noticed. A flip it does not notice is not judged here (the count and time checks may still catch it).
    If none of the seeds is noticed the test proves nothing, and fails."""
    if not has_encoder(codec):
        pytest.skip(f"no {codec} encoder")
    clean = clean_videos / f"{codec}.{ext}"
    judged = 0
    for seed in SEEDS:
        damaged = tmp_path / f"flip{seed}.{ext}"
        damaged.write_bytes(clean.read_bytes())
        words = noticed(flip_bytes(damaged, seed))
        if words is None:
            continue
        judged += 1
        problem = decode_error(damaged)
        assert problem is not None and words in problem and "corrupt" in problem, (seed, words, problem)
    assert judged, f"none of {len(SEEDS)} seeded flips was noticed by the {codec} decoder: the test proves nothing"


@pytest.mark.parametrize(("codec", "ext"), [("libx264", "mkv"), ("libvpx-vp9", "webm")])
def test_truncated_mkv_and_webm_fail_against_their_declared_duration(tmp_path, codec, ext):
    problem = decode_error(truncate(write_textured(tmp_path / f"v.{ext}", codec)))
    assert problem is not None and "the header declares 2.000 s at 30 fps (~60 frames): truncated" in problem, problem


def test_a_run_of_missing_frames_fails(tmp_path):
    problem = decode_error(write_textured(tmp_path / "gap.mp4", "libx264", skip=range(20, 26)))
    assert problem is not None and "gap(s) in the frame times" in problem and "~6 frames missing" in problem, problem
    assert decode_error(write_textured(tmp_path / "drop.mp4", "libx264", skip=range(20, 22))) is None  # 2: tolerated


# --------------------------------------------------------------------------- through the converter


def episode(root: Path, name: str, video_file: Path | None = None, seconds: float = FRAMES / FPS, unit: float = 1.0,
            codec: str = "libx264", ext: str = "mp4") -> Path:  # fmt: skip
    """An episode folder: a textured video (or a copy of video_file) and 100 Hz telemetry over `seconds`, whose
    timestamps are written in 1/unit seconds."""
    folder = root / name
    folder.mkdir(parents=True)
    target = folder / f"front.{ext if video_file is None else video_file.suffix[1:]}"
    if video_file is None:
        write_textured(target, codec)
    else:
        target.write_bytes(video_file.read_bytes())
    t = np.arange(int(seconds * 100)) / 100
    pd.DataFrame({"timestamp": (50.0 + t) * unit, "state_x": t}).to_csv(folder / "telemetry.csv", index=False)
    (folder / "task.txt").write_text("pick\n")
    return folder


def convert(src: Path, out: Path, *extra: str) -> tuple[int, dict]:
    rc = main(["video", str(src), "--out", str(out), "--resolution", "native", "--keep", "blank,near_duplicate", *extra])
    return rc, {q["source_index"]: q for q in json.loads((out / "quality.json").read_text())}


def test_damaged_and_truncated_videos_fail_their_episode_and_clean_ones_convert(tmp_path):
    src = tmp_path / "src"
    episode(src, "clean_mp4")
    episode(src, "clean_webm", codec="libvpx-vp9", ext="webm")
    flip_bytes(episode(src, "flipped", codec="mpeg4") / "front.mp4", 0)
    truncate(episode(src, "truncated_ts", ext="ts") / "front.ts")
    truncate(episode(src, "truncated_mkv", ext="mkv") / "front.mkv")
    rc, quality = convert(src, tmp_path / "out")
    assert rc == 3
    assert quality["clean_mp4"]["status"] == quality["clean_webm"]["status"] == "kept"
    for name, words in [("flipped", "damaged frame"), ("truncated_ts", "before the telemetry"),
                        ("truncated_mkv", "truncated")]:  # fmt: skip
        q = quality[name]
        assert q["status"] == "failed" and words in q["message"] and "front." in q["message"], q


@pytest.mark.parametrize(("unit", "factor"), [("ms", 1e3), ("us", 1e6), ("ns", 1e9)])
def test_telemetry_in_another_unit_is_converted_with_a_note(tmp_path, unit, factor):
    episode(tmp_path / "src", "ep", unit=factor)
    rc, quality = convert(tmp_path / "src", tmp_path / "out")
    assert rc == 0, quality
    assert quality["ep"]["notes"]["timestamp_unit"].startswith(f"{unit} (auto: the timestamps span")
    from robofm.data.store import EpisodeStore

    store = EpisodeStore(tmp_path / "out")
    ep = store.read_episode(store.episodes[0].id)
    assert ep.length == 60
    np.testing.assert_allclose(ep.timestamp - ep.timestamp[0], np.arange(60) / FPS, atol=1e-3)
    np.testing.assert_allclose(ep.state[:, 0], ep.timestamp - 50.0, atol=1e-3)  # state aligned with the frames


def test_timestamp_unit_option_overrides_the_guess(tmp_path):
    episode(tmp_path / "src", "ep", unit=1e3)
    rc, quality = convert(tmp_path / "src", tmp_path / "s", "--timestamp-unit", "s")
    assert rc == 1 and "--timestamp-unit" in quality["ep"]["message"], quality  # ms read as s: video ends far too soon
    rc, quality = convert(tmp_path / "src", tmp_path / "ms", "--timestamp-unit", "ms")
    assert rc == 0 and "notes" not in quality["ep"], quality


def test_seconds_are_left_alone(tmp_path):
    episode(tmp_path / "src", "ep")
    rc, quality = convert(tmp_path / "src", tmp_path / "out")
    assert rc == 0 and "notes" not in quality["ep"], quality
