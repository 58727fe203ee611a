"""lua_core: latent upscalers (LUA and the families users already have) in pure torch.

Public API (stable; the ComfyUI nodes, the CLI and other tools call exactly these):

* ``load_model(source, device="cpu", dtype=torch.float32, *, scale=None)``
* ``upscale_latent(model, latent, scale, *, latent_format=None, max_memory=None, tile=None, ...)``
* ``save_model``, ``convert_checkpoint``, ``ensure_safetensors``
* ``CheckpointError``, ``LuaError``, ``DownloadError`` (all ``ValueError``)

Never imports ComfyUI. The torch-using functions are imported on first use, so tools that need
no torch (``python -m lua_core batch``, the HTTP client) start without it.
"""

from __future__ import annotations

import importlib
from typing import Any

from .errors import CheckpointError, DownloadError, LuaError

_LAZY = {"upscale_latent": ".inference", "convert_checkpoint": ".loading", "ensure_safetensors": ".loading",
         "load_model": ".loading", "save_model": ".loading"}

__all__ = ["CheckpointError", "DownloadError", "LuaError", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
