"""What every latent-upscaler family shares: the module interface and the registry entry.

The loaders, the inference layer and the ComfyUI nodes only talk to this interface, so adding a
family means one new module in ``archs/`` and one line in ``archs/__init__.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

StateDict = Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class ScaleRange:
    """A continuous range of scale factors (both ends included)."""

    low: float
    high: float

    def __contains__(self, scale: object) -> bool:
        return isinstance(scale, (int, float)) and self.low - 1e-9 <= float(scale) <= self.high + 1e-9

    def __str__(self) -> str:
        return f"any scale from {self.low:g} to {self.high:g}"


def describe_scales(scales: frozenset[float] | ScaleRange) -> str:
    """Human text for a model's scales, for error messages and UI labels."""
    if isinstance(scales, ScaleRange):
        return str(scales)
    return ", ".join(f"x{s:g}" for s in sorted(scales))


class LatentUpscaler(nn.Module):
    """Base class of every family's module.

    Subclasses set ``family`` and implement ``native_scales`` and ``upscale``. ``upscale`` takes and
    returns *raw* latents (what a ComfyUI LATENT holds) in the module's dtype and device; any
    latent-space wrapping a family was trained with happens inside it.
    """

    family: str = "?"
    #: True when ``upscale`` needs to know the latent format (e.g. models trained on scaled latents).
    needs_latent_format: bool = False

    @property
    def latent_channels(self) -> int:
        raise NotImplementedError

    @property
    def native_scales(self) -> frozenset[float] | ScaleRange:
        """The scales one forward pass produces."""
        raise NotImplementedError

    def config_dict(self) -> dict[str, Any]:
        """JSON-able config that rebuilds this module (stored in saved safetensors metadata)."""
        raise NotImplementedError

    def upscale(self, latent: torch.Tensor, scale: float, *, latent_format: str | None = None,
                **options: Any) -> torch.Tensor:
        raise NotImplementedError

    # No ``device`` property: ComfyUI's ModelPatcher assigns ``model.device`` itself.
    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def weights_device(self) -> torch.device:
        return next(self.parameters()).device


@dataclass(frozen=True)
class Family:
    """Registry entry: how a family recognises its state dicts and builds itself from them.

    ``build(state_dict, config, hints)`` gets the tensors, the config found in the file (or None)
    and loader hints (such as the file name, from which some families take their scale).
    """

    name: str
    detect: Callable[[StateDict], bool]
    build: Callable[[StateDict, dict[str, Any] | None, dict[str, Any]], LatentUpscaler]
    description: str = ""


def load_exact(module: nn.Module, sd: StateDict, what: str) -> None:
    """Load ``sd`` into ``module`` strictly, or raise ValueError saying which tensors do not fit.

    ``load_state_dict``'s own RuntimeError lists every key; this names the first few of each kind
    of problem, which is what a user comparing a file against its config needs.
    """
    expected = module.state_dict()
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    wrong = sorted(k for k in set(expected) & set(sd) if tuple(expected[k].shape) != tuple(sd[k].shape))
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} tensor(s) have the wrong shape (e.g. {k}: file "
                         f"{tuple(sd[k].shape)}, expected {tuple(expected[k].shape)})")
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        raise ValueError(f"weights do not match the {what}: " + "; ".join(parts))
    module.load_state_dict(dict(sd), strict=True)
