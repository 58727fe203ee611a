"""One short GPU session for the numbers the CPU cannot give (run by hand on a CUDA machine).

    python benchmarks/gpu_check.py [--sizes 64,128,256] [--repeat 10]

Prints, in this order, each part guarded so one failure does not hide the rest:
  1. which SDPA kernel window attention gets (the released head_dim 30 is padded to 32 on CUDA so a
     fused kernel can take it; this checks the memory-efficient kernel accepts our biases);
  2. speed, bf16 and fp16 vs the straightforward baseline, and x2 at 128^2 in ms (the < 10 ms goal);
  3. peak GPU memory of a x4 upscale to 4096 px, one-shot and bounded (goal <= 4 GB);
  4. drift of bf16/fp16 against the official fp32 outputs on the conformance models.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def kernel_check() -> None:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from lua_core.archs.lua import window_sdpa

    q, k, v = (torch.randn(16, 12, 256, 30, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    bias = torch.randn(1, 12, 256, 256, device="cuda", dtype=torch.bfloat16)
    ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=bias.float())
    for backend in (SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.MATH):
        try:
            with sdpa_kernel([backend]):
                out = window_sdpa(q, k, v, bias, 30 ** -0.5)
            print(f"  {backend.name}: ok, max|diff| vs fp32 {(out.float() - ref).abs().max().item():.2e}")
        except RuntimeError as e:
            print(f"  {backend.name}: refused ({str(e).splitlines()[0][:120]})")


def run(args: list[str]) -> None:
    cmd = [sys.executable, str(ROOT / "benchmarks" / "lua_speed.py"), *args]
    print("$", " ".join(cmd[1:]), flush=True)
    subprocess.run(cmd, check=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="64,128,256")
    ap.add_argument("--repeat", default="10")
    a = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("no CUDA device: this script is for a GPU machine")
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}", flush=True)
    print("== 1. SDPA kernels for window attention (bf16, padded head_dim)")
    try:
        kernel_check()
    except Exception:
        traceback.print_exc()
    print("== 2. speed", flush=True)
    for dtype in ("bf16", "fp16"):
        run(["speed", "--device", "cuda", "--dtype", dtype, "--sizes", a.sizes, "--repeat", a.repeat])
    print("== 3. memory", flush=True)
    run(["memory", "--device", "cuda", "--budgets", "4,2,1"])
    print("== 4. drift", flush=True)
    run(["drift", "--device", "cuda"])


if __name__ == "__main__":
    main()
