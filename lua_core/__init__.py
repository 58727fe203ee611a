"""lua_core: latent upscalers (LUA and the families users already have) in pure torch.

Public API (stable; the ComfyUI nodes, the CLI and other tools use exactly these names):

* models: ``load_model(source, device="cpu", dtype=torch.float32, *, scale=None)``,
  ``upscale_latent(model, latent, scale, *, latent_format=None, max_memory=None, tile=None, ...)``,
  ``save_model``, ``convert_checkpoint``, ``ensure_safetensors``, ``LatentUpscaler`` (their type,
  with the capabilities each family declares), ``Scales``, ``cpu_auto_dtype`` (what ``dtype=auto`` means
  on this CPU, and why)
* files: ``describe(path)`` (what a file is, from its header), ``file_stamp``, ``DIFFUSERS_WEIGHTS``,
  ``conversion_source`` (the pickle a safetensors file was converted from, when both are there)
* families and latent formats: ``FAMILIES``, ``Family``, ``family_by_name``, ``LATENT_SPACES``,
  ``LatentSpace``, ``format_name``, ``families_with_channels``
* downloads: ``KNOWN``, ``KnownCheckpoint``, ``known_checkpoints``, ``find_known``, ``fetch``,
  ``kept_conversion``
* errors: ``LuaError`` (all ``ValueError``) and its ``CheckpointError``, ``DownloadError``,
  ``OutOfMemoryError``; ``first_line``

Never imports ComfyUI. The torch-using names are imported on first use, so tools that need no
torch (``python -m lua_core batch``, the HTTP client, the download registry) start without it.
"""

from __future__ import annotations

import importlib
from typing import Any

from .archs import FAMILIES, Family, family_by_name
from .errors import CheckpointError, DownloadError, LuaError, OutOfMemoryError, first_line
from .latent_formats import LATENT_SPACES, LatentSpace, families_with_channels, format_name
from .scales import Scales

_LAZY = {
    "upscale_latent": ".inference",
    "convert_checkpoint": ".loading", "ensure_safetensors": ".loading", "load_model": ".loading",
    "save_model": ".loading",
    "LatentUpscaler": ".archs.base",
    "cpu_auto_dtype": ".precision",
    "describe": ".probe", "file_stamp": ".probe", "FileDescription": ".probe",
    "DIFFUSERS_WEIGHTS": ".checkpoints", "conversion_source": ".checkpoints",
    "KNOWN": ".hub", "KnownCheckpoint": ".hub", "known_checkpoints": ".hub", "find_known": ".hub",
    "fetch": ".hub", "kept_conversion": ".hub",
}

__all__ = ["FAMILIES", "LATENT_SPACES", "CheckpointError", "DownloadError", "Family", "LatentSpace", "LuaError",
           "OutOfMemoryError", "Scales", "families_with_channels", "family_by_name", "first_line", "format_name",
           *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
