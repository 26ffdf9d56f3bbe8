"""`robofm-convert video`: one folder per episode, holding one video per camera and a telemetry table.

    SRC/
      episode-000/
        front.mp4         one video per camera (any container PyAV reads); the camera is the file stem
        wrist.mp4
        telemetry.csv     or .parquet: a `timestamp` column (seconds; see --timestamp-unit) plus state/action columns
        task.txt          optional; else --task
      episode-001/ ...

Frames and telemetry are aligned on the telemetry clock: a frame with presentation time PTS (seconds)
happens at `first telemetry timestamp + PTS + --video-time-offset`. The episode's timeline is the first
camera's frames (cameras sorted by name) inside the time range that the telemetry and every camera cover;
state and action are linearly interpolated at those times and every other camera gives its nearest frame.
Episode timestamps are on the telemetry clock, so `state[i] == telemetry(timestamp[i])`.

Damage fails the episode rather than slipping into the store: frames the decoder reports as concealed, fewer
frames than the header lists or its duration implies, gaps in the frame times, and a video that stops well
before its telemetry (truncated). Timestamps in ms, us or ns are recognised against the video's duration
(--timestamp-unit auto), converted, and noted in quality.json.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import av
import numpy as np
import pandas as pd
import yaml

from robofm.data.episode import FRAME_CHUNK, Episode, nearest_index, resize_chunks
from robofm.data.sources.base import EpisodeRef, number
from robofm.errors import EpisodeError, UsageError

HELP = "folders of per-camera videos plus a CSV/Parquet telemetry table (timestamp, state, action), one per episode"

VIDEO_SUFFIXES = frozenset(".mp4 .m4v .mov .mkv .webm .avi .mpg .mpeg .ts .flv .wmv .ogv .h264 .hevc".split())
TABLE_SUFFIXES = frozenset(".csv .parquet .pq".split())
TASK_FILE = "task.txt"
MAX_BUFFER = 4096  # frames: the most a video read allocates before it has decoded them
TIME_EPS = 1e-6  # seconds: frames this close to the edge of the telemetry range count as inside it
MISSING_FRAMES = 2  # a video may lack this many frames against its header, or between two frames, and pass
SHORT_FRACTION = 0.05  # ... or this fraction of the frames its header's duration implies
TRUNCATED_FRACTION = 0.25  # a camera may end this fraction of the telemetry's span before the telemetry does
TIME_UNITS = {"s": 1.0, "ms": 1e3, "us": 1e6, "ns": 1e9}  # timestamp units: units per second
UNIT_SLACK = 30.0  # auto unit: telemetry span / video span within this factor of 1e3, 1e6 or 1e9
MIN_UNIT_STEP = 0.1  # auto unit: ... and a median telemetry step of at least this many units


@dataclass(frozen=True)
class ColumnSpec:
    """Which telemetry columns hold the timestamp, the state and the action.

    `state`/`action` list explicit column names (from --columns); when `state` is None, columns are chosen by
    prefix, in table order, and a column matching both prefixes goes to the longer one.
    """

    timestamp: str = "timestamp"
    state: tuple[str, ...] | None = None
    action: tuple[str, ...] = ()
    state_prefix: str = "state"
    action_prefix: str = "action"

    def select(self, columns: list[str], file: Path, episode: str) -> tuple[list[str], list[str]]:
        """Return (state columns, action columns); raise EpisodeError if named columns are missing or no state."""
        if self.state is not None:
            missing = [c for c in (*self.state, *self.action) if c not in columns]
            if missing:
                raise EpisodeError(f"columns {missing} named in --columns are missing; the table has {columns}",
                                   file=str(file), episode=episode)  # fmt: skip
            return list(self.state), list(self.action)
        state, action = [], []
        for c in columns:
            if c == self.timestamp:
                continue
            matches = [(len(p), role) for role, p in ((state, self.state_prefix), (action, self.action_prefix))
                       if c.startswith(p)]  # fmt: skip
            if matches:
                max(matches, key=lambda m: m[0])[1].append(c)
        if not state:
            raise EpisodeError(f"no state columns: none starts with {self.state_prefix!r} (columns: {columns}); "
                               "use --state-prefix or --columns", file=str(file), episode=episode)  # fmt: skip
        return state, action


@dataclass
class Telemetry:
    """One telemetry table: timestamp float64 [N] strictly increasing; state [N, Ds]; action [N, Da] or None."""

    timestamp: np.ndarray
    state: np.ndarray
    action: np.ndarray | None
    state_names: list[str]
    action_names: list[str]


@dataclass
class VideoSource:
    """Episodes are the sub-folders of `root`, sorted by name. Picklable: it holds only paths and options."""

    root: Path
    columns: ColumnSpec = ColumnSpec()
    task: str | None = None
    telemetry: str | None = None  # table file name inside each episode folder; None finds it
    video_time_offset: float = 0.0
    fps: float | None = None
    timestamp_unit: str = "auto"  # of the telemetry's timestamp column: a key of TIME_UNITS, or auto (see load)

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        if self.fps is None:
            self.fps = self._native_fps()

    def __str__(self) -> str:
        return f"video {self.root}"

    def episodes(self) -> list[EpisodeRef]:
        """One reference per episode folder; UsageError if `root` is not a folder of episode folders."""
        if not self.root.is_dir():
            raise UsageError(f"{self.root} is not a folder: `robofm-convert video` reads a folder with one "
                             "sub-folder per episode")  # fmt: skip
        folders = sorted((p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")),
                         key=lambda p: p.name)  # fmt: skip
        if not folders:
            videos = any(p.suffix.lower() in VIDEO_SUFFIXES for p in self.root.iterdir())
            hint = " (it holds videos itself: pass its parent folder)" if videos else ""
            raise UsageError(f"{self.root} has no episode sub-folders{hint}")
        return [EpisodeRef(str(p), p.name) for p in folders]

    def _native_fps(self) -> float | None:
        """Average frame rate of the first episode's first video (of the next episode's if that one is broken)."""
        for ref in self.episodes():
            try:
                return video_rate(next(iter(_videos(Path(ref.source)).values())), ref.index)
            except (EpisodeError, StopIteration):
                continue  # that episode will fail when loaded; the rate comes from the next episode
        return None

    def load(self, ref: EpisodeRef, frame_size: tuple[int, int] | None = None, resize_mode: str = "crop") -> Episode:
        """Decode one episode folder; raise EpisodeError naming the file and the episode on bad input."""
        folder, name = Path(ref.source), ref.index
        videos = _videos(folder)
        if not videos:
            raise EpisodeError(f"no video file ({', '.join(sorted(VIDEO_SUFFIXES))}) in the episode folder",
                               file=str(folder), episode=name)  # fmt: skip
        task = self._task(folder, name)
        table = self._table_path(folder, name)
        tel = read_telemetry(table, self.columns, name)
        decoded = {cam: decode_video(path, name, frame_size, resize_mode) for cam, path in videos.items()}
        notes = {}
        unit = self.timestamp_unit
        if unit == "auto":
            unit, why = guess_time_unit(tel.timestamp, [pts for _, pts in decoded.values()])
            if unit != "s":
                notes["timestamp_unit"] = f"{unit} (auto: {why}; --timestamp-unit sets it)"
        tel.timestamp = tel.timestamp / TIME_UNITS[unit]
        start = tel.timestamp[0] + self.video_time_offset  # video PTS 0 on the telemetry clock
        for cam, (_, pts) in decoded.items():
            check_coverage(tel.timestamp, start + pts, videos[cam], name)
        t, frames = align(tel.timestamp, decoded, start)
        if len(t) == 0:
            spans = "; ".join(f"{cam} [{start + p[0]:.3f}, {start + p[-1]:.3f}]" for cam, (_, p) in decoded.items())
            raise EpisodeError(
                f"no time overlap between video and telemetry: telemetry covers [{tel.timestamp[0]:.3f}, "
                f"{tel.timestamp[-1]:.3f}] s; on the telemetry clock (PTS 0 = first telemetry timestamp + "
                f"--video-time-offset {self.video_time_offset:g} s) the videos cover {spans}",
                file=str(table), episode=name,
            )  # fmt: skip
        trimmed = len(next(iter(decoded.values()))[1]) - len(t)
        if trimmed:
            notes["frames_outside_telemetry"] = trimmed
        return Episode(
            extra=notes,
            frames=frames,
            state=_interp(t, tel.timestamp, tel.state),
            action=None if tel.action is None else _interp(t, tel.timestamp, tel.action),
            timestamp=t,
            task=task,
            source=str(folder),
            source_index=name,
            state_names=tel.state_names,
            action_names=tel.action_names or None,
        )

    def _task(self, folder: Path, name: str) -> str:
        path = folder / TASK_FILE
        if path.is_file():
            try:
                text = path.read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as e:
                raise EpisodeError(f"cannot read the task: {e}", file=str(path), episode=name) from e
            if text:
                return text
        if self.task:
            return self.task
        raise EpisodeError(f"no task: {TASK_FILE} is missing or empty and --task was not given",
                           file=str(folder), episode=name)  # fmt: skip

    def _table_path(self, folder: Path, name: str) -> Path:
        if self.telemetry:
            path = folder / self.telemetry
            if not path.is_file():
                raise EpisodeError(f"telemetry table {self.telemetry} is missing", file=str(path), episode=name)
            return path
        tables = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in TABLE_SUFFIXES)
        named = [p for p in tables if p.stem == "telemetry"]
        if len(named) == 1 or len(tables) == 1:
            return (named or tables)[0]
        if not tables:
            raise EpisodeError("telemetry table is missing (expected telemetry.csv or telemetry.parquet)",
                               file=str(folder), episode=name)  # fmt: skip
        raise EpisodeError(f"several telemetry tables {[p.name for p in named or tables]}: choose one with "
                           "--telemetry", file=str(folder), episode=name)  # fmt: skip


def _videos(folder: Path) -> dict[str, Path]:
    """Camera name -> video file, sorted by camera name."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)
    out: dict[str, Path] = {}
    for p in files:
        if p.stem in out:
            raise EpisodeError(f"two videos for camera {p.stem!r}: {out[p.stem].name} and {p.name}",
                               file=str(folder), episode=folder.name)  # fmt: skip
        out[p.stem] = p
    return dict(sorted(out.items()))


def align(
    telemetry_time: np.ndarray, decoded: dict[str, tuple[np.ndarray, np.ndarray]], start: float
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The episode timeline and its frames, from cameras decoded as camera -> (frames [N, H, W, 3], PTS [N] s).

    The timeline is the first camera's frame times (start + PTS) that lie in the telemetry's time range and
    within half a frame of every other camera's range; other cameras give their nearest frame. Returns
    (times [T], camera -> frames [T, H, W, 3]); T is 0 when nothing overlaps.
    """
    (first, (frames0, pts0)), *others = decoded.items()
    times = start + pts0
    lo, hi = telemetry_time[0], telemetry_time[-1]
    for _, (_, pts) in others:
        half = 0.5 * float(np.median(np.diff(pts))) if len(pts) > 1 else 0.0
        lo, hi = max(lo, start + pts[0] - half), min(hi, start + pts[-1] + half)
    i0, i1 = np.searchsorted(times, lo - TIME_EPS, "left"), np.searchsorted(times, hi + TIME_EPS, "right")
    t = times[i0:i1]
    out = {first: frames0[i0:i1]}
    for cam, (frames, pts) in others:
        out[cam] = frames[nearest_index(start + pts, t)]
    return t, out


def guess_time_unit(telemetry_time: np.ndarray, video_times: list[np.ndarray]) -> tuple[str, str]:
    """The unit of a timestamp column read as seconds: "s" unless the telemetry spans ~1e3/1e6/1e9 times as long
    as the longest video (within a factor UNIT_SLACK) and its median step is at least MIN_UNIT_STEP units, which
    no real telemetry does in seconds. Returns (unit, the evidence in words)."""
    video_span = max((float(p[-1] - p[0]) + float(np.median(np.diff(p))) for p in video_times if len(p) > 1),
                     default=0.0)  # fmt: skip
    span = float(telemetry_time[-1] - telemetry_time[0])
    if video_span <= 0 or len(telemetry_time) < 2 or float(np.median(np.diff(telemetry_time))) < MIN_UNIT_STEP:
        return "s", ""
    ratio = span / video_span
    for unit, factor in TIME_UNITS.items():
        if factor > 1 and factor / UNIT_SLACK <= ratio <= factor * UNIT_SLACK:
            return unit, f"the timestamps span {span:.6g} units against {video_span:.3f} s of video"
    return "s", ""


def check_coverage(telemetry_time: np.ndarray, frame_time: np.ndarray, path: Path, episode: str) -> None:
    """EpisodeError when a camera's frames (on the telemetry clock) stop well before the telemetry does: more than
    TRUNCATED_FRACTION of the telemetry after the video's start has no frame, as when the file was cut short (an
    mkv, webm or ts declares no frame count to check that against)."""
    period = float(np.median(np.diff(frame_time))) if len(frame_time) > 1 else 0.0
    video_end, tel_end = frame_time[-1] + period, telemetry_time[-1]
    covered = tel_end - max(telemetry_time[0], frame_time[0])
    if covered > 0 and tel_end - video_end > max(TRUNCATED_FRACTION * covered, 2 * period):
        raise EpisodeError(
            f"the video ends at {video_end:.3f} s on the telemetry clock, {tel_end - video_end:.3f} s before the "
            f"telemetry (which ends at {tel_end:.3f} s): truncated video, or telemetry in another unit or offset "
            "(--timestamp-unit, --video-time-offset)",
            file=str(path), episode=episode,
        )  # fmt: skip


def _interp(t: np.ndarray, ts: np.ndarray, values: np.ndarray) -> np.ndarray:
    """values [N, D] sampled at ts [N] -> float32 [len(t), D], linear per dimension."""
    return np.stack([np.interp(t, ts, values[:, d]) for d in range(values.shape[1])], axis=1).astype(np.float32)


# --------------------------------------------------------------------------- videos

_DECODE_ERRORS = (av.FFmpegError, OSError, EOFError, ValueError)


def _open_video(path: Path, episode: str) -> tuple[av.container.InputContainer, av.video.stream.VideoStream]:
    """The open container and its first video stream; EpisodeError if there is no decodable video stream."""
    try:
        container = av.open(str(path))
    except _DECODE_ERRORS as e:
        raise EpisodeError(f"cannot open the video: {e}", file=str(path), episode=episode) from e
    if not container.streams.video or container.streams.video[0].codec_context is None:
        container.close()  # a stream without codec context comes from a damaged header: decoding it would crash
        raise EpisodeError("no decodable video stream (not a video, or a damaged or truncated file)",
                           file=str(path), episode=episode)  # fmt: skip
    return container, container.streams.video[0]


def video_rate(path: Path, episode: str) -> float:
    """Average frame rate of a video's first stream, from its header or else from its decoded timestamps."""
    container, stream = _open_video(path, episode)
    with container:
        rate = stream.average_rate or stream.guessed_rate
    if rate:
        return float(rate)
    _, pts = decode_video(path, episode)
    if len(pts) < 2:
        raise EpisodeError("cannot tell the frame rate of a video with fewer than 2 frames", file=str(path),
                           episode=episode)  # fmt: skip
    return (len(pts) - 1) / float(pts[-1] - pts[0])


# What a decode flags as damaged must not depend on the machine: FFmpeg's frame threads flag damage by timing, h264's
# slice threads sometimes leave a concealed slice unflagged, and dav1d (AV1), which threads frames by itself whatever
# thread_type says, flags a different frame on 1 CPU than on 2. So decoders run on one thread, except dav1d: one thread
# would decode AV1 at 0.4x, so it gets a fixed pool (FFmpeg's own choice on 2 CPUs) whatever the CPU count.
DAV1D_THREADS, DAV1D_FRAMES_IN_FLIGHT = 3, 2


def _fix_decoder_threads(codec_context: av.CodecContext) -> None:
    """Thread settings that do not depend on the CPUs the process may use, set before the decoder opens."""
    if codec_context.name == "libdav1d":
        codec_context.thread_count = DAV1D_THREADS
        codec_context.options = {**codec_context.options, "max_frame_delay": str(DAV1D_FRAMES_IN_FLIGHT)}
    else:
        codec_context.thread_type, codec_context.thread_count = "SLICE", 1


def leave_realtime_scheduling() -> None:
    """Put every thread of this process back to normal time-sharing if an encoder took it out.

    SVT-AV1 (lerobot's default encoder), run as root, moves the thread that feeds it to SCHED_FIFO priority 99.
    Every thread and process started from that thread inherits the policy, and a busy thread at that priority is
    never preempted by its peers: pinned to one CPU, a collection whose parent had encoded AV1 starved its own
    workers and never finished (issue 26). Call it after encoding, before starting threads or processes."""
    if not os.path.isdir("/proc/self/task"):  # not Linux: no os.sched_setscheduler, and SVT-AV1 does not do this
        return
    for tid in os.listdir("/proc/self/task"):
        try:
            if os.sched_getscheduler(int(tid)) in (os.SCHED_FIFO, os.SCHED_RR):
                os.sched_setscheduler(int(tid), os.SCHED_OTHER, os.sched_param(0))
        except ProcessLookupError:  # the thread ended meanwhile
            continue


class VideoReader:
    """An open video whose decoder goes forward across reads: reading the spans of consecutive episodes of one
    file (a LeRobot v3 video holds many) decodes every frame once, with one open and no seek between them.
    A span that starts before the frames already read, or well after them, seeks to the keyframe before it.

    Read errors raise EpisodeError naming the file and the episode; the reader is unusable after one."""

    SEEK_GAP_S = 2.0  # a span starting this far past the last frame read seeks instead of decoding up to it

    def __init__(self, path: Path, episode: str) -> None:
        self.path, self.pid = path, os.getpid()
        self.container, self.stream = _open_video(path, episode)
        _fix_decoder_threads(self.stream.codec_context)
        self.rate = self.stream.average_rate or self.stream.guessed_rate
        self.time_base = float(self.stream.time_base)  # float arithmetic: Fraction per frame costs as much as decoding
        self._decoded: Iterator | None = None  # frames from the decoder, as (time, frame)
        self._ahead: tuple[float, av.VideoFrame] | None = None  # decoded past the last span, not yet returned
        self._last = -np.inf  # time of the last frame consumed (returned or skipped)

    def close(self) -> None:
        self.container.close()

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _frames(self, episode: str, start: float | None) -> Iterator[tuple[float, av.VideoFrame]]:
        """(time, frame) from the decoder; restarted after a seek to the keyframe before `start` (None: 0)."""
        if start is None:
            self.container.seek(0)
        else:
            self.container.seek(max(int(start / self.time_base) - 1, 0), backward=True, any_frame=False,
                                stream=self.stream)  # fmt: skip
        count = 0
        for frame in self.container.decode(self.stream):
            if frame.pts is None and not self.rate:
                raise EpisodeError("frames carry no timestamps and the stream has no frame rate",
                                   file=str(self.path), episode=episode)  # fmt: skip
            yield (count / float(self.rate) if frame.pts is None else frame.pts * self.time_base), frame
            count += 1

    def read(self, episode: str, frame_size: tuple[int, int] | None = None, resize_mode: str = "crop",
             span: tuple[float, float] | None = None) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
        """uint8 frames [N, H, W, 3] (RGB) and presentation times float64 [N] seconds: of the whole video, or of
        the frames presented within span (first, last) seconds. See decode_video for the checks."""
        fail = partial(EpisodeError, file=str(self.path), episode=episode)
        if span is None or self._decoded is None or not self._last < span[0] <= self._last + self.SEEK_GAP_S:
            self._decoded, self._ahead, self._last = self._frames(episode, None if span is None else span[0]), None, -np.inf
        pts, chunks, damaged = [], [], []
        buf, n = None, 0  # decoded RGB frames go straight into buf: one copy from the decoder, no list to stack
        try:
            while True:
                if self._ahead is not None:
                    (t, frame), self._ahead = self._ahead, None
                else:
                    item = next(self._decoded, None)
                    if item is None:
                        break
                    t, frame = item
                if span is not None and t > span[1]:
                    self._ahead = t, frame
                    break
                self._last = t
                if span is not None and t < span[0]:
                    continue
                if frame.is_corrupt:  # the decoder concealed an error in this frame (FFmpeg's AV_FRAME_FLAG_CORRUPT)
                    damaged.append(len(pts))
                pts.append(t)
                image = _rgb(frame)
                if buf is None:
                    buf = np.empty((FRAME_CHUNK if frame_size else self._expected(span), *image.shape), np.uint8)
                elif image.shape != buf.shape[1:]:
                    raise fail(f"the frame size changes within the video: {buf.shape[1:3]} -> {image.shape[:2]}")
                if n == len(buf):
                    if frame_size is not None:  # bound memory at source resolution: resize a chunk at a time
                        chunks.append(resize_chunks([buf], frame_size, resize_mode))  # may be buf itself
                        buf, n = np.empty_like(buf), 0
                    else:
                        buf = np.concatenate([buf, np.empty_like(buf)])
                buf[n] = image
                n += 1
        except _DECODE_ERRORS as e:
            raise fail(f"cannot decode the video after {len(pts)} frames: {e}: corrupt or truncated video") from e
        if n:
            kept = buf[:n] if frame_size is not None or n > 0.75 * len(buf) else buf[:n].copy()  # free a spare tail
            chunks.append(resize_chunks([kept], frame_size, resize_mode))
        if not chunks:
            raise fail("the video has no frames" + (f" between {span[0]:.3f} and {span[1]:.3f} s" if span else ""))
        if damaged:
            raise fail(f"decoder reported {len(damaged)} damaged frame(s) (first at frame {damaged[0]}"
                       + (f" of the span from {span[0]:.3f} s" if span else "") + "): corrupt video")  # fmt: skip
        times = np.asarray(pts, dtype=np.float64)
        if span is None:
            self._check_count(len(times), fail)
        self._check_times(times, fail)
        return (chunks[0] if len(chunks) == 1 else np.concatenate(chunks)), times

    def _expected(self, span: tuple[float, float] | None) -> int:
        """Frames a read will likely yield (a first buffer's size: it grows if need be), at most MAX_BUFFER."""
        rate = float(self.rate) if self.rate else 30.0
        if span is not None:
            guess = (span[1] - span[0]) * rate + 2
        else:
            duration = declared_duration(self.container, self.stream)
            guess = self.stream.frames or (duration * rate + 2 if duration else FRAME_CHUNK)
        return int(min(max(guess, 1), MAX_BUFFER))  # a damaged header may declare anything

    def _check_count(self, decoded: int, fail: Callable[[str], EpisodeError]) -> None:
        """A whole-file read must yield the frames the header lists (mp4), or else those its declared duration
        implies at its frame rate (mkv, webm: no count in the header, but a duration that truncation leaves)."""
        listed = self.stream.frames
        if listed:
            if decoded < listed:
                raise fail(f"decoded {decoded} of the {listed} frames in the video header: truncated or damaged file")
            return
        duration = declared_duration(self.container, self.stream)
        if duration is None or not self.rate:
            return
        expected = duration * float(self.rate)
        if decoded < expected - max(MISSING_FRAMES, SHORT_FRACTION * expected):
            raise fail(f"decoded {decoded} frames, but the header declares {duration:.3f} s at {float(self.rate):g} "
                       f"fps (~{expected:.0f} frames): truncated or damaged file")  # fmt: skip

    def _check_times(self, times: np.ndarray, fail: Callable[[str], EpisodeError]) -> None:
        """Presentation times must increase, without a gap of more than MISSING_FRAMES frames."""
        if len(times) < 2:
            return
        steps = np.diff(times)
        if not (steps > 0).all():
            i = int(np.argmax(steps <= 0)) + 1
            raise fail(f"frame presentation times do not increase at frame {i} ({times[i - 1]:.6f} -> {times[i]:.6f} s)")
        period = 1.0 / float(self.rate) if self.rate else float(np.median(steps))
        period = min(period, float(np.median(steps)))  # a variable-rate video: its typical step, not its average
        gaps = steps > (MISSING_FRAMES + 1.5) * period
        if gaps.any():
            i = int(np.argmax(gaps)) + 1
            raise fail(f"{int(gaps.sum())} gap(s) in the frame times, the first {times[i - 1]:.3f} -> {times[i]:.3f} s "
                       f"after frame {i - 1} (~{steps[i - 1] / period - 1:.0f} frames missing at {1 / period:g} fps): "
                       "frames lost from a damaged file")  # fmt: skip


def _rgb(frame: av.VideoFrame) -> np.ndarray:
    """The frame as uint8 [H, W, 3] RGB: a view of the converted frame's plane (to_ndarray would copy it)."""
    rgb = frame.reformat(format="rgb24")
    plane = rgb.planes[0]
    return np.frombuffer(plane, np.uint8).reshape(rgb.height, plane.line_size)[:, : 3 * rgb.width].reshape(
        rgb.height, rgb.width, 3)


def declared_duration(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> float | None:
    """Seconds of video the header declares: the stream's duration, else the container's when it holds only video
    (another stream, such as a longer audio track, would make the container's too long). None if neither."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration and all(s.type == "video" for s in container.streams):
        return container.duration / av.time_base
    return None


def decode_video(path: Path, episode: str, frame_size: tuple[int, int] | None = None, resize_mode: str = "crop",
                 span: tuple[float, float] | None = None) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Decode a video's first stream: uint8 frames [N, H, W, 3] (RGB) and presentation times float64 [N] seconds.
    With frame_size, frames are resized in chunks as they are decoded. With span (first, last) in seconds, only
    the frames presented in that range are decoded, after a seek to the keyframe before it.

    Raises EpisodeError if the file cannot be opened or decoded, the decoder reports (and conceals) damage in a
    frame, a whole-file read yields fewer frames than its header lists or its declared duration implies
    (truncated), it has no frames, changes frame size, or has presentation times that do not increase or that
    skip more than MISSING_FRAMES frames.
    """
    with VideoReader(path, episode) as reader:
        return reader.read(episode, frame_size, resize_mode, span)


# --------------------------------------------------------------------------- telemetry


def read_telemetry(path: Path, spec: ColumnSpec, episode: str) -> Telemetry:
    """Read a CSV or Parquet telemetry table and check it.

    Raises EpisodeError naming the file, the column and the row for: an unreadable table, no rows, a missing
    timestamp column, no state column, non-numeric or NaN/Inf values, timestamps that repeat or go backwards.
    Rows are counted from 0 among the data rows (for a CSV, row r is on line r + 2).
    """

    def fail(problem: str) -> EpisodeError:
        return EpisodeError(problem, file=str(path), episode=episode)

    try:
        df = pd.read_parquet(path) if path.suffix.lower() in (".parquet", ".pq") else pd.read_csv(path)
    except Exception as e:  # pandas and pyarrow raise many types for unreadable files; all mean the same here
        raise fail(f"cannot read the telemetry table: {type(e).__name__}: {e}") from e
    df.columns = [str(c) for c in df.columns]
    columns = list(df.columns)
    if spec.timestamp not in df.columns:
        raise fail(f"no {spec.timestamp!r} column (columns: {columns})")
    if len(df) == 0:
        raise fail("the telemetry table has no rows")
    state_cols, action_cols = spec.select(columns, path, episode)
    ts_col = df[spec.timestamp]
    if pd.api.types.is_datetime64_any_dtype(ts_col):
        ts_col = (ts_col - pd.Timestamp("1970-01-01", tz=ts_col.dt.tz)).dt.total_seconds()
    timestamp = _numeric(ts_col, spec.timestamp, fail)
    steps = np.diff(timestamp)
    if (steps <= 0).any():
        r = int(np.argmax(steps <= 0)) + 1
        how = "repeats" if steps[r - 1] == 0 else "goes backwards"
        raise fail(f"timestamp {how} at row {r} ({timestamp[r - 1]:.6f} -> {timestamp[r]:.6f})")

    def block(cols: list[str]) -> np.ndarray:
        return np.stack([_numeric(df[c], c, fail, timestamp) for c in cols], axis=1)

    return Telemetry(timestamp, block(state_cols), block(action_cols) if action_cols else None, state_cols,
                     action_cols)  # fmt: skip


def _numeric(col: pd.Series, name: str, fail: Callable[[str], EpisodeError], timestamp: np.ndarray | None = None
             ) -> np.ndarray:  # fmt: skip
    """A column as float64, or `fail(...)` naming the first non-numeric or NaN/Inf row."""
    at = (lambda r: f"row {r} (t={timestamp[r]:.6f})") if timestamp is not None else (lambda r: f"row {r}")
    if pd.api.types.is_bool_dtype(col):
        col = col.astype(np.float64)
    try:
        values = pd.to_numeric(col, errors="coerce")
    except (TypeError, ValueError) as e:  # lists or other objects in a cell
        raise fail(f"column {name!r} is not numeric ({e}); one column per dimension is expected") from e
    text = values.isna() & col.notna()
    if text.any():
        r = int(np.argmax(text.to_numpy()))
        raise fail(f"column {name!r} has a non-numeric value {col.iloc[r]!r} at {at(r)} (one number per cell)")
    arr = values.to_numpy(dtype=np.float64)
    bad = ~np.isfinite(arr)
    if bad.any():
        r = int(np.argmax(bad))
        raise fail(f"column {name!r} has {int(bad.sum())} NaN/Inf value(s), the first at {at(r)}")
    return arr


# --------------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The positional SRC and the options of the video source (the store options are added by convert)."""
    parser.add_argument("src", type=Path, help="folder with one sub-folder per episode; each holds one video per "
                        "camera (camera = file stem), a telemetry table and optionally task.txt")  # fmt: skip
    g = parser.add_argument_group("video source options")
    g.add_argument("--task", help=f"task of every episode without a {TASK_FILE} (which takes precedence)")
    g.add_argument("--telemetry", metavar="NAME", help="telemetry table file name in each episode folder "
                   "(default: telemetry.csv or telemetry.parquet, or the folder's only .csv/.parquet file); "
                   "it needs a timestamp column (in seconds, or see --timestamp-unit)")  # fmt: skip
    g.add_argument("--state-prefix", default="state", metavar="PREFIX",
                   help="state columns are those starting with this, in table order (default 'state')")  # fmt: skip
    g.add_argument("--action-prefix", default="action", metavar="PREFIX",
                   help="action columns are those starting with this (default 'action'); no such column makes an "
                        "action-free episode")  # fmt: skip
    g.add_argument("--columns", type=Path, metavar="MAP.yaml", help="YAML file naming the columns instead of the "
                   "prefixes: 'state: [col, ...]', optional 'action: [...]', optional 'timestamp: col'")  # fmt: skip
    g.add_argument("--video-time-offset", type=number(float), default=0.0, metavar="SECONDS",
                   help="where the videos start on the telemetry clock: a frame's time is the first telemetry "
                        "timestamp + its presentation time (PTS) + SECONDS. Default 0: video and telemetry start "
                        "together. Frames outside the telemetry's time range are left out")  # fmt: skip
    g.add_argument("--timestamp-unit", choices=["auto", *TIME_UNITS], default="auto",
                   help="unit of the telemetry's timestamp column. Default auto: seconds, unless the telemetry "
                        "spans ~1e3, 1e6 or 1e9 times as long as the video (ms, us, ns), which is then converted "
                        "and noted in quality.json")  # fmt: skip


def load_column_map(path: Path) -> ColumnSpec:
    """Parse a --columns YAML mapping; UsageError naming the file if it is unreadable or malformed."""
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise UsageError(f"--columns {path}: cannot read it: {e}") from e
    if not isinstance(data, dict) or not set(data) <= {"state", "action", "timestamp"}:
        raise UsageError(f"--columns {path}: expected a mapping with keys state, action (optional) and timestamp "
                         f"(optional), got {data!r}")  # fmt: skip

    def names(key: str) -> tuple[str, ...]:
        value = data.get(key) or []
        value = [value] if isinstance(value, str) else value
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise UsageError(f"--columns {path}: {key} must be a list of column names, got {value!r}")
        return tuple(value)

    state = names("state")
    if not state:
        raise UsageError(f"--columns {path}: no state columns listed")
    timestamp = data.get("timestamp", "timestamp")
    if not isinstance(timestamp, str):
        raise UsageError(f"--columns {path}: timestamp must be one column name, got {timestamp!r}")
    return ColumnSpec(timestamp=timestamp, state=state, action=names("action"))


def from_args(args: argparse.Namespace) -> VideoSource:
    """Build the source from parsed arguments; UsageError if SRC or --columns cannot be used."""
    if args.columns is not None:
        columns = load_column_map(args.columns)
    else:
        if args.state_prefix == args.action_prefix:
            raise UsageError(f"--state-prefix and --action-prefix are both {args.state_prefix!r}")
        columns = ColumnSpec(state_prefix=args.state_prefix, action_prefix=args.action_prefix)
    return VideoSource(Path(args.src), columns=columns, task=args.task, telemetry=args.telemetry,
                       video_time_offset=args.video_time_offset, timestamp_unit=args.timestamp_unit)  # fmt: skip
