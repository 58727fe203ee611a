"""The registry of latent-upscaler families: what each is called, how ``auto`` ranks it, where its code is.

Each family is one module here (LUA a package) with ``detect(state_dict) -> bool``, which looks at
the keys alone, and ``build(state_dict, config, hints) -> LatentUpscaler``; what a family can do
(scales, tiling, memory) is declared on its module class (``base.LatentUpscaler``). This file holds
the rest of what a family is, as data: its label for people, its rank for ``auto`` and its
licence caveat, which the download registry (``hub``) and the ComfyUI loader read from here.
Adding a family is one module and one entry below.

Torch-free: the entries load their module on first use, so the download registry and the
batch tools can read them without importing torch.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .base import LatentUpscaler, StateDict


@dataclass(frozen=True)
class Family:
    """One family of latent upscalers.

    ``auto_rank``: among upscalers that fit a latent equally well, ``auto`` prefers the lower rank
    (see ``nodes/catalog.py``). ``research_only``: its weights state no licence, so it is labelled
    "research use" and never preferred over a licensed one.
    """

    name: str  # stable id, stored in converted files' headers and in the download registry
    label: str  # for people: dropdown labels, messages
    module: str  # the module under lua_core.archs with detect() and build()
    auto_rank: int
    description: str  # one line: what it is and what it fits, for "not recognised" messages
    research_only: bool = False
    #: the latent formats the family has models for; () = any (LUA: trained per VAE, its file says which)
    formats: tuple[str, ...] = ()

    def _impl(self) -> Any:
        return importlib.import_module(f"{__name__}.{self.module}")

    def detect(self, sd: StateDict) -> bool:
        """Whether ``sd``'s keys are this family's (the keys alone; no tensor is read)."""
        return bool(self._impl().detect(sd))

    def build(self, sd: StateDict, config: Mapping[str, Any] | None, hints: dict[str, Any]) -> LatentUpscaler:
        """The module for ``sd``, built from the config found with it (or from the tensor shapes)."""
        return self._impl().build(sd, config, hints)


#: Detection order (each detector is strict enough that none overlap today).
FAMILIES: tuple[Family, ...] = (
    Family("lua", "LUA", "lua", 0, "LUA (Latent Upscaler Adapter): Swin trunk + x2/x4 heads"),
    Family("city96", "city96", "city96", 1,
           "city96 SD-Latent-Upscaler v2.1 (SD1.x/SDXL, x1.25/x1.5/x2, one per file)", formats=("sd15", "sdxl")),
    Family("nnlatentupscale", "NNLatentUpscale", "nnlatent", 3, "NNLatentUpscale (SD1.x/SDXL, any scale in [1, 2])",
           formats=("sd15", "sdxl")),
    Family("lssgen", "LSSGen", "lssgen", 4, "LSSGen latent upsampler (diffusers folder with config.json, x2)",
           research_only=True, formats=("flux", "sd3", "sdxl", "sd15", "cogview4")),
    Family("sesqui", "SesquiLSR", "sesqui", 2,
           "SesquiLSR (SDXL, FLUX, FLUX.2, Wan 2.1/Qwen-Image; any scale in [1, 2], one file per VAE)",
           formats=("sdxl", "flux", "flux2", "wan21")),
)

FAMILY_NAMES: tuple[str, ...] = tuple(f.name for f in FAMILIES)


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


__all__ = ["FAMILIES", "FAMILY_NAMES", "Family", "detect_family", "family_by_name"]
