"""LSSGen's latent upsampler (inventec-ai-center/LSSGen, research release): x2 in the model's space.

Released as diffusers-style folders ``weights/{FLUX,SD3,SDXL,SD,CogView4}-VAE-scaler/`` with a
``config.json`` (``_class_name: LatentUpSampler``) beside ``diffusion_pytorch_model.safetensors``.
The config cannot be recovered from the weights alone (the resize mode of the skip paths, and an
upsampling block looks like a same-width downsampling one), so it is read from ``config.json``
(or from the metadata of a file written by ``lua_core.save_model``) and checked against the
tensors.

The network was trained on the diffusion model's *scaled* latents, so ``upscale`` takes raw
ComfyUI latents and wraps the forward in the chosen format's ``process_in``/``process_out``
(``lua_core.latent_formats``); ``needs_latent_format`` makes ``upscale_latent`` ask for one.

Scales: the product of the blocks' factors (x2 for every release). x4 is declared as well and is
the released forward applied twice in model space (``process_in``, f, f, ``process_out``): the
same numbers as chaining two x2 runs of the original pipeline, with no round trip in between.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import LuaError
from ..latent_formats import LATENT_SPACES, latent_space
from ..scales import Scales
from . import family_by_name
from .base import LatentUpscaler, StateDict, load_exact

PREFIX = "upsampler."
#: the latent formats LSSGen released folders for (weights/{FLUX,SD3,SDXL,SD,CogView4}-VAE-scaler): its registry entry's
RELEASED_FORMATS = family_by_name("lssgen").formats
INTERPOLATIONS = ("nearest", "bilinear", "bicubic")
#: diffusers ``get_activation`` names this module accepts, and what they are
ACTIVATIONS: dict[str, type[nn.Module]] = {"silu": nn.SiLU, "swish": nn.SiLU, "mish": nn.Mish,
                                            "gelu": nn.GELU, "relu": nn.ReLU}
#: how many passes ``upscale`` chains at most (x2 -> x4)
MAX_PASSES = 2


@dataclass(frozen=True)
class LSSGenConfig:
    """``config.json`` of a ``LatentUpSampler`` (diffusers ``ConfigMixin`` fields, same names)."""

    in_channels: int = 16
    out_channels: int = 16
    block_out_channels: tuple[int, ...] = (128, 64)
    is_up_samples: tuple[bool, ...] = (True, False)
    strides: tuple[int, ...] = (2, 1)
    norm_num_groups: int = 32
    act_fn: str = "silu"
    interpolate: str = "bilinear"

    def __post_init__(self) -> None:
        problems = []
        n = len(self.block_out_channels)
        if n == 0 or len(self.is_up_samples) != n or len(self.strides) != n:
            problems.append(f"block_out_channels {list(self.block_out_channels)}, is_up_samples "
                            f"{list(self.is_up_samples)} and strides {list(self.strides)} must be non-empty "
                            "lists of the same length")
        for c in (*self.block_out_channels,):
            if self.norm_num_groups < 1 or c % self.norm_num_groups:
                problems.append(f"{c} channels cannot be split into {self.norm_num_groups} groups")
        for s in self.strides:
            if s not in (1, 2):
                problems.append(f"stride {s}: only 1 and 2 give matching main and skip sizes")
        if self.act_fn not in ACTIVATIONS:
            problems.append(f"act_fn {self.act_fn!r} is not one of {', '.join(ACTIVATIONS)}")
        if self.interpolate not in INTERPOLATIONS:
            problems.append(f"interpolate {self.interpolate!r} is not one of {', '.join(INTERPOLATIONS)}")
        if problems:
            raise ValueError("invalid LSSGen config: " + "; ".join(problems))

    @property
    def factor(self) -> float:
        """Spatial factor of one forward pass."""
        f = 1.0
        for up, s in zip(self.is_up_samples, self.strides):
            f = f * s if up else f / s
        return f

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("block_out_channels", "is_up_samples", "strides"):
            d[k] = list(d[k])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LSSGenConfig:
        """From ``config.json``: diffusers' bookkeeping (``_class_name``, ...) is skipped."""
        fields = {k: v for k, v in d.items() if not k.startswith("_")}
        cls_name = d.get("_class_name", "LatentUpSampler")
        if cls_name != "LatentUpSampler":
            raise ValueError(f"config.json describes a {cls_name!r}, not an LSSGen LatentUpSampler")
        unknown = sorted(set(fields) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"invalid LSSGen config: unknown fields {unknown}")
        for k in ("block_out_channels", "strides"):
            if k in fields:
                fields[k] = tuple(int(v) for v in fields[k])
        if "is_up_samples" in fields:
            fields["is_up_samples"] = tuple(bool(v) for v in fields["is_up_samples"])
        return cls(**fields)


class Block(nn.Module):
    """norm1 -> conv1 (resampling) -> act -> norm2 -> conv2 -> act, plus a (projected, resized) skip."""

    def __init__(self, cin: int, cout: int, up: bool, stride: int, cfg: LSSGenConfig):
        super().__init__()
        self.up, self.stride, self.mode = up, stride, cfg.interpolate
        g = cfg.norm_num_groups
        self.norm1 = nn.GroupNorm(g, cin, eps=1e-6)
        if stride > 1:
            conv = nn.ConvTranspose2d if up else nn.Conv2d
            self.conv1 = conv(cin, cout, 4, stride=stride, padding=1)
        else:
            self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2 = nn.GroupNorm(g, cout, eps=1e-6)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.act = ACTIVATIONS[cfg.act_fn]()
        self.skip_proj = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.conv1(self.norm1(x)))
        h = self.act(self.conv2(self.norm2(h)))
        skip = self.skip_proj(x)
        if self.stride > 1:
            # a float factor, as the original: it also sets the sampling grid (floor size when down)
            skip = F.interpolate(skip, scale_factor=self.stride if self.up else 1 / self.stride, mode=self.mode)
        return h + skip


class Net(nn.Module):
    """The ``upsampler`` submodule: conv_in, blocks, GroupNorm (eps 1e-5), act, conv_out."""

    def __init__(self, cfg: LSSGenConfig):
        super().__init__()
        ch = cfg.block_out_channels
        self.conv_in = nn.Conv2d(cfg.in_channels, ch[0], 3, padding=1)
        cins = (ch[0], *ch[:-1])
        self.up_blocks = nn.ModuleList(Block(ci, co, up, s, cfg)
                                       for ci, co, up, s in zip(cins, ch, cfg.is_up_samples, cfg.strides))
        self.norm_out = nn.GroupNorm(cfg.norm_num_groups, ch[-1])
        self.act_out = ACTIVATIONS[cfg.act_fn]()
        self.conv_out = nn.Conv2d(ch[-1], cfg.out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for blk in self.up_blocks:
            h = blk(h)
        return self.conv_out(self.act_out(self.norm_out(h)))


class LSSGenUpscaler(LatentUpscaler):
    family = "lssgen"
    needs_latent_format = True

    def __init__(self, config: LSSGenConfig | None = None):
        super().__init__()
        self.config = config or LSSGenConfig()
        self.upsampler = Net(self.config)

    @property
    def latent_channels(self) -> int:
        return self.config.in_channels

    @property
    def native_scales(self) -> Scales:
        f = self.config.factor
        return Scales.of(f, f * f)

    def config_dict(self) -> dict[str, Any]:
        return self.config.to_dict()

    def passes(self, scale: float) -> int:
        """How many forward passes make ``scale`` (1 for the file's factor, 2 for its square)."""
        f = self.config.factor
        for n in range(1, MAX_PASSES + 1 if f > 1 else 2):
            if math.isclose(f ** n, scale, rel_tol=0, abs_tol=1e-6):
                return n
        raise ValueError(f"this LSSGen upsampler does x{f:g} (and x{f * f:g} as two passes), not x{scale:g}")

    def check_latent_format(self, latent_format: str | None) -> None:
        """LSSGen works in the diffusion model's scaled space, so it needs the format, and only the
        formats LSSGen released folders for (``RELEASED_FORMATS``) have a wrap it was trained in."""
        fits = [f for f in RELEASED_FORMATS if LATENT_SPACES[f].channels == self.config.in_channels]
        if latent_format is None:
            raise LuaError(f"this lssgen upscaler works in the model's scaled latent space and needs latent_format, "
                           f"one of {', '.join(fits)}")
        space = LATENT_SPACES[latent_format]
        if space.channels != self.config.in_channels:
            raise LuaError(f"latent_format {space.name!r} is for {space.channels}-channel latents but this LSSGen "
                           f"upsampler takes {self.config.in_channels}")
        if latent_format not in RELEASED_FORMATS:
            raise LuaError(f"LSSGen has no upsampler for {space.label} latents ({space.models}); its folders are "
                           f"for {', '.join(LATENT_SPACES[f].label for f in RELEASED_FORMATS)}")
        super().check_latent_format(latent_format)

    def upscale(self, latent: torch.Tensor, scale: float, *, latent_format: str | None = None,
                **_: Any) -> torch.Tensor:
        """Raw latents in and out; ``process_in``, the net once or twice, ``process_out``."""
        n = self.passes(scale)
        self.check_latent_format(latent_format)
        space = latent_space(latent_format)
        z = space.process_in(latent)
        for _ in range(n):
            z = self.upsampler(z)
        return space.process_out(z)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """One pass on model-space latents (what the original ``LatentUpSampler`` computes)."""
        return self.upsampler(z)


# --------------------------------------------------------------------------------------------
# Recognising and building
# --------------------------------------------------------------------------------------------

def detect(sd: StateDict) -> bool:
    return PREFIX + "conv_in.weight" in sd and any(k.startswith(PREFIX + "up_blocks.") for k in sd)


def build(sd: StateDict, config: dict[str, Any] | None, hints: dict[str, Any]) -> LSSGenUpscaler:
    """Build from ``config.json`` and check it against every tensor."""
    if not config:
        raise ValueError("LSSGen weights need the config.json released with them: load the folder, or keep "
                         "config.json beside diffusion_pytorch_model.safetensors")
    cfg = LSSGenConfig.from_dict(config)
    if cfg.in_channels != cfg.out_channels:
        raise ValueError(f"config.json has in_channels {cfg.in_channels} != out_channels {cfg.out_channels}; "
                         "an upscaler must return latents of the kind it takes")
    model = LSSGenUpscaler(cfg)
    load_exact(model, sd, "config.json")
    return model.eval().requires_grad_(False)
