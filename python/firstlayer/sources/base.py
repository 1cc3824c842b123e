"""What every source yields, the :class:`Source` protocol, and the array-backed sources.

A source yields :class:`Step` s: one or a few :class:`Part` s (C-contiguous image arrays of one
shape, with their labels) and the number of source items they account for. Steps start at
multiples of ``batch_size`` (within each file of a multi-file source), so a resumed run sees
exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from firstlayer._arrays import as_numpy, is_torch_tensor

__all__ = ["ArraySource", "ChainSource", "Layout", "OnError", "Part", "Source", "Step"]

Layout = Literal["NCHW", "NHWC"]
OnError = Literal["raise", "skip"]

LAYOUTS = ("NCHW", "NHWC")
_FLOAT_DTYPES = (np.float32, np.float64)


@dataclass
class Part:
    """One array of images that share a shape, ready for ``PatchStats.update``.

    Attributes
    ----------
    images : numpy.ndarray
        C-contiguous ``uint8``, ``float32`` or ``float64``, 4-D.
    layout : {"NCHW", "NHWC"} or None
        ``None`` only for user arrays whose layout the user left to inference.
    labels : numpy.ndarray or None
        ``int64``, one per image.
    """

    images: np.ndarray
    layout: Layout | None
    labels: np.ndarray | None = None


@dataclass
class Step:
    """What a source yields: some images, and how many source items they stand for.

    Attributes
    ----------
    parts : list of Part
        Usually one; images of different sizes come in separate parts.
    consumed : int
        Source items this step covers, skipped ones included.
    skipped : list of (str, str)
        ``(path or item, reason)`` of the items that could not be read.
    """

    parts: list[Part]
    consumed: int
    skipped: list[tuple[str, str]] = field(default_factory=list)


class Source:
    """Base class of all sources.

    Attributes
    ----------
    name : str
        Human-readable, used in the progress line and in messages.
    total : int or None
        Number of items, when known in advance.
    has_labels : bool or None
        Whether the steps carry labels; ``None`` when only the first batch will tell.
    n_classes : int or None
        Number of classes, when known.
    class_names : list of str or None
    """

    name: str = "source"
    total: int | None = None
    has_labels: bool | None = False
    n_classes: int | None = None
    class_names: list[str] | None = None
    #: Smallest image side the consumer can use (the window less the padding): sources of
    #: files report smaller images as unreadable items, with their path.
    min_side: int = 1

    def fingerprint(self) -> str:
        """A string that changes when the source's content or order changes."""
        return f"{type(self).__name__}:{self.name}:{self.total}"

    def steps(self, start: int = 0, batch_size: int = 256) -> Iterator[Step]:
        """Yield the steps from item ``start`` on (``start`` must be a step boundary)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release threads and files."""


# -- batches and labels -----------------------------------------------------------------------


def as_pixels(x: Any, what: str) -> np.ndarray:
    """A C-contiguous numpy batch of an allowed dtype, from a numpy array or a tensor.

    Tensors are detached and moved to the CPU. Half-precision floats (``float16``,
    ``bfloat16``) are widened to ``float64``, which is exact; other dtypes are refused.
    """
    if is_torch_tensor(x):
        x = x.detach()
        if x.device.type != "cpu":
            x = x.cpu()
        if x.dtype.is_floating_point and x.element_size() < 4:
            x = x.double()  # numpy has no bfloat16
        x = as_numpy(x, what)
    arr = np.asarray(x)
    if arr.dtype == np.float16:
        arr = arr.astype(np.float64)
    if arr.dtype != np.uint8 and arr.dtype not in _FLOAT_DTYPES:
        raise TypeError(
            f"{what} must hold uint8, float32 or float64 pixels, got dtype {arr.dtype} "
            f"(shape {arr.shape})"
        )
    return np.ascontiguousarray(arr)


def labels_array(y: Any, n: int, what: str) -> np.ndarray:
    """``n`` integer class labels as ``int64`` (a scalar counts as one label)."""
    if is_torch_tensor(y):
        y = as_numpy(y.detach().cpu(), what)
    arr = np.asarray(y)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.shape != (n,) or (arr.size and arr.dtype.kind not in "iu"):
        raise ValueError(
            f"{what} must be {n} integer class labels, got shape {arr.shape} dtype {arr.dtype}"
        )
    return arr.astype(np.int64)


def four_d(arr: np.ndarray, layout: Layout | None, what: str) -> tuple[np.ndarray, Layout | None]:
    """A 4-D batch: ``(N, H, W)`` grayscale becomes ``(N, 1, H, W)``."""
    if arr.ndim == 3:
        return arr.reshape(arr.shape[0], 1, *arr.shape[1:]), "NCHW"
    if arr.ndim != 4:
        raise ValueError(
            f"{what} must be 4-D (N,C,H,W or N,H,W,C) or 3-D (N,H,W), got shape {arr.shape}"
        )
    return arr, layout


def group_images(images: list[np.ndarray], labels: list[int] | None, layout: Layout) -> list[Part]:
    """Stack single images into parts of equal shape (first-appearance order)."""
    groups: dict[tuple[Any, ...], list[int]] = {}
    for i, img in enumerate(images):
        groups.setdefault((img.shape, img.dtype.str), []).append(i)
    parts = []
    for idx in groups.values():
        stack = np.stack([images[i] for i in idx])
        if stack.ndim == 3:  # (N, H, W) grayscale
            stack = stack.reshape(stack.shape[0], 1, *stack.shape[1:])
            part_layout: Layout = "NCHW"
        else:
            part_layout = layout
        lab = None if labels is None else np.asarray([labels[i] for i in idx], dtype=np.int64)
        parts.append(Part(np.ascontiguousarray(stack), part_layout, lab))
    return parts


# -- sources over arrays ----------------------------------------------------------------------


class ArraySource(Source):
    """Images in one array-like indexed along its first axis (numpy, memmap, tensor).

    Parameters
    ----------
    images : array-like
        ``(N, C, H, W)``, ``(N, H, W, C)`` or ``(N, H, W)``; a ``numpy.memmap`` stays on disk and
        only the current batch is read.
    layout : {"NCHW", "NHWC"} or None
        ``None`` lets ``PatchStats.update`` infer it.
    labels : array-like, optional
    n_classes, class_names, name, identity
        Metadata; ``identity`` enters the fingerprint.
    """

    def __init__(
        self,
        images: Any,
        *,
        layout: Layout | None = None,
        labels: Any = None,
        n_classes: int | None = None,
        class_names: list[str] | None = None,
        name: str = "array",
        identity: str = "",
    ) -> None:
        shape = tuple(images.shape)
        if len(shape) not in (3, 4):
            raise ValueError(
                f"{name}: images must be 4-D (N,C,H,W or N,H,W,C) or 3-D (N,H,W), got shape {shape}"
            )
        self.images = images
        self.layout: Layout | None = layout
        self.total = shape[0]
        self.labels = None if labels is None else labels_array(labels, shape[0], f"{name} labels")
        self.has_labels = self.labels is not None
        self.n_classes = n_classes
        self.class_names = class_names
        self.name = name
        self._identity = identity or f"{shape}:{getattr(images, 'dtype', '')}"

    def fingerprint(self) -> str:
        return f"array:{self.name}:{self._identity}"

    def steps(self, start: int = 0, batch_size: int = 256) -> Iterator[Step]:
        n = int(self.total or 0)
        for i in range(start, n, batch_size):
            j = min(i + batch_size, n)
            arr = as_pixels(self.images[i:j], f"{self.name}[{i}:{j}]")
            arr, layout = four_d(arr, self.layout, self.name)
            labels = None if self.labels is None else self.labels[i:j]
            yield Step([Part(arr, layout, labels)], j - i)


class ChainSource(Source):
    """Several sources one after the other, opened lazily (e.g. CIFAR's five training files).

    Parameters
    ----------
    openers : sequence of callables
        Each returns a :class:`Source`; called when the chain reaches it.
    name : str
    identity : str
        Enters the fingerprint.
    total : int, optional
    """

    def __init__(
        self,
        openers: Sequence[Callable[[], Source]],
        *,
        name: str,
        identity: str,
        total: int | None = None,
        has_labels: bool = False,
        n_classes: int | None = None,
        class_names: list[str] | None = None,
    ) -> None:
        self.openers = list(openers)
        self.name = name
        self._identity = identity
        self.total = total
        self.has_labels = has_labels
        self.n_classes = n_classes
        self.class_names = class_names

    def fingerprint(self) -> str:
        return f"chain:{self.name}:{self._identity}"

    def steps(self, start: int = 0, batch_size: int = 256) -> Iterator[Step]:
        offset = 0
        for opener in self.openers:
            part = opener()
            try:
                n = part.total
                if n is None:
                    raise ValueError(f"{self.name}: every part of a chain must know its length")
                if offset + n > start:
                    yield from part.steps(max(0, start - offset), batch_size)
                offset += n
            finally:
                part.close()
