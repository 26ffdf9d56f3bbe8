"""Typed errors. Every error about data names the file, the episode and what was wrong."""

from __future__ import annotations


class RobofmError(Exception):
    """Base class of every error robofm raises on purpose."""


class UsageError(RobofmError):
    """The command line or configuration asks for something that cannot be done."""


class HeadlessGLError(RobofmError):
    """MuJoCo finds no OpenGL it can render with off screen (neither OSMesa nor EGL works); the message names the
    system package that is missing and the command that installs it."""


class EpisodeError(RobofmError):
    """One source episode cannot be converted. Other episodes are unaffected."""

    def __init__(self, problem: str, *, file: str | None = None, episode: str | None = None):
        self.problem = problem
        self.file = None if file is None else str(file)
        self.episode = episode
        where = ", ".join(p for p in (self.file and f"file {self.file}", episode and f"episode {episode}") if p)
        super().__init__(f"{where}: {problem}" if where else problem)


class StoreError(RobofmError):
    """An episode store is missing, damaged, or of a format this robofm cannot read."""
