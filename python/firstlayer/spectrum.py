"""Fourier views: a batched 2D DFT, and mean power spectra of whole images.

Natural images have power spectra close to ``1/f^alpha`` with ``alpha`` near 2; the PCA
components of their patches are close to Fourier modes. ``ImageSpectrum`` accumulates the mean
power spectrum of a dataset exactly like ``PatchStats`` accumulates moments: streamable with
:meth:`ImageSpectrum.update`, mergeable with ``+``.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from firstlayer import _core
from firstlayer._arrays import as_batch, as_contiguous, as_numpy, is_torch_tensor
from firstlayer._io import load_npz, save_npz
from firstlayer._validate import check_optional_int

_FORMAT = "firstlayer.ImageSpectrum"
_VERSION = 1


def dft2(x: Any) -> np.ndarray:
    """2D DFT over the last two axes (numpy's ``fft2`` convention), computed in Rust.

    Parameters
    ----------
    x : array-like or torch.Tensor, shape (..., H, W)
        Filter banks ``(F, C, k, k)``, patch batches ``(n, C, k, k)`` or images. Converted to
        ``float64`` (one copy unless it already is).

    Returns
    -------
    ndarray of complex128, same shape as ``x``.
    """
    arr = np.asarray(as_numpy(x) if is_torch_tensor(x) else x)
    if arr.ndim < 2:
        msg = f"x: expected at least 2 dimensions (..., H, W), got shape {arr.shape}"
        raise ValueError(msg)
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        msg = f"x: expected real numbers, got dtype {arr.dtype}"
        raise TypeError(msg)
    if arr.size == 0:
        msg = f"x: expected a non-empty array, got shape {arr.shape}"
        raise ValueError(msg)
    flat = np.ascontiguousarray(arr, dtype=np.float64).reshape(-1, *arr.shape[-2:])
    return _core.dft2(flat).reshape(arr.shape)


class ImageSpectrum:
    """Mean 2D power spectrum ``E|DFT2(x_c)|^2`` of images of one size, per channel.

    Attributes
    ----------
    count : int
        Number of images accumulated.
    power_sum : ndarray, shape (C, H, W)
        Sum over images of the power spectra (numpy's unshifted frequency order).
    """

    def __init__(self, power_sum: np.ndarray, count: int) -> None:
        self.power_sum = np.asarray(power_sum, dtype=np.float64)
        self.count = int(count)

    @property
    def channels(self) -> int:
        return self.power_sum.shape[0]

    @property
    def shape(self) -> tuple[int, int]:
        """Image size ``(H, W)``."""
        return self.power_sum.shape[1], self.power_sum.shape[2]

    @property
    def power(self) -> np.ndarray:
        """Mean power spectrum per channel, shape (C, H, W)."""
        if self.count == 0:
            msg = "this spectrum holds no images yet; call update() first"
            raise ValueError(msg)
        return self.power_sum / self.count

    def update(self, x: Any, *, layout: str | None = None) -> ImageSpectrum:
        """Add a batch of images (in place) and return ``self``."""
        arr, lay = as_batch(x, layout)
        arr = as_contiguous(arr)  # a view: one copy
        part = _core.image_power_sum(arr, layout=lay)
        if self.count and part.shape != self.power_sum.shape:
            msg = (
                f"x: expected images of {self.channels} channels and size {self.shape}, "
                f"got {part.shape[0]} channels of {part.shape[1:]}; resize or crop them first"
            )
            raise ValueError(msg)
        self.power_sum = part if self.count == 0 else self.power_sum + part
        self.count += arr.shape[0]
        return self

    def __add__(self, other: ImageSpectrum) -> ImageSpectrum:
        if not isinstance(other, ImageSpectrum):
            return NotImplemented
        if other.power_sum.shape != self.power_sum.shape:
            msg = f"other: spectra of shapes {self.power_sum.shape} and {other.power_sum.shape}"
            raise ValueError(msg)
        return ImageSpectrum(self.power_sum + other.power_sum, self.count + other.count)

    def radial(self, n_bins: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Radial average of the power (all channels summed).

        Returns ``(f, power)``: the mean radial frequency of each bin, in cycles per pixel in
        ``(0, 0.5]``, and the mean power of the frequencies in it (DC and the corners beyond
        Nyquist excluded). Using each bin's mean frequency rather than its centre keeps the
        ``1/f^alpha`` fit unbiased at low frequencies, where bins hold few, spread-out points.
        """
        h, w = self.shape
        fy, fx = np.meshgrid(np.fft.fftfreq(h), np.fft.fftfreq(w), indexing="ij")
        radius = np.hypot(fy, fx)
        n_bins = check_optional_int("n_bins", n_bins, 1) or max(2, min(h, w) // 2)
        edges = np.linspace(0, 0.5, n_bins + 1)
        total = self.power.sum(axis=0)
        keep = (radius > 0) & (radius <= 0.5)
        idx = np.clip(np.digitize(radius[keep], edges) - 1, 0, n_bins - 1)
        sums = np.bincount(idx, weights=total[keep], minlength=n_bins)
        counts = np.bincount(idx, minlength=n_bins)
        freqs = np.bincount(idx, weights=radius[keep], minlength=n_bins)
        ok = counts > 0
        return freqs[ok] / counts[ok], sums[ok] / counts[ok]

    @property
    def alpha(self) -> float:
        """Exponent of the least-squares fit ``power ~ f^-alpha`` over the radial average."""
        f, p = self.radial()
        ok = p > 0
        if ok.sum() < 2:
            msg = "alpha: need at least two frequency bins with power (images too small)"
            raise ValueError(msg)
        slope = np.polyfit(np.log(f[ok]), np.log(p[ok]), 1)[0]
        return float(-slope)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write a versioned, checksummed ``.npz``."""
        save_npz(path, _FORMAT, _VERSION, power_sum=self.power_sum, count=np.array(self.count))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ImageSpectrum:
        z = load_npz(path, _FORMAT, _VERSION)
        return cls(z["power_sum"], int(z["count"]))

    def __repr__(self) -> str:
        h, w = self.shape
        return f"ImageSpectrum(channels={self.channels}, size={h}x{w}, images={self.count:,})"


def image_spectrum(x: Any, *, layout: str | None = None) -> ImageSpectrum:
    """Mean 2D power spectrum of a batch of images, per channel (see :class:`ImageSpectrum`).

    Examples
    --------
    >>> import numpy as np, firstlayer
    >>> x = np.random.default_rng(0).integers(0, 256, (4, 3, 32, 32), dtype=np.uint8)
    >>> firstlayer.image_spectrum(x).power.shape
    (3, 32, 32)
    """
    arr, lay = as_batch(x, layout)
    arr = as_contiguous(arr)  # a view: one copy
    return ImageSpectrum(_core.image_power_sum(arr, layout=lay), arr.shape[0])
