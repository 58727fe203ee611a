"""Winograd 3x3 convolution for CPU fp32 (stride 1, zero padding 1), in pure torch.

Direct convolution already runs at the GEMM peak on CPU, so the only way to go faster is to do
fewer multiplies. Winograd F(m x m, 3 x 3) turns each m x m output tile into alpha^2 = (m + 2)^2
independent channel GEMMs instead of 9 m^2 multiply-accumulates per channel pair:

* F(2x2, 3x3), the default: 16 / 36 of the multiplies (1.4-1.7x faster than oneDNN's
  channels-last conv on 2 cores for 360 -> 360, 360 -> 256, 256 -> 1024 at 32-128 px); its
  transforms hold only 0, +-1 and 1/2, and its max error is 0.2-0.4x that of channels-last F.conv2d;
* F(3x3, 3x3) is not offered: 25 / 81 of the multiplies, but with the points 0, +-1, +-1/2 or +-2
  its max error is 2.2-3.8x that of channels-last F.conv2d (360 -> 360, 360 -> 256, 256 -> 1024,
  weights N(0, 0.02) and N(0, 0.05));
* F(4x4, 3x3), opt-in via ``transform_weight(w, tile=4)``: 36 / 144 of the multiplies (~2.1x faster),
  but the Winograd-domain sums are ~50x larger than the outputs, so fp32 GEMM rounding gives 2-3x
  the error of channels-last F.conv2d (and ~15x that of NCHW F.conv2d), even with the better points.

The transforms are memory-bound elementwise passes (~30% of the time at 360 -> 360) whose cost
grows with C_in + C_out, so with few channels the direct conv wins: ``worthwhile`` says where
(16 -> 360 and 256 -> 16 at 128x128 run 2-4x slower as Winograd).

Layout: everything is NHWC (channels innermost), so every transform step is an add/sub of strided
slices whose inner dimension is a contiguous run of channels, and the products are plain batched
GEMMs ``(alpha^2, tiles, C_in) @ (alpha^2, C_in, C_out)``. The image is processed in blocks of
about 192 tiles (at least 12 tile rows tall where the image has them, so few halo rows are
transformed twice) so the transformed buffers stay a few MB whatever the image size; the first
transform stage reads the image directly (only the edge tile columns go through a small
zero-padded copy), and every block's output tiles are written straight into the channels-last output.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

__all__ = ["conv3x3", "transform_weight", "supports", "worthwhile"]

# Interpolation points by output tile size m (the point inf is implied). For F(4, 3) the asymmetric
# set 0, +-1, 1/2, -2 is markedly more accurate than the textbook 0, +-1, +-2 (Barabasz et al. 2020),
# and all its A^T and B^T entries are still exact in binary.
_POINTS: dict[int, tuple[float, ...]] = {2: (0.0, 1.0, -1.0), 4: (0.0, 1.0, -1.0, 0.5, -2.0)}
TILE = 2  # the output tile size used by default (see the module docstring and the benchmark)
_BAND_TILES = 192  # GEMM rows (tiles) per block: enough for GEMM efficiency, few enough to stay cached
_MIN_BLOCK_ROWS = 12  # tile rows per block at least (where the image has them): fewer recomputed halo rows
# Winograd beats oneDNN only where the GEMMs dominate its transforms, whose cost grows with
# C_in + C_out while the GEMMs' grows with C_in * C_out (2 cores, 64x64: 1.0x at C_in C_out / (C_in +
# C_out) = 76, 0.77x at 64, 1.37x at 128; 0.3-0.45x for 16 -> 360 and 256 -> 16 at 128x128).
_MIN_REDUCED_CHANNELS = 80


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


def worthwhile(cin: int, cout: int) -> bool:
    """Whether conv3x3 is faster than oneDNN's direct conv for these channel counts on CPU.

    The rule: C_in * C_out >= 80 * (C_in + C_out) (e.g. 360 -> 360, 360 -> 256, 256 -> 1024, 128 -> 256
    qualify; 16 -> 360, 256 -> 16, 128 -> 128, 96 -> 360 do not).
    """
    return cin * cout >= _MIN_REDUCED_CHANNELS * (cin + cout)


def supports(x: Tensor, weight: Tensor) -> bool:
    """Whether conv3x3 is the right tool: CPU fp32, no autograd recording (the transforms write in
    place and nothing here is differentiable), no autocast, and channel counts where it is faster
    than the direct conv (``worthwhile``)."""
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and x.dim() == 4
        and weight.dim() == 4
        and weight.shape[-2:] == (3, 3)
        and worthwhile(weight.shape[1], weight.shape[0])
        and not torch.is_grad_enabled()
        and not torch.is_autocast_enabled("cpu")
    )


def _blocks(th: int, tw: int) -> tuple[int, int]:
    """Tile rows and columns per block: about ``_BAND_TILES`` tiles, as tall as the image allows.

    Each block's input transform recomputes two halo rows, so tall narrow blocks waste less than
    full-width bands on wide images; the column split is even so no block is a sliver.
    """
    rows = min(th, max(_MIN_BLOCK_ROWS, _BAND_TILES // tw))
    rows = -(-th // -(-th // rows))  # even split of the tile rows
    cols = min(tw, max(1, _BAND_TILES // rows))
    cols = -(-tw // -(-tw // cols))
    return rows, cols


def conv3x3(x: Tensor, weight: Tensor, bias: Tensor | None, transformed: Tensor | None = None) -> Tensor:
    """``F.conv2d(x, weight, bias, padding=1)`` for 3x3 filters, by Winograd F(m x m, 3 x 3).

    ``x`` is (B, C_in, H, W) in any memory format (an NCHW view of channels-last memory costs no
    copy; other layouts are copied to channels-last first). The result is (B, C_out, H, W) in
    channels-last memory. ``transformed`` is ``transform_weight(weight)``, which callers should
    cache. Partial tiles at the bottom/right edges are computed as if zero-padded and cropped, which
    is exact.
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

    xh = x.permute(0, 2, 3, 1)  # NHWC view (free for channels-last memory)
    if xh.stride(-1) != 1:
        xh = xh.contiguous()
    out = torch.empty(n, h, w, cout, dtype=x.dtype, device=x.device)
    th, tw = -(-h // m), -(-w // m)  # tiles per column / row
    thb, twb = _blocks(th, tw)
    # Tile column j reads image columns m*j - 1 .. m*j + m; all of them exist for j in [1, j_end).
    j_end = max(1, (w - 1 - m) // m + 1)

    # Workspace: the input side (first transform stage, edge columns) and the output side's first
    # stage are never live together, so they share memory.
    t1_n = alpha * (thb * m + 2) * twb * cin
    edge_n = (thb * m + 2) * 2 * alpha * cin
    s_n = m * alpha * thb * twb * cout
    a_n = max(t1_n + edge_n, s_n)
    v_n, mm_n = alpha2 * thb * twb * cin, alpha2 * thb * twb * cout
    crop_n = thb * m * twb * m * cout if (h % m or w % m) else 0
    ws = torch.empty(a_n + v_n + mm_n + crop_n, dtype=x.dtype, device=x.device)
    v_flat, mm_flat = ws[a_n : a_n + v_n], ws[a_n + v_n : a_n + v_n + mm_n]
    crop_flat = ws[a_n + v_n + mm_n :]

    bias_k = alpha + 1  # point 1 in both directions: A^T maps it to all ones, so bias lands on every pixel

    for b in range(n):
        for i0 in range(0, th, thb):
            nr = min(thb, th - i0)  # tile rows in this block
            rp = nr * m + 2  # input rows it reads
            r0 = i0 * m - 1  # image row of its first input row
            lo, hi = max(r0, 0), min(r0 + rp, h)
            xr = xh[b, lo:hi]
            for j0 in range(0, tw, twb):
                nc = min(twb, tw - j0)
                tiles = nr * nc
                t1 = ws[: alpha * rp * nc * cin].view(alpha, rp, nc, cin)
                # Input transform along W straight from the image, rows outside it are zero.
                if lo > r0:
                    t1[:, : lo - r0].zero_()
                if hi < r0 + rp:
                    t1[:, hi - r0 :].zero_()
                rows = t1[:, lo - r0 : hi - r0]
                ja, jb = max(j0, 1), min(j0 + nc, j_end)  # interior tile columns
                edges = [(j0, ja), (jb, j0 + nc)] if ja < jb else [(j0, j0 + nc)]
                if ja < jb:
                    span = m * (jb - ja - 1) + 1
                    c0 = m * ja - 1
                    _combine(mat_b, [xr[:, c0 + k : c0 + k + span : m] for k in range(alpha)],
                             list(rows[:, :, ja - j0 : jb - j0]))
                for ea, eb in edges:  # the (at most two) tile columns at the image's left/right edges
                    if ea >= eb:
                        continue
                    ne = eb - ea
                    e = ws[t1_n : t1_n + (hi - lo) * ne * alpha * cin].view(hi - lo, ne, alpha, cin)
                    e.zero_()
                    for t in range(ne):
                        c_lo, c_hi = m * (ea + t) - 1, m * (ea + t) + m + 1
                        e[:, t, max(0, -c_lo) : alpha - max(0, c_hi - w)].copy_(xr[:, max(c_lo, 0) : min(c_hi, w)])
                    _combine(mat_b, [e[:, :, k] for k in range(alpha)], list(rows[:, :, ea - j0 : eb - j0]))

                # Along H (all column points at once), into v; the products; the bias.
                span = m * (nr - 1) + 1
                v = v_flat[: alpha2 * tiles * cin].view(alpha2, tiles, cin)
                _combine(mat_b, [t1[:, k : k + span : m] for k in range(alpha)],
                         list(v.view(alpha, alpha, nr, nc, cin)))
                mm = mm_flat[: alpha2 * tiles * cout].view(alpha2, tiles, cout)
                torch.bmm(v, u, out=mm)
                if bias is not None:
                    mm[bias_k].add_(bias)

                # Output transform along the tile's columns, then rows straight into the output.
                s = ws[: m * alpha * tiles * cout].view(m, alpha, nr, nc, cout)
                _combine(mat_a, list(mm.view(alpha, alpha, nr, nc, cout).unbind(1)), list(s))
                ys = list(s.unbind(1))
                y0, x0 = i0 * m, j0 * m
                ny, nx = min(nr * m, h - y0), min(nc * m, w - x0)
                if ny == nr * m and nx == nc * m:
                    dst = out[b, y0 : y0 + ny, x0 : x0 + nx]
                else:
                    dst = crop_flat[: nr * m * nc * m * cout].view(nr * m, nc * m, cout)
                d5 = dst.unflatten(1, (nc, m)).unflatten(0, (nr, m))  # (nr, m, nc, m, cout)
                _combine(mat_a, ys, [d5[:, a].permute(2, 0, 1, 3) for a in range(m)])
                if ny != nr * m or nx != nc * m:
                    out[b, y0 : y0 + ny, x0 : x0 + nx].copy_(dst[:ny, :nx])
    return out.permute(0, 3, 1, 2)
