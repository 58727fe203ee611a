"""lua_core: latent upscalers (LUA and the families users already have) in pure torch.

Public API (stable; the ComfyUI nodes, the CLI and other tools call exactly these):

* ``load_model(source, device="cpu", dtype=torch.float32, *, scale=None)``
* ``upscale_latent(model, latent, scale, *, latent_format=None, max_memory=None, tile=None)``
* ``save_model``, ``convert_checkpoint``, ``ensure_safetensors``
* ``CheckpointError``, ``LuaError`` (both ``ValueError``)

Never imports ComfyUI.
"""

from __future__ import annotations

from .errors import CheckpointError, DownloadError, LuaError
from .inference import upscale_latent
from .loading import convert_checkpoint, ensure_safetensors, load_model, save_model

__all__ = ["CheckpointError", "DownloadError", "LuaError", "convert_checkpoint", "ensure_safetensors",
           "load_model", "save_model", "upscale_latent"]
