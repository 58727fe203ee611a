"""``describe(path)``: what a model file is, from its header alone (family, channels, scales, latent format).

Why: the ComfyUI loader's dropdown labels every file and ``auto`` ranks them on every
``/object_info``, so this must not read weights. Safetensors headers give every tensor's shape;
the module is then built on PyTorch's ``meta`` device, so the answer is the loader's own (same
family detection, same config checks) without reading or allocating a tensor. Results are cached
by path, size and mtime (``file_stamp``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from .checkpoints import DIFFUSERS_WEIGHTS, META_CONFIG, SAFETENSORS_SUFFIXES
from .scales import Scales


@dataclass(frozen=True)
class FileDescription:
    """What a file's header says. ``family`` None with ``foreign`` True: readable, but no upscaler
    this pack knows (a host hides it); ``family`` None otherwise: could not tell cheaply (a pickle,
    a truncated file: loading it says what is wrong)."""

    family: str | None = None
    channels: int | None = None
    scales: Scales | None = None
    made_for: tuple[str, ...] = ()  # latent formats it was made for (its header, or its family's own rule)
    foreign: bool = False


_CACHE: dict[tuple[str, int, int, int], FileDescription] = {}


def file_stamp(path: str | os.PathLike) -> tuple[str, int, int, int]:
    """What identifies a file's version: path, size, mtime (a diffusers folder: its weights', and
    config.json's mtime). Raises OSError when it is not there."""
    path = Path(path)
    weights = path / DIFFUSERS_WEIGHTS if path.is_dir() else path
    st = weights.stat()
    cfg_mtime = (path / "config.json").stat().st_mtime_ns if path.is_dir() else 0
    return str(path), st.st_size, st.st_mtime_ns, cfg_mtime


def describe(path: str | os.PathLike) -> FileDescription:
    """What the upscaler file or diffusers folder at ``path`` is, without reading its weights (cached)."""
    path = Path(path)
    try:
        key = file_stamp(path)
    except OSError:
        return FileDescription()
    cached = _CACHE.get(key)
    if cached is None:
        cached = _describe_uncached(path)
        if len(_CACHE) > 512:
            _CACHE.clear()
        _CACHE[key] = cached
    return cached


def _describe_uncached(path: Path) -> FileDescription:
    weights = path / DIFFUSERS_WEIGHTS if path.is_dir() else path
    if weights.suffix.lower() not in SAFETENSORS_SUFFIXES:
        return FileDescription()  # a pickle: its keys cost a full read
    import torch
    from safetensors import safe_open

    from .archs import detect_family
    from .checkpoints import Checkpoint
    from .loading import build_model

    try:
        with safe_open(str(weights), framework="pt", device="cpu") as f:
            meta = dict(f.metadata() or {})
            sd = {k: torch.empty(f.get_slice(k).get_shape(), device="meta") for k in f.keys()}
    except Exception:  # truncated, not safetensors...: the loader will say what is wrong
        return FileDescription()
    if detect_family(sd) is None and "family" not in meta:
        return FileDescription(foreign=True)
    config = None
    try:
        if META_CONFIG in meta:
            config = json.loads(meta[META_CONFIG])
        side = weights.parent / "config.json"
        if config is None and weights.name == DIFFUSERS_WEIGHTS and side.is_file():
            config = json.loads(side.read_text(encoding="utf-8"))
        with torch.device("meta"):
            model = build_model(Checkpoint(path, sd, meta, config))
    except Exception:  # a broken file of a known family: list it, loading explains
        fam = detect_family(sd)
        return FileDescription(family=fam.name if fam else None)
    return FileDescription(model.family, model.latent_channels, model.native_scales, model.made_for)


__all__ = ["FileDescription", "describe", "file_stamp"]
