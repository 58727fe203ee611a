"""Building LUA modules for training: configs, SwinIR's initialisation, channel adaptation, freezing.

The module trained is exactly ``lua_core.archs.lua.LUA``, so a training checkpoint's weights are
the keys of the official release (``conv_first`` = the per-VAE input conv, ``heads.<name>.conv_last``
= the output convs) and the exported file loads with ``lua_core.load_model``.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..archs.lua import LUA, HeadConfig, LUAConfig, released_flux_config

#: A small config for CPU smoke runs and tests (the architecture of the release, scaled down).
TINY_CONFIG = LUAConfig(embed_dim=24, depths=(2,), num_heads=(2,), window_size=8, img_size=16, head_num_feat=16)
PRESETS = {"released": released_flux_config(), "tiny": TINY_CONFIG}
#: the parameters that depend on the VAE's channel count (paper: "a new input conv" per VAE)
CHANNEL_KEYS = ("conv_first.",)


def with_channels(cfg: LUAConfig, channels: int) -> LUAConfig:
    """The same architecture for ``channels``-channel latents (input conv and every head's output)."""
    heads = tuple(replace(h, out_chans=channels) for h in cfg.heads)
    return replace(cfg, in_chans=channels, heads=heads)


def model_config(preset: str | os.PathLike | dict[str, Any], channels: int) -> LUAConfig:
    """A config from a preset name ('released', 'tiny'), a JSON file or a dict, for ``channels``."""
    if isinstance(preset, dict):
        cfg = LUAConfig.from_dict(preset)
    elif str(preset) in PRESETS:
        cfg = PRESETS[str(preset)]
    elif Path(preset).is_file():
        cfg = LUAConfig.from_dict(json.loads(Path(preset).read_text(encoding="utf-8")))
    else:
        raise ValueError(f"model config {preset!r} is neither a preset ({', '.join(PRESETS)}) nor a JSON file")
    return with_channels(cfg, channels)


def init_weights(model: LUA) -> LUA:
    """SwinIR's initialisation (the LUA trunk is SwinIR's): truncated normal (std 0.02) for linear
    layers and the relative-position bias tables, zero biases, LayerNorms at (1, 0); convolutions
    keep PyTorch's default."""
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    for name, p in model.named_parameters():
        if name.endswith("relative_position_bias_table"):
            nn.init.trunc_normal_(p, std=0.02)
    return model


def new_model(cfg: LUAConfig, seed: int = 0) -> LUA:
    """A freshly initialised LUA; the global RNG is left untouched (the init has its own seed)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return init_weights(LUA(cfg))


def for_training(model: LUA) -> LUA:
    """A loaded module (``lua_core.load_model`` returns eval, frozen) made trainable."""
    return model.float().train().requires_grad_(True)


def load_for_training(path: str | os.PathLike) -> LUA:
    """Load a LUA checkpoint (any format ``lua_core.load_model`` reads) as a trainable fp32 module."""
    from ..loading import load_model
    model = load_model(path)
    if not isinstance(model, LUA):
        raise ValueError(f"{path} is a {model.family} model; training here is for LUA models")
    return for_training(model)


def is_channel_param(name: str) -> bool:
    """True for the parameters tied to the VAE's channel count: ``conv_first.*``, ``heads.*.conv_last.*``."""
    return name.startswith(CHANNEL_KEYS) or (name.startswith("heads.") and ".conv_last." in name)


def adapt_channels(model: LUA, channels: int, *, seed: int = 0, keep_if_same: bool = False) -> LUA:
    """Cross-VAE: a copy of ``model`` for ``channels``-channel latents.

    Every trunk and head weight is kept; the input conv (``conv_first``) and the heads' output
    convs (``heads.*.conv_last``) are new and freshly initialised (paper, "Cross-VAE
    generalisation": a new input conv, then fine-tuning on the new VAE's latents). With
    ``keep_if_same`` and an unchanged channel count, those are kept too.
    """
    if keep_if_same and channels == model.config.in_chans:
        return _copy(model)
    new = new_model(with_channels(model.config, channels), seed)
    kept = {k: v for k, v in model.state_dict().items() if not is_channel_param(k)}
    missing, unexpected = new.load_state_dict(kept, strict=False)
    if unexpected or not all(is_channel_param(k) for k in missing):
        raise ValueError(f"cannot adapt: unexpected {unexpected[:3]}, missing {missing[:3]}")
    return new.train()


def _copy(model: LUA) -> LUA:
    new = LUA(model.config)
    new.load_state_dict(model.state_dict())
    return for_training(new)


def freeze_trunk(model: LUA, *, train_heads: bool = True) -> list[str]:
    """Freeze everything but the channel-dependent convs (and, with ``train_heads``, the heads).

    Returns the names of the parameters left trainable.
    """
    names = []
    for name, p in model.named_parameters():
        keep = is_channel_param(name) or (train_heads and name.startswith("heads."))
        p.requires_grad_(keep)
        if keep:
            names.append(name)
    return names


def head_pairs(model: LUA) -> list[tuple[str, int]]:
    """(head name, scale) of each head, in config order."""
    return [(h.name, h.scale) for h in model.config.heads]


__all__ = ["PRESETS", "TINY_CONFIG", "HeadConfig", "adapt_channels", "for_training", "freeze_trunk", "head_pairs",
           "init_weights", "is_channel_param", "load_for_training", "model_config", "new_model", "with_channels"]
