"""The single-server transcripts of docs/batch.md, from a real run (by hand).

    python benchmarks/batch_demo.py [--log docs/measurements/X.log]

Why this exists: docs/batch.md quotes what ``python -m lua_core batch`` prints on one server (a sweep, the
same command again, ``--dry-run``, a job the server rejects, one that fails while running, a server
SIGKILLed mid-batch), and issue 18 wants every quoted output to come from a committed log. This script
starts one CPU ComfyUI test server on port 8188 (the client's default; the test node pack and test VAEs, as
batch_farm_demo.py), copies ``tests/data/batch/ui_features.json`` to ``workflow.json`` in a fresh folder and
runs the real client there, as a user types it (``--dry-run`` before and after the sweep), printing each
command and what it printed (stderr and stdout, in order), the output tree and a manifest row. For the crash
it SIGKILLs the server ``--kill-delay`` seconds after the first job's row is in the manifest and restarts it
at once (ComfyUI then takes its start-up time to answer). The delay puts the kill in the middle of job 2
rather than in the client's ``POST /prompt`` of job 3, which follows the first row at once: a send cut that
way is looked up for ``--timeout`` + 5 s before it is sent again (docs/batch.md), another transcript.
``--log PATH`` writes the same, with the machine, to PATH.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from batch_farm import Tee  # noqa: E402
from batch_farm_demo import client_env, demo_server, header  # noqa: E402

from tests.comfyui import harness  # noqa: E402

SWEEP = ["--set", "KSampler.seed=1..3", "--set", "LUA Test: Empty Latent For Model.width=64,96"]
INVALID = ["--set", "Load VAE.vae_name=lua_test_taesd_4ch.safetensors,missing.safetensors", "--out", "errors"]
# a 4-channel latent into a 16-channel decoder: valid, fails while running
FAILING = ["--set", "Load VAE.vae_name=lua_test_taesd_16ch.safetensors", "--out", "failing"]
CRASH = ["--set", "KSampler.seed=1..4", "--set", "Sleep.seconds=1.5", "--out", "crash"]


def command(args: list[str]) -> list[str]:
    return ["python", "-m", "lua_core", "batch", "workflow.json", *args, "--no-progress"]


def start(out: Tee, work: Path, args: list[str]) -> subprocess.Popen:
    """Print the command as typed and start it in ``work`` (stderr and stdout in one pipe, as a terminal shows)."""
    argv = command(args)
    out(f"$ {shlex.join(argv)}")
    return subprocess.Popen([sys.executable, *argv[1:]], cwd=work, env=client_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def finish(out: Tee, proc: subprocess.Popen) -> None:
    text, _ = proc.communicate(timeout=600)
    out(text.rstrip())
    out(f"# exit status {proc.returncode}")
    out()


def tree(out: Tee, folder: Path) -> None:
    """``folder``'s files as the docs show them: one line per entry, a folder holding one file as ``dir/file``."""
    out(f"{folder.name}/")
    entries = sorted(folder.iterdir())
    for i, entry in enumerate(entries):
        name = entry.name
        inside = sorted(entry.iterdir()) if entry.is_dir() else []
        if len(inside) == 1 and inside[0].is_file():
            name += f"/{inside[0].name}"
        elif entry.is_dir():
            name += "/ (" + ", ".join(p.name for p in inside) + ")"
        out(f"{'└──' if i == len(entries) - 1 else '├──'} {name}")
    out()


def crash(out: Tee, work: Path, server: harness.ComfyServer, delay: float) -> None:
    proc = start(out, work, CRASH)
    manifest = work / "crash" / "manifest.jsonl"
    t0 = time.monotonic()
    while not manifest.exists() or not manifest.read_text().strip():
        if proc.poll() is not None or time.monotonic() - t0 > 600:
            raise SystemExit(f"the client ended or stalled before its first job:\n{proc.communicate()[0]}")
        time.sleep(0.05)
    time.sleep(delay)
    server.kill()
    killed = time.monotonic() - t0
    server.restart()
    back = time.monotonic() - t0
    finish(out, proc)
    out(f"# server SIGKILLed {killed:.1f}s after the client started ({delay:g}s after the first row was in the "
        f"manifest), restarted at once, answering again at {back:.1f}s (ComfyUI's start-up on this machine)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kill-delay", type=float, default=0.5,
                    help="seconds between the crash sweep's first manifest row and the SIGKILL (0.5)")
    ap.add_argument("--log", metavar="PATH", help="also write the output to PATH")
    args = ap.parse_args()
    out = Tee(args.log)
    base = Path(tempfile.mkdtemp(prefix="batch_demo_"))
    server = demo_server(base, 8188)
    try:
        header(out, "batch demo: one ComfyUI server (CPU, test pack and VAEs) on 8188, the client's default",
               "batch_demo.py")
        server.start()
        work = base / "work"
        work.mkdir()
        shutil.copy(ROOT / "tests" / "data" / "batch" / "ui_features.json", work / "workflow.json")
        out("# in a folder holding tests/data/batch/ui_features.json as workflow.json:")
        out()
        quick = ["--server", server.url, *SWEEP, "--out", "renders"]
        finish(out, start(out, work, [*quick, "--dry-run"]))
        finish(out, start(out, work, quick))
        tree(out, work / "renders")
        out("# the first manifest row:")
        out((work / "renders" / "manifest.jsonl").read_text().splitlines()[0])
        out()
        finish(out, start(out, work, quick))
        finish(out, start(out, work, [*quick, "--dry-run"]))
        finish(out, start(out, work, INVALID))
        finish(out, start(out, work, FAILING))
        crash(out, work, server, args.kill_delay)
    finally:
        server.stop()
        out.close()


if __name__ == "__main__":
    main()
