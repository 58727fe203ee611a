"""What flows on a ``LUA_MODEL`` wire, and running it under ComfyUI's memory management.

The loader wraps a ``lua_core`` upscaler in a ``comfy.model_patcher.ModelPatcher`` (as ComfyUI's own
latent upscalers do), so ``model_management`` moves it to the torch device when it is used and
offloads it when memory is needed, and the loaded model is reused across runs.

``run_upscale`` is shared by every node that upscales (this pack's upscale node, the progressive
sampler): batch splitting, out-of-memory fallback, progress and cancel are done once, here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from comfy_api.latest import io

log = logging.getLogger("ComfyUI-LUA")

#: the wire type; its own type, so built-in LATENT_UPSCALE_MODEL nodes never receive it
LUAModel = io.Custom("LUA_MODEL")

#: share of the free memory a forward may plan to use (the rest: allocator slack, other tensors)
MEMORY_SHARE = 0.8
#: smallest tile tried after an out-of-memory error at batch size 1 (latent pixels)
MIN_TILE = 16  # latent pixels; at least two of the model's windows (LUA: 32), or tiles could not overlap


class LUALatentUpscaler(torch.nn.Module):
    """ModelPatcher writes bookkeeping attributes (``device``, ``model_lowvram``...) on the module it
    manages; this holder takes them so the lua_core module stays untouched."""

    def __init__(self, upscaler: torch.nn.Module):
        super().__init__()
        self.upscaler = upscaler


@dataclass
class LUAModelHandle:
    """A loaded upscaler plus what the graph told the loader about it.

    Several handles may share one patcher (the loader's cache), so model_management sees one model
    however many loader nodes or runs use it.
    """

    patcher: Any  # comfy.model_patcher.ModelPatcher around a LUALatentUpscaler
    name: str
    #: "flux" | "sd3" | "sdxl" | "sd15" from the connected MODEL, or None
    latent_format: str | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def upscaler(self) -> Any:
        return self.patcher.model.upscaler

    @property
    def latent_channels(self) -> int:
        return self.upscaler.latent_channels

    def describe(self) -> str:
        from ..lua_core.archs import describe_scales

        u = self.upscaler
        return f"{self.name} ({u.family}, {u.latent_channels} channels, {describe_scales(u.native_scales)})"


def new_patcher(upscaler: torch.nn.Module) -> Any:
    """A ModelPatcher for ``upscaler`` (moved to ComfyUI's offload device, where patchers start)."""
    import comfy.model_management as mm
    import comfy.model_patcher

    offload = mm.unet_offload_device()
    holder = LUALatentUpscaler(upscaler.eval().to(offload))
    return comfy.model_patcher.ModelPatcher(holder, load_device=mm.get_torch_device(), offload_device=offload)


def make_handle(upscaler: torch.nn.Module, name: str, latent_format: str | None = None,
                **info: Any) -> LUAModelHandle:
    """A handle around a fresh patcher (the loader reuses cached patchers instead)."""
    return LUAModelHandle(new_patcher(upscaler), name, latent_format, dict(info))


def run_upscale(handle: LUAModelHandle, samples: torch.Tensor, scale: float, *,
                latent_format: Any = None, tile: int | None = None, overlap: int | None = None,
                progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """Upscale raw latents [B, C, H, W] on the torch device within ComfyUI's free memory.

    * Loads the model through ``model_management`` with a working-memory estimate, so other models
      are offloaded first if needed, then splits the batch into sub-batches that fit what is free.
    * Checks for a cancel between sub-batches and inside each forward (the forward's progress
      callback raises ComfyUI's interrupt), so a long single forward stops too.
    * On an out-of-memory error: halves the sub-batch, then (batch 1) falls back to tiles, halving
      them down to ``MIN_TILE`` latent pixels (tiles are approximate; a warning says so).
    * ``progress(done, total)`` counts hundredths of a sample over the whole batch.

    Returns float32 on ComfyUI's intermediate device (what LATENT consumers expect).
    """
    import comfy.model_management as mm

    from ..lua_core import upscale_latent
    from ..lua_core.devices import is_out_of_memory
    from ..lua_core.errors import LuaError
    from ..lua_core.inference import validate_latent
    from .memory import kept_memory, working_memory

    validate_latent(handle.upscaler, samples)  # before loading anything (an empty batch would run nothing)
    if latent_format is None:
        latent_format = handle.latent_format
    upscaler = handle.upscaler
    batch = samples.shape[0]
    per_sample = working_memory(upscaler, (1, *samples.shape[1:]), scale, upscaler.dtype)
    # full load: a partial (lowvram) load moves only leaf modules' own weights and would leave LUA's
    # relative-position tables and buffers on the CPU
    kept = kept_memory(upscaler, upscaler.dtype, handle.patcher.load_device)  # once per model, not per sample
    mm.load_models_gpu([handle.patcher], memory_required=per_sample * batch + kept, force_full_load=True)
    device = handle.patcher.load_device
    free = mm.get_free_memory(device)
    step = max(1, min(batch, int(free * MEMORY_SHARE) // max(1, per_sample)))
    total = batch * 100
    outs: list[torch.Tensor] = []
    start = 0
    oom: BaseException | None = None  # set once tiles are a fallback, not the user's choice
    told = -1

    def tell(done: int) -> None:
        nonlocal told
        if progress is not None and done != told:
            told = done
            progress(done, total)

    def report(first: int, count: int) -> Callable[[int, int], None]:
        def cb(done: int, of: int) -> None:
            mm.throw_exception_if_processing_interrupted()
            if of > 0:
                tell(first * 100 + (count * 100 * min(done, of)) // of)
        return cb

    while start < batch:
        mm.throw_exception_if_processing_interrupted()
        count = min(step, batch - start)
        part = samples[start:start + count].to(device)
        try:
            out = upscale_latent(upscaler, part, scale, latent_format=latent_format,
                                 max_memory=max(1, int(mm.get_free_memory(device) * MEMORY_SHARE)), tile=tile,
                                 overlap=overlap, progress=report(start, count))
        except LuaError:
            if oom is not None:  # e.g. tiles need an integer scale: report the memory problem instead
                raise _out_of_memory(samples.shape[-2:], tile or 0, oom, handle) from oom
            raise
        except (RuntimeError, MemoryError) as e:
            if not is_out_of_memory(e):
                raise
            del part
            mm.soft_empty_cache()
            if count > 1:
                step = max(1, count // 2)
                log.warning("ComfyUI-LUA: out of memory upscaling %d latents at once; retrying %d at a time",
                            count, step)
                continue
            oom = RuntimeError(str(e))  # the message only: the traceback would pin the failed tensors
            tile = _smaller_tile(tile, samples.shape[-2:], e, handle)
            log.warning("ComfyUI-LUA: out of memory on one %dx%d latent; retrying in %d-pixel tiles (approximate)",
                        samples.shape[-2], samples.shape[-1], tile)
            continue
        outs.append(out.to(device=mm.intermediate_device(), dtype=torch.float32))
        start += count
        tell(start * 100)
    return torch.cat(outs) if len(outs) > 1 else outs[0]


def _smaller_tile(tile: int | None, hw: torch.Size, error: BaseException, handle: LUAModelHandle) -> int:
    """The next tile size to try after an out-of-memory error, or a clear error when none is left."""
    current = tile if tile is not None else max(hw)
    nxt = current // 2
    if nxt < max(MIN_TILE, 2 * getattr(handle.upscaler, "tile_align", 1)):
        raise _out_of_memory(hw, current, error, handle) from error
    return nxt


def _out_of_memory(hw: torch.Size, tile: int, error: BaseException, handle: LUAModelHandle) -> Exception:
    from ..lua_core.errors import LuaError, first_line

    tiles = f", even in {tile}-pixel tiles" if tile else ""
    first = first_line(error, 200)
    return LuaError(f"out of memory upscaling one {hw[0]}x{hw[1]} latent with {handle.name}{tiles}. Free memory "
                    f"(unload other models, lower the resolution or the batch) or start ComfyUI with --lowvram. "
                    f"({first})")
