"""Turning what users pass (numpy arrays, torch tensors) into what the Rust core reads.

The core reads C-contiguous ``uint8``/``float32``/``float64`` batches in place. A contiguous
array is never copied. Any other view (Fortran order, negative strides, a slice, a torch
``permute``/``expand``) is accepted and copied a few images at a time (:func:`contiguous_chunks`),
so the memory added stays bounded (:data:`COPY_CHUNK_BYTES`) however large the view.
"""

from __future__ import annotations

from typing import Any

import numpy as np

SUPPORTED_DTYPES = (np.dtype(np.uint8), np.dtype(np.float32), np.dtype(np.float64))
#: Most bytes one chunk copy of a non-contiguous batch takes (at least one image).
COPY_CHUNK_BYTES = 32 << 20
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
        layout = str(getattr(x, "layout", "torch.strided"))
        if layout != "torch.strided":
            msg = f"{name}: expected a dense tensor, got layout {layout}; call {name}.to_dense()"
            raise TypeError(msg)
        if str(x.dtype) == "torch.bfloat16":
            msg = (
                f"{name}: expected dtype uint8, float32 or float64, got torch.bfloat16 (numpy has "
                f"no bfloat16); convert with {name}.float()"
            )
            raise TypeError(msg)
        return x.detach().resolve_conj().resolve_neg().numpy()
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
        if layout is not None:
            msg = (
                f"{name}: layout={layout!r} describes a 4-D batch, got a 3-D array of shape "
                f"{arr.shape}, which is read as (N, H, W) one-channel images; pass layout=None "
                f"for that, or a 4-D batch ({name}[:, None] or {name}[..., None])"
            )
            raise ValueError(msg)
        arr = arr[:, None]  # a view, whatever the strides
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
    return arr, infer_layout(arr.shape, layout, from_torch, name)


def image_chunk(arr: np.ndarray, multiple: int = 1) -> int:
    """Images per chunk copy of ``arr``: at most :data:`COPY_CHUNK_BYTES`, a multiple of
    ``multiple`` (at least ``multiple``)."""
    per_image = max(1, arr[:1].nbytes)
    n = max(1, COPY_CHUNK_BYTES // per_image)
    return max(multiple, n // multiple * multiple)


def contiguous_chunks(arr: np.ndarray, chunk: int) -> Any:
    """``(start, C-contiguous copy)`` of ``arr[start:start + chunk]`` for each chunk, in order
    (one chunk, ``arr`` itself, when it is already contiguous)."""
    if arr.flags.c_contiguous:
        yield 0, arr
        return
    for i in range(0, arr.shape[0], chunk):
        yield i, np.ascontiguousarray(arr[i : i + chunk])


def as_contiguous(arr: np.ndarray) -> np.ndarray:
    """``arr`` as C-contiguous (one copy when it is not)."""
    return arr if arr.flags.c_contiguous else np.ascontiguousarray(arr)


def as_labels(labels: Any, n: int) -> np.ndarray:
    """Integer labels, one per image, as a contiguous int64 array."""
    arr = np.asarray(as_numpy(labels, "labels") if is_torch_tensor(labels) else labels)
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        msg = f"labels: expected integers, got dtype {arr.dtype}"
        raise TypeError(msg)
    if arr.shape != (n,):
        msg = f"labels: expected shape ({n},) (one label per image), got {arr.shape}"
        raise ValueError(msg)
    if arr.dtype.kind == "u" and n and int(arr.max()) > np.iinfo(np.int64).max:
        msg = f"labels: expected class indices, got {int(arr.max())} (beyond int64)"
        raise ValueError(msg)
    if n and arr.min() < 0:
        msg = f"labels: expected non-negative integers, got {int(arr.min())}"
        raise ValueError(msg)
    return np.ascontiguousarray(arr, dtype=np.int64)
