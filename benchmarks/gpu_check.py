"""One short GPU session for the numbers the CPU cannot give (run by hand on a CUDA machine).

    python benchmarks/gpu_check.py [--sizes 64,128,256] [--repeat 10]
    python benchmarks/gpu_check.py --device cpu --sizes 16 --repeat 1   # a dry run of the script itself

Prints, in this order, each part guarded so one failure does not hide the rest:
  1. which SDPA kernels take window attention as lua_core calls it (head_dim padded to 32 inside
     the weights, q/k/v strided views of one GEMM output, a float bias);
  2. the attention variants at 128^2 x2 bf16, timed alternately with the baseline: shift mask in
     the bias (one call per window kind) or split by region, head_dim padded in the weights, per
     call, or not at all; each with its max |diff| to the baseline;
  3. the default forward replayed as a CUDA graph (what launch overhead costs), and the top CUDA
     kernels of one forward (torch.profiler);
  4. speed tables, bf16 at --sizes and fp16 at 128^2, vs the straightforward baseline;
  5. peak GPU memory of a x4 upscale to 4096 px, one-shot and bounded, fp32 and bf16 (goal <= 4 GB);
  6. drift of bf16/fp16/fp32 on the device against the official fp32 outputs (conformance models).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
from runlog import add_log_argument, log_path, logged  # noqa: E402

sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import lua_speed  # noqa: E402

from lua_baseline import baseline_forward  # noqa: E402
from lua_core.archs.lua import attention as attn  # noqa: E402


def section(title: str, fn: Callable[[], None], only: set[str] | None = None) -> None:
    if only is not None and title.split(".")[0] not in only:
        return
    print(f"\n== {title}", flush=True)
    t0 = time.perf_counter()
    try:
        fn()
    except Exception:
        traceback.print_exc()
    print(f"   ({time.perf_counter() - t0:.0f} s)", flush=True)


def kernel_check(device: str) -> None:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    heads, hd, hp, n = 12, 30, 32, 256
    # q, k, v as the model hands them over: strided views of one (tokens, 3 * heads * 32) GEMM output
    qkv = torch.zeros(64 * n, 3, heads, hp, device=device, dtype=torch.bfloat16)
    qkv[..., :hd] = torch.randn(64 * n, 3, heads, hd, device=device, dtype=torch.bfloat16)
    q, k, v = qkv.view(64, n, 3, heads, hp).permute(2, 0, 3, 1, 4).unbind(0)
    bias = torch.randn(1, heads, n, n, device=device, dtype=torch.bfloat16)
    ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=bias.float(), scale=hd ** -0.5)
    for backend in (SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION,
                    SDPBackend.MATH):
        try:
            with sdpa_kernel([backend]):
                out = attn.window_sdpa(q, k, v, bias, hd ** -0.5)
            print(f"  {backend.name}: ok, max|diff| vs fp32 {(out.float() - ref).abs().max().item():.2e}")
        except RuntimeError as e:
            print(f"  {backend.name}: refused ({str(e).splitlines()[0][:100]})")
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        attn.window_sdpa(q, k, v, bias, hd ** -0.5)
        torch.cuda.synchronize()
    names = {e.key for e in prof.key_averages()}
    print("  default call runs:", "; ".join(sorted(n[:70] for n in names)))


def _unpadded(self) -> attn.AttentionWeights:
    """inference_weights without the padding (window_sdpa then pads q, k, v per call)."""
    w, c = self.qkv.weight, self.qkv.weight.shape[1]
    bias = torch.zeros(3 * c, dtype=w.dtype, device=w.device)
    bias[:c] = self.qkv.bias[:c]
    return attn.AttentionWeights(w, bias, self.proj.weight, self.proj_bias(), self.head_dim)


@contextlib.contextmanager
def variant(model, masked: bool, pad: str):
    """Temporarily switch the attention variant (pad: 'weights', 'per-call' or 'none')."""
    saved = attn.MASK_IN_BIAS_ON, attn.PAD_HEAD_DIM_ON, attn.WindowAttention.inference_weights
    kind = (next(model.parameters()).device.type,)
    attn.MASK_IN_BIAS_ON = kind if masked else ()
    attn.PAD_HEAD_DIM_ON = () if pad == "none" else kind
    if pad == "per-call":
        attn.WindowAttention.inference_weights = _unpadded
    model.clear_caches()
    try:
        yield
    finally:
        attn.MASK_IN_BIAS_ON, attn.PAD_HEAD_DIM_ON, attn.WindowAttention.inference_weights = saved
        model.clear_caches()


@contextlib.contextmanager
def forced_sdpa(name: str | None):
    """Run lua_core's window attention (only it: the baseline calls SDPA itself) on one SDPA backend."""
    if name is None:
        yield
        return
    from torch.nn.attention import SDPBackend, sdpa_kernel
    plain, backend = attn.window_sdpa, getattr(SDPBackend, name)

    def forced(*args, **kwargs):
        with sdpa_kernel([backend]):
            return plain(*args, **kwargs)

    attn.window_sdpa = forced
    try:
        yield
    finally:
        attn.window_sdpa = plain


#: (label, mask in bias, head-dim padding, forced SDPA backend or None for PyTorch's choice)
VARIANTS = [
    ("default", True, "weights", None),
    ("SDPA forced: efficient", True, "weights", "EFFICIENT_ATTENTION"),
    ("SDPA forced: cuDNN", True, "weights", "CUDNN_ATTENTION"),
    ("mask-in-bias, pad per-call", True, "per-call", None),
    ("mask-in-bias, pad none", True, "none", None),
    ("regions, pad weights", False, "weights", None),
    ("regions, pad per-call", False, "per-call", None),
    ("regions, pad none", False, "none", None),
]


DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def variants(device: str, size: int, repeat: int, which: str, dtype: str = "bf16") -> None:
    model = lua_speed.released_model(device, DTYPES[dtype])
    x = torch.randn(1, 16, size, size, device=device, dtype=DTYPES[dtype])
    chosen = [v for i, v in enumerate(VARIANTS) if which == "all" or str(i) in which.split("+")]
    with torch.inference_mode():
        ref = baseline_forward(model, x, "x2").float()
        print(f"  {size}^2 x2 {dtype}              {'baseline ms':>11} {'ours ms':>8} {'ratio':>6} {'max|diff|':>9}")
        for label, masked, pad, backend in chosen:
            if backend is not None and not device.startswith("cuda"):
                continue
            with variant(model, masked, pad), forced_sdpa(backend):
                diff = (model(x, "x2").float() - ref).abs().max().item()
                (tb, _), (to, _) = lua_speed.timed_pair(lambda: baseline_forward(model, x, "x2"),
                                                        lambda: model(x, "x2"), device, repeat)
            print(f"  {label:<30} {tb * 1e3:>8.2f} {to * 1e3:>8.2f} {to / tb:>6.3f} {diff:>9.2e}", flush=True)


def graph_and_profile(device: str, sizes: list[int], size: int, repeat: int) -> None:
    model = lua_speed.released_model(device, torch.bfloat16)
    for side, head in itertools.product(sizes, ("x2", "x4")):
        x = torch.randn(1, 16, side, side, device=device, dtype=torch.bfloat16)
        with torch.inference_mode():
            eager = lua_speed.timed(lambda: model(x, head), device, repeat)
            ref = model(x, head)
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(2):
                    model(x, head)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                out = model(x, head)
            replay = lua_speed.timed(graph.replay, device, repeat)
            same = (out.float() - ref.float()).abs().max().item()
        print(f"  {side}^2 {head} bf16: eager {eager * 1e3:.2f} ms, CUDA graph replay {replay * 1e3:.2f} ms "
              f"(max|diff| {same:.1e})", flush=True)
    x = torch.randn(1, 16, size, size, device=device, dtype=torch.bfloat16)
    with torch.inference_mode(), torch.profiler.profile(
            activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]) as prof:
        model(x, "x2")
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=18, max_name_column_width=60))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--sizes", default="64,128,256")
    ap.add_argument("--variant-size", type=int, default=128)
    ap.add_argument("--variant-dtype", choices=list(DTYPES), default="bf16",
                    help="dtype of section 2 (fp32 for a CPU dry run: bf16 on a CPU without bf16 units is very slow)")
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--sections", default="1,2,3,4a,4b,5a,5b,6", help="which parts to run")
    ap.add_argument("--variants", default="all", help="indices into VARIANTS joined by '+', or 'all'")
    ap.add_argument("--sdpa", default=None, help="force lua_core's attention onto one SDPA backend in 3-6")
    add_log_argument(ap)
    a = ap.parse_args()
    only = set(a.sections.split(","))
    cuda = a.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        sys.exit("no CUDA device: this script is for a GPU machine (or pass --device cpu for a dry run)")
    name = torch.cuda.get_device_name() if cuda else "cpu"
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    if hasattr(matmul, "fp32_precision"):  # torch >= 2.9; its legacy flags may refuse to be read
        tf32 = f"matmul.fp32_precision={matmul.fp32_precision}, cudnn.conv.fp32_precision={cudnn.conv.fp32_precision}"
    else:
        tf32 = f"cudnn.allow_tf32={cudnn.allow_tf32}, matmul.allow_tf32={matmul.allow_tf32}"
    print(f"torch {torch.__version__}, {name}; {tf32}", flush=True)
    sizes = [int(s) for s in a.sizes.split(",")]
    if cuda:
        section("1. SDPA kernels for window attention (bf16, head_dim padded in the weights)",
                lambda: kernel_check(a.device), only)
    section("2. attention variants",
            lambda: variants(a.device, a.variant_size, a.repeat, a.variants, a.variant_dtype), only)
    if a.sdpa:
        print(f"lua_core's window attention forced onto {a.sdpa} from here on")
    stack = contextlib.ExitStack()
    stack.enter_context(forced_sdpa(a.sdpa))
    if cuda:
        section("3. CUDA graph replay and kernel profile",
                lambda: graph_and_profile(a.device, sizes, a.variant_size, a.repeat), only)

    def args(**kw) -> argparse.Namespace:
        base = dict(device=a.device, dtype="bf16", sizes=sizes, repeat=a.repeat, memory_size=128,
                    budgets=[2.0, 1.0], threads=None)
        return argparse.Namespace(**{**base, **kw})

    section("4a. speed, bf16", lambda: lua_speed.bench_speed(args()), only)
    section("4b. speed, fp16", lambda: lua_speed.bench_speed(args(dtype="fp16", sizes=[a.variant_size])), only)
    section("5a. memory, fp32",
            lambda: lua_speed.bench_memory(args(dtype="fp32", memory_size=128 if cuda else 16)), only)
    section("5b. memory, bf16", lambda: lua_speed.bench_memory(args(memory_size=128 if cuda else 16)), only)
    section("6. drift against the official fp32 outputs", lambda: lua_speed.bench_drift(args()), only)


if __name__ == "__main__":
    with logged(log_path(sys.argv)):
        main()
