"""Equal-width discretization of real columns to ``{0..K}`` with public bounds (opboost.md §2.4).

The paper's datasets were preprocessed to integers in ``[0, 10]``; the rule is not stated, equal-width rounding is
the likely one. fedsim takes the bounds from public configuration: :func:`bounds_from_data` exists only as an
explicit, leaking choice (mpc4j's ``readIntBounds`` behaviour).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np

__all__ = ["Bounds", "bounds_from_data", "discretize"]


@dataclass(frozen=True)
class Bounds:
    """Public value bounds ``[lower, upper]`` of a real column."""

    lower: float
    upper: float

    def __post_init__(self) -> None:
        """Require finite ``lower < upper``."""
        if not (math.isfinite(self.lower) and math.isfinite(self.upper)):
            raise ValueError(f"bounds must be finite, got lower={self.lower!r}, upper={self.upper!r}")
        if self.lower >= self.upper:
            raise ValueError(f"bounds need lower < upper, got lower={self.lower!r}, upper={self.upper!r}")


def discretize(
    values: np.ndarray, bounds: Bounds, levels: int, *, clip: bool = True, return_clipped: bool = False
) -> np.ndarray | tuple[np.ndarray, int]:
    """Map ``[lower, upper]`` to ``{0..levels}`` by ``round((x − lower)/(upper − lower)·levels)`` (half up).

    Out-of-bounds values are clipped (with a RuntimeWarning giving the count) when ``clip``, else a ValueError;
    NaN always raises. With ``return_clipped`` the number of clipped values is returned too.
    """
    if isinstance(levels, bool) or not isinstance(levels, (int, np.integer)) or levels < 1:
        raise ValueError(f"levels must be an integer >= 1, got {levels!r}")
    arr = np.asarray(values, dtype=float)
    nan = np.isnan(arr)
    if nan.any():
        raise ValueError(f"values contain {int(nan.sum())} NaN")
    out_of_bounds = (arr < bounds.lower) | (arr > bounds.upper)
    n_out = int(out_of_bounds.sum())
    if n_out:
        if not clip:
            first = float(arr[out_of_bounds].flat[0])
            raise ValueError(
                f"{n_out} values outside [{bounds.lower}, {bounds.upper}] (first: {first!r}); pass clip=True to clip"
            )
        warnings.warn(f"clipped {n_out} values to [{bounds.lower}, {bounds.upper}]", RuntimeWarning, stacklevel=2)
        arr = np.clip(arr, bounds.lower, bounds.upper)
    scaled = (arr - bounds.lower) / (bounds.upper - bounds.lower) * levels
    codes = np.clip(np.floor(scaled + 0.5), 0, levels).astype(np.int64)
    return (codes, n_out) if return_clipped else codes


def bounds_from_data(values: np.ndarray) -> Bounds:
    """Bounds from the data's min/max. LEAKS min and max of the column: use only as an explicit, audited choice."""
    arr = np.asarray(values, dtype=float)
    if arr.size == 0 or np.isnan(arr).all():
        raise ValueError("bounds_from_data needs at least one non-NaN value")
    return Bounds(float(np.nanmin(arr)), float(np.nanmax(arr)))
