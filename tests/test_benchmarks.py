"""The hand-run benchmark scripts still run on the current code (tiny sizes, one repeat; no timing
is checked: the numbers only mean something at full size on an idle machine).

Why: they reach into lua_core's internals (flags, layouts, workspaces, plans) to time alternatives,
and a rename would otherwise only show when someone next needs the numbers. Where a script reports
how far an output is from the reference, that difference is checked too.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(script: str, *args: str) -> str:
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], capture_output=True,
                          text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_speed_benchmark_runs_and_matches_the_baseline() -> None:
    out = run("lua_speed.py", "speed", "--device", "cpu", "--sizes", "16", "--repeat", "1")
    rows = [line.split() for line in out.splitlines() if re.match(r"\s+16\^2\s+x[24]\s", line)]
    assert [r[1] for r in rows] == ["x2", "x4"], out
    for r in rows:
        assert float(r[-1]) < 1e-4, r  # max|diff| of ours against the baseline forward


def test_cpu_alternatives_runs_every_section() -> None:
    out = run("cpu_alternatives.py", "--size", "16", "--repeat", "1")
    for title in ("plans: whole forward", "epilogue: whole forward", "epilogue: fc1 alone", "attention: one unshifted",
                  "threads: whole forward"):
        assert f"-- {title}" in out, out
    diffs = [float(d) for d in re.findall(r"max diff ([0-9.e+-]+)", out)]
    assert len(diffs) == 5 and max(diffs) < 1e-5, out  # four plans and the epilogue switch: same outputs


def test_gpu_check_dry_run_on_cpu() -> None:
    # section 2 in fp32: on a CPU without bf16 units (AMD EPYC here) its twelve bf16 forwards of the
    # released-size model took 12 minutes; the point is that every variant still runs and agrees
    out = run("gpu_check.py", "--device", "cpu", "--sizes", "16", "--variant-size", "16", "--repeat", "1",
              "--sections", "2,6", "--variant-dtype", "fp32")
    variants = [line.split() for line in out.splitlines() if line.startswith("  ") and ("regions" in line or
                                                                                      "mask-in-bias" in line
                                                                                      or "default" in line)]
    assert len(variants) == 6, out
    assert all(float(v[-1]) < 1e-4 for v in variants), out  # fp32 against the fp32 baseline
    # section 6: bf16, fp16 and fp32 on both conformance models; fp32 is the exact path (measured 1.1e-5)
    assert out.count("max |diff| vs fp32 official") == 6, out
    fp32 = [float(d) for d in re.findall(r"fp32 \(cpu\): max \|diff\| vs fp32 official ([0-9.e+-]+)", out)]
    assert len(fp32) == 2 and max(fp32) < 1e-4, out


def test_cpu_bf16_runs_every_section() -> None:
    # every section but profile (slow under the profiler) and compile (needs a C++ compiler, minutes)
    out = run("cpu_bf16.py", "--small", "--sizes", "16", "--repeat", "1", "--sections",
              "gemm,forward,floor,attention,epilogue,onednn,peers")
    for title in ("gemm: 5 calls", "forward: 16^2 x2, small", "forward: 16^2 x4, small", "floor: 16^2 x2, bf16",
                  "attention: one unshifted", "epilogue: whole", "onednn: whole", "peers: city96",
                  "peers: NNLatentUpscale", "peers: LSSGen", "peers: SesquiLSR"):
        assert f"-- {title}" in out, out
    # the floor counts the logits the SDPA calls exponentiate. At 16^2 (2 x 2 windows of 8 x 8, 6 heads): the
    # unshifted block 4 x 64^2 per head; the shifted one splits its windows by mask region (shift 4): one
    # whole, two in 2 halves, one in 4 quarters = 64^2 + 2 x 2 x 32^2 + 4 x 16^2 per head
    logits = int(re.search(r"logits exponentiated ([\d,]+);", out)[1].replace(",", ""))
    assert logits == 6 * (4 * 64 ** 2) + 6 * (64 ** 2 + 2 * 2 * 32 ** 2 + 4 * 16 ** 2), out
    assert "bf16 / fp32 GEMM rate" in out and "bf16 matmul bound" in out, out
    # the bf16 LUA forward against the fp32 one (random weights N(0, 0.02)): measured 4e-3
    drifts = [float(d) for d in re.findall(r"bf16 vs fp32 output .*max \|diff\| ([0-9.e+-]+)", out)]
    assert len(drifts) == 2 and max(drifts) < 0.02, out
    assert float(re.search(r"epilogue: whole bf16 forward, .*max diff ([0-9.e+-]+)", out)[1]) < 0.02, out


def test_size_table_runs_both_dtypes() -> None:
    out = run("lua_speed.py", "sizes", "--size-list", "16", "--repeat", "1")
    rows = [line.split() for line in out.splitlines() if re.match(r"\s+16\^2\s", line)]
    assert [(r[3], r[4]) for r in rows] == [("x2", "fp32"), ("x4", "fp32"), ("x2", "bf16"), ("x4", "bf16")], out
