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

#: Largest kernel patch statistics take: 32 covers every patch embedding in use (CLIP ViT-B/32).
#: Sums stay exact at any size (``u32`` only within bounded column sums, ``u64`` past them); what
#: grows is memory: the ``(C k^2)^2`` second moment is 75 MB in ``uint64`` for ``3 x 32 x 32``.
MAX_STATS_KERNEL_SIZE = 32
#: Largest kernel patch extraction takes.
MAX_EXTRACT_KERNEL_SIZE = 64


#: Largest window stride (every entry point): far beyond any image, far below the core's 64 bits.
MAX_STRIDE = 2**31
#: Largest working memory one call may size from what a user chose (class sums, decoded image
#: sizes): checked before anything is allocated, so no input can make an allocation fail inside
#: the Rust core, which would abort the interpreter instead of raising.
MAX_WORK_BYTES = 2**31
#: Largest image, in pixels, the decoders produce or accept from a header (the Rust decoder's
#: ``MAX_PIXELS``): 402 MB of RGB.
MAX_IMAGE_PIXELS = 2**27


def check_nbytes(name: str, nbytes: int, what: str, limit: int = MAX_WORK_BYTES) -> int:
    """``nbytes`` when at most ``limit``, else a ``ValueError`` naming ``name`` and the size.

    The one place where sizes derived from user input (a class count, a resize) are checked
    before the allocation they would cause.
    """
    if nbytes > limit:
        msg = (
            f"{name}: {what} would need {nbytes / 2**30:.1f} GiB ({nbytes:,} bytes), above the "
            f"limit of {limit / 2**30:.0f} GiB"
        )
        raise ValueError(msg)
    return nbytes


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


def check_finite(name: str, arr: Any) -> Any:
    """``arr`` when every value is finite, else a ``ValueError`` naming ``name`` and the first
    NaN or infinity (a NaN would make correlations NaN and "fit" anything)."""
    a = np.asarray(arr)
    if a.dtype.kind in "fc" and not np.all(np.isfinite(a)):
        bad = np.flatnonzero(~np.isfinite(a.ravel()))
        msg = (
            f"{name}: expected finite values, got {a.ravel()[bad[0]]} at flat index {bad[0]} "
            f"({bad.size} of {a.size} values are NaN or infinite)"
        )
        raise ValueError(msg)
    return arr


def check_choice(name: str, value: Any, choices: Sequence[str]) -> str:
    """``value`` if it is one of ``choices``."""
    if not isinstance(value, str):
        raise type_error(name, f"one of {', '.join(choices)}", value)
    if value not in choices:
        msg = f"{name}: expected one of {', '.join(choices)}, got {value!r}"
        raise ValueError(msg)
    return value
