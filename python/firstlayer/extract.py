"""The patches themselves: every one, strided, or a uniform sample, in conv-weight order.

:func:`extract_patches` turns a batch of images into a ``(n_patches, C*k*k)`` array whose rows are
flattened in the order ``(c, i, j)``: the order of ``conv.weight.flatten(1)`` and of
``torch.nn.functional.unfold``. The Rust core writes the rows in parallel, straight into the
output array (yours, with ``out=``). Samples come from a seeded generator (Vitter's sequential
sampling for sparse samples, the smallest hashed keys for dense ones), so the result depends on
the seed only, never on the number of threads.

:func:`iter_patches` streams the patches of any source (:func:`firstlayer.sources.open_source`)
in chunks of ``batch_patches`` rows, optionally sampled per image: memory stays bounded by one
chunk plus one source batch, however large the dataset.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import numpy as np

from firstlayer import _core
from firstlayer._arrays import as_batch, as_contiguous, as_numpy, is_torch_tensor
from firstlayer._validate import MAX_EXTRACT_KERNEL_SIZE, MAX_STRIDE, check_int, check_nbytes
from firstlayer.sources import Source, open_source

_U64_MAX = (1 << 64) - 1

__all__ = ["extract_patches", "iter_patches", "patch_grid"]


def _seed(seed: Any) -> int:
    if seed is None:
        return secrets.randbits(64)
    return check_int("seed", seed, 0, _U64_MAX)


def _window(kernel_size: Any, stride: Any, padding: Any) -> tuple[int, int, int]:
    k = check_int("kernel_size", kernel_size, 1, MAX_EXTRACT_KERNEL_SIZE)
    s = check_int("stride", stride, 1, MAX_STRIDE)
    p = check_int("padding", padding, 0, k - 1)
    return k, s, p


def patch_grid(
    shape: tuple[int, ...], layout: str, kernel_size: int, stride: int = 1, padding: int = 0
) -> tuple[int, int, int]:
    """``(C, ho, wo)``: channels and window positions per column and row of a 4-D batch shape."""
    k, s, p = _window(kernel_size, stride, padding)
    if layout == "NCHW":
        c, h, w = shape[1], shape[2], shape[3]
    else:
        c, h, w = shape[3], shape[1], shape[2]
    if h + 2 * p < k or w + 2 * p < k:
        msg = (
            f"x: expected images of at least {k}x{k} pixels after padding (kernel_size={k}, "
            f"padding={p}), got {h}x{w}"
        )
        raise ValueError(msg)
    return c, (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1


def _check_out(out: Any, x: np.ndarray, rows: int, p: int) -> np.ndarray:
    arr = as_numpy(out, "out")
    if arr.dtype != x.dtype:
        msg = f"out: expected dtype {x.dtype} (the dtype of x), got {arr.dtype}"
        raise TypeError(msg)
    if arr.shape != (rows, p):
        msg = f"out: expected shape ({rows}, {p}) (n_patches, C*k*k), got {arr.shape}"
        raise ValueError(msg)
    if not arr.flags.c_contiguous:
        msg = f"out: expected a C-contiguous array, got strides {arr.strides}"
        raise ValueError(msg)
    if not arr.flags.writeable:
        msg = "out: expected a writeable array, got a read-only one"
        raise ValueError(msg)
    if np.may_share_memory(arr, x):
        msg = "out: expected an array that shares no memory with x, got one that overlaps x"
        raise ValueError(msg)
    return arr


def extract_patches(
    x: Any,
    kernel_size: int = 3,
    *,
    stride: int = 1,
    padding: int = 0,
    max_patches: int | None = None,
    seed: int | None = None,
    out: Any = None,
    return_positions: bool = False,
    layout: str | None = None,
) -> Any:
    """Patches of a batch of images, as rows of ``C*k*k`` values in ``(c, i, j)`` order.

    Parameters
    ----------
    x : numpy.ndarray or torch.Tensor
        ``uint8``, ``float32`` or ``float64`` batch, ``(N, C, H, W)``, ``(N, H, W, C)`` or
        ``(N, H, W)``, read in place when C-contiguous (any other view is copied once); a
        tensor must be on the CPU.
    kernel_size : int
        Side ``k`` of the square window, in ``[1, 64]`` (default 3).
    stride, padding : int
        Step between windows, and zeros added on each side (``padding < kernel_size``), as in
        ``torch.nn.Conv2d``.
    max_patches : int, optional
        Draw this many distinct window positions, uniformly over all ``(image, i, j)`` of the
        batch (without replacement), instead of taking every one. Rows come in increasing
        ``(image, i, j)`` order.
    seed : int, optional
        Seed of the sample, in ``[0, 2**64)``: the same seed gives the same bits on any machine
        and for any number of threads. ``None`` draws a fresh one.
    out : numpy.ndarray or torch.Tensor, optional
        C-contiguous ``(n_patches, C*k*k)`` array of the dtype of ``x``, written in place (a CPU
        tensor is written through ``Tensor.numpy()``, with no copy) and returned. It must not
        share memory with ``x``.
    return_positions : bool
        Also return the ``(n_patches, 3)`` ``int64`` array of ``(image, i, j)``, ``(i, j)`` being
        the window's row and column index (its top-left pixel is at ``(i*stride - padding,
        j*stride - padding)``).
    layout : {"NCHW", "NHWC"}, optional
        See :func:`firstlayer.patch_stats`; tensors are NCHW.

    Returns
    -------
    patches : numpy.ndarray or torch.Tensor
        ``(n_patches, C*k*k)``, the dtype of ``x``: ``out`` when given, a tensor when ``x`` is
        one. Without ``max_patches``, ``n_patches = N * ho * wo`` with
        ``ho = (H + 2*padding - k) // stride + 1`` (likewise ``wo``).
    positions : numpy.ndarray or torch.Tensor
        Only with ``return_positions=True``.

    Examples
    --------
    >>> import numpy as np, firstlayer
    >>> x = np.arange(2 * 3 * 5 * 5, dtype=np.uint8).reshape(2, 3, 5, 5)
    >>> firstlayer.extract_patches(x, 3).shape
    (18, 27)
    >>> p, pos = firstlayer.extract_patches(x, 3, max_patches=4, seed=0, return_positions=True)
    >>> rows = (pos[:, 0] * 3 + pos[:, 1]) * 3 + pos[:, 2]
    >>> bool((p == firstlayer.extract_patches(x, 3)[rows]).all())
    True
    """
    from_torch = is_torch_tensor(x)
    arr, lay = as_batch(x, layout)
    arr = as_contiguous(arr)  # views: one copy (patches are copies anyway)
    k, s, pad = _window(kernel_size, stride, padding)
    c, ho, wo = patch_grid(arr.shape, lay, k, s, pad)
    n = arr.shape[0]
    total = n * ho * wo
    p = c * k * k
    if max_patches is None:
        rows, plan, sample_seed = total, "all", 0
        if seed is not None:
            _seed(seed)  # validated, unused: every position is taken
    else:
        rows = check_int("max_patches", max_patches, 0)
        if rows > total:
            msg = (
                f"max_patches: expected at most the number of patch positions, {total} "
                f"({n} images x {ho} x {wo}), got {rows}"
            )
            raise ValueError(msg)
        plan, sample_seed = "sample", _seed(seed)
    if out is None:  # sized by the arguments: checked here, before numpy is asked for it
        check_nbytes(
            "max_patches",
            rows * (p * arr.dtype.itemsize + 24 * return_positions),
            f"{rows:,} patches of {p} values (pass max_patches=, out=, or use iter_patches)",
        )
    result = np.empty((rows, p), dtype=arr.dtype) if out is None else _check_out(out, arr, rows, p)
    positions = np.empty((rows, 3), dtype=np.int64) if return_positions else None
    _core.extract_patches(
        arr,
        result,
        layout=lay,
        kernel_size=k,
        stride=s,
        padding=pad,
        plan=plan,
        max_patches=rows,
        seed=sample_seed,
        positions=positions,
    )
    patches: Any = out if out is not None else result
    if from_torch and out is None:
        import torch

        patches = torch.from_numpy(result)
        if positions is not None:
            return patches, torch.from_numpy(positions)
    if positions is not None:
        return patches, positions
    return patches


def iter_patches(
    source: Any,
    kernel_size: int = 3,
    *,
    stride: int = 1,
    padding: int = 0,
    batch_patches: int = 65536,
    max_patches_per_image: int | None = None,
    seed: int | None = None,
    return_positions: bool = False,
    layout: str | None = None,
    batch_size: int = 256,
    **source_options: Any,
) -> Iterator[Any]:
    """Stream the patches of a source in chunks of ``batch_patches`` rows.

    Parameters
    ----------
    source
        Anything :func:`firstlayer.sources.open_source` accepts (a dataset name, a folder, a
        file, an array, a torch dataset, an iterable of batches, a ``Source``).
    kernel_size, stride, padding
        As in :func:`extract_patches`.
    batch_patches : int
        Rows per chunk; every chunk but the last has exactly this many (a change of the number
        of channels or of the dtype between images also ends a chunk).
    max_patches_per_image : int, optional
        Take ``min(max_patches_per_image, ho * wo)`` distinct positions of each image, drawn
        uniformly without replacement, instead of every position. Image number ``g`` of the
        source draws from its own stream of ``(seed, g)``, so the chunks do not depend on
        ``batch_size``, ``batch_patches`` or the number of threads.
    seed : int, optional
        ``None`` draws a fresh one.
    return_positions : bool
        Yield ``(patches, positions)``, positions being ``(rows, 3)`` ``int64``
        ``(image, i, j)`` with ``image`` counted over the whole source.
    layout : {"NCHW", "NHWC"}, optional
        For arrays whose layout is ambiguous.
    batch_size : int
        Images read from the source at a time.
    **source_options
        Passed to :func:`~firstlayer.sources.open_source` (``root``, ``resize``, ...).

    Yields
    ------
    patches : numpy.ndarray
        ``(rows, C*k*k)``, the dtype of the source's images, a new array each time (the
        generator keeps no reference to it).
    """
    k, s, pad = _window(kernel_size, stride, padding)
    chunk = check_int("batch_patches", batch_patches, 1)
    per = (
        None
        if max_patches_per_image is None
        else check_int("max_patches_per_image", max_patches_per_image, 1)
    )
    check_int("batch_size", batch_size, 1)
    sample_seed = _seed(seed) if per is not None else 0
    opened = not isinstance(source, Source)
    src = open_source(source, layout=layout, **source_options) if opened else source  # type: ignore[arg-type]
    buf: np.ndarray | None = None
    pbuf: np.ndarray | None = None
    fill = 0
    seen = 0

    def flush() -> Any:
        assert buf is not None
        if pbuf is not None:
            return buf[:fill], pbuf[:fill]
        return buf[:fill]

    try:
        for step in src.steps(0, batch_size):
            for part in step.parts:
                arr, lay = as_batch(part.images, part.layout or layout, name="source images")
                arr = as_contiguous(arr)  # views: one copy (patches are copies anyway)
                c, ho, wo = patch_grid(arr.shape, lay, k, s, pad)
                n, p = arr.shape[0], c * k * k
                rows_per_image = ho * wo if per is None else min(per, ho * wo)
                rows = n * rows_per_image
                if buf is not None and (buf.dtype != arr.dtype or buf.shape[1] != p):
                    if fill:
                        yield flush()
                    buf, pbuf = None, None
                done = 0
                while done < rows:
                    if buf is None:
                        buf = np.empty((chunk, p), dtype=arr.dtype)
                        pbuf = np.empty((chunk, 3), dtype=np.int64) if return_positions else None
                        fill = 0
                    take = min(rows - done, chunk - fill)
                    _core.extract_patches(
                        arr,
                        buf[fill : fill + take],
                        layout=lay,
                        kernel_size=k,
                        stride=s,
                        padding=pad,
                        plan="all" if per is None else "per_image",
                        max_patches=0 if per is None else per,
                        seed=sample_seed,
                        start=done,
                        end=done + take,
                        image_offset=seen,
                        positions=None if pbuf is None else pbuf[fill : fill + take],
                    )
                    fill += take
                    done += take
                    if fill == chunk:
                        yield flush()
                        buf, pbuf, fill = None, None, 0
                seen += n
        if buf is not None and fill:
            yield flush()
    finally:
        if opened:
            src.close()
