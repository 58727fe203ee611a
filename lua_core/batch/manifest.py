"""The manifest (what finished) and the journal (what was sent): append-only, fsynced JSONL files.

Why two files: the manifest is the user's record, one row per job outcome, written when the job
*finishes* (its outputs are on disk by then). But a job can also be "sent and not finished" when the
client dies (Ctrl-C twice, a crash, a reboot); to neither lose nor duplicate it, the prompt id is
written to the journal (``<manifest stem>.pending.jsonl``) *before* ``POST /prompt``. On the next run,
every unfinished job with a journal entry is looked up on the server by that id: still queued or
running -> the run adopts it and waits; in ``/history`` -> its outputs are collected; nowhere -> it was
lost (e.g. the server restarted) and is queued again. The journal is deleted once a run ends with
nothing of its own left on the server.

Both files are only appended to, each line written with one ``write`` and ``fsync``; a line cut short
by a crash is skipped when reading. Later rows for the same job key win. A lock file stops two clients
from running the same manifest at once (which would duplicate jobs).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# Statuses a manifest row can have; only "success" counts as done when resuming (unless told otherwise).
STATUSES = ("success", "error", "invalid", "interrupted", "cancelled", "lost", "timeout")
DONE = frozenset({"success"})


def _fsync_dir(path: Path) -> None:
    if sys.platform.startswith("win"):
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class JsonlLog:
    """An append-only JSONL file: :meth:`append` is durable when it returns; :meth:`rows` tolerates a torn tail."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def append(self, row: dict[str, Any]) -> None:
        line = json.dumps(row, ensure_ascii=False, sort_keys=False, default=str) + "\n"
        new = not self.path.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            data = line.encode("utf-8")
            if os.fstat(fd).st_size > 0:  # a torn last line from a crash must not swallow this row
                with open(self.path, "rb") as f:
                    f.seek(-1, os.SEEK_END)
                    if f.read(1) != b"\n":
                        data = b"\n" + data
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        if new:
            _fsync_dir(self.path.parent)

    def rows(self) -> Iterator[dict[str, Any]]:
        """Every complete, parseable row (a truncated or corrupt line is skipped)."""
        try:
            with open(self.path, encoding="utf-8") as f:
                lines = f.read().splitlines()
        except FileNotFoundError:
            return
        for line in lines:
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict):
                yield row


class Manifest(JsonlLog):
    """Job outcomes. Row keys: see ``docs/batch.md`` (``key``, ``status``, ``params``, ``prompt_id``,
    ``outputs``, ``timings``, ``error``...)."""

    def latest(self) -> dict[str, dict[str, Any]]:
        """``{job key: its last row}``."""
        out: dict[str, dict[str, Any]] = {}
        for row in self.rows():
            if "key" in row:
                out[str(row["key"])] = row
        return out

    @property
    def journal(self) -> Journal:
        return Journal(self.path.with_name(self.path.stem + ".pending.jsonl"))

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold ``.<manifest name>.lock`` (an OS advisory lock) for the duration; refuses a second client.

        The (empty) lock file stays: removing it while another process waits on it would break the lock.
        """
        lock_path = self.path.with_name(f".{self.path.name}.lock")
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        f = open(lock_path, "a+")
        try:
            try:
                import fcntl
            except ImportError:  # Windows: msvcrt locks a byte range instead
                import msvcrt

                try:
                    msvcrt.locking(f.fileno(), msvcrt.LK_NBLCK, 1)
                except OSError as err:
                    raise _locked(self.path) from err
                try:
                    yield
                finally:
                    msvcrt.locking(f.fileno(), msvcrt.LK_UNLCK, 1)
                return
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                raise _locked(self.path) from err
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)
        finally:
            f.close()


def _locked(path: Path) -> Exception:
    from .errors import BatchError

    return BatchError(f"another batch client is running with {path} (lock file .{path.name}.lock); "
                      "wait for it to finish, or use another manifest")


class Journal(JsonlLog):
    """Prompt ids sent to a server, written before each ``POST /prompt`` (see module doc)."""

    def latest(self) -> dict[str, dict[str, Any]]:
        """``{job key: its last journal row}`` (``prompt_id``, ``client_id``, ``server``, ``attempt``)."""
        out: dict[str, dict[str, Any]] = {}
        for row in self.rows():
            if "key" in row and "prompt_id" in row:
                out[str(row["key"])] = row
        return out

    def clear(self) -> None:
        """Remove the journal (nothing of ours is left on the server)."""
        self.path.unlink(missing_ok=True)

    def retain(self, rows: list[dict[str, Any]]) -> None:
        """Replace the journal by ``rows`` (atomically: temp file, fsync, rename); no rows -> no file."""
        if not rows:
            self.clear()
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in rows)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        _fsync_dir(self.path.parent)
