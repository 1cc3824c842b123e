"""torch ``Dataset`` s, ``DataLoader`` s, torchvision datasets and other iterables as sources.

torch is never imported here: these adapters look at ``sys.modules`` and only use torch when the
caller already has (a torch object can only exist once torch is imported). torchvision datasets
without transforms take fast paths that read their raw pixels (or files) directly.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from firstlayer._arrays import is_torch_tensor
from firstlayer.sources.base import (
    ArraySource,
    Layout,
    OnError,
    Part,
    Source,
    Step,
    as_pixels,
    four_d,
    group_images,
    labels_array,
)
from firstlayer.sources.decode import DecodeOptions, pil_to_array
from firstlayer.sources.files import FileListSource

__all__ = ["IterableSource", "MapDatasetSource", "torch_source"]

_TRANSFORMS_ON_ARRAYS = (
    "resize= and center_crop= apply to image files and PIL images; this source yields "
    "{what}: put the transforms in the dataset instead"
)


def is_pil(x: Any) -> bool:
    """Whether ``x`` is a PIL image (without importing PIL)."""
    mod = sys.modules.get("PIL.Image")
    return mod is not None and isinstance(x, mod.Image)


def _single_image(x: Any, opts: DecodeOptions, layout: Layout | None) -> tuple[np.ndarray, Layout]:
    """One image from a dataset item, as ``(H, W[, C])`` (NHWC) or ``(C, H, W)`` (NCHW)."""
    if is_pil(x):
        return pil_to_array(x, opts), "NHWC"
    if opts.resize is not None or opts.center_crop is not None:
        raise ValueError(_TRANSFORMS_ON_ARRAYS.format(what=f"{type(x).__name__} items"))
    if is_torch_tensor(x):
        arr = as_pixels(x, "dataset item")
        if arr.ndim == 2:
            return arr, "NHWC"
        if arr.ndim == 3:
            return arr, layout or "NCHW"  # torch convention: C, H, W
        raise ValueError(f"a dataset image must be 2-D or 3-D, got tensor shape {tuple(arr.shape)}")
    if isinstance(x, np.ndarray):
        arr = as_pixels(x, "dataset item")
        if arr.ndim == 2:
            return arr, "NHWC"
        if arr.ndim == 3:
            if layout is None:
                if arr.shape[0] not in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
                    raise ValueError(
                        f"a 3-D image must be (H, W, C) or (C, H, W) with C in 1, 3, 4, got "
                        f"shape {arr.shape}; pass a 4-D batch for a stack of one-channel images"
                    )
                layout = (
                    "NHWC" if arr.shape[-1] in (1, 3, 4) and arr.shape[0] not in (1, 3) else "NCHW"
                )
            return arr, layout
        raise ValueError(f"a dataset image must be 2-D or 3-D, got array shape {arr.shape}")
    raise TypeError(
        f"a dataset item must be a PIL image, a tensor or a numpy array (optionally with a "
        f"label), got {type(x).__name__}"
    )


def _split_item(item: Any) -> tuple[Any, Any]:
    """``(image, label)`` from ``img``, ``(img,)``, ``(img, label[, ...])`` or a dict."""
    if isinstance(item, tuple | list) and len(item) >= 2:
        return item[0], item[1]
    if isinstance(item, tuple | list) and len(item) == 1:  # e.g. a loader over TensorDataset(x)
        return item[0], None
    if isinstance(item, dict):
        img = next((item[k] for k in ("image", "img", "pixel_values") if k in item), None)
        if img is None:
            raise TypeError(f"a dict item needs an 'image' key, got keys {sorted(item)}")
        lab = next((item[k] for k in ("label", "labels", "target") if k in item), None)
        return img, lab
    return item, None


def _label_value(y: Any) -> int:
    if is_torch_tensor(y):
        y = y.item()
    if isinstance(y, np.generic | np.ndarray):
        y = y.item()
    if isinstance(y, bool) or not isinstance(y, int):
        raise TypeError(f"labels must be integers, got {type(y).__name__} {y!r}")
    return y


def _labels_list(y: Any) -> list[Any]:
    if is_torch_tensor(y):
        return y.detach().cpu().tolist()
    return list(np.asarray(y).tolist())


def _items_to_parts(
    items: list[Any], opts: DecodeOptions, layout: Layout | None
) -> tuple[list[Part], bool]:
    images: list[np.ndarray] = []
    labels: list[int] = []
    all_labelled = True
    layouts = set()
    for item in items:
        img, y = _split_item(item)
        arr, item_layout = _single_image(img, opts, layout)
        images.append(arr)
        layouts.add(item_layout if arr.ndim == 3 else "2d")
        if y is None:
            all_labelled = False
        else:
            labels.append(_label_value(y))
    if not images:
        return [], all_labelled
    if "NHWC" in layouts and "NCHW" in layouts:
        raise ValueError("a source mixes channel-first and channel-last images")
    lay: Layout = "NCHW" if "NCHW" in layouts else "NHWC"
    return group_images(images, labels if all_labelled else None, lay), all_labelled


class MapDatasetSource(Source):
    """A map-style dataset (``len`` and ``ds[i]``) read item by item in the calling thread.

    For parallel loading, wrap the dataset in a ``DataLoader`` with ``num_workers``.
    """

    def __init__(
        self,
        ds: Any,
        *,
        opts: DecodeOptions,
        layout: Layout | None,
        on_error: OnError,
        name: str | None = None,
    ) -> None:
        self.ds = ds
        self.opts = opts
        self.layout = layout
        self.on_error = on_error
        self.total = len(ds)
        self.name = name or type(ds).__name__
        classes = getattr(ds, "classes", None)
        self.class_names = [str(c) for c in classes] if isinstance(classes, list | tuple) else None
        self.n_classes = None if self.class_names is None else len(self.class_names)
        self.has_labels = self._probe_labels()

    def _probe_labels(self) -> bool:
        if not self.total:
            return False
        try:
            _, y = _split_item(self.ds[0])
        except Exception:  # noqa: BLE001 - the real read reports it
            return False
        return y is not None

    def fingerprint(self) -> str:
        return f"dataset:{type(self.ds).__module__}.{type(self.ds).__name__}:{self.total}"

    def steps(self, start: int = 0, batch_size: int = 256) -> Iterator[Step]:
        n = int(self.total or 0)
        for i in range(start, n, batch_size):
            j = min(i + batch_size, n)
            items, skipped = [], []
            for k in range(i, j):
                if self.on_error == "skip":
                    try:
                        items.append(self.ds[k])
                    except Exception as exc:  # noqa: BLE001 - counted and listed
                        skipped.append((f"{self.name}[{k}]", f"{type(exc).__name__}: {exc}"))
                else:
                    items.append(self.ds[k])
            parts, labelled = _items_to_parts(items, self.opts, self.layout)
            if self.has_labels and not labelled:
                raise ValueError(f"{self.name}: some items in [{i}, {j}) have no label")
            if not self.has_labels:
                for p in parts:
                    p.labels = None
            yield Step(parts, j - i, skipped)


class IterableSource(Source):
    """Any iterable of batches: a ``DataLoader``, a generator of arrays or ``(x, y)`` pairs.

    An element is a batch (4-D, or 3-D read as ``(N, H, W)``), a pair ``(batch, labels)``, a dict
    with ``image``/``label`` keys, or a list of single images (PIL, tensors). A resumed run
    iterates again and drops the batches already counted, so the iterable must give the same
    batches each time (no shuffling).
    """

    def __init__(
        self,
        iterable: Iterable[Any],
        *,
        opts: DecodeOptions,
        layout: Layout | None,
        name: str | None = None,
        total: int | None = None,
    ) -> None:
        self.iterable = iterable
        self.opts = opts
        self.layout = layout
        self.name = name or type(iterable).__name__
        self.total = total
        self.has_labels: bool | None = None  # decided by the first batch
        self.n_classes = None
        ds = getattr(iterable, "dataset", None)
        classes = getattr(ds, "classes", None)
        if isinstance(classes, list | tuple):
            self.class_names = [str(c) for c in classes]
            self.n_classes = len(classes)

    def fingerprint(self) -> str:
        return (
            f"iterable:{type(self.iterable).__module__}.{type(self.iterable).__name__}:{self.total}"
        )

    def _element_parts(self, el: Any) -> list[Part]:
        x, y = _split_item(el)
        if isinstance(x, list | tuple):
            items = list(x) if y is None else list(zip(x, _labels_list(y), strict=True))
            parts, _ = _items_to_parts(items, self.opts, self.layout)
            return parts
        if is_pil(x):
            parts, _ = _items_to_parts([el], self.opts, self.layout)
            return parts
        if self.opts.resize is not None or self.opts.center_crop is not None:
            raise ValueError(_TRANSFORMS_ON_ARRAYS.format(what="batches of arrays"))
        arr = as_pixels(x, f"{self.name} batch")
        arr, lay = four_d(arr, self.layout, f"{self.name} batch")
        if lay is None and is_torch_tensor(x):
            lay = "NCHW"
        labels = None if y is None else labels_array(y, arr.shape[0], f"{self.name} labels")
        return [Part(arr, lay, labels)]

    def steps(self, start: int = 0, batch_size: int = 256) -> Iterator[Step]:
        seen = 0
        for el in self.iterable:
            parts = self._element_parts(el)
            n = sum(p.images.shape[0] for p in parts)
            if seen < start:
                seen += n
                if seen > start:
                    raise ValueError(
                        f"cannot resume {self.name} at item {start}: its batches no longer end "
                        "there (the iterable must give the same batches every time)"
                    )
                continue
            seen += n
            yield Step(parts, n)


def torch_source(
    obj: Any,
    *,
    opts: DecodeOptions,
    layout: Layout | None,
    on_error: OnError,
    decode_threads: int | None,
    decoder: str,
) -> Source | None:
    """The source of a torch object, ``None`` if ``obj`` is none (or torch is not imported).

    torchvision's CIFAR, MNIST, SVHN and ``ImageFolder`` without transforms are read from their
    raw pixels or files; any other map-style dataset item by item.
    """
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

    if isinstance(obj, DataLoader):
        sampler = getattr(obj, "sampler", None)
        ordered = type(sampler).__name__ == "SequentialSampler"
        src = IterableSource(obj, opts=opts, layout=layout, name="DataLoader")
        try:
            src.total = len(obj.dataset) if obj.drop_last is False else None  # type: ignore[arg-type]
        except TypeError:
            src.total = None
        src._ordered = ordered  # type: ignore[attr-defined]
        return src
    if isinstance(obj, IterableDataset):
        return IterableSource(obj, opts=opts, layout=layout)
    if not isinstance(obj, Dataset):
        return None
    plain = getattr(obj, "transform", None) is None and getattr(obj, "transforms", None) is None
    plain_target = getattr(obj, "target_transform", None) is None
    tv = sys.modules.get("torchvision.datasets")
    name = type(obj).__name__
    if (
        tv is not None
        and plain
        and plain_target
        and not opts.grayscale
        and opts.resize is None
        and opts.center_crop is None
    ):
        classes = getattr(obj, "classes", None)
        class_names = [str(c) for c in classes] if classes is not None else None
        n_cls = None if class_names is None else len(class_names)
        if isinstance(obj, tv.CIFAR10):  # CIFAR100 too
            return ArraySource(
                np.asarray(obj.data),
                layout="NHWC",
                labels=np.asarray(obj.targets),
                n_classes=n_cls,
                class_names=class_names,
                name=name,
            )
        if isinstance(obj, tv.MNIST):  # FashionMNIST, KMNIST, EMNIST, QMNIST
            data = obj.data.numpy() if is_torch_tensor(obj.data) else np.asarray(obj.data)
            targets = obj.targets
            if is_torch_tensor(targets) and targets.ndim == 2:  # QMNIST keeps extra columns
                targets = targets[:, 0]
            return ArraySource(
                data, labels=targets, n_classes=n_cls, class_names=class_names, name=name
            )
        if isinstance(obj, tv.SVHN):
            return ArraySource(
                np.asarray(obj.data),
                layout="NCHW",
                labels=np.asarray(obj.labels),
                n_classes=10,
                class_names=[str(i) for i in range(10)],
                name=name,
            )
    if (
        tv is not None
        and isinstance(obj, tv.ImageFolder)
        and plain
        and plain_target
        and obj.loader is tv.folder.default_loader
    ):
        return FileListSource(
            [p for p, _ in obj.samples],
            labels=[y for _, y in obj.samples],
            opts=opts,
            decode_threads=decode_threads,
            decoder=decoder,
            name=f"ImageFolder({obj.root})",
            class_names=list(obj.classes),
        )
    if isinstance(obj, TensorDataset) and not opts.resize and not opts.center_crop:
        tensors = obj.tensors
        return ArraySource(
            tensors[0],
            layout=layout or "NCHW",
            labels=tensors[1] if len(tensors) > 1 else None,
            name="TensorDataset",
        )
    return MapDatasetSource(obj, opts=opts, layout=layout, on_error=on_error)
