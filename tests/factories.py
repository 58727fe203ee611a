"""Generated official-format LUA checkpoints for tests (random, seeded; no downloads)."""

from __future__ import annotations

from pathlib import Path

import torch

from lua_baseline import official_shift_mask
from lua_core.archs.lua import LUA, LUAConfig, relative_position_index

TINY = dict(embed_dim=12, depths=(2,), num_heads=(2,), window_size=8, img_size=16, head_num_feat=8)


def tiny_config(**overrides) -> LUAConfig:
    """A small official-layout config (2 blocks, window 8) with x2/x4 heads; 16 channels by default."""
    kw = dict(TINY)
    kw.update(overrides)
    if "in_chans" in kw and "heads" not in kw:
        c = kw["in_chans"]
        kw["heads"] = ({"name": "x2", "scale": 2, "out_chans": c}, {"name": "x4", "scale": 4, "out_chans": c,
                                                                      "primary": True})
    if "primary_head" not in kw:
        heads = [h if isinstance(h, dict) else h.to_dict() for h in kw.get("heads", ())]
        kw["primary_head"] = next((h["name"] for h in heads if h.get("primary")), "x4")
    return LUAConfig.from_dict(kw)


def make_lua(config: LUAConfig | None = None, seed: int = 0, std: float = 0.05) -> LUA:
    """A LUA module with seeded, non-trivial weights (every parameter perturbed, as the official
    conformance recipe does)."""
    torch.manual_seed(seed)
    model = LUA(config or tiny_config())
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * std)
    return model.eval()


def official_state_dict(model: LUA) -> dict[str, torch.Tensor]:
    """The state dict as the official code saves it: parameters plus the derived buffers
    (``relative_position_index`` on every block, ``attn_mask`` on shifted blocks for img_size)."""
    cfg = model.config
    sd = dict(model.state_dict())
    ws, shift = cfg.ws_eff, cfg.shift
    for i, layer in enumerate(model.layers):
        for j, blk in enumerate(layer.residual_group.blocks):
            pre = f"layers.{i}.residual_group.blocks.{j}"
            sd[f"{pre}.attn.relative_position_index"] = relative_position_index(ws)
            if blk.shift:
                sd[f"{pre}.attn_mask"] = official_shift_mask(cfg.img_size, cfg.img_size, ws, shift)
    return sd


def save_official_pth(model: LUA, path: Path, key: str = "params_ema") -> Path:
    """``torch.save({key: state_dict})``: the released container."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({key: official_state_dict(model)}, path)
    return path
