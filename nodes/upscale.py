"""``LUA_LatentUpscale`` ("Latent Upscale (LUA)"): LATENT + LUA_MODEL + scale -> LATENT.

Why the LATENT handling lives here and not in ``lua_core``: a ComfyUI LATENT is a dict whose other
keys (``batch_index``, ``noise_mask``, ...) must survive an upscale. 5-D latents [B, C, T, H, W]
(Qwen-Image and Wan 2.1 make them, T = 1 for an image) go to ``lua_core`` as they are: it upscales
them frame by frame.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from comfy_api.latest import io

from ..lua_core import LATENT_SPACES, LuaError
from .catalog import fits_format
from .handle import LUAModel, LUAModelHandle, run_upscale

NODE_ID = "LUA_LatentUpscale"
DISPLAY_NAME = "Latent Upscale (LUA)"
LATENT_FORMATS = ("auto", *LATENT_SPACES)


class LatentUpscaleLUA(io.ComfyNode):
    """Upscales a latent with a loaded latent upscaler, before the VAE decode or a hires fix pass."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=NODE_ID,
            display_name=DISPLAY_NAME,
            category="latent/upscaling",
            description=(
                "Upscale a latent x1-x4 with a latent upscaler model from Load LUA Model (LUA for FLUX/SD3; "
                "SesquiLSR for FLUX.2, Qwen-Image/Wan 2.1, Z-Image, SDXL; city96, NNLatentUpscale or LSSGen for "
                "SDXL/SD1.5). Use it right before the VAE decode for 2K-4K output without a second diffusion pass, "
                "or before a low-denoise hires fix pass. Keeps batch_index, resizes the noise mask, upscales video "
                "latents frame by frame."),
            inputs=[
                io.Latent.Input("samples", tooltip="The latent to upscale (any batch size)."),
                LUAModel.Input("upscale_model", tooltip="From Load LUA Model."),
                io.Float.Input(
                    "scale", default=2.0, min=1.0, max=4.0, step=0.25,
                    tooltip=("Factor for width and height. LUA: x2 and x4 exactly, in between through the next "
                             "larger head resized down; city96: the factor in its file name; SesquiLSR and "
                             "NNLatentUpscale: any from 1 to 2; LSSGen: x2, x4. 1 passes the latent through "
                             "unchanged.")),
                io.Combo.Input(
                    "latent_format", options=list(LATENT_FORMATS), default="auto",
                    tooltip=("Which model made the latent. auto: the MODEL connected to Load LUA Model. Needed by "
                             "LSSGen (it works in the model's scaled latent space) and by a 16-channel SesquiLSR "
                             "file without its released name (FLUX or Wan 2.1?); set it when no MODEL is connected "
                             "there. flux: FLUX.1, Z-Image, Lumina 2; flux2: FLUX.2 and Klein; wan21: Qwen-Image, "
                             "Wan 2.1.")),
                io.Int.Input(
                    "tile", default=0, min=0, max=1024, step=8, optional=True,
                    tooltip=("0 = off (exact; memory is handled automatically). Otherwise tile size in latent "
                             "pixels (LUA: rounded to its 16-pixel window, at least 32), to bound memory on huge "
                             "latents: approximate, seams may differ slightly.")),
            ],
            outputs=[io.Latent.Output(tooltip="The upscaled latent, ready for VAE Decode or a hires-fix sampler.")],
        )

    @classmethod
    def execute(cls, samples: dict, upscale_model: LUAModelHandle, scale: float, latent_format: str = "auto",
                tile: int = 0) -> io.NodeOutput:
        try:
            return io.NodeOutput(upscale(samples, upscale_model, scale, latent_format, tile))
        except LuaError as e:
            raise ValueError(f"{DISPLAY_NAME}: {e}") from None


def upscale(samples: dict, handle: LUAModelHandle, scale: float, latent_format: str = "auto",
            tile: int = 0) -> dict:
    """The node's work on a LATENT dict; raises ``LuaError`` with the fix for every user mistake."""
    import comfy.utils

    latent = samples.get("samples") if isinstance(samples, dict) else None
    if not isinstance(latent, torch.Tensor):
        got = type(latent).__name__ if latent is not None else "nothing"
        raise LuaError(f"the samples input holds {got}, not one latent tensor; connect an image LATENT (e.g. from "
                       "a KSampler).")
    if not isinstance(handle, LUAModelHandle):
        raise LuaError("upscale_model must come from Load LUA Model.")
    if latent.ndim not in (4, 5):
        raise LuaError(f"the latent has shape {tuple(latent.shape)}; expected [batch, channels, height, width] "
                       "(or [batch, channels, frames, height, width]).")
    check_channels(latent.shape[1], handle)
    fmt = pick_format(latent_format, handle, latent.shape[1], video=latent.ndim == 5)
    check_scale(scale, handle)
    images = latent.shape[0] * (latent.shape[2] if latent.ndim == 5 else 1)
    bar = comfy.utils.ProgressBar(images * 100)
    out = run_upscale(handle, latent, scale, latent_format=fmt, tile=tile or None,
                      progress=lambda done, total: bar.update_absolute(done, total))
    result = dict(samples)
    result["samples"] = out
    mask = samples.get("noise_mask")
    if isinstance(mask, torch.Tensor) and mask.ndim >= 2:
        result["noise_mask"] = resize_mask(mask, latent.shape[-2:], out.shape[-2:])
    return result


def check_channels(channels: int, handle: LUAModelHandle) -> None:
    from ..lua_core import families_with_channels

    has = handle.latent_channels
    if channels == has:
        return
    made = families_with_channels(channels) or "another model family"
    raise LuaError(f"the latent has {channels} channels ({made}) but {handle.name} is a {has}-channel "
                   f"{handle.family_label()} upscaler ({handle.made_for()}). In Load LUA Model, pick an upscaler "
                   f"for {channels}-channel latents, or connect your MODEL to its model input and choose 'auto'.")


def check_scale(scale: float, handle: LUAModelHandle) -> None:
    """A scale the file cannot do, refused with what to set instead (x1 passes any latent through)."""
    if float(scale) == 1.0:
        return
    try:
        handle.upscaler.plan_scale(float(scale))
    except LuaError as e:
        raise LuaError(f"{handle.name}: {e}. Set scale to one it does ({handle.upscaler.native_scales}), or in Load "
                       f"LUA Model pick an upscaler that does x{scale:g}.") from None


def pick_format(choice: str, handle: LUAModelHandle, channels: int, video: bool = False) -> str | None:
    """The latent format to pass on: the node's choice, else the loader's MODEL; errors when a model
    that needs one (LSSGen) gets none, when it contradicts the latent's channel count, or when the file
    was made for other latents (also said by the latent itself: ComfyUI's 16-channel 5-D latents come from
    a video VAE, Wan 2.1's for Qwen-Image, never from FLUX's or SD3's)."""
    if choice not in LATENT_FORMATS:
        raise LuaError(f"latent_format must be one of {', '.join(LATENT_FORMATS)}, not {choice!r}.")
    fmt = handle.latent_format if choice == "auto" else choice
    where = "the MODEL connected to Load LUA Model" if choice == "auto" else f"latent_format={fmt}"
    if fmt is None and video and channels == LATENT_SPACES["wan21"].channels and not fits_format(handle.fits, "wan21"):
        raise LuaError(f"this 5-D 16-channel latent comes from a video VAE (Wan 2.1's, which Qwen-Image uses, or "
                       f"another video model's), but {handle.name} is a {handle.family_label()} upscaler made for "
                       f"{handle.made_for()} latents: its output on these would be wrong. Connect your MODEL to "
                       "Load LUA Model's model input and choose 'auto' there (or pick an upscaler for "
                       "Qwen-Image/Wan 2.1), or set latent_format if this latent is not what it seems.")
    if fmt is None:
        if handle.upscaler.needs_latent_format:
            try:
                handle.upscaler.check_latent_format(None)
            except LuaError as e:  # the family's own reason, with where to set it
                raise LuaError(f"{handle.name}: {e}. Set latent_format, or connect the MODEL to Load LUA Model's "
                               "model input.") from None
        return None
    space = LATENT_SPACES[fmt]
    if space.channels != channels:
        raise LuaError(f"{where} says {space.label} ({space.channels}-channel latents) but the latent has {channels} "
                       "channels. Set latent_format to the model that made this latent.")
    handle.check_format(fmt, where)
    return fmt


def resize_mask(mask: torch.Tensor, before: torch.Size, after: torch.Size) -> torch.Tensor:
    """Bilinear resize of a noise mask by the latent's own factor, keeping the mask's resolution
    relative to the latent (masks are often at pixel resolution, 8x the latent)."""
    mh, mw = mask.shape[-2:]
    th = max(1, round(mh * after[0] / before[0]))
    tw = max(1, round(mw * after[1] / before[1]))
    lead = mask.shape[:-2]
    flat = mask.reshape(-1, 1, mh, mw).to(torch.float32)
    out = F.interpolate(flat, size=(th, tw), mode="bilinear", align_corners=False)
    return out.reshape(*lead, th, tw).to(mask.dtype)


NODES: list[type[io.ComfyNode]] = [LatentUpscaleLUA]

