"""The batch runner: keep N prompts of this client on the server, follow them, save what they make.

Why it is built around reconciliation: the only trustworthy facts are what the server says *now*
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
* connection errors anywhere switch to "server away" mode: back off (0.5 s doubling to 5 s), keep
  all in-flight jobs, and reconcile as soon as ``/queue`` answers again; after ``server_wait`` seconds
  the run stops with :class:`ServerGaveUp` and a re-run resumes;
* a job's outputs are downloaded through ``/view`` (atomically) *before* its manifest row is appended
  (fsync), so a row with ``status: success`` always has its files;
* Ctrl-C (SIGINT) stops sending, removes this client's pending prompts from the server queue
  (``POST /queue {"delete": ids}``, by id), interrupts the running prompt only if it is one of ours
  (``POST /interrupt {"prompt_id": id}``, which the server ignores unless that id is running), waits
  for them to settle and records them as ``cancelled``. A second Ctrl-C quits at once; the journal
  lets the next run adopt whatever was left on the server.
"""

from __future__ import annotations

import collections
import json
import queue
import signal
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .client import ComfyClient
from .errors import PromptRejected, RequestError, ServerGaveUp, ServerUnreachable
from .jobs import Job
from .manifest import DONE, Manifest
from .outcome import (
    describe_error,
    execution_error,
    interrupted_at,
    iso,
    output_files,
    rejection_error,
    server_times,
    succeeded,
)
from .progress import Progress


@dataclass
class RunOptions:
    """How a batch runs (CLI flags in parentheses)."""

    in_flight: int = 2  # prompts of this client queued or running at once (--in-flight)
    use_ws: bool = True  # follow /ws events; polling alone works too (--no-ws)
    poll_interval: float = 1.0  # seconds between /queue checks while the websocket is down (--poll)
    ws_check_interval: float = 5.0  # safety-net /queue checks while the websocket is up
    server_wait: float = 600.0  # give up after the server was unreachable this long (--server-wait)
    max_attempts: int = 3  # sends per job when the server loses it (--max-attempts)
    lost_grace: float | None = None  # seconds before an unanswered send may be declared lost (timeout + 5)
    job_timeout: float | None = None  # interrupt a prompt running longer than this (--job-timeout)
    include_temp: bool = False  # also download "temp" files (PreviewImage) (--include-temp)
    retry_failed: bool = True  # re-run jobs whose last row is not success (--skip-failed turns off)
    cancel_wait: float = 30.0  # how long Ctrl-C waits for the server to drop our prompts
    progress: bool | None = None  # tqdm bars (None: when stderr is a terminal) (--no-progress)
    quiet: bool = False  # no per-job lines in plain mode (--quiet)
    extra_data: dict[str, Any] = field(default_factory=dict)  # sent as POST /prompt extra_data


@dataclass
class BatchResult:
    """What a run did. ``rows`` are the manifest rows it appended, in order."""

    manifest: Path
    total: int
    skipped: int
    rows: list[dict[str, Any]]
    not_run: int
    interrupted: bool
    elapsed: float
    gave_up: str | None = None

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


@dataclass
class _Active:
    """A job sent to the server under ``prompt_id`` (one attempt)."""

    job: Job
    prompt_id: str
    attempt: int
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
    warnings: list[str] = field(default_factory=list)


class BatchRunner:
    """Run ``jobs`` on ``client``'s server; outputs under ``out_dir``, rows in ``manifest`` (JSONL).

    ``manifest`` defaults to ``out_dir/manifest.jsonl``. Call :meth:`run` once.
    """

    def __init__(self, client: ComfyClient, jobs: Sequence[Job], out_dir: str | Path, *,
                 manifest: str | Path | None = None, options: RunOptions | None = None,
                 log: Callable[[str], None] | None = None):
        self.client = client
        self.jobs = list(jobs)
        self.out_dir = Path(out_dir)
        self.manifest = Manifest(manifest if manifest is not None else self.out_dir / "manifest.jsonl")
        self.opts = options or RunOptions()
        if self.opts.in_flight < 1:
            raise ValueError("in_flight must be at least 1")
        self._log = log
        self.client_id = ""
        self.active: dict[str, _Active] = {}
        self.pending: collections.deque[Job] = collections.deque()
        self.attempts: dict[str, int] = {}
        self.rows: list[dict[str, Any]] = []
        self.events: queue.Queue = queue.Queue()
        self.ws_up = False
        self._stop = False
        self._cancelling = False
        self._wake = threading.Event()
        self._check_now = True
        self._progress: Progress | None = None
        self._warned_ids = False

    # -- entry -----------------------------------------------------------------------------------

    def run(self) -> BatchResult:
        """Run the batch to the end (or Ctrl-C, or giving up on the server). Never raises for a job's failure."""
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
            self._progress = Progress(len(todo), bars=self.opts.progress, quiet=self.opts.quiet)
            if skipped:
                self._say(f"{skipped} of {len(self.jobs)} jobs already done (manifest {self.manifest.path}); "
                          "skipping them")
            for job in todo:
                row = sent.get(job.key)
                if row is None:
                    self.pending.append(job)
                    continue
                self.attempts[job.key] = int(row.get("attempt") or 1)
                self.active[str(row["prompt_id"])] = _Active(job, str(row["prompt_id"]), self.attempts[job.key],
                                                             sent_at=time.monotonic() - 1e9,
                                                             sent_wall=float(row.get("time") or time.time()))
            if self.active:
                self._say(f"{len(self.active)} jobs were sent by an earlier run; looking them up on the server")
            pump = _EventPump(self.client, self.client_id, self.events) if self.opts.use_ws else None
            if pump is not None:
                pump.start()
            previous = self._install_sigint()
            gave_up = None
            try:
                self._loop()
            except ServerGaveUp as err:
                gave_up = str(err)
                self._say(f"error: {err}")
            finally:
                if previous is not None:
                    signal.signal(signal.SIGINT, previous)
                if pump is not None:
                    pump.stop()
                self._progress.close()
            if not self.active:  # keep only other sweeps' unfinished sends, so a later run can still adopt them
                mine, done = {job.key for job in self.jobs}, self.manifest.latest()
                journal.retain([r for k, r in journal.latest().items()
                                if k not in mine and (done.get(k) or {}).get("status") not in DONE])
            return BatchResult(manifest=self.manifest.path, total=len(self.jobs), skipped=skipped, rows=self.rows,
                               not_run=len(self.pending) + len(self.active), interrupted=self._stop,
                               elapsed=time.monotonic() - t0, gave_up=gave_up)

    def _finished(self, row: dict | None) -> bool:
        if row is None:
            return False
        if row.get("status") not in DONE and (self.opts.retry_failed or row.get("status") not in ("error", "invalid")):
            return False
        folder = self.out_dir / str(row.get("output_dir", ""))
        return all((folder / name).is_file() for name in row.get("outputs") or [])  # re-run if files were deleted

    def request_stop(self) -> None:
        """What Ctrl-C does: stop sending and cancel this client's prompts (safe from another thread)."""
        if not self._stop:
            self._stop = True
            self._wake.set()

    def _install_sigint(self) -> Any:
        if threading.current_thread() is not threading.main_thread():
            return None

        def on_sigint(signum: int, frame: Any) -> None:
            if self._stop:
                raise KeyboardInterrupt  # second Ctrl-C: quit now; the journal keeps what was sent
            self._say("stopping: cancelling this client's prompts on the server (Ctrl-C again to quit at once)")
            self.request_stop()

        return signal.signal(signal.SIGINT, on_sigint)

    def _say(self, text: str) -> None:
        if self._log is not None:
            self._log(text)
        elif self._progress is not None:
            self._progress.message(text)

    # -- main loop -------------------------------------------------------------------------------

    def _loop(self) -> None:
        next_check = 0.0
        while True:
            if self._stop:
                self._cancel()
                return
            if not self.pending and not self.active:
                return
            try:
                self._fill()
                self._drain_events(max(0.0, min(0.25, next_check - time.monotonic())))
                if self._check_now or time.monotonic() >= next_check:
                    self._check_now = False
                    self._reconcile()
                    interval = self.opts.ws_check_interval if self.ws_up else self.opts.poll_interval
                    next_check = time.monotonic() + interval
                self._check_timeouts()
            except ServerUnreachable as err:
                self._wait_for_server(err)
                self._check_now = True

    def _fill(self) -> None:
        while not self._stop and self.pending and len(self.active) < self.opts.in_flight:
            self._send(self.pending.popleft())

    def _send(self, job: Job) -> None:
        attempt = self.attempts.get(job.key, 0) + 1
        self.attempts[job.key] = attempt
        prompt_id = str(uuid.uuid4())
        now = time.time()
        self.manifest.journal.append({"key": job.key, "prompt_id": prompt_id, "client_id": self.client_id,
                                      "server": self.client.base_url, "attempt": attempt, "time": now})
        active = _Active(job, prompt_id, attempt, sent_at=time.monotonic(), sent_wall=now)
        self.active[prompt_id] = active
        try:
            answer = self.client.submit(job.prompt, prompt_id=prompt_id, client_id=self.client_id,
                                        extra_data=self.opts.extra_data)
        except PromptRejected as err:
            error = rejection_error(err, job.prompt)
            self._say(f"job {job.index} ({job.label}) rejected by the server:\n{describe_error(error)}")
            self._record(active, "invalid", error=error)
            return
        except RequestError as err:
            self._record(active, "error", error={"kind": "request", "message": str(err)})
            self._say(f"job {job.index} ({job.label}): {err}")
            return
        active.uncertain = False
        if str(answer["prompt_id"]) != prompt_id:  # an old ComfyUI that picks its own ids
            if not self._warned_ids:
                self._warned_ids = True
                self._say("warning: this server ignores client-chosen prompt ids (ComfyUI older than 0.3.4x): "
                          "a send interrupted by a network error cannot be checked and may run twice")
            del self.active[prompt_id]
            active.prompt_id = str(answer["prompt_id"])
            self.active[active.prompt_id] = active
            self.manifest.journal.append({"key": job.key, "prompt_id": active.prompt_id, "client_id": self.client_id,
                                          "server": self.client.base_url, "attempt": attempt, "time": now})
        if answer.get("node_errors"):
            error = rejection_error(PromptRejected({"message": "some outputs failed validation and will not run"},
                                                   answer["node_errors"]), job.prompt)
            active.warnings.append(describe_error(error))
            self._say(f"job {job.index} ({job.label}): warning: {describe_error(error)}")

    # -- events ----------------------------------------------------------------------------------

    def _drain_events(self, timeout: float) -> None:
        to_check: set[str] = set()
        try:
            item = self.events.get(timeout=timeout) if timeout > 0 else self.events.get_nowait()
        except queue.Empty:
            return
        while True:
            self._on_event(item, to_check)
            try:
                item = self.events.get_nowait()
            except queue.Empty:
                break
        for prompt_id in to_check:
            active = self.active.get(prompt_id)
            if active is not None:
                entry = self.client.history(prompt_id)
                if entry is not None and entry.get("status"):
                    self._complete(active, entry)

    def _on_event(self, item: tuple[str, Any], to_check: set[str]) -> None:
        kind, data = item
        if kind == "ws":
            self.ws_up = data == "up"
            self._check_now = True  # reconnected (maybe to a restarted server) or lost: look at the queue
            return
        if not isinstance(data, dict):
            return
        typ, body = data.get("type"), data.get("data") or {}
        active = self.active.get(str(body.get("prompt_id"))) if isinstance(body, dict) else None
        if active is None:
            return
        job = active.job
        if typ == "execution_start":
            active.uncertain = False
            active.running_since = active.running_since or time.monotonic()
            self._progress.job_started(job.key, f"{job.index} {job.label}", len(job.prompt))
        elif typ == "execution_cached":
            active.finished_nodes.update(str(n) for n in body.get("nodes") or [])
        elif typ == "progress_state":
            for node_id, state in (body.get("nodes") or {}).items():
                if isinstance(state, dict) and state.get("state") == "finished":
                    active.finished_nodes.add(str(node_id))
        elif typ == "executing":
            node = body.get("node")
            if node is None:
                to_check.add(active.prompt_id)
            else:
                active.detail = str((job.prompt.get(str(node)) or {}).get("class_type", node))
        elif typ == "progress":
            node = (job.prompt.get(str(body.get("node"))) or {}).get("class_type", "")
            active.detail = f"{node} {body.get('value')}/{body.get('max')}".strip()
        elif typ == "executed":
            active.ws_outputs[str(body.get("node"))] = body.get("output") or {}
        elif typ in ("execution_success", "execution_error", "execution_interrupted"):
            active.ws_done = typ.removeprefix("execution_")
            to_check.add(active.prompt_id)
        self._progress.job_progress(job.key, len(active.finished_nodes), active.detail)

    # -- reconciliation --------------------------------------------------------------------------

    def _reconcile(self) -> None:
        """Compare our in-flight prompts with the server's queue and history (see module doc)."""
        if not self.active:
            return
        running, pending = self.client.queue_ids()
        present = set(running) | set(pending)
        now = time.monotonic()
        grace = self.opts.lost_grace if self.opts.lost_grace is not None else self.client.timeout + 5.0
        lost: list[_Active] = []
        for active in list(self.active.values()):
            pid = active.prompt_id
            if pid in present:
                active.uncertain = False
                if pid in running and active.running_since is None:
                    active.running_since = now
                    self._progress.job_started(active.job.key, f"{active.job.index} {active.job.label}",
                                               len(active.job.prompt))
                continue
            if active.entry is not None:
                self._complete(active, active.entry)
                continue
            entry = self.client.history(pid)
            if entry is not None and entry.get("status"):
                self._complete(active, entry)
            elif active.ws_done == "success" and active.ws_outputs:  # history gone, the events say done
                self._complete(active, {"outputs": active.ws_outputs, "status": {"status_str": "success"}})
            elif active.uncertain and now - active.sent_at < grace:
                continue
            else:
                lost.append(active)
        lost.sort(key=lambda a: a.job.index)
        for active in lost:
            self._lost(active, front=False)
        self.pending.extendleft(reversed([a.job for a in lost if a.attempt < self.opts.max_attempts]))

    def _lost(self, active: _Active, front: bool = True) -> None:
        """The server does not know this prompt any more: send the job again (first in line), or give up."""
        job = active.job
        self.active.pop(active.prompt_id, None)
        if active.attempt >= self.opts.max_attempts:
            self._say(f"job {job.index} ({job.label}) was lost by the server {active.attempt} times; giving up on it")
            self._record(active, "lost", error={"kind": "lost", "message": f"not in the server's queue or history "
                                                f"after {active.attempt} sends"}, remove=False)
            return
        self._say(f"job {job.index} ({job.label}): prompt {active.prompt_id} is neither queued nor in the "
                  "server's history (server restarted?); sending it again")
        if front:
            self.pending.appendleft(job)

    def _check_timeouts(self) -> None:
        limit = self.opts.job_timeout
        if not limit:
            return
        now = time.monotonic()
        for active in self.active.values():
            if active.running_since is not None and not active.timed_out and now - active.running_since > limit:
                active.timed_out = True
                self._say(f"job {active.job.index} ({active.job.label}) ran longer than {limit:g}s; interrupting it")
                self.client.interrupt(active.prompt_id)

    def _wait_for_server(self, err: Exception) -> None:
        self.ws_up = False
        self._say(f"server unreachable ({err}); retrying for up to {self.opts.server_wait:g}s, "
                  f"{len(self.active)} jobs in flight are kept")
        start = time.monotonic()
        delay = 0.5
        while True:
            if self._stop:
                raise ServerGaveUp("stopped while the server was unreachable; re-run the same command to resume "
                                   "(jobs still on the server are found again by their prompt ids)")
            self._wake.wait(delay)
            self._wake.clear()
            try:
                self.client.queue()
            except ServerUnreachable as again:
                if time.monotonic() - start > self.opts.server_wait:
                    raise ServerGaveUp(f"server unreachable for {self.opts.server_wait:g}s ({again}). Nothing is "
                                       "lost: re-run the same command to resume (finished jobs are skipped; jobs "
                                       "already sent are looked up by their prompt ids)") from again
                delay = min(delay * 2, 5.0)
                continue
            self._say(f"server is back after {time.monotonic() - start:.1f}s; checking in-flight jobs")
            return

    # -- Ctrl-C ----------------------------------------------------------------------------------

    def _cancel(self) -> None:
        self._cancelling = True
        if not self.active:
            return
        deadline = time.monotonic() + self.opts.cancel_wait
        grace = self.opts.lost_grace if self.opts.lost_grace is not None else self.client.timeout + 5.0
        try:
            while self.active:
                running, pending = self.client.queue_ids()
                ours_pending = [p for p in pending if p in self.active]
                self.client.delete_queued(ours_pending)
                for pid in running:
                    if pid in self.active:
                        self.client.interrupt(pid)  # only ours, and the server re-checks it is running
                running, pending = self.client.queue_ids()
                present = set(running) | set(pending)
                now = time.monotonic()
                for active in list(self.active.values()):
                    if active.prompt_id in present:
                        continue
                    entry = self.client.history(active.prompt_id)
                    if entry is not None and entry.get("status"):
                        self._complete(active, entry)  # finished meanwhile (kept) or interrupted (cancelled)
                    elif active.uncertain and now - active.sent_at < grace:
                        continue  # its POST may still land; the next round deletes it
                    else:
                        self._record(active, "cancelled", error={"kind": "cancelled",
                                                                 "message": "removed from the server queue (Ctrl-C)"})
                if not self.active or now > deadline:
                    break
                time.sleep(0.2)
        except (ServerUnreachable, RequestError) as err:
            self._say(f"could not cancel on the server ({err}); the next run will find those prompts again")
            return
        if self.active:
            self._say(f"{len(self.active)} prompts still on the server after {self.opts.cancel_wait:g}s; "
                      "the next run will adopt them")

    # -- completion ------------------------------------------------------------------------------

    def _complete(self, active: _Active, entry: dict) -> None:
        job = active.job
        if succeeded(entry):
            active.entry = entry
            t0 = time.monotonic()
            files = []
            counters: dict[str, int] = {}
            folder = self.out_dir / job.folder
            for node_id, rec in output_files(entry, self.opts.include_temp):
                k = counters.get(node_id, 0)
                counters[node_id] = k + 1
                suffix = Path(rec["filename"]).suffix
                name = f"{node_id.replace(':', '-')}_{k:02d}{suffix}"
                try:
                    size = self.client.download(rec, folder / name)
                except RequestError as err:
                    if err.status == 404:
                        self._say(f"job {job.index}: output {rec['filename']} is gone from the server; "
                                  "running it again")
                        active.entry = None
                        self._lost(active)
                        return
                    if err.status != 400:  # auth, server trouble: not this job's fault, stop as before
                        raise
                    # the server refuses this file (ComfyUI answers 400 for names holding '..'): this job
                    # failed, the batch goes on
                    said = f": {err.body.strip()[:200]}" if err.body.strip() else ""
                    hint = (" ComfyUI refuses file names containing '..': change the filename_prefix."
                            if ".." in rec["filename"] else "")
                    error = {"kind": "download", "message": f"output {rec['filename']} could not be downloaded: "
                             f"the server answered HTTP {err.status}{said}.{hint}"}
                    self._say(f"job {job.index} ({job.label}) failed: {error['message']}")
                    self._record(active, "error", entry=entry, files=files, error=error)
                    return
                files.append({"path": name, "node": node_id, "filename": rec["filename"],
                              "subfolder": rec.get("subfolder", ""), "type": rec.get("type", "output"), "bytes": size})
            if not files:
                active.warnings.append("the prompt produced no output files (no SaveImage-like node?)")
            self._record(active, "success", entry=entry, files=files, download_s=time.monotonic() - t0)
            return
        where = interrupted_at(entry)
        if where is not None:
            status = "cancelled" if self._cancelling else ("timeout" if active.timed_out else "interrupted")
            self._record(active, status, entry=entry, error={"kind": status, "message": "interrupted while running "
                                                              f"node #{where['node_id']} ({where['class_type']})"})
            return
        error = execution_error(entry, job.prompt) or {"kind": "execution", "message": "the server reported an error"}
        self._say(f"job {job.index} ({job.label}) failed: {describe_error(error)}")
        self._record(active, "error", entry=entry, error=error)

    def _record(self, active: _Active, status: str, *, entry: dict | None = None, files: list | None = None,
                error: dict | None = None, download_s: float | None = None, remove: bool = True) -> None:
        """Append the job's manifest row (fsync) and take it off the in-flight list."""
        job = active.job
        now = time.time()
        start, end = server_times(entry or {})
        timings = {"queue_s": _round(start - active.sent_wall) if start else None,
                   "run_s": _round(end - start) if start and end else None,
                   "download_s": _round(download_s), "total_s": _round(now - active.sent_wall)}
        row = {"key": job.key, "index": job.index, "status": status, "params": job.params,
               "prompt_id": active.prompt_id, "attempt": active.attempt, "server": self.client.base_url,
               "client_id": self.client_id, "output_dir": job.folder,
               "outputs": [f["path"] for f in files or []], "files": files or [],
               "queued_at": iso(active.sent_wall), "started_at": iso(start), "finished_at": iso(end or now),
               "timings": timings, "error": error, "warnings": active.warnings}
        self.manifest.append(row)
        self.rows.append(row)
        if remove:
            self.active.pop(active.prompt_id, None)
        line = f"{status:<9} {job.label}"
        if status == "success":
            line += f" ({timings['total_s']}s) -> {job.folder}/" + (",".join(row["outputs"]) or "(no files)")
        elif error:
            line += f": {describe_error(error).splitlines()[0]}"
        self._progress.job_finished(job.key, line)


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


class _EventPump(threading.Thread):
    """Reads ``/ws?clientId=`` in the background and queues ``("msg", data)`` / ``("ws", "up"|"down")``."""

    def __init__(self, client: ComfyClient, client_id: str, events: queue.Queue):
        super().__init__(name="comfy-batch-ws", daemon=True)
        self.client, self.client_id, self.events = client, client_id, events
        self._halt = threading.Event()
        self._ws = None

    def run(self) -> None:
        delay = 0.5
        while not self._halt.is_set():
            try:
                ws = self.client.connect_ws(self.client_id, timeout=min(self.client.timeout, 10.0))
            except (ServerUnreachable, OSError):
                self._halt.wait(delay)
                delay = min(delay * 2, 5.0)
                continue
            self._ws, delay = ws, 0.5
            self.events.put(("ws", "up"))
            try:
                while not self._halt.is_set():
                    message = ws.recv()
                    if isinstance(message, str):
                        try:
                            self.events.put(("msg", json.loads(message)))
                        except json.JSONDecodeError:
                            continue
            except OSError:
                pass
            finally:
                ws.close()
                self._ws = None
            if not self._halt.is_set():
                self.events.put(("ws", "down"))

    def stop(self) -> None:
        self._halt.set()
        ws = self._ws
        if ws is not None:
            ws.close()
        self.join(timeout=5)
