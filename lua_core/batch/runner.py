"""The batch runner: keep N prompts of this client on each server, follow them, save what they make.

Why it is built around reconciliation: the only trustworthy facts are what a server says *now*
(``/queue``, ``/history``) and what the manifest and journal say on disk. Websocket events make the
display live and completions immediate, but every decision that could lose or duplicate a job is
taken from the server's state:

* each job gets a fresh client-chosen prompt id per attempt, journaled (fsync) *before* ``POST /prompt``;
* a job of ours that is neither queued/running (``/queue``) nor in ``/history`` has been lost (the
  server restarted, or someone deleted it) and is sent again, at most ``max_attempts`` times. The
  check order (queue first, then history) is safe: the server moves a prompt queue -> running ->
  history under one lock, so a prompt absent from the queue snapshot is in history by the time history
  is read, unless it is really gone. A send whose answer never arrived is given ``lost_grace`` seconds
  before it can be declared lost (its ``POST`` may still be in the server's hands);
* connection errors make a server "away": it is probed with backoff (0.5 s doubling to 5 s) and keeps
  its jobs; when it answers again they are looked up. With several servers, the jobs of a server away
  for ``move_after`` seconds move to the others (see :mod:`lua_core.batch.farm` for why a late result
  of a moved job is dropped). When no server that could run the remaining jobs has answered for
  ``server_wait`` seconds, the run stops with ``gave_up`` set and a re-run resumes;
* a job's outputs are downloaded through ``/view`` (atomically) *before* its manifest row is appended
  (fsync), so a row with ``status: success`` always has its files;
* Ctrl-C (SIGINT) stops sending, removes this client's pending prompts from every server's queue
  (``POST /queue {"delete": ids}``, by id), interrupts a running prompt only if it is one of ours
  (``POST /interrupt {"prompt_id": id}``, which the server ignores unless that id is running), waits
  for them to settle and records them as ``cancelled``. A second Ctrl-C quits at once; the journal
  lets the next run adopt whatever was left on the servers.

This module is the dispatcher: one :class:`~lua_core.batch.worker.ServerWorker` thread per server does
the talking; the runner decides which server gets which job (the fastest free one that can run it),
moves jobs off servers that went away, and turns a job no server can run into one error row.
"""

from __future__ import annotations

import signal
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .capability import nowhere_error
from .client import ComfyClient
from .farm import Book, ServerStats
from .jobs import Job
from .manifest import DONE, Manifest
from .outcome import describe_error
from .progress import Progress
from .servers import normalize_url, short_name
from .worker import AWAY, DISABLED, NEW, STUCK, UP, ServerWorker


@dataclass
class RunOptions:
    """How a batch runs (CLI flags in parentheses)."""

    in_flight: int = 2  # prompts of this client queued or running at once, per server (--in-flight)
    use_ws: bool = True  # follow /ws events; polling alone works too (--no-ws)
    poll_interval: float = 1.0  # seconds between /queue checks while the websocket is down (--poll)
    ws_check_interval: float = 5.0  # safety-net /queue checks while the websocket is up
    server_wait: float = 600.0  # give up when no usable server answered this long (--server-wait)
    move_after: float = 30.0  # several servers: move the jobs of a server away this long (--move-after)
    stall_after: float | None = 600.0  # a queue that has not moved this long: the executor is stuck (--stall-after)
    max_attempts: int = 3  # sends per job when servers lose it (--max-attempts)
    lost_grace: float | None = None  # seconds before an unanswered send may be declared lost (timeout + 5)
    job_timeout: float | None = None  # interrupt a prompt running longer than this (--job-timeout)
    include_temp: bool = False  # also download "temp" files (PreviewImage) (--include-temp)
    retry_failed: bool = True  # re-run jobs whose last row is not success (--skip-failed turns off)
    cancel_wait: float = 30.0  # how long Ctrl-C waits for the servers to drop our prompts
    progress: bool | None = None  # tqdm bars (None: when stderr is a terminal) (--no-progress)
    quiet: bool = False  # no per-job lines in plain mode (--quiet)
    precheck: bool | None = None  # check jobs against each server's /object_info (None: with several servers)
    extra_data: dict[str, Any] = field(default_factory=dict)  # sent as POST /prompt extra_data


@dataclass
class BatchResult:
    """What a run did. ``rows`` are the manifest rows it appended, in order; ``servers`` per server."""

    manifest: Path
    total: int
    skipped: int
    rows: list[dict[str, Any]]
    not_run: int
    interrupted: bool
    elapsed: float
    gave_up: str | None = None
    servers: list[ServerStats] = field(default_factory=list)

    def count(self, *statuses: str) -> int:
        return sum(1 for r in self.rows if r.get("status") in statuses)

    @property
    def succeeded(self) -> int:
        return self.count("success")

    @property
    def failed(self) -> int:
        return self.count("error", "invalid", "lost", "timeout", "interrupted")

    @property
    def ok(self) -> bool:
        """True when every job of the batch has succeeded (now or in an earlier run)."""
        return not self.interrupted and self.gave_up is None and self.succeeded + self.skipped == self.total


class BatchRunner:
    """Run ``jobs`` on one server (a :class:`ComfyClient`) or several (a list); outputs under ``out_dir``,
    rows in ``manifest`` (JSONL, default ``out_dir/manifest.jsonl``). Call :meth:`run` once.

    ``object_info``: ``{server URL: its /object_info}`` already fetched (spares a request per server).
    """

    def __init__(self, client: ComfyClient | Sequence[ComfyClient], jobs: Sequence[Job], out_dir: str | Path, *,
                 manifest: str | Path | None = None, options: RunOptions | None = None,
                 log: Callable[[str], None] | None = None, object_info: Mapping[str, dict] | None = None):
        self.clients = [client] if isinstance(client, ComfyClient) else list(client)
        if not self.clients:
            raise ValueError("a batch needs at least one server")
        urls = [c.base_url for c in self.clients]
        if len({normalize_url(u) for u in urls}) != len(urls):
            raise ValueError(f"a server is given twice: {urls}")
        self.client = self.clients[0]
        self.jobs = list(jobs)
        self.out_dir = Path(out_dir)
        self.manifest = Manifest(manifest if manifest is not None else self.out_dir / "manifest.jsonl")
        self.opts = options or RunOptions()
        if self.opts.in_flight < 1:
            raise ValueError("in_flight must be at least 1")
        self._log = log
        self._known_info = {normalize_url(k): v for k, v in (object_info or {}).items()}
        self.client_id = ""
        self.book: Book | None = None
        self.workers: list[ServerWorker] = []
        self._stop = False
        self._progress: Progress | None = None
        self._stalled_since: float | None = None
        self._shown = 0.0

    # -- entry -----------------------------------------------------------------------------------

    def run(self) -> BatchResult:
        """Run the batch to the end (or Ctrl-C, or giving up on the servers). Never raises for a job's failure."""
        t0 = time.monotonic()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with self.manifest.lock():
            latest = self.manifest.latest()
            journal = self.manifest.journal
            sent = journal.latest()
            todo = [job for job in self.jobs if not self._finished(latest.get(job.key))]
            skipped = len(self.jobs) - len(todo)
            self.client_id = next((r["client_id"] for r in reversed(list(sent.values())) if r.get("client_id")),
                                  None) or str(uuid.uuid4())
            urls = [c.base_url for c in self.clients]
            self._progress = Progress(len(todo), bars=self.opts.progress, quiet=self.opts.quiet, servers=urls)
            book = self.book = Book(self.manifest, self.out_dir, urls, client_id=self.client_id,
                                    max_attempts=self.opts.max_attempts, progress=self._progress, say=self._say)
            precheck = self.opts.precheck if self.opts.precheck is not None else len(self.clients) > 1
            self.workers = [ServerWorker(c, book, self.opts, order=i, precheck=precheck,
                                         info=self._known_info.get(normalize_url(c.base_url)))
                            for i, c in enumerate(self.clients)]
            if skipped:
                self._say(f"{skipped} of {len(self.jobs)} jobs already done (manifest {self.manifest.path}); "
                          "skipping them")
            self._adopt(todo, sent, latest)
            self._retire_superseded(sent)
            previous = self._install_sigint()
            clean_exit = False
            try:
                for worker in self.workers:
                    worker.start()
                gave_up = self._dispatch()
                clean_exit = True
            finally:
                if previous is not None:
                    signal.signal(signal.SIGINT, previous)
                book.finished = True
                for worker in self.workers:
                    worker.wake()
                if clean_exit:
                    limit = time.monotonic() + self.clients[0].timeout + 5
                    for worker in self.workers:
                        worker.join(timeout=max(0.0, limit - time.monotonic()))
                self._progress.close()
            if not book.in_flight():  # keep only other sweeps' unfinished sends, so a later run can still adopt them
                mine, done = {job.key for job in self.jobs}, self.manifest.latest()
                journal.retain([r for k, r in journal.latest().items()
                                if k not in mine and (done.get(k) or {}).get("status") not in DONE])
            try:
                book.staging.rmdir()
            except OSError:
                pass
            not_run = len(book.pending) + sum(len(w.inbox) for w in self.workers) + book.in_flight()
            return BatchResult(manifest=self.manifest.path, total=len(self.jobs), skipped=skipped, rows=book.rows,
                               not_run=not_run, interrupted=self._stop, elapsed=time.monotonic() - t0,
                               gave_up=gave_up, servers=[book.stats[w.url] for w in self.workers])

    def _finished(self, row: dict | None) -> bool:
        if row is None:
            return False
        if row.get("status") not in DONE and (self.opts.retry_failed or row.get("status") not in ("error", "invalid")):
            return False
        folder = self.out_dir / str(row.get("output_dir", ""))
        return all((folder / name).is_file() for name in row.get("outputs") or [])  # re-run if files were deleted

    def _adopt(self, todo: list[Job], sent: dict[str, dict[str, Any]],
               latest: Mapping[str, dict[str, Any]] | None = None) -> None:
        """Jobs an earlier run journaled are looked up on the server they were sent to, not sent again.

        A job journaled on a server that is not in this run's list is sent again (with one server, it is
        looked up there: the same server may be spelled differently, ``localhost`` or ``127.0.0.1``).
        A journaled prompt whose outcome the manifest already holds (an error row written before the
        client was killed) is not looked up again, which would write that row a second time: the job is
        run again like any unfinished one."""
        by_url = {normalize_url(w.url): w for w in self.workers}
        adopted = 0
        for job in todo:
            row = sent.get(job.key)
            done = (latest or {}).get(job.key)
            if row is not None and done is not None and done.get("prompt_id") == row.get("prompt_id"):
                self.book.attempts[job.key] = self.book.base[job.key] = int(row.get("attempt") or 1)
                self.book.pending.append(job)
                continue
            worker = None if row is None else by_url.get(normalize_url(str(row.get("server") or "")))
            if row is not None and worker is None and len(self.workers) == 1:
                worker = self.workers[0]
            if worker is None:
                if row is not None:
                    self._say(f"job {job.index} ({job.label}) was sent to {row.get('server')} by an earlier run; that "
                              "server is not in this run's list, so the job is sent again (a result there is not "
                              "collected)")
                    self.book.attempts[job.key] = self.book.base[job.key] = int(row.get("attempt") or 1)
                self.book.pending.append(job)
                continue
            self.book.adopt(worker.url, job, row)
            adopted += 1
        if adopted:
            where = "the server" if len(self.workers) == 1 else "their servers"
            self._say(f"{adopted} jobs were sent by an earlier run; looking them up on {where}")

    def _retire_superseded(self, sent: dict[str, dict[str, Any]]) -> None:
        """Sends of this sweep's jobs that the journal shows superseded by a later send of the same job: a
        killed run moved those jobs off a server that went away (or found them lost) and sent them again.
        Such a prompt may still be queued or running there; it is retired as the killed run kept it (deleted
        or interrupted when its server answers, its result dropped), on the servers of this run's list."""
        by_url = {normalize_url(w.url): w for w in self.workers}
        mine = {job.key: job for job in self.jobs}
        for row in self.manifest.journal.rows():
            job, pid = mine.get(str(row.get("key"))), row.get("prompt_id")
            if job is None or not pid or (sent.get(job.key) or {}).get("prompt_id") == pid:
                continue  # another sweep's, not a send, or the job's last send (adopted or done)
            worker = by_url.get(normalize_url(str(row.get("server") or "")))
            if worker is not None:
                self.book.retire_earlier(worker.url, job, row)

    def request_stop(self) -> None:
        """What Ctrl-C does: stop sending and cancel this client's prompts (safe from another thread)."""
        if not self._stop:
            self._stop = True
            if self.book is not None:
                self.book.changed.set()

    def _install_sigint(self) -> Any:
        if threading.current_thread() is not threading.main_thread():
            return None

        def on_sigint(signum: int, frame: Any) -> None:
            if self._stop:
                raise KeyboardInterrupt  # second Ctrl-C: quit now; the journal keeps what was sent
            where = "the server" if len(self.workers) == 1 else "every server"
            self._say(f"stopping: cancelling this client's prompts on {where} (Ctrl-C again to quit at once)")
            self.request_stop()

        return signal.signal(signal.SIGINT, on_sigint)

    def _say(self, text: str) -> None:
        if self._log is not None:
            self._log(text)
        elif self._progress is not None:
            self._progress.message(text)

    # -- dispatching -----------------------------------------------------------------------------

    def _dispatch(self) -> str | None:
        """Hand out jobs until none is left (None), or no usable server answered for ``server_wait`` (why)."""
        book = self.book
        while True:
            if self._stop:
                self._cancel()
                return None
            with book.lock:
                book.changed.clear()
                failed = [w for w in self.workers if w.state == DISABLED]
                if len(failed) == len(self.workers):
                    raise failed[0].error  # every server refused us for good (auth...): as before, stop with it
                if not book.pending and not book.current and not any(w.inbox for w in self.workers):
                    return None
                self._place_nowhere()
                self._move_off_away()
                self._assign()
                gave_up = self._stalled()
            if gave_up:
                self._say(f"error: {gave_up}")
                return gave_up
            self._show_servers()
            book.changed.wait(0.2)

    def _eligible(self, job: Job, among: Sequence[ServerWorker]) -> list[ServerWorker]:
        """The servers of ``among`` that may get ``job``: those that have not refused it and where it checks
        clean; or, when no server up or starting can be clean for it (a starting one's node list is not
        known yet), those where it is only doubtful: that server's own validation decides."""
        refused = self.book.rejections.get(job.key, {})
        fits = {w.url: w.fit(job) for w in self.workers if w.state != DISABLED and w.url not in refused}
        hopeful = any(w.url in fits and fits[w.url] in ("yes", None) for w in self.workers if w.state in (UP, NEW))
        want = ("yes",) if hopeful else ("yes", "doubtful")  # a server starting up may turn out clean: wait
        return [w for w in among if w.url in fits and fits[w.url] in want]

    def _assign(self) -> None:
        """Give waiting jobs to servers with free capacity: of those that can run a job, the fastest
        (shortest run time per job so far; a server not measured yet counts as fastest, so it gets tried).

        While some servers have not answered their first probe yet, a ready server takes at most its share
        of the jobs left (jobs left / servers ready or starting): the first server that answers does not
        take the whole batch when ``--in-flight`` is large, the others get theirs when they are ready."""
        book = self.book
        cap = self.opts.in_flight
        starting = [w for w in self.workers if w.state == NEW or (w.state == UP and not w.ready())]
        if starting:
            ready = [w for w in self.workers if w.ready()]
            left = len(book.pending) + len(book.current) + sum(len(w.inbox) for w in self.workers)
            cap = min(cap, max(1, -(-left // max(1, len(ready) + len(starting)))))
        free = [w for w in self.workers if w.ready() and w.load() < cap]
        kept: list[Job] = []
        while book.pending and free:
            job = book.pending.popleft()
            candidates = self._eligible(job, free)
            if not candidates:
                kept.append(job)
                continue
            worker = min(candidates, key=lambda w: (book.stats[w.url].seconds_per_job or 0.0, w.load(), w.order))
            worker.assign(job)
            if worker.load() >= cap:
                free.remove(worker)
        book.pending.extendleft(reversed(kept))
        if not book.pending:
            self._steal()

    def _steal(self) -> None:
        """Nothing is waiting here, yet a server is idle while jobs wait in another server's queue (behind
        a slow job, or another client's): ask that server's worker to hand one over (the last in its
        queue; from the slowest server first). A slow server then does not hold up the end of the batch.

        A job is handed over once: a second steal could send it back where it came from, and then again
        (each hand-over puts it at the end of a queue), so a job that was handed over stays where it is."""
        book = self.book
        slowest_first = sorted(self.workers, key=lambda w: -(book.stats[w.url].seconds_per_job or 0.0))
        for idle in self.workers:
            if not idle.ready() or idle.load() or idle.expecting:
                continue
            for other in slowest_first:
                if other is idle or other.state != UP:
                    continue
                waiting = [a for a in book.held(other.url) if a.running_since is None and not a.uncertain
                           and a.prompt_id not in other.releasing and a.job.key not in book.handed
                           and idle.fit(a.job) == "yes" and self._eligible(a.job, [idle])]
                if waiting:
                    other.releasing[waiting[-1].prompt_id] = idle
                    idle.expecting += 1
                    other.wake()
                    break

    def _place_nowhere(self) -> None:
        """A waiting job that no server can run becomes one error row: every server (not out of the run)
        either lacks a node it needs (proven from its node list) or refused the job when it was sent.
        A server whose node list is not known yet, or that only doubts (a value not in its list), may
        still run it: the job waits for it, or is sent to it."""
        book = self.book
        usable = [w for w in self.workers if w.state != DISABLED]
        if not usable or not book.pending:
            return
        for job in list(book.pending):
            verdicts: dict[str, list[dict]] = {}
            for worker in usable:
                refused = book.rejections.get(job.key, {}).get(worker.url)
                if refused is not None:
                    verdicts[worker.url] = _refusal_items(refused)
                    continue
                if worker.fit(job) != "no":
                    break  # unknown yet, or it may run the job
                verdicts[worker.url] = worker.problems(job) or []
            else:
                book.pending.remove(job)
                error = nowhere_error(verdicts)
                self._say(f"job {job.index} ({job.label}): {describe_error(error)}")
                book.fail_unsent(job, error)

    def _move_off_away(self) -> None:
        """Jobs of a server away for ``move_after`` seconds (or out of the batch) go to the others, job by
        job: each one that a server now ready may run moves (its attempt is retired); one that no ready
        server can run stays with its server, which may come back, and is looked at again next time.
        With one server there is nowhere to move: it is waited for."""
        if len(self.workers) < 2:
            return
        now = time.monotonic()
        for worker in self.workers:
            held = self.book.held(worker.url)
            if not held:
                continue
            if worker.state == DISABLED:
                why = f"server {short_name(worker.url)} is out of this run"
            elif worker.state == AWAY and worker.away_since is not None and now - worker.away_since >= \
                    self.opts.move_after:
                why = f"server {short_name(worker.url)} has not answered for {now - worker.away_since:.0f}s"
            elif worker.state == STUCK and worker.away_since is not None and now - worker.away_since >= \
                    self.opts.move_after:
                why = f"server {short_name(worker.url)}'s queue has not moved for {now - worker.advanced_at:.0f}s"
            else:
                continue
            others = [w for w in self.workers if w is not worker and w.ready()]
            movable = [a for a in held if self._eligible(a.job, others)]
            if movable:
                self.book.move_away(worker.url, why, movable)

    def _stalled(self) -> str | None:
        """Why the run gives up, once nothing could move for ``server_wait`` seconds; else None."""
        book = self.book
        ready = [w for w in self.workers if w.ready()]
        moving = any(w.state == UP and (book.held(w.url) or w.inbox) for w in self.workers) or any(
            self._eligible(job, ready) for job in book.pending)
        if moving or not (book.pending or book.current):
            self._stalled_since = None
            return None
        now = time.monotonic()
        self._stalled_since = self._stalled_since or now
        if now - self._stalled_since <= self.opts.server_wait:
            return None
        resume = ("Nothing is lost: re-run the same command to resume (finished jobs are skipped; jobs already "
                  "sent are looked up by their prompt ids)")
        if len(self.workers) == 1:
            return f"server unreachable for {self.opts.server_wait:g}s ({self.workers[0].last_error}). {resume}"
        states = "; ".join(f"{short_name(w.url)}: {w.state}" + (f" ({w.last_error})" if w.state != UP else "")
                           for w in self.workers)
        left = len(book.pending) + len(book.current)
        return (f"no server that can run the remaining {left} jobs answered for {self.opts.server_wait:g}s "
                f"(--server-wait) [{states}]. {resume}")

    def _cancel(self) -> None:
        """Ctrl-C: every worker removes this client's prompts from its server; wait for them."""
        book = self.book
        with book.lock:
            book.stopping = True
            for worker in self.workers:
                book.pending.extendleft(reversed(worker.inbox))
                worker.inbox.clear()
        for worker in self.workers:
            worker.wake()
        limit = time.monotonic() + self.opts.cancel_wait + 3 * self.clients[0].timeout + 5
        for worker in self.workers:
            worker.join(timeout=max(0.0, limit - time.monotonic()))

    def _show_servers(self) -> None:
        """Refresh the per-server status lines (a farm on a terminal), at most twice a second."""
        if len(self.workers) < 2 or time.monotonic() - self._shown < 0.5:
            return
        self._shown = time.monotonic()
        for worker in self.workers:
            self._progress.server_status(worker.url, server_line(self.book.stats[worker.url], worker.state,
                                                                 self.book.held(worker.url)))


def server_line(stats: ServerStats, state: str, held: Sequence[Any] = ()) -> str:
    """``10.0.0.5:8188  7 done, 1 running, 1 queued, 3.2/min  [up]``: one server's progress line."""
    running = sum(1 for a in held if a.running_since is not None)
    rate = stats.rate_per_min()
    parts = [f"{stats.succeeded} done", f"{running} running", f"{len(held) - running} queued"]
    if rate is not None:
        parts.append(f"{rate:.1f}/min")
    if stats.failed_jobs:
        parts.append(f"{len(stats.failed_jobs)} failed")
    return f"{stats.name}  {', '.join(parts)}  [{state}]"


def _refusal_items(error: dict | None) -> list[dict]:
    """The node items of a server's 400 answer, or one item for a prompt-level refusal."""
    error = error or {}
    return list(error.get("nodes") or []) or [{"node_id": "", "title": None, "class_type": None, "input": None,
                                               "type": error.get("type"), "message": error.get("message"),
                                               "details": error.get("details")}]
