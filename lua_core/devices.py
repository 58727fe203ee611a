"""Device facts the inference layer needs: free memory, and recognising out-of-memory errors.

Kept apart so that the ComfyUI nodes can pass their own numbers (``model_management``) instead.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch


def usable_device(name: str | torch.device, option: str = "--device") -> torch.device:
    """``name`` as a device this torch build can allocate on, or a ``LuaError`` naming the option
    (torch says "Expected one of cpu, cuda, ..." or asserts "Torch not compiled with CUDA")."""
    from .errors import LuaError, first_line

    try:
        device = torch.device(name)
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError, ValueError, TypeError) as e:
        raise LuaError(f"{option} {name} cannot be used here ({first_line(e, 200)}); use cpu, or a device this "
                       "torch build has") from None
    return device


def available_memory(device: torch.device | str) -> int:
    """Bytes a forward may use on ``device`` now (free memory, with 10% kept back)."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * 0.9)
    if device.type == "mps" and hasattr(torch, "mps"):
        try:
            return int((torch.mps.recommended_max_memory() - torch.mps.current_allocated_memory()) * 0.9)
        except (AttributeError, RuntimeError):
            pass
    return int(_free_ram() * 0.9)


def _free_ram() -> int:
    try:
        import psutil
        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))


def is_out_of_memory(e: BaseException) -> bool:
    """True for the out-of-memory errors of CUDA, MPS and the CPU allocator."""
    if isinstance(e, MemoryError) or isinstance(e, getattr(torch, "OutOfMemoryError", ())):
        return True
    msg = str(e).lower()
    return "out of memory" in msg or "can't allocate memory" in msg or "not enough memory" in msg


def release_cached_memory(device: torch.device | str) -> None:
    """Give cached blocks back before a retry with smaller chunks."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.empty_cache()
    elif device.type == "mps" and hasattr(torch, "mps"):
        torch.mps.empty_cache()


@contextlib.contextmanager
def exact_fp32(device: torch.device | str, dtype: torch.dtype) -> Iterator[None]:
    """fp32 on CUDA without TF32, for the duration of one forward.

    PyTorch lets cuDNN convolutions use TF32 by default (and ComfyUI or a user may allow it for
    matmuls too): on an H100 that moved the conformance outputs by 4.6e-3, 46x the 1e-4 tolerance
    (benchmarks/gpu_check.py, "drift"). An fp32 model is run for fp32 numbers, so both are switched
    off here and restored after; fp16/bf16 are untouched. Someone who wants TF32 speed can run the
    model in bf16, which is faster still.
    """
    if dtype != torch.float32 or torch.device(device).type != "cuda":
        yield
        return
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    if hasattr(matmul, "fp32_precision") and hasattr(getattr(cudnn, "conv", None), "fp32_precision"):
        # torch >= 2.9: only its fp32_precision API. Writing the legacy flags there rewrites these
        # settings, so restoring the legacy flags would not give the user's state back (and a
        # torch.set_float32_matmul_precision('medium') would read as a mix and raise afterwards)
        targets = [(matmul, "fp32_precision", matmul.fp32_precision, "ieee"),
                   (cudnn.conv, "fp32_precision", cudnn.conv.fp32_precision, "ieee")]
    else:
        targets = [(matmul, "allow_tf32", matmul.allow_tf32, False), (cudnn, "allow_tf32", cudnn.allow_tf32, False)]
    for owner, name, _, value in targets:
        setattr(owner, name, value)
    try:
        yield
    finally:
        for owner, name, saved, _ in targets:
            setattr(owner, name, saved)
