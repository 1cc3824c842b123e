"""Energy profiles of first-layer filter banks (Chowers & Weiss, Def. 2.2) and their comparison.

A filter bank ``W`` of shape ``(F, C, k, k)`` is flattened to ``(F, p)`` in the order of
``conv.weight.flatten(1)``, which is also the order of firstlayer's patches. Its energy along an
orthonormal direction ``u`` is ``sqrt(mean_f (W_f . u)^2)``; the *profile* is that energy for every
direction of a basis:

* ``basis="pca"``: the principal components of the patches the network saw (the paper's measure);
* ``basis="dft"``: the 2D discrete Fourier modes of the ``k x k`` grid, per input channel
  (firstlayer's frequency view, an extension of the paper);
* an explicit ``(p, m)`` array whose columns are the directions.

This module needs numpy only; tensors are accepted and converted without importing torch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from firstlayer._arrays import as_numpy, is_torch_tensor
from firstlayer._numeric import pearson

__all__ = [
    "DFTProfile",
    "correlation_matrix",
    "dft_profile",
    "energy_profile",
    "pca_basis",
    "profile_correlation",
    "radial_average",
]

Normalize = Literal["max", "sum", "l2"] | None


def _host_array(x: Any, name: str) -> np.ndarray:
    """A numpy view of an array, or of a tensor on any device, in its own precision.

    Weights, profiles and eigenvalues are small, so a tensor is read wherever it lives: the
    ``detach().cpu()`` here is the one explicit copy off a device, then
    :func:`firstlayer._arrays.as_numpy`. Half precision (numpy has no bfloat16) is widened to
    float64 on the torch side, which is exact.
    """
    if not is_torch_tensor(x):
        return as_numpy(x, name)
    t = x.detach().cpu()
    if str(t.dtype) in ("torch.float16", "torch.bfloat16"):
        t = t.double()
    return as_numpy(t, name)


def _as_float64(x: Any, name: str) -> np.ndarray:
    """``x`` as a float64 numpy array (no copy when it already is one).

    Arrays, tensors on any device (see :func:`_host_array`), lists and numbers.
    """
    if isinstance(x, list | tuple | int | float | np.number):
        x = np.asarray(x)
    x = _host_array(x, name)
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        msg = f"{name}: expected a real numeric array, got dtype {x.dtype}"
        raise TypeError(msg)
    return np.asarray(x, dtype=np.float64)


def _as_filter_bank(weights: Any, name: str = "weights") -> np.ndarray:
    """Validate a filter bank and return it as float64 ``(F, C, kh, kw)``."""
    w = _as_float64(weights, name)
    if w.ndim == 3:  # (F, k, k): single-channel filters
        w = w[:, None]
    if w.ndim != 4:
        msg = f"{name}: expected shape (F, C, k, k) or (F, k, k), got {tuple(w.shape)}"
        raise ValueError(msg)
    if w.shape[0] == 0 or w.size == 0:
        msg = f"{name}: expected at least one non-empty filter, got shape {tuple(w.shape)}"
        raise ValueError(msg)
    if not np.all(np.isfinite(w)):
        msg = f"{name}: expected finite values, got NaN or infinity"
        raise ValueError(msg)
    return w


def _subtract_init(w: np.ndarray, init: Any) -> np.ndarray:
    if init is None:
        return w
    w0 = _as_filter_bank(init, "init")
    if w0.shape != w.shape:
        msg = f"init: expected the shape of weights {tuple(w.shape)}, got {tuple(w0.shape)}"
        raise ValueError(msg)
    return w - w0


def _scale(e: np.ndarray, normalize: Normalize) -> np.ndarray:
    """The divisor that ``normalize`` applies along the last axis of ``e``."""
    if normalize == "max":
        return np.max(np.abs(e), axis=-1, keepdims=True)
    if normalize == "sum":
        return np.sum(np.abs(e), axis=-1, keepdims=True)
    if normalize == "l2":
        return np.sqrt(np.sum(e * e, axis=-1, keepdims=True))
    msg = f"normalize: expected 'max', 'sum', 'l2' or None, got {normalize!r}"
    raise ValueError(msg)


def _normalize(e: np.ndarray, normalize: Normalize) -> np.ndarray:
    """Normalise along the last axis; an all-zero profile stays zero rather than NaN."""
    if normalize is None:
        return e
    scale = _scale(e, normalize)
    return np.divide(e, scale, out=np.zeros_like(e), where=scale > 0)


def pca_basis(stats: Any) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues and components of the patch covariance held by ``stats``.

    Parameters
    ----------
    stats : PatchStats, PCA result, or (eigenvalues, components)
        A :class:`firstlayer.PatchStats` (its ``pca()`` is used), any object with
        ``eigenvalues`` (p,) and ``components`` (p, p) attributes, or such a pair.

    Returns
    -------
    eigenvalues : numpy.ndarray
        (p,) per-patch variances in descending order (the paper's ``lambda_i^2``).
    components : numpy.ndarray
        (p, p) orthonormal components as columns, in patch order (c, i, j).

    Raises
    ------
    TypeError
        If ``stats`` is none of the above.
    ValueError
        If the shapes disagree.
    """
    if hasattr(stats, "pca") and callable(stats.pca):
        stats = stats.pca()
    if hasattr(stats, "eigenvalues") and hasattr(stats, "components"):
        ev, comps = stats.eigenvalues, stats.components
    elif isinstance(stats, tuple) and len(stats) == 2:
        ev, comps = stats
    else:
        msg = (
            "stats: expected a PatchStats, a PCA result or an (eigenvalues, components) pair, "
            f"got {type(stats).__name__}"
        )
        raise TypeError(msg)
    ev = _as_float64(ev, "stats.eigenvalues").ravel()
    comps = _as_float64(comps, "stats.components")
    if comps.ndim != 2 or comps.shape[0] != ev.size or comps.shape[1] != ev.size:
        msg = (
            f"stats: expected components of shape ({ev.size}, {ev.size}) for {ev.size} "
            f"eigenvalues, got {tuple(comps.shape)}"
        )
        raise ValueError(msg)
    return ev, comps


def _stats_geometry(stats: Any) -> tuple[int, int] | None:
    """(channels, kernel_size) of a PatchStats, when it says so."""
    c, k = getattr(stats, "channels", None), getattr(stats, "kernel_size", None)
    if isinstance(c, (int, np.integer)) and isinstance(k, (int, np.integer)):
        return int(c), int(k)
    return None


def energy_profile(
    weights: Any,
    stats: Any = None,
    *,
    basis: Literal["pca", "dft"] | np.ndarray = "pca",
    init: Any = None,
    normalize: Normalize = "max",
    squared: bool = False,
) -> np.ndarray:
    """Energy profile of a filter bank along the directions of a basis.

    For directions ``u_i`` the profile is ``e_i = sqrt((1/F) sum_f (w_f . u_i)^2)`` (Def. 2.2 of
    Chowers & Weiss). It is invariant to permuting, rescaling and orthogonally mixing the filters.

    Parameters
    ----------
    weights : array_like or torch.Tensor
        (F, C, k, k) first-layer weights, or (F, k, k) for one channel.
    stats : PatchStats, optional
        Statistics of the patches *as the network saw them* (after its input normalisation, see
        ``PatchStats.normalized``). Required for ``basis="pca"``; checked against the weights'
        shape when given.
    basis : {"pca", "dft"} or numpy.ndarray
        ``"pca"``: the patch principal components, most variance first (the paper's measure).
        ``"dft"``: orthonormal 2D DFT modes per channel, ordered (c, u, v) as ``numpy.fft.fft2``
        lays out frequencies (see :func:`dft_profile` for the structured view). An array: (p, m)
        directions as columns.
    init : array_like or torch.Tensor, optional
        Initial weights, subtracted first (recommended whenever they are known).
    normalize : {"max", "sum", "l2", None}
        Divide by the maximum (the paper's convention), the sum, the Euclidean norm, or nothing.
    squared : bool
        Return ``e_i^2`` (mean squared projection) instead of ``e_i``.

    Returns
    -------
    numpy.ndarray
        (m,) float64 profile, one value per basis direction.

    Raises
    ------
    ValueError
        If shapes disagree (weights versus statistics or basis, init versus weights).
    TypeError
        If an argument has the wrong type.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> w = rng.normal(size=(64, 3, 3, 3))
    >>> energy_profile(w, basis=np.eye(27)).shape
    (27,)
    """
    w = _subtract_init(_as_filter_bank(weights), init)
    f, c, kh, kw = w.shape
    flat = w.reshape(f, -1)
    geom = _stats_geometry(stats) if stats is not None else None
    if geom is not None and (c, kh, kw) != (geom[0], geom[1], geom[1]):
        msg = (
            f"weights: expected shape (F, {geom[0]}, {geom[1]}, {geom[1]}) to match the patch "
            f"statistics (channels={geom[0]}, kernel_size={geom[1]}), got {tuple(w.shape)}"
        )
        raise ValueError(msg)
    if isinstance(basis, str) and basis == "dft":
        # Orthonormal DFT: Parseval keeps the total energy equal to that of the PCA view.
        coeffs = np.fft.fft2(w, norm="ortho").reshape(f, -1)
        power = np.mean(np.abs(coeffs) ** 2, axis=0)
    else:
        if isinstance(basis, str):
            if basis != "pca":
                msg = f"basis: expected 'pca', 'dft' or a (p, m) array, got {basis!r}"
                raise ValueError(msg)
            if stats is None:
                msg = "stats: basis='pca' needs the patch statistics, got None"
                raise ValueError(msg)
            _, u = pca_basis(stats)
        else:
            u = _as_float64(basis, "basis")
        if u.ndim != 2 or u.shape[0] != flat.shape[1]:
            msg = (
                f"basis: expected shape ({flat.shape[1]}, m) for filters of {flat.shape[1]} "
                f"values (C*k*k), got {tuple(u.shape)}"
            )
            raise ValueError(msg)
        power = np.mean((flat @ u) ** 2, axis=0)
    e = power if squared else np.sqrt(power)
    return _normalize(e, normalize)


@dataclass(frozen=True)
class DFTProfile:
    """Energy of a filter bank per 2D spatial frequency (firstlayer's frequency view).

    Attributes
    ----------
    per_channel : numpy.ndarray
        (C, k, k) energy ``sqrt(mean_f |fft2(w_f[c])|^2)`` (orthonormal DFT) per input channel, in
        ``numpy.fft.fft2`` frequency order (zero frequency at ``[:, 0, 0]``).
    total : numpy.ndarray
        (k, k) energy summed over channels: ``sqrt(sum_c per_channel[c]^2)``.
    frequencies : tuple of numpy.ndarray
        ``(fy, fx)``: ``numpy.fft.fftfreq(k)`` in cycles per pixel along rows and columns.
    radii : numpy.ndarray
        Distinct radial frequencies ``sqrt(fy^2 + fx^2)``, ascending.
    radial : numpy.ndarray
        (len(radii),) radial average of ``total`` (power averaged over each ring, then rooted).
    """

    per_channel: np.ndarray
    total: np.ndarray
    frequencies: tuple[np.ndarray, np.ndarray]
    radii: np.ndarray
    radial: np.ndarray

    def _repr_html_(self) -> str:
        """The key numbers as a table (how Jupyter shows the profile)."""
        from firstlayer._display import dft_rows, html_table

        return html_table("DFTProfile", dft_rows(self))

    def plot(self, title: str = "DFT energy of the filters") -> Any:
        """The report's DFT figure (a matplotlib ``Figure``): per channel, summed, radial."""
        from firstlayer._display import dft_figure

        return dft_figure(self, title)


def radial_average(power: Any, *, decimals: int = 9) -> tuple[np.ndarray, np.ndarray]:
    """Average a (…, kh, kw) map in ``numpy.fft`` frequency order over rings of equal radius.

    Parameters
    ----------
    power : array_like
        (..., kh, kw) values per 2D frequency, zero frequency at ``[..., 0, 0]``.
    decimals : int
        Radii equal after rounding to this many decimals share a ring.

    Returns
    -------
    radii : numpy.ndarray
        (R,) distinct radii in cycles per pixel, ascending.
    values : numpy.ndarray
        (..., R) mean of ``power`` over each ring.

    Raises
    ------
    ValueError
        If ``power`` has fewer than two dimensions.
    """
    a = _as_float64(power, "power")
    if a.ndim < 2:
        msg = f"power: expected shape (..., kh, kw), got {tuple(a.shape)}"
        raise ValueError(msg)
    kh, kw = a.shape[-2:]
    fy, fx = np.fft.fftfreq(kh), np.fft.fftfreq(kw)
    r = np.round(np.hypot(fy[:, None], fx[None, :]), decimals).ravel()
    radii, ring = np.unique(r, return_inverse=True)
    flat = a.reshape(*a.shape[:-2], kh * kw)
    sums = np.zeros((*a.shape[:-2], radii.size))
    for j in range(radii.size):  # R is at most k*k: a few dozen rings
        sums[..., j] = flat[..., ring == j].mean(axis=-1)
    return radii, sums


def dft_profile(weights: Any, *, init: Any = None, normalize: Normalize = "max") -> DFTProfile:
    """Energy of a filter bank per 2D spatial frequency, per channel, summed, and radially averaged.

    This is not the paper's measure but its interpretation made direct: the PCA components of
    natural-image patches are close to Fourier modes.

    Parameters
    ----------
    weights : array_like or torch.Tensor
        (F, C, k, k) filters (or (F, k, k)).
    init : array_like or torch.Tensor, optional
        Initial weights to subtract.
    normalize : {"max", "sum", "l2", None}
        Applied to ``total`` and ``radial`` each by their own maximum (or sum / norm), and to
        ``per_channel`` by the scale of ``total`` so channels stay comparable.

    Returns
    -------
    DFTProfile

    Raises
    ------
    ValueError
        If the weights are not a filter bank or ``init`` has another shape.

    Examples
    --------
    >>> import numpy as np
    >>> w = np.zeros((1, 1, 3, 3)); w[0, 0, 1, 1] = 1.0  # a delta: flat spectrum
    >>> np.allclose(dft_profile(w).total, 1.0)
    True
    """
    w = _subtract_init(_as_filter_bank(weights), init)
    power = np.mean(np.abs(np.fft.fft2(w, norm="ortho")) ** 2, axis=0)  # (C, kh, kw)
    total_power = power.sum(axis=0)
    radii, radial_power = radial_average(total_power)
    total = np.sqrt(total_power)
    per_channel = np.sqrt(power)
    if normalize is not None:
        # One divisor for both, taken from the summed map, so channels stay comparable.
        divisor = float(_scale(total.ravel(), normalize)[0])
        if divisor > 0:
            per_channel = per_channel / divisor
            total = total / divisor
    radial = _normalize(np.sqrt(radial_power), normalize)
    kh, kw = w.shape[-2:]
    return DFTProfile(
        per_channel=per_channel,
        total=total,
        frequencies=(np.fft.fftfreq(kh), np.fft.fftfreq(kw)),
        radii=radii,
        radial=radial,
    )


def profile_correlation(a: Any, b: Any) -> float:
    """Pearson correlation of two profiles (the paper's similarity measure).

    Parameters
    ----------
    a, b : array_like
        Profiles of equal length.

    Returns
    -------
    float
        Correlation in [-1, 1]; 0.0 when either profile is constant.

    Raises
    ------
    ValueError
        If the lengths differ or a profile has fewer than two values.
    """
    x, y = _as_float64(a, "a").ravel(), _as_float64(b, "b").ravel()
    if x.size != y.size:
        msg = f"b: expected a profile of length {x.size} like a, got length {y.size}"
        raise ValueError(msg)
    if x.size < 2:
        msg = f"a: expected at least 2 values to correlate, got {x.size}"
        raise ValueError(msg)
    # Clipped like correlation_matrix: rounding never takes |r| past 1.
    return float(np.clip(pearson(x, y), -1.0, 1.0))


def correlation_matrix(
    profiles: Sequence[Any] | Mapping[str, Any] | np.ndarray,
) -> np.ndarray:
    """Pearson correlations between every pair of profiles.

    Parameters
    ----------
    profiles : sequence of array_like, mapping of name to array_like, or (n, m) array
        ``n`` profiles of the same length ``m``; a mapping keeps its key order.

    Returns
    -------
    numpy.ndarray
        (n, n) symmetric matrix with ones on the diagonal; a constant profile correlates 0 with
        every other.

    Raises
    ------
    ValueError
        If profiles differ in length.
    """
    items = list(profiles.values()) if isinstance(profiles, Mapping) else list(profiles)
    rows = [_as_float64(p, f"profiles[{i}]").ravel() for i, p in enumerate(items)]
    if not rows:
        msg = "profiles: expected at least one profile, got none"
        raise ValueError(msg)
    for i, r in enumerate(rows):
        if r.size != rows[0].size:
            msg = f"profiles[{i}]: expected length {rows[0].size} like profiles[0], got {r.size}"
            raise ValueError(msg)
    x = np.stack(rows)
    x = x - x.mean(axis=1, keepdims=True)
    norm = np.sqrt(np.sum(x * x, axis=1))
    z = np.divide(x, norm[:, None], out=np.zeros_like(x), where=norm[:, None] > 0)
    r = np.clip(z @ z.T, -1.0, 1.0)
    np.fill_diagonal(r, 1.0)
    return r
