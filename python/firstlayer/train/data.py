"""Datasets as in-memory ``uint8`` arrays, and the label modes of the true-vs-random experiment.

Images come from :func:`firstlayer.sources.open_source` (dataset names, image folders, CIFAR
batches, ``.npy``/``.npz`` files, torch datasets), are kept as ``uint8`` ``(N, C, H, W)`` and
normalised batch by batch on the training device. Random labels are derived from the true labels
and a seed only, so a run's labels can be regenerated and are also stored with the run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from firstlayer._validate import check_finite

__all__ = ["LABEL_MODES", "Dataset", "channel_stats", "load_dataset", "make_labels", "test_name"]

#: Most classes a training run takes when the dataset does not say its class count.
MAX_TRAIN_CLASSES = 2**16

#: ``true``: the dataset's labels; ``random``: a fixed random permutation of them (class balance
#: kept, as in the paper's code); ``uniform``: labels drawn uniformly at random.
LABEL_MODES = ("true", "random", "uniform")

_TEST_NAMES = {
    "cifar10": "cifar10-test",
    "cifar100": "cifar100-test",
    "mnist": "mnist-test",
    "fashion-mnist": "fashion-mnist-test",
    "sample": "sample-train",
    "sample-train": "sample",
}


@dataclass
class Dataset:
    """Images and labels in memory.

    Attributes
    ----------
    images : numpy.ndarray
        ``uint8`` ``(N, C, H, W)``, C-contiguous.
    labels : numpy.ndarray
        ``int64`` ``(N,)``.
    n_classes : int or None
        From the source's metadata when it has any.
    name : str
    fingerprint : str
        Changes when the source's content or order changes.
    """

    images: np.ndarray
    labels: np.ndarray
    n_classes: int | None
    name: str
    fingerprint: str


def test_name(dataset: Any) -> str | None:
    """The held-out counterpart of a dataset name (``"cifar10"`` -> ``"cifar10-test"``), if any."""
    if isinstance(dataset, str):
        return _TEST_NAMES.get(dataset.lower())
    return None


def _to_uint8_nchw(arr: np.ndarray, layout: str | None, what: str) -> np.ndarray:
    if arr.ndim == 3:
        arr = arr[:, None]
    if arr.ndim != 4:
        msg = f"{what}: expected 4-D images (N, C, H, W) or (N, H, W, C), got shape {arr.shape}"
        raise ValueError(msg)
    if layout is None:
        layout = "NHWC" if arr.shape[-1] in (1, 3, 4) and arr.shape[1] not in (1, 3, 4) else "NCHW"
    if layout == "NHWC":
        arr = arr.transpose(0, 3, 1, 2)
    if arr.dtype != np.uint8:
        if arr.dtype.kind == "f":
            # NaN would round to 0 and train on made-up pixels: refuse it, naming the images.
            check_finite(f"{what} (float pixels)", arr)
            if arr.size and (float(np.nanmin(arr)) < 0 or float(np.nanmax(arr)) > 1):
                msg = (
                    f"{what}: float images must lie in [0, 1] (they are stored as uint8 "
                    f"x * 255), got values in [{float(arr.min())}, {float(arr.max())}]"
                )
                raise ValueError(msg)
            arr = np.round(arr * 255.0).astype(np.uint8)
        else:
            msg = f"{what}: expected uint8 or float images, got dtype {arr.dtype}"
            raise TypeError(msg)
    return np.ascontiguousarray(arr)


def load_dataset(
    source: Any,
    *,
    subset: int | None = None,
    root: str | os.PathLike[str] | None = None,
    download: bool = True,
    what: str = "dataset",
) -> Dataset:
    """Read the first ``subset`` labelled images of a source into memory.

    Parameters
    ----------
    source
        Anything :func:`firstlayer.sources.open_source` accepts: ``"cifar10"``, ``"sample"``,
        a folder, a ``.npy``/``.npz`` file, a torch dataset, ...
    subset : int, optional
        Keep the first ``subset`` images (all when ``None``).
    root, download
        Where named datasets live, and whether to fetch them when missing.
    what : str
        Argument name used in error messages.

    Returns
    -------
    Dataset

    Raises
    ------
    ValueError
        The source has no labels, holds images of different sizes, or is empty.
    """
    from firstlayer.sources import open_source

    src = open_source(source, root=root, download=download)
    chunks: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    n = 0
    try:
        for step in src.steps(0, 1024):
            for part in step.parts:
                if part.labels is None:
                    msg = f"{what}: expected a labelled dataset, {src.name!r} has no labels"
                    raise ValueError(msg)
                imgs = _to_uint8_nchw(part.images, part.layout, what)
                if chunks and imgs.shape[1:] != chunks[0].shape[1:]:
                    msg = (
                        f"{what}: expected images of one size, got {chunks[0].shape[1:]} and "
                        f"{imgs.shape[1:]} (C, H, W); resize the images first"
                    )
                    raise ValueError(msg)
                chunks.append(imgs)
                labels.append(np.asarray(part.labels, dtype=np.int64))
                n += len(imgs)
            if subset is not None and n >= subset:
                break
        fingerprint = src.fingerprint()
        n_classes = src.n_classes
        name = src.name
    finally:
        src.close()
    if n == 0:
        msg = f"{what}: expected at least one image, {name!r} is empty"
        raise ValueError(msg)
    images = np.concatenate(chunks)[:subset]
    y = np.concatenate(labels)[:subset]
    if subset is not None and len(images) < subset:
        msg = f"subset: expected at most {len(images)} (the size of {name!r}), got {subset}"
        raise ValueError(msg)
    if y.min() < 0:
        msg = f"{what}: expected labels >= 0, got {int(y.min())}"
        raise ValueError(msg)
    # The network gets one output per class: a stray huge label would size it (and fail in
    # torch's allocator with a message that never says "label").
    limit = n_classes if n_classes is not None else MAX_TRAIN_CLASSES
    if int(y.max()) >= limit:
        bound = "the dataset's" if n_classes is not None else "firstlayer's training"
        msg = f"{what}: expected labels below {limit} ({bound} class count), got {int(y.max())}"
        raise ValueError(msg)
    return Dataset(np.ascontiguousarray(images), y, n_classes, name, fingerprint)


def make_labels(
    labels: np.ndarray, mode: str, *, fraction: float, seed: int, n_classes: int
) -> np.ndarray:
    """Labels for training: true, or a seeded random corruption of a fraction of them.

    Parameters
    ----------
    labels : numpy.ndarray
        True labels, ``int64``.
    mode : {"true", "random", "uniform"}
        ``random`` permutes the labels of the chosen examples among themselves (class counts
        kept; with ``fraction=1`` this is the paper's ``shuffle(dataset.targets)``); ``uniform``
        draws their labels uniformly from ``n_classes``.
    fraction : float
        Fraction of examples whose label is randomised, in ``[0, 1]``.
    seed : int
        Seed of the draw (numpy ``PCG64``); the same seed gives the same labels everywhere.
    n_classes : int

    Returns
    -------
    numpy.ndarray
        ``int64`` labels, same length.
    """
    if mode not in LABEL_MODES:
        msg = f"labels: expected one of {', '.join(LABEL_MODES)}, got {mode!r}"
        raise ValueError(msg)
    out = np.asarray(labels, dtype=np.int64).copy()
    if mode == "true" or fraction == 0:
        return out
    rng = np.random.Generator(np.random.PCG64(seed))
    n = len(out)
    chosen = np.sort(rng.permutation(n)[: round(fraction * n)])
    if mode == "random":
        out[chosen] = out[chosen][rng.permutation(len(chosen))]
    else:
        out[chosen] = rng.integers(0, n_classes, size=len(chosen))
    return out


def channel_stats(images: np.ndarray) -> tuple[list[float], list[float]]:
    """Exact per-channel mean and standard deviation of ``uint8`` images, scaled to ``[0, 1]``.

    Parameters
    ----------
    images : numpy.ndarray
        ``uint8`` ``(N, C, H, W)``.

    Returns
    -------
    mean, std : list of float
    """
    c = images.shape[1]
    mean, std = [], []
    for ch in range(c):
        plane = images[:, ch]
        counts = np.bincount(plane.reshape(-1), minlength=256).astype(np.float64)
        v = np.arange(256, dtype=np.float64) / 255.0
        total = counts.sum()
        m = float(counts @ v / total)
        s = float(np.sqrt(max(counts @ (v - m) ** 2 / total, 0.0)))
        mean.append(m)
        std.append(s if s > 0 else 1.0)
    return mean, std
