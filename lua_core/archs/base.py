"""What every latent-upscaler family's module shares: the interface and the capabilities it declares.

The loaders, ``upscale_latent``, the tiler and the ComfyUI nodes only talk to this interface, so
adding a family means one new module in ``archs/`` and its entry in ``archs/__init__.py``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..errors import LuaError
from ..latent_formats import LATENT_SPACES
from ..scales import Scales

StateDict = Mapping[str, torch.Tensor]

#: working memory per output element per channel of the widest layer, for families without their own estimate
GENERIC_MEMORY_FACTOR = 3


class LatentUpscaler(nn.Module):
    """Base class of every family's module, and what each declares about itself.

    Subclasses set ``family`` and implement ``latent_channels``, ``native_scales``,
    ``config_dict`` and ``upscale``. ``upscale`` takes and returns *raw* latents (what a ComfyUI
    LATENT holds) in the module's dtype and device; any latent-space wrapping a family was trained
    with happens inside it. The class attributes and the memory methods are the family's
    capabilities: ``upscale_latent``, the tiler and the ComfyUI nodes read them instead of asking
    which family they hold.
    """

    family: str = "?"
    #: True when ``upscale`` needs to know the latent format (e.g. models trained on scaled latents).
    needs_latent_format: bool = False
    #: True when a scale between two native ones is served by the next larger native scale, resized
    #: down (``plan_scale``); False: only the native scales run.
    resample_to_any_scale: bool = False
    #: tiles start on multiples of this many latent pixels (LUA: its attention window, so a tile's
    #: windows are the whole latent's) and span at least two of them.
    tile_align: int = 1
    #: True: x1 returns the input unchanged (nothing to add); False: the model runs at x1 too, as
    #: its own node does (SesquiLSR refines the latent at the same size).
    identity_at_one: bool = True
    #: how ``working_memory`` estimates, for the logs of hosts that reserve memory with it
    memory_estimate: str = "generic: three activations as wide as the widest layer, at the output size"

    @property
    def latent_channels(self) -> int:
        raise NotImplementedError

    @property
    def native_scales(self) -> Scales:
        """The scales one forward pass produces."""
        raise NotImplementedError

    def config_dict(self) -> dict[str, Any]:
        """JSON-able config that rebuilds this module (stored in saved safetensors metadata)."""
        raise NotImplementedError

    def upscale(self, latent: torch.Tensor, scale: float, *, latent_format: str | None = None,
                **options: Any) -> torch.Tensor:
        raise NotImplementedError

    @property
    def made_for(self) -> tuple[str, ...]:
        """The latent formats (``lua_core.LATENT_FORMATS`` names) this file was made for, () when it
        does not say. Default: the ``latent_format`` a file saved by this pack records."""
        fmt = getattr(self, "metadata", {}).get("latent_format")
        return (fmt,) if fmt in LATENT_SPACES else ()

    def check_latent_format(self, latent_format: str | None) -> None:
        """Raise ``LuaError`` unless this model can work on ``latent_format`` latents (a name, or None
        when the caller does not know): missing where the model needs one (``needs_latent_format``),
        or another format than the file was made for (FLUX and Wan 2.1 latents both have 16
        channels and must never be confused)."""
        if latent_format is None:
            if self.needs_latent_format:
                raise LuaError(f"this {self.family} upscaler needs latent_format, one of "
                               f"{', '.join(self.made_for or LATENT_SPACES)}")
            return
        made = self.made_for
        if made and latent_format not in made:
            space = LATENT_SPACES[latent_format]
            raise LuaError(f"this {self.family} upscaler was made for {'/'.join(LATENT_SPACES[f].label for f in made)} "
                           f"latents, not {space.label} ({space.models}); use one made for {space.label}")

    def plan_scale(self, scale: float) -> tuple[float, bool]:
        """(scale to run natively, whether to resample the result to the requested size).

        A native scale runs as is (exact). Otherwise, for a model with a fixed set of scales that
        ``resample_to_any_scale``, the smallest native scale above the request runs and its output
        is resampled down: downscaling a sharper, larger prediction keeps the detail the model adds,
        while upscaling a smaller one would interpolate it away. Anything else is refused with
        ``LuaError`` saying what the model does.
        """
        scales = self.native_scales
        native = scales.native(scale)
        if native is not None:
            return native, False
        if scales.is_range:
            raise LuaError(f"this {self.family} upscaler does {scales}; x{scale:g} is outside that range")
        above = scales.above(scale)
        if self.resample_to_any_scale:
            if above is not None and scale >= 1.0:
                return above, True
            top = scales.largest
            raise LuaError(f"this {self.family} upscaler does any scale from 1 to {top:g} ({scales} exactly), not "
                           f"x{scale:g}: upscale by x{top:g} or less, then upscale again if you need more")
        raise LuaError(f"this {self.family} upscaler does {scales}, not x{scale:g}")

    def working_memory(self, shape: tuple[int, ...], scale: float) -> int:
        """Estimated peak bytes beyond the weights of one ``upscale`` of a latent of ``shape`` at the
        native ``scale``, in the module's dtype (its output included, the caller's copies not).

        Why: ComfyUI frees this much (unloading other models) before the forward runs, and the
        batch is split into sub-batches that fit. Too small risks an out-of-memory error (caught,
        then retried smaller); too large only unloads more than needed. This default suits plain
        conv nets: about three activations as wide as the widest layer, at the output size.
        """
        b, c, h, w = shape
        oh, ow = max(1, round(h * scale)), max(1, round(w * scale))
        widest = max((p.shape[0] for p in self.parameters() if p.ndim >= 2), default=c)
        return GENERIC_MEMORY_FACTOR * b * widest * oh * ow * self.dtype.itemsize

    def kept_memory(self, device: torch.device | str) -> int:
        """Bytes the module keeps on ``device`` beyond its state dict once it has run (derived
        values built by inference), which a host counting the weights alone would miss."""
        return 0

    # No ``device`` property: ComfyUI's ModelPatcher assigns ``model.device`` itself.
    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def weights_device(self) -> torch.device:
        return next(self.parameters()).device


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
