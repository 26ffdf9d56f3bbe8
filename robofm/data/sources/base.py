"""What every converter source provides: a list of picklable episode references and a loader."""

from __future__ import annotations

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
