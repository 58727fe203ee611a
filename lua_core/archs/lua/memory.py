"""LUA's memory plan: how much one forward needs, how to chunk it to fit, what inference keeps.

Why a module of its own: the node reserves memory before a forward runs (``LUA.working_memory``,
``LUA.kept_memory``) and the forward re-plans itself when the device runs out; both read these
estimates, which must follow the model's layout choices (``attention``) to stay true.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from . import attention, folded_head
from .config import LUAConfig, upsample_steps
from .windows import window_regions


@dataclass(frozen=True)
class ForwardPlan:
    """How to bound memory in one forward; None everywhere = everything at once.

    ``chunk_windows``: windows per attention/MLP step; ``head_rows``: latent rows per head band;
    ``conv_rows``: rows per band of the trunk's 3x3 convolutions.
    """

    chunk_windows: int | None = None
    head_rows: int | None = None
    conv_rows: int | None = None


def _padded(n: int, ws: int) -> int:
    return n + (ws - n % ws) % ws


def estimate_peak(cfg: LUAConfig, shape: tuple[int, ...], head: str, plan: ForwardPlan, elem: int = 4) -> int:
    """Estimated peak working memory (bytes, excluding weights) of one forward with ``plan``.

    Counts the tensors alive at the widest point of each phase: the trunk keeps the shallow
    features, the group residual and two token buffers (a gather reads one, writes the other);
    a window chunk adds norm/qkv/attention/MLP temporaries; a head band holds conv_before's output,
    the folded tail's output and its pixel-shuffled copies, and the released chain run on two
    strips of the edge ring (one batch), next to the growing output. Convolutions count their
    output twice: CPU (oneDNN) convolutions compute in a blocked layout and reorder, which measured
    peaks (benchmarks/lua_speed.py memory) show.
    """
    b, _, h, w = shape
    ws = cfg.window_size
    hp, wp = _padded(h, ws), _padded(w, ws)
    e = cfg.embed_dim
    hidden = int(e * cfg.mlp_ratio)
    tokens = b * hp * wp
    n = cfg.ws_eff ** 2
    trunk = 5 * tokens * e
    chunk_tokens = tokens if plan.chunk_windows is None else min(tokens, plan.chunk_windows * n)
    heads_max = max(cfg.num_heads)
    window = chunk_tokens * max(8 * e, 2 * hidden + 3 * e) + (chunk_tokens // n) * heads_max * n * n // 8
    hc = cfg.head(head)
    nf = hc.num_feat or cfg.head_num_feat
    s = hc.scale
    halo = 2 + len(upsample_steps(s))
    rows = h if plan.head_rows is None else min(h, plan.head_rows)
    band_rows = min(hp, rows + 2 * halo)
    # inference folds the head's tail (folded_head): conv_before's output and the folded conv's
    # output (plus its pixel-shuffled copies) over the band, next to the released chain on a strip
    # of the edge ring (its widest conv's input and output, pixel-shuffled copy)
    strip = folded_head.RING + 2
    band = b * band_rows * wp * (2 * nf + 3 * hc.out_chans * s * s) + \
        2 * b * strip * max(wp, band_rows) * nf * s * s * 13 // 4  # two strips run as one batch
    out = 2 * b * hc.out_chans * (h * s) * (w * s)
    head_phase = tokens * e + band + out
    return int(elem * max(trunk + window, trunk + 3 * tokens * e, head_phase))


def bias_cache_bytes(cfg: LUAConfig, elem: int = 4, masked: bool = False) -> int:
    """Bytes of the attention biases inference keeps per model (``SwinBlock.region_biases``):
    each block's (heads, N, N) position bias, plus in shifted blocks its mask regions' biases
    (``masked``: one full masked bias per window kind, see ``mask_in_bias``), each padded to a
    multiple of 16 elements."""
    ws, shift = cfg.ws_eff, cfg.shift
    total = 0
    for depth, heads in zip(cfg.depths, cfg.num_heads):
        full = attention.aligned(heads * ws ** 4)
        if masked:
            shifted = 4 * full if shift else full
        else:
            shifted = full + sum(attention.aligned(heads * (b - a) ** 2)
                                 for kind in ((False, True), (True, False), (True, True))
                                 for a, b in window_regions(ws, shift, *kind)[1]) if shift else full
        n_shifted = depth // 2
        total += (depth - n_shifted) * full + n_shifted * shifted
    return total * elem


def kept_bytes(cfg: LUAConfig, elem: int = 4, device: torch.device | str = "cpu") -> int:
    """Bytes inference keeps per model on ``device`` beyond its weights: the attention biases
    (``bias_cache_bytes``) and each block's ``AttentionWeights`` (its bias vectors; where the head
    dim is padded, ``PAD_HEAD_DIM_ON``, padded copies of qkv and proj too)."""
    total = bias_cache_bytes(cfg, elem, masked=attention.mask_in_bias(device))
    e = cfg.embed_dim
    for depth, heads in zip(cfg.depths, cfg.num_heads):
        pad = attention.head_dim_pad(e // heads, device)
        hp = e // heads + pad
        # q bias vector and folded proj bias (proj's own bias when there is no qkv bias), and
        # padded weight copies only where a padding happens
        per_block = (3 * heads * hp + e if cfg.qkv_bias else 0) + (4 * heads * hp * e if pad else 0)
        total += depth * elem * per_block
    return total


def plan_forward(cfg: LUAConfig, shape: tuple[int, ...], head: str, max_memory: int | None,
                 elem: int = 4) -> ForwardPlan:
    """The least-chunked plan whose estimated peak fits ``max_memory`` (None: no bound).

    Chunks only shrink where they must: first the head bands (where x4 spends its memory), then
    the window chunks. If even the smallest plan does not fit, the smallest is returned (the trunk's
    feature maps cannot be chunked without changing the result: that is what ``tile`` is for).
    """
    one_shot = ForwardPlan()
    if max_memory is None or estimate_peak(cfg, shape, head, one_shot, elem) <= max_memory:
        return one_shot
    b, _, h, w = shape
    ws = cfg.window_size
    n_windows = b * (_padded(h, ws) // cfg.ws_eff) * (_padded(w, ws) // cfg.ws_eff)
    rows = h
    plan = ForwardPlan(chunk_windows=n_windows, head_rows=rows, conv_rows=None)
    while rows > 1 and estimate_peak(cfg, shape, head, plan, elem) > max_memory:
        rows = max(1, rows // 2)
        plan = replace(plan, head_rows=rows)
    cw = n_windows
    while cw > 1 and estimate_peak(cfg, shape, head, plan, elem) > max_memory:
        cw = max(1, cw // 2)
        plan = replace(plan, chunk_windows=cw)
    if estimate_peak(cfg, shape, head, plan, elem) > max_memory:
        plan = replace(plan, conv_rows=max(1, min(h, 4 * ws)))
    return plan
