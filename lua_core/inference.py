"""``upscale_latent``: validation, scale planning, memory, batching and dtype/device around a family's forward.

Everything a caller can get wrong is checked here, once, with a message that says what was
expected; the families only ever see valid raw latents in their own dtype and device. The batch
is split into sub-batches that fit the memory a caller allows, and an out-of-memory error halves
the sub-batch (exact) and, when the caller allows it, falls back to tiles (approximate): hosts
such as the ComfyUI nodes only say how much memory there is and where to report progress.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from .archs.base import LatentUpscaler
from .devices import is_out_of_memory, release_cached_memory
from .errors import LuaError, OutOfMemoryError, first_line
from .tiling import tiled_upscale

log = logging.getLogger(__name__)

#: smallest tile tried after an out-of-memory error at batch size 1 (latent pixels); at least two of
#: the model's tile alignments (LUA: 32), or tiles could not overlap
MIN_TILE = 16
#: progress units per latent of the batch
PER_SAMPLE = 100

Progress = Callable[[int, int], None]


def validate_latent(model: LatentUpscaler, latent: Any) -> None:
    """Raise ``LuaError`` (a ValueError) unless ``latent`` is a finite [B, C, H, W] or [B, C, T, H, W]
    the model takes."""
    if not isinstance(latent, torch.Tensor):
        raise LuaError(f"latent must be a torch.Tensor [B, C, H, W], got {type(latent).__name__}")
    if latent.ndim not in (4, 5):
        raise LuaError(f"latent must have 4 dimensions [B, C, H, W] (or 5, [B, C, T, H, W]: frame by frame), got "
                       f"shape {tuple(latent.shape)}")
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


def io_memory(shape: tuple[int, ...], target: tuple[int, int]) -> int:
    """Bytes of the copies around a forward: the input, the output and its fp32 resample, in fp32."""
    b, c, h, w = shape
    return (b * c * h * w + 2 * b * c * target[0] * target[1]) * 4


def resample(latent: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Antialiased bicubic resize (PIL's choice for downscaling) in fp32."""
    if tuple(latent.shape[-2:]) == size:
        return latent
    return F.interpolate(latent.float(), size=size, mode="bicubic", align_corners=False,
                         antialias=True).to(latent.dtype)


def upscale_latent(model: LatentUpscaler, latent: torch.Tensor, scale: float, *,
                   latent_format: Any = None, max_memory: int | Callable[[], int] | None = None,
                   tile: int | None = None, overlap: int | None = None, progress: Progress | None = None,
                   reserve: Callable[[int], None] | None = None, tile_on_oom: bool = False) -> torch.Tensor:
    """Upscale raw latents ``[B, C, H, W]`` by ``scale``; returns the input's device and dtype.

    * ``latent_format``: needed by families trained on scaled latents (one of LATENT_FORMATS, or a
      ComfyUI latent format object).
    * ``max_memory``: bytes a forward may use, or a function returning them (read before each
      sub-batch, for a host whose free memory changes). Given, the batch runs in sub-batches whose
      estimate (``model.working_memory``) fits; families that can chunk their forward without
      changing the result (LUA) chunk to it. None: the whole batch at once, the model bounding its
      forward by the device's free memory.
    * ``tile`` (latent pixels, with ``overlap``): split each latent into overlapping tiles when even
      the chunked forward does not fit: approximate, see ``lua_core.tiling``.
    * ``progress(done, total)``: hundredths of a latent over the batch (``total`` = 100 * B), called
      after every step of the work (a forward stage, a tile; ``done`` repeats when a step is under
      a hundredth) and after each sub-batch; an exception raised from it (a cancel) stops the work.
    * ``reserve(need)``: called once, after every check and before any work, with the bytes the
      whole batch is estimated to need beyond the weights: where a host makes room (ComfyUI
      unloads other models and moves this one to its device there).
    * An out-of-memory error halves the sub-batch (the result is the same); at one latent it is
      raised, or with ``tile_on_oom`` the latent is retried in tiles halved down to ``MIN_TILE``
      (approximate, logged as a warning) before ``OutOfMemoryError`` is raised.
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
    if max_memory is not None and not callable(max_memory):
        _check_memory(max_memory)
    if tile is not None and (isinstance(tile, bool) or not isinstance(tile, int) or tile < 1):
        raise LuaError(f"tile must be a positive number of latent pixels, got {tile!r}")
    if overlap is not None and (not isinstance(overlap, int) or overlap < 0
                                or (tile is not None and overlap >= tile)):
        raise LuaError(f"overlap must be a whole number of latent pixels from 0 to tile - 1, got {overlap!r}")
    if scale == 1.0 and model.identity_at_one:  # nothing to add (NNLatentUpscale returns its input too)
        return latent.detach().clone()
    run_scale, needs_resample = model.plan_scale(scale)
    frames = None
    if latent.ndim == 5:  # [B, C, T, H, W]: every frame an image, in (b, t) order
        frames = latent.shape[0], latent.shape[2]
        latent = latent.transpose(1, 2).reshape(-1, *latent.shape[1:2], *latent.shape[3:])
    b, c, h, w = latent.shape
    target = output_size(h, w, scale)
    fmt = _format_name(latent_format)
    model.check_latent_format(fmt)
    if tile is not None and tile < max(h, w) and run_scale != int(run_scale):
        raise LuaError(f"tiling needs an integer scale; this {model.family} upscaler runs x{run_scale:g}. "
                       "Set tile to 0 (off), or pick an x2/x4 upscaler if the latent needs tiles")
    per_latent = io_memory((1, c, h, w), target) + model.working_memory((1, c, h, w), run_scale)
    if reserve is not None:
        reserve(per_latent * b)
    run = _Run(model, run_scale, needs_resample, target, fmt, overlap, progress, b)
    out = run.batch(latent, max_memory, per_latent, tile, tile_on_oom)
    if frames is not None:
        out = out.reshape(*frames, *out.shape[1:]).transpose(1, 2).contiguous()
    return out


class _Run:
    """One planned upscale, run over sub-batches with the out-of-memory fallbacks."""

    def __init__(self, model: LatentUpscaler, run_scale: float, needs_resample: bool, target: tuple[int, int],
                 fmt: str | None, overlap: int | None, progress: Progress | None, batch: int):
        self.model, self.run_scale, self.needs_resample, self.target = model, run_scale, needs_resample, target
        self.fmt, self.overlap, self.progress = fmt, overlap, progress
        self.total, self.told = batch * PER_SAMPLE, 0

    def tell(self, done: int, *, step: bool = False) -> None:
        """Report ``done``; a step of the work is reported even when under a hundredth (the same value
        again), so a callback that cancels is asked after every forward stage and every tile."""
        if self.progress is not None and (step or done != self.told):
            self.told = done
            self.progress(done, self.total)

    def reporter(self, first: int, count: int) -> Progress:
        """Maps a forward's (or the tiler's) own (done, of) onto the batch's hundredths."""
        def report(done: int, of: int) -> None:
            if of > 0:
                self.tell(first * PER_SAMPLE + (count * PER_SAMPLE * min(done, of)) // of, step=True)
        return report

    def batch(self, latent: torch.Tensor, max_memory: int | Callable[[], int] | None, per_latent: int,
              tile: int | None, tile_on_oom: bool) -> torch.Tensor:
        model, b = self.model, latent.shape[0]
        device = model.weights_device
        step = b if max_memory is None else max(1, min(b, _budget(max_memory) // max(1, per_latent)))
        outs: list[torch.Tensor] = []
        start = 0
        oom: str | None = None  # set once tiles are a fallback, not the caller's choice
        while start < b:
            count = min(step, b - start)
            part = latent[start:start + count].to(device=device, dtype=model.dtype)
            try:
                out = self.part(part, None if max_memory is None else _budget(max_memory), tile,
                                self.reporter(start, count))
            except LuaError:
                if oom is not None:  # e.g. tiles of this latent's size: report the memory problem instead
                    raise OutOfMemoryError(tuple(latent.shape[-2:]), tile or 0, oom) from None
                raise
            except (RuntimeError, MemoryError) as e:
                if not is_out_of_memory(e):
                    raise
                del part
                release_cached_memory(device)
                if count > 1:
                    step = max(1, count // 2)
                    log.warning("out of memory upscaling %d latents at once; retrying %d at a time", count, step)
                    continue
                if not tile_on_oom:
                    raise
                oom = first_line(e, 200)  # the message only: the traceback would pin the failed tensors
                tile = self.smaller_tile(tile, tuple(latent.shape[-2:]), oom)
                log.warning("out of memory on one %dx%d latent; retrying in %d-pixel tiles (approximate)",
                            latent.shape[-2], latent.shape[-1], tile)
                continue
            # one copy, made outside inference mode so callers can use the result freely
            outs.append(out.to(device=latent.device, dtype=latent.dtype, copy=True))
            start += count
            self.tell(start * PER_SAMPLE)
        return torch.cat(outs) if len(outs) > 1 else outs[0]

    def part(self, x: torch.Tensor, max_memory: int | None, tile: int | None,
             report: Progress) -> torch.Tensor:
        """One sub-batch: the forward (tiled when asked and useful), the resample, the finite check."""
        model = self.model

        def run(piece: torch.Tensor, progress: Progress | None) -> torch.Tensor:
            return model.upscale(piece, self.run_scale, latent_format=self.fmt, max_memory=max_memory,
                                 progress=progress)

        h, w = x.shape[-2:]
        with torch.inference_mode():
            if tile is not None and tile < max(h, w):
                if self.run_scale != int(self.run_scale):
                    raise LuaError(f"tiling needs an integer scale; this {model.family} upscaler runs "
                                   f"x{self.run_scale:g}. Set tile to 0 (off), or pick an x2/x4 upscaler if the "
                                   "latent needs tiles")
                out = tiled_upscale(lambda piece: run(piece, None), x, int(self.run_scale), tile, self.overlap,
                                    align=model.tile_align, progress=report)
            else:
                out = run(x, report)
            if self.needs_resample:
                out = resample(out, self.target)
        if not bool(torch.isfinite(out).all()):
            raise LuaError(f"the {model.family} upscaler produced NaN or infinite values in {model.dtype} "
                           "(an overflow in half precision?): load it in bf16 or fp32")
        return out

    def smaller_tile(self, tile: int | None, hw: tuple[int, int], cause: str) -> int:
        """The next tile size to try after an out-of-memory error, or ``OutOfMemoryError`` when none is left."""
        current = tile if tile is not None else max(hw)
        nxt = current // 2
        if nxt < max(MIN_TILE, 2 * self.model.tile_align):
            raise OutOfMemoryError(hw, current, cause)
        return nxt


def _check_memory(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise LuaError(f"max_memory must be a positive number of bytes (or None: the device's free memory), "
                       f"got {value!r}")
    return int(value)


def _budget(max_memory: int | Callable[[], int]) -> int:
    """Bytes allowed now: the number, or what the caller's function says (checked like a number)."""
    return _check_memory(max_memory() if callable(max_memory) else max_memory)


def _format_name(latent_format: Any) -> str | None:
    """Normalise a format name or alias, or a ComfyUI latent format object, to a name (LuaError if unknown)."""
    if latent_format is None:
        return None
    from .latent_formats import format_name
    return format_name(latent_format)


__all__ = ["MIN_TILE", "io_memory", "output_size", "resample", "upscale_latent", "validate_latent"]
