"""The linear tail of an upsampling head, folded into one low-resolution convolution.

After its first conv + LeakyReLU, a SwinIR pixel-shuffle head is linear: (3x3 conv to r*r*C, then
PixelShuffle(r)) per step, then a 3x3 conv_last at the output size. A linear chain of
convolutions and pixel shuffles is itself a convolution at the input resolution followed by the
same pixel shuffles; here its kernel is 5x5 and it maps num_feat channels straight to
out_chans * scale^2, so the num_feat * r^2-channel intermediates at growing resolution are never
built. For the released model that is 6x (x2) and 7.6x (x4) fewer multiply-adds in the tail, and
the head's memory shrinks to about its output.

Zero padding is the one place the fold differs: the chain pads every intermediate with zeros at the
image edge, where the folded kernel sees its linear continuation instead. That only reaches the
outermost input row and column on each side (every intermediate pads one pixel, at a resolution at
least twice the input's), so ``run_folded`` recomputes that ring with the plain chain on thin strips.
The result equals the chain up to fp32 rounding (the folded kernel is built in float64, rounded once).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: input rows (and columns) at each edge whose output the folded kernel gets wrong, recomputed exactly
RING = 1


def fold_step(up_w: Tensor, up_b: Tensor | None, r: int, w: Tensor, b: Tensor | None) -> tuple[Tensor, Tensor]:
    """Fold ``conv(w, b) o PixelShuffle(r) o conv(up_w, up_b)`` into ``PixelShuffle(r) o conv(K, bias)``.

    ``up_w``: (r*r*C, C_in, ka, ka) at the low resolution, ``w``: (O, C, kb, kb) at r times it,
    both odd and same-padded. The result K: (O*r*r, C_in, k, k), symmetric and odd, with channel
    o*r*r + a*r + b the output phase (a, b) of channel o (PixelShuffle's order). In float64.
    """
    rr_c, c_in, ka, _ = up_w.shape
    c = rr_c // (r * r)
    o, c2, kb, _ = w.shape
    if c2 != c:
        raise ValueError(f"cannot fold: conv expects {c2} channels, the pixel shuffle gives {c}")
    ha, hb = ka // 2, kb // 2
    lo = (-hb) // r - ha
    hi = (r - 1 + hb) // r + ha
    half = max(-lo, hi)
    k = 2 * half + 1
    up = up_w.double().view(c, r, r, c_in, ka, ka)
    up_bias = None if up_b is None else up_b.double().view(c, r, r)
    wd = w.double()
    kernel = torch.zeros(o, r, r, c_in, k, k, dtype=torch.float64, device=w.device)
    bias = torch.zeros(o, r, r, dtype=torch.float64, device=w.device)
    if b is not None:
        bias += b.double().view(o, 1, 1)
    for a in range(r):
        for bb in range(r):
            for u in range(-hb, hb + 1):
                ya, i = divmod(a + u, r)
                for v in range(-hb, hb + 1):
                    xb, j = divmod(bb + v, r)
                    tap = wd[:, :, u + hb, v + hb]  # (O, C)
                    y0, x0 = ya - ha + half, xb - ha + half
                    kernel[:, a, bb, :, y0:y0 + ka, x0:x0 + ka] += torch.einsum("oc,cnpq->onpq", tap, up[:, i, j])
                    if up_bias is not None:
                        bias[:, a, bb] += tap @ up_bias[:, i, j]
    return kernel.reshape(o * r * r, c_in, k, k), bias.reshape(-1)


def fold(steps: list[tuple[Tensor, Tensor | None, int]], last_w: Tensor,
         last_b: Tensor | None) -> tuple[Tensor, Tensor]:
    """Fold ``conv_last o (PixelShuffle(r) o conv)`` per step (in order) into one kernel and bias,
    to be followed by the same pixel shuffles in the same order. In float64."""
    w, b = last_w.double(), None if last_b is None else last_b.double()
    for up_w, up_b, r in reversed(steps):
        w, b = fold_step(up_w, up_b, r, w, b)
    return w, b


def fold_modules(convs: list[nn.Conv2d], factors: list[int], last: nn.Conv2d) -> tuple[Tensor, Tensor]:
    """``fold`` of a head's modules, computed on the CPU in float64 (some devices have no float64)
    and returned on the weights' device and dtype."""
    def cpu(t: Tensor | None) -> Tensor | None:
        return None if t is None else t.detach().to("cpu", torch.float64)

    steps = [(cpu(m.weight), cpu(m.bias), r) for m, r in zip(convs, factors)]
    w, b = fold(steps, cpu(last.weight), cpu(last.bias))
    like = last.weight
    return w.to(like.device, like.dtype), b.to(like.device, like.dtype)


def run_folded(x: Tensor, weight: Tensor, bias: Tensor, factors: list[int], plain: nn.Module) -> Tensor:
    """The tail on x (B, C, H, W): folded conv + pixel shuffles, with the edge ring from ``plain``
    (the unfolded tail) run on strips just wide enough for it (top and bottom strips as one batch,
    left and right as another)."""
    h, w = x.shape[-2:]
    if min(h, w) <= 2 * RING:  # every output is on the ring
        return plain(x)
    half = weight.shape[-1] // 2
    out = F.conv2d(x, weight, bias, padding=half)
    for r in factors:
        out = F.pixel_shuffle(out, r)
    b = x.shape[0]
    s = out.shape[-1] // w
    strip = min(RING + half, h, w)  # input rows (columns) the ring's outputs depend on
    ring = RING * s
    rows = plain(torch.cat([x[..., :strip, :], x[..., h - strip:, :]]))
    out[..., :ring, :] = rows[:b, ..., :ring, :]
    out[..., out.shape[-2] - ring:, :] = rows[b:, ..., rows.shape[-2] - ring:, :]
    cols = plain(torch.cat([x[..., :, :strip], x[..., :, w - strip:]]))
    out[..., :, :ring] = cols[:b, ..., :ring]
    out[..., :, out.shape[-1] - ring:] = cols[b:, ..., cols.shape[-1] - ring:]
    return out
