"""``LUA_LoadModel`` ("Load LUA Model"): a local or downloadable latent upscaler -> ``LUA_MODEL``.

Why more than ComfyUI's ``LatentUpscaleModelLoader``: users rarely know which of four families fits
their model, so the loader can read the connected MODEL's latent format, refuse a checkpoint that
cannot take its latents before anything is downloaded, and pick one itself (``auto``). Loaded
models are cached and handed to ``comfy.model_management`` through one ModelPatcher per file and
dtype, so a second run (or a second loader node) does not rebuild or reload anything.
"""

from __future__ import annotations

import logging
import weakref
from pathlib import Path
from typing import Any

import torch
from comfy_api.latest import io

from ..lua_core import LuaError, family_by_name, file_stamp
from . import catalog
from .handle import LUAModel, LUAModelHandle, new_patcher

log = logging.getLogger("ComfyUI-LUA")

NODE_ID = "LUA_LoadModel"
DISPLAY_NAME = "Load LUA Model"
DTYPES: dict[str, torch.dtype | None] = {"auto": None, "fp32": torch.float32, "fp16": torch.float16,
                                         "bf16": torch.bfloat16}

#: (path, size, mtime, dtype) -> ModelPatcher. Weak: an entry lives as long as ComfyUI holds the model
#: (an output cache, a running prompt), so switching models never keeps the old one in memory.
_PATCHERS: weakref.WeakValueDictionary[tuple, Any] = weakref.WeakValueDictionary()


class LoadLUAModel(io.ComfyNode):
    """Loads (and, the first time, downloads) a latent upscaler for Latent Upscale (LUA)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=NODE_ID,
            display_name=DISPLAY_NAME,
            category="loaders",
            description=(
                "Loads a latent upscale model for the Latent Upscale (LUA) node: LUA for FLUX/SD3 latents, "
                "city96 SD-Latent-Upscaler, NNLatentUpscale or LSSGen for SDXL/SD1.5. Upscale the latent "
                "x2/x4 before the VAE decode or a hires fix pass, with no pixel-space upscaler. 'auto' picks "
                "one that fits the connected MODEL (without one: LUA for FLUX); download/ entries are fetched "
                "into models/latent_upscale_models on first use. LSSGen weights: no licence stated, research "
                "use only."),
            inputs=[
                io.Combo.Input(
                    "model_name", options=catalog.option_values(), default=catalog.AUTO,
                    tooltip=(
                        "auto: the best upscaler for the connected MODEL's latents (a file on disk first, "
                        "else a download); without a MODEL, LUA for FLUX. Files come from "
                        "models/latent_upscale_models, labelled [family · channels · scales]. download/ "
                        "entries are fetched there the first time they run. 'research use': LSSGen, no "
                        "licence stated.")),
                io.Combo.Input(
                    "dtype", options=list(DTYPES), default="auto",
                    tooltip=("Weights precision. auto: on a CPU, bf16 where it has bf16 matrix units (Intel AMX: "
                             "about 3x faster than fp32 for LUA), else fp32; on a GPU bf16 where ComfyUI would use "
                             "it, else fp16 where supported, else fp32.")),
                io.Model.Input(
                    "model", optional=True,
                    tooltip=("Optional: the diffusion model whose latents you upscale. Its latent format lets "
                             "'auto' choose, refuses an upscaler for other latents before any download, and "
                             "tells LSSGen which latent space it works in.")),
            ],
            outputs=[LUAModel.Output(tooltip="The loaded upscaler, for Latent Upscale (LUA).")],
        )

    @classmethod
    def validate_inputs(cls, model_name: str) -> bool | str:
        """Accept any value that names an existing entry, with or without today's label (saved
        workflows keep working after a label changes); say where we looked otherwise."""
        if model_name == catalog.AUTO:
            return True
        try:
            catalog.find(model_name)
        except LuaError as e:
            return f"{DISPLAY_NAME}: {e}"
        return True

    @classmethod
    def execute(cls, model_name: str, dtype: str = "auto", model: Any = None) -> io.NodeOutput:
        try:
            return io.NodeOutput(load(model_name, dtype, model))
        except LuaError as e:
            raise ValueError(f"{DISPLAY_NAME}: {e}") from None


def load(model_name: str, dtype: str = "auto", model: Any = None) -> LUAModelHandle:
    """The node's work, callable from other nodes: resolve, check, fetch, load (cached), wrap."""
    torch_dtype, dtype_reason = resolve_dtype(dtype)
    fmt, channels = model_latent(model)
    local = catalog.local_choices()
    if model_name == catalog.AUTO:
        choice = catalog.auto_choice(local + catalog.download_choices(), fmt, channels)
        log.info("ComfyUI-LUA: auto picked %s for %s latents", choice.name, fmt or "FLUX (no MODEL connected)")
    else:
        choice = catalog.find(model_name, local)
    if channels is not None and choice.channels is not None and choice.channels != channels:
        raise LuaError(mismatch_message(choice.describe(), choice.channels, fmt, channels, local))
    if fmt is not None and not catalog.takes(choice, fmt):
        raise LuaError(format_mismatch_message(choice, fmt, local))
    path = materialise(choice)
    patcher = cached_patcher(path, torch_dtype)
    upscaler = patcher.model.upscaler
    loaded = catalog.loaded_choice(choice, upscaler)  # what the loaded file itself says (a pickle's keys, its config)
    if channels is not None and upscaler.latent_channels != channels:  # a file whose header told nothing
        raise LuaError(mismatch_message(loaded.describe(), upscaler.latent_channels, fmt, channels, local))
    if fmt is not None:
        if not catalog.takes(loaded, fmt):
            raise LuaError(format_mismatch_message(loaded, fmt, local))
        upscaler.check_latent_format(fmt)
    family = family_by_name(upscaler.family)
    if family.research_only:
        log.warning("ComfyUI-LUA: %s is an %s upsampler: %s.", choice.name, family.label, catalog.RESEARCH_USE)
    info = {"path": str(path), "family": upscaler.family, "source": "download" if choice.is_download else "local",
            "dtype": str(torch_dtype).removeprefix("torch."), "dtype_reason": dtype_reason}
    if choice.research_only or family.research_only:
        info["license"] = catalog.RESEARCH_USE
    elif choice.license:
        info["license"] = choice.license
    return LUAModelHandle(patcher, choice.name, fmt, info, fits=loaded.fits)


def model_latent(model: Any) -> tuple[str | None, int | None]:
    """(format name, channels) of a connected MODEL, from ``get_model_object("latent_format")``."""
    if model is None:
        return None, None
    from ..lua_core import format_name

    try:
        lf = model.get_model_object("latent_format")
    except Exception:
        raise LuaError("the model input is not a diffusion MODEL with a latent format; connect the MODEL from "
                       "your checkpoint loader, or leave the input empty.") from None
    channels = int(getattr(lf, "latent_channels", 0)) or None
    try:
        return format_name(lf), channels
    except LuaError:
        raise LuaError(f"the connected MODEL uses ComfyUI's {type(lf).__name__} latent format: "
                       + catalog.no_upscaler_message(f"its {type(lf).__name__} latents", channels)) from None


def mismatch_message(what: str, has: int, fmt: str | None, channels: int, local: list[catalog.Choice]) -> str:
    from ..lua_core import LATENT_SPACES, families_with_channels

    label = LATENT_SPACES[fmt].label if fmt else families_with_channels(channels)
    fits = catalog.fitting_names(local + catalog.download_choices(), fmt, channels)
    shown = ", ".join(fits[:8]) + (f" (and {len(fits) - 8} more)" if len(fits) > 8 else "")
    if not fits:
        return f"{what} takes {has}-channel latents, but the connected MODEL makes {channels}-channel {label} " \
               "latents: " + catalog.no_upscaler_message(f"{label}", channels)
    return (f"{what} takes {has}-channel latents, but the connected MODEL makes {channels}-channel {label} latents. "
            f"Upscalers that fit: {shown}. Pick one of them, or 'auto'.")


def format_mismatch_message(choice: catalog.Choice, fmt: str, local: list[catalog.Choice]) -> str:
    """An upscaler made for other latents with the same channel count (FLUX vs Wan 2.1: both 16)."""
    from ..lua_core import LATENT_SPACES

    space = LATENT_SPACES[fmt]
    made = "/".join(LATENT_SPACES[f].label for f in (choice.fits or catalog.family_formats(choice)))
    fits = catalog.fitting_names(local + catalog.download_choices(), fmt, space.channels)
    shown = ", ".join(fits[:8]) + (f" (and {len(fits) - 8} more)" if len(fits) > 8 else "")
    what = f"Upscalers that fit: {shown}. Pick one of them, or 'auto'." if fits else \
        catalog.no_upscaler_message(space.label, space.channels)
    return (f"{choice.describe()} is made for {made} latents, but the connected MODEL makes {space.label} latents "
            f"({space.models}): the same channel count, another latent space. {what}")


def materialise(choice: catalog.Choice) -> Path:
    """A path ``load_model`` can read: the local file (a pickle converted to safetensors once) or the
    download, fetched into the models folder with ComfyUI's progress bar the first time."""
    from ..lua_core import ensure_safetensors

    if not choice.is_download:
        return Path(ensure_safetensors(choice.path)) if choice.path.is_file() else choice.path
    import comfy.model_management as mm
    import comfy.utils

    from ..lua_core import fetch, kept_conversion

    entry, dest = choice.known, catalog.download_dir()
    if not entry.is_present(dest) and kept_conversion(entry, dest) is None:
        log.info("ComfyUI-LUA: downloading %s (%s) into %s", entry.key, entry.source_text, dest)
    bar = comfy.utils.ProgressBar(1)

    def progress(done: int, total: int) -> None:
        mm.throw_exception_if_processing_interrupted()  # a cancel stops waiting for the download
        bar.update_absolute(done, max(total, done, 1))

    try:
        return fetch(entry, dest, progress=progress)
    except ImportError as e:
        raise LuaError(f"downloading {entry.key} needs the Python package {e.name or e}: run pip install -r "
                       "requirements.txt in ComfyUI's Python, or put the file into "
                       f"{dest} by hand.") from None


def resolve_dtype(choice: str) -> tuple[torch.dtype, str]:
    """(dtype, why). ``auto`` on the CPU: bf16 where torch reports bf16 matrix units (AMX), else fp32
    (``lua_core.precision``, measured in benchmarks/cpu_bf16.py); on a GPU bf16 where
    ``should_use_bf16`` says so, else fp16 where ``should_use_fp16`` does, else fp32 (the same tests
    ComfyUI applies to its own models)."""
    if choice not in DTYPES:
        raise LuaError(f"dtype must be one of {', '.join(DTYPES)}, not {choice!r}.")
    fixed = DTYPES[choice]
    if fixed is not None:
        return fixed, "chosen in the loader node"
    import comfy.model_management as mm

    from ..lua_core import cpu_auto_dtype

    device = mm.get_torch_device()
    if mm.is_device_cpu(device):
        return cpu_auto_dtype()
    if mm.should_use_bf16(device):
        return torch.bfloat16, f"auto: ComfyUI would use bf16 on {device}"
    if mm.should_use_fp16(device):
        return torch.float16, f"auto: ComfyUI would use fp16 on {device} (no bf16 there)"
    return torch.float32, f"auto: ComfyUI would use neither bf16 nor fp16 on {device}"


def cached_patcher(path: Path, dtype: torch.dtype) -> Any:
    """The ModelPatcher for ``path`` in ``dtype``: reused while ComfyUI still holds it, else built."""
    from ..lua_core import load_model

    key = (*file_stamp(path), str(dtype))
    patcher = _PATCHERS.get(key)
    if patcher is None:
        patcher = new_patcher(load_model(path, device="cpu", dtype=dtype))
        _PATCHERS[key] = patcher
    return patcher


NODES: list[type[io.ComfyNode]] = [LoadLUAModel]
