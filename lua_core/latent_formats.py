"""Latent-space conventions of the model families, as data (one place, no scattered constants).

ComfyUI LATENTs hold *raw* VAE latents; models sample in a scaled space,
``(z - shift) * scale`` (ComfyUI's ``latent_format.process_in``). Families trained in the scaled
space (LSSGen) wrap their forward with these numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # data only: importable without torch (the hub registry and batch tools use it)
    import torch


@dataclass(frozen=True)
class LatentSpace:
    name: str
    label: str
    channels: int
    scale: float
    shift: float = 0.0

    def process_in(self, raw: torch.Tensor) -> torch.Tensor:
        return (raw - self.shift) * self.scale

    def process_out(self, scaled: torch.Tensor) -> torch.Tensor:
        return scaled / self.scale + self.shift


# The numbers are ComfyUI's comfy/latent_formats.py (SD15, SDXL, SD3, Flux).
LATENT_SPACES: dict[str, LatentSpace] = {
    "flux": LatentSpace("flux", "FLUX", 16, 0.3611, 0.1159),
    "sd3": LatentSpace("sd3", "SD3", 16, 1.5305, 0.0609),
    "sdxl": LatentSpace("sdxl", "SDXL", 4, 0.13025),
    "sd15": LatentSpace("sd15", "SD1.5", 4, 0.18215),
}
#: the latent format names a caller may pass (flux, sd3, sdxl, sd15)
LATENT_FORMATS = tuple(LATENT_SPACES)
# ComfyUI latent format class names -> our names
_COMFY_CLASSES = {"Flux": "flux", "SD3": "sd3", "SDXL": "sdxl", "SD15": "sd15"}


def format_name(latent_format: Any) -> str:
    """'flux' | 'sd3' | 'sdxl' | 'sd15' from a name or a ComfyUI latent format object/class."""
    from .errors import LuaError
    if isinstance(latent_format, str):
        key = latent_format.strip().lower().replace(".", "").replace("-", "").replace("_", "")
        key = {"sd1": "sd15", "sd15": "sd15", "sdv1": "sd15", "sd1x": "sd15"}.get(key, key)
        if key in LATENT_SPACES:
            return key
        raise LuaError(f"unknown latent_format {latent_format!r}; choose one of {', '.join(LATENT_SPACES)}")
    cls = latent_format if isinstance(latent_format, type) else type(latent_format)
    for klass in cls.__mro__:
        if klass.__name__ in _COMFY_CLASSES:
            return _COMFY_CLASSES[klass.__name__]
    raise LuaError(f"latent format {cls.__name__} is not one this pack knows; choose one of "
                   f"{', '.join(LATENT_SPACES)}")


def latent_space(latent_format: Any) -> LatentSpace:
    return LATENT_SPACES[format_name(latent_format)]


def families_with_channels(channels: int) -> str:
    """'FLUX/SD3' for 16, 'SDXL/SD1.5' for 4, '' for an unknown count (for messages)."""
    return "/".join(s.label for s in LATENT_SPACES.values() if s.channels == channels)
