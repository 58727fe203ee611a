"""The registry of latent-upscaler families, each recognised from its state-dict keys alone.

Order matters only where two detectors could both match; each module's ``detect`` is strict
enough that none do today.
"""

from __future__ import annotations

from . import lua
from .base import Family, LatentUpscaler, ScaleRange, StateDict, describe_scales

FAMILIES: list[Family] = [
    Family("lua", lua.detect, lua.build, "LUA (Latent Upscaler Adapter): Swin trunk + x2/x4 heads"),
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
