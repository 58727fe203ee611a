"""How much working memory an upscale needs, so ComfyUI can make room before it runs.

Why: ``model_management.load_models_gpu(memory_required=...)`` unloads other models (the
diffusion model, typically) until the estimate fits, as it does for a VAE decode. An estimate
that is too small risks an out-of-memory error (caught, then retried smaller: see
``handle.run_upscale``); one that is too large only unloads more than needed.
"""

from __future__ import annotations

import torch

#: working memory per output element per channel of the widest layer, for families without their own estimate
_GENERIC_FACTOR = 3


def working_memory(upscaler: torch.nn.Module, shape: tuple[int, ...], scale: float, dtype: torch.dtype) -> int:
    """Estimated peak bytes (weights excluded) of upscaling a latent of ``shape`` by ``scale``.

    LUA: its own one-shot estimate (the forward then chunks itself to the memory actually free).
    Other families are plain conv nets: about three activations as wide as their widest layer at
    the output size, plus input and output.
    """
    b, c, h, w = shape
    elem = torch.empty((), dtype=dtype).element_size()
    oh, ow = max(1, round(h * scale)), max(1, round(w * scale))
    io = (b * c * h * w + 2 * b * c * oh * ow) * 4  # fp32 in, out (model dtype and fp32 copy)
    if getattr(upscaler, "family", None) == "lua":
        try:
            from ..lua_core.archs.lua import ForwardPlan, estimate_peak
            from ..lua_core.inference import plan_scale

            run_scale, _ = plan_scale(upscaler, scale)
            head = upscaler.head_for(run_scale)
            return io + estimate_peak(upscaler.config, tuple(shape), head, ForwardPlan(), elem)
        except Exception:  # an unusual config: the generic estimate is good enough
            pass
    widest = max((p.shape[0] for p in upscaler.parameters() if p.ndim >= 2), default=c)
    return io + _GENERIC_FACTOR * b * widest * oh * ow * elem


def kept_memory(upscaler: torch.nn.Module, dtype: torch.dtype, device: torch.device | str) -> int:
    """Bytes an upscaler keeps on its device beyond its state dict once it has run (LUA: the
    attention biases built from its tables, and on CUDA its padded attention weights), which
    ComfyUI's model size does not count."""
    if getattr(upscaler, "family", None) != "lua":
        return 0
    from ..lua_core.archs.lua import kept_bytes

    return kept_bytes(upscaler.config, torch.empty((), dtype=dtype).element_size(), device)
