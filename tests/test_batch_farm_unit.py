"""Pure-Python tests of the farm parts of the batch client: no server, no torch.

Why: which server gets a job (the fastest free one that can run it), when a job becomes "valid
nowhere", how a moved job's late result is refused, and how ``--server``/``--servers FILE`` are read
are decisions that must be exact; here they are checked on stand-in workers and on files, with the
node definitions captured from the test server (``tests/data/batch/object_info.json``). The same
behaviour against three real ComfyUI servers is in ``tests/comfyui/test_batch_farm.py``.
"""

from __future__ import annotations

import collections
import copy
import io
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from lua_core.batch import ComfyClient
from lua_core.batch.capability import fit, nowhere_error, prompt_problems
from lua_core.batch.errors import BatchError
from lua_core.batch.farm import Book, StagedFile
from lua_core.batch.jobs import Job
from lua_core.batch.manifest import Manifest
from lua_core.batch.outcome import describe_error
from lua_core.batch.progress import Progress
from lua_core.batch.runner import BatchRunner, RunOptions, server_line
from lua_core.batch.servers import make_clients, read_servers_file, server_specs, short_name

ROOT = Path(__file__).resolve().parents[1]
INFO = json.loads((ROOT / "tests" / "data" / "batch" / "object_info.json").read_text())
A, B, C = "http://a:8188", "http://b:8188", "http://c:8188"


def prompt(vae: str = "lua_test_taesd_4ch.safetensors", width: int = 64) -> dict:
    return {
        "1": {"class_type": "EmptyLatentImage", "inputs": {"width": width, "height": 64, "batch_size": 1}},
        "3": {"class_type": "VAELoader", "inputs": {"vae_name": vae}, "_meta": {"title": "Load VAE"}},
        "4": {"class_type": "VAEDecode", "inputs": {"samples": ["1", 0], "vae": ["3", 0]}},
        "5": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "x"}},
    }


def jobs(n: int, **kw: object) -> list[Job]:
    return [Job(index=i + 1, params={"w": 64 + 8 * i}, prompt=prompt(width=64 + 8 * i, **kw)) for i in range(n)]


# --------------------------------------------------------------------------------------------------
# --server / --servers FILE
# --------------------------------------------------------------------------------------------------


def test_servers_file_urls_tokens_and_comments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FARM_TOKEN_B", "tok-b")
    path = tmp_path / "servers.txt"
    path.write_text("# the farm\nhttp://gpu1:8188\n\nHTTPS://GPU2.example.org/comfy/  env:FARM_TOKEN_B  # via proxy\n"
                    "http://gpu3:8188 $FARM_TOKEN_B\nhttp://gpu4:8188 s3cret\n")
    path.chmod(0o644)
    warnings: list[str] = []
    specs = read_servers_file(path, warnings)
    assert [(s.url, s.token) for s in specs] == [("http://gpu1:8188", None),
                                                 ("https://gpu2.example.org/comfy", "tok-b"),
                                                 ("http://gpu3:8188", "tok-b"), ("http://gpu4:8188", "s3cret")]
    assert specs[1].source == f"{path} line 4"
    assert warnings == [f"{path} holds tokens and can be read by other users; restrict it with: chmod 600 {path}"]
    path.chmod(0o600)
    warnings.clear()
    read_servers_file(path, warnings)
    assert warnings == []
    clients = make_clients(specs, headers={"Authorization": "Bearer shared", "X-Team": "r"})
    assert [c.headers.get("Authorization") for c in clients] == ["Bearer shared", "Bearer tok-b", "Bearer tok-b",
                                                                 "Bearer s3cret"]
    assert all(c.headers["X-Team"] == "r" for c in clients)
    assert "s3cret" not in repr(clients[3])
    assert short_name("https://gpu2.example.org/comfy") == "gpu2.example.org/comfy"


@pytest.mark.parametrize(("text", "message"), [
    ("gpu1:8188\n", "line 1: 'gpu1:8188' is not a server URL; write it as http://host:port"),
    ("http://a:1 tok extra\n", "line 1: expected 'URL [TOKEN]', got 3 fields"),
    ("# nothing\n\n", "lists no servers; write one URL per line"),
    ("http://a:1\nhttp://b:1 env:FARM_UNSET_VAR\n", "line 2: environment variable FARM_UNSET_VAR is not set or empty"),
    ("http://a:1 env:\n", "line 1: 'env:' names no environment variable"),
    ("http://a:1\n\nhttp://gpu2:80x\n", "line 3: 'http://gpu2:80x' has a bad port"),
    ("http://gpu2:99999\n", "line 1: 'http://gpu2:99999' has a bad port"),
    ("http://gpu2:0\n", "line 1: 'http://gpu2:0' has port 0"),
    ("http://:8188\n", "line 1: 'http://:8188' names no valid host"),
    ("http://me:pw@gpu2:8188\n", "line 1: 'http://me:pw@gpu2:8188' holds credentials"),
    ("http://gpu2:8188/?token=x\n", "line 1: 'http://gpu2:8188/?token=x' has a query or fragment"),
    ("http://a:1 http://b:1\n", "line 1: the second field 'http://b:1' looks like a URL; give one server per line"),
    ("# farm\nhttp://a:1\nhttp://b:1 # second\nHTTP://A:1/\n",
     "server http://a:1 is given twice (FILE line 2 and FILE line 4)"),
    ("http://a\nhttp://a:80/\n", "server http://a (= http://a:80) is given twice (FILE line 1 and FILE line 2)"),
])
def test_servers_file_errors_name_the_line_and_the_fix(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "servers.txt"
    path.write_text(text)
    with pytest.raises(BatchError) as err:
        server_specs([], path)
    text = str(err.value)
    assert (f"--servers {path}" in text or "given twice" in text) and message.replace("FILE", str(path)) in text
    assert "\n" not in text, "one line naming the line and the value"


def test_server_list_defaults_and_duplicates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COMFYUI_URL", raising=False)
    assert [s.url for s in server_specs()] == ["http://127.0.0.1:8188"]
    monkeypatch.setenv("COMFYUI_URL", "http://env:1")
    assert [s.url for s in server_specs()] == ["http://env:1"]
    assert [s.url for s in server_specs("http://one:1/")] == ["http://one:1"]
    (tmp_path / "s.txt").write_text("http://b:1\nhttp://A:1/\n")
    with pytest.raises(BatchError, match=r"server http://a:1 is given twice \(--server and .*s.txt line 2\); give "
                                         "each server once"):
        server_specs(["http://a:1"], tmp_path / "s.txt")
    with pytest.raises(BatchError, match="--server: 'ftp://x' is not a server URL"):
        server_specs(["ftp://x"])
    with pytest.raises(BatchError, match=r"--server: 'http://h:1#f' has a query or fragment"):
        server_specs(["http://h:1#f"])
    assert [s.url for s in server_specs(["http://[::1]:8188/comfy/", "https://h"])] == ["http://[::1]:8188/comfy",
                                                                                        "https://h"]
    with pytest.raises(BatchError, match="cannot read it"):
        server_specs([], tmp_path / "missing.txt")


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "COMFYUI_URL"}
    return subprocess.run([sys.executable, "-m", "lua_core.batch", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=120, env=env)


def test_cli_refuses_bad_farm_options_before_contacting_anything(tmp_path: Path) -> None:
    wf = tmp_path / "wf.json"
    wf.write_text(json.dumps(prompt()))
    for args, message in [
        (["--servers", str(tmp_path / "none.txt")], f"error: --servers {tmp_path / 'none.txt'}: cannot read it"),
        (["--server", "http://a:1", "--server", "http://a:1/"], "error: server http://a:1 is given twice"),
        (["--move-after", "-1"], "error: --move-after must be 0 or more seconds, got -1"),
        (["--stall-after", "-5"], "error: --stall-after must be 0 (never) or more seconds, got -5"),
        (["--in-flight", "0"], "error: --in-flight must be at least 1, got 0"),
        (["--server-wait", "0"], "error: --server-wait must be a positive number of seconds, got 0"),
    ]:
        run = _cli(str(wf), *args)
        assert run.returncode == 1 and message in run.stderr, (args, run.stderr)


# --------------------------------------------------------------------------------------------------
# What a server can run
# --------------------------------------------------------------------------------------------------


def test_prompt_problems_missing_nodes_and_models() -> None:
    assert prompt_problems(prompt(), INFO) == []
    (item,) = prompt_problems(prompt(vae="other.safetensors"), INFO)
    assert item == {**item, "node_id": "3", "title": "Load VAE", "class_type": "VAELoader", "input": "vae_name",
                    "type": "value_not_in_list", "received": "other.safetensors"}
    assert "lua_test_taesd_4ch.safetensors" in item["details"]
    without = {k: v for k, v in INFO.items() if k != "VAEDecode"}
    (item,) = prompt_problems(prompt(), without)
    assert item["type"] == "missing_node" and item["node_id"] == "4"
    assert "'VAEDecode' is not installed" in item["message"]
    linked = prompt()
    linked["3"]["inputs"]["vae_name"] = ["9", 0]  # a link is not a value: not checked here
    assert prompt_problems(linked, INFO) == []
    v3 = {"1": {"class_type": "LatentBatchSeedBehavior", "inputs": {"seed_behavior": "custom"}}}
    assert prompt_problems(v3, INFO) == [], "ComfyUI does not check V3 COMBO options either"


def test_a_job_valid_nowhere_says_what_each_server_lacks() -> None:
    bad = prompt(vae="gone.safetensors")
    error = nowhere_error({A: prompt_problems(bad, INFO), B: prompt_problems(bad, {})})
    assert error["kind"] == "validation" and error["type"] == "validates_nowhere"
    text = describe_error(error)
    assert text.splitlines()[0].startswith("no server can run this job (2 servers checked, by their /object_info or "
                                           "by sending it)")
    assert f"on {A}: #3 'Load VAE' (VAELoader) input 'vae_name': 'gone.safetensors' is not among" in text
    assert f"on {B}: #1 (EmptyLatentImage): node class 'EmptyLatentImage' is not installed" in text


# --------------------------------------------------------------------------------------------------
# The book: one current attempt per job
# --------------------------------------------------------------------------------------------------


def book(tmp_path: Path, servers: tuple[str, ...] = (A, B), max_attempts: int = 3) -> Book:
    said: list[str] = []
    b = Book(Manifest(tmp_path / "out" / "manifest.jsonl"), tmp_path / "out", list(servers), client_id="me",
             max_attempts=max_attempts, progress=Progress(10, bars=False, quiet=True), say=said.append)
    b.said = said  # type: ignore[attr-defined]
    return b


def stage(b: Book, attempt: object, name: str = "5_00.png", data: bytes = b"png") -> StagedFile:
    path = b.staging_dir(attempt) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return StagedFile(path, {"path": name, "node": "5", "filename": "x.png", "subfolder": "", "type": "output",
                             "bytes": len(data)})


def test_a_moved_jobs_late_result_is_dropped_with_its_files(tmp_path: Path) -> None:
    b = book(tmp_path)
    (job,) = jobs(1)
    first = b.begin(A, job)
    moved = b.move_away(A, "server a has not answered for 30s")
    assert moved == [first] and list(b.pending) == [job] and b.retired == {first.prompt_id: first}
    b.pending.popleft()
    second = b.begin(B, job)
    late = stage(b, first, data=b"late")
    assert b.record(first, "success", files=[late]) is False, "a retired attempt must not be recorded"
    assert not late.staged.exists() and not (tmp_path / "out" / job.folder).exists(), "its files never reach OUT"
    assert b.record(second, "success", files=[stage(b, second)]) is True
    assert b.record(second, "success", files=[stage(b, second, data=b"again")]) is False, "recorded once"
    (row,) = Manifest(tmp_path / "out" / "manifest.jsonl").rows()
    assert row["prompt_id"] == second.prompt_id and row["server"] == B and row["attempt"] == 2
    assert row["moved_from"] == [A]
    assert (tmp_path / "out" / job.folder / "5_00.png").read_bytes() == b"png"
    journal = [r["prompt_id"] for r in b.manifest.journal.rows()]
    assert journal == [first.prompt_id, second.prompt_id], "every send is journaled before it happens"
    assert b.stats[B].succeeded == 1 and b.stats[A].moved_away == 1
    assert "a late result from it will be dropped" in b.said[0]


def test_moves_and_losses_keep_job_order_and_respect_max_attempts(tmp_path: Path) -> None:
    b = book(tmp_path, max_attempts=2)
    js = jobs(4)
    b.pending.extend(js[3:])
    attempts = [b.begin(A, j) for j in js[:3]]
    b.move_away(A, "gone")
    assert [j.index for j in b.pending] == [1, 2, 3, 4], "moved jobs go first, in job order"
    b.pending.clear()
    again = [b.begin(B, j) for j in js[:3]]
    b.lost(again[1:], lambda a: f"lost {a.job.index}")
    assert [j.index for j in b.pending] == [], "sent twice already (--max-attempts 2): given up"
    rows = list(b.manifest.rows())
    assert [(r["index"], r["status"]) for r in rows] == [(2, "lost"), (3, "lost")]
    assert "--max-attempts" in rows[0]["error"]["message"]
    assert b.owns(again[0]) and not any(b.owns(a) for a in attempts)
    assert b.take_back(again[0]) and b.attempts[js[0].key] == 1, "a send taken back before it ran is not counted"
    assert not b.take_back(again[0])


def test_a_rejection_for_a_missing_model_tries_the_other_servers(tmp_path: Path) -> None:
    b = book(tmp_path)
    (job,) = jobs(1)
    attempt = b.begin(A, job)
    error = {"kind": "validation", "nodes": []}
    b.rejected(attempt, error, try_elsewhere=True)
    assert list(b.pending) == [job] and b.rejections[job.key] == {A: error} and b.attempts[job.key] == 0
    other = b.begin(B, b.pending.popleft())
    b.rejected(other, error, try_elsewhere=False)
    (row,) = b.manifest.rows()
    assert row["status"] == "invalid" and row["server"] == B


# --------------------------------------------------------------------------------------------------
# The dispatcher, with stand-in workers
# --------------------------------------------------------------------------------------------------


@dataclass
class FakeWorker:
    """What the dispatcher asks a worker: is it ready, how loaded, can it run a job; what it was given."""

    url: str
    order: int
    runner: BatchRunner
    up: bool = True
    info: dict | None = field(default_factory=lambda: INFO)
    inbox: collections.deque = field(default_factory=collections.deque)
    releasing: dict = field(default_factory=dict)
    expecting: int = 0
    state: str = "up"
    away_since: float | None = None
    woken: int = 0

    def ready(self) -> bool:
        return self.up and self.info is not None

    def load(self) -> int:
        return len(self.runner.book.held(self.url)) + len(self.inbox)

    def problems(self, job: Job) -> list | None:
        return None if self.info is None else prompt_problems(job.prompt, self.info)

    def fit(self, job: Job) -> str | None:
        return fit(self.problems(job))

    def assign(self, job: Job) -> None:
        self.inbox.append(job)

    def wake(self) -> None:
        self.woken += 1


def dispatcher(tmp_path: Path, infos: list[dict | None], in_flight: int = 2) -> tuple[BatchRunner, list[FakeWorker]]:
    runner = BatchRunner([ComfyClient(u) for u in (A, B, C)[: len(infos)]], [], tmp_path / "out",
                         options=RunOptions(in_flight=in_flight))
    runner.book = book(tmp_path, tuple(c.base_url for c in runner.clients))
    runner._progress = runner.book.progress
    workers = [FakeWorker(c.base_url, i, runner, info=info) for i, (c, info) in enumerate(zip(runner.clients, infos))]
    runner.workers = workers  # type: ignore[assignment]
    return runner, workers


def test_the_fastest_free_server_that_can_run_a_job_gets_it(tmp_path: Path) -> None:
    runner, (a, b, c) = dispatcher(tmp_path, [INFO, INFO, INFO])
    runner.book.pending.extend(jobs(7))
    runner.book.stats[A].seconds_per_job = 5.0
    runner.book.stats[B].seconds_per_job = 1.0  # c unmeasured: tried first, then b, then a
    runner._assign()
    assert [[j.index for j in w.inbox] for w in (a, b, c)] == [[5, 6], [3, 4], [1, 2]]
    assert [j.index for j in runner.book.pending] == [7], "no free capacity left: it waits"
    c.inbox.clear()
    runner._assign()
    assert [j.index for j in c.inbox] == [7]


def test_jobs_go_only_where_they_validate_and_wait_for_unknown_servers(tmp_path: Path) -> None:
    no_4ch = copy.deepcopy(INFO)
    no_4ch["VAELoader"]["input"]["required"]["vae_name"][0].remove("lua_test_taesd_4ch.safetensors")
    runner, (a, b) = dispatcher(tmp_path, [no_4ch, None])
    runner.book.pending.extend(jobs(2) + jobs(1, vae="nowhere.safetensors"))
    runner._place_nowhere()
    runner._assign()
    assert not a.inbox and len(runner.book.pending) == 3, "a lacks the model, b's nodes are not known yet"
    assert not list(runner.book.manifest.rows()), "a job may still be valid on the unknown server: no verdict yet"
    b.info = INFO
    runner._place_nowhere()
    runner._assign()
    assert [j.index for j in b.inbox] == [1, 2], "clean on b: b gets them, never the doubtful a"
    assert [j.index for j in a.inbox] == [1], "clean nowhere: a doubtful server's own validation decides"
    assert not list(runner.book.manifest.rows())
    nowhere = a.inbox.popleft()
    refusal = {"kind": "validation", "type": "prompt_outputs_failed_validation", "message": "failed", "details": "",
               "nodes": [{"node_id": "3", "title": "Load VAE", "class_type": "VAELoader", "input": "vae_name",
                          "type": "value_not_in_list", "message": "Value not in list", "details": "",
                          "received": "nowhere.safetensors"}]}
    runner.book.rejections[nowhere.key] = {A: refusal}
    runner.book.pending.append(nowhere)
    runner._place_nowhere()
    assert list(runner.book.pending) == [nowhere], "b has not refused it: not a verdict yet"
    b.inbox.clear()
    runner._assign()
    assert list(b.inbox) == [nowhere] and not a.inbox, "a refused it: only b is tried"
    runner.book.rejections[nowhere.key][B] = refusal
    runner.book.pending.append(b.inbox.popleft())
    runner._place_nowhere()
    (row,) = runner.book.manifest.rows()
    assert row["status"] == "invalid" and row["server"] is None and row["error"]["type"] == "validates_nowhere"
    assert [(i["server"], i["type"]) for i in row["error"]["nodes"]] == [(A, "value_not_in_list"),
                                                                       (B, "value_not_in_list")]


def test_only_a_missing_node_is_a_veto_not_a_value_a_node_may_validate_itself(tmp_path: Path) -> None:
    """LoadImage's list is the input folder, but its VALIDATE_INPUTS also accepts "x.png [output]" (and
    /object_info cannot tell which nodes do that): such a value is left to the server, a missing node is not."""
    load = {"1": {"class_type": "LoadImage", "inputs": {"image": "render_00001_.png [output]"}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}}}
    (item,) = prompt_problems(load, INFO)
    assert item["type"] == "value_not_in_list" and fit([item]) == "doubtful"
    assert fit(prompt_problems(load, {k: v for k, v in INFO.items() if k != "LoadImage"})) == "no"
    runner, (a, b) = dispatcher(tmp_path, [INFO, {k: v for k, v in INFO.items() if k != "LoadImage"}])
    job = Job(index=1, params={}, prompt=load)
    runner.book.pending.append(job)
    runner._place_nowhere()
    runner._assign()
    assert list(a.inbox) == [job] and not b.inbox and not list(runner.book.manifest.rows()), \
        "sent where only the server can decide, never where the node is missing"


def test_an_idle_server_takes_the_last_job_waiting_on_the_slowest(tmp_path: Path) -> None:
    runner, (a, b, c) = dispatcher(tmp_path, [INFO, INFO, INFO])
    runner.book.stats[A].seconds_per_job, runner.book.stats[B].seconds_per_job = 1.0, 9.0
    held = {url: [runner.book.begin(url, j) for j in js] for url, js in ((A, jobs(2)), (B, jobs(3)[1:]))}
    for attempts in held.values():
        for attempt in attempts:
            attempt.uncertain = False
    held[B][0].running_since = 1.0  # b runs one and has one waiting; c is idle
    runner._assign()
    assert b.releasing == {held[B][1].prompt_id: c} and c.expecting == 1 and b.woken == 1
    assert not a.releasing, "one job at a time for an idle server"
    runner._assign()
    assert len(b.releasing) == 1, "asked once"


def test_an_away_server_hands_over_each_job_another_server_can_run_and_keeps_the_others(tmp_path: Path) -> None:
    """Per job: a's running, queued and just-sent jobs that b can run move (once each, retired on a);
    one that only a can run stays with a, which may come back, until a server that can run it is ready."""
    without = {k: v for k, v in INFO.items() if k != "LUATest_Sleep"}
    runner, (a, b) = dispatcher(tmp_path, [INFO, without])
    book_ = runner.book
    js = jobs(4)
    js[1] = Job(index=2, params={"w": 2}, prompt={**prompt(), "6": {"class_type": "LUATest_Sleep",
                                                                     "inputs": {"samples": ["1", 0], "seconds": 1}}})
    running, only_a, queued, sent = [book_.begin(A, j) for j in js]
    running.uncertain = only_a.uncertain = queued.uncertain = False
    running.running_since = 1.0  # `sent`: its POST had no answer yet (uncertain)
    a.state, a.away_since = "away", time.monotonic() - 100
    runner._move_off_away()
    assert [j.index for j in book_.pending] == [1, 3, 4], "each job b can run moved, first in line, in job order"
    assert book_.held(A) == [only_a], "the job only a can run stays with a"
    assert set(book_.retired) == {running.prompt_id, queued.prompt_id, sent.prompt_id}
    runner._move_off_away()
    assert [j.index for j in book_.pending] == [1, 3, 4] and book_.stats[A].moved_away == 3, "moved once"
    assert book_.moved_from == {js[0].key: [A], js[2].key: [A], js[3].key: [A]}
    assert "moving 3 of its 4 jobs (1, 3, 4) to the other servers (the 1 that no server up can run stays)" in \
        book_.said[-1]
    b.info = INFO  # b's node list read again: it now has the node
    runner._move_off_away()
    assert [j.index for j in book_.pending] == [2, 1, 3, 4] and not book_.held(A)


def test_a_job_handed_to_an_idle_server_is_not_handed_back(tmp_path: Path) -> None:
    """No ping-pong: b took job 2 from a's queue; when a falls idle while job 2 still waits on b, a does
    not take it back (that would re-queue it at the end each time, and again)."""
    runner, (a, b) = dispatcher(tmp_path, [INFO, INFO])
    book_ = runner.book
    first, second = [book_.begin(A, j) for j in jobs(2)]
    first.uncertain = second.uncertain = False
    first.running_since = 1.0
    runner._assign()
    assert a.releasing == {second.prompt_id: b}
    assert book_.take_back(second)  # what a's worker does once the prompt is deleted from a's queue
    a.releasing.clear()
    b.expecting = 0
    again = book_.begin(B, second.job)
    again.uncertain = False  # queued on b, not started yet (b got a prompt of someone else in front)
    assert book_.record(first, "success")
    runner._assign()
    assert not b.releasing and not a.expecting, "job 2 was handed over once: it stays on b"
    third = book_.begin(B, jobs(3)[2])
    third.uncertain = False
    runner._assign()
    assert b.releasing == {third.prompt_id: a}, "another waiting job may still go to the idle server"


def test_the_first_server_ready_takes_its_share_not_the_whole_batch(tmp_path: Path) -> None:
    """--in-flight 8, 12 jobs, three servers answering one after the other: each gets 4, not 8/4/0."""
    runner, (a, b, c) = dispatcher(tmp_path, [INFO, None, None], in_flight=8)
    b.state = c.state = "new"
    runner.book.pending.extend(jobs(12))
    runner._assign()
    assert [len(w.inbox) for w in (a, b, c)] == [4, 0, 0], "b and c have not answered yet: a takes a third"
    b.state, b.info = "up", INFO
    runner._assign()
    assert [len(w.inbox) for w in (a, b, c)] == [4, 4, 0]
    c.state = "away"  # c turned out to be down: the others share the rest
    runner._assign()
    assert [len(w.inbox) for w in (a, b, c)] == [6, 6, 0]
    c.state, c.info = "up", INFO
    a.inbox.clear()
    runner.book.pending.extend(jobs(12)[:6])
    runner._assign()
    assert [len(w.inbox) for w in (a, b, c)] == [3, 6, 3], "every server answered: up to --in-flight each"


def test_server_line_shows_done_running_queued_and_rate(tmp_path: Path) -> None:
    b = book(tmp_path)
    stats = b.stats[A]
    stats.succeeded, stats.first_sent, stats.last_done = 3, 10.0, 70.0
    running = b.begin(A, jobs(1)[0])
    running.running_since = 1.0
    assert server_line(stats, "up", [running, b.begin(A, jobs(2)[1])]) == \
        "a:8188  3 done, 1 running, 1 queued, 3.0/min  [up]"


def test_progress_shows_one_line_per_server_and_no_job_bars_on_a_terminal() -> None:
    stream = io.StringIO()
    progress = Progress(2, bars=True, stream=stream, servers=[A, B])
    progress.job_started("k", "1 seed=1", 5)  # a farm shows server lines, not one bar per job
    progress.server_status(A, "a:8188  1 done, 1 running, 0 queued  [up]")
    progress.job_finished("k", "success")
    progress.close()
    text = stream.getvalue()
    assert "a:8188  1 done, 1 running, 0 queued  [up]" in text and "nodes" not in text
    single = io.StringIO()
    one = Progress(1, bars=True, stream=single, servers=[A])
    one.job_started("k", "1 seed=1", 5)
    one.close()
    assert "0/5 nodes" in single.getvalue(), "one server keeps its per-job bars"


@pytest.mark.parametrize(("error", "node_errors", "elsewhere"), [
    ({"type": "missing_node_type", "message": "Node 'X' not found. The custom node may not be installed.",
      "extra_info": {"class_type": "X"}}, {}, True),  # ComfyUI 0.33
    ({"type": "invalid_prompt", "message": "Cannot execute because node X does not exist."}, {}, True),  # 0.3.75
    ({"type": "missing_node_type", "message": "Node 'ID #3' has no class_type.", "extra_info": {"class_type": None}},
     {}, False),  # a broken prompt, the same everywhere
    ({"type": "prompt_outputs_failed_validation"}, {"7": {"errors": [{"type": "custom_validation_failed"}]}}, True),
    ({"type": "prompt_outputs_failed_validation"}, {"7": {"errors": [{"type": "value_not_in_list"}]}}, True),
    ({"type": "prompt_outputs_failed_validation"}, {"7": {"errors": [{"type": "value_bigger_than_max"}]}}, False),
    ({"type": "prompt_no_outputs"}, {}, False),
])
def test_which_refusals_mean_try_another_server(error: dict, node_errors: dict, elsewhere: bool) -> None:
    from lua_core.batch.errors import PromptRejected
    from lua_core.batch.worker import _may_validate_elsewhere

    assert _may_validate_elsewhere(PromptRejected(error, node_errors)) is elsewhere


# --------------------------------------------------------------------------------------------------
# A server's worker, driven by hand against a stand-in client (no thread, no server)
# --------------------------------------------------------------------------------------------------


class FakeClient:
    """What a worker asks of a ComfyUI server: a queue, a history, and the requests it was sent."""

    def __init__(self, url: str, info: dict | None = None) -> None:
        self.base_url, self.timeout = url, 30.0
        self.running: list[str] = []
        self.pending: list[str] = []
        self.entries: dict[str, dict] = {}
        self.info = info if info is not None else INFO
        self.calls: list[tuple] = []

    def queue(self) -> dict:
        return {"queue_running": [[0, p] for p in self.running], "queue_pending": [[1, p] for p in self.pending]}

    def queue_ids(self) -> tuple[list[str], list[str]]:
        return list(self.running), list(self.pending)

    def history(self, prompt_id: str) -> dict | None:
        return self.entries.get(prompt_id)

    def object_info(self) -> dict:
        self.calls.append(("object_info",))
        return self.info

    def delete_queued(self, ids: list[str]) -> None:
        self.calls.append(("delete", tuple(ids)))
        self.pending = [p for p in self.pending if p not in ids]

    def interrupt(self, prompt_id: str) -> None:
        self.calls.append(("interrupt", prompt_id))


def worker(b: Book, url: str, client: FakeClient | None = None, **opts: object) -> object:
    from lua_core.batch.worker import UP, ServerWorker

    w = ServerWorker(client or FakeClient(url), b, RunOptions(use_ws=False, **opts), order=0, precheck=True,
                     info=INFO)
    w.state, w.was_up = UP, True
    return w


SUCCESS = {"status": {"status_str": "success", "completed": True, "messages": []}, "outputs": {}}


def test_a_retired_prompt_stays_retired_when_it_shows_up_again(tmp_path: Path) -> None:
    """A send to a frozen server lands when it thaws, after the job moved and the prompt was looked up
    and found nowhere: it is deleted (queued) or interrupted (running) again, its result is dropped,
    said once, and no row or file is written for it."""
    b = book(tmp_path)
    w = worker(b, A)
    (job,) = jobs(1)
    first = b.begin(A, job)
    first.uncertain = False
    b.move_away(A, "server a has not answered for 30s")
    w._reconcile()  # not queued, not running, no history: settled, still retired
    assert first.prompt_id in b.retired and first.settled
    w.client.pending = [first.prompt_id]  # it shows up again
    w._reconcile()
    assert ("delete", (first.prompt_id,)) in w.client.calls
    w.client.running = [first.prompt_id]
    w._reconcile()
    assert ("interrupt", first.prompt_id) in w.client.calls
    w.client.running, w.client.entries[first.prompt_id] = [], SUCCESS
    first.settled = False  # left the queue: its history is read once more
    w._reconcile()
    w._complete(first, SUCCESS)  # a history poll of the same prompt
    w._reconcile()
    assert sum("late result of prompt" in line for line in b.said) == 1, b.said
    assert not list(b.manifest.rows()) and not (tmp_path / "out" / job.folder).exists()
    assert first.prompt_id in b.retired, "retired for the whole run"


def test_a_server_that_comes_back_is_rechecked_and_its_old_refusals_forgotten(tmp_path: Path) -> None:
    b = book(tmp_path)
    no_4ch = copy.deepcopy(INFO)
    no_4ch["VAELoader"]["input"]["required"]["vae_name"][0].remove("lua_test_taesd_4ch.safetensors")
    w = worker(b, A, FakeClient(A, INFO))
    w.info = no_4ch
    (job,) = jobs(1)
    assert w.fit(job) == "doubtful"
    b.rejections[job.key] = {A: {"kind": "validation"}, B: {"kind": "validation"}}
    w._went_away(RuntimeError("connection refused"))
    assert not w.ready()
    w._probe()
    assert ("object_info",) in w.client.calls and w.ready() and w.fit(job) == "yes", "node list read again"
    assert b.rejections[job.key] == {B: {"kind": "validation"}}, "its refusals from before went with its old list"


def test_disabling_a_server_touches_no_prompt_and_calls_off_its_hand_overs(tmp_path: Path) -> None:
    from lua_core.batch.worker import DISABLED

    b = book(tmp_path, (A, B, C))
    a, idle, c = worker(b, A), worker(b, B), worker(b, C)
    mine = b.begin(A, jobs(1)[0])
    mine.uncertain = False
    a.client.pending = [mine.prompt_id, "someone-elses"]
    a.releasing[mine.prompt_id] = idle
    idle.expecting = 1
    to_c = b.begin(B, jobs(2)[1])
    to_c.uncertain = False
    idle.client.pending = [to_c.prompt_id]
    idle.releasing[to_c.prompt_id] = c  # c asked for a job waiting on b; then c is disabled
    c.expecting = 1
    a._disable(RuntimeError("HTTP 401"))
    assert a.state == DISABLED and not a.releasing and idle.expecting == 0, "a's hand-over is called off"
    c._disable(RuntimeError("HTTP 401"))
    idle._release()
    assert not idle.releasing and c.expecting == 0 and b.owns(to_c), "nothing handed to a server out of the run"
    assert not [call for w in (a, idle, c) for call in w.client.calls if call[0] in ("delete", "interrupt")]
    assert b.owns(mine) and "someone-elses" in a.client.pending


def test_a_server_whose_queue_does_not_move_is_stuck_and_recovers(tmp_path: Path) -> None:
    b = book(tmp_path)
    w = worker(b, A, stall_after=60.0)
    running, queued = [b.begin(A, j) for j in jobs(2)]
    w.client.running, w.client.pending = ["someone-elses"], [running.prompt_id, queued.prompt_id]
    w._reconcile()
    assert w.state == "up"
    w.advanced_at -= 61  # a minute later, the same prompt still running and no event of ours
    w._reconcile()
    assert w.state == "stuck" and not w.ready() and "its executor looks stuck" in b.said[-1], b.said
    assert b.stats[A].times_away == 1
    w._reconcile()
    assert w.state == "stuck", "still the same prompt running"
    w.client.running = [running.prompt_id]  # the queue moved
    w.client.pending = [queued.prompt_id]
    w._reconcile()
    assert w.state == "up" and "moves again" in b.said[-1]


def test_the_dispatcher_moves_the_jobs_of_a_stuck_server(tmp_path: Path) -> None:
    runner, (a, b) = dispatcher(tmp_path, [INFO, INFO])
    held = [runner.book.begin(A, j) for j in jobs(2)]
    a.state, a.away_since = "stuck", time.monotonic() - 31
    a.advanced_at = time.monotonic() - 700
    runner._move_off_away()
    assert not runner.book.held(A) and set(runner.book.retired) == {h.prompt_id for h in held}
    assert "queue has not moved for 700s" in runner.book.said[-1]


def test_a_resumed_run_writes_no_row_for_what_it_only_looked_up(tmp_path: Path) -> None:
    """A killed client's journal: job 1's prompt (its 3rd send) is gone from its server, job 2's error row
    was written before the kill. The re-run sends job 1 again (this run's --max-attempts is its own) and
    runs job 2 again: no false 'lost' row, no second row for job 2's old prompt."""
    runner, (a, b) = dispatcher(tmp_path, [INFO, INFO])
    book_ = runner.book
    one, two = jobs(2)
    journal = book_.manifest.journal
    journal.append({"key": one.key, "prompt_id": "p-one", "client_id": "me", "server": A, "attempt": 3})
    journal.append({"key": two.key, "prompt_id": "p-two", "client_id": "me", "server": B, "attempt": 1})
    book_.manifest.append({"key": two.key, "index": 2, "status": "error", "prompt_id": "p-two"})
    runner._adopt([one, two], journal.latest(), book_.manifest.latest())
    assert [att.prompt_id for att in book_.held(A)] == ["p-one"] and list(book_.pending) == [two]
    (adopted,) = book_.held(A)
    book_.lost([adopted], lambda att: "")
    assert [j.index for j in book_.pending] == [1, 2], "sent again"
    assert [r["status"] for r in book_.manifest.rows()] == ["error"], "no row written by the re-run"
    again = book_.begin(B, book_.pending.popleft())
    assert again.attempt == 4
