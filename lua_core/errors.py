"""Exceptions with messages a ComfyUI user can act on.

Every error about a file names the file; every error about an input says what was expected. They
subclass ``ValueError`` so callers that only know the standard library can still catch them.
"""

from __future__ import annotations

import os


def first_line(e: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message (its type's name when it has none), for one-line errors."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:limit]


class LuaError(ValueError):
    """Base class of the errors this package raises on bad input."""


class CheckpointError(LuaError):
    """A file that cannot be used as an upscaler checkpoint, and why."""

    def __init__(self, path: str | os.PathLike | None, problem: str, fix: str | None = None):
        self.path = None if path is None else os.fspath(path)
        self.problem = problem
        self.fix = fix
        where = f"{self.path}: " if self.path else ""
        super().__init__(f"{where}{problem}" + (f" {fix}" if fix else ""))


class DownloadError(LuaError):
    """A known checkpoint could not be fetched (missing file, offline without a cached copy, ...)."""


class OutOfMemoryError(LuaError):
    """One latent did not fit in memory even at batch size 1 (and in the smallest tiles, when tiles
    were allowed as a fallback). ``size`` is its (height, width), ``tile`` the last tile size tried
    (0: no tiles), ``cause`` the first line of the device's own error; a host adds its own advice."""

    def __init__(self, size: tuple[int, int], tile: int, cause: str):
        self.size, self.tile, self.cause = (int(size[0]), int(size[1])), int(tile), cause
        tiles = f", even in {tile}-pixel tiles" if tile else ""
        super().__init__(f"out of memory upscaling one {self.size[0]}x{self.size[1]} latent{tiles}. Free memory "
                         f"(close other programs, lower the resolution or the batch). ({cause})")
