"""The linear-CNN theory of Chowers & Weiss (Theorem 4.2): closed form, fit, and a real simulation.

Gradient descent from a near-zero init on a linear CNN (convolution, global average pool, MSE)
moves its filters along PCA component ``i`` of the patches by

    g_i(t) = lambda_i * (1 - (1 - a_i)^t) / a_i,     a_i = eta * lambda_i^2,

where ``lambda_i^2`` is the per-patch variance along component ``i`` (``PatchStats.pca()``
eigenvalue). Early on ``g ~ t * lambda`` (sensitivity follows the patch energy); as ``t`` grows the
components with ``a_i t >> 1`` reach ``1 / (eta * lambda_i)``, i.e. they are whitened. The paper's
printed ``eta^2`` in the denominator is a constant and vanishes in the max-normalised profile.

Fitting the formula to a network means choosing ``t`` (for a given ``eta``; only ``eta * t``
matters, nearly) to maximise the Pearson correlation with the network's energy profile. The paper
loops over 19,960 step counts in Python (:func:`paper_fit_loop`, kept as the reference); :func:`fit`
evaluates a log grid of ``t`` as one array operation and refines around the best point.

:func:`simulate_linear_cnn` trains the theorem's network itself in PyTorch on real patches and
scores the formula along the whole trajectory, next to the exact gradient-descent solution and a
measure of the theorem's assumption (labels uncorrelated with the PCA coefficients): random labels
meet it and follow the formula; true CIFAR-10 labels correlate with the colour components and do
not.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from firstlayer.profile import _to_numpy, energy_profile, pca_basis

__all__ = [
    "FitResult",
    "LabelCorrelation",
    "LinearCNNResult",
    "fit",
    "label_patch_correlation",
    "linear_profile",
    "paper_fit_loop",
    "simulate_linear_cnn",
]


# --- the closed form ----------------------------------------------------------------------------


def _eigenvalues(source: Any, name: str = "eigenvalues") -> np.ndarray:
    """Per-patch variances (descending is not required) from stats, a PCA result or an array."""
    if hasattr(source, "pca") or hasattr(source, "eigenvalues") or isinstance(source, tuple):
        ev, _ = pca_basis(source)
    else:
        ev = _to_numpy(source, name)
        if ev.ndim != 1 or ev.size == 0:
            msg = f"{name}: expected a non-empty 1D array of eigenvalues, got shape {ev.shape}"
            raise ValueError(msg)
    if not np.all(np.isfinite(ev)):
        msg = f"{name}: expected finite eigenvalues, got NaN or infinity"
        raise ValueError(msg)
    if np.any(ev < -1e-9 * max(float(np.max(np.abs(ev))), 1e-300)):
        msg = f"{name}: expected non-negative eigenvalues (variances), got min {ev.min():.3g}"
        raise ValueError(msg)
    # Round-off can leave tiny negative variances on a rank-deficient covariance.
    return np.clip(ev, 0.0, None)


def _growth(a: np.ndarray, t: np.ndarray) -> np.ndarray:
    """``(1 - (1 - a)^t) / a`` for a (p,) and t (n, 1), stable for tiny ``a`` and huge ``t``."""
    with np.errstate(divide="ignore", invalid="ignore"):
        # -expm1(t log1p(-a)) keeps full precision where (1 - a)^t is within rounding of 1.
        q = -np.expm1(t * np.log1p(-np.minimum(a, 1.0)))
        q = np.where(t == 0, 0.0, q)
        over = a > 1.0
        if np.any(over):
            # Oscillating but convergent GD (1 < a < 2) needs integer step counts.
            q = np.where(over, 1.0 - np.power(1.0 - a, np.round(t)), q)
        return np.where(a > 0, q / np.where(a > 0, a, 1.0), t)


def _check_steps(steps: Any) -> np.ndarray:
    t = _to_numpy(steps, "steps")
    if t.ndim > 1:
        msg = f"steps: expected a number or a 1D array, got shape {t.shape}"
        raise ValueError(msg)
    if np.any(t < 0) or not np.all(np.isfinite(t)):
        msg = f"steps: expected finite non-negative step counts, got min {t.min():.3g}"
        raise ValueError(msg)
    return t


def _check_eta(eta: float, ev: np.ndarray, steps: np.ndarray | None = None) -> float:
    eta = float(eta)
    if not np.isfinite(eta) or eta <= 0:
        msg = f"eta: expected a positive step size, got {eta}"
        raise ValueError(msg)
    a_max = eta * float(ev.max())
    if a_max >= 2.0:
        msg = (
            f"eta: gradient descent diverges when eta * max eigenvalue >= 2; expected "
            f"eta < {2.0 / float(ev.max()):.3g}, got {eta:.3g}"
        )
        raise ValueError(msg)
    if a_max > 1.0 and steps is not None and np.any(steps != np.round(steps)):
        msg = (
            "steps: with eta * max eigenvalue > 1 the closed form oscillates and needs integer "
            "step counts; use integers or a smaller eta"
        )
        raise ValueError(msg)
    return eta


def linear_profile(
    eigenvalues: Any,
    eta: float,
    steps: Any,
    *,
    normalize: bool = True,
) -> np.ndarray:
    """Energy profile predicted by the linear-CNN theory after ``steps`` gradient steps.

    ``e_i(t) = lambda_i * (1 - (1 - eta*lambda_i^2)^t) / (eta*lambda_i^2)`` (Theorem 4.2 with the
    printed ``eta^2`` read as the constant it is).

    Parameters
    ----------
    eigenvalues : array_like or PatchStats
        (p,) per-patch variances ``lambda_i^2`` (``PatchStats.pca().eigenvalues``), or statistics
        whose PCA gives them.
    eta : float
        Step size in units of the eigenvalues; ``eta * max(eigenvalues)`` must be below 2.
    steps : float or array_like
        Number of steps ``t`` (non-integer values interpolate); a 1D array gives one profile per
        entry.
    normalize : bool
        Divide each profile by its maximum (the paper's convention).

    Returns
    -------
    numpy.ndarray
        (p,) profile, or (len(steps), p) for an array of steps.

    Raises
    ------
    ValueError
        For a non-positive or divergent ``eta``, negative steps or eigenvalues.

    Examples
    --------
    >>> import numpy as np
    >>> ev = 1.0 / np.arange(1, 28) ** 2
    >>> early = linear_profile(ev, 0.1, 1)       # ~ sqrt(eigenvalue)
    >>> late = linear_profile(ev, 0.1, 1e9)      # ~ 1 / sqrt(eigenvalue): whitening
    >>> int(np.argmax(early)), int(np.argmax(late))
    (0, 26)
    """
    ev = _eigenvalues(eigenvalues)
    t = _check_steps(steps)
    _check_eta(eta, ev, t)
    g = np.sqrt(ev) * _growth(eta * ev, t.reshape(-1, 1))
    if normalize:
        top = g.max(axis=1, keepdims=True)
        g = np.divide(g, top, out=np.zeros_like(g), where=top > 0)
    return g[0] if t.ndim == 0 else g


# --- fitting ------------------------------------------------------------------------------------


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
    y_all = _to_numpy(profile, "profile").ravel()
    if y_all.size != ev_all.size:
        msg = (
            f"profile: expected {ev_all.size} values, one per PCA component of the statistics, "
            f"got {y_all.size}"
        )
        raise ValueError(msg)
    m = ev_all.size if n_components is None else int(n_components)
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
    num_images: int,
    *,
    eta: float = 1e-7,
    t_start: int = 10_000,
    t_stop: int = 5_000_000,
    t_step: int = 250,
) -> tuple[np.ndarray, float, int]:
    """The paper's fitting procedure, one Python iteration per candidate step count.

    Kept as the reference and benchmark peer of :func:`fit`. ``lambdas`` are the singular values
    ``S_i`` of the centred patch matrix (``torch.pca_lowrank``), ``lambda_squared = S_i^2``, and
    ``a_i = eta * S_i^2 / (2 * num_images)``. The default grid has 19,960 step counts.

    Parameters
    ----------
    model_profile : array_like
        (p,) energy profile to fit.
    lambdas, lambda_squared : array_like
        (p,) singular values and their squares.
    num_images : int
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
    profile = np.asarray(model_profile, dtype=np.float64)
    s = np.asarray(lambdas, dtype=np.float64)
    s2 = np.asarray(lambda_squared, dtype=np.float64)
    a = eta * s2 / (2 * num_images)
    best_curve, best_corr, best_t = np.zeros_like(profile), 0.0, 0
    for t in range(t_start, t_stop, t_step):
        curve = np.abs(s * (1 - (1 - a) ** t) / a)
        curve = curve / curve.max()
        corr = np.corrcoef(profile, curve)[0, 1]
        if corr > best_corr:
            best_curve, best_corr, best_t = curve, float(corr), t
    return best_curve, best_corr, best_t


# --- a real linear CNN --------------------------------------------------------------------------


@dataclass(frozen=True)
class LinearCNNResult:
    """Energy profiles of a trained linear CNN against the formula, along the trajectory.

    Three comparisons, from the strictest assumption to none: ``correlations`` (the formula at the
    theory's own ``eta * step``), ``fitted_correlations`` (the formula at a step count fitted per
    record, as the paper fits networks) and ``gd_correlations`` (the exact gradient-descent solution
    for the training set's own label term: a check of the simulation, whatever the labels). The
    formula assumes the label term proportional to ``lambda_i``, i.e. labels uncorrelated with the
    PCA coefficients (Definition A.4); ``label_correlation`` measures how far that holds.

    Attributes
    ----------
    steps : numpy.ndarray
        (R,) gradient steps at which the filters were recorded (log-spaced from step 1; every
        record is scored).
    profiles : numpy.ndarray
        (R, p) max-normalised energy profiles of ``W - W_init`` in the patch PCA basis, over all
        filters of all outputs.
    predicted : numpy.ndarray
        (R, p) the formula at the theoretical ``eta * step`` (no free parameter).
    correlations : numpy.ndarray
        (R,) Pearson correlation of ``profiles`` with ``predicted``.
    fitted_t : numpy.ndarray
        (R,) step count of the best fit of the formula to each profile (:func:`fit`).
    fitted_correlations : numpy.ndarray
        (R,) correlation at the fitted step count (the paper's way of comparing).
    gd_correlations : numpy.ndarray
        (R,) correlation of ``profiles`` with the closed-form gradient-descent solution
        ``(I - (I - c A)^t) A^-1 (b - A s_0)`` for the measured second moment ``A`` of the
        samples' mean patches and the measured label term ``b`` (their cross moment with the
        targets). About 1 whenever the training is right; well above ``correlations`` when the
        label term, not the training, departs from the theorem.
    label_correlation : numpy.ndarray
        (n_outputs, p) Pearson correlation, over the training samples, between each output's
        target and the PCA coefficient ``u_i . mean patch`` of the sample (Definition A.4). With
        labels uncorrelated with the coefficients each entry is sampling noise of standard
        deviation ``1 / sqrt(n_samples - 1)``.
    eigenvalues : numpy.ndarray
        (p,) patch PCA eigenvalues (per-patch variances) of the normalised images.
    eta : float
        The theory's step size in eigenvalue units: ``2 * lr * filters_per_output /
        (n_classes * patches_per_sample)``.
    losses : numpy.ndarray
        (R,) training loss (MSE, mean over the label draws) at each recorded step.
    random_labels : bool
        Whether the labels were random.
    label_draws : int
        Number of independent labellings trained side by side (1 for true labels).
    n_samples : int
        Number of training samples (mosaics or images).
    """

    steps: np.ndarray
    profiles: np.ndarray
    predicted: np.ndarray
    correlations: np.ndarray
    fitted_t: np.ndarray
    fitted_correlations: np.ndarray
    gd_correlations: np.ndarray
    label_correlation: np.ndarray
    eigenvalues: np.ndarray
    eta: float
    losses: np.ndarray
    random_labels: bool
    label_draws: int
    n_samples: int

    @property
    def mean_correlation(self) -> float:
        """Mean correlation of the formula at the theoretical step counts."""
        return float(np.mean(self.correlations))

    @property
    def min_correlation(self) -> float:
        """Worst correlation over the trajectory of the formula at the theoretical step counts."""
        return float(np.min(self.correlations))

    @property
    def min_fitted_correlation(self) -> float:
        """Worst correlation over the trajectory, with the step count fitted per record."""
        return float(np.min(self.fitted_correlations))

    @property
    def label_z(self) -> np.ndarray:
        """(p,) root mean square over outputs of ``label_correlation * sqrt(n_samples - 1)``.

        About 1 for every component when labels are uncorrelated with the PCA coefficients; the
        formula needs it flat across components (label term proportional to ``lambda_i``).
        """
        z2 = self.label_correlation**2 * (self.n_samples - 1)
        return np.sqrt(z2.mean(axis=0))

    @property
    def label_noise_ratio(self) -> float:
        """Label-PCA correlation in units of its sampling noise (root mean square; ~1 if none)."""
        z2 = self.label_correlation**2 * (self.n_samples - 1)
        return float(np.sqrt(z2.mean()))

    @property
    def assumption_holds(self) -> bool:
        """Whether the labels look uncorrelated with the PCA coefficients (within 1.5x noise)."""
        return self.label_noise_ratio < 1.5

    def summary(self) -> str:
        """A few lines: the fit along the trajectory and whether the theorem's assumption holds."""
        kind = "random" if self.random_labels else "true"
        n_out = self.label_correlation.shape[0]
        z = self.label_z
        worst = ", ".join(str(i) for i in np.argsort(z)[::-1][:3])
        verdict = (
            "labels uncorrelated with the PCA coefficients within sampling noise: Theorem 4.2's "
            "assumption holds"
            if self.assumption_holds
            else "labels correlated with PCA coefficients (largest on components "
            f"{worst}): Theorem 4.2's assumption is violated and the formula is not expected to "
            "fit; the training itself is checked by the gradient-descent solution"
        )
        return (
            f"linear CNN, {kind} labels, {n_out} outputs ({self.label_draws} labelling(s)), "
            f"{self.n_samples} samples, {self.steps.size} records, steps "
            f"{int(self.steps[0])}..{int(self.steps[-1])}\n"
            f"  formula at eta*t:       min r {self.min_correlation:.3f}, mean "
            f"{self.mean_correlation:.3f}\n"
            f"  formula, t fitted:      min r {self.min_fitted_correlation:.3f}\n"
            f"  exact GD (measured b):  min r {float(np.min(self.gd_correlations)):.4f}\n"
            f"  label-PCA correlation:  {self.label_noise_ratio:.2f}x sampling noise; {verdict}"
        )


def _images_nchw(images: Any) -> np.ndarray:
    """(N, C, H, W) view of NCHW, NHWC or (N, H, W) images; channels are 1 or 3 (or 4)."""
    x = images.detach().cpu().numpy() if hasattr(images, "detach") else images
    if not isinstance(x, np.ndarray):
        msg = f"images: expected a numpy array or a torch tensor, got {type(images).__name__}"
        raise TypeError(msg)
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4:
        msg = f"images: expected shape (N, C, H, W), (N, H, W, C) or (N, H, W), got {x.shape}"
        raise ValueError(msg)
    if x.shape[1] not in (1, 3, 4) and x.shape[-1] in (1, 3, 4):
        x = x.transpose(0, 3, 1, 2)
    return x


def _mosaics(
    xf: np.ndarray,
    y: np.ndarray,
    k: int,
    grid: int,
    n_samples: int,
    rng: np.random.Generator,
    *,
    by_class: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """Images tiled from ``grid x grid`` real k x k patches at random positions of random images.

    ``by_class``: the tiles of a sample all come from images of the sample's class (so that the
    true label means something). Otherwise they come from any image, independently of the label:
    the patches of a sample are then uncorrelated, exactly as Theorem 4.2 assumes.
    """
    n, c, h, w = xf.shape
    sample_y = y[rng.integers(0, n, n_samples)]
    jj = grid * grid
    if by_class:
        src = np.empty((n_samples, jj), dtype=np.int64)
        for cl in np.unique(y):
            members = np.flatnonzero(y == cl)
            rows = np.flatnonzero(sample_y == cl)
            src[rows] = members[rng.integers(0, members.size, (rows.size, jj))]
    else:
        src = rng.integers(0, n, (n_samples, jj))
    oi = rng.integers(0, h - k + 1, (n_samples, jj))
    oj = rng.integers(0, w - k + 1, (n_samples, jj))
    di = np.arange(k)
    # tiles[s, t, ch, a, b] = xf[src, ch, oi + a, oj + b]
    tiles = xf[
        src[:, :, None, None, None],
        np.arange(c)[None, None, :, None, None],
        (oi[:, :, None, None, None] + di[None, None, None, :, None]),
        (oj[:, :, None, None, None] + di[None, None, None, None, :]),
    ]
    img = tiles.reshape(n_samples, grid, grid, c, k, k).transpose(0, 3, 1, 4, 2, 5)
    return img.reshape(n_samples, c, grid * k, grid * k), sample_y


def _gd_profiles(
    a_mat: np.ndarray,
    b_mat: np.ndarray,
    s0: np.ndarray,
    c: float,
    steps: np.ndarray,
    comps: np.ndarray,
) -> np.ndarray:
    """Max-normalised profiles of the exact GD displacement of each output's summed filter.

    ``s <- s - c (A s - b)`` from ``s_0`` moves by ``(I - (I - c A)^t) A^-1 (b - A s_0)``; in the
    eigenbasis ``A = V diag(w) V^T`` that is ``V diag(c * growth(c w, t)) V^T (b - A s_0)``.
    """
    w, v = np.linalg.eigh(a_mat)
    w = np.clip(w, 0.0, None)
    drive = v.T @ (b_mat - a_mat @ s0)  # (p, outputs)
    gain = c * _growth(c * w, steps.reshape(-1, 1).astype(np.float64))  # (R, p)
    out = []
    for g in gain:
        proj = comps.T @ (v @ (g[:, None] * drive))  # (p, outputs) in the patch PCA basis
        e = np.sqrt(np.mean(proj * proj, axis=1))
        out.append(e / e.max() if e.max() > 0 else e)
    return np.stack(out)


def simulate_linear_cnn(
    images: Any,
    labels: Any,
    *,
    random_labels: bool = False,
    label_draws: int | None = None,
    sample: str = "mosaic",
    patches_per_sample: int = 16,
    n_samples: int | None = None,
    kernel_size: int = 3,
    filters_per_output: int = 1,
    steps: int = 300,
    lr: float | None = None,
    init_std: float = 1e-4,
    n_records: int = 12,
    mean: Any = None,
    std: Any = None,
    stats: Any = None,
    seed: int = 0,
) -> LinearCNNResult:
    """Train a linear CNN with gradient descent and compare its filters with the formula.

    The network is the one of Theorem 4.2: ``Conv2d(C, outputs * filters_per_output, k,
    bias=False)``, a global average pool, and a fixed sum of each output's filters. Targets are
    one-vs-all (centred) class indicators, one output per class, the loss is the mean squared
    error, and training is full-batch gradient descent (``torch.optim.SGD``, no momentum) from a
    small isotropic init. Each output's filters move identically, so one filter per output is
    enough. Every record is scored against the formula; the profile of ``W - W_init`` is taken
    over all outputs.

    The theorem's two assumptions, and how the simulation meets them:

    * *Patches of one input uncorrelated.* Real images break that (the average patch of a 32x32
      image is nearly its mean colour), so by default (``sample="mosaic"``) each training input
      is a grid of real patches from random positions of random images, convolved with stride
      ``k`` (the paper's construction for its Fig. 8b). With true labels the tiles of a mosaic
      come from images of its class, so that the label is true; with random labels they come
      from any image. ``sample="images"`` trains on the images themselves (stride 1), where the
      formula fits less.
    * *Labels uncorrelated with the PCA coefficients* (Definition A.4). The label term ``u_i . b``
      is then sampling noise whose *expected* magnitude is proportional to ``lambda_i``; one
      labelling of ``n`` classes gives each component only ``n - 1`` degrees of freedom (about
      25% scatter for CIFAR-10), so with random labels ``label_draws`` independent labellings
      (fixed random permutations of the labels, class balance kept) are trained side by side as
      further outputs, each with its own MSE loss, exactly as separate networks. True CIFAR labels
      correlate with the colour components far above sampling noise, so the formula does not fit
      them; ``LinearCNNResult.label_correlation`` and ``summary()`` report that, and
      ``gd_correlations`` shows the training still follows exact gradient descent.

    Parameters
    ----------
    images : array_like or torch.Tensor
        (N, C, H, W), (N, H, W, C) or (N, H, W) images; uint8 is scaled by 1/255.
    labels : array_like
        (N,) integer class labels.
    random_labels : bool
        Train on fixed random permutations of the labels (the paper's random-label setting).
    label_draws : int, optional
        Independent random labellings trained side by side (random labels only); default 16,
        which keeps the label noise in the profile to a few per cent. True labels have one.
    sample : {"mosaic", "images"}
        Training inputs: mosaics of real patches, or the images.
    patches_per_sample : int
        Patches per mosaic (a square number).
    n_samples : int, optional
        Number of mosaics (default: the number of images).
    kernel_size : int
        Filter size ``k``.
    filters_per_output : int
        Filters summed into each output.
    steps : int
        Number of gradient steps.
    lr : float, optional
        Learning rate; default so that the largest eigenvalue of the GD iteration is 0.5.
    init_std : float
        Standard deviation of the Gaussian init (small, as the theory assumes).
    n_records : int
        Number of log-spaced steps at which the filters are recorded (fewer when they round to
        the same step).
    mean, std : array_like, optional
        Per-channel normalisation of the scaled images; default their own mean and std, so that
        patches are centred as the theory assumes.
    stats : PatchStats, optional
        Patch statistics of the *normalised* images (computed with
        :func:`firstlayer.patch_stats` when omitted).
    seed : int
        Seed of the init, the mosaics and the label permutations.

    Returns
    -------
    LinearCNNResult

    Raises
    ------
    ValueError
        If shapes or arguments do not fit.

    Examples
    --------
    >>> r = simulate_linear_cnn(images, labels, random_labels=True)  # doctest: +SKIP
    >>> r.min_correlation  # doctest: +SKIP
    0.99...
    >>> print(r.summary())  # doctest: +SKIP
    """
    import torch

    x = _images_nchw(images)
    y = _to_numpy(labels, "labels").astype(np.int64).ravel()
    n, c, h, w = x.shape
    if y.size != n:
        msg = f"labels: expected {n} labels, one per image, got {y.size}"
        raise ValueError(msg)
    k = int(kernel_size)
    if not 1 <= k <= min(h, w):
        msg = f"kernel_size: expected 1..{min(h, w)} for {h}x{w} images, got {kernel_size}"
        raise ValueError(msg)
    if steps < 1 or n_records < 1 or filters_per_output < 1:
        msg = "steps, n_records, filters_per_output: expected positive integers"
        raise ValueError(msg)
    draws = (16 if random_labels else 1) if label_draws is None else int(label_draws)
    if draws < 1 or (draws > 1 and not random_labels):
        msg = (
            "label_draws: expected a positive number of random labellings (true labels have "
            f"exactly one), got {label_draws}"
        )
        raise ValueError(msg)
    if sample not in ("mosaic", "images"):
        msg = f"sample: expected 'mosaic' or 'images', got {sample!r}"
        raise ValueError(msg)
    grid = int(round(np.sqrt(patches_per_sample)))
    if sample == "mosaic" and (grid < 1 or grid * grid != patches_per_sample):
        msg = f"patches_per_sample: expected a square number, got {patches_per_sample}"
        raise ValueError(msg)
    classes = np.unique(y)
    if classes.size < 2:
        msg = f"labels: expected at least 2 classes, got {classes.size}"
        raise ValueError(msg)
    rng = np.random.default_rng(seed)

    xf = x.astype(np.float64) / 255.0 if x.dtype == np.uint8 else x.astype(np.float64)
    mu = xf.mean(axis=(0, 2, 3)) if mean is None else np.asarray(mean, dtype=np.float64)
    sd = xf.std(axis=(0, 2, 3)) if std is None else np.asarray(std, dtype=np.float64)
    xf = (xf - mu[:, None, None]) / sd[:, None, None]
    if stats is None:
        from firstlayer import patch_stats

        stats = patch_stats(np.ascontiguousarray(xf), kernel_size=k)
    ev, comps = pca_basis(stats)
    if ev.size != c * k * k:
        msg = f"stats: expected statistics of {c}x{k}x{k} patches, got {ev.size} components"
        raise ValueError(msg)

    if sample == "mosaic":
        # Random labels carry no class, so the tiles need not share one: independent patches.
        train_x, train_y = _mosaics(
            xf, y, k, grid, int(n_samples or n), rng, by_class=not random_labels
        )
        stride, j = k, grid * grid
    else:
        train_x, train_y = xf, y
        stride, j = 1, (h - k + 1) * (w - k + 1)
    ns = train_x.shape[0]
    if random_labels:
        label_sets = [rng.permutation(train_y) for _ in range(draws)]
    else:
        label_sets = [train_y]
    n_cls, m = classes.size, int(filters_per_output)
    n_out = draws * n_cls
    onehot = np.concatenate(
        [(ys[:, None] == classes[None, :]).astype(np.float64) for ys in label_sets], axis=1
    )
    target64 = onehot - onehot.mean(axis=0)  # (ns, n_out), centred like the patches
    targets = torch.from_numpy(target64.astype(np.float32))
    # float32: torch's float64 CPU convolution is ~30x slower, and W - W_init stays far above
    # float32 rounding of W because the init is small.
    xt = torch.from_numpy(train_x.astype(np.float32)).contiguous(memory_format=torch.channels_last)
    # Mean patch of every sample: A = E[pbar pbar^T] drives GD, b = E[pbar y] is the label term.
    with torch.no_grad():
        pbar = torch.cat(
            [
                torch.nn.functional.unfold(xt[i : i + 256], k, stride=stride).double().mean(dim=2)
                for i in range(0, ns, 256)
            ]
        ).numpy()
    a_mat = pbar.T @ pbar / ns
    b_mat = pbar.T @ target64 / ns
    if lr is None:
        # The largest eigenvalue of A sets the GD step limit: c * a_top = 0.5 below.
        lr = 0.5 * n_cls / (2.0 * m * float(np.linalg.eigvalsh(a_mat)[-1]))
    # Theory: the summed filter of each output follows s <- s - c (A s - b), c = 2 lr m / n_cls,
    # and A = covariance / J when the J patches of a sample are uncorrelated.
    c_gd = 2.0 * lr * m / n_cls
    eta = c_gd / j

    gen = torch.Generator().manual_seed(seed)
    conv = torch.nn.Conv2d(c, n_out * m, k, stride=stride, bias=False)
    conv = conv.to(memory_format=torch.channels_last)
    with torch.no_grad():
        conv.weight.normal_(0.0, init_std, generator=gen)
    w0 = conv.weight.detach().clone()
    opt = torch.optim.SGD(conv.parameters(), lr=lr)

    record_at = set(np.unique(np.geomspace(1, steps, n_records).round().astype(int)).tolist())
    rec_steps, rec_w, losses = [], [], []
    for step in range(1, steps + 1):
        opt.zero_grad()
        pooled = conv(xt).mean(dim=(2, 3))  # (samples, n_out * m): global average pool
        out = pooled.view(ns, n_out, m).sum(dim=2)  # fixed second layer: sum each output's filters
        # Mean over one labelling's outputs, summed over labellings: each trains as if alone.
        loss = torch.nn.functional.mse_loss(out, targets) * draws
        loss.backward()
        opt.step()
        if step in record_at:
            rec_steps.append(step)
            rec_w.append((conv.weight.detach().double() - w0.double()).numpy())
            losses.append(loss.item() / draws)

    t = np.asarray(rec_steps, dtype=np.float64)
    profiles = np.stack([energy_profile(dw, basis=comps) for dw in rec_w])
    predicted = linear_profile(ev, eta, t)
    corr = np.array([_pearson(p, q) for p, q in zip(profiles, predicted, strict=True)])
    fits = [fit(p, ev, eta=eta) for p in profiles]
    s0 = w0.double().numpy().reshape(n_out, m, -1).sum(axis=1).T  # (p, n_out) summed init
    gd = _gd_profiles(a_mat, b_mat, s0, c_gd, t, comps)
    gd_corr = np.array([_pearson(p, q) for p, q in zip(profiles, gd, strict=True)])
    coef = pbar @ comps
    coef_z = (coef - coef.mean(axis=0)) / np.maximum(coef.std(axis=0), 1e-300)
    tz = target64 / np.maximum(target64.std(axis=0), 1e-300)
    label_corr = tz.T @ coef_z / ns  # (n_out, p) Pearson correlations
    return LinearCNNResult(
        steps=t.astype(np.int64),
        profiles=profiles,
        predicted=predicted,
        correlations=corr,
        fitted_t=np.array([f.t for f in fits]),
        fitted_correlations=np.array([f.correlation for f in fits]),
        gd_correlations=gd_corr,
        label_correlation=label_corr,
        eigenvalues=ev,
        eta=eta,
        losses=np.asarray(losses),
        random_labels=bool(random_labels),
        label_draws=draws,
        n_samples=int(ns),
    )


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    den = float(np.sqrt((a @ a) * (b @ b)))
    return float(a @ b) / den if den > 0 else 0.0


# --- the assumption: labels versus patch PCA coefficients --------------------------------------


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
    *,
    kernel_size: int = 3,
    stats: Any = None,
    batch_size: int = 256,
) -> LabelCorrelation:
    """Correlation of one-vs-all labels with the patches' PCA coefficients, per class and component.

    Theorem 4.2 needs labels uncorrelated with every PCA coefficient; for two classes that is the
    same as equal class-mean patches (the v1 "average patch" condition).

    Parameters
    ----------
    source : PatchStats or array_like
        Statistics gathered with ``labels=`` (gives exact per-patch correlations from the class
        means), or (N, C, H, W) / (N, H, W, C) images (gives per-image correlations, both of the
        mean coefficient and of the energy). uint8 images are scaled by 1/255.
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
    x = _images_nchw(source)
    y = _to_numpy(labels, "labels").astype(np.int64).ravel()
    if y.size != x.shape[0]:
        msg = f"labels: expected {x.shape[0]} labels, one per image, got {y.size}"
        raise ValueError(msg)
    k = int(kernel_size)
    xf = x.astype(np.float64) / 255.0 if x.dtype == np.uint8 else x.astype(np.float64)
    if stats is None:
        from firstlayer import patch_stats

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
