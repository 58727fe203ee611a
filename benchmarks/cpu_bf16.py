"""LUA in bf16 on a CPU with bf16 matrix units (AMX, AVX-512 BF16), measured against fp32 in one run (by hand).

    OMP_WAIT_POLICY=PASSIVE python benchmarks/cpu_bf16.py [--sizes 32,64] [--repeat 5] [--log PATH]

Issue #20: what a bf16 forward costs next to the fp32 one and the fp32 baseline (``lua_baseline``), and
where its time goes. Sections (``--sections``):

* gemm:      GEMM rate, fp32 and bf16, at the four linear layers' shapes of a 64^2 latent (4096 tokens);
* forward:   baseline fp32, ours fp32, ours bf16 at each size (x2 and x4), called in turn, median of
             ``--repeat``; the bf16 matmul bound (the forward's multiply-adds at the bf16 GEMM rate) and
             the bf16 output's distance from the fp32 one (random weights);
* profile:   torch.profiler's self CPU time per op of one x2 forward at the largest size, bf16 and fp32;
* attention: one unshifted block's window attention in bf16: the fused SDPA kernel, SDPA in fp32
             (inputs cast), and explicit batched GEMMs with an fp32 softmax, per window;
* epilogue:  the bf16 forward on torch's mm with separate bias adds and with the qkv/fc1 biases added
             by addmm (``attention.BIAS_IN_GEMM_ON`` with "cpu:bfloat16"), oneDNN's fused linears off;
* onednn:    the bf16 forward with the qkv and fc1 linears as oneDNN's fused linear (query bias, fc1 bias
             and GELU in the GEMM epilogue; the default on CPU bf16, ``attention.ONEDNN_LINEAR_ON``)
             and with torch's mm plus separate passes;
* floor:     why the x2 target of 0.15x the baseline is out of reach with torch's CPU kernels: the bf16
             forward at the largest size next to the same forward with window attention replaced by a
             free stand-in (what everything but attention costs), the logits its softmax exponentiates
             (counted from its SDPA calls), torch's vectorised exp rate on cache-resident data, and
             from them what attention would have to cost to meet the target against the least it
             can cost (one exp per logit plus its two matmuls at the GEMM rate);
* compile:   (not in the default sections: minutes of compiling) ``torch.compile`` (inductor, frozen
             weights; default and max-autotune, whose GEMM templates use AMX) of a plain Swin block in bf16
             (``cpu_alternatives.PlainBlock``) against it in eager mode and against the model's own blocks;
* peers:     city96, NNLatentUpscale, LSSGen and SesquiLSR (released shapes, random weights) in bf16
             against their fp32 forward (``lua_core.upscale_latent``), what ``dtype=auto`` follows
             (``lua_core.precision``).

Every line prints wall seconds and the process's CPU seconds (both threads). On a host shared with
other work, wall time depends on when the OS schedules both threads: run it with
``OMP_WAIT_POLICY=PASSIVE`` (waiting threads sleep instead of spinning) so that CPU time measures the
work done, and compare ratios from one run.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from lua_speed import attention_flops, lua_flops, released_model  # noqa: E402
from runlog import add_log_argument, log_path, logged  # noqa: E402

from lua_baseline import baseline_forward  # noqa: E402
from lua_core.archs.lua import LUA, LUAConfig, Workspace  # noqa: E402
from lua_core.archs.lua import attention as lua_attention  # noqa: E402

#: --small: the LUA sections run this stand-in (2 Swin blocks of width 60) instead of the released config,
#: for the test suite's smoke run (tests/test_benchmarks.py), where the released config in bf16 took
#: minutes on a CPU without AVX-512 (bf16 emulated); its numbers say nothing about the released model
SMALL = LUAConfig(embed_dim=60, depths=(2,), num_heads=(6,), window_size=8, img_size=16, head_num_feat=32)
CONFIG: LUAConfig | None = None  # None: the released config


def lua_model(dtype: torch.dtype) -> LUA:
    """The LUA the sections time: the released config with random weights, or ``SMALL`` under --small."""
    if CONFIG is None:
        return released_model("cpu", dtype)
    torch.manual_seed(0)
    model = LUA(CONFIG).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    return model.to(dtype=dtype)

Timing = tuple[float, float]  # (wall s, CPU s), medians


@contextlib.contextmanager
def swapped(**values: object) -> Iterator[None]:
    """``lua_core.archs.lua.attention``'s switches (``ONEDNN_LINEAR_ON=()``, ``window_sdpa=fn``) set for a block."""
    saved = {name: getattr(lua_attention, name) for name in values}
    for name, value in values.items():
        setattr(lua_attention, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(lua_attention, name, value)


def alternate(fns: dict[str, Callable[[], object]], repeat: int) -> dict[str, Timing]:
    """Median (wall, CPU) seconds of each function, called in turn ``repeat`` times after a warm-up."""
    for fn in fns.values():
        fn()
    wall: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    return {k: (statistics.median(wall[k]), statistics.median(cpu[k])) for k in fns}


def show(title: str, res: dict[str, Timing], ref: str, unit: float = 1e3, suffix: str = "ms") -> None:
    print(f"-- {title}")
    print(f"   {'':<48} {'wall ' + suffix:>10} {'cpu ' + suffix:>10} {'wall x':>7} {'cpu x':>7}")
    for name, (w, c) in res.items():
        print(f"   {name:<48} {w * unit:10.2f} {c * unit:10.2f} {w / res[ref][0]:7.3f} {c / res[ref][1]:7.3f}")


GEMM_SHAPES = {"qkv 4096x360 @ 360x1080": (4096, 360, 1080), "proj 4096x360 @ 360x360": (4096, 360, 360),
               "fc1 4096x360 @ 360x720": (4096, 360, 720), "fc2 4096x720 @ 720x360": (4096, 720, 360)}


def gemm(args: argparse.Namespace) -> dict[torch.dtype, float]:
    """GEMM rate per dtype (total multiply-adds x2 over total median wall time of the four shapes)."""
    fns, flops = {}, {}
    for dtype in (torch.float32, torch.bfloat16):
        for name, (m, k, n) in GEMM_SHAPES.items():
            a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
            out = torch.empty(m, n, dtype=dtype)
            key = f"{str(dtype).removeprefix('torch.')} {name}"
            fns[key] = lambda a=a, b=b, out=out: [torch.mm(a, b, out=out) for _ in range(5)]
            flops[key] = 5 * 2 * m * k * n
    res = alternate(fns, 3 * args.repeat)
    show("gemm: 5 calls of each shape", res, next(iter(res)))
    rates = {}
    for dtype in (torch.float32, torch.bfloat16):
        keys = [k for k in res if k.startswith(str(dtype).removeprefix("torch."))]
        total = sum(flops[k] for k in keys)
        rates[dtype] = total / sum(res[k][0] for k in keys)
        print(f"   GEMM rate {str(dtype).removeprefix('torch.'):>9}: {rates[dtype] / 1e9:7.0f} GFLOP/s wall, "
              f"{total / sum(res[k][1] for k in keys) / 1e9:7.0f} GFLOP/s per CPU second")
    print(f"   bf16 / fp32 GEMM rate: {rates[torch.bfloat16] / rates[torch.float32]:.2f}x")
    return rates


def forward(args: argparse.Namespace, rates: dict[torch.dtype, float]) -> None:
    m32 = lua_model(torch.float32)
    m16 = lua_model(torch.bfloat16)
    cfg = m32.config
    for size in args.sizes:
        x = torch.randn(1, 16, size, size)
        xb = x.bfloat16()
        for head in ("x2", "x4"):
            with torch.inference_mode():
                ref = m32(x, head)
                d = (m16(xb, head).float() - ref).abs()
                res = alternate({"baseline fp32": lambda: baseline_forward(m32, x, head),
                                 "ours fp32": lambda: m32(x, head), "ours bf16": lambda: m16(xb, head)},
                                args.repeat)
            flops = lua_flops(cfg, 1, size, size, head)
            bound = flops / rates[torch.bfloat16]
            attn = attention_flops(cfg, 1, size, size) / rates[torch.bfloat16]
            kind = "released" if CONFIG is None else "small"
            show(f"forward: {size}^2 {head}, {kind} config (s)", res, "baseline fp32", 1, "s")
            w16 = res["ours bf16"][0]
            print(f"   bf16 / baseline fp32 {w16 / res['baseline fp32'][0]:.3f} wall, "
                  f"{res['ours bf16'][1] / res['baseline fp32'][1]:.3f} cpu; bf16 / ours fp32 "
                  f"{w16 / res['ours fp32'][0]:.3f} wall, {res['ours bf16'][1] / res['ours fp32'][1]:.3f} cpu")
            print(f"   bf16 matmul bound {bound:.3f} s ({flops / 1e9:.0f} GFLOP at {rates[torch.bfloat16] / 1e9:.0f} "
                  f"GFLOP/s, attention's q k^T and attn @ v {attn:.3f} s of it): ours bf16 / bound "
                  f"{w16 / bound:.2f}")
            print(f"   bf16 vs fp32 output (random weights N(0, 0.02)): max |diff| {d.max().item():.2e}, "
                  f"mean {d.mean().item():.2e}")


def profile(args: argparse.Namespace) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as run_profile
    size = max(args.sizes)
    for dtype in (torch.bfloat16, torch.float32):
        model = lua_model(dtype)
        x = torch.randn(1, 16, size, size, dtype=dtype)
        with torch.inference_mode():
            model(x, "x2")
            with run_profile(activities=[ProfilerActivity.CPU]) as prof:
                model(x, "x2")
        events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
        total = sum(e.self_cpu_time_total for e in events)
        print(f"-- profile: {size}^2 x2, {str(dtype).removeprefix('torch.')}, self CPU time per op "
              f"(total {total / 1e6:.2f} s)")
        for e in events[:12]:
            print(f"   {e.key:<52} {e.self_cpu_time_total / 1e3:9.1f} ms {100 * e.self_cpu_time_total / total:5.1f}% "
                  f"{e.count:5d} calls")


def attention(args: argparse.Namespace) -> None:
    size = max(args.sizes)
    nw, heads, n, hd = (size // 16) ** 2, 12, 256, 30
    dt = torch.bfloat16
    qkv = torch.randn(nw, n, 3, heads, hd, dtype=dt)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # strided, as the model hands them over
    bias = torch.randn(1, heads, n, n, dtype=dt)
    bias32 = bias.float()
    scale = hd ** -0.5
    qf, kf, vf = (t.reshape(nw * heads, n, hd) for t in (q.contiguous(), k.contiguous(), v.contiguous()))
    scores = torch.empty(heads, n, n)
    out = torch.empty(nw * heads, n, hd, dtype=dt)

    def explicit() -> None:
        for i in range(nw):  # one window at a time: its fp32 scores stay in cache
            sl = slice(i * heads, (i + 1) * heads)
            torch.add(bias32[0], torch.bmm(qf[sl], kf[sl].transpose(1, 2)), alpha=scale, out=scores)
            torch.bmm(torch.softmax(scores, -1).to(dt), vf[sl], out=out[sl])

    with torch.inference_mode():
        ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=bias32, scale=scale)
        explicit()
        diff = (out.view(nw, heads, n, hd).float() - ref).abs().max().item()
        res = alternate({"SDPA bf16 (the model's call)": lambda: F.scaled_dot_product_attention(
                            q, k, v, attn_mask=bias, scale=scale),
                         "SDPA fp32 (inputs cast from bf16)": lambda: F.scaled_dot_product_attention(
                            q.float(), k.float(), v.float(), attn_mask=bias32, scale=scale),
                         f"explicit bmm + fp32 softmax + bmm (max diff {diff:.1e})": explicit},
                        3 * args.repeat)
    show(f"attention: one unshifted block at {size}^2, {nw} windows x {heads} heads", res, next(iter(res)))


def epilogue(args: argparse.Namespace) -> None:
    size = max(args.sizes)
    model = lua_model(torch.bfloat16)
    x = torch.randn(1, 16, size, size, dtype=torch.bfloat16)
    plain = lua_attention.BIAS_IN_GEMM_ON

    def run(flags: tuple[str, ...]) -> Callable[[], object]:
        def fn() -> object:
            # torch's mm path on both sides (oneDNN's fused linears, the default, take precedence)
            with swapped(BIAS_IN_GEMM_ON=flags, ONEDNN_LINEAR_ON=()):
                return model(x, "x2")
        return fn

    fns = {"mm + separate bias adds": run(plain), "qkv, fc1 bias via addmm": run((*plain, "cpu:bfloat16"))}
    with torch.inference_mode():
        a, b = (fn() for fn in fns.values())
        res = alternate(fns, args.repeat)
    show(f"epilogue: whole bf16 forward, {size}^2 x2 (max diff {(a.float() - b.float()).abs().max().item():.1e})",
         res, next(iter(fns)), 1, "s")


def onednn(args: argparse.Namespace) -> None:
    size = max(args.sizes)
    model = lua_model(torch.bfloat16)
    m32 = lua_model(torch.float32)
    x32 = torch.randn(1, 16, size, size)
    x = x32.bfloat16()
    saved = lua_attention.ONEDNN_LINEAR_ON

    def run(flags: tuple[str, ...]) -> Callable[[], torch.Tensor]:
        def fn() -> torch.Tensor:
            with swapped(ONEDNN_LINEAR_ON=flags):
                return model(x, "x2")
        return fn

    fns = {"oneDNN fused qkv and fc1+GELU (the default)": run(saved), "torch mm + bias/GELU passes": run(())}
    with torch.inference_mode():
        ref = m32(x32, "x2")
        for name, fn in fns.items():
            d = (fn().float() - ref).abs()
            print(f"   {name}: bf16 vs fp32 max |diff| {d.max().item():.2e}, mean {d.mean().item():.3e}")
        res = alternate(fns, args.repeat)
    show(f"onednn: whole bf16 forward, {size}^2 x2", res, next(iter(fns)), 1, "s")


def floor(args: argparse.Namespace, rates: dict[torch.dtype, float]) -> None:
    """The bf16 x2 forward split into attention and the rest, against what attention cannot go under."""
    size, target = max(args.sizes), 0.15
    m32, m16 = lua_model(torch.float32), lua_model(torch.bfloat16)
    x = torch.randn(1, 16, size, size)
    xb = x.bfloat16()
    plain, logits = lua_attention.window_sdpa, [0]

    def counting(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, scale: float) -> torch.Tensor:
        logits[0] += q.shape[0] * q.shape[1] * q.shape[2] * k.shape[2]
        return plain(q, k, v, bias, scale)

    def free(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, scale: float) -> torch.Tensor:
        # SDPA's own output layout (windows, n, heads, hd) seen as (windows, heads, n, hd), left unwritten
        return torch.empty(v.shape[0], v.shape[2], v.shape[1], v.shape[3], dtype=v.dtype).transpose(1, 2)

    def without_attention() -> torch.Tensor:
        with swapped(window_sdpa=free):
            return m16(xb, "x2")

    with torch.inference_mode():
        with swapped(window_sdpa=counting):
            m16(xb, "x2")
        res = alternate({"baseline fp32": lambda: baseline_forward(m32, x, "x2"), "ours bf16": lambda: m16(xb, "x2"),
                         "ours bf16, attention a free stand-in": without_attention}, args.repeat)
    show(f"floor: {size}^2 x2, bf16, attention against the rest (s)", res, "baseline fp32", 1, "s")
    base, whole, rest = res["baseline fp32"][0], res["ours bf16"][0], res["ours bf16, attention a free stand-in"][0]
    # exp rate: torch's vectorised exp on one thread over a buffer that stays in its core's L2, times the
    # threads (exp is compute-bound and splits perfectly); timed on one thread because with waiting threads
    # asleep (OMP_WAIT_POLICY=PASSIVE) waking them costs more than a cache-sized call's work
    buf = torch.randn(2 ** 16) * 4
    dst = torch.empty_like(buf)
    calls, runs = 400, []
    torch.set_num_threads(1)
    try:
        for _ in range(3 * args.repeat + 2):  # the best run: a floor takes the kernel's peak rate
            t0 = time.perf_counter()
            for _ in range(calls):
                torch.exp(buf, out=dst)
            runs.append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(args.threads)
    exp_rate = args.threads * calls * buf.numel() / min(runs)
    gemm_rate = rates[torch.bfloat16]
    attn_mm = attention_flops(m16.config, 1, size, size) / gemm_rate
    least = logits[0] / exp_rate + attn_mm
    allowed = target * base - rest
    print(f"   attention (whole - rest) {whole - rest:.3f} s = {(whole - rest) / whole:.0%} of the bf16 forward; "
          f"the rest {rest:.3f} s = {rest / base:.3f}x the baseline")
    print(f"   logits exponentiated {logits[0]:,}; torch exp (fp32, in cache, 1 thread's rate x {args.threads}) "
          f"{exp_rate / 1e9:.2f} G/s; bf16 GEMM rate {gemm_rate / 1e9:.0f} GFLOP/s")
    print(f"   attention's least cost: {logits[0] / exp_rate:.3f} s of exps + {attn_mm:.3f} s of q k^T and attn @ v "
          f"= {least:.3f} s (softmax's max, sum and scaling not counted); measured {whole - rest:.3f} s")
    print(f"   target {target}x the baseline = {target * base:.3f} s: attention may take {allowed:.3f} s next to the "
          f"rest as it is; " + ("reachable with a faster attention kernel" if allowed >= least else
                                 "below its least cost: out of reach unless the rest shrinks too"))
    print(f"   with attention at its least cost: {(rest + least) / base:.3f}x the baseline")


def compile(args: argparse.Namespace) -> None:  # noqa: A001 (the section's name)
    """One Swin block in bf16: eager, inductor, inductor max-autotune, and the model's blocks."""
    import torch._inductor.config as inductor
    from cpu_alternatives import PlainBlock

    inductor.freezing = True
    size = max(args.sizes)
    model = lua_model(torch.bfloat16)
    cfg = model.config
    torch.manual_seed(0)
    c, heads = cfg.embed_dim, cfg.num_heads[0]
    block = PlainBlock(c, heads, cfg.window_size ** 2).eval()
    with torch.no_grad():
        for p in block.parameters():
            p.normal_(0, 0.02)
    block = block.to(torch.bfloat16)
    t = torch.randn(1, size * size, c, dtype=torch.bfloat16)
    fns: dict[str, Callable[[], object]] = {"plain block, eager": lambda: block(t)}
    with torch.inference_mode():
        ref = block(t).float()
        for mode in ("default", "max-autotune"):
            t0 = time.perf_counter()
            fast = torch.compile(block, mode=mode)
            diff = (fast(t).float() - ref).abs().max().item()
            print(f"   torch.compile mode={mode} took {time.perf_counter() - t0:.1f} s (max diff {diff:.1e})")
            fns[f"plain block, torch.compile {mode}"] = lambda fast=fast: fast(t)
        lays = model.layouts(size, size, t.device)
        first = model.layers[0].residual_group.blocks
        workspace = Workspace()
        # the model's blocks update their input in place: each call gets a fresh copy
        for i, kind in ((0, "unshifted"), (1, "shifted")):
            fns[f"the model's {kind} block (+ a copy)"] = lambda b=first[i]: b(
                t.clone(), lays.by_shift[b.shift], None, workspace)
        res = alternate(fns, 2 * args.repeat)
    show(f"compile: one Swin block, bf16, {size}^2", res, "plain block, eager")


def peer_models() -> list[tuple[str, torch.nn.Module, int, float, str | None]]:
    """(label, released-shape model with its own random initialisation, channels, scale, latent format)."""
    from lua_core.archs.city96 import City96Config, City96Upscaler
    from lua_core.archs.lssgen import LSSGenConfig, LSSGenUpscaler
    from lua_core.archs.nnlatent import NNLatentConfig, NNLatentUpscaler
    from lua_core.archs.sesqui import SesquiConfig, SesquiUpscaler
    torch.manual_seed(0)
    return [("city96 v2.1 x2 (SDXL)", City96Upscaler(City96Config(scale=2.0)), 4, 2.0, None),
            ("NNLatentUpscale x2 (SDXL)", NNLatentUpscaler(NNLatentConfig()), 4, 2.0, None),
            ("LSSGen x2 (FLUX)", LSSGenUpscaler(LSSGenConfig()), 16, 2.0, "flux"),
            ("SesquiLSR x2 (FLUX)", SesquiUpscaler(SesquiConfig.derive(16)), 16, 2.0, "flux")]


def peers(args: argparse.Namespace) -> None:
    from lua_core import upscale_latent
    size = max(args.sizes)
    for label, model, channels, scale, fmt in peer_models():
        m32 = model.eval().requires_grad_(False)
        m16 = copy.deepcopy(m32).to(torch.bfloat16)
        x = torch.randn(1, channels, size, size)
        xb = x.bfloat16()
        with torch.inference_mode():
            ref = upscale_latent(m32, x, scale, latent_format=fmt)
            d = (upscale_latent(m16, xb, scale, latent_format=fmt).float() - ref).abs()
            res = alternate({"fp32": lambda m=m32: upscale_latent(m, x, scale, latent_format=fmt),
                             "bf16": lambda m=m16: upscale_latent(m, xb, scale, latent_format=fmt)}, args.repeat)
        show(f"peers: {label}, {size}^2 (max |bf16 - fp32| {d.max().item():.2e}, mean {d.mean().item():.2e})",
             res, "fp32")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="32,64", help="latent sides (the largest is used by profile/attention)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sections", default="gemm,forward,floor,profile,attention,epilogue,onednn,peers")
    ap.add_argument("--small", action="store_true", help="LUA sections on a small stand-in config (smoke runs)")
    add_log_argument(ap)
    args = ap.parse_args()
    args.sizes = [int(s) for s in args.sizes.split(",")]
    global CONFIG
    CONFIG = SMALL if args.small else None
    torch.set_num_threads(args.threads)
    cpu = torch.cpu
    print(f"torch {torch.__version__}, cpu, {torch.get_num_threads()} threads, OMP_WAIT_POLICY="
          f"{os.environ.get('OMP_WAIT_POLICY', '(unset)')}; torch reports AMX tiles "
          f"{cpu._is_amx_tile_supported()}, AVX-512 BF16 {cpu._is_avx512_bf16_supported()}")
    sections = args.sections.split(",")
    rates = gemm(args) if {"gemm", "forward", "floor"} & set(sections) else {}
    for name in sections:
        if name in ("forward", "floor"):
            globals()[name](args, rates)
        elif name in ("profile", "attention", "epilogue", "onednn", "peers", "compile"):
            globals()[name](args)
        elif name != "gemm":
            raise SystemExit(f"unknown section {name!r}")


if __name__ == "__main__":
    with logged(log_path(sys.argv)):
        main()
