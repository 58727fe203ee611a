"""SesquiLSR (LoganBooker/SesquiLSR, MIT): one ~3M-parameter latent upscaler per VAE family, any scale in [1, 2].

Released as ``models/upscaler_{SDXL,Flux,Flux2,Wan21}.safetensors`` (flat fp32 state dicts: width 128, 8 gated
blocks before the resampler and 6 after). The network works in the VAE's own latent space; ``upscale`` takes
and returns raw ComfyUI LATENTs and puts the node's adaptor around it (``output = from_vae(model(to_vae(z),
vae_target))``): SDXL ``z * 0.13025``, Flux ``(z - 0.1159) * 0.3611``, Flux2 the Flux.2 VAE's batch norm undone
and the 128-channel packed latent unpacked 2x2 to 32 channels at twice the size, Wan 2.1 as is.

Every size is read from the tensor shapes (``infer_config``). The weights cannot say which latents a 16-channel
file is for (Flux and Wan 2.1 files have the same shapes), so the latent format of a file is resolved, in order:

1. ``latent_format`` in the config saved in the header of a file written by this pack (``config_dict``);
2. the released file name: a stem containing ``upscaler_SDXL``, ``upscaler_Flux``, ``upscaler_Flux2`` or
   ``upscaler_Wan21`` (any case, ``_``/``-``/space or nothing between the words) as a whole word, so copies
   such as ``upscaler_Flux (1).safetensors``, ``upscaler_Flux.fp16.safetensors`` or
   ``SesquiLSR-upscaler_Wan21.safetensors`` keep their format, while ``upscaler_Fluxy`` does not match;
3. the channel count when it is unambiguous: 4 -> SDXL, 32 -> Flux2;
4. otherwise unknown: each ``upscale`` call must then pass ``latent_format`` ("flux" or "wan21").

A format that contradicts the channel count is refused, as is an ``upscale(latent_format=...)`` that
contradicts the file's own format.

The scale must be in [1, 2] (the node's widget range); 1.0 runs the model too. 5-D (video) LATENTs are the
caller's to split into frames; ``resize_noise_mask`` is the node's mask handling (nearest, to the output size).

Speed without changing the numbers (``benchmarks/sesqui_speed.py`` against the plain
``benchmarks/sesqui_reference.py``): the resampler's taps depend on the sizes and the weights but not on the
batch, so for each (source size, target size) they are computed once and kept as banded matrices, which turn
the separable 4-tap filtering of both ranks into two per-channel matmuls per tile; activations are stored
channels-last, so the 3x3 convolutions run in oneDNN's fast layout and the 1x1 layers are plain matmuls over
positions (the norm weight folded into ``up``); activations and residual adds run in place. Nothing is cached
or overwritten in place while autograd is recording (grad mode on and a parameter or the input requiring
grad), so the module also trains.
"""

from __future__ import annotations

import math
import numbers
import re
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import LuaError
from ..latent_formats import LATENT_SPACES
from ..latent_formats import format_name as latent_format_name
from ..scales import Scales
from . import family_by_name
from .base import LatentUpscaler, StateDict, load_exact

EPS = 1e-6  # the gated block's layer norm
TAPS = 4  # resampler taps per axis: offsets -1, 0, 1, 2 around floor(pos)
AXES = 2  # rows, columns
#: resampler targets per banded matmul; an axis with at most TILE_MAX targets is done in one (dense) matmul
TILE, TILE_MAX = 64, 128
PLAN_CACHE = 4  # (size, target) plans kept per module

# --------------------------------------------------------------------------------------------
# Latent formats and the node's adaptors
# --------------------------------------------------------------------------------------------

#: the node's model formats, as the registry entry lists them
FORMATS = family_by_name("sesqui").formats
#: channels of the model file for each format (what head_conv.0 takes)
FILE_CHANNELS = {"sdxl": 4, "flux": 16, "flux2": 32, "wan21": 16}
LABELS = {f: LATENT_SPACES[f].label for f in FORMATS}
_BY_CHANNELS = {4: "sdxl", 32: "flux2"}  # 16 is Flux or Wan 2.1: the weights cannot tell
_NAME_FORMAT = re.compile(r"(?:^|[^a-z0-9])upscaler[_\- ]?(sdxl|flux2|flux|wan21)(?![a-z0-9])", re.IGNORECASE)

# The Flux.2 VAE's latent batch norm (running mean and variance of its 128 packed channels, eps 1e-4), which
# ComfyUI's Flux2 LATENTs are normalised by; the numbers are the ones the SesquiLSR node uses, as listed in
# tests/data/peers/sesqui_flux2/manifest.json ("adaptor_constants").
FLUX2_BN_MEAN = (
    -0.06762, -0.07152, -0.07534, -0.07449, 0.02228, 0.018, 0.0142, 0.01836, -6e-05, -0.00625, -0.00021, -0.00314,
    -0.0272, -0.02811, -0.02765, -0.02903, -0.07689, -0.06717, -0.09019, -0.08921, 0.01684, 0.01521, 0.0079,
    0.00858, 0.00835, 0.00154, 0.00026, -0.00428, -0.04388, -0.0419, -0.04378, -0.04315, -0.01025, -0.01319,
    -0.00662, -0.00477, -0.03106, -0.03055, -0.0279, -0.01795, 0.00302, 0.0015, 0.01259, 0.01447, 0.03472, 0.03377,
    0.03366, 0.0283, 0.00198, 0.00473, 0.00465, 0.00496, 0.01227, 0.0081, 0.00806, 0.01458, 0.06811, 0.0679,
    0.07665, 0.07319, -0.04621, -0.04739, -0.03919, -0.05109, -0.05278, -0.04774, -0.047, -0.05172, -0.03171,
    -0.03163, -0.03447, -0.02826, 0.05097, 0.0445, 0.05781, 0.0458, -0.04116, -0.04583, -0.04874, -0.04674,
    -0.00884, -0.01063, -0.00881, -0.00461, -0.03758, -0.04322, -0.04357, -0.04989, 0.01185, 0.01664, 0.02028,
    0.0279, 0.01127, 0.0129, 0.00156, 0.00716, -0.0118, -0.00184, -0.01414, -0.00537, -0.0091, -0.0138, -0.01447,
    -0.0187, 0.03225, 0.0305, 0.02587, 0.02996, 0.054, 0.06144, 0.04954, 0.05899, -0.05108, -0.06033, -0.04778,
    -0.0524, -0.02268, -0.02742, -0.01537, -0.02546, -0.05721, -0.05648, -0.05176, -0.04956, 0.01159, 0.00542,
    0.0163, 0.01038,
)
FLUX2_BN_VAR = (
    3.25021, 3.16341, 3.19243, 3.18137, 3.13891, 3.09414, 3.10118, 3.05509, 3.00518, 3.01795, 3.00676, 3.00764,
    3.46902, 3.43252, 3.47023, 3.45539, 3.09498, 3.07138, 3.08192, 3.09134, 3.01471, 3.02746, 3.01199, 3.02529,
    3.00746, 2.97413, 3.02488, 2.99405, 3.08042, 3.06691, 3.08315, 3.05815, 3.40362, 3.40553, 3.44087, 3.4355,
    3.32671, 3.173, 3.18745, 3.22017, 3.25698, 3.19532, 3.13096, 3.12421, 3.16203, 3.12096, 3.21296, 3.18538,
    3.09027, 3.03003, 3.05658, 3.01625, 3.22585, 3.23913, 3.21108, 3.21309, 3.16103, 3.1495, 3.14238, 3.15017,
    3.07164, 3.044, 3.11775, 3.06079, 3.15937, 3.13995, 3.17299, 3.17302, 3.29846, 3.24451, 3.24831, 3.25173,
    3.07203, 3.0036, 3.08447, 3.05619, 3.10095, 3.06496, 3.12614, 3.10201, 3.12051, 3.07826, 3.1781, 3.14189,
    3.20242, 3.23967, 3.19097, 3.154, 3.10219, 3.10638, 3.08341, 3.0893, 3.16211, 3.12266, 3.17199, 3.16812,
    2.95874, 2.91292, 2.98084, 2.92094, 3.16569, 3.08972, 3.06321, 3.04655, 3.09284, 3.06227, 3.07098, 3.01419,
    3.10315, 3.08778, 3.04287, 3.03801, 3.0655, 3.10085, 3.10954, 3.10174, 2.97687, 2.93585, 2.99999, 2.96735,
    3.12007, 3.10587, 3.13934, 3.12008, 3.04748, 3.04194, 3.08653, 3.07292,
)
FLUX2_BN_EPS = 1e-4
# ComfyUI's Wan21 latents_mean / latents_std: only for diffusers-style normalised latents (WAN21_DIFFUSERS)
WAN21_MEAN = (-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508, 0.4134, -0.0715, 0.5517,
              -0.3632, -0.1922, -0.9497, 0.2503, -0.2921)
WAN21_STD = (2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743, 3.2687, 2.1526, 2.8652, 1.5579,
             1.6382, 1.1253, 2.8251, 1.916)


@dataclass(frozen=True)
class Adaptor:
    """Maps LATENTs to the VAE space the model works in and back, in fp32, as the SesquiLSR node does.

    ``kind`` "shift_scale": ``(z - shift) * scale`` and ``y / scale + shift``; "std_mean": ``z * std + mean`` and
    ``(y - mean) / std`` (per channel); "identity". ``packed``: LATENT channel ``4c + 2dy + dx`` at (i, j) is VAE
    channel c at (2i + dy, 2j + dx) (Flux2), so the model sees a quarter of the channels at twice the size.
    """

    name: str
    vae: str  # the file format (one of FORMATS) whose model this adaptor feeds
    latent_channels: int
    kind: str
    shift: tuple[float, ...] = (0.0,)
    scale: tuple[float, ...] = (1.0,)
    packed: bool = False

    @property
    def factor(self) -> int:
        """VAE-space size over LATENT size."""
        return 2 if self.packed else 1

    def vae_size(self, size: tuple[int, int]) -> tuple[int, int]:
        return size[0] * self.factor, size[1] * self.factor

    def _consts(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shift = torch.tensor(self.shift, dtype=torch.float32, device=z.device).view(1, -1, 1, 1)
        scale = torch.tensor(self.scale, dtype=torch.float32, device=z.device).view(1, -1, 1, 1)
        return shift, scale

    def to_vae(self, z: torch.Tensor) -> torch.Tensor:
        z = z.float()
        if self.kind == "shift_scale":
            shift, scale = self._consts(z)
            z = (z - shift) * scale
        elif self.kind == "std_mean":
            mean, std = self._consts(z)
            z = z * std + mean
        return F.pixel_shuffle(z, 2) if self.packed else z

    def from_vae(self, y: torch.Tensor) -> torch.Tensor:
        y = y.float()
        if self.packed:
            y = F.pixel_unshuffle(y, 2)
        if self.kind == "shift_scale":
            shift, scale = self._consts(y)
            y = y / scale + shift
        elif self.kind == "std_mean":
            mean, std = self._consts(y)
            y = (y - mean) / std
        return y


def _flux2_std() -> tuple[float, ...]:
    var = torch.tensor(FLUX2_BN_VAR, dtype=torch.float32)
    return tuple(torch.sqrt(var + FLUX2_BN_EPS).tolist())


def _comfy_process_in(fmt: str) -> Adaptor:
    """The node's SDXL and Flux adaptors are ComfyUI's own ``process_in``/``process_out`` numbers."""
    space = LATENT_SPACES[fmt]
    return Adaptor(fmt, fmt, space.channels, "shift_scale", (space.shift,), (space.scale,))


#: the adaptors of the node's model_format choices (its "Ideogram 4" choice has no numbers here and is absent)
ADAPTORS: dict[str, Adaptor] = {
    "sdxl": _comfy_process_in("sdxl"),
    "flux": _comfy_process_in("flux"),
    "flux2": Adaptor("flux2", "flux2", 128, "std_mean", FLUX2_BN_MEAN, _flux2_std(), packed=True),
    "wan21": Adaptor("wan21", "wan21", 16, "identity"),
}
#: SesquiLSR's Python-API adaptor for diffusers-style (z-scored) Wan 2.1 latents; the node does not use it
WAN21_DIFFUSERS = Adaptor("wan21_diffusers", "wan21", 16, "std_mean", WAN21_MEAN, WAN21_STD)


def format_name(latent_format: Any) -> str:
    """'sdxl' | 'flux' | 'flux2' | 'wan21' from a name or alias ("klein", "qwen-image", ...) or a ComfyUI
    latent format (``lua_core.latent_formats.format_name``); LuaError for a format SesquiLSR has no model for."""
    name = latent_format_name(latent_format)
    if name not in FORMATS:
        hint = " (its SDXL model is for SDXL only, not SD1.x)" if name == "sd15" else ""
        raise LuaError(f"SesquiLSR has no model for {LATENT_SPACES[name].label} latents{hint}; it has "
                       f"{', '.join(LABELS[f] for f in FORMATS)}")
    return name


def format_from_name(path: str | Path | None) -> str | None:
    """The format a released file name says (``upscaler_Flux2.safetensors`` -> 'flux2'), or None."""
    if path is None:
        return None
    m = _NAME_FORMAT.search(Path(path).stem)
    return m.group(1).lower() if m else None


def target_size(size: Sequence[int], scale: float) -> tuple[int, int]:
    """(round(H * s), round(W * s)) in LATENT pixels: Python's round of the double product, halves to even.

    So 7 * 1.5 -> 10 and 9 * 1.5 -> 14, and 1.1 * 55 = 60.50000000000001 -> 61, as the node computes it.
    """
    h, w = size
    return int(round(int(h) * float(scale))), int(round(int(w) * float(scale)))


def resize_noise_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The node's noise_mask handling: nearest resize to the output's (H, W), leading dims kept."""
    if tuple(mask.shape[-2:]) == tuple(size):
        return mask
    lead = mask.shape[:-2]
    flat = mask.reshape(-1, 1, *mask.shape[-2:])
    return F.interpolate(flat, size=tuple(size), mode="nearest").reshape(*lead, *size)


# --------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SesquiConfig:
    """Every size of the network, as read from a state dict (defaults: the released SDXL file).

    Gates ``g`` and middle width ``m`` of a gated block: ``up`` makes 9g channels (8g values, g gates),
    ``down`` takes 8g to m, ``mix`` m back to ``width``.
    """

    in_channels: int = 4
    width: int = 128
    head_width: int = 64
    in_depth: int = 8
    in_gates: int = 24
    in_mid: int = 96
    refine_gates: int = 32
    refine_mid: int = 128
    out_depth: int = 6
    out_gates: int = 32
    out_mid: int = 128
    lift: int = 64
    tail_width: int = 64
    filter_hidden: int = 64
    freqs: int = 4
    embed: int = 8
    ranks: int = 2
    latent_format: str | None = None

    def __post_init__(self) -> None:
        sizes = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "latent_format"}
        bad = [k for k, v in sizes.items()
               if isinstance(v, bool) or not isinstance(v, int) or v < (0 if k.endswith("depth") else 1)]
        if bad:
            raise ValueError(f"invalid SesquiLSR config: {', '.join(f'{k}={sizes[k]!r}' for k in bad)} "
                             "(sizes are positive whole numbers, depths >= 0)")
        if self.latent_format is not None:
            if self.latent_format not in FORMATS:
                raise ValueError(f"invalid SesquiLSR config: latent_format {self.latent_format!r} is not one of "
                                 f"{', '.join(FORMATS)} (or None)")
            if FILE_CHANNELS[self.latent_format] != self.in_channels:
                raise ValueError(f"invalid SesquiLSR config: a {LABELS[self.latent_format]} model takes "
                                 f"{FILE_CHANNELS[self.latent_format]} channels, not {self.in_channels}")

    @property
    def filter_in(self) -> int:
        """Length of the resampler's condition: sin and cos per frequency, the footprint, two embeddings."""
        return 2 * self.freqs + 1 + 2 * self.embed

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SesquiConfig:
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"invalid SesquiLSR config: unknown fields {unknown}")
        return cls(**d)

    @classmethod
    def derive(cls, in_channels: int, width: int = 128, in_depth: int = 8, out_depth: int = 6,
               in_expand: float = 1.5, out_expand: float = 2.0, latent_format: str | None = None) -> SesquiConfig:
        """The sizes the original constructor derives (released: width 128, depths 8 and 6, 1.5 and 2.0).

        g = 8 * ceil(ceil(e * W / 9) / 8) and m = ceil(s * W), with shrink s 0.75 before the resampler and 1.0
        in its refine block and after it; the refine block uses ``out_expand``; lift = min(64, W / 2).
        """
        def gates(e: float) -> int:
            return 8 * math.ceil(math.ceil(e * width / 9) / 8)

        half = width // 2
        return cls(in_channels=in_channels, width=width, head_width=half, in_depth=in_depth,
                   in_gates=gates(in_expand), in_mid=math.ceil(0.75 * width), refine_gates=gates(out_expand),
                   refine_mid=width, out_depth=out_depth, out_gates=gates(out_expand), out_mid=width,
                   lift=min(64, half), tail_width=half, latent_format=latent_format)


# --------------------------------------------------------------------------------------------
# The network
# --------------------------------------------------------------------------------------------

def _conv(c_in: int, c_out: int, k: int, bias: bool = False) -> nn.Conv2d:
    """Convolutions pad by reflection (k // 2 pixels)."""
    return nn.Conv2d(c_in, c_out, k, padding=k // 2, padding_mode="reflect", bias=bias)


def _reflect_conv(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """The layer's convolution on a channels-last activation (oneDNN's fast layout on CPU; output channels-last)."""
    p = conv.kernel_size[0] // 2
    x = x.contiguous(memory_format=torch.channels_last)
    weight = conv.weight.contiguous(memory_format=torch.channels_last)
    return F.conv2d(F.pad(x, (p, p, p, p), mode="reflect") if p else x, weight, conv.bias)


def _pointwise(weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A bias-free 1x1 convolution as one matmul over the positions, channels last: (B, C, H, W) with any
    strides -> (B, O, H, W) stored channels-last (a view of the (B, H, W, O) matmul result)."""
    b, c, h, w = x.shape
    o = weight.shape[0]
    flat = x.permute(0, 2, 3, 1).reshape(b, h * w, c)  # a view when x is channels-last
    return torch.matmul(flat, weight.reshape(o, c).t()).view(b, h, w, o).permute(0, 3, 1, 2)


def _shuffle(x: torch.Tensor) -> torch.Tensor:
    """Pixel shuffle by 2 (channel 4c + 2dy + dx -> channel c at (2i + dy, 2j + dx)) into a channels-last tensor."""
    b, c4, h, w = x.shape
    c = c4 // 4
    t = x.permute(0, 2, 3, 1).reshape(b, h, w, c, 2, 2).permute(0, 1, 4, 2, 5, 3)  # (b, h, dy, w, dx, c)
    return t.reshape(b, 2 * h, 2 * w, c).permute(0, 3, 1, 2)


class ScaleNorm(nn.Module):
    """Bias-free layer norm over all of (C, H, W) per sample, with a per-channel weight."""

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(normalised x times the weight, s = sqrt(biased variance + 1e-6)) with s of shape (B, 1, 1, 1).

        The readable form; ``GatedBlock`` computes the same with the weight folded into its ``up`` layer."""
        var, mean = torch.var_mean(x, dim=(1, 2, 3), correction=0, keepdim=True)
        s = torch.sqrt(var + EPS)
        return (x - mean) / s * self.weight.view(1, -1, 1, 1), s


class GatedBlock(nn.Module):
    """x + s * mix(down(mish(values) * tanh(gates / 2))), where ``up`` makes the values and gates from the
    normalised x and s is the norm's scale. Gate k multiplies value channels 8k to 8k + 7."""

    def __init__(self, width: int, gates: int, mid: int):
        super().__init__()
        self.gates = gates
        self.norm = ScaleNorm(width)
        self.up = nn.Conv2d(width, 9 * gates, 1, bias=False)
        self.down = nn.Conv2d(8 * gates, mid, 1, bias=False)
        self.mix = _conv(mid, width, 3)

    def forward(self, x: torch.Tensor, inplace: bool = False) -> torch.Tensor:
        """``inplace`` (never while autograd records): activations in place, the result written over x.

        Works on the positions-by-channels view of channels-last activations, so the 1x1 layers are plain
        matmuls and the 3x3 ``mix`` runs in oneDNN's channels-last layout.
        """
        b, c, h, w = x.shape
        g, n = self.gates, h * w
        x = x.contiguous(memory_format=torch.channels_last)
        tokens = x.permute(0, 2, 3, 1)  # (B, H, W, C), contiguous
        if inplace:  # one fused pass for the normalisation; s from the same statistics
            y, _, rstd = torch.native_layer_norm(tokens, (h, w, c), None, None, EPS)
            s = rstd.reciprocal().view(b, 1, 1, 1)
        else:
            var, mean = torch.var_mean(tokens, dim=(1, 2, 3), correction=0, keepdim=True)
            s = torch.sqrt(var + EPS)
            y = (tokens - mean) / s
        # the norm's per-channel weight folded into the up projection, and the gates' 1/2 (exact: a power of 2)
        up = self.up.weight.reshape(9 * g, c) * self.norm.weight
        up = torch.cat([up[:8 * g], up[8 * g:] * 0.5])
        u = torch.matmul(y.reshape(b, n, c), up.t())
        values, gate = u[..., :8 * g], u[..., 8 * g:]
        if inplace:
            F.mish(values, inplace=True)
            values.view(b, n, g, 8).mul_(gate.tanh_().view(b, n, g, 1))
            gated = values
        else:
            gated = (F.mish(values).reshape(b, n, g, 8) * torch.tanh(gate).reshape(b, n, g, 1)).reshape(b, n, -1)
        down = self.down.weight
        d = torch.matmul(gated, down.reshape(down.shape[0], 8 * g).t())
        mixed = _reflect_conv(d.view(b, h, w, -1).permute(0, 3, 1, 2), self.mix)
        return x.addcmul_(mixed, s) if inplace else x + s * mixed


class Freqs(nn.Module):
    """Holds the positional frequencies the resampler's condition uses (a stored buffer, ``pe.freqs``)."""

    def __init__(self, n: int):
        super().__init__()
        self.register_buffer("freqs", torch.pow(2.0, torch.linspace(0.0, 2.0, n)) if n > 1 else torch.ones(n))


@dataclass
class _Tile:
    """One banded matmul of the resampler: targets [t0, t1) read sources [lo, hi)."""

    t0: int
    t1: int
    lo: int
    hi: int
    matrix: torch.Tensor


@dataclass
class _Plan:
    """The resampler's filtering for one (source, target) size, as banded matrices (batch independent).

    Column tiles: (C, sources, ranks * targets), rank-major; row tiles: (C, targets, sources * ranks), ranks
    interleaved as the column pass's output rows are, each rank already weighted by sigmoid(rank_gain), so one
    matmul per row tile also sums the ranks.
    """

    cols: list[_Tile]
    rows: list[_Tile]


def _tiles(n_tgt: int) -> list[tuple[int, int]]:
    if n_tgt <= TILE_MAX:
        return [(0, n_tgt)]
    n = math.ceil(n_tgt / TILE)
    bounds = [round(i * n_tgt / n) for i in range(n + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


class Resampler(nn.Module):
    """``upsample``: a learned 2x map (pixel shuffle + lift), a gated refine block, then a separable 4-tap
    filter from the 2x map to the target size whose per-channel taps a small MLP predicts from the sub-pixel
    phase and the footprint; two ranks, summed with sigmoid gains."""

    def __init__(self, cfg: SesquiConfig):
        super().__init__()
        w, lift = cfg.width, cfg.lift
        self.ps_expand = nn.Conv2d(w, 4 * w, 1)
        self.lift_expand = nn.Conv2d(w, 4 * lift, 1, bias=False)
        self.lift_mix = _conv(lift, w, 3)
        self.refine = GatedBlock(w, cfg.refine_gates, cfg.refine_mid)
        self.filter_net = nn.Sequential(nn.Linear(cfg.filter_in, cfg.filter_hidden), nn.Mish(),
                                        nn.Linear(cfg.filter_hidden, TAPS * w))
        self.axis_emb = nn.Embedding(AXES, cfg.embed)
        self.rank_emb = nn.Embedding(cfg.ranks, cfg.embed)
        self.base_taps = nn.Parameter(torch.zeros(cfg.ranks, AXES, w, TAPS))
        self.rank_gain = nn.Parameter(torch.zeros(cfg.ranks))
        self.pe = Freqs(cfg.freqs)
        self._plans: OrderedDict[tuple, tuple[tuple, _Plan]] = OrderedDict()

    # -- taps ---------------------------------------------------------------------------------

    def taps(self, n_src: int, n_tgt: int, axis: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(source index [n_tgt, 4], weights [ranks, C, n_tgt, 4]) of one axis, shared by the batch.

        Positions in float32 with the ratio rounded to float32 first; the footprint log2(max(ratio, 0.01)) in
        double; the condition is sin, cos (pi * frac * freqs), footprint, axis embedding, rank embedding.
        """
        dev, dtype = self.base_taps.device, self.base_taps.dtype
        ratio = torch.tensor(n_src / n_tgt, dtype=torch.float32, device=dev)
        pos = (torch.arange(n_tgt, dtype=torch.float32, device=dev) + 0.5) * ratio - 0.5
        base = torch.clamp(torch.floor(pos), 0, n_src - 1)
        frac = pos - base
        foot = math.log2(max(n_src / n_tgt, 0.01))
        angle = math.pi * frac[:, None] * self.pe.freqs.float()[None, :]
        ranks = self.rank_gain.shape[0]
        cond = torch.cat([torch.sin(angle), torch.cos(angle), torch.full((n_tgt, 1), foot, device=dev)], 1).to(dtype)
        cond = torch.cat([cond[None].expand(ranks, -1, -1),
                          self.axis_emb.weight[axis].expand(ranks, n_tgt, -1),
                          self.rank_emb.weight[:, None, :].expand(-1, n_tgt, -1)], 2)
        raw = self.filter_net(cond).view(ranks, n_tgt, -1, TAPS)
        w = 0.2 * torch.tanh(raw)
        w = w - w.mean(dim=-1, keepdim=True) + self.base_taps[:, axis][:, None]
        index = torch.clamp(base.long()[:, None] + torch.arange(-1, TAPS - 1, device=dev), 0, n_src - 1)
        return index, w.permute(0, 2, 1, 3)

    def plan(self, src: tuple[int, int], tgt: tuple[int, int]) -> _Plan:
        """Banded filter matrices for (rows, cols) -> (th, tw); taps that hit the same clamped source add up."""
        (n_rows, n_cols), (th, tw) = src, tgt
        ranks = self.rank_gain.shape[0]
        gain = torch.sigmoid(self.rank_gain)
        cols, rows = [], []
        index, w = self.taps(n_cols, tw, 1)
        for t0, t1 in _tiles(tw):
            lo, hi = int(index[t0:t1].min()), int(index[t0:t1].max()) + 1
            n = t1 - t0
            local = (index[t0:t1] - lo).T  # (4, n): source row of the matrix for each tap and target
            src_w = w[:, :, t0:t1].permute(1, 3, 0, 2).reshape(w.shape[1], TAPS, ranks * n)  # (C, 4, rank-major)
            m = w.new_zeros(w.shape[1], hi - lo, ranks * n)
            m = m.scatter_add(1, local.repeat(1, ranks).expand(w.shape[1], -1, -1), src_w)
            cols.append(_Tile(t0, t1, lo, hi, m))
        index, w = self.taps(n_rows, th, 0)
        w = w * gain.view(ranks, 1, 1, 1)
        rank = torch.arange(ranks, device=index.device).view(ranks, 1, 1)
        for t0, t1 in _tiles(th):
            lo, hi = int(index[t0:t1].min()), int(index[t0:t1].max()) + 1
            n = t1 - t0
            # column (s - lo) * ranks + r: the rows of the column pass's output, ranks interleaved
            local = ((index[t0:t1] - lo)[None] * ranks + rank).permute(1, 0, 2).reshape(n, ranks * TAPS)
            src_w = w[:, :, t0:t1].permute(1, 2, 0, 3).reshape(w.shape[1], n, ranks * TAPS)
            m = w.new_zeros(w.shape[1], n, (hi - lo) * ranks)
            rows.append(_Tile(t0, t1, lo, hi, m.scatter_add(2, local.expand(w.shape[1], -1, -1), src_w)))
        return _Plan(cols, rows)

    def _fingerprint(self) -> tuple | None:
        try:
            return tuple((p.data_ptr(), p._version) for p in (*self.filter_net.parameters(), self.axis_emb.weight,
                                                              self.rank_emb.weight, self.base_taps,
                                                              self.rank_gain, self.pe.freqs))
        except RuntimeError:  # inference tensors keep no version counter: do not cache
            return None

    def cached_plan(self, src: tuple[int, int], tgt: tuple[int, int]) -> _Plan:
        """``plan`` kept per (size, target, device, dtype) until the weights it was built from change."""
        key = (src, tgt, self.base_taps.device, self.base_taps.dtype)
        stamp = self._fingerprint()
        hit = self._plans.get(key)
        if stamp is not None and hit is not None and hit[0] == stamp:
            self._plans.move_to_end(key)
            return hit[1]
        with torch.no_grad():
            plan = self.plan(src, tgt)
        if stamp is not None:
            self._plans[key] = (stamp, plan)
            while len(self._plans) > PLAN_CACHE:
                self._plans.popitem(last=False)
        return plan

    def clear_cache(self) -> None:
        self._plans.clear()

    def _apply(self, fn, recurse=True):  # moved or cast: the cached plans are for the old weights
        self._plans.clear()
        return super()._apply(fn, recurse)

    # -- forward ------------------------------------------------------------------------------

    def filter(self, x: torch.Tensor, plan: _Plan) -> torch.Tensor:
        """Columns first, then rows, each a per-channel matmul with the plan's banded matrices.

        One sample at a time: a batched matmul would copy the matrices once per sample (video frames).
        """
        outs = [self._filter_one(x[i], plan) for i in range(x.shape[0])]
        return outs[0].unsqueeze(0) if len(outs) == 1 else torch.stack(outs)

    def _filter_one(self, x: torch.Tensor, plan: _Plan) -> torch.Tensor:
        """x (C, rows, cols) -> (C, th, tw). Tiles are joined with ``cat``: a matmul writing into a strided
        slice (``out=``) leaves BLAS for a slow loop on CPU."""
        c, n_rows = x.shape[:2]
        ranks = self.rank_gain.shape[0]
        if len(plan.cols) == 1:
            t = plan.cols[0]
            y = torch.matmul(x[..., t.lo:t.hi], t.matrix)  # (C, rows, ranks * tw), rank-major
        else:
            y = torch.cat([torch.matmul(x[..., t.lo:t.hi], t.matrix[..., r * (t.t1 - t.t0):(r + 1) * (t.t1 - t.t0)])
                           for r in range(ranks) for t in plan.cols], -1)
        y = y.view(c, n_rows * ranks, -1)  # row s * ranks + r: rank r's column-filtered source row s
        outs = [torch.matmul(t.matrix, y[:, t.lo * ranks:t.hi * ranks]) for t in plan.rows]
        return outs[0] if len(outs) == 1 else torch.cat(outs, 1)

    def forward(self, h: torch.Tensor, size: tuple[int, int], inplace: bool = False) -> torch.Tensor:
        n_ps = self.ps_expand.weight.shape[0]
        both = _pointwise(torch.cat([self.ps_expand.weight, self.lift_expand.weight]), h)  # one matmul for both
        ps = both[:, :n_ps]
        bias = self.ps_expand.bias.view(1, -1, 1, 1)
        x = _shuffle(ps.add_(bias) if inplace else ps + bias)
        lifted = _reflect_conv(_shuffle(both[:, n_ps:]), self.lift_mix)
        x = x.add_(lifted) if inplace else x + lifted
        x = self.refine(x, inplace).contiguous()  # the filter's matmuls want rows and columns contiguous
        src = (x.shape[-2], x.shape[-1])
        plan = self.cached_plan(src, size) if inplace else self.plan(src, size)
        return self.filter(x, plan).contiguous(memory_format=torch.channels_last)


class SesquiUpscaler(LatentUpscaler):
    """The whole SesquiLSR model; parameter names are the released state dict's."""

    family = "sesqui"
    #: the node runs the model at x1 too (it refines at the same size): not a pass-through
    identity_at_one = False

    def __init__(self, config: SesquiConfig | None = None):
        super().__init__()
        cfg = config or SesquiConfig()
        self.config = cfg
        w = cfg.width
        self.head_conv = nn.Sequential(_conv(cfg.in_channels, cfg.head_width, 3), nn.Mish(),
                                       _conv(cfg.head_width, w, 3, bias=True))
        self.in_blocks = nn.ModuleList(GatedBlock(w, cfg.in_gates, cfg.in_mid) for _ in range(cfg.in_depth))
        self.upsample = Resampler(cfg)
        self.out_blocks = nn.ModuleList(GatedBlock(w, cfg.out_gates, cfg.out_mid) for _ in range(cfg.out_depth))
        self.tail_conv = nn.Sequential(nn.Conv2d(w, cfg.tail_width, 1, bias=False), nn.Mish(),
                                       _conv(cfg.tail_width, cfg.in_channels, 3, bias=True))
        self.skip_conv = _conv(cfg.in_channels, cfg.in_channels, 5)
        self._init_like_original()

    @torch.no_grad()
    def _init_like_original(self) -> None:
        """Fresh modules (benchmarks, training from scratch): the skip starts as the identity, as PEERS.md says the
        original's does; the base taps start as a half-pixel Catmull-Rom kernel (our choice of a smooth start).
        Loading a file overwrites all of it."""
        self.skip_conv.weight.zero_()
        for c in range(self.config.in_channels):
            self.skip_conv.weight[c, c, 2, 2] = 1.0
        self.upsample.base_taps.copy_(torch.tensor([-0.0625, 0.5625, 0.5625, -0.0625]))

    # -- the LatentUpscaler interface -----------------------------------------------------------

    @property
    def file_format(self) -> str | None:
        """The latent family this file is for: its config's, else what its channel count says, else None."""
        return self.config.latent_format or _BY_CHANNELS.get(self.config.in_channels)

    @property
    def needs_latent_format(self) -> bool:  # type: ignore[override]
        """Only a 16-channel file whose format is unknown (renamed, no saved config) needs to be told."""
        return self.file_format is None

    @property
    def latent_channels(self) -> int:
        fmt = self.file_format
        return ADAPTORS[fmt].latent_channels if fmt else self.config.in_channels

    @property
    def native_scales(self) -> Scales:
        return Scales.between(1.0, 2.0)

    @property
    def made_for(self) -> tuple[str, ...]:
        fmt = self.file_format
        return (fmt,) if fmt else ()

    def check_latent_format(self, latent_format: str | None) -> None:
        """Through ``adaptor_for``: the file's own format, else the one given; a 16-channel file of unknown
        format needs one (flux or wan21)."""
        self.adaptor_for(latent_format)

    def config_dict(self) -> dict[str, Any]:
        return self.config.to_dict()

    def adaptor_for(self, latent_format: Any = None, adaptor: Adaptor | None = None) -> Adaptor:
        """The adaptor ``upscale`` runs: the file's own format first, else ``latent_format`` (else ``adaptor``)."""
        own = self.file_format
        given = None if latent_format is None else format_name(latent_format)
        if own and given and own != given:
            raise LuaError(f"this SesquiLSR file is for {LABELS[own]} latents, not {LABELS[given]} "
                             f"(latent_format={latent_format!r}): use the {LABELS[given]} file "
                             f"(upscaler_{_released_stem(given)}.safetensors) or drop latent_format")
        fmt = own or given
        if adaptor is not None:
            if fmt and adaptor.vae != fmt:
                raise LuaError(f"adaptor {adaptor.name!r} feeds a {LABELS[adaptor.vae]} model, but this file is "
                                 f"for {LABELS[fmt]} latents")
            fmt = adaptor.vae
        if fmt is None:
            raise LuaError("this 16-channel SesquiLSR file cannot tell FLUX from Wan 2.1 latents (both models have "
                             "the same shapes): pass latent_format ('flux' or 'wan21'), or keep the released "
                             "file name (upscaler_Flux.safetensors or upscaler_Wan21.safetensors)")
        if FILE_CHANNELS[fmt] != self.config.in_channels:
            raise LuaError(f"a {LABELS[fmt]} SesquiLSR model takes {FILE_CHANNELS[fmt]} channels, but this file "
                             f"has {self.config.in_channels}")
        return adaptor or ADAPTORS[fmt]

    def upscale(self, latent: torch.Tensor, scale: float, *, latent_format: Any = None,
                adaptor: Adaptor | None = None, **_: Any) -> torch.Tensor:
        """Raw LATENT [B, C, H, W] in and out (5-D latents: call once per frame). Scale 1.0 runs the model too.

        The target is ``target_size`` in LATENT pixels (doubled in VAE space for Flux2); the adaptor's math is
        fp32, the model runs in the module's dtype, the result comes back in the latent's dtype.
        """
        if isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not math.isfinite(scale):
            raise LuaError(f"scale must be a finite number, got {scale!r}")
        scale = float(scale)  # numpy scalars too
        if scale not in self.native_scales:
            raise LuaError(f"SesquiLSR does {self.native_scales}, not x{scale:g}")
        if latent.ndim != 4:
            raise LuaError(f"SesquiLSR upscale takes a 4-D latent [B, C, H, W], got shape {tuple(latent.shape)}; "
                             "run 5-D (video) latents frame by frame")
        ad = self.adaptor_for(latent_format, adaptor)
        if latent.shape[1] != ad.latent_channels:
            raise LuaError(f"this SesquiLSR file with the {ad.name} adaptor takes {ad.latent_channels}-channel "
                             f"latents, got {latent.shape[1]}")
        vae_target = ad.vae_size(target_size(latent.shape[-2:], scale))
        z = ad.to_vae(latent).to(device=self.weights_device, dtype=self.dtype)
        y = self.forward(z, vae_target)
        return ad.from_vae(y).to(device=latent.device, dtype=latent.dtype)

    # -- the network ------------------------------------------------------------------------------

    def _recording(self, z: torch.Tensor) -> bool:
        return torch.is_grad_enabled() and (z.requires_grad or any(p.requires_grad for p in self.parameters()))

    def forward(self, z: torch.Tensor, target_hw: tuple[int, int]) -> torch.Tensor:
        """The model in its own (VAE) space: z [B, in_channels, H, W] -> [B, in_channels, th, tw]."""
        th, tw = (int(v) for v in target_hw)
        if z.ndim != 4 or z.shape[1] != self.config.in_channels:
            raise LuaError(f"SesquiLSR forward takes [B, {self.config.in_channels}, H, W], got {tuple(z.shape)}")
        if min(z.shape[-2:]) < 2 or min(th, tw) < 3:
            raise LuaError(f"SesquiLSR pads by reflection: inputs need at least 2 pixels and targets at least 3 "
                             f"per side (in VAE space), got {tuple(z.shape[-2:])} -> {(th, tw)}")
        inplace = not self._recording(z)
        head0, head2 = self.head_conv[0], self.head_conv[2]
        h = _reflect_conv(F.mish(_reflect_conv(z, head0), inplace=inplace), head2)
        for blk in self.in_blocks:
            h = blk(h, inplace)
        h = self.upsample(h, (th, tw), inplace)
        for blk in self.out_blocks:
            h = blk(h, inplace)
        tail0, tail2 = self.tail_conv[0], self.tail_conv[2]
        out = _reflect_conv(F.mish(_pointwise(tail0.weight, h), inplace=inplace), tail2)
        skip = _reflect_conv(F.interpolate(z, size=(th, tw), mode="bicubic", align_corners=False), self.skip_conv)
        return (out.add_(skip) if inplace else out + skip).contiguous()


def _released_stem(fmt: str) -> str:
    return {"sdxl": "SDXL", "flux": "Flux", "flux2": "Flux2", "wan21": "Wan21"}[fmt]


# --------------------------------------------------------------------------------------------
# Recognising and building
# --------------------------------------------------------------------------------------------

def detect(sd: StateDict) -> bool:
    return "head_conv.0.weight" in sd and "upsample.base_taps" in sd


def _blocks(sd: StateDict, prefix: str) -> tuple[int, int, int]:
    """(count, gates, middle width) of ``in_blocks``/``out_blocks``, all entries alike."""
    idx = sorted({int(k.split(".")[1]) for k in sd if re.match(rf"{prefix}\.\d+\.", k)})
    if idx != list(range(len(idx))):
        raise ValueError(f"SesquiLSR {prefix} are numbered {idx}, expected 0 to {len(idx) - 1}")
    if not idx:
        return 0, 1, 1
    shapes = {_gated(sd, f"{prefix}.{i}.") for i in idx}
    if len(shapes) != 1:
        raise ValueError(f"SesquiLSR {prefix} differ in shape ({sorted(shapes)} as (gates, middle width))")
    return (len(idx), *shapes.pop())


def _gated(sd: StateDict, prefix: str) -> tuple[int, int]:
    up = sd[prefix + "up.weight"].shape[0]
    if up % 9:
        raise ValueError(f"{prefix}up.weight has {up} output channels, not 9 per gate")
    return up // 9, int(sd[prefix + "down.weight"].shape[0])


def infer_config(sd: StateDict, latent_format: str | None = None) -> SesquiConfig:
    """Every size from the tensor shapes (width, depths, gates, middle widths, lift, filter MLP, ranks)."""
    try:
        taps = tuple(sd["upsample.base_taps"].shape)
        if len(taps) != 4 or taps[1] != AXES or taps[3] != TAPS:
            raise ValueError(f"upsample.base_taps has shape {taps}, expected (ranks, 2, width, 4)")
        n_in, in_g, in_m = _blocks(sd, "in_blocks")
        n_out, out_g, out_m = _blocks(sd, "out_blocks")
        ref_g, ref_m = _gated(sd, "upsample.refine.")
        return SesquiConfig(
            in_channels=int(sd["head_conv.0.weight"].shape[1]), width=int(sd["head_conv.2.weight"].shape[0]),
            head_width=int(sd["head_conv.0.weight"].shape[0]), in_depth=n_in, in_gates=in_g, in_mid=in_m,
            refine_gates=ref_g, refine_mid=ref_m, out_depth=n_out, out_gates=out_g, out_mid=out_m,
            lift=int(sd["upsample.lift_mix.weight"].shape[1]), tail_width=int(sd["tail_conv.0.weight"].shape[0]),
            filter_hidden=int(sd["upsample.filter_net.0.weight"].shape[0]),
            freqs=int(sd["upsample.pe.freqs"].shape[0]), embed=int(sd["upsample.axis_emb.weight"].shape[1]),
            ranks=int(taps[0]), latent_format=latent_format)
    except KeyError as e:
        raise ValueError(f"not a complete SesquiLSR state dict: {e.args[0]} is missing") from None


def resolve_format(sd: StateDict, config: dict[str, Any] | None, path: str | Path | None) -> str | None:
    """The latent format of a file: saved config, then released file name, then channel count (module doc)."""
    channels = int(sd["head_conv.0.weight"].shape[1])
    fmt, where = None, ""
    if config and config.get("latent_format") is not None:
        fmt, where = config["latent_format"], "its saved config"
    elif (named := format_from_name(path)) is not None:
        fmt, where = named, f"its file name ({Path(path).name})"
    if fmt is None:
        return _BY_CHANNELS.get(channels)
    if fmt not in FORMATS:
        raise ValueError(f"SesquiLSR: {where} names latent format {fmt!r}, not one of {', '.join(FORMATS)}")
    if FILE_CHANNELS[fmt] != channels:
        raise ValueError(f"SesquiLSR: {where} says {LABELS[fmt]} ({FILE_CHANNELS[fmt]} channels), but the weights "
                         f"take {channels} channels")
    return fmt


def build(sd: StateDict, config: dict[str, Any] | None, hints: dict[str, Any]) -> SesquiUpscaler:
    """Build from the tensors (a saved config is checked against them) and load every tensor strictly.

    bf16/fp16 files are upcast exactly to the module's fp32 parameters by the load.
    """
    fmt = resolve_format(sd, config, hints.get("path"))
    cfg = infer_config(sd, fmt)
    if config:
        saved = SesquiConfig.from_dict(config)
        if replace(saved, latent_format=None) != replace(cfg, latent_format=None):
            raise ValueError(f"the saved SesquiLSR config {saved.to_dict()} does not match the weights "
                             f"{cfg.to_dict()}")
    model = SesquiUpscaler(cfg)
    load_exact(model, sd, f"SesquiLSR layout {cfg.to_dict()}")
    return model.eval().requires_grad_(False)
