"""The registry of latent-upscaler families, each recognised from its state-dict keys alone.

Order matters only where two detectors could both match; each module's ``detect`` is strict
enough that none do today.
"""

from __future__ import annotations

from . import city96, lssgen, lua, nnlatent
from .base import Family, LatentUpscaler, ScaleRange, StateDict, describe_scales

FAMILIES: list[Family] = [
    Family("lua", lua.detect, lua.build, "LUA (Latent Upscaler Adapter): Swin trunk + x2/x4 heads"),
    Family("city96", city96.detect, city96.build,
           "city96 SD-Latent-Upscaler v2.1 (SD1.x/SDXL, x1.25/x1.5/x2, one per file)"),
    Family("nnlatentupscale", nnlatent.detect, nnlatent.build, "NNLatentUpscale (SD1.x/SDXL, any scale in [1, 2])"),
    Family("lssgen", lssgen.detect, lssgen.build, "LSSGen latent upsampler (diffusers folder with config.json, x2)"),
]


def family_by_name(name: str) -> Family:
    for fam in FAMILIES:
        if fam.name == name:
            return fam
    raise KeyError(name)


def detect_family(sd: StateDict) -> Family | None:
    """The family whose detector accepts these keys, or None."""
    for fam in FAMILIES:
        if fam.detect(sd):
            return fam
    return None


__all__ = ["FAMILIES", "Family", "LatentUpscaler", "ScaleRange", "StateDict", "describe_scales",
           "detect_family", "family_by_name"]
