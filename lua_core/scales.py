"""The scales an upscaler can do, as one type for loaded models, files on disk and downloads.

Why one type: the loader's labels, ``auto``'s ranking, the download registry and the forward's
scale planning all ask the same questions (does it do x2? what is its largest factor? how do I
say it?), and each had its own representation (frozensets, ranges, tuples, text). Torch-free, so
the registry and the batch tools can use it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

#: two scales closer than this are the same scale (a float widget's 2.0000001 is x2)
TOLERANCE = 1e-6


@dataclass(frozen=True)
class Scales:
    """Either a set of exact factors (``Scales.of(2, 4)``: one forward gives each) or a continuous
    range (``Scales.between(1, 2)``: any factor in it, ends included)."""

    exact: tuple[float, ...] = ()
    low: float | None = None
    high: float | None = None

    def __post_init__(self) -> None:
        ranged = self.low is not None or self.high is not None
        if ranged == bool(self.exact) or (ranged and (self.low is None or self.high is None)):
            raise ValueError("Scales is either exact factors or a range (low and high), not both or neither")
        factors = (self.low, self.high) if ranged else self.exact
        if not all(isinstance(f, (int, float)) and math.isfinite(f) and f > 0 for f in factors):
            raise ValueError(f"scales must be positive finite numbers, got {factors}")
        if ranged and self.low > self.high:
            raise ValueError(f"a scale range needs low <= high, got {self.low:g} > {self.high:g}")
        object.__setattr__(self, "exact", tuple(sorted({float(f) for f in self.exact})))

    @classmethod
    def of(cls, *factors: float) -> Scales:
        return cls(exact=tuple(float(f) for f in factors))

    @classmethod
    def between(cls, low: float, high: float) -> Scales:
        return cls(low=float(low), high=float(high))

    @property
    def is_range(self) -> bool:
        return self.low is not None

    @property
    def largest(self) -> float:
        return self.high if self.is_range else self.exact[-1]

    def native(self, scale: float) -> float | None:
        """The factor one forward runs for ``scale`` (the exact factor it is close to, or the scale
        itself inside a range); None when it is not one the model does natively."""
        if self.is_range:
            return float(scale) if self.low - TOLERANCE <= scale <= self.high + TOLERANCE else None
        near = min(self.exact, key=lambda s: abs(s - scale))
        return near if math.isclose(scale, near, rel_tol=0, abs_tol=TOLERANCE) else None

    def above(self, scale: float) -> float | None:
        """The smallest exact factor above ``scale`` (None: none, or a range)."""
        bigger = [s for s in self.exact if s > scale]
        return min(bigger) if bigger else None

    def __contains__(self, scale: object) -> bool:
        return isinstance(scale, (int, float)) and not isinstance(scale, bool) and self.native(float(scale)) is not None

    def __str__(self) -> str:
        """``x2, x4`` or ``any scale from 1 to 2``, for messages."""
        if self.is_range:
            return f"any scale from {self.low:g} to {self.high:g}"
        return ", ".join(f"x{s:g}" for s in self.exact)

    @property
    def short(self) -> str:
        """``x2 x4``, ``x1-2``, ``x1.5``: for labels."""
        if self.is_range:
            return f"x{self.low:g}-{self.high:g}"
        return " ".join(f"x{s:g}" for s in self.exact)
