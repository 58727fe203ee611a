"""Resume and retry decisions of the batch client, without a server and without torch.

Why: a re-run must skip exactly the finished jobs (and re-run one whose files were deleted), look up
a job an earlier run sent instead of sending it twice, and a prompt the server lost must be sent again
first in line, while one that was just sent and is not in the queue yet must not be. These decisions
are exercised for real against ComfyUI in ``tests/comfyui/test_batch_client.py`` (minutes); here each
is pinned on its own, in milliseconds, so that a mutation of it fails the fast suite (issue #18 item 7).
"""

from __future__ import annotations

import time
import urllib.error
from pathlib import Path

import pytest

from lua_core.batch import ComfyClient
from lua_core.batch.errors import ServerUnreachable
from lua_core.batch.farm import Book
from lua_core.batch.jobs import Job
from lua_core.batch.manifest import Journal, Manifest
from lua_core.batch.progress import Progress
from lua_core.batch.runner import BatchRunner, RunOptions
from lua_core.batch.worker import ServerWorker

A, B = "http://a:8188", "http://b:8188"


def jobs(n: int) -> list[Job]:
    return [Job(index=i + 1, params={"w": 64 + 8 * i},
                prompt={"1": {"class_type": "EmptyLatentImage", "inputs": {"width": 64 + 8 * i, "height": 64,
                                                                           "batch_size": 1}}})
            for i in range(n)]


def runner(tmp_path: Path, servers: tuple[str, ...] = (A,), **options: object) -> BatchRunner:
    r = BatchRunner([ComfyClient(u) for u in servers], jobs(3), tmp_path / "out", options=RunOptions(**options))
    r.book = Book(r.manifest, tmp_path / "out", list(servers), client_id="me", max_attempts=3,
                  progress=Progress(3, bars=False, quiet=True), say=lambda text: None)
    return r


# -- which jobs a re-run skips ----------------------------------------------------------------------

def test_a_rerun_skips_finished_jobs_whose_files_are_there(tmp_path: Path) -> None:
    r = runner(tmp_path)
    folder = tmp_path / "out" / "job1"
    folder.mkdir(parents=True)
    (folder / "5_00.png").write_bytes(b"png")
    done = {"status": "success", "output_dir": "job1", "outputs": ["5_00.png"]}
    assert r._finished(done)
    assert not r._finished(None), "never run"
    assert r._finished({"status": "success", "output_dir": "job1", "outputs": []})
    (folder / "5_00.png").unlink()
    assert not r._finished(done), "its output was deleted: run it again"


@pytest.mark.parametrize("status", ["error", "invalid", "lost", "interrupted", "timeout", "cancelled"])
def test_a_rerun_retries_every_failure_unless_told_to_skip_failed_ones(tmp_path: Path, status: str) -> None:
    row = {"status": status, "outputs": []}
    assert not runner(tmp_path)._finished(row), "retried by default"
    skip_failed = runner(tmp_path, retry_failed=False)._finished(row)
    # --skip-failed skips jobs that failed on their own (an error, an invalid prompt), not those cut short
    assert skip_failed == (status in ("error", "invalid"))


# -- jobs an earlier run sent ---------------------------------------------------------------------

def test_a_journaled_job_is_looked_up_on_the_one_server_even_if_spelled_differently(tmp_path: Path) -> None:
    r = runner(tmp_path)
    r.workers = [ServerWorker(c, r.book, r.opts, order=0, precheck=False) for c in r.clients]
    j1, j2, j3 = r.jobs
    sent = {j1.key: {"key": j1.key, "prompt_id": "p1", "server": "http://127.0.0.1:8188", "attempt": 2}}
    r._adopt([j1, j2, j3], sent)
    assert [j.index for j in r.book.pending] == [2, 3], "only the unsent jobs are queued"
    (held,) = r.book.held(A)
    assert held.prompt_id == "p1" and held.attempt == 2 and held.job is j1


def test_a_job_journaled_on_a_server_not_in_the_list_is_sent_again_keeping_its_count(tmp_path: Path) -> None:
    r = runner(tmp_path, servers=(A, B))
    r.workers = [ServerWorker(c, r.book, r.opts, order=i, precheck=False) for i, c in enumerate(r.clients)]
    j1, j2, _ = r.jobs
    sent = {j1.key: {"key": j1.key, "prompt_id": "p1", "server": "http://c:8188", "attempt": 2},
            j2.key: {"key": j2.key, "prompt_id": "p2", "server": B, "attempt": 1}}
    r._adopt([j1, j2], sent)
    assert [j.index for j in r.book.pending] == [1] and [a.prompt_id for a in r.book.held(B)] == ["p2"]
    assert r.book.attempts[j1.key] == 2, "--max-attempts counts the earlier run's sends"
    assert r.book.begin(A, r.book.pending.popleft()).attempt == 3


def test_a_rerun_retires_the_sends_a_killed_run_superseded(tmp_path: Path) -> None:
    """A killed farm run moved job 1 off server A (its prompt p1 still queued there) and sent it to B (p2);
    job 2 was lost once on A and sent again to A. The re-run adopts the last sends and retires the earlier
    ones on the servers it has: A's worker deletes p1 from A's queue, and p1's result would be dropped."""
    r = runner(tmp_path, servers=(A, B))
    r.workers = [ServerWorker(c, r.book, r.opts, order=i, precheck=False) for i, c in enumerate(r.clients)]
    j1, j2, j3 = r.jobs
    journal = r.manifest.journal
    for row in ({"key": j1.key, "prompt_id": "p1", "server": A, "attempt": 1},
                {"key": j2.key, "prompt_id": "q1", "server": A, "attempt": 1},
                {"key": j1.key, "prompt_id": "p2", "server": B, "attempt": 1},
                {"key": j2.key, "prompt_id": "q2", "server": A, "attempt": 2},
                {"key": j3.key, "prompt_id": "x1", "server": "http://gone:8188", "attempt": 1},
                {"key": j3.key, "prompt_id": "x2", "server": B, "attempt": 2},
                {"key": "another sweep", "prompt_id": "o1", "server": A, "attempt": 1},
                {"key": "another sweep", "prompt_id": "o2", "server": B, "attempt": 2}):
        journal.append(row)
    sent = journal.latest()
    r._adopt([j1, j2, j3], sent)
    r._retire_superseded(sent)
    assert {a.prompt_id for a in r.book.held(A)} == {"q2"} and {a.prompt_id for a in r.book.held(B)} == {"p2", "x2"}
    # the superseded sends on this run's servers only, of this sweep only
    assert {pid: a.server for pid, a in r.book.retired.items()} == {"p1": A, "q1": A}
    client = FakeClient(A, pending=("p1", "q2"))
    w = ServerWorker(client, r.book, RunOptions(lost_grace=30.0), order=0, precheck=False)  # type: ignore[arg-type]
    w._reconcile()
    assert client.deleted == ["p1"], "the moved job's old prompt is deleted from A's queue, the current one kept"
    assert r.book.owns(r.book.held(A)[0]) and "q2" in client.pending


def test_journal_rows_without_a_prompt_id_are_not_sends(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "m.pending.jsonl")
    journal.append({"key": "a", "prompt_id": "p1"})
    journal.append({"key": "a", "server": A})  # no prompt id: nothing was sent under it
    journal.append({"key": "b", "server": A})
    assert journal.latest() == {"a": {"key": "a", "prompt_id": "p1"}}


def test_the_manifest_keeps_the_last_outcome_of_a_job(tmp_path: Path) -> None:
    m = Manifest(tmp_path / "m.jsonl")
    m.append({"key": "a", "status": "error"})
    m.append({"key": "a", "status": "success"})
    assert m.latest()["a"]["status"] == "success"


# -- lost prompts ---------------------------------------------------------------------------------

class FakeClient:
    """What ``ServerWorker._reconcile`` asks a server: its queue, and a prompt's history entry."""

    def __init__(self, url: str, running: tuple[str, ...] = (), pending: tuple[str, ...] = (),
                 history: dict[str, dict] | None = None):
        self.base_url, self.timeout = url, 5.0
        self.running, self.pending, self.entries = list(running), list(pending), history or {}

    def queue_ids(self) -> tuple[list[str], list[str]]:
        return self.running, self.pending

    def history(self, prompt_id: str) -> dict | None:
        return self.entries.get(prompt_id)

    def queue(self) -> dict:
        return {"queue_running": [], "queue_pending": []}

    def delete_queued(self, prompt_ids: list[str]) -> None:
        self.pending = [p for p in self.pending if p not in prompt_ids]
        self.deleted = [*getattr(self, "deleted", []), *prompt_ids]

    def interrupt(self, prompt_id: str) -> None:
        self.interrupted = [*getattr(self, "interrupted", []), prompt_id]


def worker(tmp_path: Path, client: FakeClient, grace: float = 30.0, max_attempts: int = 3) -> ServerWorker:
    book = Book(Manifest(tmp_path / "out" / "manifest.jsonl"), tmp_path / "out", [client.base_url], client_id="me",
                max_attempts=max_attempts, progress=Progress(3, bars=False, quiet=True), say=lambda text: None)
    return ServerWorker(client, book, RunOptions(lost_grace=grace), order=0, precheck=False)  # type: ignore[arg-type]


def test_a_prompt_just_sent_is_not_lost_before_the_grace_period(tmp_path: Path) -> None:
    w = worker(tmp_path, FakeClient(A))
    (job,) = jobs(1)
    attempt = w.book.begin(A, job)  # sent, the server has not shown it yet
    w._reconcile()
    assert w.book.owns(attempt) and not w.book.pending, "not sent twice while the send may still arrive"
    attempt.sent_at = time.monotonic() - 31.0
    w._reconcile()
    assert not w.book.owns(attempt) and list(w.book.pending) == [job], "gone after the grace period: sent again"


def unreachable(reason: BaseException) -> ServerUnreachable:
    """What the client raises for a request that failed with ``reason`` (``raise ... from`` the URLError)."""
    try:
        raise ServerUnreachable(f"GET /queue failed: {reason}") from urllib.error.URLError(reason)
    except ServerUnreachable as err:
        return err


@pytest.mark.parametrize("refused", [True, False])
def test_a_send_cut_by_a_process_that_is_gone_is_lost_once_the_server_is_back(tmp_path: Path, refused: bool) -> None:
    """A refused connection after a send means the process that got it is gone (SIGKILL, restart): when the
    server answers again without the prompt it is sent again at once, not after the grace a send to a live
    but slow server gets (a timeout or reset says nothing of the kind: that one still waits)."""
    w = worker(tmp_path, FakeClient(A), grace=30.0)
    (job,) = jobs(1)
    attempt = w.book.begin(A, job)  # POST /prompt sent, its answer cut
    w._went_away(unreachable(ConnectionRefusedError(111, "Connection refused") if refused else TimeoutError()))
    w._probe()  # back, without the prompt
    w._reconcile()
    if refused:
        assert not w.book.owns(attempt) and list(w.book.pending) == [job], "lost with the old process: sent again"
    else:
        assert w.book.owns(attempt) and not w.book.pending, "may still land: waits out the grace period"


def test_a_history_entry_without_a_status_is_not_a_result(tmp_path: Path) -> None:
    (job,) = jobs(1)
    client = FakeClient(A)
    w = worker(tmp_path, client)
    attempt = w.book.begin(A, job)
    client.entries[attempt.prompt_id] = {"prompt": [], "outputs": {}}  # being written, no status yet
    w._reconcile()
    assert w.book.owns(attempt) and not list(w.book.manifest.rows()), "no outcome recorded from a partial entry"


def test_lost_prompts_go_first_in_line_in_job_order_until_max_attempts(tmp_path: Path) -> None:
    js = jobs(3)
    w = worker(tmp_path, FakeClient(A), grace=0.0, max_attempts=2)
    w.book.pending.append(js[2])
    first = [w.book.begin(A, j) for j in js[:2]]
    w._reconcile()  # neither is queued nor in the history: both lost, sent again first, in job order
    assert [j.index for j in w.book.pending] == [1, 2, 3]
    assert not any(w.book.owns(a) for a in first)
    w.book.pending.clear()
    second = w.book.begin(A, js[0])
    w._reconcile()  # sent twice (--max-attempts 2): given up
    assert not w.book.pending and not w.book.owns(second)
    (row,) = w.book.manifest.rows()
    assert row["status"] == "lost" and row["index"] == 1 and row["attempt"] == 2


def test_a_run_with_nothing_left_keeps_only_other_sweeps_unfinished_sends(tmp_path: Path) -> None:
    """The journal is pruned at the end of a run: this sweep's sends and other sweeps' finished jobs go,
    another sweep's unfinished send stays so that its own re-run can still adopt it. Nothing is sent:
    every job of this sweep is done (the server, a closed port, is never needed)."""
    out = tmp_path / "out"
    mine = jobs(2)
    manifest = Manifest(out / "manifest.jsonl")
    for job in mine:
        manifest.append({"key": job.key, "status": "success", "output_dir": job.folder, "outputs": []})
    manifest.append({"key": "other-done", "status": "success", "outputs": []})
    for key, pid in ((mine[0].key, "p1"), ("other-done", "p2"), ("other-open", "p3")):
        manifest.journal.append({"key": key, "prompt_id": pid, "server": A, "attempt": 1})
    r = BatchRunner([ComfyClient("http://127.0.0.1:9", timeout=1.0)], mine, out,
                    options=RunOptions(progress=False, quiet=True))
    result = r.run()
    assert result.skipped == 2 and result.not_run == 0
    assert manifest.journal.latest() == {"other-open": {"key": "other-open", "prompt_id": "p3", "server": A,
                                                        "attempt": 1}}
