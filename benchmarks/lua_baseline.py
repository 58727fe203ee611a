"""The straightforward LUA forward, as the official code computes it: the speed baseline.

Same weights as ``lua_core.archs.lua.LUA`` (it reads them from that module), but every step done
the plain way: reflect pad, per block roll + window partition into (B * nW, N, C), an additive
attention bias rebuilt per block and per call (relative-position bias plus the shift mask,
repeated for every batch item), one-shot heads, torch's own convolutions. Used by the benchmarks
as the reference time and by the tests as an independent check of the optimised forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lua_core.archs.lua import LUA, SwinBlock


def _plain(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Run a conv stack with torch's own convolution (lua_core's Conv2d would use Winograd on CPU)."""
    if isinstance(module, nn.Sequential):
        for sub in module:
            x = _plain(sub, x)
        return x
    if isinstance(module, nn.Conv2d):
        return nn.Conv2d.forward(module, x)
    return module(x)


def official_shift_mask(h: int, w: int, ws: int, shift: int) -> torch.Tensor:
    """(nW, N, N) shifted-window mask for an h x w map, built the official way (9 regions)."""
    img = torch.zeros(1, h, w, 1)
    cnt = 0
    for hs in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
        for wsl in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
            img[:, hs, wsl, :] = cnt
            cnt += 1
    win = img.view(1, h // ws, ws, w // ws, ws, 1).permute(0, 1, 3, 2, 4, 5).reshape(-1, ws * ws)
    mask = win.unsqueeze(1) - win.unsqueeze(2)
    return mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)


def _block(blk: SwinBlock, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    b, n_tok, c = x.shape
    ws, s = blk.ws, blk.shift
    shortcut = x
    x = blk.norm1(x).view(b, h, w, c)
    if s:
        x = torch.roll(x, shifts=(-s, -s), dims=(1, 2))
    win = x.view(b, h // ws, ws, w // ws, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, ws * ws, c)
    attn = blk.attn
    bw, n, _ = win.shape
    qkv = attn.qkv(win).reshape(bw, n, 3, attn.num_heads, c // attn.num_heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    bias = attn.position_bias().unsqueeze(0)  # rebuilt on every call
    if s:
        mask = official_shift_mask(h, w, ws, s).to(x.device, x.dtype)  # rebuilt on every call
        bias = bias + mask.repeat(b, 1, 1).unsqueeze(1)           # repeated per batch item
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), scale=attn.scale)
    out = attn.proj(out.transpose(1, 2).reshape(bw, n, c))
    out = out.view(b, h // ws, w // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)
    if s:
        out = torch.roll(out, shifts=(s, s), dims=(1, 2))
    x = shortcut + out.reshape(b, h * w, c)
    return x + blk.mlp(blk.norm2(x))


@torch.no_grad()
def baseline_forward(model: LUA, x: torch.Tensor, head: str) -> torch.Tensor:
    """Official-algorithm forward of ``model`` (input needs sides > window_size / 2)."""
    cfg = model.config
    h0, w0 = x.shape[-2:]
    ws = cfg.window_size
    x = F.pad(x, (0, (ws - w0 % ws) % ws, 0, (ws - h0 % ws) % ws), mode="reflect")
    h, w = x.shape[-2:]
    f0 = _plain(model.conv_first, x)
    t = model.patch_embed.norm(f0.flatten(2).transpose(1, 2))
    for layer in model.layers:
        res = t
        for blk in layer.residual_group.blocks:
            t = _block(blk, t, h, w)
        img = t.transpose(1, 2).reshape(t.shape[0], -1, h, w)
        t = _plain(layer.conv, img).flatten(2).transpose(1, 2) + res
    t = model.norm(t).transpose(1, 2).reshape(x.shape[0], -1, h, w)
    feat = _plain(model.conv_after_body, t) + f0
    hd = model.heads[head]
    out = _plain(hd.conv_last, _plain(hd.upsample, _plain(hd.conv_before, feat)))
    return out[..., : h0 * hd.scale, : w0 * hd.scale]
