"""The image and label inputs of the simulation and of the label check, validated one way."""

from __future__ import annotations

from typing import Any

import numpy as np

from firstlayer._arrays import as_numpy
from firstlayer.profile import _as_float64


def images_nchw(images: Any) -> np.ndarray:
    """(N, C, H, W) view of NCHW, NHWC or (N, H, W) images; channels are 1 or 3 (or 4)."""
    x = as_numpy(images, "images")
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4:
        msg = f"images: expected shape (N, C, H, W), (N, H, W, C) or (N, H, W), got {x.shape}"
        raise ValueError(msg)
    if x.shape[1] not in (1, 3, 4) and x.shape[-1] in (1, 3, 4):
        x = x.transpose(0, 3, 1, 2)
    return x


def unit_float64(x: np.ndarray) -> np.ndarray:
    """A float64 copy of images; uint8 is scaled by 1/255."""
    return x.astype(np.float64) / 255.0 if x.dtype == np.uint8 else x.astype(np.float64)


def labels_for(labels: Any, n: int) -> np.ndarray:
    """(n,) int64 labels, one per image."""
    y = _as_float64(labels, "labels").astype(np.int64).ravel()
    if y.size != n:
        msg = f"labels: expected {n} labels, one per image, got {y.size}"
        raise ValueError(msg)
    return y
