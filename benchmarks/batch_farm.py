"""Throughput of one batch on N ComfyUI servers against the same batch on one of them, in one run (by hand).

    python benchmarks/batch_farm.py [--servers 3] [--jobs 24] [--repeat 2] [--log docs/measurements/X.log]

Why this exists: ``python -m lua_core batch --server A --server B ...`` promises that a sweep shared by a
farm runs as fast as its servers allow. This script starts N real ComfyUI servers on this machine (the
test harness: CPU, the test node pack and test VAEs), warms each up, then runs the same sweep on the
first server alone and on all N, alternately ``--repeat`` times (a shared host drifts), and prints jobs
per second and the ratio. Two workloads:

* ``server-bound``: EmptyLatentImage 64x64 -> LUATest_Sleep ``--sleep`` s -> TAESD decode -> SaveImage.
  The server spends the job waiting, as a ComfyUI server waits on its own GPU: the ratio is what the
  dispatcher gets out of N independent devices (ideal: N).
* ``cpu-bound``: the same at 256x256 without the wait: the decode runs on the CPU. On one machine the N
  servers share its cores, so the ratio is bounded by the cores the single server leaves idle, not by
  N. This says nothing about N GPUs.

Each server runs with ``OMP_NUM_THREADS=--server-threads`` (1): torch's idle worker threads otherwise
spin, and N servers on few cores then mostly steal CPU from each other. With 1 thread the single server
uses one core of the machine: on a 2-core machine the cpu-bound ratio can reach 2, never N.

Needs ComfyUI (``COMFYUI_DIR`` or ``.comfyui/ComfyUI``) and torch (to write the test VAEs), like the
tests. With ``--log PATH`` everything printed is also written to PATH, with the machine in the header.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lua_core.batch import ComfyClient, run_batch  # noqa: E402
from tests.comfyui import harness, make_test_models  # noqa: E402


def server_bound(seconds: float) -> dict:
    return {"1": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1},
                  "_meta": {"title": "Latent"}},
            "2": {"class_type": "LUATest_Sleep", "inputs": {"samples": ["1", 0], "seconds": seconds}},
            "3": {"class_type": "VAELoader", "inputs": {"vae_name": make_test_models.TAESD_4CH}},
            "4": {"class_type": "VAEDecode", "inputs": {"samples": ["2", 0], "vae": ["3", 0]}},
            "5": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "bench"}}}


def cpu_bound() -> dict:
    """A 256x256 TAESD decode per job (LUATest_Sleep 0 s is never cached, so neither is the decode after it)."""
    prompt = server_bound(0.0)
    prompt["1"]["inputs"].update(width=256, height=256)
    return prompt


class Tee:
    """print() to stdout and, with ``--log``, to a file (flushed at every line)."""

    def __init__(self, path: str | None):
        self.file = open(path, "w", encoding="utf-8") if path else None  # closed in close()

    def __call__(self, text: str = "") -> None:
        print(text, flush=True)
        if self.file is not None:
            self.file.write(text + "\n")
            self.file.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


def machine() -> str:
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        model = next((ln.split(":", 1)[1].strip() for ln in lscpu.splitlines() if ln.startswith("Model name")), "?")
    except (OSError, subprocess.SubprocessError):
        model = platform.processor() or "?"
    return f"{model} (lscpu model name), {os.cpu_count()} cores (os.cpu_count)"


def sweep(workload: Callable[[], dict], jobs: int, offset: int) -> tuple[dict, list[str]]:
    """``jobs`` jobs doing the same work: only the SaveImage prefix differs (a distinct prompt, so a distinct
    job, each time; ``offset`` keeps runs apart)."""
    return workload(), [f"5.filename_prefix={','.join(f'bench_{offset + i}' for i in range(jobs))}"]


def timed_run(clients: list[ComfyClient], prompt: dict, sets: list[str], out: Path) -> tuple[float, int]:
    t0 = time.perf_counter()
    result = run_batch(prompt, client=clients, sets=sets, out_dir=out, progress=False, quiet=True, in_flight=2)
    wall = time.perf_counter() - t0
    if not result.ok:
        raise SystemExit(f"benchmark batch failed: {[(r['status'], r.get('error')) for r in result.rows]}")
    return wall, result.succeeded


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--servers", type=int, default=3, help="servers in the farm (3)")
    ap.add_argument("--jobs", type=int, default=24, help="jobs per sweep (24)")
    ap.add_argument("--repeat", type=int, default=2, help="1-server / N-server runs, alternately (2)")
    ap.add_argument("--sleep", type=float, default=0.5, help="seconds each server-bound job waits (0.5)")
    ap.add_argument("--workload", choices=("server-bound", "cpu-bound", "both"), default="both")
    ap.add_argument("--server-threads", type=int, default=1, help="OMP_NUM_THREADS of each server (1)")
    ap.add_argument("--log", metavar="PATH", help="also write the output to PATH")
    args = ap.parse_args()
    if args.servers < 2 or args.jobs < 1 or args.repeat < 1:
        ap.error("--servers must be at least 2, --jobs and --repeat at least 1")
    out = Tee(args.log)
    base = Path(tempfile.mkdtemp(prefix="batch_farm_bench_"))
    vaes = make_test_models.standard_test_vaes(ROOT / "tests" / "_artifacts" / "models", full=False)
    threads = {"OMP_NUM_THREADS": str(args.server_threads)}
    servers = [harness.ComfyServer(base / f"server{i}", model_files={"vae": vaes}, env=threads,
                                   custom_nodes={harness.TEST_PACK_INSTALL_NAME: harness.TEST_PACK_DIR})
               for i in range(args.servers)]
    try:
        out("# batch farm benchmark: the same sweep on 1 ComfyUI server and on N, in one run")
        out(f"# command: python benchmarks/batch_farm.py {' '.join(sys.argv[1:])}")
        out(f"# date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}")
        out(f"# machine: {machine()}; load average at start {os.getloadavg()[0]:.1f} (other work shares it)")
        out(f"# python {platform.python_version()}; ComfyUI at {harness.comfyui_dir()} (--cpu)")
        t0 = time.perf_counter()
        for server in servers:
            server.start()
        out(f"# {args.servers} servers started in {time.perf_counter() - t0:.0f}s; "
            f"OMP_NUM_THREADS={args.server_threads} each; in flight per server: 2")
        clients = [ComfyClient(s.url) for s in servers]
        workloads = {"server-bound": lambda: server_bound(args.sleep), "cpu-bound": cpu_bound}
        if args.workload != "both":
            workloads = {args.workload: workloads[args.workload]}
        for name, workload in workloads.items():
            for i, client in enumerate(clients):  # warm-up: load the VAE on every server
                prompt, sets = sweep(workload, 1, 10_000 + i)
                timed_run([client], prompt, sets, base / f"warm_{name}_{i}")
        out()
        out(f"{'workload':<13} {'servers':>7} {'jobs':>5} {'run':>4} {'wall s':>8} {'jobs/s':>7} {'load':>5}")
        summary = []
        for name, workload in workloads.items():
            totals = {1: [0.0, 0], args.servers: [0.0, 0]}
            for rep in range(args.repeat):
                for count in (1, args.servers):
                    prompt, sets = sweep(workload, args.jobs, 1000 * (rep + 1) + 100 * count)
                    wall, done = timed_run(clients[:count], prompt, sets, base / f"{name}_{count}_{rep}")
                    totals[count][0] += wall
                    totals[count][1] += done
                    out(f"{name:<13} {count:>7} {done:>5} {rep + 1:>4} {wall:8.2f} {done / wall:7.2f} "
                        f"{os.getloadavg()[0]:5.1f}")
            one = totals[1][1] / totals[1][0]
            many = totals[args.servers][1] / totals[args.servers][0]
            summary.append(f"{name}: {args.servers} servers {many:.2f} jobs/s, 1 server {one:.2f} jobs/s: "
                           f"ratio {many / one:.2f}x (all runs of each)")
        out()
        for line in summary:
            out(line)
        out("note: the servers share this machine's cores. server-bound jobs mostly wait (as a server waits on its "
            "GPU), so N servers overlap the waits; cpu-bound jobs compete for the same cores, so N servers on one "
            "machine gain at most the cores one server leaves idle. On N GPUs each server has its own device: "
            "the server-bound ratio is the one to expect there, less the part of a job the client and the "
            "shared CPU serialise.")
    finally:
        for server in servers:
            server.stop()
        out.close()


if __name__ == "__main__":
    main()
