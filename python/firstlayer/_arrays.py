"""Turning what users pass (numpy arrays, torch tensors) into what the Rust core reads.

The core reads C-contiguous ``uint8``/``float32``/``float64`` batches in place. Nothing here
copies image data: a wrong dtype or a non-contiguous array is an error that says how to fix it,
because a silent copy of a large dataset is exactly what users come to this package to avoid.
"""

from __future__ import annotations

from typing import Any

import numpy as np

SUPPORTED_DTYPES = (np.dtype(np.uint8), np.dtype(np.float32), np.dtype(np.float64))
_CHANNEL_SIZES = (1, 3, 4)


def is_torch_tensor(x: object) -> bool:
    """True for a ``torch.Tensor``, without importing torch."""
    return type(x).__module__.startswith("torch") and hasattr(x, "detach")


def as_numpy(x: Any, name: str = "x") -> np.ndarray:
    """A numpy view of an array or a CPU tensor (no copy)."""
    if is_torch_tensor(x):
        if x.device.type != "cpu":
            msg = f"{name}: expected a CPU tensor, got one on {x.device}; call {name}.cpu() first"
            raise ValueError(msg)
        return x.detach().numpy()
    if isinstance(x, np.ndarray):
        return x
    msg = f"{name}: expected a numpy array or a torch tensor, got {type(x).__name__}"
    raise TypeError(msg)


def infer_layout(shape: tuple[int, ...], layout: str | None, from_torch: bool, name: str) -> str:
    """The layout of a 4-D batch: explicit, else inferred by the documented rule.

    Rule when ``layout`` is None: torch tensors are NCHW. For numpy arrays, the channel axis is
    the one of axis 1 and axis 3 whose size is 1, 3 or 4 when the other's is not; when both or
    neither qualify (e.g. ``(N, 3, 4, 3)``) the layout must be given.
    """
    if layout is not None:
        up = str(layout).upper()
        if up not in ("NCHW", "NHWC"):
            msg = f"layout: expected 'NCHW', 'NHWC' or None, got {layout!r}"
            raise ValueError(msg)
        return up
    if from_torch:
        return "NCHW"
    first, last = shape[1] in _CHANNEL_SIZES, shape[3] in _CHANNEL_SIZES
    if first and not last:
        return "NCHW"
    if last and not first:
        return "NHWC"
    msg = (
        f"{name}: cannot tell the channel axis of shape {shape}; pass layout='NCHW' or "
        "layout='NHWC'"
    )
    raise ValueError(msg)


def as_batch(x: Any, layout: str | None = None, name: str = "x") -> tuple[np.ndarray, str]:
    """Validate an image batch and return it as a 4-D numpy view with its layout.

    Accepts ``(N, C, H, W)`` / ``(N, H, W, C)`` or ``(N, H, W)`` (one channel).
    """
    from_torch = is_torch_tensor(x)
    arr = as_numpy(x, name)
    if arr.dtype not in SUPPORTED_DTYPES:
        msg = (
            f"{name}: expected dtype uint8, float32 or float64, got {arr.dtype}; "
            f"convert with {name}.astype(np.float32) (or np.uint8 for 0-255 images)"
        )
        raise TypeError(msg)
    if arr.ndim == 3:
        arr = arr.reshape(arr.shape[0], 1, *arr.shape[1:])  # a view when contiguous
        layout = "NCHW"
    if arr.ndim != 4:
        msg = (
            f"{name}: expected shape (N, C, H, W), (N, H, W, C) or (N, H, W), "
            f"got {arr.ndim}-D shape {arr.shape}"
        )
        raise ValueError(msg)
    if arr.shape[0] == 0 or 0 in arr.shape:
        msg = f"{name}: expected at least one non-empty image, got shape {arr.shape}"
        raise ValueError(msg)
    if not arr.flags.c_contiguous:
        msg = (
            f"{name}: expected a C-contiguous array, got strides {arr.strides}; "
            f"pass np.ascontiguousarray({name}) (one copy)"
        )
        raise ValueError(msg)
    return arr, infer_layout(arr.shape, layout, from_torch, name)


def as_labels(labels: Any, n: int) -> np.ndarray:
    """Integer labels, one per image, as a contiguous int64 array."""
    arr = np.asarray(as_numpy(labels, "labels") if is_torch_tensor(labels) else labels)
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        msg = f"labels: expected integers, got dtype {arr.dtype}"
        raise TypeError(msg)
    if arr.shape != (n,):
        msg = f"labels: expected shape ({n},) (one label per image), got {arr.shape}"
        raise ValueError(msg)
    if n and arr.min() < 0:
        msg = f"labels: expected non-negative integers, got {int(arr.min())}"
        raise ValueError(msg)
    return np.ascontiguousarray(arr, dtype=np.int64)
