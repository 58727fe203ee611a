"""Reading checkpoint files safely, saving safetensors with their config, converting pickles once.

Nothing here builds a model: this layer turns a file into tensors + metadata (and back), and says
clearly what is wrong with a file that cannot be read. Pickles are only ever read with
``torch.load(weights_only=True)``, which refuses to run code.
"""

from __future__ import annotations

import json
import os
import pickle
import struct
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .errors import CheckpointError, first_line

SAFETENSORS_SUFFIXES = (".safetensors", ".sft")
PICKLE_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin")
#: metadata keys written by ``save_checkpoint``
META_FAMILY, META_CONFIG, META_SOURCE = "family", "config", "converted_from"
#: a diffusers-style folder (LSSGen): weights + config.json
DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"
# containers used by BasicSR-style trainers (the official LUA file uses params_ema)
_CONTAINER_KEYS = ("params_ema", "params", "state_dict", "model")


@dataclass
class Checkpoint:
    """Tensors read from a file, plus what the file says about itself."""

    path: Path | None
    state_dict: dict[str, torch.Tensor]
    metadata: dict[str, str] = field(default_factory=dict)
    config: dict[str, Any] | None = None

    @property
    def family(self) -> str | None:
        return self.metadata.get(META_FAMILY)


def read_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read a .safetensors file, a weights-only pickle, or a diffusers folder (config.json + weights)."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(p, "does not exist.")
    if p.is_dir():
        return _read_diffusers_folder(p)
    if p.stat().st_size == 0:
        raise CheckpointError(p, "is empty (0 bytes): an interrupted download?", "Delete it and download it again.")
    try:
        with open(p, "rb") as f:
            head = f.read(8)
    except OSError as e:  # e.g. a file copied in by another user, readable only by them
        raise CheckpointError(p, f"cannot be read ({type(e).__name__}: {first_line(e)}).",
                              "Check the file's permissions (the ComfyUI user must be able to read it).") from None
    if p.suffix.lower() in SAFETENSORS_SUFFIXES or _looks_like_safetensors(p, head):
        ckpt = _read_safetensors(p)
        side = p.parent / "config.json"
        if p.name == DIFFUSERS_WEIGHTS and side.is_file() and ckpt.config is None:
            ckpt.config = _read_json(side)
        return ckpt
    return _read_pickle(p, head)


def _looks_like_safetensors(p: Path, head: bytes) -> bool:
    if len(head) < 8 or head[:2] == b"PK" or head[:1] == b"\x80":
        return False
    n = struct.unpack("<Q", head)[0]
    return 2 <= n < p.stat().st_size


def _read_safetensors(p: Path) -> Checkpoint:
    size = p.stat().st_size
    with open(p, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise CheckpointError(p, f"is truncated ({size} bytes): not even a safetensors header.",
                                  "Delete it and download it again.")
        n = struct.unpack("<Q", raw)[0]
        if n > size - 8:
            raise CheckpointError(
                p, f"is truncated or not a safetensors file: its header claims {n} bytes but the file "
                f"has {size}.", "If it is a partial download, delete it and download it again.")
        try:
            header = json.loads(f.read(n))
        except ValueError:
            raise CheckpointError(p, "is not a safetensors file (its header is not JSON).") from None
    end = max((int(v["data_offsets"][1]) for k, v in header.items()
               if k != "__metadata__" and isinstance(v, dict) and "data_offsets" in v), default=0)
    if 8 + n + end > size:
        raise CheckpointError(p, f"is truncated: the tensors need {8 + n + end} bytes but the file has {size}.",
                              "Delete it and download it again.")
    try:
        with safe_open(str(p), framework="pt", device="cpu") as f:
            meta = dict(f.metadata() or {})
            sd = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(p, f"could not be read as safetensors ({e}).") from None
    config = None
    if META_CONFIG in meta:
        try:
            config = json.loads(meta[META_CONFIG])
        except ValueError:
            raise CheckpointError(p, "has a 'config' metadata entry that is not valid JSON.") from None
    return Checkpoint(p, sd, meta, config)


def _read_pickle(p: Path, head: bytes) -> Checkpoint:
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "GLOBAL" not in str(e) and ("Unsupported operand" in str(e) or not head.startswith((b"\x80", b"PK"))):
            # not a pickle at all (torch's files are a zip or start with a pickle protocol byte): e.g.
            # an error page saved by a failed download
            page = "; it looks like a web page (a failed download?)" if head.lstrip()[:1] == b"<" else ""
            raise CheckpointError(p, f"was not loaded: it is not a PyTorch checkpoint ({_unsafe_global(e)}){page}.",
                                  "Delete it and download it again.") from None
        raise CheckpointError(
            p, "was refused: it contains pickled Python objects other than tensors, which could run "
            f"code when loaded ({_unsafe_global(e)}). Nothing in it was executed.",
            "Use a .safetensors version of the model, or only files you trust converted elsewhere.") from None
    except (EOFError, zipfile.BadZipFile, struct.error) as e:
        raise CheckpointError(p, f"is truncated or corrupt ({type(e).__name__}: {first_line(e)}).",
                              "Delete it and download it again.") from None
    except RuntimeError as e:
        msg = str(e)
        if "zip archive" in msg or "central directory" in msg or "PytorchStreamReader" in msg:
            raise CheckpointError(p, "is truncated or not a PyTorch checkpoint (its zip container is "
                                  "broken).", "Delete it and download it again.") from None
        raise CheckpointError(p, f"could not be read: {first_line(e)}") from None
    except Exception as e:  # torch raises assorted types for non-checkpoint bytes (a cut zip: OSError)
        what = "is truncated or corrupt" if head.startswith(b"PK") else "is not a PyTorch checkpoint"
        raise CheckpointError(p, f"{what} ({type(e).__name__}: {first_line(e)}).",
                              "Delete it and download it again.") from None
    return Checkpoint(p, unwrap_state_dict(obj, p))


def unwrap_state_dict(obj: Any, path: str | os.PathLike | None = None) -> dict[str, torch.Tensor]:
    """The flat ``{name: tensor}`` dict inside a checkpoint object (``params_ema`` first)."""
    if isinstance(obj, Mapping):
        for key in _CONTAINER_KEYS:
            if key in obj and isinstance(obj[key], Mapping):
                return unwrap_state_dict(obj[key], path)
        tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
        if tensors and len(tensors) == len(obj):
            return dict(tensors)
        if tensors:
            other = next(k for k, v in obj.items() if not isinstance(v, torch.Tensor))
            raise CheckpointError(path, f"holds a mix of tensors and other entries (e.g. {other!r}); "
                                  "expected a flat state dict or one under 'params_ema' / 'params'.")
    kind = type(obj).__name__
    keys = list(obj)[:5] if isinstance(obj, Mapping) else []
    raise CheckpointError(path, f"does not hold a state dict (found a {kind}" +
                          (f" with keys {keys}" if keys else "") + ").")


def _read_diffusers_folder(p: Path) -> Checkpoint:
    weights, cfg = p / DIFFUSERS_WEIGHTS, p / "config.json"
    if not weights.is_file():
        found = sorted(x.name for x in p.iterdir())[:8]
        raise CheckpointError(p, f"is a folder without {DIFFUSERS_WEIGHTS} (it holds {found}).",
                              "Point at a checkpoint file, or at a folder with config.json and the weights.")
    ckpt = _read_safetensors(weights)
    if cfg.is_file():
        ckpt.config = _read_json(cfg)
    ckpt.path = p
    return ckpt


def _read_json(p: Path) -> dict[str, Any]:
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise CheckpointError(p, f"cannot be read ({type(e).__name__}: {first_line(e)}).",
                              "Check the file's permissions (the ComfyUI user must be able to read it).") from None
    try:
        data = json.loads(raw.decode("utf-8"))
    except ValueError as e:  # UnicodeDecodeError included
        raise CheckpointError(p, f"is not valid JSON ({first_line(e)}).") from None
    if not isinstance(data, dict):
        raise CheckpointError(p, "does not hold a JSON object.")
    return data


def _unsafe_global(e: BaseException) -> str:
    """The 'Unsupported global: GLOBAL x.y' part of torch's refusal, never its advice to unpickle."""
    for line in str(e).splitlines():
        if "GLOBAL" in line or "Unsupported" in line:
            return line.strip().removeprefix("WeightsUnpickler error:").strip()[:300]
    return "not a plain state dict"


def save_checkpoint(state_dict: Mapping[str, torch.Tensor], path: str | os.PathLike, *,
                    family: str, config: Mapping[str, Any] | None,
                    metadata: Mapping[str, str] | None = None) -> Path:
    """Write safetensors with the family and its config (JSON) in the header, atomically."""
    p = Path(path)
    meta = {"format": "pt", META_FAMILY: family}
    if config is not None:
        meta[META_CONFIG] = json.dumps(config, sort_keys=True)
    meta.update({k: str(v) for k, v in (metadata or {}).items()})
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    try:
        try:
            # safetensors creates its files readable by their owner only (0600, whatever the umask): a
            # conversion made by one user (e.g. an install script) would be unreadable by ComfyUI's. The
            # mode a new file gets here (the umask's) is put back after writing.
            tmp.unlink(missing_ok=True)  # a leftover of a killed save would keep its own mode
            open(tmp, "wb").close()
            mode = tmp.stat().st_mode & 0o777
            save_file(tensors, str(tmp), metadata=meta)
            os.chmod(tmp, mode)
        except SafetensorError as e:  # safetensors reports I/O failures (read-only folder, full disk) as its own
            raise OSError(f"cannot write {tmp}: {first_line(e)}") from e
        os.replace(tmp, p)
    finally:
        if tmp.exists():
            tmp.unlink()
    return p


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file, without reading its tensors."""
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError):
        return {}


def source_stamp(path: str | os.PathLike) -> dict[str, str]:
    """What identifies a source file for 'convert once': name, size and modification time."""
    st = Path(path).stat()
    return {META_SOURCE: Path(path).name, "source_size": str(st.st_size), "source_mtime_ns": str(st.st_mtime_ns)}


def converted_path(src: str | os.PathLike) -> Path:
    """Where the safetensors conversion of ``src`` lives: beside it, same stem."""
    p = Path(src)
    return p.with_suffix(".safetensors")


def conversion_source(dst: str | os.PathLike) -> Path | None:
    """The pickle beside ``dst`` that ``dst`` is the current safetensors conversion of, or None (not a
    conversion, its pickle is gone, or the pickle changed since). Lets a model list show the two as one."""
    p = Path(dst)
    if p.suffix.lower() != ".safetensors" or not p.is_file():
        return None
    try:
        name = read_metadata(p).get(META_SOURCE)
    except (OSError, ValueError):
        return None
    if not name or Path(name).name != name:
        return None
    src = p.with_name(name)
    return src if src.is_file() and is_current_conversion(src, p) else None


def is_current_conversion(src: str | os.PathLike, dst: str | os.PathLike) -> bool:
    """True when dst was converted from src as it is now (same name, size and mtime)."""
    if not Path(dst).is_file():
        return False
    meta = read_metadata(dst)
    return all(meta.get(k) == v for k, v in source_stamp(src).items())
