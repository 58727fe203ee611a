"""One batch over three real ComfyUI 0.3.75 servers on CPU (``--server`` given three times).

Why these tests: a farm promises that a sweep shared by several servers loses nothing and reports
nothing twice, whatever happens to one of the servers or to the client. Each promise is exercised for
real, with the shared test server and two servers of this module: a sweep spread over all three; a
server SIGKILLed mid-batch (its jobs move to the others) and restarted (it takes jobs again); a server
down when the batch starts (it joins when it comes up); a server frozen with SIGSTOP (its jobs move, and
the result it delivers once thawed is dropped); a server missing a model (it gets none of the jobs
that need it, and a job no server can run is one error row); a client SIGKILLed and re-run (it adopts
its prompts on every server); Ctrl-C (only this client's prompts go, on every server).

No test depends on timing: servers are made to wait with *holds*, prompts of another client queued
in front (``"front": true``) that sleep until the test deletes or interrupts them, so "B is busy while
A restarts" is a state the test sets up, not a race it hopes to win. Every test ends with
:func:`assert_farm_outcome`: every job succeeded exactly once, every output file is there once and
belongs to its row, the manifest and the journal agree, and more than one server ran jobs.
"""

from __future__ import annotations

import collections
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from lua_core.batch import prompt_key

from . import harness, make_test_models
from .test_batch_client import manifest_rows, pngs, sleep_prompt, wait_for, write_json

AB_ONLY = "lua_farm_ab_only.safetensors"  # a VAE the module's two servers have and the shared one lacks
HOLDER = "farm-test-holder"  # client id of the holds


# --------------------------------------------------------------------------------------------------
# The farm
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def farm_servers(comfy_server: harness.ComfyServer, comfyui_path: Path, test_vaes: dict[str, Path],
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[harness.ComfyServer]]:
    """The shared server plus two of this module's (only those two are killed, stopped or frozen)."""
    models = {"vae": {**test_vaes, AB_ONLY: test_vaes[make_test_models.TAESD_4CH]}}
    # one torch thread each: idle OpenMP threads spin, and three servers on two cores would mostly steal
    # CPU from each other (the jobs here are tiny)
    own = [harness.ComfyServer(tmp_path_factory.mktemp(f"farm_{name}"), comfy_dir=comfyui_path, model_files=models,
                               custom_nodes={harness.TEST_PACK_INSTALL_NAME: harness.TEST_PACK_DIR},
                               env={"OMP_NUM_THREADS": "1"})
           for name in ("b", "c")]
    try:
        for server in own:
            server.start()
        yield [comfy_server, *own]
    finally:
        for server in own:
            _thaw(server)
            server.stop()


def _thaw(server: harness.ComfyServer) -> None:
    if server.is_running():
        os.kill(server.pid, signal.SIGCONT)


class Holds:
    """Keeps servers busy with another client's sleeping prompt, queued in front of ours."""

    def __init__(self) -> None:
        self.held: list[tuple[harness.ComfyServer, str]] = []

    def hold(self, server: harness.ComfyServer, started: bool = True) -> str:
        """Hold ``server``: its current prompt finishes, then nothing of ours runs there until released."""
        status, body = server.post_json("/prompt", {"prompt": _sleeper(300), "client_id": HOLDER, "front": True})
        assert status == 200, body
        pid = body["prompt_id"]
        self.held.append((server, pid))
        if started:
            wait_for(lambda: pid in _queue(server)[0], 60, f"the hold on {server.url} to start")
        return pid

    def release(self, *servers: harness.ComfyServer) -> None:
        for server, pid in [h for h in self.held if not servers or h[0] in servers]:
            if server.is_running():
                server.post_json("/queue", {"delete": [pid]})
                server.interrupt(pid)
            self.held.remove((server, pid))


def _sleeper(seconds: float) -> dict:
    return {"1": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
            "2": {"class_type": "LUATest_Sleep", "inputs": {"samples": ["1", 0], "seconds": seconds}},
            "3": {"class_type": "LUATest_LatentInfo", "inputs": {"samples": ["2", 0]}}}


@pytest.fixture
def farm(farm_servers: list[harness.ComfyServer]) -> Iterator[tuple[list[harness.ComfyServer], Holds]]:
    """The three servers, all running and idle, and the holds (released after the test)."""
    for server in farm_servers[1:]:
        _thaw(server)
        if not server.is_running():
            server.restart()
    holds = Holds()
    try:
        yield farm_servers, holds
    finally:
        for server in farm_servers[1:]:
            _thaw(server)
        holds.release()
        for server in farm_servers:
            if server.is_running():
                wait_for(lambda s=server: _queue(s) == ([], []), 60, f"{server.url} to be idle")


def _queue(server: harness.ComfyServer) -> tuple[list[str], list[str]]:
    q = server.queue()
    return [i[1] for i in q["queue_running"]], [i[1] for i in q["queue_pending"]]


def _ours(server: harness.ComfyServer) -> tuple[list[str], list[str]]:
    """(running, pending) prompt ids of ours (anything but the holds) on ``server``."""
    q = server.queue()
    return tuple([i[1] for i in q[k] if i[3].get("client_id") != HOLDER]  # type: ignore[return-value]
                 for k in ("queue_running", "queue_pending"))


# --------------------------------------------------------------------------------------------------
# Running the client
# --------------------------------------------------------------------------------------------------


def farm_args(workflow: Path, servers: list[harness.ComfyServer], out: Path, *args: str) -> list[str]:
    argv = [sys.executable, "-m", "lua_core", "batch", str(workflow), "--out", str(out), "--no-progress"]
    for server in servers:
        argv += ["--server", server.url]
    return argv + list(args)


class Client:
    """``python -m lua_core batch`` in the background, its stderr in a file the test can read while it runs."""

    def __init__(self, argv: list[str], log: Path):
        self.log = log
        env = {k: v for k, v in os.environ.items() if k != "COMFYUI_URL"}
        with open(log, "w") as err:
            self.proc = subprocess.Popen(argv, cwd=harness.REPO_ROOT, stdout=subprocess.DEVNULL, stderr=err, env=env)

    def text(self) -> str:
        return self.log.read_text()

    def wait(self, timeout: float = 120) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            self.kill()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)


@pytest.fixture
def clients() -> Iterator[Callable[[list[str], Path], Client]]:
    started: list[Client] = []

    def start(argv: list[str], log: Path) -> Client:
        started.append(Client(argv, log))
        return started[-1]

    try:
        yield start
    finally:
        for client in started:
            client.kill()


def workflow(tmp_path: Path, seconds: float = 0.2) -> Path:
    return write_json(tmp_path / "wf.json", sleep_prompt(seconds=seconds))


def widths(n: int) -> list[str]:
    """The ``--set`` option for ``n`` jobs: widths 64, 72, ... (each job's PNG has its width)."""
    return ["--set", "Empty Latent Image.width=" + ",".join(str(64 + 8 * i) for i in range(n))]


def by_server(rows: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = collections.defaultdict(list)
    for row in rows:
        if row["status"] == "success":
            out[row["server"]].append(row)
    return out


def executions(servers: list[harness.ComfyServer], client_id: str) -> collections.Counter:
    """How many times each job key ran to success on the servers (their current history)."""
    runs: collections.Counter = collections.Counter()
    for server in servers:
        for entry in server.history().values():
            _, _, prompt, extra, _ = entry["prompt"][:5]
            if extra.get("client_id") == client_id and entry["status"]["status_str"] == "success":
                runs[prompt_key(prompt)] += 1
    return runs


def assert_farm_outcome(out: Path, n: int, min_servers: int = 2) -> list[dict]:
    """Every job succeeded exactly once, its files are complete and unique, the manifest is consistent,
    and the jobs ran on at least ``min_servers`` servers. Returns the success rows."""
    rows = manifest_rows(out)
    success = [r for r in rows if r["status"] == "success"]
    assert len(success) == n, [(r["status"], r["params"], r.get("error")) for r in rows]
    assert len({r["key"] for r in success}) == n, "a job was reported twice"
    assert len({r["prompt_id"] for r in success}) == n
    expected = set()
    for row in success:
        (name,) = row["outputs"]
        png = out / row["output_dir"] / name
        width = row["params"]["Empty Latent Image.width"]
        assert harness.png_size(png.read_bytes()) == (width, 64), (row["params"], png)
        assert row["files"][0]["bytes"] == png.stat().st_size
        expected.add(png)
    assert set(pngs(out)) == expected, "an output is missing, extra, or written outside its row"
    leftovers = [p for p in out.rglob("*") if p.is_file() and p not in expected
                 and p.name not in ("manifest.jsonl", ".manifest.jsonl.lock")]
    assert not leftovers, f"files that belong to no row: {leftovers}"
    assert not (out / "manifest.pending.jsonl").exists(), "the journal is removed once nothing is in flight"
    servers = {r["server"] for r in success}
    assert len(servers) >= min_servers, f"the jobs ran on {servers} only"
    return success


def journal_rows(out: Path) -> list[dict]:
    path = out / "manifest.pending.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


# --------------------------------------------------------------------------------------------------
# Spreading
# --------------------------------------------------------------------------------------------------


@pytest.mark.timeout(180)
def test_a_sweep_is_spread_over_three_servers(farm: Any, tmp_path: Path, clients: Callable) -> None:
    """12 jobs, 2 in flight per server: each server gets its share (all three are held until each has 2
    of ours queued, so no server can take the whole sweep before the others answer); a re-run sends nothing."""
    servers, holds = farm
    for server in servers:
        holds.hold(server)
    out = tmp_path / "out"
    args = farm_args(workflow(tmp_path), servers, out, *widths(12))
    client = clients(args, tmp_path / "client.log")
    for server in servers:
        wait_for(lambda s=server: len(_ours(s)[1]) == 2, 60, f"two of our prompts queued on {server.url}")
    holds.release()
    assert client.wait() == 0, client.text()
    success = assert_farm_outcome(out, 12, min_servers=3)
    assert all(r["attempt"] == 1 and r["moved_from"] == [] for r in success)
    counts = {url: len(rows) for url, rows in by_server(success).items()}
    assert all(c >= 2 for c in counts.values()), counts
    text = client.text()
    assert "12 jobs from" in text and "on 3 servers" in text and "12 succeeded, 0 failed" in text
    for server in servers:  # the summary names each server and its jobs
        assert f"  {server.url}: {counts[server.url]} succeeded" in text, text
    assert executions(servers, success[0]["client_id"]) == collections.Counter({r["key"]: 1 for r in success})

    again = clients(args, tmp_path / "again.log")
    assert again.wait() == 0, again.text()
    assert "12 of 12 jobs already done" in again.text()
    assert len(manifest_rows(out)) == 12, "a finished job was run again"


@pytest.mark.timeout(180)
def test_an_idle_server_takes_over_jobs_waiting_behind_a_busy_one(farm: Any, tmp_path: Path,
                                                                  clients: Callable) -> None:
    """6 jobs, 2 queued on each server; a stays busy (another client's long prompt): once b and c are done
    with theirs, a's two waiting jobs are deleted from its queue and run on b and c. The batch ends while
    a is still busy: a slow server does not hold it back."""
    servers, holds = farm
    a, b, c = servers
    for server in servers:
        holds.hold(server)
    out = tmp_path / "out"
    client = clients(farm_args(workflow(tmp_path), servers, out, *widths(6)), tmp_path / "client.log")
    wait_for(lambda: all(len(_ours(s)[1]) == 2 for s in servers), 60, "two prompts of ours queued on each server")
    holds.release(b, c)
    assert client.wait() == 0, client.text()
    success = assert_farm_outcome(out, 6)
    assert {r["server"] for r in success} == {b.url, c.url}
    assert all(r["attempt"] == 1 for r in success), "a job handed over before it started is not a new attempt"
    assert _ours(a) == ([], []), "the handed-over prompts must be gone from a's queue"
    assert client.text().count(f"was waiting in server {a.url.split('//')[1]}'s queue: moved to idle server") == 2
    assert executions(servers, success[0]["client_id"]) == collections.Counter({r["key"]: 1 for r in success})


# --------------------------------------------------------------------------------------------------
# A server that goes away
# --------------------------------------------------------------------------------------------------


def _moved_count(text: str, server: harness.ComfyServer) -> int:
    """How many jobs the client said it moved off ``server``."""
    name = re.escape(server.url.split("//")[1])
    found = re.findall(rf"server {name} has not answered for \d+s: moving its (\d+) jobs? \(", text)
    assert found, text
    return sum(map(int, found))


def _moved_rows(out: Path, server: harness.ComfyServer) -> list[dict]:
    return [r for r in manifest_rows(out) if r["status"] == "success" and server.url in r["moved_from"]]


@pytest.mark.timeout(360)
def test_a_server_killed_mid_batch_hands_its_jobs_over_and_rejoins(farm: Any, tmp_path: Path,
                                                                   clients: Callable) -> None:
    """b is SIGKILLed with two jobs of ours: they move to a (attempt 2) after --move-after; b is restarted
    while jobs are left (a and c are held) and takes some; no job is lost, reported or run twice."""
    servers, holds = farm
    a, b, c = servers
    holds.hold(a)
    holds.hold(c)
    out, n = tmp_path / "out", 12
    client = clients(farm_args(workflow(tmp_path), servers, out, *widths(n), "--move-after", "1", "--timeout", "5"),
                     tmp_path / "client.log")
    wait_for(lambda: by_server(manifest_rows(out)).get(b.url) and len(_ours(b)[0] + _ours(b)[1]) == 2, 120,
             "b to finish a job and hold two more")
    b.kill()
    wait_for(lambda: "moving its" in client.text(), 60, "b's jobs to be moved")
    moved = _moved_count(client.text(), b)
    holds.release(a)
    wait_for(lambda: len(_moved_rows(out, b)) == moved, 120, "the moved jobs to finish on a")
    holds.hold(a)  # a and c busy: what is left waits for b
    assert len([r for r in manifest_rows(out) if r["status"] == "success"]) < n, "the batch ended before b came back"
    b.restart()

    def ran_on_new_b() -> bool:
        history = b.history()
        return any(r["server"] == b.url and r["prompt_id"] in history for r in manifest_rows(out))

    wait_for(ran_on_new_b, 120, "b to run a job after its restart")
    holds.release()
    assert client.wait(180) == 0, client.text()

    success = assert_farm_outcome(out, n, min_servers=3)
    text = client.text()
    moved_rows = [r for r in success if b.url in r["moved_from"]]
    assert len(moved_rows) == moved >= 1, text
    assert all(r["moved_from"][0] == b.url and r["server"] != b.url and r["attempt"] >= 2 for r in moved_rows)
    history = b.history()
    before = [r for r in success if r["server"] == b.url and r["prompt_id"] not in history]
    after = [r for r in success if r["server"] == b.url and r["prompt_id"] in history]
    assert before and after, "b ran jobs before the kill and after its restart"
    runs = executions(servers, success[0]["client_id"])  # b's history only covers its new process
    assert max(runs.values()) == 1, "a job ran twice"
    assert not {r["key"] for r in before} & set(runs), "a job b finished before the kill ran again"
    assert set(runs) == {r["key"] for r in success if r not in before}
    assert "is back after" in text and f"server {b.url.split('//')[1]} has not answered for" in text
    assert "12 succeeded, 0 failed" in text
    assert f"  {b.url}: {len(before) + len(after)} succeeded" in text and "moved to other servers" in text


@pytest.mark.timeout(300)
def test_a_server_down_at_the_start_joins_when_it_comes_up(farm: Any, tmp_path: Path, clients: Callable) -> None:
    """b is down when the batch starts: a and c get the jobs (held, so some are left); b is started, joins
    and takes jobs; every job runs once."""
    servers, holds = farm
    a, b, c = servers
    b.stop()
    holds.hold(a)
    holds.hold(c)
    out, n = tmp_path / "out", 9
    client = clients(farm_args(workflow(tmp_path), servers, out, *widths(n)), tmp_path / "client.log")
    wait_for(lambda: len(_ours(a)[1]) == 2 and len(_ours(c)[1]) == 2 and "it joins the batch when it answers" in
             client.text(), 60, "a and c to hold two jobs each, b reported down")
    b.restart()
    wait_for(lambda: by_server(manifest_rows(out)).get(b.url), 120, "b to finish a job")
    holds.release()
    assert client.wait() == 0, client.text()
    success = assert_farm_outcome(out, n, min_servers=3)
    assert all(r["attempt"] == 1 and not r["moved_from"] for r in success)
    assert executions(servers, success[0]["client_id"]) == collections.Counter({r["key"]: 1 for r in success})
    assert f"server {b.url.split('//')[1]} answers after" in client.text()


@pytest.mark.timeout(300)
def test_a_frozen_server_s_jobs_move_and_its_late_results_are_dropped(farm: Any, tmp_path: Path,
                                                                      clients: Callable) -> None:
    """b hangs (SIGSTOP) with one job of ours running and one queued: after --timeout and --move-after they
    run on a. b is thawed while the client is frozen, so b finishes both retired prompts before the client
    hears from it again: the client recognises them by prompt id and drops them (no row, no file), then b
    takes new jobs."""
    servers, holds = farm
    a, b, c = servers
    holds.hold(a)
    holds.hold(c)
    out, n = tmp_path / "out", 9
    args = farm_args(workflow(tmp_path, seconds=1.0), servers, out, *widths(n), "--move-after", "1", "--timeout", "5")
    client = clients(args, tmp_path / "client.log")
    def one_running_one_queued() -> tuple[list[str], list[str]] | None:
        ours = _ours(b)
        return ours if len(ours[0]) == 1 and len(ours[1]) == 1 else None

    running, queued = wait_for(one_running_one_queued, 60, "one job of ours running on b and one queued")
    retired = running + queued
    os.kill(b.pid, signal.SIGSTOP)
    wait_for(lambda: "moving its 2 jobs" in client.text(), 60, "b's jobs to be moved")
    holds.release(a)
    wait_for(lambda: len(_moved_rows(out, b)) == 2, 120, "the moved jobs to finish on a")
    holds.hold(a)
    os.kill(client.proc.pid, signal.SIGSTOP)
    try:
        _thaw(b)
        wait_for(lambda: all(b.history(pid).get(pid, {}).get("status", {}).get("completed") for pid in retired), 60,
                 "b to finish both retired prompts")
    finally:
        os.kill(client.proc.pid, signal.SIGCONT)
    wait_for(lambda: all(f"late result of prompt {pid}" in client.text() for pid in retired), 60,
             "the client to drop both late results")
    wait_for(lambda: by_server(manifest_rows(out)).get(b.url), 120, "b to take a job after it came back")
    holds.release()
    assert client.wait() == 0, client.text()

    success = assert_farm_outcome(out, n, min_servers=3)  # the late results wrote no file and no row
    frozen_keys = {prompt_key(b.history(pid)[pid]["prompt"][2]) for pid in retired}
    moved = {r["key"]: r for r in success if r["moved_from"]}
    assert frozen_keys <= set(moved), "the jobs b held when it froze were moved"
    assert all(moved[k]["moved_from"][0] == b.url and moved[k]["attempt"] == 2 for k in frozen_keys)
    assert not {r["prompt_id"] for r in success} & set(retired), "a late result was recorded"
    runs = executions(servers, success[0]["client_id"])
    assert frozen_keys <= {k for k, v in runs.items() if v == 2}, "b ran them too (its late results were dropped)"
    assert {k for k, v in runs.items() if v > 1} <= set(moved), "only moved jobs ran twice"
    text, collected = client.text(), {r["prompt_id"] for r in success}
    for pid, entry in b.history().items():  # every late success on b was recognised and dropped
        ours = entry["prompt"][3].get("client_id") == success[0]["client_id"]
        if ours and pid not in collected and entry["status"]["status_str"] == "success":
            assert f"late result of prompt {pid}" in text, "a late result was not recognised"


# --------------------------------------------------------------------------------------------------
# Servers that differ
# --------------------------------------------------------------------------------------------------


@pytest.mark.timeout(180)
def test_a_server_missing_a_model_gets_none_of_the_jobs_that_need_it(farm: Any, tmp_path: Path,
                                                                     clients: Callable) -> None:
    """a lacks the VAE the sweep uses: b and c run every job (checked against /object_info before
    sending: a is never sent one), and a job whose VAE no server lists is tried on each (a value outside
    a list is left to the server's own validation, which a node's VALIDATE_INPUTS may widen), refused by
    each, and then one invalid row naming what each server said."""
    servers, holds = farm
    a, b, c = servers
    rows = [{"Load VAE.vae_name": AB_ONLY, "Empty Latent Image.width": 64 + 8 * i} for i in range(6)]
    rows.append({"Load VAE.vae_name": "lua_farm_nowhere.safetensors", "Empty Latent Image.width": 64})
    sweep = tmp_path / "rows.jsonl"
    sweep.write_text("".join(json.dumps(r) + "\n" for r in rows))
    holds.hold(b)
    holds.hold(c)
    out = tmp_path / "out"
    log_start = len(a.log_text())
    client = clients(farm_args(workflow(tmp_path), servers, out, "--sweep", str(sweep)), tmp_path / "client.log")
    wait_for(lambda: len(_ours(b)[1]) == 2 and len(_ours(c)[1]) == 2, 60, "b and c to hold two jobs each")
    holds.release()
    assert client.wait() == 1, client.text()

    success = assert_farm_outcome(out, 6)
    assert {r["server"] for r in success} == {b.url, c.url}
    (bad,) = [r for r in manifest_rows(out) if r["status"] != "success"]
    assert bad["status"] == "invalid" and bad["server"] is None and bad["prompt_id"] is None
    assert bad["error"]["kind"] == "validation" and bad["error"]["type"] == "validates_nowhere"
    items = bad["error"]["nodes"]
    assert sorted(i["server"] for i in items) == sorted(s.url for s in servers)
    assert all(i == {**i, "node_id": "3", "title": "Load VAE", "class_type": "VAELoader", "input": "vae_name",
                     "type": "value_not_in_list", "received": "lua_farm_nowhere.safetensors"} for i in items)
    client_id = success[0]["client_id"]
    assert not [e for e in a.history().values() if e["prompt"][3].get("client_id") == client_id], \
        "a job ran on the server without the model"
    assert AB_ONLY not in a.log_text()[log_start:], "a job was sent to the server without the model (refused)"
    text = client.text()
    refusals = [line for line in text.splitlines() if " refused by " in line]
    assert len(refusals) == 3 and all(line.startswith("job 7 ") for line in refusals), text
    assert "no server can run this job" in text and f"on {a.url}: #3 'Load VAE' (VAELoader) input 'vae_name'" in text
    assert "6 succeeded, 1 failed" in text and "1 job validated on no server" in text


# --------------------------------------------------------------------------------------------------
# The client
# --------------------------------------------------------------------------------------------------


@pytest.mark.timeout(240)
def test_a_client_killed_mid_batch_is_resumed_over_the_servers_given(farm: Any, tmp_path: Path,
                                                                     clients: Callable) -> None:
    """The client is SIGKILLed with 2 prompts queued on each server; the re-run is given a and b only: it
    adopts the 4 prompts there (by id, on the server that has them) and sends c's 2 jobs again to a or b.
    c's copies are never collected: every job is reported once, its files written once."""
    servers, holds = farm
    a, b, c = servers
    for server in servers:
        holds.hold(server)
    out, n = tmp_path / "out", 9
    wf = workflow(tmp_path)
    first = clients(farm_args(wf, servers, out, *widths(n)), tmp_path / "first.log")
    wait_for(lambda: len(journal_rows(out)) == 6 and all(len(_ours(s)[1]) == 2 for s in servers), 60,
             "two prompts of ours queued on each server")
    first.kill()
    sent = {r["prompt_id"]: r for r in journal_rows(out)}
    assert sorted(r["server"] for r in sent.values()) == sorted(s.url for s in servers for _ in range(2))
    second = clients(farm_args(wf, [a, b], out, *widths(n)), tmp_path / "second.log")
    wait_for(lambda: "sent by an earlier run" in second.text(), 60, "the re-run to adopt the prompts")
    holds.release(a, b)
    assert second.wait() == 0, second.text()

    success = assert_farm_outcome(out, n)
    assert {r["server"] for r in success} == {a.url, b.url}
    adopted = [r for r in success if r["prompt_id"] in sent]
    assert len(adopted) == 4 and all(r["server"] == sent[r["prompt_id"]]["server"] for r in adopted)
    resent = [r for r in success if r["key"] in {s["key"] for s in sent.values() if s["server"] == c.url}]
    assert len(resent) == 2 and all(r["attempt"] == 2 for r in resent)
    assert all(r["client_id"] == next(iter(sent.values()))["client_id"] for r in success)
    assert executions([a, b], success[0]["client_id"]) == collections.Counter({r["key"]: 1 for r in success})
    text = second.text()
    assert "4 jobs were sent by an earlier run; looking them up on their servers" in text
    assert text.count("that server is not in this run's list") == 2


@pytest.mark.timeout(180)
def test_ctrl_c_cancels_this_clients_prompts_on_every_server(farm: Any, tmp_path: Path, clients: Callable) -> None:
    """Ctrl-C with two prompts of ours queued on each server: all six are deleted, nothing else is touched
    (the holds keep running, another client's prompt queued behind ours stays)."""
    servers, holds = farm
    pids = {s.url: holds.hold(s) for s in servers}
    out = tmp_path / "out"
    client = clients(farm_args(workflow(tmp_path), servers, out, *widths(9)), tmp_path / "client.log")
    wait_for(lambda: all(len(_ours(s)[1]) == 2 for s in servers), 60, "two prompts of ours queued on each server")
    other = servers[1].post_prompt(_sleeper(0), client_id="someone-else")["prompt_id"]
    client.proc.send_signal(signal.SIGINT)
    assert client.wait(90) == 130, client.text()
    rows = manifest_rows(out)
    assert len(rows) == 6 and all(r["status"] == "cancelled" for r in rows)
    assert sorted(r["server"] for r in rows) == sorted(s.url for s in servers for _ in range(2))
    for server in servers:
        running, pending = _queue(server)
        assert running == [pids[server.url]], "a hold was interrupted"
        assert pending == ([other] if server is servers[1] else []), "ours must be gone, the other client's stay"
        for row in rows:
            assert server.history(row["prompt_id"]) == {}, "a cancelled prompt ran"
    assert not (out / "manifest.pending.jsonl").exists()
    assert "cancelling this client's prompts on every server" in client.text()
