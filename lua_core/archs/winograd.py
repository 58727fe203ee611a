"""Winograd 3x3 convolution for CPU fp32 (stride 1, zero padding 1), in pure torch.

Direct convolution already runs at the GEMM peak on CPU, so the only way to go faster is to do
fewer multiplies. Winograd F(m x m, 3 x 3) turns each m x m output tile into alpha^2 = (m + 2)^2
independent channel GEMMs instead of 9 m^2 multiply-accumulates per channel pair:

* F(2x2, 3x3), the default: 16 / 36 of the multiplies (~1.55x faster than oneDNN on 2 cores); its
  transforms hold only 0, +-1 and 1/2, and its max error is ~0.35x that of channels-last F.conv2d;
* F(4x4, 3x3), opt-in via ``transform_weight(w, tile=4)``: 36 / 144 of the multiplies (~2.1x faster),
  but the Winograd-domain sums are ~50x larger than the outputs, so fp32 GEMM rounding gives 2-3x
  the error of channels-last F.conv2d (and ~15x that of NCHW F.conv2d), even with the better points.

Layout: everything is NHWC (channels innermost), so every transform step is an add/sub of strided
slices whose inner dimension is a contiguous run of channels, and the products are plain batched
GEMMs ``(alpha^2, tiles, C_in) @ (alpha^2, C_in, C_out)``. The image is processed in bands of
tile rows so the transformed buffers stay a few MB (cache-resident) whatever the image size, and
every band's output tiles are written straight into the channels-last output.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

__all__ = ["conv3x3", "transform_weight", "supports"]

# Interpolation points by output tile size m (the point inf is implied). For F(4, 3) the asymmetric
# set 0, +-1, 1/2, -2 is markedly more accurate than the textbook 0, +-1, +-2 (Barabasz et al. 2020),
# and all its A^T and B^T entries are still exact in binary.
_POINTS: dict[int, tuple[float, ...]] = {2: (0.0, 1.0, -1.0), 4: (0.0, 1.0, -1.0, 0.5, -2.0)}
TILE = 2  # the output tile size used by default (see the module docstring and the benchmark)
_BAND_TILES = 128  # GEMM rows (tiles) per band: enough for GEMM efficiency, few enough to stay cached


@functools.cache
def _matrices(m: int) -> tuple[Tensor, Tensor, Tensor]:
    """Cook-Toom (A^T, G, B^T) in float64 for F(m, 3).

    A^T[i, k] = a_k^i and G[k] = (1, a_k, a_k^2) / prod_{l != k} (a_k - a_l), plus the point inf; B^T
    is the unique matrix with sum_k A^T[i, k] G[k, j] B^T[k, l] = [l == i + j] (the m outputs of a
    valid 3-tap correlation), found by a linear solve and snapped to the exact binary values it has.
    """
    points = _POINTS[m]
    alpha = m + 2
    at = torch.zeros(m, alpha, dtype=torch.float64)
    g = torch.zeros(alpha, 3, dtype=torch.float64)
    for k, a in enumerate(points):
        at[:, k] = torch.tensor([a**i for i in range(m)], dtype=torch.float64)
        g[k] = torch.tensor([1.0, a, a * a], dtype=torch.float64) / math.prod(a - b for b in points if b != a)
    at[m - 1, alpha - 1] = 1.0
    g[alpha - 1, 2] = 1.0
    lhs = torch.stack([at[i] * g[:, j] for i in range(m) for j in range(3)])  # (3m, alpha)
    rhs = torch.zeros(3 * m, alpha, dtype=torch.float64)
    for i in range(m):
        for j in range(3):
            rhs[3 * i + j, i + j] = 1.0
    bt = torch.linalg.solve(lhs.T @ lhs, lhs.T @ rhs)
    bt = torch.round(bt * 1024) / 1024  # the entries are multiples of 1/8; drop the solver's noise
    if m == 2:  # x0 - x2 rather than x2 - x0: no negation pass
        bt[0], g[0] = -bt[0], -g[0]
    return at, g, bt


def _combine(mat: Tensor, xs: list[Tensor], outs: list[Tensor]) -> None:
    """outs[r] = sum_k mat[r, k] * xs[k] over strided views, one elementwise pass per extra term."""
    for r, o in enumerate(outs):
        terms = [(k, c) for k, c in enumerate(mat[r].tolist()) if c != 0.0]
        terms.sort(key=lambda t: t[1] != 1.0)  # a unit coefficient first saves a multiply pass
        (k0, c0), rest = terms[0], terms[1:]
        if not rest:
            torch.mul(xs[k0], c0, out=o)
        elif c0 == 1.0:
            torch.add(xs[k0], xs[rest[0][0]], alpha=rest[0][1], out=o)
            rest = rest[1:]
        else:
            torch.mul(xs[k0], c0, out=o)
        for k, c in rest:
            o.add_(xs[k], alpha=c)


def transform_weight(weight: Tensor, tile: int = TILE) -> Tensor:
    """Filter transform U = G g G^T as ``(alpha^2, C_in, C_out)`` (cache it once per module).

    Computed in float64 and rounded once, so the filter side adds a single rounding per entry.
    """
    if weight.dim() != 4 or weight.shape[-2:] != (3, 3):
        raise ValueError(f"expected a (C_out, C_in, 3, 3) weight, got {tuple(weight.shape)}")
    if tile not in _POINTS:
        raise ValueError(f"tile must be one of {sorted(_POINTS)}, got {tile}")
    g = _matrices(tile)[1].to(weight.device)
    u = torch.einsum("ak,oikl,bl->abio", g, weight.double(), g)
    alpha = tile + 2
    return u.reshape(alpha * alpha, weight.shape[1], weight.shape[0]).to(weight.dtype).contiguous()


def supports(x: Tensor, weight: Tensor) -> bool:
    """Whether conv3x3 is the right tool: CPU fp32, no autograd (the transforms write in place)."""
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and x.dim() == 4
        and weight.dim() == 4
        and weight.shape[-2:] == (3, 3)
        and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
    )


def conv3x3(x: Tensor, weight: Tensor, bias: Tensor | None, transformed: Tensor | None = None) -> Tensor:
    """``F.conv2d(x, weight, bias, padding=1)`` for 3x3 filters, by Winograd F(m x m, 3 x 3).

    ``x`` is (B, C_in, H, W) in any memory format (an NCHW view of channels-last memory costs no
    copy). The result is (B, C_out, H, W) in channels-last memory. ``transformed`` is
    ``transform_weight(weight)``, which callers should cache. Odd sizes are zero-padded up to
    whole tiles and cropped, which is exact.
    """
    n, cin, h, w = x.shape
    if weight.shape[1] != cin:
        raise ValueError(f"weight expects {weight.shape[1]} input channels, got {cin}")
    cout = weight.shape[0]
    u = transform_weight(weight) if transformed is None else transformed
    alpha2 = u.shape[0]
    alpha = math.isqrt(alpha2)
    m = alpha - 2
    if alpha * alpha != alpha2 or m not in _POINTS or u.shape[1:] != (cin, cout):
        raise ValueError(f"transformed weight of shape {tuple(u.shape)} does not match {tuple(weight.shape)}")
    mat_a, _, mat_b = _matrices(m)

    th, tw = -(-h // m), -(-w // m)  # tiles per column / row
    wp = tw * m + 2  # padded band width
    nb = max(1, -(-th // max(1, _BAND_TILES // tw)))  # bands per image
    thb = -(-th // nb)  # tile rows per band
    rp = thb * m + 2  # padded band height
    tiles = thb * tw
    opts = {"dtype": x.dtype, "device": x.device}

    out = torch.empty(n, h, w, cout, **opts)
    xh = x.permute(0, 2, 3, 1)  # NHWC view (free for channels-last memory)

    # Workspace, a few MB: the input side (padded band, first transform stage) and the output side's
    # first stage are never live together, so they share memory.
    in_side = rp * wp * cin + alpha * rp * tw * cin
    out_side = m * alpha * tiles * cout
    shared = torch.empty(max(in_side, out_side), **opts)
    pad = shared[: rp * wp * cin].view(rp, wp, cin)
    t1 = shared[rp * wp * cin : in_side].view(alpha, rp, tw, cin)
    s = shared[:out_side].view(m, alpha, thb, tw, cout)
    v = torch.empty(alpha2, tiles, cin, **opts)
    mm = torch.empty(alpha2, tiles, cout, **opts)
    full = w % m == 0
    crop = None if full and h % m == 0 else torch.empty(thb * m, tw * m, cout, **opts)

    bias_k = alpha + 1  # point 1 in both directions: A^T maps it to all ones, so bias lands on every pixel

    for b in range(n):
        for band in range(nb):
            i0 = band * thb  # first tile row
            nrows = min(thb, th - i0)
            if nrows <= 0:
                break
            r0 = i0 * m - 1  # image row of pad[0]
            lo, hi = max(r0, 0), min(r0 + rp, h)
            pad[:, 0].zero_()  # the borders, every band: the output side reuses this memory
            pad[:, w + 1 :].zero_()
            if lo > r0:
                pad[: lo - r0].zero_()
            if hi < r0 + rp:
                pad[hi - r0 :].zero_()
            pad[lo - r0 : hi - r0, 1 : w + 1].copy_(xh[b, lo:hi])

            # Input transform along W, then along H (all column points at once), into v.
            span = m * (tw - 1) + 1
            _combine(mat_b, [pad[:, k : k + span : m] for k in range(alpha)], list(t1))
            span = m * (thb - 1) + 1
            vv = v.view(alpha, alpha, thb, tw, cin)
            _combine(mat_b, [t1[:, k : k + span : m] for k in range(alpha)], list(vv))

            torch.bmm(v, u, out=mm)
            if bias is not None:
                mm[bias_k].add_(bias)

            # Output transform along the tile's columns, then rows straight into the output.
            mv = mm.view(alpha, alpha, thb, tw, cout)
            _combine(mat_a, [mv[:, k] for k in range(alpha)], list(s))
            ys = [s[:, k, :nrows] for k in range(alpha)]
            rows = min(nrows * m, h - i0 * m)
            if full and rows == nrows * m:
                dst = out[b, i0 * m : i0 * m + rows].view(nrows, m, tw, m, cout)
                _combine(mat_a, ys, [dst[:, a].permute(2, 0, 1, 3) for a in range(m)])
            else:
                dst = crop[: nrows * m].view(nrows, m, tw, m, cout)
                _combine(mat_a, ys, [dst[:, a].permute(2, 0, 1, 3) for a in range(m)])
                out[b, i0 * m : i0 * m + rows].copy_(crop[:rows, :w])
    return out.permute(0, 3, 1, 2)
