"""city96 SD-Latent-Upscaler v2.1 (Apache-2.0): a plain conv stack with one nearest upsample.

Files are ``latent-upscaler-v2.1_SD{v1,xl}-x{1.25,1.5,2.0}.safetensors``, one scale factor each.
The factor is **not in the weights** (the original node passes it from its dropdown), so it comes
from, in order: the ``config`` metadata of a file written by ``lua_core.save_model``, the
``scale=`` argument of ``load_model``, or the ``-x1.5`` suffix of the file name. When two of them
disagree the file is refused rather than run at a factor it was not trained for.

Works on raw SD1.x/SDXL latents (no latent-space scaling). Output size is ``floor(H * s)``: the
upsample is ``nearest`` with a float ``scale_factor``, which also fixes which input pixel each
output pixel copies, so it is called exactly that way (not with a target size).

The v1.0 files share the ``sequential.*`` naming but use 5x5/7x7 kernels and a 32-channel tail;
they are recognised and refused with a pointer to v2.1 instead of being mis-loaded.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError
from ..scales import Scales
from .base import LatentUpscaler, StateDict, load_exact

RELEASED_SCALES = (1.25, 1.5, 2.0)
DOWNLOAD_HINT = ("Download a v2.1 file (latent-upscaler-v2.1_SD{v1,xl}-x{1.25,1.5,2.0}.safetensors) from "
                 "https://huggingface.co/city96/SD-Latent-Upscaler.")
_NAME_SCALE = re.compile(r"[-_]x(\d+(?:\.\d+)?)$", re.IGNORECASE)


@dataclass(frozen=True)
class City96Config:
    """What shapes the v2.1 network (the original hard-codes channels 4, width 64, depth 16)."""

    scale: float
    channels: int = 4
    width: int = 64
    depth: int = 16
    version: str = "2.1"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.scale) and self.scale >= 1.0):
            raise ValueError(f"city96 scale must be a finite number >= 1, got {self.scale!r}")
        if self.version != "2.1":
            raise ValueError(f"only city96 v2.1 is supported, not v{self.version}")
        if min(self.channels, self.width, self.depth) < 1:
            raise ValueError("city96 channels, width and depth must be positive")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> City96Config:
        unknown = sorted(set(d) - set(cls.__dataclass_fields__))
        if unknown or "scale" not in d:
            raise ValueError(f"invalid city96 config {d}: it needs 'scale' and only "
                             f"{sorted(cls.__dataclass_fields__)}")
        return cls(**{**d, "scale": float(d["scale"])})


class City96Upscaler(LatentUpscaler):
    """conv 3x3 + ReLU, nearest upsample, ``depth`` x (conv 3x3 + ReLU), conv 3x3 back to latents.

    ``sequential`` keeps the original indices (ReLUs and the upsample hold no weights), so the
    released state dict loads strictly.
    """

    family = "city96"

    def __init__(self, config: City96Config):
        super().__init__()
        self.config = config
        c, w = config.channels, config.width
        layers: list[nn.Module] = [nn.Conv2d(c, w, 3, padding=1), nn.ReLU(),
                                   nn.Upsample(scale_factor=config.scale, mode="nearest"), nn.ReLU()]
        for _ in range(config.depth):
            layers += [nn.Conv2d(w, w, 3, padding=1), nn.ReLU()]
        layers.append(nn.Conv2d(w, c, 3, padding=1))
        self.sequential = nn.Sequential(*layers)

    @property
    def latent_channels(self) -> int:
        return self.config.channels

    @property
    def native_scales(self) -> Scales:
        return Scales.of(self.config.scale)

    def config_dict(self) -> dict[str, Any]:
        return asdict(self.config)

    def upscale(self, latent: torch.Tensor, scale: float, *, latent_format: str | None = None,
                **_: Any) -> torch.Tensor:
        if not math.isclose(scale, self.config.scale, rel_tol=0, abs_tol=1e-6):
            raise ValueError(f"this city96 file only does x{self.config.scale:g}, not x{scale:g}")
        return self.forward(latent)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Same call as nn.Upsample(scale_factor=s): the float factor, not a size, picks the pixels.
        seq = self.sequential
        h = F.relu(seq[0](x))
        h = F.interpolate(h, scale_factor=self.config.scale, mode="nearest")  # ReLU after it: a no-op
        for conv in seq[4:-1:2]:
            h = F.relu(conv(h))
        return seq[-1](h)


# --------------------------------------------------------------------------------------------
# Recognising and building
# --------------------------------------------------------------------------------------------

def _conv_keys(sd: StateDict) -> list[int]:
    return sorted(int(k.split(".")[1]) for k in sd if re.fullmatch(r"sequential\.\d+\.weight", k))


def detect(sd: StateDict) -> bool:
    """``sequential.0.weight`` is a conv from 4 channels and every key is ``sequential.*``."""
    w = sd.get("sequential.0.weight")
    return (w is not None and w.ndim == 4 and w.shape[1] == 4
            and all(k.startswith("sequential.") for k in sd))


def is_v1_layout(sd: StateDict) -> bool:
    """The v1.0 network: 5x5 head, three 7x7 convs (64, 64, 32 wide), 5x5 tail at index 10."""
    shapes = {i: tuple(sd[f"sequential.{i}.weight"].shape) for i in _conv_keys(sd)}
    return (len(shapes) == 5 and shapes.get(0, (0,) * 4)[2:] == (5, 5)
            and shapes.get(10, (0,) * 4)[2:] == (5, 5)
            and all(shapes.get(i, (0,) * 4)[2:] == (7, 7) for i in (4, 6, 8)))


def infer_shape(sd: StateDict) -> tuple[int, int, int]:
    """(channels, width, depth) of a v2.1 layout; ValueError naming what is off otherwise."""
    idx = _conv_keys(sd)
    first = sd["sequential.0.weight"]
    c, w = int(first.shape[1]), int(first.shape[0])
    depth = len(idx) - 2
    expected = [0] + [4 + 2 * i for i in range(depth)] + [4 + 2 * depth]
    if depth < 1 or idx != expected:
        raise ValueError(f"conv layers at sequential indices {idx}, expected 0, 4, 6, ... (the v2.1 layout)")
    kernels = {tuple(sd[f"sequential.{i}.weight"].shape[2:]) for i in idx}
    if kernels != {(3, 3)}:
        raise ValueError(f"kernel sizes {sorted(kernels)}; v2.1 uses 3x3 throughout")
    return c, w, depth


def scale_from_name(path: str | Path | None) -> float | None:
    """1.5 for ``...-x1.5.safetensors``; None when the name carries no factor."""
    if path is None:
        return None
    m = _NAME_SCALE.search(Path(path).stem)
    return float(m.group(1)) if m else None


def _resolve_scale(config: dict[str, Any] | None, hints: dict[str, Any]) -> float:
    path, given = hints.get("path"), hints.get("scale")
    sources = []
    if config and "scale" in config:
        sources.append(("its saved config", float(config["scale"])))
    if given is not None:
        sources.append(("scale=", float(given)))
    named = scale_from_name(path)
    if named is not None:
        sources.append(("its file name", named))
    if not sources:
        name = Path(path).name if path is not None else "a state dict"
        raise CheckpointError(
            path, f"is a city96 SD-Latent-Upscaler v2.1 model, whose scale factor is not stored in the weights "
            f"but in the file name, and {name!r} does not say it.",
            "Keep the downloaded name (it ends in -x1.25, -x1.5 or -x2.0, e.g. "
            "latent-upscaler-v2.1_SDxl-x1.5.safetensors) or pass scale= to load_model.")
    (what, s), *rest = sources
    for other, t in rest:
        if not math.isclose(s, t, rel_tol=0, abs_tol=1e-6):
            raise CheckpointError(path, f"is a city96 model, and {what} says x{s:g} but {other} says x{t:g}.",
                                  "Each city96 file does exactly one factor: rename the file or drop the "
                                  "conflicting scale=.")
    return s


def build(sd: StateDict, config: dict[str, Any] | None, hints: dict[str, Any]) -> City96Upscaler:
    """Build from the tensors; the factor from saved config, ``scale=`` or the file name."""
    if is_v1_layout(sd):
        raise CheckpointError(hints.get("path"), "is a city96 SD-Latent-Upscaler v1.0 file (5x5/7x7 kernels), "
                              "an older layout this pack does not run.", DOWNLOAD_HINT)
    c, w, depth = infer_shape(sd)
    scale = _resolve_scale(config, hints)
    cfg = City96Config(scale=scale, channels=c, width=w, depth=depth)
    if config:
        saved = City96Config.from_dict(config)
        if saved != cfg:
            raise ValueError(f"the saved config {asdict(saved)} does not match the weights {asdict(cfg)}")
    model = City96Upscaler(cfg)
    load_exact(model, sd, "city96 v2.1 layout")
    return model.eval().requires_grad_(False)
