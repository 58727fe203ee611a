"""A straightforward SesquiLSR forward, written from the prose of PEERS.md: the yardstick for ``sesqui.py``.

Plain readable torch on the state dict itself (no nn.Modules, no caching, no in-place tricks): every layer as
the description says it, the resampler's taps rebuilt on every call and applied with a Python loop over
ranks and over the 4 taps. ``benchmarks/sesqui_speed.py`` times ``lua_core.archs.sesqui`` against it and
``tests/test_sesqui.py`` checks that the two agree.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F

EPS = 1e-6


def _conv(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """Convolution with reflection padding (k // 2 pixels), as every 3x3 and 5x5 layer of the model."""
    p = w.shape[-1] // 2
    if p:
        x = F.pad(x, (p, p, p, p), mode="reflect")
    return F.conv2d(x, w, b)


class ReferenceSesqui:
    """``forward(z, (th, tw))``: the model in its own (VAE) space, reading ``sd`` on every call."""

    def __init__(self, sd: Mapping[str, torch.Tensor]):
        self.sd = {k: v.float() for k, v in sd.items()}
        self.in_depth = len({k.split(".")[1] for k in sd if k.startswith("in_blocks.")})
        self.out_depth = len({k.split(".")[1] for k in sd if k.startswith("out_blocks.")})

    def block(self, prefix: str, x: torch.Tensor) -> torch.Tensor:
        sd = self.sd
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        var = ((x - mean) ** 2).mean(dim=(1, 2, 3), keepdim=True)
        s = torch.sqrt(var + EPS)
        y = (x - mean) / s * sd[prefix + "norm.weight"].view(1, -1, 1, 1)
        u = F.conv2d(y, sd[prefix + "up.weight"])
        g = u.shape[1] // 9
        b, _, hh, ww = u.shape
        values = F.mish(u[:, :8 * g]).view(b, g, 8, hh, ww)
        gates = torch.tanh(u[:, 8 * g:] / 2).view(b, g, 1, hh, ww)
        gated = (values * gates).view(b, 8 * g, hh, ww)  # gate k scales value channels 8k to 8k + 7
        h = _conv(F.conv2d(gated, sd[prefix + "down.weight"]), sd[prefix + "mix.weight"])
        return x + s * h

    def taps(self, n_src: int, n_tgt: int, axis: int, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(base [n_tgt] long, weights [C, n_tgt, 4]) for one axis and one rank."""
        sd = self.sd
        ratio = torch.tensor(n_src / n_tgt, dtype=torch.float32)
        t = torch.arange(n_tgt, dtype=torch.float32)
        pos = (t + 0.5) * ratio - 0.5
        base = torch.clamp(torch.floor(pos), 0, n_src - 1)
        frac = pos - base
        foot = math.log2(max(n_src / n_tgt, 0.01))
        freqs = sd["upsample.pe.freqs"]
        angle = math.pi * frac[:, None] * freqs[None, :]
        cond = torch.cat([torch.sin(angle), torch.cos(angle), torch.full((n_tgt, 1), foot),
                          sd["upsample.axis_emb.weight"][axis].expand(n_tgt, -1),
                          sd["upsample.rank_emb.weight"][rank].expand(n_tgt, -1)], dim=1)
        hidden = F.mish(F.linear(cond, sd["upsample.filter_net.0.weight"], sd["upsample.filter_net.0.bias"]))
        raw = F.linear(hidden, sd["upsample.filter_net.2.weight"], sd["upsample.filter_net.2.bias"])
        w = 0.2 * torch.tanh(raw.view(n_tgt, -1, 4))
        w = w - w.mean(dim=-1, keepdim=True)
        w = w + sd["upsample.base_taps"][rank, axis][None]
        return base.long(), w.permute(1, 0, 2)

    def resample(self, h: torch.Tensor, th: int, tw: int) -> torch.Tensor:
        sd = self.sd
        a = F.pixel_shuffle(F.conv2d(h, sd["upsample.ps_expand.weight"], sd["upsample.ps_expand.bias"]), 2)
        lift = F.pixel_shuffle(F.conv2d(h, sd["upsample.lift_expand.weight"]), 2)
        x = self.block("upsample.refine.", a + _conv(lift, sd["upsample.lift_mix.weight"]))
        n_rows, n_cols = x.shape[-2:]
        out = 0
        for rank in range(sd["upsample.rank_gain"].shape[0]):
            base_c, w_c = self.taps(n_cols, tw, 1, rank)
            cols = 0
            for k in range(4):
                idx = torch.clamp(base_c + k - 1, 0, n_cols - 1)
                cols = cols + x[:, :, :, idx] * w_c[None, :, None, :, k]
            base_r, w_r = self.taps(n_rows, th, 0, rank)
            rows = 0
            for k in range(4):
                idx = torch.clamp(base_r + k - 1, 0, n_rows - 1)
                rows = rows + cols[:, :, idx, :] * w_r[None, :, :, k, None]
            out = out + torch.sigmoid(sd["upsample.rank_gain"][rank]) * rows
        return out

    def forward(self, z: torch.Tensor, target_hw: tuple[int, int]) -> torch.Tensor:
        sd = self.sd
        th, tw = target_hw
        h = _conv(F.mish(_conv(z, sd["head_conv.0.weight"])), sd["head_conv.2.weight"], sd["head_conv.2.bias"])
        for i in range(self.in_depth):
            h = self.block(f"in_blocks.{i}.", h)
        h = self.resample(h, th, tw)
        for i in range(self.out_depth):
            h = self.block(f"out_blocks.{i}.", h)
        h = _conv(F.mish(F.conv2d(h, sd["tail_conv.0.weight"])), sd["tail_conv.2.weight"], sd["tail_conv.2.bias"])
        skip = F.interpolate(z, size=(th, tw), mode="bicubic", align_corners=False)
        return h + _conv(skip, sd["skip_conv.weight"])

    __call__ = forward
