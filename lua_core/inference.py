"""``upscale_latent``: validation, dtype/device handling and scale choice around a family's forward.

Everything a caller can get wrong is checked here, once, with a message that says what was
expected; the families only ever see valid raw latents in their own dtype and device.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from .archs import LatentUpscaler, ScaleRange, describe_scales
from .errors import LuaError
from .latent_formats import LATENT_FORMATS
from .tiling import tiled_upscale


def validate_latent(model: LatentUpscaler, latent: Any) -> None:
    """Raise ``LuaError`` (a ValueError) unless ``latent`` is a finite [B, C, H, W] the model takes."""
    if not isinstance(latent, torch.Tensor):
        raise LuaError(f"latent must be a torch.Tensor [B, C, H, W], got {type(latent).__name__}")
    if latent.ndim != 4:
        raise LuaError(f"latent must have 4 dimensions [B, C, H, W], got shape {tuple(latent.shape)}"
                       + (" (a video latent [B, C, T, H, W]: pass one frame at a time)" if latent.ndim == 5 else ""))
    if latent.numel() == 0:
        raise LuaError(f"latent is empty (shape {tuple(latent.shape)}): every dimension must be at least 1")
    if not latent.is_floating_point():
        raise LuaError(f"latent must be a floating-point tensor, got {latent.dtype}")
    c = latent.shape[1]
    if c != model.latent_channels:
        raise LuaError(channel_mismatch_message(model, c))
    if not bool(torch.isfinite(latent).all()):
        bad = int((~torch.isfinite(latent)).sum())
        raise LuaError(f"latent contains {bad} NaN or infinite value(s): the sampler or VAE upstream "
                       "produced invalid numbers (try fp32 or another sampler)")


def channel_mismatch_message(model: LatentUpscaler, channels: int) -> str:
    from .latent_formats import families_with_channels
    fits = families_with_channels(channels)
    have = families_with_channels(model.latent_channels)
    return (f"the latent has {channels} channels ({fits or 'unknown model family'}) but this {model.family} "
            f"upscaler expects {model.latent_channels} ({have or 'another model family'}); "
            f"use an upscaler trained for {channels}-channel latents")


def output_size(h: int, w: int, scale: float) -> tuple[int, int]:
    """Output latent size: rounded to whole latent pixels, at least 1."""
    return max(1, int(round(h * scale))), max(1, int(round(w * scale)))


def plan_scale(model: LatentUpscaler, scale: float) -> tuple[float, bool]:
    """(scale to run natively, whether to resample the result to the requested size).

    A native scale runs as is (exact). Otherwise, for a model with a fixed set of scales, the
    smallest native scale above the request runs and its output is resampled down: downscaling a
    sharper, larger prediction keeps the detail the model adds, while upscaling a smaller one
    would interpolate it away. Requests above the largest native scale are refused.
    """
    scales = model.native_scales
    if isinstance(scales, ScaleRange):
        if scale in scales:
            return scale, False
        raise LuaError(f"this {model.family} upscaler does {scales}; x{scale:g} is outside that range")
    if any(math.isclose(scale, s, rel_tol=0, abs_tol=1e-6) for s in scales):
        return float(min(scales, key=lambda s: abs(s - scale))), False
    above = [s for s in scales if s > scale]
    if getattr(model, "resample_to_any_scale", False):
        if above and scale >= 1.0:
            return min(above), True
        top = max(scales)
        raise LuaError(f"this {model.family} upscaler does any scale from 1 to {top:g} ({describe_scales(scales)} "
                       f"exactly), not x{scale:g}: upscale by x{top:g} or less, then upscale again if you need more")
    raise LuaError(f"this {model.family} upscaler does {describe_scales(scales)}, not x{scale:g}")


def resample(latent: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Antialiased bicubic resize (PIL's choice for downscaling) in fp32."""
    if tuple(latent.shape[-2:]) == size:
        return latent
    return F.interpolate(latent.float(), size=size, mode="bicubic", align_corners=False,
                         antialias=True).to(latent.dtype)


def upscale_latent(model: LatentUpscaler, latent: torch.Tensor, scale: float, *,
                   latent_format: Any = None, max_memory: int | None = None, tile: int | None = None,
                   overlap: int | None = None,
                   progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """Upscale raw latents ``[B, C, H, W]`` by ``scale``; returns the input's device and dtype.

    ``latent_format`` is needed by families trained on scaled latents (one of LATENT_FORMATS, or a
    ComfyUI latent format object). ``max_memory`` (bytes) bounds the working memory of families
    that can run in chunks without changing the result (None: the device's free memory).
    ``tile`` (latent pixels, with ``overlap``) splits the latent into overlapping tiles when even
    that does not fit: approximate, see ``lua_core.tiling``. ``progress(done, total)`` is called
    as the work advances; an exception raised from it (a cancel) stops the work.
    """
    if not isinstance(model, LatentUpscaler):
        raise LuaError(f"model must be a module from lua_core.load_model, got {type(model).__name__}")
    validate_latent(model, latent)
    try:
        scale = float(scale)
    except (TypeError, ValueError):
        raise LuaError(f"scale must be a number, got {scale!r}") from None
    if not math.isfinite(scale) or scale < 1.0:
        raise LuaError(f"scale must be a finite number >= 1, got {scale!r}")
    if max_memory is not None and (isinstance(max_memory, bool) or not isinstance(max_memory, (int, float))
                                   or not math.isfinite(max_memory) or max_memory <= 0):
        raise LuaError(f"max_memory must be a positive number of bytes (or None: the device's free memory), "
                       f"got {max_memory!r}")
    if tile is not None and (isinstance(tile, bool) or not isinstance(tile, int) or tile < 1):
        raise LuaError(f"tile must be a positive number of latent pixels, got {tile!r}")
    if overlap is not None and (not isinstance(overlap, int) or overlap < 0
                                or (tile is not None and overlap >= tile)):
        raise LuaError(f"overlap must be a whole number of latent pixels from 0 to tile - 1, got {overlap!r}")
    if scale == 1.0:  # nothing to add: every family returns its input at x1 (NNLatentUpscale does too)
        return latent.detach().clone()
    run_scale, needs_resample = plan_scale(model, scale)
    h, w = latent.shape[-2:]
    target = output_size(h, w, scale)
    fmt = _format_name(latent_format)
    if model.needs_latent_format and fmt is None:
        raise LuaError(f"this {model.family} upscaler works in the model's scaled latent space and needs "
                       f"latent_format, one of {', '.join(LATENT_FORMATS)}")
    x = latent.to(device=model.weights_device, dtype=model.dtype)

    def run(part: torch.Tensor, report: Callable[[int, int], None] | None) -> torch.Tensor:
        return model.upscale(part, run_scale, latent_format=fmt, max_memory=max_memory, progress=report)

    with torch.inference_mode():
        if tile is not None and tile < max(h, w):
            if run_scale != int(run_scale):
                raise LuaError(f"tiling needs an integer scale; this {model.family} upscaler runs x{run_scale:g}. "
                               "Set tile to 0 (off), or pick an x2/x4 upscaler if the latent needs tiles")
            out = tiled_upscale(lambda part: run(part, None), x, int(run_scale), tile, overlap,
                                align=getattr(model, "tile_align", 1), progress=progress)
        else:
            out = run(x, progress)
        if needs_resample:
            out = resample(out, target)
    if not bool(torch.isfinite(out).all()):
        raise LuaError(f"the {model.family} upscaler produced NaN or infinite values in {model.dtype} "
                       "(an overflow in half precision?): load it in bf16 or fp32")
    # one copy, made outside inference mode so callers can use the result freely
    return out.to(device=latent.device, dtype=latent.dtype, copy=True)


def _format_name(latent_format: Any) -> str | None:
    """Normalise 'flux'/'sd3'/'sdxl'/'sd15' or a ComfyUI latent format object to a name."""
    if latent_format is None:
        return None
    from .latent_formats import format_name
    return format_name(latent_format)
