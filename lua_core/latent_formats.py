"""The latent formats of today's ComfyUI image models, as data (one place, no scattered constants).

ComfyUI LATENTs hold *raw* VAE latents; models sample in a scaled space,
``(z - shift) * scale`` (ComfyUI's ``latent_format.process_in``). Families trained in the scaled
space (LSSGen) wrap their forward with these numbers; every family says which formats it fits.

A connected MODEL is identified by its latent format **class** (``format_name``), never by its
channel count alone: FLUX, SD3, Wan 2.1 (Qwen-Image) and CogView4 latents all have 16 channels
and are four different latent spaces. A subclass resolves through the class hierarchy only while
its channel count stays the parent's (ComfyUI's ``Wan22(Wan21)`` has 48 channels: it is not
Wan 2.1).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import LuaError

if TYPE_CHECKING:  # data only: importable without torch (the hub registry and batch tools use it)
    import torch


@dataclass(frozen=True)
class LatentSpace:
    """One latent format: our name, ComfyUI's class for it, what a LATENT of it holds.

    ``channels`` is the channel count of a ComfyUI LATENT (FLUX.2: 128, its 32-channel VAE latent
    packed 2x2). ``scale``/``shift`` are ComfyUI's ``process_in`` numbers (for Wan 2.1 a per-channel
    mean and std, which no family here uses: its ``process_in`` is left out). ``dims`` is how many
    spatial dimensions ComfyUI gives its LATENTs (3: [B, C, T, H, W], images with T = 1).
    """

    name: str
    label: str
    channels: int
    scale: float = 1.0
    shift: float = 0.0
    comfy_class: str | None = None  # None: ComfyUI has no class for it (CogView4 in 0.33)
    aliases: tuple[str, ...] = ()
    models: str = ""  # the image models that make it, for tables and messages
    dims: int = 2

    def process_in(self, raw: torch.Tensor) -> torch.Tensor:
        return (raw - self.shift) * self.scale

    def process_out(self, scaled: torch.Tensor) -> torch.Tensor:
        return scaled / self.scale + self.shift


# Numbers from ComfyUI 0.33's comfy/latent_formats.py; CogView4 (no class there): its VAE config,
# scaling factor 1.0 and shift 0.0.
LATENT_SPACES: dict[str, LatentSpace] = {s.name: s for s in (
    LatentSpace("flux", "FLUX", 16, 0.3611, 0.1159, comfy_class="Flux",
                aliases=("flux1", "z-image", "zimage", "lumina2", "lumina"), models="FLUX.1, Z-Image, Lumina 2"),
    LatentSpace("sd3", "SD3", 16, 1.5305, 0.0609, comfy_class="SD3", models="Stable Diffusion 3 / 3.5"),
    LatentSpace("sdxl", "SDXL", 4, 0.13025, comfy_class="SDXL", models="SDXL, Pony, Illustrious"),
    LatentSpace("sd15", "SD1.5", 4, 0.18215, comfy_class="SD15", aliases=("sd1", "sd1x", "sdv1", "sd1.5"),
                models="Stable Diffusion 1.x"),
    LatentSpace("flux2", "FLUX.2", 128, comfy_class="Flux2", aliases=("klein", "flux2-klein", "flux2klein"),
                models="FLUX.2, FLUX.2 Klein"),
    LatentSpace("wan21", "Wan 2.1", 16, comfy_class="Wan21", aliases=("qwen-image", "qwen", "qwenimage", "wan"),
                models="Qwen-Image, Wan 2.1", dims=3),
    LatentSpace("hunyuanimage21", "HunyuanImage 2.1", 64, 0.75289, comfy_class="HunyuanImage21",
                aliases=("hunyuanimage", "hunyuan-image"), models="HunyuanImage 2.1"),
    LatentSpace("cogview4", "CogView4", 16, aliases=("cogview",), models="CogView4"),
)}
#: the latent format names a caller may pass (aliases too, see ``format_name``)
LATENT_FORMATS = tuple(LATENT_SPACES)


def _key(text: str) -> str:
    return re.sub(r"[\s._\-]", "", text.strip().lower())


_BY_KEY = {_key(alias): s.name for s in LATENT_SPACES.values() for alias in (s.name, *s.aliases)}
_BY_CLASS = {s.comfy_class: s.name for s in LATENT_SPACES.values() if s.comfy_class}


class UnknownLatentFormat(LuaError):
    """A ComfyUI latent format class this pack has no name for, with its channel count."""

    def __init__(self, class_name: str, channels: int | None):
        self.class_name, self.channels = class_name, channels
        ch = f"{channels}-channel" if channels else "its"
        super().__init__(f"ComfyUI's {class_name} latent format ({ch} latents) is not one this pack knows; "
                         f"it knows {', '.join(s.label for s in LATENT_SPACES.values())}")


def format_name(latent_format: Any) -> str:
    """Our name ('flux', 'wan21', ...) for a name or alias, or for a ComfyUI latent format object/class.

    Raises ``LuaError`` for an unknown name, ``UnknownLatentFormat`` (a LuaError with the class's name
    and channel count) for a ComfyUI class this pack has no name for.
    """
    if isinstance(latent_format, str):
        name = _BY_KEY.get(_key(latent_format))
        if name is not None:
            return name
        raise LuaError(f"unknown latent_format {latent_format!r}; choose one of {', '.join(LATENT_SPACES)} "
                       f"(or an alias: {', '.join(a for s in LATENT_SPACES.values() for a in s.aliases[:2])})")
    cls = latent_format if isinstance(latent_format, type) else type(latent_format)
    channels = getattr(latent_format, "latent_channels", None)
    channels = int(channels) if isinstance(channels, int) else None
    for klass in cls.__mro__:
        name = _BY_CLASS.get(klass.__name__)
        if name is not None:
            if channels is not None and channels != LATENT_SPACES[name].channels:
                break  # a subclass with other latents (Wan22 under Wan21): not this format
            return name
    raise UnknownLatentFormat(cls.__name__, channels)


def latent_space(latent_format: Any) -> LatentSpace:
    return LATENT_SPACES[format_name(latent_format)]


def families_with_channels(channels: int) -> str:
    """'FLUX/SD3/Wan 2.1/CogView4' for 16, 'SD1.5/SDXL' for 4, '' for an unknown count (for messages)."""
    return "/".join(s.label for s in LATENT_SPACES.values() if s.channels == channels)
