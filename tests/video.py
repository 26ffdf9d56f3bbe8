"""Test videos that are the same bytes on every machine.

Encoders pick their thread count from the CPUs the process may use, and a multi-threaded encoder writes another
bitstream (x264 splits its lookahead and slices, SVT-AV1 its tiles and segments, libvpx its rows, mpeg4 its slices).
A seeded byte flip then lands on another byte, and whether a decoder notices it changes with the machine (issue 26).
So every test video is encoded on one thread, and muxed bit-exact (no encoder string, no random Matroska segment
id). tests/data/test_video_bytes.py checks that a process pinned to one CPU writes the same bytes as one free to use
them all.
"""

from __future__ import annotations

from pathlib import Path

import av

ENCODER_THREADS = 1  # also lerobot's encoder_threads in the LeRobot fixtures
# each encoder's own thread option, beside the codec context's thread_count, which not every wrapper reads
_THREAD_OPTIONS = {
    "libx264": {"threads": "1"},
    "libsvtav1": {"svtav1-params": "lp=1"},
    "libvpx-vp9": {"row-mt": "0"},
    "libvpx": {},
}


def open_output(path: Path, **options: str) -> av.container.OutputContainer:
    """A container written bit-exact (no muxer version string, no random ids), with the muxer's other options."""
    return av.open(str(path), "w", container_options={"fflags": "+bitexact", **options})


def add_stream(container: av.container.OutputContainer, codec: str, rate: int, options: dict | None = None):
    """A video stream whose encoder runs on one thread and writes no version string."""
    encoder = av.codec.Codec(codec, "w").name  # "h264" is libx264
    opts = {"flags": "+bitexact", **_THREAD_OPTIONS.get(encoder, {}), **(options or {})}
    stream = container.add_stream(codec, rate=rate, options=opts)
    stream.codec_context.thread_count = ENCODER_THREADS
    stream.codec_context.thread_type = "SLICE"
    return stream
