"""A farm run to look at (by hand): three ComfyUI servers, one SIGKILLed mid-batch and restarted.

    python benchmarks/batch_farm_demo.py [--jobs 36] [--sleep 2] [--log docs/measurements/X.log]

Why this exists: docs/batch.md shows what ``python -m lua_core batch`` prints when a server of the farm
dies and comes back; this script produces that transcript with the test harness (CPU servers on ports
8188-8190, the test node pack and test VAEs): it starts the client on all three servers, kills the
second one once four jobs are done, restarts it at once (ComfyUI then takes its start-up time to
answer) and prints the client's stderr. ``--log PATH`` writes the same, with the machine, to PATH.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from batch_farm import Tee, machine, server_bound  # noqa: E402

from tests.comfyui import harness, make_test_models  # noqa: E402


def demo_server(base: Path, port: int) -> harness.ComfyServer:
    """A CPU ComfyUI server on ``port`` with the test node pack and the small test VAEs (one torch thread)."""
    vaes = make_test_models.standard_test_vaes(ROOT / "tests" / "_artifacts" / "models", full=False)
    return harness.ComfyServer(base / f"server{port}", port=port, model_files={"vae": vaes},
                               env={"OMP_NUM_THREADS": "1"},
                               custom_nodes={harness.TEST_PACK_INSTALL_NAME: harness.TEST_PACK_DIR})


def header(out: Tee, title: str, script: str) -> None:
    """The log's first lines: what ran, when, and on what (the load says how noisy the times are)."""
    out(f"# {title}")
    out(f"# command: python benchmarks/{script} {' '.join(sys.argv[1:])}")
    out(f"# date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}")
    out(f"# machine: {machine()}; load average at start {os.getloadavg()[0]:.1f} (other work shares it)")


def client_env() -> dict[str, str]:
    """The client's environment: this repository importable, no ``$COMFYUI_URL`` (``--server``
    or the default, http://127.0.0.1:8188, decides)."""
    return {**{k: v for k, v in os.environ.items() if k != "COMFYUI_URL"}, "PYTHONPATH": str(ROOT)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=36, help="jobs in the sweep (36)")
    ap.add_argument("--sleep", type=float, default=2.0, help="seconds each job waits on its server (2)")
    ap.add_argument("--move-after", type=float, default=10.0, help="the client's --move-after (10)")
    ap.add_argument("--log", metavar="PATH", help="also write the output to PATH")
    args = ap.parse_args()
    out = Tee(args.log)
    base = Path(tempfile.mkdtemp(prefix="batch_farm_demo_"))
    servers = [demo_server(base, port) for port in (8188, 8189, 8190)]
    try:
        header(out, "batch farm demo: 3 ComfyUI servers, the second SIGKILLed after 4 jobs and restarted at once",
               "batch_farm_demo.py")
        for server in servers:
            server.start()
        work = base / "work"
        work.mkdir()
        (work / "workflow.json").write_text(json.dumps(server_bound(args.sleep), indent=1))
        widths = ",".join(str(64 + 8 * i) for i in range(args.jobs))
        argv = ["python", "-m", "lua_core", "batch", "workflow.json"]
        for server in servers:
            argv += ["--server", server.url]
        argv += ["--set", f"Latent.width={widths}", "--move-after", f"{args.move_after:g}", "--out", "renders",
                 "--no-progress"]
        out(f"$ {' '.join(argv[:5])} --server ... --set 'Latent.width=64,72,...' --move-after "
            f"{args.move_after:g} --out renders --no-progress")
        log = base / "client.log"
        with open(log, "w") as err:
            client = subprocess.Popen([sys.executable, *argv[1:]], cwd=work, stderr=err, stdout=subprocess.DEVNULL,
                                      env=client_env())
        manifest = work / "renders" / "manifest.jsonl"
        t0 = time.monotonic()
        while not manifest.exists() or len(manifest.read_text().splitlines()) < 4:
            if client.poll() is not None or time.monotonic() - t0 > 600:
                raise SystemExit(f"the client ended or stalled before 4 jobs:\n{log.read_text()}")
            time.sleep(0.1)
        servers[1].kill()
        killed = time.monotonic() - t0
        servers[1].restart()
        back = time.monotonic() - t0
        code = client.wait(1800)
        out(log.read_text().rstrip())
        out(f"# exit status {code}; server 8189 killed {killed:.0f}s after the client started and answering again "
            f"at {back:.0f}s (ComfyUI's start-up on this machine)")
    finally:
        for server in servers:
            server.stop()
        out.close()


if __name__ == "__main__":
    main()
