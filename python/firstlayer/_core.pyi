"""The compiled core (Rust). Private: use the functions of the ``firstlayer`` package."""

from typing import Any

import numpy as np
import numpy.typing as npt

__version__: str

def patch_moments(
    x: npt.NDArray[Any],
    *,
    layout: str,
    kernel_size: int,
    stride: int = 1,
    padding: int = 0,
    labels: npt.NDArray[np.int64] | None = None,
    n_classes: int = 0,
    method: str = "auto",
) -> dict[str, Any]:
    """Raw moments (count, sum, second_moment, class_counts, class_sums, exact) of a batch."""

def dft2(x: npt.NDArray[np.float64]) -> npt.NDArray[np.complex128]:
    """2D DFT of each plane of a C-contiguous (B, H, W) float64 array."""

def image_power_sum(x: npt.NDArray[Any], *, layout: str) -> npt.NDArray[np.float64]:
    """Sum over images of |DFT2(x_c)|^2 per channel, shape (C, H, W)."""

def num_threads() -> int:
    """Threads of the global pool (RAYON_NUM_THREADS, else the number of cores)."""

def decode_images(
    paths: list[str],
    *,
    grayscale: bool = False,
    resize: int | tuple[int, int] | None = None,
    center_crop: tuple[int, int] | None = None,
    threads: int = 0,
) -> list[npt.NDArray[np.uint8] | str]:
    """Decode PNG/JPEG/BMP files in parallel: (H, W, 3) or (H, W) uint8 arrays, or reasons."""

def extract_patches(
    x: npt.NDArray[Any],
    out: npt.NDArray[Any],
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
    """Write patches of a batch into `out` (rows of C*k*k in (c, i, j) order), in place."""
