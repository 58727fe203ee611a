"""LUA, the Latent Upscaler Adapter (arXiv 2511.10629), as released with the FLUX weights.

A SwinIR-style trunk shared across scales and one pixel-shuffle head per scale. Submodule names
mirror the released state dict, so official files load strictly, parameter for parameter. The two
buffers of the official files whose shape depends on the training size (``relative_position_index``
and ``attn_mask``) are not stored here: they are rebuilt for whatever size comes in.

The forward is written for inference at any size with bounded memory, and gives the official
numbers (fp32, within 1e-4):

* every Swin block works in a window-partitioned layout, where windows, LayerNorms and the MLP are
  independent per window, so they run in chunks of windows written back in place, the output
  projection and fc2 accumulating into the residual inside their GEMMs;
* the relative-position bias is built once per weights and broadcast over windows and batch; on
  CPU the shift mask is not added at all: in the rolled frame only the last row and column of
  windows hold more than one mask region, and attention runs per region (``window_regions``); on
  CUDA, where kernel launches cost more than exps, the mask is folded into one kept bias per window
  kind (``MASK_IN_BIAS_ON``) and the head dim padded inside kept weights (``PAD_HEAD_DIM_ON``);
* the heads' linear tails are folded into one convolution at the latent size (``folded_head``), and
  on CPU fp32 the wide 3x3 convolutions run as Winograd F(2x2, 3x3) (``winograd``);
* on CPU bf16 (AMX), the qkv projection and fc1 run as oneDNN linears with the query bias, fc1's bias
  and the GELU in the GEMM epilogue (``ONEDNN_LINEAR_ON``): fewer passes, one rounding to bf16;
* the convolutions of the heads (and the trunk's) can run in bands of rows with the halo each band
  needs.

A plain, differentiable path (no in-place writes) is used whenever autograd records, so the same
module trains (see ``lua_core.train``).

The package, one concern per module: ``config`` (the constructor's arguments), ``windows``
(window geometry: positions, shift-mask regions, token layouts, padding), ``attention`` (window
attention and the per-device layout choices), ``model`` (the modules and the forward), ``memory``
(estimates and the chunking plan), ``folded_head`` and ``winograd`` (the heads' folded tail and the
CPU 3x3 convolution). Recognising a state dict and building the model from it live here.
"""

from __future__ import annotations

import logging
import math
from dataclasses import replace
from typing import Any

from ..base import StateDict, load_exact
from .attention import AttentionWeights, WindowAttention, Workspace, head_dim_pad, mask_in_bias, window_sdpa
from .config import HeadConfig, LUAConfig, released_flux_config, upsample_steps
from .memory import ForwardPlan, bias_cache_bytes, estimate_peak, kept_bytes, plan_forward
from .model import LUA, Conv2d, Head, SwinBlock, conv_in_bands
from .windows import reflect_pad, relative_position_index, shift_mask, window_layout, window_regions

_log = logging.getLogger(__name__)

DERIVED_BUFFER_SUFFIXES = (".relative_position_index", ".attn_mask")


def detect(sd: StateDict) -> bool:
    return "conv_first.weight" in sd and any(k.startswith("heads.") for k in sd) and \
        any(k.endswith(".attn.relative_position_bias_table") for k in sd)


def infer_config(sd: StateDict) -> LUAConfig:
    """Config from tensor shapes alone (for files that carry none).

    Unknowable from weights and left at the released defaults: img_range (1.0) and qk_scale.
    img_size comes from a stored attn_mask when there is one; otherwise 2 * window_size, which
    gives the same outputs as any img_size > window_size.
    """
    def shape(key: str) -> tuple[int, ...]:
        if key not in sd:
            raise KeyError(key)
        return tuple(sd[key].shape)

    e, in_chans = shape("conv_first.weight")[:2]
    depths, heads = [], []
    i = 0
    while f"layers.{i}.residual_group.blocks.0.norm1.weight" in sd:
        j = 0
        while f"layers.{i}.residual_group.blocks.{j}.norm1.weight" in sd:
            j += 1
        depths.append(j)
        heads.append(shape(f"layers.{i}.residual_group.blocks.0.attn.relative_position_bias_table")[1])
        i += 1
    if not depths:
        raise KeyError("layers.0.residual_group.blocks.0.norm1.weight")
    rows = shape("layers.0.residual_group.blocks.0.attn.relative_position_bias_table")[0]
    ws = (math.isqrt(rows) + 1) // 2
    hidden = shape("layers.0.residual_group.blocks.0.mlp.fc1.weight")[0]
    resi = "1conv" if "layers.0.conv.weight" in sd else "3conv"
    img_size = 2 * ws
    mask_key = next((k for k in sd if k.endswith(".attn_mask")), None)
    shifted = mask_key is not None or not any(k.endswith(".relative_position_index") for k in sd)
    if mask_key is not None:
        img_size = math.isqrt(sd[mask_key].shape[0]) * ws
    elif not shifted:  # index buffers stored but no mask: the img_size <= window_size shortcut
        img_size = ws
        _log.warning("this LUA checkpoint was built with img_size <= window_size (windows of %d): its "
                     "window_size, which sets the input padding, is not in the weights and is taken as %d. If "
                     "it was larger, outputs differ near the bottom/right edges of latents whose sides are not "
                     "multiples of it (a .safetensors conversion keeps this guess in its config)", ws, ws)
    head_names = sorted({k.split(".")[1] for k in sd if k.startswith("heads.")})
    head_cfgs = []
    head_nf = None
    for name in head_names:
        nf = shape(f"heads.{name}.conv_before.0.weight")[0]
        head_nf = head_nf or nf
        factors = []
        k = 0
        while f"heads.{name}.upsample.{k}.weight" in sd:
            factors.append(math.isqrt(shape(f"heads.{name}.upsample.{k}.weight")[0] // nf))
            k += 2
        scale = math.prod(factors) if factors else 1
        out = shape(f"heads.{name}.conv_last.weight")[0]
        head_cfgs.append(HeadConfig(name, scale, out, None if nf == head_nf else nf))
    primary = max(head_cfgs, key=lambda h: h.scale).name
    head_cfgs = [replace(h, primary=h.name == primary) for h in head_cfgs]
    return LUAConfig(in_chans=in_chans, embed_dim=e, depths=tuple(depths), num_heads=tuple(heads),
                     window_size=ws, img_size=img_size, mlp_ratio=hidden / e, resi_connection=resi,
                     head_num_feat=head_nf or 256, heads=tuple(head_cfgs), primary_head=primary,
                     qkv_bias=any(k.endswith(".attn.qkv.bias") for k in sd),
                     patch_norm="patch_embed.norm.weight" in sd)


def build(sd: StateDict, config: dict[str, Any] | None, hints: dict[str, Any]) -> LUA:
    """Build a LUA module from a state dict (derived buffers ignored) and an optional config."""
    cfg = LUAConfig.from_dict(config) if config else infer_config(sd)
    model = LUA(cfg)
    load_exact(model, {k: v for k, v in sd.items() if not k.endswith(DERIVED_BUFFER_SUFFIXES)}, "LUA config")
    return model.eval().requires_grad_(False)


__all__ = ["LUA", "AttentionWeights", "Conv2d", "ForwardPlan", "Head", "HeadConfig", "LUAConfig", "SwinBlock",
           "WindowAttention", "Workspace", "bias_cache_bytes", "build", "conv_in_bands", "detect", "estimate_peak",
           "head_dim_pad", "infer_config", "kept_bytes", "mask_in_bias", "plan_forward", "reflect_pad",
           "relative_position_index", "released_flux_config", "shift_mask", "upsample_steps", "window_layout",
           "window_regions", "window_sdpa"]
