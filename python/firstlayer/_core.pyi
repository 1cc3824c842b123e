"""The compiled core (Rust). Private: use the functions of the ``firstlayer`` package."""

import os
from collections.abc import Sequence
from typing import Literal, TypedDict, overload

import numpy as np
import numpy.typing as npt

__all__ = [
    "decode_images",
    "dft2",
    "extract_patches",
    "image_power_sum",
    "num_threads",
    "patch_moments",
    "__version__",
]

__version__: str

# The image dtypes the kernels take (C-contiguous, 4-D: (N, C, H, W) or (N, H, W, C)).
_Images = npt.NDArray[np.uint8] | npt.NDArray[np.float32] | npt.NDArray[np.float64]

class ExactMoments(TypedDict):
    """Raw patch moments of a uint8 batch: integer sums, exact whatever the order of work."""

    count: int
    exact: Literal[True]
    sum: npt.NDArray[np.uint64]  # (p,), p = C * k * k in (c, i, j) order
    second_moment: npt.NDArray[np.uint64]  # (p, p), symmetric
    class_counts: npt.NDArray[np.uint64]  # (n_classes,); (0,) without labels
    class_sums: npt.NDArray[np.uint64]  # (n_classes, p); (0, p) without labels

class FloatMoments(TypedDict):
    """Raw patch moments of a float32/float64 batch, taken about ``shift`` when given."""

    count: int
    exact: Literal[False]
    sum: npt.NDArray[np.float64]  # (p,), p = C * k * k in (c, i, j) order
    second_moment: npt.NDArray[np.float64]  # (p, p), symmetric
    class_counts: npt.NDArray[np.uint64]  # (n_classes,); (0,) without labels
    class_sums: npt.NDArray[np.float64]  # (n_classes, p); (0, p) without labels

@overload
def patch_moments(
    x: npt.NDArray[np.uint8],
    *,
    layout: str,
    kernel_size: int,
    stride: int = 1,
    padding: int = 0,
    labels: npt.NDArray[np.int64] | None = None,
    n_classes: int = 0,
    method: str = "auto",
    shift: Sequence[float] | None = None,
) -> ExactMoments:
    """Raw moments of every patch of a uint8 batch (``shift`` must be None or empty)."""

@overload
def patch_moments(
    x: npt.NDArray[np.float32] | npt.NDArray[np.float64],
    *,
    layout: str,
    kernel_size: int,
    stride: int = 1,
    padding: int = 0,
    labels: npt.NDArray[np.int64] | None = None,
    n_classes: int = 0,
    method: str = "auto",
    shift: Sequence[float] | None = None,
) -> FloatMoments:
    """Raw moments of every patch of a float batch, about ``shift`` (one value per channel)."""

def dft2(x: npt.NDArray[np.float64]) -> npt.NDArray[np.complex128]:
    """2D DFT of each plane of a C-contiguous (B, H, W) float64 array."""

def image_power_sum(x: _Images, *, layout: str) -> npt.NDArray[np.float64]:
    """Sum over images of |DFT2(x_c)|^2 per channel, shape (C, H, W)."""

def extract_patches(
    x: _Images,
    out: _Images,
    *,
    layout: str,
    kernel_size: int,
    stride: int = 1,
    padding: int = 0,
    plan: str = "all",
    max_patches: int = 0,
    seed: int = 0,
    start: int = 0,
    end: int | None = None,
    image_offset: int = 0,
    positions: npt.NDArray[np.int64] | None = None,
) -> None:
    """Write patches of ``x`` into ``out`` ((rows, C*k*k), dtype of ``x``), in place."""

def num_threads() -> int:
    """Threads of the global pool (RAYON_NUM_THREADS, else the number of cores)."""

def decode_images(
    paths: Sequence[str | os.PathLike[str]],
    *,
    grayscale: bool = False,
    resize: int | tuple[int, int] | None = None,
    center_crop: tuple[int, int] | None = None,
    threads: int = 0,
) -> list[npt.NDArray[np.uint8] | str]:
    """Decode PNG/JPEG/BMP files in parallel: (H, W, 3) or (H, W) uint8 arrays, or reasons."""
