"""Turning a training checkpoint into the file users load: ``lua_core.save_model`` safetensors.

The result is a normal ``latent_upscale_models`` file: the official key layout, the family and the
config in the header (so ``lua_core.load_model`` and the ComfyUI loader build it without guessing),
plus what it was trained for (``trained_for_vae``, ``latent_format``, ``latent_channels``).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..archs.lua import LUA, LUAConfig
from .curriculum import StageConfig
from .trainer import STATE_FORMAT, export_model


def export_checkpoint(state_path: str | os.PathLike, out: str | os.PathLike, *, use_ema: bool = True,
                      metadata: dict[str, str] | None = None) -> Path:
    """Export the EMA (default) or raw weights of a training checkpoint (``checkpoints/step_*.pt``)."""
    state = torch.load(state_path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ValueError(f"{state_path} is not a LUA training checkpoint (checkpoints/step_*.pt)")
    model = LUA(LUAConfig.from_dict(state["config"]))
    model.load_state_dict(state["ema" if use_ema else "model"])
    meta = {**state.get("metadata", {}), **(metadata or {}), "weights": "ema" if use_ema else "raw"}
    return export_model(model, out, stage=StageConfig.from_dict(state["stage"]), step=int(state["step"]),
                        metadata=meta)
