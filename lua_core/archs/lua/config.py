"""LUA's configuration: the official constructor's arguments that shape the weights, and its heads.

Names follow the official ``SwinIR``-style constructor, so a released ``config.json`` or the
kwargs stored beside a checkpoint map onto ``LUAConfig.from_dict`` field for field.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

# Constructor arguments of the official class that only matter for training or are fixed.
# Constructor arguments of the official class that only matter for training or are fixed.
_IGNORED_KEYS = {"drop_rate", "attn_drop_rate", "drop_path_rate", "use_checkpoint", "norm_layer",
                 "upsampler", "upscale"}
_FIXED_KEYS = {"patch_size": 1, "ape": False}


@dataclass(frozen=True)
class HeadConfig:
    """One output head: ``scale`` is 2**n (n pixel-shuffle steps) or 3."""

    name: str
    scale: int
    out_chans: int
    num_feat: int | None = None  # None: the model's head_num_feat
    primary: bool = False

    def to_dict(self) -> dict[str, Any]:
        d = {"name": self.name, "scale": self.scale, "out_chans": self.out_chans}
        if self.num_feat is not None:
            d["num_feat"] = self.num_feat
        if self.primary:
            d["primary"] = True
        return d


@dataclass(frozen=True)
class LUAConfig:
    """The official constructor's arguments that shape the weights (same names as upstream)."""

    in_chans: int = 16
    embed_dim: int = 360
    depths: tuple[int, ...] = (6, 6, 6, 6, 6, 6)
    num_heads: tuple[int, ...] = (12, 12, 12, 12, 12, 12)
    window_size: int = 16
    img_size: int = 32
    mlp_ratio: float = 2.0
    resi_connection: str = "1conv"
    img_range: float = 1.0
    head_num_feat: int = 256
    heads: tuple[HeadConfig, ...] = field(default_factory=lambda: (
        HeadConfig("x2", 2, 16), HeadConfig("x4", 4, 16, primary=True)))
    primary_head: str | None = "x4"
    qkv_bias: bool = True
    qk_scale: float | None = None
    patch_norm: bool = True

    def __post_init__(self) -> None:
        problems = []
        if len(self.depths) != len(self.num_heads) or not self.depths:
            problems.append(f"depths {list(self.depths)} and num_heads {list(self.num_heads)} must be "
                            "non-empty lists of the same length")
        for h in self.num_heads:
            if h <= 0 or self.embed_dim % h:
                problems.append(f"embed_dim {self.embed_dim} is not divisible by num_heads {h}")
        if self.resi_connection not in ("1conv", "3conv"):
            problems.append(f"resi_connection must be '1conv' or '3conv', not {self.resi_connection!r}")
        if self.window_size < 1 or self.img_size < 1:
            problems.append("window_size and img_size must be positive")
        if not self.heads:
            problems.append("a LUA model needs at least one head")
        names = [h.name for h in self.heads]
        if len(set(names)) != len(names):
            problems.append(f"head names must be unique, got {names}")
        if self.primary_head is not None and self.primary_head not in names:
            problems.append(f"primary_head {self.primary_head!r} is not one of the heads {names}")
        for h in self.heads:
            if not upsample_steps(h.scale):
                problems.append(f"head {h.name!r}: scale {h.scale} is not 3 or a power of two >= 2")
        if self.ws_eff != self.window_size and self.window_size % self.ws_eff:
            problems.append(f"img_size {self.img_size} must divide window_size {self.window_size}")
        if problems:
            raise ValueError("invalid LUA config: " + "; ".join(problems))

    # The official construction shortcut: when img_size <= window_size the window shrinks to
    # img_size and no block is shifted (FORMAT.md, "Caveat").
    @property
    def ws_eff(self) -> int:
        return min(self.window_size, self.img_size)

    @property
    def shift(self) -> int:
        return 0 if self.img_size <= self.window_size else self.window_size // 2

    def head(self, name: str) -> HeadConfig:
        return next(h for h in self.heads if h.name == name)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["depths"], d["num_heads"] = list(self.depths), list(self.num_heads)
        d["heads"] = [h.to_dict() for h in self.heads]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LUAConfig:
        """Build from the official constructor kwargs (or ``to_dict`` output)."""
        d = dict(d)
        for k, fixed in _FIXED_KEYS.items():
            value = d.pop(k, fixed)
            if value != fixed:
                raise ValueError(f"invalid LUA config: {k}={value!r} is not supported (only {fixed!r})")
        for k in _IGNORED_KEYS:
            d.pop(k, None)
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"invalid LUA config: unknown fields {unknown}")
        if "heads" in d:
            d["heads"] = tuple(h if isinstance(h, HeadConfig) else HeadConfig(**h) for h in d["heads"])
        for k in ("depths", "num_heads"):
            if k in d:
                d[k] = tuple(int(v) for v in d[k])
        return cls(**d)


def released_flux_config() -> LUAConfig:
    """The config of ``vaskers5/LUA-FLUX`` ``lua_flux.pth`` (54.9M parameters)."""
    return LUAConfig()


def upsample_steps(scale: int) -> list[int]:
    """Pixel-shuffle factors of a head: [2]*n for 2**n, [3] for 3, [] if unsupported."""
    if scale == 3:
        return [3]
    if scale >= 2 and scale & (scale - 1) == 0:
        return [2] * int(math.log2(scale))
    return []
