"""Image scales and their valid object-size ranges (paper §3.2, §4.4).

A :class:`Scale` says how an image is resized (a fixed factor, a longest side,
or a short side with a long-side cap) and which objects belong to it: those
whose ``sqrt(w * h)`` in ORIGINAL image pixels lies inside ``valid_range``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Scale", "parse_scale", "resize_factors", "scaled_size"]


@dataclass(frozen=True)
class Scale:
    """One level of an image pyramid.

    Exactly one of the three resize rules is set:

    - ``factor``: multiply both sides by this number (3.0, 1.667).
    - ``longest``: resize so that the longest side is this many pixels (512).
    - ``short`` (+ optional ``max_size``): resize so the short side is ``short``
      unless the long side would then exceed ``max_size`` (the (1400, 2000) form).

    ``valid_range`` is ``(lo, hi)`` in sqrt(w*h) of a box in original pixels; ``None``
    means open. A box is in range when ``lo <= s < hi`` (``lo`` open end = 0).
    """

    factor: float | None = None
    longest: int | None = None
    short: int | None = None
    max_size: int | None = None
    valid_range: tuple[float | None, float | None] = (None, None)

    def __post_init__(self) -> None:
        rules = [self.factor is not None, self.longest is not None, self.short is not None]
        if sum(rules) != 1:
            raise ValueError(f"Scale needs exactly one of factor, longest, short; got {self}")
        if self.factor is not None and not (self.factor > 0 and math.isfinite(self.factor)):
            raise ValueError(f"Scale.factor must be a positive finite number, got {self.factor}")
        for name in ("longest", "short", "max_size"):
            v = getattr(self, name)
            if v is not None and v <= 0:
                raise ValueError(f"Scale.{name} must be positive, got {v}")
        if self.max_size is not None and self.short is None:
            raise ValueError("Scale.max_size only goes with Scale.short")
        lo, hi = self.valid_range
        if lo is not None and hi is not None and not lo < hi:
            raise ValueError(f"Scale.valid_range must have lo < hi, got {self.valid_range}")
        object.__setattr__(self, "valid_range", (None if lo is None else float(lo), None if hi is None else float(hi)))

    @property
    def lo(self) -> float:
        return 0.0 if self.valid_range[0] is None else self.valid_range[0]

    @property
    def hi(self) -> float:
        return math.inf if self.valid_range[1] is None else self.valid_range[1]

    def resize_factor(self, width: float, height: float) -> float:
        """The factor that maps original pixels of a ``width`` x ``height`` image to this scale."""
        if self.factor is not None:
            return float(self.factor)
        if self.longest is not None:
            return self.longest / max(width, height)
        f = self.short / min(width, height)
        if self.max_size is not None and f * max(width, height) > self.max_size:
            f = self.max_size / max(width, height)
        return float(f)

    def in_range(self, sqrt_areas: np.ndarray) -> np.ndarray:
        """Boolean mask of sizes (sqrt area, original pixels) inside the valid range."""
        s = np.asarray(sqrt_areas, dtype=np.float64)
        return (s >= self.lo) & (s < self.hi)

    def describe(self) -> str:
        if self.factor is not None:
            rule = f"x{self.factor:g}"
        elif self.longest is not None:
            rule = f"longest={self.longest}"
        else:
            rule = f"short={self.short}" + (f",max={self.max_size}" if self.max_size else "")
        lo, hi = self.valid_range
        return f"{rule} [{'0' if lo is None else f'{lo:g}'}, {'inf' if hi is None else f'{hi:g}'})"

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {}
        for k in ("factor", "longest", "short", "max_size"):
            if getattr(self, k) is not None:
                d[k] = getattr(self, k)
        d["range"] = list(self.valid_range)
        return d


def parse_scale(obj: Any) -> Scale:
    """Build a :class:`Scale` from YAML-friendly forms.

    Accepted: a ``Scale``; a mapping ``{factor|longest|short[, max_size], range: [lo, hi]}``
    (``range`` ends may be null or -1 for open).
    """
    if isinstance(obj, Scale):
        return obj
    if not isinstance(obj, Mapping):
        raise ValueError(f"a scale must be a mapping like {{factor: 3.0, range: [0, 80]}}, got {obj!r}")
    unknown = set(obj) - {"factor", "longest", "short", "max_size", "range", "valid_range"}
    if unknown:
        raise ValueError(f"unknown scale keys {sorted(unknown)} in {dict(obj)!r}")
    rng = obj.get("range", obj.get("valid_range", (None, None)))
    if not isinstance(rng, Sequence) or len(rng) != 2:
        raise ValueError(f"scale range must be [lo, hi], got {rng!r}")
    lo, hi = (None if (v is None or v == -1 or v == float("inf")) else float(v) for v in rng)
    if lo == 0:
        lo = None
    return Scale(
        factor=None if obj.get("factor") is None else float(obj["factor"]),
        longest=None if obj.get("longest") is None else int(obj["longest"]),
        short=None if obj.get("short") is None else int(obj["short"]),
        max_size=None if obj.get("max_size") is None else int(obj["max_size"]),
        valid_range=(lo, hi),
    )


def resize_factors(scales: Sequence[Scale], width: float, height: float) -> np.ndarray:
    """Resize factor of every scale for one image."""
    return np.array([s.resize_factor(width, height) for s in scales], dtype=np.float64)


def scaled_size(width: int, height: int, factor: float) -> tuple[int, int]:
    """Integer size of an image resized by ``factor`` (at least 1 px per side)."""
    return max(1, int(round(width * factor))), max(1, int(round(height * factor)))
