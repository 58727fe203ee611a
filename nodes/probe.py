"""What a model file is, from its header alone: family, latent channels, scales, latent format.

Why: the loader's dropdown labels every file and ``auto`` ranks them on every ``/object_info``,
so this must not read weights. Safetensors headers give every tensor's shape; the module is then
built on PyTorch's ``meta`` device, so the answer is the loader's own (same family detection, same
config checks) without reading or allocating a tensor. Results are cached by path, size and mtime.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..lua_core.latent_formats import LATENT_SPACES

WEIGHTS = "diffusion_pytorch_model.safetensors"  # an LSSGen (diffusers) folder holds this + config.json
SAFETENSORS = (".safetensors", ".sft")


@dataclass(frozen=True)
class Probe:
    """What a file's header says. ``family`` None with ``foreign`` True: readable, but no upscaler
    this pack knows (hidden from the list); ``family`` None otherwise: could not tell cheaply."""

    family: str | None = None
    channels: int | None = None
    scales: Any = None
    latent_format: str | None = None
    foreign: bool = False


_PROBES: dict[tuple[str, int, int, int], Probe] = {}


def stamp(path: Path) -> tuple[str, int, int, int]:
    """What identifies a file's version: path, size, mtime (a folder: its weights', and config.json's mtime)."""
    weights = path / WEIGHTS if path.is_dir() else path
    st = weights.stat()
    cfg_mtime = (path / "config.json").stat().st_mtime_ns if path.is_dir() else 0
    return str(path), st.st_size, st.st_mtime_ns, cfg_mtime


def probe(path: Path) -> Probe:
    """Family, channels and scales from the safetensors header (and config.json), cached."""
    try:
        key = stamp(path)
    except OSError:
        return Probe()
    cached = _PROBES.get(key)
    if cached is None:
        cached = _probe_uncached(path)
        if len(_PROBES) > 512:
            _PROBES.clear()
        _PROBES[key] = cached
    return cached


def _probe_uncached(path: Path) -> Probe:
    weights = path / WEIGHTS if path.is_dir() else path
    if weights.suffix.lower() not in SAFETENSORS:
        return Probe()  # a pickle: its keys cost a full read
    import torch
    from safetensors import safe_open

    from ..lua_core.archs import detect_family
    from ..lua_core.checkpoints import META_CONFIG, Checkpoint
    from ..lua_core.loading import build_model

    try:
        with safe_open(str(weights), framework="pt", device="cpu") as f:
            meta = dict(f.metadata() or {})
            sd = {k: torch.empty(f.get_slice(k).get_shape(), device="meta") for k in f.keys()}
    except Exception:  # truncated, not safetensors...: the loader will say what is wrong
        return Probe()
    if detect_family(sd) is None and "family" not in meta:
        return Probe(foreign=True)
    config = None
    try:
        if META_CONFIG in meta:
            config = json.loads(meta[META_CONFIG])
        side = weights.parent / "config.json"
        if config is None and weights.name == WEIGHTS and side.is_file():
            config = json.loads(side.read_text(encoding="utf-8"))
        with torch.device("meta"):
            model = build_model(Checkpoint(path, sd, meta, config))
    except Exception:  # a broken file of a known family: list it, loading explains
        fam = detect_family(sd)
        return Probe(family=fam.name if fam else None)
    fmt = meta.get("latent_format")
    return Probe(model.family, model.latent_channels, model.native_scales,
                 fmt if fmt in LATENT_SPACES else None)
