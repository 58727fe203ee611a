"""Who holds which job: the state the servers of one batch share, behind one lock.

Why one place: with several servers, the events that could lose a job or report it twice (a job
finished, lost by its server, moved to another server, a late result from a server that came back)
happen on different threads. Each goes through this book, under its lock, and first checks that the
attempt it speaks for is still the job's *current* attempt:

* every send is an :class:`Attempt` with a fresh prompt id, journaled (fsync) before ``POST /prompt``;
* a job has at most one current attempt. Moving a job off a server that went away *retires* the
  attempt: the server may still run it when it comes back, but that late result is recognised by its
  prompt id and dropped (the moved copy is the one that counts, whether it has started or not), and
  the worker of that server deletes or interrupts the retired prompt when it can reach it again;
* a finished job's files are downloaded into a staging folder (``OUT/.incoming-<id>/<prompt id>/``)
  and moved into the job folder by :meth:`Book.record`, in the same locked step that appends its
  manifest row. A result that is not current is discarded there, so the output folder only ever
  holds files of the attempt the manifest names, written once.
"""

from __future__ import annotations

import collections
import hashlib
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .jobs import Job
from .manifest import Manifest
from .outcome import describe_error, iso, server_times
from .progress import Progress
from .servers import short_name

EMA_WEIGHT = 0.3  # weight of the newest job in a server's seconds-per-job average


@dataclass
class Attempt:
    """One send of a job to a server, under ``prompt_id`` (``server`` is its base URL)."""

    job: Job
    prompt_id: str
    attempt: int
    server: str
    sent_at: float  # time.monotonic() of the send
    sent_wall: float  # time.time() of the send
    uncertain: bool = True  # True until the server confirmed it holds the prompt
    running_since: float | None = None
    finished_nodes: set[str] = field(default_factory=set)
    detail: str = ""
    ws_outputs: dict[str, Any] = field(default_factory=dict)
    ws_done: str | None = None
    entry: dict | None = None  # a finished history entry whose downloads still have to complete
    timed_out: bool = False
    interrupt_sent: bool = False  # retired and still running on its server: interrupted
    settled: bool = False  # retired, and seen neither queued nor running (its history read): not looked up again
    drop_said: bool = False  # its late result was reported as dropped (once)
    retired_why: str = "the job was moved to another server"  # said when a retired prompt is removed or dropped
    warnings: list[str] = field(default_factory=list)


@dataclass
class StagedFile:
    """An output downloaded to ``staged``, to be moved to ``<job folder>/<info["path"]>`` on commit."""

    staged: Path
    info: dict[str, Any]  # the manifest's file record: path, node, filename, subfolder, type, bytes


@dataclass
class ServerStats:
    """What one server did in this run (the per-server progress line and summary)."""

    url: str
    succeeded: int = 0
    failed_jobs: list[str] = field(default_factory=list)  # "job 3 error", "job 7 lost" ...
    moved_away: int = 0  # jobs moved off this server while it was away
    times_away: int = 0
    away_seconds: float = 0.0
    disabled: str | None = None  # the error that took the server out of the batch
    first_sent: float | None = None  # time.monotonic() of its first send
    last_done: float | None = None
    seconds_per_job: float | None = None  # moving average of the server's run time per job

    @property
    def name(self) -> str:
        return short_name(self.url)

    def rate_per_min(self) -> float | None:
        """Jobs finished per minute, from its first send to its last finished job."""
        if not self.succeeded or self.first_sent is None or self.last_done is None:
            return None
        return self.succeeded * 60.0 / max(self.last_done - self.first_sent, 1e-3)

    def note_run(self, seconds: float | None) -> None:
        if seconds is None or seconds < 0:
            return
        old = self.seconds_per_job
        self.seconds_per_job = seconds if old is None else (1 - EMA_WEIGHT) * old + EMA_WEIGHT * seconds


class Book:
    """Jobs waiting, the current attempt of each job in flight, retired attempts, rows, per-server stats.

    Every method takes :attr:`lock`; callers may hold it too (it is re-entrant) to combine steps.
    ``say`` prints a message; ``farm`` adds the server to per-job lines.
    """

    def __init__(self, manifest: Manifest, out_dir: Path, servers: list[str], *, client_id: str, max_attempts: int,
                 progress: Progress, say: Callable[[str], None]):
        self.manifest = manifest
        self.out_dir = out_dir
        self.client_id = client_id
        self.max_attempts = max_attempts
        self.progress = progress
        self.say = say
        self.farm = len(servers) > 1
        self.lock = threading.RLock()
        self.changed = threading.Event()  # set on anything the dispatcher should look at
        self.pending: collections.deque[Job] = collections.deque()
        self.current: dict[str, Attempt] = {}  # job key -> its current attempt
        self.by_pid: dict[str, Attempt] = {}
        self.retired: dict[str, Attempt] = {}  # prompt id -> attempt moved off its server
        self.attempts: dict[str, int] = {}
        self.base: dict[str, int] = {}  # job key -> attempts made by earlier runs (this run has its own budget)
        self.moved_from: dict[str, list[str]] = {}
        self.rejections: dict[str, dict[str, dict]] = {}  # job key -> {server: validation error}
        self.handed: set[str] = set()  # keys of jobs handed over to an idle server once (not again)
        self.rows: list[dict[str, Any]] = []
        self.stopping = False  # Ctrl-C: workers cancel this client's prompts and stop
        self.finished = False  # the run is over: workers stop
        self.stats = {url: ServerStats(url) for url in servers}
        digest = hashlib.sha256(str(manifest.path.resolve()).encode()).hexdigest()[:8]
        self.staging = out_dir / f".incoming-{digest}"
        shutil.rmtree(self.staging, ignore_errors=True)  # left by a killed run (we hold the manifest lock)

    # -- attempts --------------------------------------------------------------------------------

    def begin(self, server: str, job: Job) -> Attempt:
        """A new attempt of ``job`` on ``server``: journaled (fsync) before the caller sends it."""
        with self.lock:
            number = self.attempts.get(job.key, 0) + 1
            self.attempts[job.key] = number
            now = time.time()
            attempt = Attempt(job, str(uuid.uuid4()), number, server, sent_at=time.monotonic(), sent_wall=now)
            self.manifest.journal.append({"key": job.key, "prompt_id": attempt.prompt_id, "client_id": self.client_id,
                                          "server": server, "attempt": number, "time": now})
            self._hold(attempt)
            stats = self.stats[server]
            stats.first_sent = stats.first_sent or attempt.sent_at
            return attempt

    def adopt(self, server: str, job: Job, row: dict[str, Any]) -> Attempt:
        """An attempt an earlier run journaled: looked up on ``server`` before anything is re-sent. It does
        not use up this run's ``max_attempts``: a killed client's prompt that is gone is sent again, never
        written off as ``lost`` by the run that only looked it up."""
        with self.lock:
            number = int(row.get("attempt") or 1)
            self.attempts[job.key] = self.base[job.key] = number
            attempt = Attempt(job, str(row["prompt_id"]), number, server, sent_at=time.monotonic() - 1e9,
                              sent_wall=float(row.get("time") or time.time()))
            self._hold(attempt)
            self.stats[server].first_sent = self.stats[server].first_sent or time.monotonic()
            return attempt

    def retire_earlier(self, server: str, job: Job, row: dict[str, Any]) -> Attempt:
        """A send an earlier (killed) run journaled and then superseded by a later send of the same job
        (it moved the job off ``server``, or found the prompt lost): retired as that run would have kept
        it, so the worker of ``server`` deletes or interrupts it if it is still there and drops its result."""
        with self.lock:
            attempt = Attempt(job, str(row["prompt_id"]), int(row.get("attempt") or 1), server,
                              sent_at=time.monotonic() - 1e9, sent_wall=float(row.get("time") or time.time()),
                              uncertain=False, retired_why="an earlier run sent the job again")
            self.retired[attempt.prompt_id] = attempt
            return attempt

    def _hold(self, attempt: Attempt) -> None:
        self.current[attempt.job.key] = attempt
        self.by_pid[attempt.prompt_id] = attempt
        self.changed.set()

    def _drop(self, attempt: Attempt) -> None:
        if self.current.get(attempt.job.key) is attempt:
            del self.current[attempt.job.key]
        self.by_pid.pop(attempt.prompt_id, None)
        self.changed.set()

    def owns(self, attempt: Attempt) -> bool:
        """Whether ``attempt`` is still its job's current attempt (not finished, lost or moved)."""
        with self.lock:
            return self.current.get(attempt.job.key) is attempt

    def held(self, server: str) -> list[Attempt]:
        """The current attempts on ``server``, in job order."""
        with self.lock:
            return sorted((a for a in self.current.values() if a.server == server), key=lambda a: a.job.index)

    def find(self, server: str, prompt_id: str) -> Attempt | None:
        """The current attempt sent to ``server`` under ``prompt_id`` (None for retired and foreign ids)."""
        with self.lock:
            attempt = self.by_pid.get(prompt_id)
            return attempt if attempt is not None and attempt.server == server else None

    def rekey(self, attempt: Attempt, prompt_id: str) -> None:
        """The server chose its own prompt id (old ComfyUI): follow it, and journal it."""
        with self.lock:
            self.by_pid.pop(attempt.prompt_id, None)
            attempt.prompt_id = prompt_id
            self.by_pid[prompt_id] = attempt
            self.manifest.journal.append({"key": attempt.job.key, "prompt_id": prompt_id, "client_id": self.client_id,
                                          "server": attempt.server, "attempt": attempt.attempt, "time": time.time()})

    def in_flight(self) -> int:
        with self.lock:
            return len(self.current)

    # -- outcomes --------------------------------------------------------------------------------

    def record(self, attempt: Attempt, status: str, *, entry: dict | None = None, files: list[StagedFile] = (),
               error: dict | None = None, download_s: float | None = None) -> bool:
        """Commit ``attempt``'s outcome: files into the job folder, one manifest row (fsync).

        Returns False, discarding the staged files, when the attempt is no longer current (a late
        result of a moved job): nothing is written then.
        """
        with self.lock:
            if not self.owns(attempt):
                self.discard(attempt)
                return False
            folder = self.out_dir / attempt.job.folder
            for f in files:
                folder.mkdir(parents=True, exist_ok=True)
                os.replace(f.staged, folder / f.info["path"])
            self.discard(attempt)
            self._drop(attempt)
            self._write_row(attempt, status, entry=entry, files=[f.info for f in files], error=error,
                            download_s=download_s)
            return True

    def discard(self, attempt: Attempt) -> None:
        """Remove ``attempt``'s staging folder (its downloads that will not be committed)."""
        shutil.rmtree(self.staging_dir(attempt), ignore_errors=True)

    def staging_dir(self, attempt: Attempt) -> Path:
        return self.staging / attempt.prompt_id

    def lost(self, attempts: list[Attempt], message: Callable[[Attempt], str]) -> None:
        """The server does not know these attempts any more: send their jobs again (first in line, in job
        order), or give up on a job sent ``max_attempts`` times. ``message(attempt)`` is said for each."""
        with self.lock:
            mine = sorted((a for a in attempts if self.owns(a)), key=lambda a: a.job.index)
            for attempt in mine:
                self._drop(attempt)
            again = [a for a in mine if self._again(a, message(a), f"was lost by the server {a.attempt} times")]
            self.pending.extendleft(reversed([a.job for a in again]))

    def _again(self, attempt: Attempt, message: str, why_not: str) -> bool:
        """Whether ``attempt``'s job may be sent again; if not, its ``lost`` row is written."""
        job = attempt.job
        if attempt.attempt - self.base.get(job.key, 0) >= self.max_attempts:
            self.say(f"job {job.index} ({job.label}) {why_not}; giving up on it")
            self._write_row(attempt, "lost", error={"kind": "lost", "message": f"sent {attempt.attempt} times "
                                                    f"(--max-attempts), {why_not}"})
            return False
        if message:
            self.say(message)
        return True

    def move_away(self, server: str, why: str, attempts: list[Attempt] | None = None) -> list[Attempt]:
        """Retire ``attempts`` (default: every current attempt on ``server``), each one only if it is still
        its job's current attempt there, and put their jobs first in line for the other servers."""
        with self.lock:
            moved = sorted((a for a in (self.held(server) if attempts is None else attempts)
                            if a.server == server and self.owns(a)), key=lambda a: a.job.index)
            if not moved:
                return []
            names = ", ".join(str(a.job.index) for a in moved)
            total = len(self.held(server))
            what = (f"its {total} job{'s' if total > 1 else ''}" if total == len(moved) else
                    f"{len(moved)} of its {total} jobs")
            stay = total - len(moved)
            kept = f" (the {stay} that no server up can run stay{'s' if stay == 1 else ''})" if stay else ""
            self.say(f"{why}: moving {what} ({names}) to the other servers{kept}; a late result from it will be "
                     "dropped")
            for attempt in moved:
                self._drop(attempt)
                self.retired[attempt.prompt_id] = attempt
                self.moved_from.setdefault(attempt.job.key, []).append(server)
            again = [a for a in moved if self._again(a, "", "its servers went away each time")]
            self.pending.extendleft(reversed([a.job for a in again]))
            self.stats[server].moved_away += len(moved)
            return moved

    def retired_on(self, server: str) -> list[Attempt]:
        with self.lock:
            return [a for a in self.retired.values() if a.server == server]

    def forget_rejections(self, server: str) -> None:
        """``server`` came back and its node list was read again: its earlier refusals no longer hold."""
        with self.lock:
            for refused in self.rejections.values():
                refused.pop(server, None)
            self.changed.set()

    def forget_retired(self, prompt_id: str) -> None:
        with self.lock:
            self.retired.pop(prompt_id, None)

    def rejected(self, attempt: Attempt, error: dict, try_elsewhere: bool) -> None:
        """``POST /prompt`` answered 400. With ``try_elsewhere`` (a node or model this server lacks) the job
        goes back in line for the servers that have not refused it; otherwise it is an ``invalid`` row."""
        with self.lock:
            if not self.owns(attempt):
                return
            self.rejections.setdefault(attempt.job.key, {})[attempt.server] = error
            if try_elsewhere:
                self._drop(attempt)
                self.attempts[attempt.job.key] -= 1  # a refused send never ran: it does not use up an attempt
                self.pending.appendleft(attempt.job)
                return
            self.record(attempt, "invalid", error=error)

    def take_back(self, attempt: Attempt) -> bool:
        """``attempt`` was deleted from its server's queue before it started (to run on an idle server):
        it is no longer in flight, and the next send does not count as another attempt."""
        with self.lock:
            if not self.owns(attempt):
                return False
            self._drop(attempt)
            self.attempts[attempt.job.key] -= 1
            self.handed.add(attempt.job.key)
            return True

    def fail_unsent(self, job: Job, error: dict) -> None:
        """A job no server can run: one ``invalid`` row, nothing sent."""
        with self.lock:
            attempt = Attempt(job, "", self.attempts.get(job.key, 0), "", sent_at=time.monotonic(),
                              sent_wall=time.time())
            self._write_row(attempt, "invalid", error=error)

    # -- rows ------------------------------------------------------------------------------------

    def _write_row(self, attempt: Attempt, status: str, *, entry: dict | None = None, files: list[dict] | None = None,
                   error: dict | None = None, download_s: float | None = None) -> None:
        job = attempt.job
        now = time.time()
        start, end = server_times(entry or {})
        timings = {"queue_s": _round(start - attempt.sent_wall) if start else None,
                   "run_s": _round(end - start) if start and end else None,
                   "download_s": _round(download_s), "total_s": _round(now - attempt.sent_wall)}
        row = {"key": job.key, "index": job.index, "status": status, "params": job.params,
               "prompt_id": attempt.prompt_id or None, "attempt": attempt.attempt, "server": attempt.server or None,
               "moved_from": list(self.moved_from.get(job.key, [])), "client_id": self.client_id,
               "output_dir": job.folder, "outputs": [f["path"] for f in files or []], "files": files or [],
               "queued_at": iso(attempt.sent_wall), "started_at": iso(start), "finished_at": iso(end or now),
               "timings": timings, "error": error, "warnings": attempt.warnings}
        self.manifest.append(row)
        self.rows.append(row)
        stats = self.stats.get(attempt.server)
        if stats is not None:
            if status == "success":
                stats.succeeded += 1
                stats.last_done = time.monotonic()
                stats.note_run(timings["run_s"] if timings["run_s"] is not None else timings["total_s"])
            elif status != "cancelled":
                stats.failed_jobs.append(f"job {job.index} {status}")
        line = f"{status:<9} {job.label}"
        if status == "success":
            line += f" ({timings['total_s']}s)"
        if self.farm and attempt.server:
            line += f" on {short_name(attempt.server)}"
        if status == "success":
            line += f" -> {job.folder}/" + (",".join(row["outputs"]) or "(no files)")
        elif error:
            line += f": {describe_error(error).splitlines()[0]}"
        self.progress.job_finished(job.key, line)
        self.changed.set()


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 3)
