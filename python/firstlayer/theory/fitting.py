"""Fitting the linear-CNN formula to a network's energy profile: choosing ``eta * t``.

Fitting the formula to a network means choosing ``t`` (for a given ``eta``; only ``eta * t``
matters, nearly) to maximise the Pearson correlation with the network's energy profile. The paper
loops over 19,960 step counts in Python (:func:`paper_fit_loop`, kept as the reference); :func:`fit`
evaluates a log grid of ``t`` as one array operation and refines around the best point.

(The module is ``fitting``, not ``fit``, so that ``firstlayer.theory.fit`` is only ever the
function.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from firstlayer._validate import check_finite, check_int
from firstlayer.profile import _as_float64
from firstlayer.theory.formula import _check_eta, _eigenvalues, linear_profile

__all__ = ["FitResult", "fit", "paper_fit_loop"]


@dataclass(frozen=True)
class FitResult:
    """Best fit of the linear-CNN formula to an energy profile.

    Attributes
    ----------
    t : float
        Fitted number of steps (for ``eta``); ``eta * t`` is what carries meaning.
    eta : float
        Step size used, in units of the eigenvalues.
    correlation : float
        Pearson correlation between the profile and the formula at ``t``.
    curve : numpy.ndarray
        (p,) max-normalised formula profile at ``t``.
    grid_t : numpy.ndarray
        Coarse log grid of step counts searched.
    grid_correlation : numpy.ndarray
        Correlation at each grid point (for plots of the fit landscape).
    """

    t: float
    eta: float
    correlation: float
    curve: np.ndarray
    grid_t: np.ndarray
    grid_correlation: np.ndarray

    @property
    def eta_t(self) -> float:
        """The product ``eta * t``, nearly all the formula depends on."""
        return self.eta * self.t

    def _repr_html_(self) -> str:
        """The key numbers as a table (how Jupyter shows the fit)."""
        from firstlayer._display import fit_rows, html_table

        return html_table("FitResult", fit_rows(self))

    def plot(self, profile: Any = None, title: str | None = None) -> Any:
        """The report's theory-fit figure (a matplotlib ``Figure``), with ``profile`` if given."""
        from firstlayer._display import fit_figure

        return fit_figure(self, profile, title)


def _fit_correlations(lam: np.ndarray, a: np.ndarray, ts: np.ndarray, yz: np.ndarray) -> np.ndarray:
    """Correlation of the formula at each of ``ts`` with a centred, unit-norm target ``yz``.

    The hot loop of :func:`fit`: two passes over an (n, p) array. Needs ``0 <= a <= 1``.
    """
    with np.errstate(divide="ignore"):
        log_keep = np.log1p(-a)  # (p,), -inf where a == 1
    weight = np.divide(lam, a, out=np.zeros_like(lam), where=a > 0)
    curves = np.expm1(np.multiply.outer(ts, log_keep))  # -(1 - (1 - a)^t)
    curves *= -weight
    # yz is centred, so the dot product needs no centring of the curves; the variance does.
    # einsum, not BLAS: for these small shapes BLAS thread start-up costs more than the work.
    dots = np.einsum("ij,j->i", curves, yz)
    total = curves.sum(axis=1)
    var = np.einsum("ij,ij->i", curves, curves) - total * total / curves.shape[1]
    norm = np.sqrt(np.maximum(var, 0.0))
    return np.divide(dots, norm, out=np.full_like(dots, -np.inf), where=norm > 0)


def fit(
    profile: Any,
    stats: Any,
    *,
    eta: float | None = None,
    t_range: tuple[float, float] | None = None,
    n_grid: int = 256,
    refine: int = 3,
    n_components: int | None = None,
) -> FitResult:
    """Fit the linear-CNN formula to an energy profile by choosing the number of steps.

    The formula is evaluated for every point of a log-spaced grid of ``t`` at once, the best grid
    point is bracketed by its neighbours, and the bracket is searched again on a finer log grid
    ``refine`` times.

    Parameters
    ----------
    profile : array_like
        (p,) energy profile of a network in the PCA basis of ``stats`` (components in descending
        eigenvalue order), e.g. from :func:`firstlayer.energy_profile`.
    stats : PatchStats, PCA result or array_like
        The patch statistics (or their (p,) eigenvalues ``lambda_i^2``).
    eta : float, optional
        Step size in units of the eigenvalues; default ``0.01 / max(eigenvalues)``. Only ``eta * t``
        matters, nearly, so fixing ``eta`` across datasets (as the paper does) makes ``t``
        comparable.
    t_range : (float, float), optional
        Search range of ``t``; default from ``0.01 / a_max`` (profile still ~ sqrt(eigenvalue))
        to ``100 / a_min`` (fully whitened), with ``a = eta * eigenvalue``.
    n_grid : int
        Number of points of the coarse log grid.
    refine : int
        Number of refinement rounds (each a 33-point log grid within the bracket).
    n_components : int, optional
        Fit only the first components (e.g. to leave out a noisy tail).

    Returns
    -------
    FitResult
        ``.t``, ``.correlation``, ``.curve`` (max-normalised formula at ``t``) and the grid.

    Raises
    ------
    ValueError
        If the profile and the eigenvalues differ in length, the profile is constant, or an
        argument is out of range.

    Examples
    --------
    >>> import numpy as np
    >>> ev = 1.0 / np.arange(1, 28) ** 2
    >>> r = fit(linear_profile(ev, 0.5, 300.0), ev, eta=0.5)
    >>> round(r.t), round(r.correlation, 6)
    (300, 1.0)
    """
    ev_all = _eigenvalues(stats, "stats")
    y_all = check_finite("profile", _as_float64(profile, "profile").ravel())
    if y_all.size != ev_all.size:
        msg = (
            f"profile: expected {ev_all.size} values, one per PCA component of the statistics, "
            f"got {y_all.size}"
        )
        raise ValueError(msg)
    m = ev_all.size
    if n_components is not None:
        m = check_int("n_components", n_components, 2, ev_all.size)
    if not 2 <= m <= ev_all.size:
        msg = f"n_components: expected 2..{ev_all.size}, got {n_components}"
        raise ValueError(msg)
    ev, y = ev_all[:m], y_all[:m]
    yc = y - y.mean()
    ynorm = float(np.sqrt(yc @ yc))
    if ynorm == 0:
        msg = "profile: expected a non-constant profile to fit, got a constant one"
        raise ValueError(msg)
    yz = yc / ynorm
    if eta is None:
        # Small enough that (1 - a)^t ~ exp(-a t): the fit then depends on eta * t only.
        eta = 0.01 / float(ev.max()) if ev.max() > 0 else 1.0
    eta = _check_eta(eta, ev)
    a = eta * ev
    if t_range is None:
        positive = a[a > 0]
        if positive.size == 0:
            msg = "stats: expected at least one positive eigenvalue, got none"
            raise ValueError(msg)
        a_min = max(float(positive.min()), float(positive.max()) * 1e-14)
        t_range = (0.01 / float(positive.max()), 100.0 / a_min)
    lo, hi = float(t_range[0]), float(t_range[1])
    if not 0 < lo < hi or not np.isfinite(hi):
        msg = f"t_range: expected 0 < low < high, got {t_range}"
        raise ValueError(msg)
    if n_grid < 3:
        msg = f"n_grid: expected at least 3 grid points, got {n_grid}"
        raise ValueError(msg)
    if a.max() > 1.0:
        msg = "eta: fit needs eta * max eigenvalue <= 1 (monotone gradient descent)"
        raise ValueError(msg)
    lam = np.sqrt(ev)

    def corr_at(ts: np.ndarray) -> np.ndarray:
        # Correlation is scale-free, so the curves need no max-normalisation here.
        return _fit_correlations(lam, a, ts, yz)

    grid_t = np.geomspace(lo, hi, n_grid)
    grid_r = corr_at(grid_t)
    best = int(np.argmax(grid_r))
    t_best, r_best = float(grid_t[best]), float(grid_r[best])
    left, right = grid_t[max(best - 1, 0)], grid_t[min(best + 1, n_grid - 1)]
    for _ in range(max(int(refine), 0)):
        ts = np.geomspace(left, right, 33)
        rs = corr_at(ts)
        i = int(np.argmax(rs))
        if rs[i] > r_best:
            t_best, r_best = float(ts[i]), float(rs[i])
        left, right = ts[max(i - 1, 0)], ts[min(i + 1, ts.size - 1)]
    curve = linear_profile(ev_all, eta, t_best)
    return FitResult(
        t=t_best,
        eta=eta,
        correlation=r_best,
        curve=curve,
        grid_t=grid_t,
        grid_correlation=grid_r,
    )


def paper_fit_loop(
    model_profile: Any,
    lambdas: Any,
    lambda_squared: Any,
    n_images: int,
    *,
    eta: float = 1e-7,
    t_start: int = 10_000,
    t_stop: int = 5_000_000,
    t_step: int = 250,
) -> tuple[np.ndarray, float, int]:
    """The paper's fitting procedure, one Python iteration per candidate step count.

    Kept as the reference and benchmark peer of :func:`fit`. ``lambdas`` are the singular values
    ``S_i`` of the centred patch matrix (``torch.pca_lowrank``), ``lambda_squared = S_i^2``, and
    ``a_i = eta * S_i^2 / (2 * n_images)``. The default grid has 19,960 step counts.

    Parameters
    ----------
    model_profile : array_like
        (p,) energy profile to fit.
    lambdas, lambda_squared : array_like
        (p,) singular values and their squares.
    n_images : int
        Number of images the patches came from.
    eta : float
        The paper's constant learning rate.
    t_start, t_stop, t_step : int
        ``range(t_start, t_stop, t_step)`` of step counts.

    Returns
    -------
    curve : numpy.ndarray
        Best max-normalised formula profile (zeros when no correlation is positive).
    correlation : float
        Its Pearson correlation with ``model_profile`` (0.0 when none is positive).
    t : int
        Its step count (0 when none is positive).
    """
    profile = check_finite("model_profile", _as_float64(model_profile, "model_profile"))
    s = np.asarray(lambdas, dtype=np.float64)
    s2 = np.asarray(lambda_squared, dtype=np.float64)
    a = eta * s2 / (2 * n_images)
    best_curve, best_corr, best_t = np.zeros_like(profile), 0.0, 0
    for t in range(t_start, t_stop, t_step):
        curve = np.abs(s * (1 - (1 - a) ** t) / a)
        curve = curve / curve.max()
        corr = np.corrcoef(profile, curve)[0, 1]
        if corr > best_corr:
            best_curve, best_corr, best_t = curve, float(corr), t
    return best_curve, best_corr, best_t
