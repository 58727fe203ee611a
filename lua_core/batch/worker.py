"""One server of a batch: send the jobs it is given, follow them, collect their outputs, ride out outages.

Why a thread per server: every request can block for ``--timeout`` seconds when a server hangs, and a
batch over several servers must not wait for the slowest one. Each worker talks to its own server only;
what it decides about a job goes through the shared :class:`~lua_core.batch.farm.Book`, which refuses
a decision about an attempt that is no longer current (the job was moved meanwhile).

The rules are those of the single-server client, kept per server (see :mod:`lua_core.batch.runner`):
prompt ids are journaled before ``POST /prompt``; ``/queue`` then ``/history`` say whether a prompt is
waiting, done or lost (a send whose answer never came gets ``lost_grace`` seconds first); connection
errors make the server *away* (it is probed with backoff, its jobs stay until the dispatcher moves
them); when it answers again it is *up*: its jobs are looked up, retired prompts of moved jobs still
queued there are deleted and running ones interrupted (by id: ``POST /interrupt`` only stops the prompt
named), and with a farm its ``/object_info`` is fetched again (a restart may bring other nodes or models)
and its earlier refusals are forgotten. A server that answers HTTP while its executor is stuck (its
queue has not advanced, and no event of ours arrived, for ``stall_after`` seconds) is *stuck*: it gets
no jobs, and the dispatcher moves its jobs as it does those of a server away; it is up again as soon
as its queue moves.
"""

from __future__ import annotations

import collections
import queue
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .capability import fit, prompt_problems
from .client import ComfyClient
from .errors import PromptRejected, RequestError, ServerUnreachable
from .events import EventPump
from .farm import Attempt, Book, StagedFile
from .jobs import Job
from .outcome import (
    describe_error,
    execution_error,
    interrupted_at,
    output_files,
    rejection_error,
    succeeded,
)
from .servers import short_name

if TYPE_CHECKING:
    from .runner import RunOptions

NEW, UP, AWAY, STUCK, DISABLED = "new", "up", "away", "stuck", "disabled"


class ServerWorker(threading.Thread):
    """The thread that drives one server. ``info``: its ``/object_info`` when already fetched."""

    def __init__(self, client: ComfyClient, book: Book, options: RunOptions, *, order: int, precheck: bool,
                 info: dict | None = None):
        super().__init__(name=f"comfy-batch {client.base_url}", daemon=True)
        self.client = client
        self.url = client.base_url
        self.book = book
        self.opts = options
        self.order = order
        self.precheck = precheck
        self.state = NEW
        self.was_up = False  # answered at least once in this run
        self.away_since: float | None = None
        self.refused_at: float | None = None  # the last refused connection of the current outage
        self.last_error = ""
        self.info = info if precheck else None
        self.error: BaseException | None = None
        self.inbox: collections.deque[Job] = collections.deque()  # assigned, not sent yet (under book.lock)
        self.releasing: dict[str, ServerWorker] = {}  # prompt id -> the idle worker that takes it (book.lock)
        self.expecting = 0  # jobs released by other workers on their way to this one (book.lock)
        self.events: queue.Queue = queue.Queue()
        self.ws_up = False
        self._problems: dict[str, list[dict]] = {}
        self._running: tuple[str, ...] = ()  # the running prompt ids at the last /queue check
        self._watching = False  # that check was made while the server held jobs of ours
        self.advanced_at = time.monotonic()  # last sign that the executor moves (queue changed, events of ours)
        self._recheck = False  # the websocket reconnected (maybe a restarted server): read /object_info again
        self._check_now = True
        self._cancelling = False
        self._ws_seen = False
        self._warned_ids = False
        self._wake = threading.Event()
        name = short_name(self.url)
        self.who = f"server {name}" if book.farm else "server"  # starts a message
        self.the_server = f"server {name}" if book.farm else "the server"  # inside a message

    # -- what the dispatcher asks ------------------------------------------------------------------

    def ready(self) -> bool:
        """Whether the server is up (and its node list known, when jobs are checked before sending)."""
        return self.state == UP and (not self.precheck or self.info is not None)

    def load(self) -> int:
        """Jobs of this batch on the server, plus those assigned to it and not sent yet."""
        return len(self.book.held(self.url)) + len(self.inbox)

    def problems(self, job: Job) -> list[dict] | None:
        """Why ``job`` would not validate here (``[]``: it would); None while the node list is unknown."""
        if not self.precheck:
            return []
        info = self.info
        if info is None:
            return None
        if job.key not in self._problems:
            self._problems[job.key] = prompt_problems(job.prompt, info)
        return self._problems[job.key]

    def fit(self, job: Job) -> str | None:
        """``"yes"``, ``"doubtful"`` or ``"no"`` (:func:`~lua_core.batch.capability.fit`); None while unknown."""
        return fit(self.problems(job))

    def assign(self, job: Job) -> None:
        """Give the worker a job to send (the caller holds ``book.lock``)."""
        self.inbox.append(job)
        self.events.put(("wake", None))

    def wake(self) -> None:
        self._wake.set()
        self.events.put(("wake", None))

    # -- the thread ----------------------------------------------------------------------------------

    def run(self) -> None:
        pump = EventPump(self.client, self.book.client_id, self.events) if self.opts.use_ws else None
        if pump is not None:
            pump.start()
        try:
            self._loop()
        except BaseException as err:  # noqa: BLE001 - a refusal retrying will not fix (auth...), or a bug
            self._disable(err)
        finally:
            if pump is not None:
                pump.stop()

    def _loop(self) -> None:
        next_check, delay = 0.0, 0.5
        while not self.book.finished:
            if self.book.stopping:
                self._cancel()
                return
            try:
                if self.state in (NEW, AWAY):
                    self._probe()
                    delay = 0.5
                elif self._recheck and self.precheck:
                    self._refresh_capabilities()
                self._send_inbox()
                self._release()
                self._drain_events(max(0.0, min(0.25, next_check - time.monotonic())))
                if self._check_now or time.monotonic() >= next_check:
                    self._check_now = False
                    self._reconcile()
                    interval = self.opts.ws_check_interval if self.ws_up else self.opts.poll_interval
                    next_check = time.monotonic() + interval
                self._check_timeouts()
            except ServerUnreachable as err:
                self._went_away(err)
                self._wake.wait(delay)
                self._wake.clear()
                delay = min(delay * 2, 5.0)
                self._check_now = True

    def _say(self, text: str) -> None:
        self.book.say(text)

    # -- up and away -----------------------------------------------------------------------------

    def _probe(self) -> None:
        """Is the server answering? (``GET /queue``, then ``/object_info`` when its nodes must be known.)"""
        was_away = self.state == AWAY
        self.client.queue()
        if self.precheck and (self.info is None or was_away):
            self._refresh_capabilities()
        with self.book.lock:
            if was_away and self.refused_at is not None:
                # sends cut by a process that is gone since: if this server does not show them now, they
                # are lost, without waiting out the grace a send to a live but slow server gets
                for attempt in self.book.held(self.url):
                    if attempt.uncertain and attempt.sent_at < self.refused_at:
                        attempt.uncertain = False
            self.refused_at = None
            if was_away and self.away_since is not None:
                away = time.monotonic() - self.away_since
                self.book.stats[self.url].away_seconds += away
                self._say(f"{self.who} is back after {away:.1f}s; checking in-flight jobs" if self.was_up else
                          f"{self.who} answers after {away:.1f}s; it joins the batch")
            self.state, self.away_since, self.was_up = UP, None, True
            self.advanced_at = time.monotonic()
        self._check_now = True
        self.book.changed.set()

    def _refresh_capabilities(self) -> None:
        """Read ``/object_info`` again (a server that came back may have other nodes or models): the jobs'
        checks are redone, and the refusals it gave before no longer hold (they are re-decided by sending)."""
        info = self.client.object_info()
        with self.book.lock:
            self.info, self._problems, self._recheck = info, {}, False
            self.book.forget_rejections(self.url)

    def _went_away(self, err: Exception) -> None:
        with self.book.lock:
            if getattr(err, "refused", False):
                self.refused_at = time.monotonic()
            self.ws_up = False
            self.last_error = str(err)
            if self.state == AWAY:
                return
            since = self.away_since if self.state == STUCK else None  # stuck, then silent: one outage
            self.state, self.away_since = AWAY, since or time.monotonic()
            self.book.stats[self.url].times_away += 1
            self.book.pending.extendleft(reversed(self.inbox))  # never sent: back in line at once
            self.inbox.clear()
            for target in self.releasing.values():  # the idle servers waiting for a job from here: not now
                target.expecting = max(0, target.expecting - 1)
            self.releasing.clear()
            held = len(self.book.held(self.url))
        if not self.book.farm:
            self._say(f"server unreachable ({err}); retrying for up to {self.opts.server_wait:g}s, "
                      f"{held} jobs in flight are kept")
        elif not self.was_up and not held:
            self._say(f"{self.who} unreachable ({err}); it joins the batch when it answers")
        elif held:
            self._say(f"{self.who} unreachable ({err}); its {held} jobs wait {self.opts.move_after:g}s for it "
                      "(--move-after), then move to the other servers")
        else:
            self._say(f"{self.who} unreachable ({err}); it gets jobs again when it answers")
        self.book.changed.set()

    def _disable(self, err: BaseException) -> None:
        """Out of this run (a refusal retrying will not fix): its unsent jobs go back in line and the
        hand-overs it was asked for are called off (the idle servers waiting for them may ask again). No
        request is sent to it or to any other server: its prompts of this batch are moved by the
        dispatcher (retired), other servers' prompts and other clients' are not touched."""
        with self.book.lock:
            self.error = err
            self.state = DISABLED
            self.book.stats[self.url].disabled = str(err) or type(err).__name__
            self.book.pending.extendleft(reversed(self.inbox))
            self.inbox.clear()
            for target in self.releasing.values():
                target.expecting = max(0, target.expecting - 1)
            self.releasing.clear()
        if self.book.farm:
            self._say(f"error: {self.who}: {err}; it takes no more jobs in this run")
        self.book.changed.set()

    # -- sending ---------------------------------------------------------------------------------

    def _send_inbox(self) -> None:
        while True:
            with self.book.lock:
                if self.book.stopping or self.book.finished or not self.inbox or self.state != UP:
                    return
                attempt = self.book.begin(self.url, self.inbox.popleft())
            self._submit(attempt)

    def _submit(self, attempt: Attempt) -> None:
        job = attempt.job
        try:
            answer = self.client.submit(job.prompt, prompt_id=attempt.prompt_id, client_id=self.book.client_id,
                                        extra_data=self.opts.extra_data)
        except PromptRejected as err:
            error = rejection_error(err, job.prompt)
            elsewhere = self.book.farm and _may_validate_elsewhere(err)
            if elsewhere:
                self._say(f"job {job.index} ({job.label}) refused by {self.the_server} "
                          f"({describe_error(error).splitlines()[-1].strip()}); trying the other servers")
            else:
                self._say(f"job {job.index} ({job.label}) rejected by {self.the_server}:\n{describe_error(error)}")
            self.book.rejected(attempt, error, elsewhere)
            return
        except RequestError as err:
            self.book.record(attempt, "error", error={"kind": "request", "message": str(err)})
            self._say(f"job {job.index} ({job.label}): {err}")
            return
        attempt.uncertain = False
        if str(answer["prompt_id"]) != attempt.prompt_id:  # an old ComfyUI that picks its own ids
            if not self._warned_ids:
                self._warned_ids = True
                self._say(f"warning: {self.the_server} ignores client-chosen prompt ids (ComfyUI older than "
                          "0.3.4x): a send interrupted by a network error cannot be checked and may run twice")
            self.book.rekey(attempt, str(answer["prompt_id"]))
        if answer.get("node_errors"):
            error = rejection_error(PromptRejected({"message": "some outputs failed validation and will not run"},
                                                   answer["node_errors"]), job.prompt)
            attempt.warnings.append(describe_error(error))
            self._say(f"job {job.index} ({job.label}): warning: {describe_error(error)}")

    def _release(self) -> None:
        """Give prompts that wait in this server's queue to idle servers the dispatcher picked: delete them
        here (``POST /queue {"delete"}`` only removes prompts that have not started), and hand over the
        ones that are then neither queued, running nor finished. One that started meanwhile stays."""
        with self.book.lock:
            for pid, target in list(self.releasing.items()):
                if not target.ready():  # it went away or out of the run since it asked: call it off
                    del self.releasing[pid]
                    target.expecting = max(0, target.expecting - 1)
            asked = dict(self.releasing)
        if not asked:
            return
        self.client.delete_queued(list(asked))
        running, pending = self.client.queue_ids()
        for pid, target in asked.items():
            attempt = self.book.find(self.url, pid)
            entry = None
            if attempt is not None and pid not in running and pid not in pending:
                entry = self.client.history(pid)
            with self.book.lock:
                self.releasing.pop(pid, None)
                target.expecting = max(0, target.expecting - 1)
                if attempt is None or pid in running or pid in pending or (entry is not None and entry.get("status")):
                    handed = False
                else:
                    handed = self.book.take_back(attempt)
                if handed:
                    self._say(f"job {attempt.job.index} ({attempt.job.label}) was waiting in {self.the_server}'s "
                              f"queue: moved to idle server {short_name(target.url)}")
                    if target.ready():
                        target.assign(attempt.job)
                    else:
                        self.book.pending.appendleft(attempt.job)
            if entry is not None and entry.get("status") and attempt is not None:
                self._complete(attempt, entry)  # it finished before the delete reached it

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
            attempt = self.book.find(self.url, prompt_id)
            if attempt is not None:
                entry = self.client.history(prompt_id)
                if entry is not None and entry.get("status"):
                    self._complete(attempt, entry)

    def _on_event(self, item: tuple[str, Any], to_check: set[str]) -> None:
        kind, data = item
        if kind == "ws":
            if data == "up" and self.was_up and not self.ws_up and self._ws_seen:
                self._recheck = True  # reconnected: the server may have restarted with other nodes or models
            self.ws_up = data == "up"
            self._ws_seen = True
            self._check_now = True  # reconnected (maybe to a restarted server) or lost: look at the queue
            return
        if kind != "msg" or not isinstance(data, dict):
            return
        typ, body = data.get("type"), data.get("data") or {}
        attempt = self.book.find(self.url, str(body.get("prompt_id"))) if isinstance(body, dict) else None
        if attempt is None:  # another client's prompt, or a retired one: not ours to follow
            return
        self.advanced_at = time.monotonic()
        job, progress = attempt.job, self.book.progress
        if typ == "execution_start":
            attempt.uncertain = False
            attempt.running_since = attempt.running_since or time.monotonic()
            progress.job_started(job.key, f"{job.index} {job.label}", len(job.prompt))
        elif typ == "execution_cached":
            attempt.finished_nodes.update(str(n) for n in body.get("nodes") or [])
        elif typ == "progress_state":
            for node_id, state in (body.get("nodes") or {}).items():
                if isinstance(state, dict) and state.get("state") == "finished":
                    attempt.finished_nodes.add(str(node_id))
        elif typ == "executing":
            node = body.get("node")
            if node is None:
                to_check.add(attempt.prompt_id)
            else:
                attempt.detail = str((job.prompt.get(str(node)) or {}).get("class_type", node))
        elif typ == "progress":
            node = (job.prompt.get(str(body.get("node"))) or {}).get("class_type", "")
            attempt.detail = f"{node} {body.get('value')}/{body.get('max')}".strip()
        elif typ == "executed":
            attempt.ws_outputs[str(body.get("node"))] = body.get("output") or {}
        elif typ in ("execution_success", "execution_error", "execution_interrupted"):
            attempt.ws_done = typ.removeprefix("execution_")
            to_check.add(attempt.prompt_id)
        progress.job_progress(job.key, len(attempt.finished_nodes), attempt.detail)

    # -- reconciliation --------------------------------------------------------------------------

    def _grace(self) -> float:
        return self.opts.lost_grace if self.opts.lost_grace is not None else self.client.timeout + 5.0

    def _reconcile(self) -> None:
        """Compare this server's jobs with its queue and history (see the module doc of the runner)."""
        held, retired = self.book.held(self.url), self.book.retired_on(self.url)
        if not held and not retired and self.state != STUCK:
            self._watching = False
            return
        running, pending = self.client.queue_ids()
        present = set(running) | set(pending)
        now, grace = time.monotonic(), self._grace()
        self._health(held, running, now)
        lost: list[Attempt] = []
        for attempt in held:
            if not self.book.owns(attempt):
                continue
            pid = attempt.prompt_id
            if pid in present:
                attempt.uncertain = False
                if pid in running and attempt.running_since is None:
                    attempt.running_since = now
                    self.book.progress.job_started(attempt.job.key, f"{attempt.job.index} {attempt.job.label}",
                                                   len(attempt.job.prompt))
                continue
            if attempt.entry is not None:
                self._complete(attempt, attempt.entry)
                continue
            entry = self.client.history(pid)
            if entry is not None and entry.get("status"):
                self._complete(attempt, entry)
            elif attempt.ws_done == "success" and attempt.ws_outputs:  # history gone, the events say done
                self._complete(attempt, {"outputs": attempt.ws_outputs, "status": {"status_str": "success"}})
            elif attempt.uncertain and now - attempt.sent_at < grace:
                continue
            else:
                lost.append(attempt)
        self.book.lost(lost, lambda a: f"job {a.job.index} ({a.job.label}): prompt {a.prompt_id} is neither queued "
                                       f"nor in {self.the_server}'s history (server restarted?); sending it again")
        self._clean_retired(retired, running, pending, now, grace)

    def _health(self, held: list[Attempt], running: list[str], now: float) -> None:
        """Is the executor moving? It is when the running prompts changed since the last check, nothing
        runs, or an event of ours arrived; a server whose queue has not moved for ``stall_after`` seconds
        while it holds jobs of ours is *stuck* (HTTP answers, the executor does not); it is up again as
        soon as its queue moves."""
        current = tuple(running)
        if current != self._running or not current or not self._watching:
            self.advanced_at = max(self.advanced_at, now)  # (not watched before: the clock starts now)
        self._running, self._watching = current, bool(held)
        limit = self.opts.stall_after
        with self.book.lock:
            if self.state == STUCK and self.advanced_at > (self.away_since or 0):
                away = now - (self.away_since or now)
                self.book.stats[self.url].away_seconds += away
                self.state, self.away_since = UP, None
                self._say(f"{self.who}: its queue moves again after {away:.0f}s; it takes jobs again")
                self.book.changed.set()
            elif self.book.farm and self.state == UP and limit and held and current and \
                    now - self.advanced_at >= limit:
                self.state, self.away_since = STUCK, now
                self.book.stats[self.url].times_away += 1
                self.book.pending.extendleft(reversed(self.inbox))
                self.inbox.clear()
                self._say(f"{self.who}: its queue has not moved for {now - self.advanced_at:.0f}s (prompt "
                          f"{current[0]} running, no progress event of ours; --stall-after): its executor looks "
                          f"stuck; its {len(held)} job{'s' if len(held) > 1 else ''} move to the other servers "
                          f"after {self.opts.move_after:g}s (--move-after) unless its queue moves")
                self.book.changed.set()

    def _clean_retired(self, retired: list[Attempt], running: list[str], pending: list[str], now: float,
                       grace: float) -> None:
        """Prompts of jobs moved off this server: delete the queued ones, interrupt a running one, and
        drop what they produced (the moved copy is the one that counts). A retired prompt stays retired
        for the whole run: once settled (not queued, not running, history read) it is no longer looked up,
        but if it shows up again (a send that reached a frozen server lands when it thaws) it is deleted
        or interrupted again, and its result is never recorded."""
        queued = [a for a in retired if a.prompt_id in pending]
        if queued:
            self.client.delete_queued([a.prompt_id for a in queued])
            for why in sorted({a.retired_why for a in queued}):
                n = sum(a.retired_why == why for a in queued)
                self._say(f"{self.who}: removed {n} prompt{'s' if n > 1 else ''} from its queue ({why})")
        for attempt in retired:
            pid = attempt.prompt_id
            if pid in running:
                self.client.interrupt(pid)
                if not attempt.interrupt_sent:  # say it once
                    attempt.interrupt_sent = True
                    self._say(f"{self.who}: interrupting prompt {pid} of job {attempt.job.index} "
                              f"({attempt.retired_why})")
                continue
            if pid in pending or attempt.settled or (attempt.uncertain and now - attempt.sent_at < grace):
                continue  # deleted above (checked again next time), settled, or its POST may still land
            entry = self.client.history(pid)
            if entry is not None and succeeded(entry):
                self._dropped(attempt)
            attempt.settled = True

    def _check_timeouts(self) -> None:
        limit = self.opts.job_timeout
        if not limit:
            return
        now = time.monotonic()
        for attempt in self.book.held(self.url):
            if attempt.running_since is not None and not attempt.timed_out and now - attempt.running_since > limit:
                attempt.timed_out = True
                self._say(f"job {attempt.job.index} ({attempt.job.label}) ran longer than {limit:g}s; interrupting it")
                self.client.interrupt(attempt.prompt_id)

    # -- Ctrl-C ----------------------------------------------------------------------------------

    def _cancel(self) -> None:
        """Remove this client's prompts from this server (queued: deleted; running: interrupted), only ours."""
        self._cancelling = True
        if not self.book.held(self.url) and not self.book.retired_on(self.url):
            return
        deadline = time.monotonic() + self.opts.cancel_wait
        grace = self._grace()
        try:
            while True:
                mine = {a.prompt_id for a in self.book.held(self.url) + self.book.retired_on(self.url)}
                running, pending = self.client.queue_ids()
                self.client.delete_queued([p for p in pending if p in mine])
                for pid in running:
                    if pid in mine:
                        self.client.interrupt(pid)  # only ours, and the server re-checks it is running
                running, pending = self.client.queue_ids()
                present = set(running) | set(pending)
                now = time.monotonic()
                for attempt in self.book.retired_on(self.url):
                    if attempt.prompt_id not in present:
                        self.book.forget_retired(attempt.prompt_id)
                for attempt in self.book.held(self.url):
                    if attempt.prompt_id in present:
                        continue
                    entry = self.client.history(attempt.prompt_id)
                    if entry is not None and entry.get("status"):
                        self._complete(attempt, entry)  # finished meanwhile (kept) or interrupted (cancelled)
                    elif attempt.uncertain and now - attempt.sent_at < grace:
                        continue  # its POST may still land; the next round deletes it
                    else:
                        self.book.record(attempt, "cancelled", error={"kind": "cancelled",
                                                                      "message": "removed from the server queue "
                                                                                 "(Ctrl-C)"})
                if not self.book.held(self.url) or now > deadline:
                    break
                time.sleep(0.2)
        except (ServerUnreachable, RequestError) as err:
            self._say(f"could not cancel on {self.the_server} ({err}); the next run will find those prompts again")
            return
        left = len(self.book.held(self.url))
        if left:
            self._say(f"{left} prompts still on {self.the_server} after {self.opts.cancel_wait:g}s; "
                      "the next run will adopt them")

    # -- completion ------------------------------------------------------------------------------

    def _complete(self, attempt: Attempt, entry: dict) -> None:
        job = attempt.job
        if succeeded(entry):
            attempt.entry = entry
            t0 = time.monotonic()
            files: list[StagedFile] = []
            counters: dict[str, int] = {}
            staging = self.book.staging_dir(attempt)
            for node_id, rec in output_files(entry, self.opts.include_temp):
                if not self.book.owns(attempt):  # moved meanwhile: its result will be dropped anyway
                    break
                k = counters.get(node_id, 0)
                counters[node_id] = k + 1
                name = f"{node_id.replace(':', '-')}_{k:02d}{Path(rec['filename']).suffix}"
                try:
                    size = self.client.download(rec, staging / name)
                except RequestError as err:
                    if err.status == 404:
                        self._say(f"job {job.index}: output {rec['filename']} is gone from {self.the_server}; "
                                  "running it again")
                        attempt.entry = None
                        self.book.discard(attempt)
                        self.book.lost([attempt], lambda a: "")
                        return
                    if err.status != 400:  # auth, server trouble: not this job's fault
                        self.book.discard(attempt)
                        raise
                    # the server refuses this file (ComfyUI answers 400 for names holding '..'): this job
                    # failed, the batch goes on
                    said = f": {err.body.strip()[:200]}" if err.body.strip() else ""
                    hint = (" ComfyUI refuses file names containing '..': change the filename_prefix."
                            if ".." in rec["filename"] else "")
                    error = {"kind": "download", "message": f"output {rec['filename']} could not be downloaded: "
                             f"the server answered HTTP {err.status}{said}.{hint}"}
                    if self.book.owns(attempt):
                        self._say(f"job {job.index} ({job.label}) failed: {error['message']}")
                    self.book.record(attempt, "error", entry=entry, files=files, error=error)
                    return
                except BaseException:
                    self.book.discard(attempt)
                    raise
                files.append(StagedFile(staging / name, {"path": name, "node": node_id, "filename": rec["filename"],
                                                         "subfolder": rec.get("subfolder", ""),
                                                         "type": rec.get("type", "output"), "bytes": size}))
            if not files and self.book.owns(attempt):
                attempt.warnings.append("the prompt produced no output files (no SaveImage-like node?)")
            if not self.book.record(attempt, "success", entry=entry, files=files, download_s=time.monotonic() - t0):
                self._dropped(attempt)
            return
        where = interrupted_at(entry)
        if where is not None:
            status = "cancelled" if self._cancelling else ("timeout" if attempt.timed_out else "interrupted")
            self.book.record(attempt, status, entry=entry, error={"kind": status, "message": "interrupted while "
                             f"running node #{where['node_id']} ({where['class_type']})"})
            return
        error = execution_error(entry, job.prompt) or {"kind": "execution", "message": "the server reported an error"}
        if self.book.owns(attempt):
            self._say(f"job {job.index} ({job.label}) failed: {describe_error(error)}")
        self.book.record(attempt, "error", entry=entry, error=error)

    def _dropped(self, attempt: Attempt) -> None:
        if attempt.drop_said:  # said once per prompt, whichever path saw the result first
            return
        attempt.drop_said = True
        self._say(f"job {attempt.job.index} ({attempt.job.label}): late result of prompt {attempt.prompt_id} from "
                  f"{self.the_server} dropped ({attempt.retired_why})")


# node-error types that depend on what the server has (its files, its nodes), not on the prompt alone
_PER_SERVER = frozenset({"value_not_in_list", "custom_validation_failed"})


def _may_validate_elsewhere(err: PromptRejected) -> bool:
    """Whether a 400 may be this server's own (a node, a model or an input file it lacks, or a node's
    ``VALIDATE_INPUTS`` refusing a value) so another server may accept the job. Errors in the prompt
    itself (a value out of range, a missing input, no output node) are the same everywhere."""
    top = err.error or {}
    if top.get("type") == "missing_node_type" and (top.get("extra_info") or {}).get("class_type"):
        return True  # ComfyUI 0.33: "Node 'X' not found. The custom node may not be installed."
    if top.get("type") == "invalid_prompt" and "does not exist" in str(top.get("message", "")):
        return True  # ComfyUI 0.3.75: "Cannot execute because node X does not exist."
    return any(e.get("type") in _PER_SERVER
               for info in (err.node_errors or {}).values() for e in (info or {}).get("errors") or [])
