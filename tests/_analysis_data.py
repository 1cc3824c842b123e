"""Helpers for the filter-bank analysis tests: the real data, and an independent numpy patch PCA.

Data files are found where firstlayer finds data (:func:`firstlayer._paths.data_roots`:
``$FIRSTLAYER_DATA``, ``~/.cache/firstlayer``, then ``../shared/data`` next to the repository);
tests that need a missing file are skipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from firstlayer._paths import data_roots


def data_file(name: str) -> Path:
    """A file of the data folders; skip the test when it is absent."""
    roots = data_roots()
    for root in roots:
        if (root / name).is_file():
            return root / name
    pytest.skip(f"{name} not found in {', '.join(map(str, roots))} (set FIRSTLAYER_DATA)")


def cifar_images(n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The exact CIFAR-10 pixels as uint8 (N, 3, 32, 32) and their int64 labels."""
    with np.load(data_file("cifar10_exact_subset.npz"), allow_pickle=False) as d:
        rows, index, labels = d["data"], d["index"], d["labels"]
    if n is not None:
        rows, index = rows[:n], index[:n]
    return rows.reshape(-1, 3, 32, 32), labels[index].astype(np.int64)


def pretrained(name: str) -> np.ndarray:
    """A pretrained first layer from ``pretrained_first_layers.npz``."""
    with np.load(data_file("pretrained_first_layers.npz"), allow_pickle=False) as d:
        return d[name]


@dataclass(frozen=True)
class RefPCA:
    eigenvalues: np.ndarray
    components: np.ndarray


@dataclass(frozen=True)
class RefStats:
    """The PatchStats fields the analysis reads, computed with plain numpy."""

    channels: int
    kernel_size: int
    count: int
    n_images: int
    mean: np.ndarray
    covariance: np.ndarray

    def pca(self) -> RefPCA:
        w, v = np.linalg.eigh(self.covariance)
        order = np.argsort(w)[::-1]
        return RefPCA(w[order], v[:, order])


def ref_patches(x: np.ndarray, k: int) -> np.ndarray:
    """All valid stride-1 patches of (N, C, H, W) images, flattened in (c, i, j) order."""
    win = np.lib.stride_tricks.sliding_window_view(x, (k, k), axis=(2, 3))  # N,C,H',W',k,k
    return win.transpose(0, 2, 3, 1, 4, 5).reshape(-1, x.shape[1] * k * k)


def ref_stats(x: np.ndarray, k: int, mean=None, std=None) -> RefStats:
    """Patch covariance of images (uint8 scaled to [0, 1]), optionally normalised per channel."""
    xf = x.astype(np.float64) / 255.0 if x.dtype == np.uint8 else x.astype(np.float64)
    if mean is not None:
        xf = (xf - np.asarray(mean)[:, None, None]) / np.asarray(std)[:, None, None]
    p = xf.shape[1] * k * k
    s, m, n = np.zeros(p), np.zeros((p, p)), 0
    for start in range(0, xf.shape[0], 256):
        patches = ref_patches(xf[start : start + 256], k)
        s += patches.sum(0)
        m += patches.T @ patches
        n += patches.shape[0]
    mu = s / n
    return RefStats(x.shape[1], k, n, x.shape[0], mu, m / n - np.outer(mu, mu))
