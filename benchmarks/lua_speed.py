"""LUA benchmarks, run by hand: every number is measured in the same run it is compared with.

    python benchmarks/lua_speed.py speed     # optimised vs baseline forward, and the matmul bound
    python benchmarks/lua_speed.py memory    # peak working memory, one-shot vs max_memory plans
    python benchmarks/lua_speed.py pipeline  # LUA x2 + decode vs decode + SwinIR x2 vs bicubic + decode
    python benchmarks/lua_speed.py tiling    # tiled vs one-shot difference at the default overlap
    python benchmarks/lua_speed.py drift     # bf16 / fp16 / fp32 against the official fp32 outputs (conformance models)
    python benchmarks/lua_speed.py sizes     # time and peak memory, x2 and x4, 32^2-256^2, fp32 and bf16
    python benchmarks/lua_speed.py all

Options: --device cpu|cuda, --dtype fp32|bf16|fp16, --sizes 32,64, --threads N, --repeat N.
The released FLUX config with random weights is used (speed and memory do not depend on values).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from runlog import add_log_argument, logged  # noqa: E402

from lua_baseline import baseline_forward  # noqa: E402
from lua_core.archs.lua import LUA, LUAConfig, plan_forward  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def released_model(device: str, dtype: torch.dtype, seed: int = 0) -> LUA:
    torch.manual_seed(seed)
    m = LUA(LUAConfig()).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.02)
    return m.to(device=device, dtype=dtype)


def attention_flops(cfg: LUAConfig, b: int, h: int, w: int) -> float:
    """The QK^T and AV multiply-adds x2 of all blocks (part of ``lua_flops``)."""
    ws = cfg.window_size
    t = b * (h + (ws - h % ws) % ws) * (w + (ws - w % ws) % ws)
    return float(sum(cfg.depths) * 4 * t * cfg.ws_eff ** 2 * cfg.embed_dim)


def lua_flops(cfg: LUAConfig, b: int, h: int, w: int, head: str) -> float:
    """Multiply-adds x2 of one forward at the padded size (linear layers, attention, convolutions)."""
    ws = cfg.window_size
    hp, wp = h + (ws - h % ws) % ws, w + (ws - w % ws) % ws
    t = b * hp * wp
    e, hidden, n = cfg.embed_dim, int(cfg.embed_dim * cfg.mlp_ratio), cfg.ws_eff ** 2
    per_block = 2 * t * e * (3 * e + e + 2 * hidden) + 4 * t * n * e
    blocks = sum(cfg.depths) * per_block
    conv = 2 * t * 9 * (cfg.in_chans * e + (len(cfg.depths) + 1) * e * e)
    hc = cfg.head(head)
    nf = hc.num_feat or cfg.head_num_feat
    head_flops = 2 * t * 9 * e * nf
    res = t
    for _ in range({2: 1, 4: 2, 8: 3}.get(hc.scale, 1)):
        head_flops += 2 * res * 9 * nf * 4 * nf
        res *= 4
    head_flops += 2 * res * 9 * nf * hc.out_chans
    return float(blocks + conv + head_flops)


def attention_seconds(cfg: LUAConfig, b: int, h: int, w: int, device: str, dtype: torch.dtype, repeat: int) -> float:
    """Measured time of the window attention kernels alone (SDPA with a bias), for all blocks.

    Attention is not GEMM-bound on a CPU: its softmax evaluates one exp per logit (12.6M per block
    at 64^2), so this is the floor a forward cannot go under, next to the GEMM bound of the rest.
    """
    ws = cfg.window_size
    hp, wp = h + (ws - h % ws) % ws, w + (ws - w % ws) % ws
    n, heads = cfg.ws_eff ** 2, cfg.num_heads[0]
    hd = cfg.embed_dim // heads
    nw = b * (hp // cfg.ws_eff) * (wp // cfg.ws_eff)
    q, k, v = (torch.randn(nw, heads, n, hd, device=device, dtype=dtype) for _ in range(3))
    bias = torch.randn(1, heads, n, n, device=device, dtype=dtype)
    with torch.inference_mode():
        one = timed(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=bias), device, repeat)
    return one * sum(cfg.depths)


def kernel_seconds(model: LUA, b: int, h: int, w: int, head: str, device: str, dtype: torch.dtype,
                   repeat: int) -> float:
    """The forward's heavy kernels alone, each timed standalone on warm random data and summed:
    the four linear layers of every block (at the padded token count), the window attention
    (``attention_seconds``), every convolution of the trunk and the head as a whole, through the
    model's own modules (so Winograd and the folded head on CPU). What the forward spends beyond
    this is everything else: LayerNorms, token gathers, residual and bias adds, GELU, Python.
    """
    cfg = model.config
    ws = cfg.window_size
    hp, wp = h + (ws - h % ws) % ws, w + (ws - w % ws) % ws
    t, e = b * hp * wp, cfg.embed_dim
    hidden = int(e * cfg.mlp_ratio)
    x = torch.randn(t, e, device=device, dtype=dtype)
    xh = torch.randn(t, hidden, device=device, dtype=dtype)
    opts = dict(device=device, dtype=dtype)
    mats = [(x, torch.randn(3 * e, e, **opts)), (x, torch.randn(e, e, **opts)), (x, torch.randn(hidden, e, **opts)),
            (xh, torch.randn(e, hidden, **opts))]
    total = 0.0
    with torch.inference_mode():
        for a, wmat in mats:
            total += timed(lambda: a @ wmat.t(), device, repeat) * sum(cfg.depths)
        total += attention_seconds(cfg, b, h, w, device, dtype, repeat)
        convs = [(model.conv_first, hp), *[(layer.conv, hp) for layer in model.layers], (model.conv_after_body, hp),
                 (model.heads[head], hp)]  # the head whole: conv_before, folded tail, edge strips
        for conv, side in convs:
            # tokens viewed as NCHW, as the model hands them over
            shape = (b, side, side * wp // hp, getattr(conv, "in_channels", e))
            inp = torch.randn(shape, **opts).permute(0, 3, 1, 2)
            total += timed(lambda: conv(inp), device, repeat)
    return total


def gemm_rate(device: str, dtype: torch.dtype, tokens: int = 4096, e: int = 360) -> float:
    """Best FLOP/s of the trunk's own GEMM shapes (tokens x E @ E x 3E, tokens x E @ E x 2E)."""
    a = torch.randn(tokens, e, device=device, dtype=dtype)
    ws = [torch.randn(e, k * e, device=device, dtype=dtype) for k in (3, 2, 1)]
    best = 0.0
    for _ in range(3):
        for wmat in ws:
            sync(device)
            t0 = time.perf_counter()
            for _ in range(10):
                a @ wmat
            sync(device)
            dt = time.perf_counter() - t0
            best = max(best, 10 * 2 * tokens * e * wmat.shape[1] / dt)
    return best


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str, repeat: int) -> float:
    """Best wall time of ``repeat`` calls after one warm-up."""
    return timed2(fn, device, repeat)[0]


def timed2(fn, device: str, repeat: int) -> tuple[float, float]:
    """Best (wall, process CPU) seconds of ``repeat`` calls after one warm-up.

    On a shared CPU, wall time swings with other processes' load while the process's own CPU time
    (all threads) stays close to the work done, so both are reported.
    """
    fn()
    best, best_cpu = float("inf"), float("inf")
    for _ in range(repeat):
        sync(device)
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        sync(device)
        best, best_cpu = min(best, time.perf_counter() - t0), min(best_cpu, time.process_time() - c0)
    return best, best_cpu


def timed_pair(fa, fb, device: str, repeat: int) -> tuple[tuple[float, float], tuple[float, float]]:
    """Best (wall, CPU) seconds of two functions timed alternately, a then b, ``repeat`` times.

    Alternating keeps a ratio fair on a machine whose speed drifts (a shared host): both sides
    see the same conditions, where timing one side after the other can differ by 10%.
    """
    fa(), fb()
    best = [[float("inf")] * 2, [float("inf")] * 2]
    for _ in range(repeat):
        for i, fn in enumerate((fa, fb)):
            sync(device)
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            sync(device)
            best[i] = [min(best[i][0], time.perf_counter() - t0), min(best[i][1], time.process_time() - c0)]
    return (best[0][0], best[0][1]), (best[1][0], best[1][1])


def bench_speed(args) -> list[dict]:
    dtype = DTYPES[args.dtype]
    model = released_model(args.device, dtype)
    rate = gemm_rate(args.device, dtype)
    print(f"GEMM rate measured now: {rate / 1e9:.0f} GFLOP/s ({args.device}, {args.dtype}, "
          f"{torch.get_num_threads()} threads)")
    print(f"{'latent':>8} {'head':>4} {'baseline s':>11} {'ours s':>8} {'ratio':>6} {'cpu ratio':>9} {'GFLOP':>7} "
          f"{'bound s':>8} {'ours/bound':>10} {'bound+attn s':>12} {'ours/that':>9} {'kernels s':>9} "
          f"{'ours/kern':>9} {'max|diff|':>10}")
    rows = []
    for size in args.sizes:
        x = torch.randn(1, 16, size, size, device=args.device, dtype=dtype)
        for head in ("x2", "x4"):
            with torch.inference_mode():
                ref = baseline_forward(model, x, head)
                out = model(x, head)
                diff = (out.float() - ref.float()).abs().max().item()
                (tb, cb), (to, co) = timed_pair(lambda: baseline_forward(model, x, head), lambda: model(x, head),
                                                args.device, args.repeat)
            cfg = model.config
            flops = lua_flops(cfg, 1, size, size, head)
            bound = flops / rate
            attn_flops = attention_flops(cfg, 1, size, size)
            attn_s = attention_seconds(cfg, 1, size, size, args.device, dtype, args.repeat)
            bound2 = (flops - attn_flops) / rate + attn_s
            kern = kernel_seconds(model, 1, size, size, head, args.device, dtype, args.repeat)
            rows.append(dict(size=size, head=head, baseline_s=tb, ours_s=to, ratio=to / tb, cpu_ratio=co / cb,
                             gflop=flops / 1e9, bound_s=bound, ours_over_bound=to / bound,
                             bound_with_measured_attention_s=bound2, kernels_s=kern, max_abs_diff=diff))
            print(f"{size:>6}^2 {head:>4} {tb:>11.3f} {to:>8.3f} {to / tb:>6.3f} {co / cb:>9.3f} {flops / 1e9:>7.0f} "
                  f"{bound:>8.3f} {to / bound:>10.2f} {bound2:>12.3f} {to / bound2:>9.2f} {kern:>9.3f} "
                  f"{to / kern:>9.2f} {diff:>10.2e}")
    return rows


# -- memory ---------------------------------------------------------------------------------------

_MEM_CHILD = r"""
import json, resource, sys, torch
sys.path.insert(0, {root!r}); sys.path.insert(0, {bench!r})
from lua_speed import released_model
from lua_core.archs.lua import plan_forward
device, size, mm, dtype = {device!r}, {size}, {max_memory}, getattr(torch, {dtype!r})
model = released_model(device, dtype)
x = torch.randn(1, 16, size, size, device=device, dtype=dtype)
plan = plan_forward(model.config, tuple(x.shape), "x4", mm, x.element_size())
def used():
    if device.startswith("cuda"):
        return torch.cuda.memory_allocated()
    return int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize()
# a first small forward builds what the model keeps (attention biases, Winograd and folded-head
# kernels): weights-like memory, reported apart from the working memory of the big forward
before_caches = used()
with torch.inference_mode():
    model(torch.randn(1, 16, 16, 16, device=device, dtype=dtype), "x4")
caches = used() - before_caches
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
if device.startswith("cuda"):
    torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats(); before = torch.cuda.memory_allocated()
with torch.inference_mode():
    out = model(x, "x4", plan)
if device.startswith("cuda"):
    torch.cuda.synchronize(); peak = torch.cuda.max_memory_allocated() - before
else:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
print(json.dumps(dict(peak=peak, caches=caches, plan=str(plan), out=list(out.shape),
                      checksum=float(out.double().abs().mean()))))
"""


def bench_memory(args) -> list[dict]:
    """Peak working memory of x4 to a 4096 px image (128^2 latent -> 512^2), one-shot vs bounded plans.

    Each run is a fresh process: on CPU the peak is the growth of max RSS over the process's state
    before the forward (with glibc told to return freed blocks at once); on CUDA it is
    torch.cuda.max_memory_allocated beyond the weights and input. What the model keeps after its
    first forward (attention biases; on CPU also Winograd and folded-head kernels) is built by a
    small warm-up forward and printed apart ("kept").
    """
    from lua_core.archs.lua import estimate_peak
    size = args.memory_size
    cfg = LUAConfig()
    dtype = DTYPES[args.dtype]
    elem = torch.empty((), dtype=dtype).element_size()
    rows = []
    print(f"x4 of a {size}^2 latent ({size * 32} px decoded), released config, {args.dtype}, {args.device}")
    print(f"{'max_memory':>12} {'estimate GiB':>13} {'measured GiB':>13} {'kept GiB':>9}  plan")
    ref = None
    for mm in [None] + [int(g * 2**30) for g in args.budgets]:
        plan = plan_forward(cfg, (1, 16, size, size), "x4", mm, elem)
        est = estimate_peak(cfg, (1, 16, size, size), "x4", plan, elem)
        code = _MEM_CHILD.format(root=str(ROOT), bench=str(ROOT / "benchmarks"), device=args.device, size=size,
                                 max_memory=mm, dtype=str(dtype).removeprefix("torch."))
        # glibc keeps freed blocks below its (adaptive) mmap threshold in the heap, so RSS would
        # measure fragmentation, not live tensors: a fixed 64 KiB threshold returns them at once.
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="65536")
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
        if res.returncode:
            print(res.stderr[-2000:])
            continue
        r = json.loads(res.stdout.strip().splitlines()[-1])
        ref = r["checksum"] if ref is None else ref
        rows.append(dict(max_memory=mm, estimate=est, measured=r["peak"], kept=r["caches"], plan=r["plan"],
                         same_output=abs(r["checksum"] - ref) < 1e-5 * abs(ref)))
        label = "one-shot" if mm is None else f"{mm / 2**30:.2f} GiB"
        print(f"{label:>12} {est / 2**30:>13.2f} {r['peak'] / 2**30:>13.2f} {r['caches'] / 2**30:>9.2f}  {r['plan']}")
    if rows:
        print(f"measured peak, smallest budget vs one-shot: {rows[-1]['measured'] / max(rows[0]['measured'], 1):.2f}x; "
              f"outputs identical: {all(r['same_output'] for r in rows)}")
    return rows


# -- sizes ----------------------------------------------------------------------------------------

_SIZE_CHILD = r"""
import json, re, statistics, sys, time, torch
sys.path.insert(0, {root!r}); sys.path.insert(0, {bench!r})
from lua_speed import released_model
from lua_core import upscale_latent
from lua_core.archs.lua import plan_forward
torch.set_num_threads({threads})
size, scale, budget, repeat, dtype = {size}, {scale}, {budget}, {repeat}, getattr(torch, {dtype!r})
model = released_model("cpu", dtype)
x = torch.randn(1, 16, size, size, dtype=dtype)
plan = plan_forward(model.config, tuple(x.shape), model.head_for(scale), budget, x.element_size())
with torch.inference_mode():  # builds what the model keeps (biases, folded heads), not counted below
    upscale_latent(model, torch.randn(1, 16, 16, 16, dtype=dtype), scale)
def status(key):
    return int(re.search(key + r":\s+(\d+)", open("/proc/self/status").read())[1]) * 1024
open("/proc/self/clear_refs", "w").write("5")  # the peak RSS (VmHWM) restarts from the RSS now
base = status("VmRSS")
wall, cpu = [], []
with torch.inference_mode():
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        out = upscale_latent(model, x, scale, max_memory=budget)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
peak = status("VmHWM") - base
print(json.dumps(dict(wall=statistics.median(wall), cpu=statistics.median(cpu), peak=peak, plan=str(plan),
                      out=list(out.shape), runs=repeat)))
"""


def bench_sizes(args) -> list[dict]:
    """Time and peak working memory of x2 and x4 at each latent side, fp32 and bf16, with the memory plan
    ``upscale_latent`` picks for ``--size-budget`` GiB (released config, random weights).

    One fresh process per row: after a warm-up forward at 16^2 (which builds what the model keeps), Linux's
    peak-RSS counter is reset (``/proc/self/clear_refs``) and the peak is its growth over the RSS then, so
    it is the forwards' working memory (with the input and output) alone; glibc is told to return freed
    blocks at once, as in ``memory``. Each row is the median of ``--repeat`` forwards (``--big-repeat``
    from 128^2 up).
    """
    budget = int(args.size_budget * 2**30)
    rows = []
    print(f"x2 and x4, released config, cpu, {torch.get_num_threads()} threads, max_memory {args.size_budget:g} GiB; "
          "wall and CPU seconds are medians, peak = growth of the peak RSS over the RSS before the forwards")
    print(f"{'latent':>8} {'pixels':>10} {'head':>4} {'dtype':>5} {'wall s':>8} {'cpu s':>8} {'runs':>4} "
          f"{'peak MiB':>9} {'s per Mpx':>10}  plan")
    # glibc returning freed blocks at once makes the peak RSS the forwards' own, but costs page faults on
    # every allocation: measured 1.7x the time of a bf16 64^2 x2 forward (1.29 vs 0.76 s); --size-plain-malloc
    # keeps glibc's defaults, for times (its peaks then include memory glibc kept from earlier forwards)
    env = dict(os.environ) if args.size_plain_malloc else dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536",
                                                                    MALLOC_TRIM_THRESHOLD_="65536")
    print("glibc: " + ("its defaults (times as in use; peaks not the forwards' alone)" if args.size_plain_malloc
                       else "freed blocks returned at once (peaks are the forwards' own; times include page faults)"))
    for dname in args.size_dtypes:
        for size in args.size_list:
            for scale in (2, 4):
                repeat = args.repeat if size < 128 else args.big_repeat
                code = _SIZE_CHILD.format(root=str(ROOT), bench=str(ROOT / "benchmarks"), size=size, scale=scale,
                                          budget=budget, repeat=repeat, threads=torch.get_num_threads(),
                                          dtype=str(DTYPES[dname]).removeprefix("torch."))
                res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
                if res.returncode:
                    print(res.stderr[-2000:])
                    continue
                r = json.loads(res.stdout.strip().splitlines()[-1])
                px = (size * 8 * scale) ** 2  # decoded output pixels (8 px per latent pixel)
                rows.append(dict(size=size, head=f"x{scale}", dtype=dname, **r))
                print(f"{size:>6}^2 {size * 8 * scale:>5}^2 px {'x' + str(scale):>4} {dname:>5} {r['wall']:>8.2f} "
                      f"{r['cpu']:>8.2f} {r['runs']:>4} {r['peak'] / 2**20:>9.0f} {r['wall'] / px * 1e6:>10.3f}  "
                      f"{r['plan']}", flush=True)
    return rows


# -- pipeline -------------------------------------------------------------------------------------

def _comfy_vae(device: str, channels: int = 16):
    """A random-weight FLUX-layout VAE decoder built with ComfyUI's own classes (needs .comfyui)."""
    comfy_dir = os.environ.get("COMFYUI_DIR", str(ROOT / ".comfyui" / "ComfyUI"))
    sys.path.insert(0, comfy_dir)
    from comfy.cli_args import args as comfy_args
    comfy_args.cpu = device == "cpu"
    from comfy.ldm.modules.diffusionmodules.model import Decoder
    dd = dict(double_z=True, z_channels=channels, resolution=256, in_channels=3, out_ch=3, ch=128,
              ch_mult=[1, 2, 4, 4], num_res_blocks=2, attn_resolutions=[], dropout=0.0)
    torch.manual_seed(0)
    dec = Decoder(**dd).eval()
    with torch.no_grad():
        for p in dec.parameters():
            p.normal_(0, 0.02)
    return dec.to(device)


def _swinir_x2(device: str):
    """SwinIR x2 (classical SR: embed 180, 6x6 blocks, window 8) from spandrel, random weights."""
    from spandrel.architectures.SwinIR.__arch.SwinIR import SwinIR
    torch.manual_seed(0)
    m = SwinIR(upscale=2, in_chans=3, img_size=64, window_size=8, img_range=1.0, depths=[6] * 6, embed_dim=180,
               num_heads=[6] * 6, mlp_ratio=2, upsampler="pixelshuffle", resi_connection="1conv").eval()
    return m.to(device)


def bench_pipeline(args) -> list[dict]:
    """The paper's comparison at a size this machine can run: decode at the big size after a latent
    upscale (LUA or bicubic) vs decode at the small size + a pixel-space SwinIR x2.

    Each part is timed on its own and the pipelines are their sums: with random weights, the
    decoder's time depends a little on the values it gets (about 10% between a LUA output and a
    bicubic one here), which would otherwise blur the comparison of the upscalers.
    """
    # random weights shrink activations through 30 layers into denormal floats, which a CPU handles
    # 10-100x slower: the timing would measure that, not the network
    torch.set_flush_denormal(True)
    lua = released_model(args.device, torch.float32)
    dec = _comfy_vae(args.device)
    swinir = _swinir_x2(args.device)
    rows = []
    for size in args.pipeline_sizes:
        z = torch.randn(1, 16, size, size, device=args.device)
        z_big = torch.randn(1, 16, 2 * size, 2 * size, device=args.device)
        img = torch.rand(1, 3, size * 8, size * 8, device=args.device)
        with torch.inference_mode():
            t_up = timed(lambda: lua(z, "x2"), args.device, args.repeat)
            t_bic = timed(lambda: F.interpolate(z, scale_factor=2, mode="bicubic"), args.device, args.repeat)
            t_dec_big = timed(lambda: dec(z_big), args.device, args.repeat)
            t_dec_small = timed(lambda: dec(z), args.device, args.repeat)
            t_sw = timed(lambda: swinir(img), args.device, args.repeat)
        lua_pipe, bic_pipe, px_pipe = t_up + t_dec_big, t_bic + t_dec_big, t_dec_small + t_sw
        rows.append(dict(latent=size, lua=t_up, bicubic=t_bic, decode_big=t_dec_big, decode_small=t_dec_small,
                         swinir=t_sw, lua_pipeline=lua_pipe, bicubic_pipeline=bic_pipe, swinir_pipeline=px_pipe))
        print(f"latent {size}^2 -> {size * 16} px. parts: LUA x2 {t_up:.2f}s, bicubic {t_bic:.3f}s, decode at "
              f"{size * 16} px {t_dec_big:.2f}s, decode at {size * 8} px {t_dec_small:.2f}s, SwinIR x2 {t_sw:.2f}s")
        print(f"  LUA + decode {lua_pipe:.2f}s | bicubic + decode {bic_pipe:.2f}s | decode + SwinIR {px_pipe:.2f}s"
              f"  ->  LUA / SwinIR pipeline = {lua_pipe / px_pipe:.2f}, LUA / bicubic pipeline = "
              f"{lua_pipe / bic_pipe:.2f}")
    return rows


# -- tiling and drift ------------------------------------------------------------------------------

def bench_tiling(args) -> list[dict]:
    from lua_core import upscale_latent
    from lua_core.tiling import tile_and_overlap
    model = released_model(args.device, torch.float32)
    rows = []
    # square sides on the 16-pixel window grid, one off it, and FLUX's 1344x768 (168 = 10.5 windows)
    for (h, w), tile in [((64, 64), 32), ((64, 64), 48), ((96, 96), 48), ((72, 72), 32), ((96, 168), 64)]:
        x = torch.randn(1, 16, h, w, device=args.device)
        one = upscale_latent(model, x, 2)
        tiled = upscale_latent(model, x, 2, tile=tile)
        d = (tiled - one).abs()
        used, overlap = tile_and_overlap(tile, None, model.tile_align)
        rows.append(dict(size=[h, w], tile=used, overlap=overlap, max_abs=d.max().item(), mean_abs=d.mean().item(),
                         out_std=one.std().item()))
        print(f"latent {h}x{w} tile {used} (default overlap {overlap}): max |diff| {d.max():.3f}, "
              f"mean {d.mean():.4f}, output std {one.std():.3f}")
    # the case tests/test_lua_inference.py::test_tiles_are_deterministic_and_cover_everything pins (1.5x this)
    from safetensors.torch import load_file

    import lua_core
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import DATA, unpack_folder
    folder = unpack_folder(DATA / "public16", Path(os.environ.get("TMPDIR", "/tmp")) / "lua_tiling" / "public16")
    model = lua_core.load_model(folder / "weights.safetensors", device=args.device)
    x = load_file(folder / "vectors.safetensors")["input_2"].to(args.device)
    one = upscale_latent(model, x, 2)
    d = (upscale_latent(model, x, 2, tile=16, overlap=8) - one).abs()
    rows.append(dict(size=list(x.shape[-2:]), tile=16, overlap=8, max_abs=d.max().item(), mean_abs=d.mean().item(),
                     out_std=one.std().item(), model="public16"))
    print(f"conformance model public16, input_2 {x.shape[-2]}x{x.shape[-1]} tile 16 (default overlap 8): "
          f"max |diff| {d.max():.3f}, mean {d.mean():.4f}, output std {one.std():.3f}")
    return rows


def bench_drift(args) -> list[dict]:
    from safetensors.torch import load_file

    import lua_core
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import DATA, unpack_folder
    rows = []
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / "lua_drift"
    for name in ("public16", "public4"):
        folder = unpack_folder(DATA / name, tmp / name)
        vec = load_file(folder / "vectors.safetensors")
        man = json.loads((folder / "manifest.json").read_text())
        for dname in ("bf16", "fp16", "fp32"):
            m = lua_core.load_model(folder / "weights.safetensors", dtype=DTYPES[dname], device=args.device)
            worst, total, count = 0.0, 0.0, 0
            for c in man["cases"]:
                x = vec[c["input_key"]].to(args.device, DTYPES[dname])
                y = lua_core.upscale_latent(m, x, c["scale"])
                d = (y.float().cpu() - vec[c["output_key"]]).abs()
                worst, total, count = max(worst, d.max().item()), total + d.sum().item(), count + d.numel()
            absmax = max(abs(c["output_absmax"]) for c in man["cases"])
            rows.append(dict(model=name, dtype=dname, max_abs=worst, mean_abs=total / count, relative=worst / absmax))
            print(f"{name} {dname} ({args.device}): max |diff| vs fp32 official {worst:.2e} "
                  f"({100 * worst / absmax:.2f}% of |out| max), mean {total / count:.2e} over "
                  f"{len(man['cases'])} cases")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["speed", "memory", "pipeline", "tiling", "drift", "sizes", "all"])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", choices=list(DTYPES), default="fp32")
    ap.add_argument("--sizes", default="32,64", help="latent sides for 'speed'")
    ap.add_argument("--pipeline-sizes", default="32", help="latent sides for 'pipeline'")
    ap.add_argument("--memory-size", type=int, default=128, help="latent side for 'memory' (x4)")
    ap.add_argument("--budgets", default="4,2,1", help="max_memory values in GiB for 'memory'")
    ap.add_argument("--size-list", default="32,64,128,256", help="latent sides for 'sizes'")
    ap.add_argument("--size-dtypes", default="fp32,bf16", help="dtypes for 'sizes'")
    ap.add_argument("--size-budget", type=float, default=2.0, help="max_memory in GiB for 'sizes'")
    ap.add_argument("--big-repeat", type=int, default=1, help="forwards per row from 128^2 up for 'sizes'")
    ap.add_argument("--size-plain-malloc", action="store_true",
                    help="'sizes' with glibc's default allocator settings (for times; see bench_sizes)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", help="also write the rows here")
    add_log_argument(ap)
    args = ap.parse_args()
    with logged(args.log):
        run(args)


def run(args: argparse.Namespace) -> None:
    args.sizes = [int(s) for s in args.sizes.split(",")]
    args.pipeline_sizes = [int(s) for s in args.pipeline_sizes.split(",")]
    args.budgets = [float(s) for s in args.budgets.split(",")]
    args.size_list = [int(s) for s in args.size_list.split(",")]
    args.size_dtypes = args.size_dtypes.split(",")
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, device {args.device}"
          + (f" ({torch.cuda.get_device_name()})" if args.device.startswith("cuda") else
             f", {torch.get_num_threads()} threads"))
    results = {}
    for what in (["speed", "memory", "tiling", "drift", "pipeline"] if args.what == "all" else [args.what]):
        print(f"\n== {what}")
        results[what] = globals()[f"bench_{what}"](args)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
