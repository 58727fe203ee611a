"""Overlapping tiles with feathered blending: the last resort when even the trunk does not fit.

Not exact for LUA: its Swin trunk sees the whole latent, so a tile's output depends on what lies
outside it (the benchmark prints the measured difference). The chunked forward
(``lua_core.archs.lua.plan_forward``) is exact and is always tried first; tiles only bound the
memory of the trunk's feature maps, which the chunked forward cannot split.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def tile_starts(length: int, tile: int, overlap: int, align: int = 1) -> list[int]:
    """Start offsets of tiles covering [0, length): stride tile - overlap, aligned down to ``align``,
    the last tile flush with the end."""
    if tile >= length:
        return [0]
    stride = max(align, ((tile - overlap) // align) * align)
    starts = list(range(0, length - tile, stride))
    last = length - tile
    if not starts or starts[-1] != last:
        starts.append(last)
    return starts


def _ramp(n: int, before: int, after: int, scale: int) -> torch.Tensor:
    """1-D blending weight of a tile: linear ramps over the overlaps it shares, 1 elsewhere."""
    w = torch.ones(n * scale)
    for width, flip in ((before, False), (after, True)):
        k = width * scale
        if k > 0:
            r = (torch.arange(k, dtype=torch.float32) + 0.5) / k
            if flip:
                w[-k:] = torch.minimum(w[-k:], r.flip(0))
            else:
                w[:k] = torch.minimum(w[:k], r)
    return w


def tiled_upscale(fn: Callable[[torch.Tensor], torch.Tensor], latent: torch.Tensor, scale: int,
                  tile: int, overlap: int | None = None, align: int = 1,
                  progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """Run ``fn`` (an integer-scale upscale) over overlapping tiles and blend the outputs.

    ``tile`` and ``overlap`` are latent pixels; tiles are aligned to ``align`` (the model's window,
    so tile windows coincide with the whole latent's) and span at least two of them. One tile
    covering the latent is exactly ``fn(latent)``. Deterministic: tiles run and accumulate in a fixed order.
    """
    b, c, h, w = latent.shape
    # at least two aligned steps per tile: with one, no aligned stride is shorter than the tile and
    # the tiles could not overlap (hard seams)
    tile = max(2 * align, (tile // align) * align)
    if overlap is None:
        overlap = max(align, ((tile // 4) // align) * align)
    overlap = min(overlap, tile - 1) if tile > 1 else 0
    ys, xs = tile_starts(h, tile, overlap, align), tile_starts(w, tile, overlap, align)
    if len(ys) == 1 and len(xs) == 1:
        return fn(latent)
    th, tw = min(tile, h), min(tile, w)
    out = None
    weight = torch.zeros(1, 1, h * scale, w * scale, device=latent.device, dtype=torch.float32)
    total, done = len(ys) * len(xs), 0
    for i, y in enumerate(ys):
        before_y = ys[i - 1] + th - y if i > 0 else 0
        after_y = y + th - ys[i + 1] if i + 1 < len(ys) else 0
        wy = _ramp(th, before_y, after_y, scale)
        for j, x in enumerate(xs):
            before_x = xs[j - 1] + tw - x if j > 0 else 0
            after_x = x + tw - xs[j + 1] if j + 1 < len(xs) else 0
            wx = _ramp(tw, before_x, after_x, scale)
            part = fn(latent[..., y:y + th, x:x + tw]).float()
            if out is None:
                out = torch.zeros(b, part.shape[1], h * scale, w * scale, device=latent.device)
            wt = (wy[:, None] * wx[None, :]).to(latent.device)
            sy, sx = slice(y * scale, (y + th) * scale), slice(x * scale, (x + tw) * scale)
            out[..., sy, sx] += part * wt
            weight[..., sy, sx] += wt
            done += 1
            if progress is not None:
                progress(done, total)
    return (out / weight).to(latent.dtype)
