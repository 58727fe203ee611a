"""From a file (or a state dict) to a ready module: detect the family, build, check, place.

Also the one-time conversion of pickles to safetensors, which needs a built model to know the
config it writes into the file's metadata.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .archs import FAMILIES, detect_family, family_by_name
from .archs.base import LatentUpscaler
from .checkpoints import (
    META_SOURCE,
    PICKLE_SUFFIXES,
    Checkpoint,
    converted_path,
    is_current_conversion,
    read_checkpoint,
    read_metadata,
    save_checkpoint,
    source_stamp,
)
from .errors import CheckpointError

log = logging.getLogger(__name__)


def build_model(ckpt: Checkpoint, *, scale: float | None = None) -> LatentUpscaler:
    """Build the module a checkpoint describes (fp32, CPU, eval)."""
    sd = ckpt.state_dict
    if not sd:
        raise CheckpointError(ckpt.path, "holds no tensors.")
    fam = None
    if ckpt.family:
        try:
            fam = family_by_name(ckpt.family)
        except KeyError:
            raise CheckpointError(ckpt.path, f"says it is a {ckpt.family!r} model, which this pack does not "
                                  "know.") from None
    fam = fam or detect_family(sd)
    if fam is None:
        keys = ", ".join(list(sd)[:4])
        known = "; ".join(f.description or f.name for f in FAMILIES)
        raise CheckpointError(ckpt.path, f"is not a latent upscaler this pack recognises (first keys: {keys}).",
                              f"Supported: {known}.")
    hints: dict[str, Any] = {"path": ckpt.path, "scale": scale}
    try:
        model = fam.build(sd, ckpt.config, hints)
    except CheckpointError:
        raise
    except (ValueError, KeyError, RuntimeError, TypeError) as e:
        what = f"missing tensor {e}" if isinstance(e, KeyError) else str(e)
        raise CheckpointError(ckpt.path, f"cannot be loaded as a {fam.name} model: {what}") from None
    model.source_path = None if ckpt.path is None else str(ckpt.path)
    model.metadata = dict(ckpt.metadata)
    return model.eval().requires_grad_(False)


def load_model(source: str | os.PathLike | Mapping[str, torch.Tensor], device: str | torch.device = "cpu",
               dtype: torch.dtype = torch.float32, *, scale: float | None = None) -> LatentUpscaler:
    """Load any supported upscaler from a path (file or folder) or a state dict.

    Returns an ``nn.Module`` in eval mode that knows its family, ``latent_channels`` and
    ``native_scales``. ``scale`` is a hint for families whose files do not record their factor.
    """
    if isinstance(source, Mapping):
        from .checkpoints import unwrap_state_dict
        ckpt = Checkpoint(None, unwrap_state_dict(source))
    else:
        ckpt = read_checkpoint(source)
    model = build_model(ckpt, scale=scale)
    return model.to(device=device, dtype=dtype)


def save_model(model: LatentUpscaler, path: str | os.PathLike, metadata: Mapping[str, str] | None = None) -> Path:
    """Save a module as safetensors with its family and config in the header."""
    return save_checkpoint(model.state_dict(), path, family=model.family, config=model.config_dict(),
                           metadata=metadata)


def convert_checkpoint(src: str | os.PathLike, dst: str | os.PathLike | None = None) -> Path:
    """Convert any readable checkpoint (e.g. the official ``.pth``) to safetensors with its config.

    The result records the source's name, size and mtime, so ``ensure_safetensors`` reuses it.
    """
    src = Path(src)
    dst = Path(dst) if dst is not None else converted_path(src)
    if dst.resolve() == src.resolve():
        raise CheckpointError(src, "is already the conversion target.", "Give another output path.")
    model = build_model(read_checkpoint(src))
    return save_model(model, dst, metadata=source_stamp(src))


def ensure_safetensors(src: str | os.PathLike) -> Path:
    """The safetensors version of a pickle checkpoint, converting it once and reusing it after.

    Safetensors files and folders are returned unchanged. If a same-named .safetensors exists that
    was not converted from this file (the user's own file, or the conversion of a same-stem
    ``.pt`` beside a ``.pth``), it is left alone; if the conversion cannot be written (read-only
    folder, full disk) nothing is written. In both cases the pickle itself is returned (it still
    loads with weights_only=True). A conversion of this file made before it changed is redone.
    """
    src = Path(src)
    if src.is_dir() or src.suffix.lower() not in PICKLE_SUFFIXES:
        return src
    dst = converted_path(src)
    if is_current_conversion(src, dst):
        return dst
    if dst.exists() and read_metadata(dst).get(META_SOURCE) != src.name:
        log.warning("%s exists and was not converted from %s; loading the pickle directly", dst, src.name)
        return src
    try:
        return convert_checkpoint(src, dst)
    except OSError as e:
        log.warning("cannot write %s (%s); loading %s directly", dst, e, src.name)
        return src
