"""The closed form of Theorem 4.2: the energy profile of a linear CNN after ``t`` gradient steps.

Gradient descent from a near-zero init on a linear CNN (convolution, global average pool, MSE)
moves its filters along PCA component ``i`` of the patches by

    g_i(t) = lambda_i * (1 - (1 - a_i)^t) / a_i,     a_i = eta * lambda_i^2,

where ``lambda_i^2`` is the per-patch variance along component ``i`` (``PatchStats.pca()``
eigenvalue). Early on ``g ~ t * lambda`` (sensitivity follows the patch energy); as ``t`` grows the
components with ``a_i t >> 1`` reach ``1 / (eta * lambda_i)``, i.e. they are whitened. The paper's
printed ``eta^2`` in the denominator is a constant and vanishes in the max-normalised profile.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from firstlayer.profile import Normalize, _as_float64, _normalize, pca_basis

__all__ = ["linear_profile"]


def _eigenvalues(source: Any, name: str = "eigenvalues") -> np.ndarray:
    """Per-patch variances (descending is not required) from stats, a PCA result or an array."""
    if hasattr(source, "pca") or hasattr(source, "eigenvalues") or isinstance(source, tuple):
        ev, _ = pca_basis(source)
    else:
        ev = _as_float64(source, name)
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
    t = _as_float64(steps, "steps")
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
    normalize: Normalize = "max",
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
    normalize : {"max", "sum", "l2", None}
        Divide each profile by its maximum (the paper's convention), its sum, its Euclidean
        norm, or nothing (as :func:`firstlayer.energy_profile`).

    Returns
    -------
    numpy.ndarray
        (p,) profile, or (len(steps), p) for an array of steps.

    Raises
    ------
    ValueError
        For a non-positive or divergent ``eta``, negative steps or eigenvalues, or an unknown
        ``normalize``.

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
    g = _normalize(np.sqrt(ev) * _growth(eta * ev, t.reshape(-1, 1)), normalize)
    return g[0] if t.ndim == 0 else g
