"""The theorem's assumption: are the labels uncorrelated with the patches' PCA coefficients?

Theorem 4.2 needs every PCA coefficient of the patches uncorrelated with the labels (Definition
A.4). :func:`label_patch_correlation` measures it per class and component, exactly from
statistics gathered with ``labels=`` or per image from the images themselves.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from firstlayer.profile import pca_basis
from firstlayer.streaming import patch_stats
from firstlayer.theory._inputs import images_nchw, labels_for, unit_float64

__all__ = ["LabelCorrelation", "label_patch_correlation"]


@dataclass(frozen=True)
class LabelCorrelation:
    """How far labels correlate with patch PCA coefficients (the theory's assumption).

    Attributes
    ----------
    classes : numpy.ndarray
        (n_classes,) class values, in row order.
    coefficient : numpy.ndarray
        (n_classes, p) Pearson correlation between the one-vs-all label and the PCA coefficient
        ``u_i . p``: per patch (exact, from statistics) or per image using the image's mean patch
        (what the theory needs), depending on ``level``.
    energy : numpy.ndarray or None
        (n_classes, p) correlation between the one-vs-all label and the image's patch energy
        ``sum_j (u_i . (p_j - mean))^2`` (the paper's Fig. 5 caption); images only.
    class_mean_distance : numpy.ndarray
        (n_classes,) distance of each class-mean patch from the global mean, relative to the
        patch standard deviation ``sqrt(trace(covariance))``: the "average patch" check.
    level : str
        ``"patch"`` or ``"image"``.
    """

    classes: np.ndarray
    coefficient: np.ndarray
    energy: np.ndarray | None
    class_mean_distance: np.ndarray
    level: str

    @property
    def summary(self) -> float:
        """One number: the largest ``|coefficient|`` over classes and components."""
        return float(np.nanmax(np.abs(self.coefficient)))


def _standardize(a: np.ndarray) -> np.ndarray:
    a = a - a.mean(axis=0)
    sd = a.std(axis=0)
    return np.divide(a, sd, out=np.zeros_like(a), where=sd > 0)


def label_patch_correlation(
    source: Any,
    labels: Any = None,
    kernel_size: int = 3,
    *,
    stats: Any = None,
    batch_size: int = 256,
) -> LabelCorrelation:
    """Correlation of one-vs-all labels with the patches' PCA coefficients, per class and component.

    Theorem 4.2 needs labels uncorrelated with every PCA coefficient; for two classes that is the
    same as equal class-mean patches (the v1 "average patch" condition).

    Parameters
    ----------
    source : PatchStats, numpy.ndarray or torch.Tensor
        Statistics gathered with ``labels=`` (gives exact per-patch correlations from the class
        means), or (N, C, H, W) / (N, H, W, C) images, a tensor on the CPU (gives per-image
        correlations, both of the mean coefficient and of the energy). uint8 images are scaled
        by 1/255.
    labels : array_like, optional
        (N,) integer labels; required for images.
    kernel_size : int
        Patch size for images.
    stats : PatchStats, optional
        Statistics whose PCA basis to use for images (default: computed from the images).
    batch_size : int
        Images per chunk when extracting patches.

    Returns
    -------
    LabelCorrelation

    Raises
    ------
    ValueError
        If statistics hold no per-class data, or labels do not match the images.
    """
    if hasattr(source, "class_means") and hasattr(source, "pca"):
        return _label_correlation_from_stats(source)
    if labels is None:
        msg = "labels: expected (N,) integer labels for images, got None"
        raise ValueError(msg)
    x = images_nchw(source)
    y = labels_for(labels, x.shape[0])
    k = int(kernel_size)
    xf = unit_float64(x)
    if stats is None:
        stats = patch_stats(np.ascontiguousarray(xf), kernel_size=k)
    ev, u = pca_basis(stats)
    mu = np.asarray(stats.mean, dtype=np.float64)
    if u.shape[0] != x.shape[1] * k * k:
        msg = f"stats: expected statistics of {x.shape[1]}x{k}x{k} patches, got dim {u.shape[0]}"
        raise ValueError(msg)
    mean_coef, energy = [], []
    for start in range(0, xf.shape[0], batch_size):
        chunk = xf[start : start + batch_size]
        win = np.lib.stride_tricks.sliding_window_view(chunk, (k, k), axis=(2, 3))
        patches = win.transpose(0, 2, 3, 1, 4, 5).reshape(chunk.shape[0], -1, u.shape[0])
        coef = (patches - mu) @ u  # (B, J, p)
        mean_coef.append(coef.mean(axis=1))
        energy.append(np.einsum("bjp,bjp->bp", coef, coef))
    classes = np.unique(y)
    onehot = _standardize((y[:, None] == classes[None, :]).astype(np.float64))
    n = y.size
    r_coef = onehot.T @ _standardize(np.concatenate(mean_coef)) / n
    r_energy = onehot.T @ _standardize(np.concatenate(energy)) / n
    class_mu = np.stack([np.concatenate(mean_coef)[y == c].mean(axis=0) for c in classes])
    spread = float(np.sqrt(max(ev.sum(), 1e-300)))
    return LabelCorrelation(
        classes=classes,
        coefficient=r_coef,
        energy=r_energy,
        class_mean_distance=np.linalg.norm(class_mu, axis=1) / spread,
        level="image",
    )


def _label_correlation_from_stats(stats: Any) -> LabelCorrelation:
    counts = np.asarray(stats.class_counts, dtype=np.float64)
    if counts.size == 0 or counts.sum() == 0:
        msg = "source: expected statistics gathered with labels= (per-class sums), got none"
        raise ValueError(msg)
    ev, u = pca_basis(stats)
    keep = counts > 0
    classes = np.flatnonzero(keep)
    counts = counts[keep]
    means = np.asarray(stats.class_means, dtype=np.float64)[keep]
    mu = np.asarray(stats.mean, dtype=np.float64)
    pi = counts / float(stats.count)
    # For a 0/1 label per patch: r = sqrt(pi (1 - pi)) * u.(mu_c - mu_rest) / lambda, exactly.
    rest = np.divide(
        (mu - pi[:, None] * means),
        (1 - pi)[:, None],
        out=np.zeros_like(means),
        where=pi[:, None] < 1,
    )
    diff = (means - rest) @ u  # (n_classes, p)
    lam = np.sqrt(ev)
    r = np.sqrt(pi * (1 - pi))[:, None] * np.divide(
        diff, lam, out=np.zeros_like(diff), where=lam > 0
    )
    spread = float(np.sqrt(max(ev.sum(), 1e-300)))
    return LabelCorrelation(
        classes=classes,
        coefficient=r,
        energy=None,
        class_mean_distance=np.linalg.norm(means - mu, axis=1) / spread,
        level="patch",
    )
