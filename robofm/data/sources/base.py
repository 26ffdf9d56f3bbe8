"""What every converter source provides: a list of picklable episode references and a loader."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from robofm.data.episode import Episode


@dataclass(frozen=True)
class EpisodeRef:
    """Where one source episode lives. `key` is whatever the source needs to load it."""

    source: str  # file or dataset the episode comes from
    index: str  # the episode's name or number inside the source
    key: tuple = ()


class Source(Protocol):
    """A converter source. Must be picklable: episodes are loaded in worker processes."""

    fps: float | None  # native frame rate when the source knows it

    def episodes(self) -> list[EpisodeRef]: ...

    def load(self, ref: EpisodeRef, frame_size: tuple[int, int] | None = None, resize_mode: str = "crop") -> Episode:
        """Decode one episode; raise robofm.errors.EpisodeError naming the file and episode on bad input.

        With frame_size, frames are resized (robofm.data.episode.resize_frames) chunk by chunk while they are
        decoded, so a long high-resolution episode never sits in memory at full size.
        """
        ...


FPS_RANGE = (1.0, 1000.0)  # frame rates a robot store can have: below, one frame per second; above, no camera


def number(kind: type = float, lo: float | None = None, hi: float | None = None, *, lo_open: bool = False
           ) -> Callable[[str], float]:  # fmt: skip
    """An argparse type: a finite number of `kind` in [lo, hi] (lo excluded with lo_open)."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}") from None
        too_low = lo is not None and (value <= lo if lo_open else value < lo)
        too_high = hi is not None and value > hi
        if not math.isfinite(value) or too_low or too_high:
            left = "" if lo is None else f"{'>' if lo_open else '>='} {lo:g}"
            right = "" if hi is None else f"<= {hi:g}"
            raise argparse.ArgumentTypeError(f"expected a finite number {' and '.join(p for p in (left, right) if p)}, "
                                             f"got {text!r}")  # fmt: skip
        return value

    return parse


FPS = number(float, *FPS_RANGE)
