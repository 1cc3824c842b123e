"""Argument checks shared by every public entry point, and the limits they enforce.

Messages follow one pattern: ``"<name>: expected <what>, got <value>"``; a wrong type is a
``TypeError``, a wrong value a ``ValueError``. Booleans are refused where integers are expected
(``True`` is an ``int`` to Python, never a kernel size to a user).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

#: Largest kernel the exact patch-statistics core takes (its u32 per-image sums bound it).
MAX_STATS_KERNEL_SIZE = 15
#: Largest kernel patch extraction takes.
MAX_EXTRACT_KERNEL_SIZE = 64


def type_error(name: str, expected: str, got: Any) -> TypeError:
    """The ``TypeError`` for argument ``name``: what was expected, what came and its type."""
    return TypeError(f"{name}: expected {expected}, got {got!r} ({type(got).__name__})")


def check_int(name: str, value: Any, lo: int, hi: int | None = None) -> int:
    """``value`` as an int in ``[lo, hi]``, or a TypeError/ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        msg = f"{name}: expected an integer, got {type(value).__name__} {value!r}"
        raise TypeError(msg)
    if value < lo or (hi is not None and value > hi):
        rng = f"in [{lo}, {hi}]" if hi is not None else f">= {lo}"
        msg = f"{name}: expected an integer {rng}, got {value}"
        raise ValueError(msg)
    return int(value)


def check_optional_int(name: str, value: Any, lo: int, hi: int | None = None) -> int | None:
    """``None``, or :func:`check_int` of ``value``."""
    return None if value is None else check_int(name, value, lo, hi)


def check_int_list(name: str, value: Any, lo: int) -> list[int]:
    """A list of integers ``>= lo``, sorted and without repeats."""
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise type_error(name, "a list of integers", value)
    for x in value:
        check_int(f"{name} entries", x, lo)
    return sorted({int(x) for x in value})


def check_float(
    name: str, value: Any, lo: float = -math.inf, hi: float = math.inf, *, open_low: bool = False
) -> float:
    """``value`` as a finite float in ``[lo, hi]`` (``(lo, hi]`` with ``open_low``)."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise type_error(name, "a number", value)
    v = float(value)
    if not (math.isfinite(v) and (v > lo if open_low else v >= lo) and v <= hi):
        low = f"> {lo}" if open_low else f">= {lo}"
        rng = low if hi == math.inf else f"{low} and <= {hi}"
        rng = "" if lo == -math.inf and hi == math.inf else f" {rng}"
        msg = f"{name}: expected a finite number{rng}, got {value}"
        raise ValueError(msg)
    return v


def check_choice(name: str, value: Any, choices: Sequence[str]) -> str:
    """``value`` if it is one of ``choices``."""
    if not isinstance(value, str):
        raise type_error(name, f"one of {', '.join(choices)}", value)
    if value not in choices:
        msg = f"{name}: expected one of {', '.join(choices)}, got {value!r}"
        raise ValueError(msg)
    return value
