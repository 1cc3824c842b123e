"""``PatchStats``: the second-order statistics of every patch of a dataset.

Data flows one way: a source yields batches, the Rust core turns each batch into raw moments
(count, sum, ``sum p p^T``, per-class counts and sums), and ``PatchStats`` accumulates them.
Everything else (mean, covariance, PCA, ZCA, normalisation, spectra) is derived from the raw
moments. For ``uint8`` images the raw moments are exact integers, so a ``PatchStats`` is the same
to the last bit however the data was batched, threaded, sharded or merged. Float images are
accumulated about a shift near their mean (the first image's channel means): raw moments of
pixels like ``1e4 +- 1e-3`` would lose the covariance to cancellation.

``PatchStats`` is the bottom of that flow: a pure accumulator that knows no source and no
driver. :func:`firstlayer.patch_stats` (in :mod:`firstlayer.streaming`) feeds it, and
:meth:`PatchStats.to_arrays` / :meth:`PatchStats.from_arrays` are all that files (its own
``.npz``, a streaming checkpoint) need of it.

Why one module of about 800 lines: ``PatchStats`` is one class whose parts hold each other's
invariants (accumulation, exact merge, the validation of every field of a loaded file, and the
quantities derived from the raw moments); split, each part would have to re-check the others.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from firstlayer import _core
from firstlayer._arrays import as_batch, as_labels, contiguous_chunks, image_chunk
from firstlayer._io import load_npz, save_npz
from firstlayer._validate import (
    MAX_STATS_KERNEL_SIZE,
    MAX_STRIDE,
    check_float,
    check_int,
    check_nbytes,
)

__all__ = ["PCA", "PatchStats"]

#: Upper bounds that keep every size the core computes far from overflow and memory blow-ups
#: (``MAX_STRIDE`` lives in ``_validate``, shared by every entry point).
MAX_CLASSES = 2**20
#: Images per chunk of the core's float reduction (``parallel::CHUNK_ITEMS``): a view copied in
#: chunks of whole multiples of it, folded in order, gives the bits of the contiguous array.
_FLOAT_CHUNK_IMAGES = 8
#: Partials of ``p`` sums and ``n_classes x p`` class sums alive at once in the core: the total,
#: two chunk partials, and the result handed to Python.
_PARTIALS_ALIVE = 4
#: Below this distance from the shift, a pixel's square underflows float64 (sqrt of its
#: smallest normal number).
_FLOAT_TINY = math.sqrt(np.finfo(np.float64).tiny)
_FORMAT = "firstlayer.PatchStats"
#: Version 2 added the float shift; version 1 files (no shift) are still read.
_VERSION = 2
_METHODS = ("auto", "direct", "shifted")
_U64_MAX = np.iinfo(np.uint64).max


@dataclass(frozen=True)
class PCA:
    """Principal components of the patches.

    Attributes
    ----------
    eigenvalues : ndarray, shape (p,)
        Variances along the components (eigenvalues of the covariance), descending. These are the
        paper's ``lambda_i^2`` (Definition 4.1).
    components : ndarray, shape (p, p)
        Unit eigenvectors as columns, in the patch order ``(c, i, j)``. Each is signed so that its
        largest-magnitude entry is positive (eigenvector signs are otherwise arbitrary).
    """

    eigenvalues: np.ndarray
    components: np.ndarray


def _per_channel(name: str, value: Any, channels: int) -> np.ndarray:
    arr = np.atleast_1d(np.asarray(value, dtype=np.float64))
    if arr.shape == (1,):
        arr = np.repeat(arr, channels)
    if arr.shape != (channels,):
        msg = f"{name}: expected a scalar or {channels} values (one per channel), got {arr.shape}"
        raise ValueError(msg)
    if not np.all(np.isfinite(arr)):
        msg = f"{name}: expected finite values, got {arr.tolist()}"
        raise ValueError(msg)
    return arr


class PatchStats:
    """Count, sum and second moment of all ``C x k x k`` patches of a dataset.

    Build one with :func:`firstlayer.patch_stats`, or stream with :meth:`empty` and
    :meth:`update`. Patches are flattened in the order ``(c, i, j)``, identical to
    ``conv.weight.flatten(1)``.

    Attributes
    ----------
    kernel_size, stride, padding, channels : int
        The window and the number of image channels.
    exact : bool
        True when the sums are exact integers (``uint64``, from ``uint8`` images).
    count : int
        Number of patches. ``n_images``: number of images.
    transform : dict or None
        For statistics made by :meth:`normalized`, the ``mean``, ``std`` and ``scale`` applied.
    skipped : list of str
        Inputs that a streaming source skipped (``on_error="skip"``), with the reason.
    """

    def __init__(
        self,
        *,
        kernel_size: int,
        stride: int,
        padding: int,
        channels: int,
        exact: bool,
        count: int,
        n_images: int,
        sum: np.ndarray,  # noqa: A002 - the statistic's name
        second_moment: np.ndarray,
        class_counts: np.ndarray | None = None,
        class_sums: np.ndarray | None = None,
        transform: dict[str, Any] | None = None,
        skipped: Sequence[str] = (),
        shift: np.ndarray | None = None,
    ) -> None:
        self.kernel_size = kernel_size
        self.stride = stride
        self.padding = padding
        self.channels = channels
        self.exact = exact
        self.count = int(count)
        self.n_images = int(n_images)
        dtype = np.uint64 if exact else np.float64
        p = self.dim
        self._sum = np.asarray(sum, dtype=dtype).reshape(p)
        self._second = np.asarray(second_moment, dtype=dtype).reshape(p, p)
        if class_counts is None:
            class_counts = np.zeros(0, np.uint64)
            class_sums = np.zeros((0, p), dtype)
        self._class_counts = np.asarray(class_counts, dtype=np.uint64)
        self._class_sums = np.asarray(class_sums, dtype=dtype).reshape(-1, p)
        # Float moments are about this point (sum (x - shift), sum (x - shift)(x - shift)^T):
        # the covariance then loses eps * |mean - shift|^2 / var, not eps * |mean|^2 / var.
        self._shift = np.zeros(p) if shift is None else np.asarray(shift, np.float64).reshape(p)
        if exact and self._shift.any():
            msg = "shift: exact (uint8) statistics are raw integer sums and take no shift"
            raise ValueError(msg)
        self.transform = transform
        self.skipped: list[str] = list(skipped)

    # -- construction ----------------------------------------------------------------------
    @classmethod
    def empty(
        cls,
        kernel_size: int,
        channels: int,
        *,
        stride: int = 1,
        padding: int = 0,
        exact: bool = True,
    ) -> PatchStats:
        """Statistics of no patches, to be filled with :meth:`update` or ``+``."""
        k = check_int("kernel_size", kernel_size, 1, MAX_STATS_KERNEL_SIZE)
        check_int("stride", stride, 1, MAX_STRIDE)
        check_int("padding", padding, 0, k - 1)
        check_int("channels", channels, 1, 2**16)
        p = channels * k * k
        dtype = np.uint64 if exact else np.float64
        return cls(
            kernel_size=k,
            stride=int(stride),
            padding=int(padding),
            channels=int(channels),
            exact=exact,
            count=0,
            n_images=0,
            sum=np.zeros(p, dtype),
            second_moment=np.zeros((p, p), dtype),
        )

    def update(
        self,
        x: Any,
        labels: Any = None,
        *,
        layout: str | None = None,
        method: str = "auto",
    ) -> PatchStats:
        """Add the patches of a batch of images (in place) and return ``self``.

        Parameters
        ----------
        x : ndarray or torch.Tensor
            ``(N, C, H, W)``, ``(N, H, W, C)`` or ``(N, H, W)``; ``uint8`` for exact statistics,
            else ``float32``/``float64``. A C-contiguous batch is read in place; any other view is
            copied in chunks of at most 32 MB, with the same result bit for bit.
        labels : array-like of int, optional
            One class per image; adds per-class patch counts and sums.
        layout : {"NCHW", "NHWC"}, optional
            See :func:`firstlayer.patch_stats` for the rule when omitted.
        method : {"auto", "direct", "shifted"}
            The Rust kernel; both give the same result (bit-identical for ``uint8``).
        """
        arr, lay = as_batch(x, layout)
        channels = arr.shape[1] if lay == "NCHW" else arr.shape[3]
        if channels != self.channels:
            msg = f"x: expected images with {self.channels} channels, got {channels} ({lay})"
            raise ValueError(msg)
        is_exact = arr.dtype == np.uint8
        if is_exact != self.exact:
            want = "uint8" if self.exact else "float32 or float64"
            msg = f"x: these statistics accumulate {want} images, got {arr.dtype}"
            raise TypeError(msg)
        if self.transform is not None:
            msg = "update: normalized statistics are derived; update the raw statistics instead"
            raise ValueError(msg)
        if method not in _METHODS:
            msg = f"method: expected one of {_METHODS}, got {method!r}"
            raise ValueError(msg)
        kk = self.kernel_size**2
        shift = None
        if not self.exact:
            if self.count == 0:
                # The first image's channel means, correctly rounded (fsum): the same bits for
                # either layout, and near the data wherever the data sits.
                first = arr[0] if lay == "NCHW" else np.moveaxis(arr[0], -1, 0)
                if np.all(np.isfinite(first)):
                    shift = np.array([math.fsum(ch.ravel().tolist()) / ch.size for ch in first])
                    spread = float(np.abs(first - shift[:, None, None]).max())
                    if 0 < spread < _FLOAT_TINY:
                        msg = (
                            f"x: pixels differ from their mean by at most {spread:.3g}, so their "
                            "squares underflow float64 and the covariance would be 0; rescale "
                            "the images (e.g. x / x.std())"
                        )
                        raise ValueError(msg)
                else:
                    shift = np.zeros(channels)  # the core names the NaN/Inf image
            else:
                shift = self._shift.reshape(channels, kk).mean(axis=1)
        lab = None
        n_classes = 0
        if labels is not None:
            lab = as_labels(labels, arr.shape[0])
            if int(lab.max()) >= MAX_CLASSES:
                msg = f"labels: expected class indices below {MAX_CLASSES}, got {int(lab.max())}"
                raise ValueError(msg)
            n_classes = max(int(lab.max()) + 1, len(self._class_counts))
        # The core allocates its partials before it reads a pixel: size them here, where a
        # refusal is a ValueError (an allocation failure in Rust aborts the interpreter).
        p = self.dim
        check_nbytes(
            "labels",
            _PARTIALS_ALIVE * 8 * (p * p + p + n_classes * (p + 1)),
            f"{n_classes:,} classes (largest label {n_classes - 1:,}) of {p}-dimensional patches",
        )
        raw = self._moments(arr, lay, lab, n_classes, method, shift)
        if not self.exact and not np.all(np.isfinite(raw["second_moment"])):
            msg = (
                "x: the squares of these pixels overflow float64 (values beyond about 1e154 "
                "from their mean); rescale the images (e.g. x / x.std())"
            )
            raise ValueError(msg)
        self._add_raw(
            raw["count"],
            arr.shape[0],
            raw["sum"],
            raw["second_moment"],
            raw["class_counts"] if lab is not None else None,
            raw["class_sums"] if lab is not None else None,
            None if shift is None else np.repeat(shift, kk),
        )
        return self

    def _moments(
        self,
        arr: np.ndarray,
        lay: str,
        lab: np.ndarray | None,
        n_classes: int,
        method: str,
        shift: np.ndarray | None,
    ) -> dict[str, Any]:
        """The core's raw moments of ``arr``; a non-contiguous view is copied in chunks.

        Chunks hold whole multiples of the core's float chunk and their moments are added in
        order, which is the core's own reduction, so the result has the bits of one call on
        the contiguous copy (``uint8`` sums are exact whatever the chunking).
        """
        chunk = image_chunk(arr, _FLOAT_CHUNK_IMAGES)
        if not self.exact and not arr.flags.c_contiguous:
            chunk = _FLOAT_CHUNK_IMAGES
        total: dict[str, Any] | None = None
        for i, part in contiguous_chunks(arr, chunk):
            raw = _core.patch_moments(
                part,
                layout=lay,
                kernel_size=self.kernel_size,
                stride=self.stride,
                padding=self.padding,
                labels=None if lab is None else lab[i : i + part.shape[0]],
                n_classes=n_classes,
                method=method,
                shift=None if shift is None else shift.tolist(),
            )
            if total is None:
                total = raw
                continue
            total["count"] += raw["count"]
            for key in ("sum", "second_moment", "class_counts", "class_sums"):
                total[key] = _add(total[key], raw[key], key)
        assert total is not None  # as_batch refuses empty batches
        return total

    def _add_raw(
        self,
        count: int,
        n_images: int,
        s: np.ndarray,
        m: np.ndarray,
        class_counts: np.ndarray | None,
        class_sums: np.ndarray | None,
        shift: np.ndarray | None = None,
    ) -> None:
        """Add moments taken about ``shift`` (float statistics) to these."""
        if shift is not None and not np.array_equal(shift, self._shift):
            if self.count == 0:
                self._shift = shift.copy()
            else:
                # Re-centre onto our shift: x - t = (x - s) + delta with delta = s - t.
                delta = shift - self._shift
                m = m + np.outer(delta, s) + np.outer(s, delta) + count * np.outer(delta, delta)
                s = s + count * delta
                if class_counts is not None and class_sums is not None:
                    class_sums = class_sums + class_counts.astype(np.float64)[:, None] * delta
        self._sum = _add(self._sum, s, "sum")
        self._second = _add(self._second, m, "second_moment")
        if class_counts is not None and class_sums is not None:
            n = max(len(self._class_counts), len(class_counts))
            self._class_counts = _add(_pad(self._class_counts, n), _pad(class_counts, n), "counts")
            self._class_sums = _add(_pad(self._class_sums, n), _pad(class_sums, n), "class sums")
        self.count += int(count)
        self.n_images += int(n_images)
        self.__dict__.pop("covariance", None)
        self.__dict__.pop("_pca", None)

    def merge(self, other: PatchStats) -> PatchStats:
        """Statistics of the union of both datasets (a new object); same as ``self + other``."""
        if not isinstance(other, PatchStats):
            msg = f"other: expected PatchStats, got {type(other).__name__}"
            raise TypeError(msg)
        mine = (self.kernel_size, self.stride, self.padding, self.channels, self.exact)
        theirs = (other.kernel_size, other.stride, other.padding, other.channels, other.exact)
        if mine != theirs or self.transform != other.transform:
            msg = (
                "other: cannot merge statistics of different windows or kinds: "
                f"(kernel_size, stride, padding, channels, exact) {mine} vs {theirs}"
            )
            raise ValueError(msg)
        out = self.copy()
        has_classes = len(other._class_counts) > 0
        out._add_raw(
            other.count,
            other.n_images,
            other._sum,
            other._second,
            other._class_counts if has_classes else None,
            other._class_sums if has_classes else None,
            other._shift,
        )
        out.skipped = self.skipped + other.skipped
        return out

    def __add__(self, other: PatchStats) -> PatchStats:
        return self.merge(other)

    def copy(self) -> PatchStats:
        """A deep copy."""
        return PatchStats(
            kernel_size=self.kernel_size,
            stride=self.stride,
            padding=self.padding,
            channels=self.channels,
            exact=self.exact,
            count=self.count,
            n_images=self.n_images,
            sum=self._sum.copy(),
            second_moment=self._second.copy(),
            class_counts=self._class_counts.copy(),
            class_sums=self._class_sums.copy(),
            transform=None if self.transform is None else dict(self.transform),
            skipped=self.skipped,
            shift=self._shift.copy(),
        )

    # -- raw statistics --------------------------------------------------------------------
    @property
    def dim(self) -> int:
        """Patch dimension ``p = C * k * k``."""
        return self.channels * self.kernel_size**2

    @property
    def sum(self) -> np.ndarray:
        """Sum of all patches, shape ``(p,)`` (``uint64`` when exact)."""
        if not self._shift.any():
            return _readonly(self._sum)
        return _readonly(self._sum + self.count * self._shift)

    @property
    def second_moment(self) -> np.ndarray:
        """``sum_n p_n p_n^T``, shape ``(p, p)`` (``uint64`` when exact)."""
        if not self._shift.any():
            return _readonly(self._second)
        sh, s = self._shift, self._sum
        outer = np.outer(sh, s)
        return _readonly(self._second + outer + outer.T + self.count * np.outer(sh, sh))

    @property
    def class_counts(self) -> np.ndarray:
        """Patches per class, shape ``(n_classes,)`` (empty without labels)."""
        return _readonly(self._class_counts)

    @property
    def class_sums(self) -> np.ndarray:
        """Sum of the patches of each class, shape ``(n_classes, p)``."""
        if not self._shift.any():
            return _readonly(self._class_sums)
        counts = self._class_counts.astype(np.float64)[:, None]
        return _readonly(self._class_sums + counts * self._shift)

    # -- derived statistics ----------------------------------------------------------------
    def _require_data(self) -> None:
        if self.count == 0:
            msg = "these statistics hold no patches yet; call update() with images first"
            raise ValueError(msg)

    @property
    def mean(self) -> np.ndarray:
        """Mean patch, shape ``(p,)``."""
        self._require_data()
        return self._shift + self._sum.astype(np.float64) / self.count

    @cached_property
    def covariance(self) -> np.ndarray:
        """Covariance of the patches (divided by the count), shape ``(p, p)``.

        Exact statistics are centred in integer arithmetic, ``(n M - s s^T) / n^2``, so the only
        rounding is the final division.
        """
        self._require_data()
        n = self.count
        if self.exact:
            s = self._sum.astype(object)
            centred = self._second.astype(object) * n - np.outer(s, s)
            cov = (centred / (n * n)).astype(np.float64)
        else:
            mu = self._sum / n  # the mean minus the shift: small
            cov = self._second / n - np.outer(mu, mu)
        cov = (cov + cov.T) / 2
        cov.flags.writeable = False
        return cov

    def pca(self) -> PCA:
        """Eigen-decomposition of the covariance, eigenvalues descending (computed once)."""
        return self._pca

    @cached_property
    def _pca(self) -> PCA:
        values, vectors = np.linalg.eigh(self.covariance)
        order = np.argsort(values)[::-1]
        values = np.clip(values[order], 0.0, None)
        vectors = vectors[:, order]
        flip = vectors[np.abs(vectors).argmax(axis=0), np.arange(vectors.shape[1])] < 0
        vectors[:, flip] *= -1
        values.flags.writeable = False
        vectors.flags.writeable = False
        return PCA(eigenvalues=values, components=vectors)

    def zca(self, eps: float = 1e-5) -> np.ndarray:
        """ZCA whitening matrix ``U diag((lambda + eps)^-1/2) U^T``, shape ``(p, p)``."""
        eps = check_float("eps", eps, 0)
        pca = self.pca()
        if eps == 0 and pca.eigenvalues.min() <= 0:
            msg = "eps: the covariance is singular; pass eps > 0"
            raise ValueError(msg)
        u = pca.components
        return (u / np.sqrt(pca.eigenvalues + eps)) @ u.T

    def normalized(self, mean: Any, std: Any, scale: float = 1 / 255) -> PatchStats:
        """Exact statistics of the images ``(x * scale - mean) / std`` (per channel).

        Derived from the raw moments by the affine map, without touching the data: use it for
        the patches "as the network saw them" (e.g. torchvision's normalisation).
        """
        self._require_data()
        mean_c = _per_channel("mean", mean, self.channels)
        std_c = _per_channel("std", std, self.channels)
        if np.any(std_c == 0):
            msg = f"std: expected non-zero values, got {std_c.tolist()}"
            raise ValueError(msg)
        if not np.isfinite(scale) or scale == 0:
            msg = f"scale: expected a finite non-zero number, got {scale}"
            raise ValueError(msg)
        kk = self.kernel_size**2
        d = np.repeat(scale / std_c, kk)
        o = np.repeat(-mean_c / std_c, kk)
        n = self.count
        # The result is kept about its own mean: sum 0, second moment n * covariance.
        mu = d * self.mean + o
        second = n * self.covariance * np.outer(d, d)
        counts = self._class_counts
        if self.exact:  # class sums minus count * mean, in exact integers before dividing
            dev = (
                self._class_sums.astype(object) * n
                - counts.astype(object)[:, None] * self._sum.astype(object)[None, :]
            ) / n
            dev = dev.astype(np.float64).reshape(-1, self.dim)
        else:
            dev = self._class_sums - counts.astype(np.float64)[:, None] * (self._sum / n)
        return PatchStats(
            kernel_size=self.kernel_size,
            stride=self.stride,
            padding=self.padding,
            channels=self.channels,
            exact=False,
            count=n,
            n_images=self.n_images,
            sum=np.zeros(self.dim),
            second_moment=second,
            class_counts=self._class_counts.copy(),
            class_sums=dev * d,
            transform={"mean": mean_c.tolist(), "std": std_c.tolist(), "scale": float(scale)},
            skipped=self.skipped,
            shift=mu,
        )

    @property
    def class_means(self) -> np.ndarray:
        """Mean patch of each class, shape ``(n_classes, p)``; NaN rows for empty classes."""
        counts = self._class_counts.astype(np.float64)[:, None]
        with np.errstate(invalid="ignore", divide="ignore"):
            means = self._shift + self._class_sums / np.maximum(counts, 1)
            return np.where(counts > 0, means, np.nan)

    def spectrum(self) -> np.ndarray:
        """Mean 2D DFT power of the patches per channel, ``E|DFT2(patch_c)|^2``, shape (C, k, k).

        Computed from the second moments, ``f^T (M_cc / n) conj(f)`` for each frequency's DFT
        vector ``f``, without transforming any patch (numpy's ``fft2`` convention).
        """
        self._require_data()
        k = self.kernel_size
        kk = k * k
        grid = np.arange(k)
        phase = np.exp(-2j * np.pi * np.outer(grid, grid) / k)  # (u, i)
        f = np.einsum("ui,vj->uvij", phase, phase).reshape(kk, kk)  # rows: frequencies
        out = np.empty((self.channels, k, k))
        second = self.covariance + np.outer(self.mean, self.mean)
        for c in range(self.channels):
            block = second[c * kk : (c + 1) * kk, c * kk : (c + 1) * kk]
            out[c] = np.einsum("fi,ij,fj->f", f, block, f.conj()).real.reshape(k, k)
        return out

    # -- persistence -----------------------------------------------------------------------
    def to_arrays(self) -> dict[str, np.ndarray]:
        """Everything these statistics hold, as named numpy arrays (what :meth:`save` writes).

        Exact sums stay ``uint64``; float moments are stored about ``shift``. The inverse is
        :meth:`from_arrays`.
        """
        transform = self.transform or {}
        return {
            "window": np.array([self.kernel_size, self.stride, self.padding, self.channels]),
            "exact": np.array(self.exact),
            "count": np.array(self.count, dtype=np.uint64),
            "n_images": np.array(self.n_images, dtype=np.uint64),
            "sum": self._sum,
            "second_moment": self._second,
            "class_counts": self._class_counts,
            "class_sums": self._class_sums,
            "transform": np.array(
                [transform.get("scale", np.nan)]
                + list(transform.get("mean", []))
                + list(transform.get("std", []))
            ),
            "skipped": np.array(self.skipped, dtype=str),
            "shift": self._shift,
        }

    @classmethod
    def from_arrays(
        cls,
        arrays: Mapping[str, np.ndarray],
        *,
        version: int = _VERSION,
        origin: str | os.PathLike[str] | None = None,
    ) -> PatchStats:
        """Statistics from the arrays of :meth:`to_arrays`, checked field by field.

        Parameters
        ----------
        arrays : mapping of str to numpy.ndarray
        version : int
            The format version the arrays follow; version 1 has no ``shift`` (raw moments).
        origin : str or path-like, optional
            The file the arrays were read from, named in error messages.

        Raises
        ------
        ValueError
            If a field is missing or has the wrong shape, dtype or value.
        """
        z = dict(arrays)
        k, stride, padding, channels = _validated(z, origin, version)
        t = z["transform"]
        transform = None
        if len(t) > 1:
            transform = {
                "mean": t[1 : 1 + channels].tolist(),
                "std": t[1 + channels :].tolist(),
                "scale": float(t[0]),
            }
        return cls(
            kernel_size=k,
            stride=stride,
            padding=padding,
            channels=channels,
            exact=bool(z["exact"]),
            count=int(z["count"]),
            n_images=int(z["n_images"]),
            sum=z["sum"],
            second_moment=z["second_moment"],
            class_counts=z["class_counts"],
            class_sums=z["class_sums"],
            transform=transform,
            skipped=[str(v) for v in z["skipped"].tolist()],
            shift=z.get("shift"),  # absent in version 1: raw moments
        )

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write a versioned, checksummed ``.npz`` (no pickle; exact sums stay ``uint64``)."""
        save_npz(path, _FORMAT, _VERSION, **self.to_arrays())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> PatchStats:
        """Read statistics written by :meth:`save`; damaged or foreign files raise ValueError."""
        z = load_npz(path, _FORMAT, (1, _VERSION))
        version = int(z.pop("__version__"))
        return cls.from_arrays(z, version=version, origin=path)

    # -- comparison and display ------------------------------------------------------------
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PatchStats):
            return NotImplemented
        return (
            (self.kernel_size, self.stride, self.padding, self.channels, self.exact)
            == (other.kernel_size, other.stride, other.padding, other.channels, other.exact)
            and (self.count, self.n_images, self.transform)
            == (other.count, other.n_images, other.transform)
            and np.array_equal(self._sum, other._sum)
            and np.array_equal(self._second, other._second)
            and np.array_equal(self._class_counts, other._class_counts)
            and np.array_equal(self._class_sums, other._class_sums)
            and np.array_equal(self._shift, other._shift)
        )

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        kind = "exact uint8 sums" if self.exact else "float64 sums"
        if self.transform is not None:
            kind += ", normalized"
        extra = f", classes={len(self._class_counts)}" if len(self._class_counts) else ""
        if self.skipped:
            extra += f", skipped={len(self.skipped)}"
        return (
            f"PatchStats(kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, channels={self.channels}, dim={self.dim}, "
            f"images={self.n_images:,}, patches={self.count:,}, {kind}{extra})"
        )

    def _repr_html_(self) -> str:
        """The key numbers as a table (how Jupyter shows the statistics)."""
        from firstlayer._display import html_table, stats_rows

        return html_table("PatchStats", stats_rows(self))

    def plot(self) -> Any:
        """The report's eigenspectrum figure (a matplotlib ``Figure``) of these statistics."""
        from firstlayer._display import stats_figure

        return stats_figure(self)


_FIELDS = {
    "window": (4,),
    "exact": (),
    "count": (),
    "n_images": (),
    "sum": None,
    "second_moment": None,
    "class_counts": None,
    "class_sums": None,
    "transform": None,
    "skipped": None,
}


def _validated(
    z: dict[str, np.ndarray], origin: str | os.PathLike[str] | None, version: int
) -> tuple[int, int, int, int]:
    """Check the fields of stored statistics (a file's checksum only proves it is unchanged)."""

    def bad(why: str) -> ValueError:
        if origin is None:
            return ValueError(f"arrays: not valid firstlayer.PatchStats arrays ({why})")
        return ValueError(f"{origin}: not a valid firstlayer.PatchStats file ({why})")

    missing = sorted(set(_FIELDS) - set(z))
    if missing:
        raise bad(f"missing fields {missing}")
    for key, shape in _FIELDS.items():
        if shape is not None and z[key].shape != shape:
            raise bad(f"field {key!r} has shape {z[key].shape}, expected {shape}")
    for key, kinds in (("window", "iu"), ("exact", "b"), ("count", "iu"), ("n_images", "iu")):
        if z[key].dtype.kind not in kinds:
            raise bad(f"field {key!r} has dtype {z[key].dtype}")
    k, stride, padding, channels = (int(v) for v in z["window"])
    if not (
        1 <= k <= MAX_STATS_KERNEL_SIZE
        and 1 <= stride <= MAX_STRIDE
        and 0 <= padding < k
        and 1 <= channels <= 2**16
    ):
        raise bad(f"window (kernel_size, stride, padding, channels) = {z['window'].tolist()}")
    p = channels * k * k
    want = np.uint64 if bool(z["exact"]) else np.float64
    for key, dims in (("sum", (p,)), ("second_moment", (p, p))):
        if z[key].shape != dims or z[key].dtype != want:
            raise bad(f"field {key!r} is {z[key].dtype}{z[key].shape}, expected {dims}")
    n_classes = len(z["class_counts"])
    if z["class_sums"].shape != (n_classes, p):
        raise bad(f"field 'class_sums' has shape {z['class_sums'].shape}")
    t = z["transform"]
    if t.ndim != 1 or t.dtype.kind != "f" or len(t) not in (1, 1 + 2 * channels):
        raise bad(f"field 'transform' is {t.dtype}{t.shape}, expected 1 or {1 + 2 * channels}")
    if version >= 2:
        shift = z.get("shift")
        if shift is None or shift.shape != (p,) or shift.dtype != np.float64:
            got = "missing" if shift is None else f"{shift.dtype}{shift.shape}"
            raise bad(f"field 'shift' is {got}, expected float64 ({p},)")
        if not np.all(np.isfinite(shift)) or (bool(z["exact"]) and shift.any()):
            raise bad("field 'shift' must be finite, and zero for exact statistics")
    else:
        z.pop("shift", None)  # version 1 had none: raw moments
    # Fields that contradict each other (a checksum only proves the file is unchanged since it
    # was written, not that its writer told the truth).
    count, n_images = int(z["count"]), int(z["n_images"])
    if n_images < 0 or count < n_images:
        raise bad(f"count {count} and n_images {n_images} contradict (each image gives a patch)")
    cc = z["class_counts"]
    if cc.dtype.kind not in "iu" or (cc.size and int(cc.astype(object).sum()) > count):
        raise bad("class_counts add up to more patches than count")
    m = z["second_moment"]
    if bool(z["exact"]):
        symmetric = np.array_equal(m, m.T)
        s = z["sum"]
        if s.size and (int(s.max()) > 255 * count or int(np.diagonal(m).max()) > 65025 * count):
            raise bad(f"sums larger than {count} patches of uint8 pixels can give")
    else:
        finite = all(np.all(np.isfinite(z[f])) for f in ("sum", "second_moment", "class_sums"))
        if not finite:
            raise bad("float sums hold NaN or infinity")
        scale = float(np.abs(np.diagonal(m)).max()) if m.size else 0.0
        symmetric = np.allclose(m, m.T, rtol=0, atol=1e-9 * scale)
    if not symmetric:
        raise bad("second_moment is not symmetric")
    return k, stride, padding, channels


def _readonly(a: np.ndarray) -> np.ndarray:
    v = a.view()
    v.flags.writeable = False
    return v


def _pad(a: np.ndarray, n: int) -> np.ndarray:
    if len(a) >= n:
        return a
    pad = [(0, n - len(a))] + [(0, 0)] * (a.ndim - 1)
    return np.pad(a, pad)


def _add(a: np.ndarray, b: np.ndarray, what: str) -> np.ndarray:
    """``a + b``; for uint64 sums, refuse to wrap around instead of silently overflowing."""
    if a.dtype == np.uint64 and b.size and np.any(b > _U64_MAX - a):
        msg = f"{what}: the exact uint64 accumulator would overflow; split the dataset"
        raise OverflowError(msg)
    return a + b
