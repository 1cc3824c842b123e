""":func:`open_source`: anything holding images, turned into the right :class:`Source`."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from firstlayer._arrays import is_torch_tensor
from firstlayer.sources.base import LAYOUTS, ArraySource, Layout, OnError, Source
from firstlayer.sources.datasets import DATASET_NAMES, dataset_source
from firstlayer.sources.decode import DecodeOptions, decode_options
from firstlayer.sources.files import FileListSource, has_image_ext, image_folder
from firstlayer.sources.formats import CIFAR10_FILES, cifar_source, npy_source, npz_source
from firstlayer.sources.torch_data import IterableSource, MapDatasetSource, is_pil, torch_source

__all__ = ["open_source"]

_NO_EXPLICIT_LABELS = (
    "labels= as an array is for array, .npy and .npz sources; source={!r} carries its own labels "
    "(or none): pass labels=None, True or False"
)


def open_source(
    source: Any,
    *,
    layout: Layout | None = None,
    labels: Any = None,
    root: str | os.PathLike[str] | None = None,
    download: bool = True,
    on_error: OnError = "raise",
    resize: int | Sequence[int] | None = None,
    center_crop: int | Sequence[int] | None = None,
    grayscale: bool = False,
    decode_threads: int | None = None,
    decoder: str = "auto",
) -> Source:
    """Turn anything holding images into a :class:`Source`.

    Parameters
    ----------
    source
        A dataset name (:data:`DATASET_NAMES`), a folder of images (class sub-folders give
        labels), a CIFAR python batch folder or file, a ``.npy``/``.npz`` file, an image file, a
        torch ``Dataset``/``DataLoader``, a torchvision dataset, a numpy array or tensor, or an
        iterable of batches. A :class:`Source` is returned as it is.
    layout : {"NCHW", "NHWC"}, optional
        For arrays whose layout is ambiguous.
    labels : bool, array-like, path or None
        See :func:`firstlayer.streaming.stream_stats`.
    root, download
        Where named datasets are looked for, and whether to fetch them when missing.
    on_error : {"raise", "skip"}
    resize, center_crop, grayscale
        Applied to image files and PIL images (torchvision conventions, see
        :class:`DecodeOptions`).
    decode_threads : int, optional
        Image decoding threads (default: all cores).
    decoder : {"auto", "pillow", "rust"}

    Returns
    -------
    Source
    """
    if layout is not None and layout not in LAYOUTS:
        raise ValueError(f"layout must be 'NCHW', 'NHWC' or None, got {layout!r}")
    opts = decode_options(resize, center_crop, grayscale)
    explicit = _explicit_labels(labels)
    if isinstance(source, Source):
        return source
    if isinstance(source, str | os.PathLike):
        return _open_path(
            source,
            opts=opts,
            layout=layout,
            labels=labels,
            explicit=explicit,
            root=root,
            download=download,
            decode_threads=decode_threads,
            decoder=decoder,
        )
    if isinstance(source, np.ndarray) or is_torch_tensor(source):
        if not opts == DecodeOptions():
            raise ValueError(
                "resize=, center_crop= and grayscale= apply to image files, not arrays"
            )
        return ArraySource(source, layout=layout, labels=explicit, name="array")
    if explicit is not None:
        raise ValueError(_NO_EXPLICIT_LABELS.format(type(source).__name__))
    torch_src = torch_source(
        source,
        opts=opts,
        layout=layout,
        on_error=on_error,
        decode_threads=decode_threads,
        decoder=decoder,
    )
    if torch_src is not None:
        return torch_src
    if (
        hasattr(source, "__getitem__")
        and hasattr(source, "__len__")
        and not isinstance(source, dict)
    ):
        # A list of single images (PIL, or 2-D / 3-D arrays and tensors) is that many images,
        # each read by the per-image layout rule; a list of 4-D arrays is a list of batches.
        if isinstance(source, list | tuple) and source and _single_images(source):
            return MapDatasetSource(
                source, opts=opts, layout=layout, on_error=on_error, name="list"
            )
    if isinstance(source, Iterable) and not isinstance(source, str | bytes | dict):
        return IterableSource(source, opts=opts, layout=layout)
    raise TypeError(
        "source must be an array, a tensor, a torch Dataset or DataLoader, a folder or file path, "
        f"a dataset name ({', '.join(DATASET_NAMES)}) or an iterable of batches; got "
        f"{type(source).__name__}"
    )


def _open_path(
    source: str | os.PathLike[str],
    *,
    opts: DecodeOptions,
    layout: Layout | None,
    labels: Any,
    explicit: Any,
    root: str | os.PathLike[str] | None,
    download: bool,
    decode_threads: int | None,
    decoder: str,
) -> Source:
    """A dataset name, a folder (images or CIFAR batches) or a file."""
    text = os.fspath(source)
    p = Path(text).expanduser()
    if not p.exists() and isinstance(source, str) and text.lower() in DATASET_NAMES:
        if explicit is not None:
            raise ValueError(_NO_EXPLICIT_LABELS.format(text))
        src = dataset_source(text, root=root, download=download)
        _refuse_transforms(opts, src, text)
        return src
    if not p.exists():
        raise FileNotFoundError(
            f"source={text!r} is neither an existing file or folder nor a dataset name "
            f"({', '.join(DATASET_NAMES)})"
        )
    if p.is_dir():
        if (p / "data_batch_1").is_file() or (p / "test_batch").is_file():
            files = [f for f in CIFAR10_FILES["train"] if (p / f).is_file()] or ["test_batch"]
            src = cifar_source(p, files, n_classes=10, meta="batches.meta", name=str(p))
        elif (p / "meta").is_file() and ((p / "train").is_file() or (p / "test").is_file()):
            files = ["train"] if (p / "train").is_file() else ["test"]
            src = cifar_source(p, files, n_classes=100, meta="meta", name=str(p))
        else:
            if explicit is not None:
                raise ValueError(_NO_EXPLICIT_LABELS.format(text))
            return image_folder(
                p,
                labels=labels if isinstance(labels, bool) else None,
                opts=opts,
                decode_threads=decode_threads,
                decoder=decoder,
            )
        _refuse_transforms(opts, src, text)
        return src
    suffix = p.name.lower()
    if suffix.endswith(".npy"):
        src = npy_source(p, layout=layout, labels=explicit)
    elif suffix.endswith(".npz"):
        src = npz_source(p, layout=layout, labels=explicit)
    elif explicit is not None:
        raise ValueError(_NO_EXPLICIT_LABELS.format(text))
    elif has_image_ext(suffix):
        return FileListSource(
            [str(p)], name=str(p), opts=opts, decode_threads=decode_threads, decoder=decoder
        )
    else:
        with open(p, "rb") as fh:
            head = fh.read(2)
        if head[:1] != b"\x80":  # every pickle protocol >= 2 (CIFAR's) starts so
            raise ValueError(
                f"source={text!r}: not a file firstlayer reads (expected an image, a .npy/.npz "
                "array file or a CIFAR batch pickle)"
            )
        src = cifar_source(p.parent, [p.name], n_classes=10, meta="batches.meta", name=str(p))
    _refuse_transforms(opts, src, text)
    return src


def _refuse_transforms(opts: DecodeOptions, src: Source, what: str) -> None:
    if opts != DecodeOptions():
        raise ValueError(
            f"resize=, center_crop= and grayscale= apply to image files; source={what!r} gives "
            f"raw arrays ({type(src).__name__})"
        )


def _explicit_labels(labels: Any) -> Any:
    """Per-image labels given as an array or a ``.npy`` path; ``None`` for the modes."""
    if labels is None or isinstance(labels, bool):
        return None
    if isinstance(labels, str | os.PathLike):
        return np.load(Path(labels), allow_pickle=False)
    return labels


def _single_images(items: Sequence[Any]) -> bool:
    first = items[0]
    if isinstance(first, tuple | list) and first:  # (image, label) pairs
        first = first[0]
    if is_pil(first):
        return True
    ndim = getattr(first, "ndim", None)
    return ndim in (2, 3) and (isinstance(first, np.ndarray) or is_torch_tensor(first))
