"""NNLatentUpscale (Ttl/ComfyUi_NNLatentUpscale, GPL-3.0): one model for any scale in [1, 2].

A small conv net conditioned on ``scale - 1``: residual blocks (with a scale embedding added as a
per-channel bias) and single-head attention blocks at the input size, a bilinear resize to the
target size, the same again at the output size. Released files are ``sd15_resizer.pt`` and
``sdxl_resizer.pt`` (plain ``torch.save`` state dicts, read with ``weights_only=True``).

The original was trained on ``0.13025 * raw`` for SD1.x and SDXL alike, so ``upscale`` wraps the
forward as ``f(0.13025 * x, s) / 0.13025`` on raw latents and ignores ``latent_format``.

The config is inferred from the keys as the original loader does (see ``infer_config``). The
attention spans all H*W positions, (H*W)^2 logits; it runs through
``F.scaled_dot_product_attention`` (which does not materialise them on its fused paths), and with
``max_memory`` the queries are processed in chunks, which gives the same numbers since every
query row is independent.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..scales import Scales
from .base import LatentUpscaler, StateDict, load_exact

#: the node multiplies raw latents by this before the network and divides after (SD1.x and SDXL)
LATENT_SCALE = 0.13025
EMBED_DIM = 32
GROUPS = 32


@dataclass(frozen=True)
class NNLatentConfig:
    """The original constructor's arguments (released: 10, 10, 128, attention on)."""

    in_blocks: int = 10
    out_blocks: int = 10
    channels: int = 128
    attn: bool = True

    def __post_init__(self) -> None:
        if self.in_blocks < 1 or self.out_blocks < 1:
            raise ValueError("NNLatentUpscale needs at least one residual block on each side")
        if self.channels < GROUPS or self.channels % GROUPS:
            raise ValueError(f"NNLatentUpscale channels ({self.channels}) must be a multiple of {GROUPS}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NNLatentConfig:
        unknown = sorted(set(d) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"invalid NNLatentUpscale config: unknown fields {unknown}")
        return cls(**d)


def block_kinds(n_res: int, attn: bool) -> list[str]:
    """Entry kinds of ``in_blocks``/``out_blocks``: attention before residual block 1 and the last."""
    kinds = []
    for b in range(n_res):
        if attn and b in (1, n_res - 1):
            kinds.append("attn")
        kinds.append("res")
    return kinds


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv, + Linear(SiLU(emb)) per channel, GroupNorm-SiLU-(Dropout)-conv, + x."""

    def __init__(self, c: int):
        super().__init__()
        self.in_layers = nn.Sequential(nn.GroupNorm(GROUPS, c), nn.SiLU(), nn.Conv2d(c, c, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(EMBED_DIM, c))
        self.out_layers = nn.Sequential(nn.GroupNorm(GROUPS, c), nn.SiLU(), nn.Dropout(0.0),
                                        nn.Conv2d(c, c, 3, padding=1))

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x)
        h = h + self.emb_layers(emb).to(h.dtype)[..., None, None]
        return x + self.out_layers(h)


class AttnBlock(nn.Module):
    """One head over all H*W positions, softmax scale C^-0.5, 1x1 q/k/v/proj_out, residual."""

    def __init__(self, c: int):
        super().__init__()
        self.norm = nn.GroupNorm(GROUPS, c)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(c, c, 1) for _ in range(4))

    def forward(self, x: torch.Tensor, max_memory: int | None = None) -> torch.Tensor:
        b, c, h, w = x.shape
        n = self.norm(x)
        # (B, 1 head, HW, C), contiguous: only 4-D inputs with unit-stride channels get SDPA's fused
        # kernels (CPU flash, CUDA flash/mem-efficient), which never hold the (HW)^2 logits; anything
        # else silently falls back to the math path (2.4 GB at 16384 positions instead of a few MB).
        q, k, v = (m(n).flatten(2).transpose(1, 2).unsqueeze(1).contiguous() for m in (self.q, self.k, self.v))
        rows = query_chunk(b, h * w, x.element_size(), max_memory)
        if rows >= h * w:
            out = F.scaled_dot_product_attention(q, k, v)
        else:  # bounded even where no fused kernel applies; each query row is independent, so exact
            out = torch.cat([F.scaled_dot_product_attention(q[:, :, i:i + rows], k, v)
                             for i in range(0, h * w, rows)], dim=2)
        return x + self.proj_out(out.squeeze(1).transpose(1, 2).reshape(b, c, h, w))


def query_chunk(batch: int, positions: int, itemsize: int, max_memory: int | None) -> int:
    """Query rows per attention step so that one step's logits (and softmax) fit ``max_memory`` bytes."""
    if max_memory is None:
        return positions
    per_row = 2 * batch * positions * itemsize
    return max(1, min(positions, int(max_memory) // per_row))


class NNLatentUpscaler(LatentUpscaler):
    family = "nnlatentupscale"

    def __init__(self, config: NNLatentConfig | None = None):
        super().__init__()
        cfg = config or NNLatentConfig()
        self.config = cfg
        c = cfg.channels
        self.conv_in = nn.Conv2d(4, c, 3, padding=1)
        self.embed = nn.Sequential(nn.Linear(1, EMBED_DIM), nn.SiLU(), nn.Linear(EMBED_DIM, EMBED_DIM))
        self.in_blocks = nn.ModuleList(_make(k, c) for k in block_kinds(cfg.in_blocks, cfg.attn))
        self.out_blocks = nn.ModuleList(_make(k, c) for k in block_kinds(cfg.out_blocks, cfg.attn))
        self.norm_out = nn.GroupNorm(GROUPS, c)
        self.conv_out = nn.Conv2d(c, 4, 3, padding=1)

    @property
    def latent_channels(self) -> int:
        return 4

    @property
    def native_scales(self) -> Scales:
        return Scales.between(1.0, 2.0)

    def config_dict(self) -> dict[str, Any]:
        return asdict(self.config)

    def upscale(self, latent: torch.Tensor, scale: float, *, latent_format: str | None = None,
                max_memory: int | None = None, **_: Any) -> torch.Tensor:
        """Raw latents in and out: the node's fixed 0.13025 wrapping, whatever the model family."""
        if scale not in self.native_scales:
            raise ValueError(f"NNLatentUpscale does {self.native_scales}, not x{scale:g}")
        if target_size(latent, scale) == tuple(latent.shape[-2:]):
            return latent  # the original returns its input unchanged when the size does not change
        return self.forward(LATENT_SCALE * latent, scale, max_memory) / LATENT_SCALE

    def forward(self, x: torch.Tensor, scale: float, max_memory: int | None = None) -> torch.Tensor:
        """The network on scaled latents (what the original module computes)."""
        size = target_size(x, scale)
        if size == tuple(x.shape[-2:]):
            return x
        emb = self.embed(torch.tensor([[scale - 1.0]], dtype=x.dtype, device=x.device))
        h = self.conv_in(x)
        h = self._blocks(self.in_blocks, h, emb, max_memory)
        h = F.interpolate(h, size=size, mode="bilinear", align_corners=False)
        h = self._blocks(self.out_blocks, h, emb, max_memory)
        return self.conv_out(F.silu(self.norm_out(h)))

    @staticmethod
    def _blocks(blocks: nn.ModuleList, h: torch.Tensor, emb: torch.Tensor, max_memory: int | None) -> torch.Tensor:
        for blk in blocks:
            h = blk(h, emb) if isinstance(blk, ResBlock) else blk(h, max_memory)
        return h


def target_size(x: torch.Tensor, scale: float) -> tuple[int, int]:
    """``round(H * s), round(W * s)`` with Python's rounding, as the original."""
    return int(round(x.shape[-2] * scale)), int(round(x.shape[-1] * scale))


def _make(kind: str, c: int) -> nn.Module:
    return AttnBlock(c) if kind == "attn" else ResBlock(c)


# --------------------------------------------------------------------------------------------
# Recognising and building
# --------------------------------------------------------------------------------------------

def detect(sd: StateDict) -> bool:
    return "conv_in.weight" in sd and "embed.0.weight" in sd and any(k.startswith("in_blocks.") for k in sd)


def infer_config(sd: StateDict) -> NNLatentConfig:
    """As the original loader: channels from ``conv_in.bias``; an entry with ``q.weight`` is an
    attention block, every other entry a residual block; attention on when ``out_blocks`` has any."""
    def entries(prefix: str) -> tuple[int, int]:
        idx = {int(k.split(".")[1]) for k in sd if k.startswith(prefix + ".")}
        attn = {i for i in idx if f"{prefix}.{i}.q.weight" in sd}
        return (max(idx) + 1 if idx else 0), len(attn)

    n_in, a_in = entries("in_blocks")
    n_out, a_out = entries("out_blocks")
    channels = int(sd["conv_in.bias"].shape[0])
    return NNLatentConfig(in_blocks=n_in - a_in, out_blocks=n_out - a_out, channels=channels, attn=a_out != 0)


def build(sd: StateDict, config: dict[str, Any] | None, hints: dict[str, Any]) -> NNLatentUpscaler:
    """Build from the keys (or a saved config), loading every tensor strictly."""
    cfg = NNLatentConfig.from_dict(config) if config else infer_config(sd)
    model = NNLatentUpscaler(cfg)
    load_exact(model, sd, f"NNLatentUpscale layout {asdict(cfg)}")
    return model.eval().requires_grad_(False)
