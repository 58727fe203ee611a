"""What flows on a ``LUA_MODEL`` wire, and running it under ComfyUI's memory management.

The loader wraps a ``lua_core`` upscaler in a ``comfy.model_patcher.ModelPatcher`` (as ComfyUI's own
latent upscalers do), so ``model_management`` moves it to the torch device when it is used and
offloads it when memory is needed, and the loaded model is reused across runs.

``run_upscale`` is shared by every node that upscales (this pack's upscale node, the progressive
sampler): it connects ``lua_core.upscale_latent`` (which checks, plans, splits the batch and falls
back on out-of-memory errors) to ComfyUI's memory management, progress and cancel, once, here.
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
    #: the latent formats the file was made for (its metadata or the known-file registry); () = not known
    fits: tuple[str, ...] = ()

    @property
    def upscaler(self) -> Any:
        return self.patcher.model.upscaler

    @property
    def latent_channels(self) -> int:
        return self.upscaler.latent_channels

    def made_for(self) -> str:
        """"FLUX/SD3" (what the file was made for), else the latent spaces of its channel count."""
        from ..lua_core import LATENT_SPACES, families_with_channels

        if self.fits:
            return "/".join(LATENT_SPACES[f].label for f in self.fits)
        return families_with_channels(self.latent_channels) or f"{self.latent_channels}-channel latents"

    def family_label(self) -> str:
        from ..lua_core import family_by_name

        try:
            return family_by_name(self.upscaler.family).label
        except KeyError:
            return str(self.upscaler.family)

    def check_format(self, fmt: str, where: str) -> None:
        """Refuse latents of ``fmt`` (said by ``where``) for a file made for other latents: a FLUX LUA on
        Qwen-Image latents runs (same channel count) but gives wrong output."""
        from ..lua_core import LATENT_SPACES, LuaError
        from .catalog import fits_format

        if not fits_format(self.fits, fmt):
            raise LuaError(f"{where} says {LATENT_SPACES[fmt].label} latents, but {self.name} is a "
                           f"{self.family_label()} upscaler made for {self.made_for()} latents: its output on "
                           f"these would be wrong. In Load LUA Model, pick an upscaler for "
                           f"{LATENT_SPACES[fmt].label} (or 'auto' with your MODEL connected to its model input).")

    def describe(self) -> str:
        u = self.upscaler
        return f"{self.name} ({u.family}, {u.latent_channels} channels, {u.native_scales})"


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

    ``lua_core.upscale_latent`` checks the input, plans the scale, splits the batch into
    sub-batches that fit and falls back on out-of-memory errors (smaller sub-batches, then tiles,
    ``tile_on_oom``); this adds what ComfyUI owns:

    * before any work (``reserve``), loads the model through ``model_management`` with the
      working-memory estimate plus what the model keeps on that device, so other models are
      offloaded first if needed;
    * the memory a forward may use is ComfyUI's free memory, read before each sub-batch;
    * a cancel raises ComfyUI's interrupt from the progress callback (inside each forward too, so
      a long single forward stops);
    * ``progress(done, total)`` counts hundredths of a sample over the whole batch, forward only.

    Returns float32 on ComfyUI's intermediate device (what LATENT consumers expect).
    """
    import comfy.model_management as mm

    from ..lua_core import LuaError, OutOfMemoryError, upscale_latent

    upscaler = handle.upscaler
    if latent_format is None:
        latent_format = handle.latent_format
    device = handle.patcher.load_device
    told = 0

    def reserve(need: int) -> None:
        # full load: a partial (lowvram) load moves only leaf modules' own weights and would leave LUA's
        # relative-position tables and buffers on the CPU
        kept = upscaler.kept_memory(device)  # once per model, not per sample
        log.info("ComfyUI-LUA: reserving %.1f MiB to upscale with %s in %s (%s): %.1f MiB working memory (%s) + "
                 "%.1f MiB it keeps on %s", (need + kept) / 2**20, handle.name,
                 str(upscaler.dtype).removeprefix("torch."), handle.info.get("dtype_reason", "as loaded"),
                 need / 2**20, upscaler.memory_estimate, kept / 2**20, device)
        mm.load_models_gpu([handle.patcher], memory_required=need + kept, force_full_load=True)
        mm.throw_exception_if_processing_interrupted()

    def free() -> int:
        return max(1, int(mm.get_free_memory(device) * MEMORY_SHARE))

    def report(done: int, total: int) -> None:
        nonlocal told
        mm.throw_exception_if_processing_interrupted()
        if progress is not None and done > told:
            told = done
            progress(done, total)

    try:
        out = upscale_latent(upscaler, samples, scale, latent_format=latent_format, max_memory=free, tile=tile,
                             overlap=overlap, progress=report, reserve=reserve, tile_on_oom=True)
    except OutOfMemoryError as e:
        tiles = f", even in {e.tile}-pixel tiles" if e.tile else ""
        raise LuaError(
            f"out of memory upscaling one {e.size[0]}x{e.size[1]} latent with {handle.name}{tiles}. Free memory "
            f"(unload other models, lower the resolution or the batch) or start ComfyUI with --lowvram. "
            f"({e.cause})") from None
    return out.to(device=mm.intermediate_device(), dtype=torch.float32)
