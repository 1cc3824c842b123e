"""Small numeric helpers many modules use: one definition each."""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def pearson(a: Any, b: Any) -> float:
    """Pearson correlation of two equal-length vectors, in float64; 0.0 if either is constant.

    NaN or infinity in either input gives NaN, never a number that looks like a result.
    """
    x = np.asarray(a, dtype=np.float64).ravel()
    y = np.asarray(b, dtype=np.float64).ravel()
    if x.size != y.size:
        msg = f"b: expected a vector of length {x.size} like a, got length {y.size}"
        raise ValueError(msg)
    x, y = x - x.mean(), y - y.mean()
    den = float(np.sqrt((x @ x) * (y @ y)))
    if not math.isfinite(den):
        return math.nan
    return float(x @ y) / den if den > 0 else 0.0
