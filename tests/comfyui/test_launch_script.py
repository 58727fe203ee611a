"""README command #1 (``scripts/launch_comfyui.sh``) really starts ComfyUI with this pack's nodes.

Runs the newcomer path (no COMFYUI_DIR: the local CPU ComfyUI in .comfyui/, already set up by the
test command) on a free port and stops the server by its PID.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request

import pytest

from conftest import ROOT

pytestmark = pytest.mark.comfyui_server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_launch_script_serves_the_pack(tmp_path):
    if os.environ.get("COMFYUI_DIR"):
        pytest.skip("COMFYUI_DIR is set: this test checks the local-ComfyUI path of the script")
    port = _free_port()
    log = open(tmp_path / "launch.log", "w")
    env = dict(os.environ, PORT=str(port))
    proc = subprocess.Popen([str(ROOT / "scripts" / "launch_comfyui.sh"), "--disable-auto-launch",
                             "--disable-api-nodes"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        deadline = time.time() + 180
        info = None
        while time.time() < deadline:
            assert proc.poll() is None, (tmp_path / "launch.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/object_info/LUA_LoadModel", timeout=5) as r:
                    info = json.loads(r.read())
                break
            except OSError:
                time.sleep(0.5)
        assert info and "LUA_LoadModel" in info, (tmp_path / "launch.log").read_text()[-3000:]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/object_info/LUA_LatentUpscale", timeout=5) as r:
            assert "LUA_LatentUpscale" in json.loads(r.read())
        assert "IMPORT FAILED" not in (tmp_path / "launch.log").read_text()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the script execs main.py: its PID is the server's
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
