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
