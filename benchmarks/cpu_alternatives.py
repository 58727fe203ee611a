"""CPU fp32 alternatives to the LUA forward's choices, measured against them in one run (by hand).

    python benchmarks/cpu_alternatives.py [--size 64] [--repeat 5] [--compile]

Why this exists: the 0.65x-of-baseline target at 64^2 x2 (issue #11) is not met, and each idea below
was tried to close the gap. Each section times the model's current choice and the alternative
alternately (a drifting shared host moves sequential timings by 10-25%) and prints best-of-N, so the
next contributor can re-check a dead end on their machine instead of rebuilding it:

* plans:     window chunks (``ForwardPlan.chunk_windows``) to keep a block's temporaries in cache;
* epilogue:  the CUDA path's bias-in-GEMM (``BIAS_IN_GEMM_ON``: ``addmm`` for qkv and fc1) on CPU,
             in the whole forward, plus fc1 alone (mm + add + GELU vs addmm + GELU vs oneDNN's fused
             linear+GELU);
* attention: the fused SDPA call of one unshifted block against its parts (q k^T, exp, attn @ v) and
             an explicit baddbmm + softmax + bmm;
* threads:   the forward on 1 and 2 threads (how much a perfect split across cores could still gain);
* compile:   (``--compile``) ``torch.compile`` (inductor, frozen weights) of a plain Swin block
             against the same block in eager mode and against the model's own blocks.

Winograd F(4x4, 3x3) against F(2x2, 3x3) is in ``winograd_bench.py --tile both``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
from runlog import add_log_argument, log_path, logged  # noqa: E402

sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from lua_speed import released_model  # noqa: E402

import lua_core.archs.lua as lua  # noqa: E402


def alternate(fns: dict[str, Callable[[], object]], repeat: int) -> dict[str, float]:
    """Best seconds of each function, called in turn ``repeat`` times after one warm-up each."""
    for fn in fns.values():
        fn()
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeat):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def show(title: str, best: dict[str, float], ref: str, unit: float = 1e3, suffix: str = "ms") -> None:
    print(f"-- {title}")
    for name, s in best.items():
        print(f"   {name:<44} {s * unit:9.2f} {suffix}  {s / best[ref]:6.3f}x")


def plans(model: lua.LUA, x: torch.Tensor, repeat: int) -> None:
    ref = model(x, "x2")
    fns = {}
    for cw in (None, 8, 4, 2):
        plan = lua.ForwardPlan(chunk_windows=cw)
        diff = (model(x, "x2", plan) - ref).abs().max().item()
        fns[f"chunk_windows={cw} (max diff {diff:.1e})"] = lambda plan=plan: model(x, "x2", plan)
    show("plans: whole forward, x2", alternate(fns, repeat), next(iter(fns)), 1, "s")


def epilogue(model: lua.LUA, x: torch.Tensor, repeat: int) -> None:
    saved = lua.attention.BIAS_IN_GEMM_ON

    def run(devices: tuple[str, ...]) -> Callable[[], object]:
        def fn() -> object:
            lua.attention.BIAS_IN_GEMM_ON = devices
            try:
                return model(x, "x2")
            finally:
                lua.attention.BIAS_IN_GEMM_ON = saved
        return fn

    fns = {"separate bias adds (CPU default)": run(("cuda",)), "qkv, fc1 bias via addmm": run(("cuda", "cpu"))}
    diff = (fns["separate bias adds (CPU default)"]() - fns["qkv, fc1 bias via addmm"]()).abs().max().item()
    show(f"epilogue: whole forward, x2 (max diff {diff:.1e})", alternate(fns, repeat), next(iter(fns)), 1, "s")

    tokens = x.shape[-2] * x.shape[-1]
    a, w, b = torch.randn(tokens, 360), torch.randn(720, 360) * 0.05, torch.randn(720) * 0.05
    out = torch.empty(tokens, 720)
    fns = {"mm + add_ + gelu_": lambda: torch.ops.aten.gelu_(torch.mm(a, w.t(), out=out).add_(b)),
           "addmm + gelu_": lambda: torch.ops.aten.gelu_(torch.addmm(b, a, w.t(), out=out))}
    try:
        torch.ops.mkldnn._linear_pointwise(a, w, b, "gelu", [], "none")
        fns["oneDNN linear+GELU (_linear_pointwise)"] = lambda: torch.ops.mkldnn._linear_pointwise(
            a, w, b, "gelu", [], "none")
    except (RuntimeError, AttributeError) as e:
        print(f"   (oneDNN fused linear unavailable: {type(e).__name__})")
    show(f"epilogue: fc1 alone ({tokens} x 360 -> 720)", alternate(fns, 3 * repeat), next(iter(fns)))


def attention(x: torch.Tensor, repeat: int) -> None:
    nw, heads, n, hd = (x.shape[-2] // 16) * (x.shape[-1] // 16), 12, 256, 30
    q, k, v = (torch.randn(nw, heads, n, hd) for _ in range(3))
    bias = torch.randn(1, heads, n, n)
    scale = hd ** -0.5
    qf, kf, vf = (t.reshape(-1, n, hd) for t in (q, k, v))
    s, e = torch.empty(nw * heads, n, n), torch.empty(nw * heads, n, n)
    o = torch.empty(nw * heads, n, hd)
    per_win = torch.empty(heads, n, n)

    def explicit() -> None:
        for i in range(nw):  # one window at a time: its scores stay in cache
            sl = slice(i * heads, (i + 1) * heads)
            torch.baddbmm(bias[0], qf[sl], kf[sl].transpose(1, 2), alpha=scale, out=per_win)
            torch.bmm(torch.softmax(per_win, -1), vf[sl], out=o[sl])

    fns = {"SDPA with bias (the model's call)": lambda: F.scaled_dot_product_attention(
               q, k, v, attn_mask=bias, scale=scale),
           "SDPA without bias (not the model)": lambda: F.scaled_dot_product_attention(q, k, v, scale=scale),
           "explicit baddbmm + softmax + bmm": explicit,
           "part: q @ k^T (bmm)": lambda: torch.bmm(qf, kf.transpose(1, 2), out=s),
           "part: exp of all logits": lambda: torch.exp(s, out=e),
           "part: attn @ v (bmm)": lambda: torch.bmm(s, vf, out=o)}
    flops = 4 * nw * heads * n * n * hd
    best = alternate(fns, 3 * repeat)
    show(f"attention: one unshifted block, {nw} windows x {heads} heads ({flops / 1e9:.2f} GFLOP)", best,
         next(iter(fns)))
    for name in ("SDPA with bias (the model's call)", "part: q @ k^T (bmm)", "part: attn @ v (bmm)"):
        share = 1 if name.startswith("SDPA") else 2
        print(f"   {name:<44} {flops / share / best[name] / 1e9:9.1f} GFLOP/s")


def threads(model: lua.LUA, x: torch.Tensor, repeat: int) -> None:
    saved = torch.get_num_threads()

    def on(n: int) -> Callable[[], object]:
        def fn() -> object:
            torch.set_num_threads(n)
            try:
                return model(x, "x2")
            finally:
                torch.set_num_threads(saved)
        return fn

    best = alternate({f"{saved} threads": on(saved), "1 thread": on(1)}, max(2, repeat // 2))
    show("threads: whole forward, x2", best, f"{saved} threads", 1, "s")
    print(f"   parallel efficiency: {best['1 thread'] / (saved * best[f'{saved} threads']):.3f}")


class PlainBlock(nn.Module):
    """A Swin block as one straight function of the tokens (unshifted window order), what
    ``torch.compile`` can trace whole: LayerNorm, qkv, SDPA with a bias, proj, MLP, residuals."""

    def __init__(self, c: int = 360, heads: int = 12, n: int = 256):
        super().__init__()
        self.heads, self.n = heads, n
        self.norm1, self.norm2 = nn.LayerNorm(c), nn.LayerNorm(c)
        self.qkv, self.proj = nn.Linear(c, 3 * c), nn.Linear(c, c)
        self.fc1, self.fc2 = nn.Linear(c, 2 * c), nn.Linear(2 * c, c)
        self.register_buffer("bias", torch.randn(1, heads, n, n))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        b, length, c = t.shape
        qkv = self.qkv(self.norm1(t)).view(b * length // self.n, self.n, 3, self.heads, c // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=self.bias, scale=(c // self.heads) ** -0.5)
        t = t + self.proj(a.transpose(1, 2).reshape(b, length, c))
        return t + self.fc2(F.gelu(self.fc1(self.norm2(t))))


def compiled(model: lua.LUA, x: torch.Tensor, repeat: int) -> None:
    import torch._inductor.config as inductor

    inductor.freezing = True
    torch.manual_seed(0)
    block = PlainBlock().eval()
    for p in block.parameters():
        p.data.normal_(0, 0.02)
    t = torch.randn(1, x.shape[-2] * x.shape[-1], 360)
    t0 = time.perf_counter()
    fast = torch.compile(block)
    diff = (fast(t) - block(t)).abs().max().item()
    print(f"-- compile: torch.compile took {time.perf_counter() - t0:.1f} s (max diff {diff:.1e})")
    lays = model.layouts(x.shape[-2], x.shape[-1], x.device)
    first = model.layers[0].residual_group.blocks
    workspace = lua.Workspace()
    # the model's blocks update their input in place: each call gets a fresh copy (a 0.3 ms copy)
    best = alternate({"plain block, eager": lambda: block(t), "plain block, torch.compile": lambda: fast(t),
                      "the model's unshifted block (+ a copy)": lambda: first[0](
                          t.clone(), lays.by_shift[first[0].shift], None, workspace),
                      "the model's shifted block (+ a copy)": lambda: first[1](
                          t.clone(), lays.by_shift[first[1].shift], None, workspace)}, 2 * repeat)
    show("compile: one Swin block", best, "plain block, eager")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=64, help="latent side (multiple of 16)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--compile", action="store_true", help="also time torch.compile of a plain block")
    ap.add_argument("--sections", default="plans,epilogue,attention,threads")
    add_log_argument(ap)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, cpu, {torch.get_num_threads()} threads, fp32, latent {args.size}^2")
    model = released_model("cpu", torch.float32)
    x = torch.randn(1, 16, args.size, args.size)
    sections = args.sections.split(",") + (["compiled"] if args.compile else [])
    with torch.inference_mode():
        for name in sections:
            if name == "compiled":
                with torch.inference_mode(False), torch.no_grad():
                    compiled(model, x, args.repeat)
                continue
            fn = {"plans": plans, "epilogue": epilogue, "threads": threads}.get(name)
            if fn is not None:
                fn(model, x, args.repeat)
            elif name == "attention":
                attention(x, args.repeat)
            else:
                raise SystemExit(f"unknown section {name!r}")


if __name__ == "__main__":
    with logged(log_path(sys.argv)):
        main()
