"""The batch client (``lua_core.batch``, ``python -m lua_core batch``) against a real ComfyUI (0.3.75 or 0.33.0) on CPU.

Why these tests: the client promises that no job is lost or run twice, whatever happens to the server or
the client. Each promise is exercised for real: a 12-job sweep, a server SIGKILLed mid-batch (the client
rides it out; and, separately, gives up and a re-run completes the batch), a client SIGKILLed mid-batch
(the re-run adopts its prompts instead of re-sending them), a rejected input named by node and input,
Ctrl-C that cancels only this client's prompts, and UI-format workflows converted exactly like their
API-format counterparts. Jobs use built-in nodes and the ``LUATest_*`` test pack only.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lua_core.batch import ComfyClient, load_workflow, prompt_key, run_batch, ui_to_api

from . import harness, make_test_models

DATA = harness.REPO_ROOT / "tests" / "data" / "batch"
WORKFLOWS = harness.REPO_ROOT / "workflows"


def sleep_prompt(seconds: float = 0.0, width: int = 64, vae: str = make_test_models.TAESD_4CH) -> dict:
    """EmptyLatentImage -> LUATest_Sleep -> VAEDecode -> SaveImage: one PNG of ``width`` x 64 per job."""
    return {
        "1": {"class_type": "EmptyLatentImage", "inputs": {"width": width, "height": 64, "batch_size": 1},
              "_meta": {"title": "Empty Latent Image"}},
        "2": {"class_type": "LUATest_Sleep", "inputs": {"samples": ["1", 0], "seconds": seconds},
              "_meta": {"title": "Sleep"}},
        "3": {"class_type": "VAELoader", "inputs": {"vae_name": vae}, "_meta": {"title": "Load VAE"}},
        "4": {"class_type": "VAEDecode", "inputs": {"samples": ["2", 0], "vae": ["3", 0]},
              "_meta": {"title": "VAE Decode"}},
        "5": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "batch_test"},
              "_meta": {"title": "Save Image"}},
    }


def write_json(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data, indent=1))
    return path


def cli_args(workflow: Path, server: harness.ComfyServer, out: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "lua_core", "batch", str(workflow), "--server", server.url, "--out", str(out),
            "--no-progress", *args]


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "COMFYUI_URL"}
    return subprocess.run(list(args), cwd=harness.REPO_ROOT, capture_output=True, text=True, timeout=timeout,
                          env=env)


def manifest_rows(out: Path) -> list[dict]:
    path = out / "manifest.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def pngs(out: Path) -> list[Path]:
    return sorted(out.rglob("*.png"))


def assert_complete(out: Path, n: int) -> list[dict]:
    """Exactly one success row per job, no other row, one PNG per job folder with the job's width."""
    rows = manifest_rows(out)
    success = [r for r in rows if r["status"] == "success"]
    assert len(success) == n, [(r["status"], r["params"], r.get("error")) for r in rows]
    assert len({r["key"] for r in success}) == n, "a job succeeded twice"
    files = pngs(out)
    assert len(files) == n, files
    for row in success:
        (name,) = row["outputs"]
        png = out / row["output_dir"] / name
        width = next(v for k, v in row["params"].items() if k.endswith("width"))
        assert harness.png_size(png.read_bytes()) == (width, 64), (row["params"], png)
    return rows


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def history_keys(server: harness.ComfyServer, client_id: str | None = None) -> list[str]:
    """Job keys of every prompt the server executed (optionally only one client's)."""
    keys = []
    for entry in server.history().values():
        _, _, prompt, extra, _ = entry["prompt"][:5]
        if client_id is None or extra.get("client_id") == client_id:
            keys.append(prompt_key(prompt))
    return keys


# --------------------------------------------------------------------------------------------------
# A sweep, resumed
# --------------------------------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_sweep_of_12_jobs_writes_12_rows_and_12_files(comfy_server: harness.ComfyServer, tmp_path: Path) -> None:
    wf = write_json(tmp_path / "wf.json", sleep_prompt())
    out = tmp_path / "out"
    sweep = ["--set", "Empty Latent Image.width=64,72,80,88", "--set", "Sleep.seconds=0,0.01,0.02"]
    first = cli(*cli_args(wf, comfy_server, out, *sweep, "--in-flight", "3"))
    assert first.returncode == 0, first.stderr
    rows = assert_complete(out, 12)
    assert len(rows) == 12
    assert {tuple(r["params"].values()) for r in rows} == {(w, s) for w in (64, 72, 80, 88) for s in (0, 0.01, 0.02)}
    for row in rows:
        assert row["prompt_id"] and row["attempt"] == 1 and row["error"] is None
        assert row["timings"]["run_s"] is not None and row["timings"]["total_s"] >= row["timings"]["run_s"] - 0.05
        assert row["output_dir"].startswith(f"width={row['params']['Empty Latent Image.width']}_seconds=")
    assert "12 succeeded" in first.stderr
    assert not (out / "manifest.pending.jsonl").exists(), "the journal is removed when nothing is in flight"

    again = cli(*cli_args(wf, comfy_server, out, *sweep))
    assert again.returncode == 0, again.stderr
    assert "12 already done" in again.stderr
    assert len(manifest_rows(out)) == 12, "a finished job was run again"
    one = cli(*cli_args(wf, comfy_server, out, "--set", "Empty Latent Image.width=64", "--set", "Sleep.seconds=0"))
    assert one.returncode == 0 and "1 job from " in one.stderr and "\n1 job: 0 succeeded, 0 failed, 1 already done" \
        in one.stderr, one.stderr


# --------------------------------------------------------------------------------------------------
# Never lose a job
# --------------------------------------------------------------------------------------------------


@pytest.mark.timeout(180)
def test_server_killed_mid_batch(comfy_server_factory: Callable[..., harness.ComfyServer], tmp_path: Path) -> None:
    server = comfy_server_factory()
    wf = sleep_prompt(seconds=0.6)
    widths = ["64", "72", "80", "88", "96", "104"]

    # 1) the client rides out a crash + restart: it waits, finds its in-flight prompts gone, re-sends them
    out_a = tmp_path / "a"
    result: dict[str, Any] = {}
    client = ComfyClient(server.url, timeout=10)

    def go() -> None:
        result["r"] = run_batch(wf, client=client, sets=[f"Empty Latent Image.width={','.join(widths)}"],
                                out_dir=out_a, in_flight=2, progress=False, quiet=True)

    runner = threading.Thread(target=go)
    runner.start()
    wait_for(lambda: len(manifest_rows(out_a)) >= 2, 60, "two finished jobs")
    server.kill()
    done_before = len(manifest_rows(out_a))
    time.sleep(0.5)
    server.restart()
    runner.join(120)
    assert not runner.is_alive()
    res = result["r"]
    assert res.ok and res.succeeded == len(widths) and res.skipped == 0
    rows = assert_complete(out_a, len(widths))
    assert len(rows) == len(widths)
    assert any(r["attempt"] == 2 for r in rows), "no in-flight job was detected as lost and re-sent"
    resent = [r["key"] for r in rows[done_before:]]
    on_new_server = history_keys(server)
    assert sorted(on_new_server) == sorted(set(on_new_server)), "a job ran twice on the restarted server"
    assert set(on_new_server) <= set(resent), "a job finished before the crash ran again"

    # 2) the client gives up (short --server-wait) while the server is down; a re-run completes the batch
    out_b = tmp_path / "b"
    path = write_json(tmp_path / "wf.json", wf)
    args = cli_args(path, server, out_b, "--set", f"Empty Latent Image.width={','.join(widths)}", "--server-wait", "1")
    proc = subprocess.Popen(args, cwd=harness.REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: len(manifest_rows(out_b)) >= 2, 60, "two finished jobs")
        server.kill()
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 3, err
    assert "re-run the same command to resume" in err
    first_rows = manifest_rows(out_b)
    assert 2 <= len(first_rows) < len(widths) and all(r["status"] == "success" for r in first_rows)
    journal = [json.loads(x) for x in (out_b / "manifest.pending.jsonl").read_text().splitlines()]
    assert journal, "the prompts in flight at the crash must be journaled"
    server.restart()
    rerun = cli(*args)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{len(first_rows)} already done" in rerun.stderr
    rows = assert_complete(out_b, len(widths))
    assert rows[: len(first_rows)] == first_rows and len(rows) == len(widths)
    assert any(r["attempt"] == 2 for r in rows[len(first_rows):]), "the journaled prompts were not re-sent"
    executed = history_keys(server)
    assert sorted(executed) == sorted(set(executed)), "a job ran twice"
    assert not {r["key"] for r in first_rows} & set(executed), "a finished job ran again"
    assert not (out_b / "manifest.pending.jsonl").exists()


@pytest.mark.timeout(120)
def test_client_killed_mid_batch_rerun_adopts_its_prompts(comfy_server: harness.ComfyServer, tmp_path: Path) -> None:
    """SIGKILL the client while its prompts are queued: the re-run finds them by id and sends nothing twice."""
    path = write_json(tmp_path / "wf.json", sleep_prompt(seconds=1.0))
    out = tmp_path / "out"
    args = cli_args(path, comfy_server, out, "--set", "Empty Latent Image.width=64,72,80,88", "--in-flight", "3")
    proc = subprocess.Popen(args, cwd=harness.REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        journal = out / "manifest.pending.jsonl"
        wait_for(lambda: journal.exists() and len(journal.read_text().splitlines()) >= 3, 60, "3 journaled sends")
    finally:
        proc.kill()
        proc.wait(30)
    sent = [json.loads(x) for x in journal.read_text().splitlines()]
    client_id = sent[0]["client_id"]
    rerun = cli(*args)
    assert rerun.returncode == 0, rerun.stderr
    assert "sent by an earlier run" in rerun.stderr
    rows = assert_complete(out, 4)
    adopted = {s["prompt_id"] for s in sent}
    assert sum(r["prompt_id"] in adopted for r in rows) >= 3, "the re-run did not adopt the queued prompts"
    assert all(r["client_id"] == client_id for r in rows), "the re-run should reuse the journaled client id"
    executed = history_keys(comfy_server, client_id)
    assert sorted(executed) == sorted({r["key"] for r in rows}), "each job must run exactly once on the server"


@pytest.mark.timeout(120)
def test_a_rerun_deletes_the_send_a_killed_run_superseded(comfy_server: harness.ComfyServer, tmp_path: Path) -> None:
    """A killed run's journal holds two sends of one job: an older one still queued on the server (a farm run
    moved the job away from it, or found it lost, and sent it again) and the last one. The re-run adopts the
    last send and deletes the older prompt from the queue: the job runs once, the old prompt never."""
    wf = sleep_prompt(seconds=0.0)
    path = write_json(tmp_path / "wf.json", wf)
    out = tmp_path / "out"
    out.mkdir()
    comfy_server.post_prompt(sleep_prompt(seconds=3.0, width=72), client_id="someone else")  # keeps the queue busy
    old = str(uuid.uuid4())  # ComfyUI 0.33 takes only canonical UUIDs as client-chosen prompt ids
    comfy_server.post_prompt(wf, client_id="killed run", prompt_id=old)
    journal = [{"key": prompt_key(wf), "prompt_id": old, "client_id": "killed run", "server": comfy_server.url,
                "attempt": 1},
               {"key": prompt_key(wf), "prompt_id": str(uuid.uuid4()), "client_id": "killed run",
                "server": comfy_server.url, "attempt": 2}]
    (out / "manifest.pending.jsonl").write_text("".join(json.dumps(r) + "\n" for r in journal))
    run = cli(*cli_args(path, comfy_server, out))
    assert run.returncode == 0, run.stderr
    assert "removed 1 prompt from its queue (an earlier run sent the job again)" in run.stderr, run.stderr
    assert [r["status"] for r in manifest_rows(out)] == ["success"], manifest_rows(out)
    wait_for(lambda: not any(comfy_server.queue().values()), 30, "the server's queue to empty")
    assert old not in comfy_server.history(), "the superseded send ran"


# --------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_bad_input_is_reported_with_node_and_input(comfy_server: harness.ComfyServer, tmp_path: Path) -> None:
    path = write_json(tmp_path / "wf.json", sleep_prompt())
    out = tmp_path / "out"
    vaes = [make_test_models.TAESD_4CH, make_test_models.TAESD_16CH, "no_such_vae.safetensors"]
    run = cli(*cli_args(path, comfy_server, out, "--set", f"Load VAE.vae_name={','.join(vaes)}"))
    assert run.returncode == 1, run.stderr
    rows = {r["params"]["Load VAE.vae_name"]: r for r in manifest_rows(out)}
    assert rows[vaes[0]]["status"] == "success"
    bad = rows["no_such_vae.safetensors"]
    assert bad["status"] == "invalid" and bad["outputs"] == []
    (item,) = bad["error"]["nodes"]
    assert item == {**item, "node_id": "3", "title": "Load VAE", "class_type": "VAELoader", "input": "vae_name",
                    "type": "value_not_in_list", "received": "no_such_vae.safetensors"}
    assert "#3 'Load VAE' (VAELoader) input 'vae_name'" in run.stderr
    crashed = rows[vaes[1]]  # a 4-channel latent into a 16-channel decoder: fails while running
    assert crashed["status"] == "error"
    assert crashed["error"]["node_id"] == "4" and crashed["error"]["class_type"] == "VAEDecode"
    assert crashed["error"]["title"] == "VAE Decode" and crashed["error"]["exception_type"]
    assert "#4 'VAE Decode' (VAEDecode) failed" in run.stderr
    assert "1 succeeded, 2 failed" in run.stderr


@pytest.mark.timeout(120)
def test_an_output_the_server_refuses_fails_only_its_job(comfy_server: harness.ComfyServer, tmp_path: Path) -> None:
    """ComfyUI renders a job whose filename_prefix holds '..' but answers HTTP 400 when the file is
    fetched: that job is an error row naming the fix, the others finish, a re-run does not get stuck."""
    path = write_json(tmp_path / "wf.json", sleep_prompt())
    out = tmp_path / "out"
    args = cli_args(path, comfy_server, out, "--set", "Save Image.filename_prefix=ok1,take..2,ok2")
    run = cli(*args)
    assert run.returncode == 1, run.stderr
    rows = {r["params"]["Save Image.filename_prefix"]: r for r in manifest_rows(out)}
    assert rows["ok1"]["status"] == rows["ok2"]["status"] == "success", rows
    bad = rows["take..2"]
    assert bad["status"] == "error" and bad["error"]["kind"] == "download"
    assert "HTTP 400" in bad["error"]["message"] and "change the filename_prefix" in bad["error"]["message"]
    assert "change the filename_prefix" in run.stderr and "2 succeeded, 1 failed" in run.stderr
    again = cli(*args, "--skip-failed")
    assert again.returncode == 0, again.stderr


def test_unknown_and_ambiguous_targets_fail_before_sending(comfy_server: harness.ComfyServer, tmp_path: Path) -> None:
    prompt = sleep_prompt()
    prompt["6"] = {**prompt["2"], "_meta": {"title": "Sleep"}}
    path = write_json(tmp_path / "wf.json", prompt)
    out = tmp_path / "out"
    ambiguous = cli(*cli_args(path, comfy_server, out, "--set", "Sleep.seconds=1,2"))
    assert ambiguous.returncode == 1
    assert "'Sleep' matches 2 nodes: #2 'Sleep' (LUATest_Sleep), #6 'Sleep' (LUATest_Sleep)" in ambiguous.stderr
    unknown = cli(*cli_args(path, comfy_server, out, "--set", "Save Image.prefix=x"))
    assert unknown.returncode == 1
    assert "has no input 'prefix'" in unknown.stderr and "images, filename_prefix" in unknown.stderr
    assert not (out / "manifest.jsonl").exists()


# --------------------------------------------------------------------------------------------------
# Ctrl-C
# --------------------------------------------------------------------------------------------------


def _queue_items(server: harness.ComfyServer) -> tuple[list, list]:
    q = server.queue()
    return q["queue_running"], q["queue_pending"]


def _ours(items: list, other: str) -> list[str]:
    return [item[1] for item in items if item[3].get("client_id") != other]


def _ours_if(items: list, other: str, count: int) -> list[str] | None:
    ours = _ours(items, other)
    return ours if len(ours) == count else None


def _slow(seconds: float) -> dict:
    return {"1": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
            "2": {"class_type": "LUATest_Sleep", "inputs": {"samples": ["1", 0], "seconds": seconds}},
            "3": {"class_type": "LUATest_LatentInfo", "inputs": {"samples": ["2", 0]}}}


@pytest.mark.timeout(150)
def test_ctrl_c_cancels_only_this_clients_prompts(comfy_server: harness.ComfyServer, tmp_path: Path) -> None:
    other = "other-client"
    path = write_json(tmp_path / "wf.json", sleep_prompt(seconds=30))
    server = comfy_server

    # (a) someone else's prompt is running, ours wait behind it, someone else's waits behind ours
    running_other = server.post_prompt(_slow(20), client_id=other)["prompt_id"]
    wait_for(lambda: any(i[1] == running_other for i in _queue_items(server)[0]), 30, "the other prompt to start")
    out = tmp_path / "a"
    proc = subprocess.Popen(cli_args(path, server, out, "--set", "Empty Latent Image.width=64,72,80"),
                            cwd=harness.REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ours = wait_for(lambda: _ours_if(_queue_items(server)[1], other, 2), 60, "two of our prompts queued")
        queued_other = server.post_prompt(_slow(0), client_id=other)["prompt_id"]
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    running, pending = _queue_items(server)
    assert [i[1] for i in running] == [running_other], "the other client's running prompt was interrupted"
    assert [i[1] for i in pending] == [queued_other], "our prompts must be gone, the other client's must remain"
    for pid in ours:
        assert server.history(pid) == {}, "a cancelled queued prompt must never run"
    rows = manifest_rows(out)
    assert sorted(r["prompt_id"] for r in rows) == sorted(ours)
    assert all(r["status"] == "cancelled" for r in rows)
    assert not (out / "manifest.pending.jsonl").exists()
    server.interrupt(running_other)  # clean up (targeted: only that prompt)
    wait_for(lambda: server.history(queued_other), 60, "the other queued prompt to run")
    assert server.history(queued_other)[queued_other]["status"]["status_str"] == "success"

    # (b) our prompt is running: Ctrl-C interrupts it (and only it), deletes our queued one
    out = tmp_path / "b"
    proc = subprocess.Popen(cli_args(path, server, out, "--set", "Empty Latent Image.width=96,104"),
                            cwd=harness.REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        running_ours = wait_for(lambda: _ours(_queue_items(server)[0], other), 60, "our prompt running")
        wait_for(lambda: _ours(_queue_items(server)[1], other), 30, "our second prompt queued")
        queued_other = server.post_prompt(_slow(0), client_id=other)["prompt_id"]
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    entry = server.wait(running_ours[0], timeout=30)
    assert entry["status"]["status_str"] == "error"
    assert [m[0] for m in entry["status"]["messages"]][-1] == "execution_interrupted"
    entry = server.wait(queued_other, timeout=60)
    assert entry["status"]["status_str"] == "success", "the other client's prompt must still run"
    rows = manifest_rows(out)
    assert len(rows) == 2 and all(r["status"] == "cancelled" for r in rows)
    assert not _ours(sum(_queue_items(server), []), other)


# --------------------------------------------------------------------------------------------------
# UI format == API format
# --------------------------------------------------------------------------------------------------

FIXTURE_PAIRS = ["features", "subgraph"]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", FIXTURE_PAIRS)
def test_ui_fixture_converts_to_its_api_twin(comfy_server: harness.ComfyServer, tmp_path: Path, name: str) -> None:
    """Hand-made UI workflows (reroutes, primitives, bypass, mute, converted widgets, seed control, notes,
    groups, a subgraph) give exactly the hand-written API prompt, and the two files are the same job."""
    info = comfy_server.object_info()
    ui = json.loads((DATA / f"ui_{name}.json").read_text())
    api = json.loads((DATA / f"api_{name}.json").read_text())
    assert ui_to_api(ui, info).prompt == api
    client = ComfyClient(comfy_server.url)
    out = tmp_path / "out"
    first = run_batch(DATA / f"ui_{name}.json", client=client, out_dir=out, progress=False, quiet=True)
    assert first.ok and first.succeeded == 1, first.rows
    second = run_batch(DATA / f"api_{name}.json", client=client, out_dir=out, progress=False, quiet=True)
    assert second.ok and second.skipped == 1 and second.rows == [], "the API file must be the same job"
    assert len(pngs(out)) == 1


def _workflow_pairs() -> list[Any]:
    pairs = [pytest.param(p, WORKFLOWS / "api" / p.name, id=p.stem) for p in sorted(WORKFLOWS.glob("*.json"))
             if (WORKFLOWS / "api" / p.name).is_file()]
    if pairs:
        return pairs
    return [pytest.param(None, None, id="no-example-workflows", marks=pytest.mark.skip(
        reason="workflows/ has no <name>.json + workflows/api/<name>.json pairs yet (the example workflows are "
               "added by another change); this test converts each UI file and compares it with its API export"))]


@pytest.mark.parametrize(("ui_path", "api_path"), _workflow_pairs())
def test_example_workflow_converts_like_its_api_export(comfy_server: harness.ComfyServer, ui_path: Path,
                                                       api_path: Path) -> None:
    info = comfy_server.object_info()
    converted = load_workflow(ui_path, info).prompt
    exported = load_workflow(api_path).prompt
    assert sorted(converted) == sorted(exported), "different node sets"
    for node_id, node in exported.items():
        assert converted[node_id]["class_type"] == node["class_type"], node_id
        assert converted[node_id]["inputs"] == node["inputs"], f"node {node_id} ({node['class_type']})"
    assert prompt_key(converted) == prompt_key(exported)
