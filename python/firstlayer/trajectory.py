"""Claims along training: profiles at every snapshot, the fitted ``eta*t``, and aligned comparisons.

A network's energy profile moves along the linear-CNN theory's one-parameter family as it trains,
and two networks move at different rates (random labels far more slowly than true ones until the
network starts to fit them). A comparison read at one step therefore mixes two things: whether
the profiles differ, and whether the runs got equally far. This module separates them:

* :func:`run_trajectory` reads a run folder (as ``firstlayer train`` writes it) and gives the
  profile of ``W_s - W_0`` at every recorded step ``s``, the formula's fitted ``eta*t`` and fit
  ``r`` there (:func:`firstlayer.theory.fit`), ``|W_s - W_0| / |W_0|``, the training accuracy and
  whether the profile has settled (:func:`settling`);
* :func:`matched_steps` correlates two runs' profiles at the same optimiser steps (what the
  paper's end-of-training number is, read all along);
* :func:`aligned` correlates them at the same fitted ``eta*t`` (an extension beyond the paper:
  the theory says ``eta*t`` is the one parameter the profile depends on), interpolating each run's
  profile between its snapshots;
* :func:`compare_runs` does all of it for two runs.

**The settling rule** (:data:`SETTLE_RULE`): a run has settled when its max-normalised profile
changes by less than ``threshold`` (default 2%) over the last ``fraction`` (default 20%) of its
optimiser steps, measured as ``|p(T) - p((1 - fraction) T)| / |p(T)|`` (Euclidean norms), with
``p((1 - fraction) T)`` interpolated linearly in the step between the two snapshots around it.

Interpolation at a given ``eta*t``: each run's fitted ``eta*t`` is made non-decreasing along the
steps (its running maximum, so that a noisy early fit cannot fold the trajectory back), and the
profile at ``x`` is the linear interpolation, in ``log(eta*t)``, of the two snapshots whose values
bracket ``x``, max-normalised again. Runs are compared only over the ``eta*t`` range both reached.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from firstlayer._numeric import pearson
from firstlayer.profile import energy_profile, pca_basis
from firstlayer.theory.fitting import fit

__all__ = [
    "SETTLE_FRACTION",
    "SETTLE_RULE",
    "SETTLE_THRESHOLD",
    "RunComparison",
    "Settling",
    "Trajectory",
    "aligned",
    "compare_runs",
    "matched_steps",
    "profile_at_eta_t",
    "run_trajectory",
    "settling",
    "trajectory",
]

#: Fraction of the optimiser steps at the end of a run over which settling is measured.
SETTLE_FRACTION = 0.2
#: Largest relative change of the profile over that stretch for a run to count as settled.
SETTLE_THRESHOLD = 0.02
#: The settling rule, as the reports state it.
SETTLE_RULE = (
    "a run has settled when its max-normalised energy profile changes by less than "
    f"{SETTLE_THRESHOLD:.0%} (|p(T) - p(0.8 T)| / |p(T)|, Euclidean norms) over the last "
    f"{SETTLE_FRACTION:.0%} of its optimiser steps T, the profile at 0.8 T interpolated linearly "
    "between the snapshots around it"
)


def _max_normalised(p: np.ndarray) -> np.ndarray:
    m = float(np.max(np.abs(p))) if p.size else 0.0
    return p / m if m > 0 else p


def _check_trajectory(steps: Any, profiles: Any) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(steps, dtype=np.float64).ravel()
    p = np.asarray(profiles, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] != s.size:
        msg = f"profiles: expected one profile per step, shape ({s.size}, p), got shape {p.shape}"
        raise ValueError(msg)
    if s.size and np.any(np.diff(s) <= 0):
        msg = "steps: expected strictly increasing steps"
        raise ValueError(msg)
    return s, p


@dataclass(frozen=True)
class Settling:
    """Whether a run's profile has settled, by :data:`SETTLE_RULE`.

    Attributes
    ----------
    change : float
        ``|p(T) - p((1 - fraction) T)| / |p(T)|``; NaN when fewer than two profiles are recorded.
    settled : bool
        ``change < threshold``.
    since_step : float
        ``(1 - fraction) T``, where the measured stretch starts.
    last_step : float
        ``T``, the last recorded step.
    fraction, threshold : float
        The rule's parameters.
    """

    change: float
    settled: bool
    since_step: float
    last_step: float
    fraction: float = SETTLE_FRACTION
    threshold: float = SETTLE_THRESHOLD

    def describe(self) -> str:
        """One phrase: whether it settled and by how much the profile still changes."""
        if not math.isfinite(self.change):
            return "settling not measured (fewer than two snapshots)"
        word = "settled" if self.settled else "not settled"
        return (
            f"{word}: the profile changes by {self.change:.1%} over the last "
            f"{self.fraction:.0%} of steps (threshold {self.threshold:.0%})"
        )


def settling(
    steps: Any,
    profiles: Any,
    *,
    fraction: float = SETTLE_FRACTION,
    threshold: float = SETTLE_THRESHOLD,
) -> Settling:
    """Apply the settling rule (:data:`SETTLE_RULE`) to a recorded trajectory.

    Parameters
    ----------
    steps : array_like
        (S,) strictly increasing optimiser steps of the snapshots.
    profiles : array_like
        (S, p) energy profiles at those steps (max-normalised here again).
    fraction : float
        Final fraction of the steps over which the change is measured, in (0, 1).
    threshold : float
        Largest relative change of a settled run, > 0.

    Returns
    -------
    Settling
    """
    if not 0 < fraction < 1:
        msg = f"fraction: expected a number in (0, 1), got {fraction}"
        raise ValueError(msg)
    if not threshold > 0:
        msg = f"threshold: expected a positive number, got {threshold}"
        raise ValueError(msg)
    s, p = _check_trajectory(steps, profiles)
    if s.size < 2:
        last = float(s[-1]) if s.size else math.nan
        return Settling(math.nan, False, math.nan, last, fraction, threshold)
    p = np.stack([_max_normalised(row) for row in p])
    end = float(s[-1])
    start = (1.0 - fraction) * end
    if start <= s[0]:
        # The first snapshot is already inside the stretch: the change since it is a lower
        # bound of the change since the stretch began, so the run is taken as not settled
        # unless even that is below the threshold.
        before = p[0]
    else:
        i = int(np.searchsorted(s, start, side="right")) - 1
        w = (start - s[i]) / (s[i + 1] - s[i])
        before = (1.0 - w) * p[i] + w * p[i + 1]
    den = float(np.linalg.norm(p[-1]))
    change = float(np.linalg.norm(p[-1] - before)) / den if den > 0 else math.nan
    ok = bool(math.isfinite(change) and change < threshold)
    return Settling(change, ok, start, end, fraction, threshold)


@dataclass(frozen=True)
class Trajectory:
    """One run's first layer along training.

    Attributes
    ----------
    name : str
        Display name.
    steps : numpy.ndarray
        (S,) optimiser steps of the snapshots (the initialisation left out: its change is zero).
    profiles : numpy.ndarray
        (S, p) max-normalised energy profiles of ``W_s - W_0`` in the PCA basis.
    eta_t : numpy.ndarray
        (S,) the formula's fitted ``eta*t`` at each step.
    fit_correlation : numpy.ndarray
        (S,) the fit's correlation at each step.
    eta : float
        Step size of the fits (the same for runs on the same statistics, so ``eta*t`` compares).
    relative_change : numpy.ndarray
        (S,) ``|W_s - W_0| / |W_0|`` (NaN where the weights are not known).
    train_acc : float or None
        Training accuracy at the end (last epoch's record), when known.
    settling : Settling
        The settling rule applied to ``profiles``.
    """

    name: str
    steps: np.ndarray
    profiles: np.ndarray
    eta_t: np.ndarray
    fit_correlation: np.ndarray
    eta: float
    relative_change: np.ndarray
    train_acc: float | None
    settling: Settling

    def regime(self) -> dict[str, Any]:
        """Where the run ended: accuracy, fitted ``eta*t`` and fit r, weight change, settling."""
        last = -1 if self.steps.size else None
        return {
            "name": self.name,
            "steps": int(self.steps[-1]) if last is not None else None,
            "train_acc": self.train_acc,
            "eta_t": float(self.eta_t[-1]) if last is not None else None,
            "fit_correlation": float(self.fit_correlation[-1]) if last is not None else None,
            "relative_change": float(self.relative_change[-1]) if last is not None else None,
            "settled": self.settling.settled,
            "settle_change": self.settling.change,
            "settling": self.settling.describe(),
        }

    def _repr_html_(self) -> str:
        """Where the run ended, as a table (how Jupyter shows the trajectory)."""
        from firstlayer._display import html_table, trajectory_rows

        return html_table("Trajectory", trajectory_rows(self))

    def plot(self) -> Any:
        """Fitted ``eta*t`` and fit r along training (a matplotlib ``Figure``)."""
        from firstlayer._display import trajectory_figure

        return trajectory_figure(self)


def trajectory(
    steps: Any,
    profiles: Any,
    eigenvalues: Any,
    *,
    name: str = "",
    eta: float | None = None,
    relative_change: Any = None,
    train_acc: float | None = None,
) -> Trajectory:
    """A :class:`Trajectory` from recorded profiles: fits ``eta*t`` at every step.

    Parameters
    ----------
    steps : array_like
        (S,) strictly increasing steps.
    profiles : array_like
        (S, p) energy profiles in the PCA basis of ``eigenvalues``.
    eigenvalues : PatchStats, PCA result or array_like
        The patch statistics (or their (p,) eigenvalues), as in :func:`firstlayer.theory.fit`.
    name : str
        Display name.
    eta : float, optional
        Step size of the fits (default :func:`~firstlayer.theory.fit`'s, which depends only on
        the eigenvalues: two runs on the same statistics get the same ``eta``).
    relative_change : array_like, optional
        (S,) ``|W_s - W_0| / |W_0|``.
    train_acc : float, optional
        Final training accuracy.
    """
    s, p = _check_trajectory(steps, profiles)
    p = np.stack([_max_normalised(row) for row in p]) if s.size else p
    ts, rs, used_eta = [], [], math.nan if eta is None else float(eta)
    for row in p:
        if np.ptp(row) == 0 or not np.all(np.isfinite(row)):
            ts.append(math.nan)
            rs.append(math.nan)
            continue
        f = fit(row, eigenvalues, eta=eta)
        ts.append(f.eta_t)
        rs.append(f.correlation)
        used_eta = f.eta
    rel = (
        np.full(s.size, math.nan)
        if relative_change is None
        else np.asarray(relative_change, dtype=np.float64).ravel()
    )
    if rel.size != s.size:
        msg = f"relative_change: expected {s.size} values, one per step, got {rel.size}"
        raise ValueError(msg)
    return Trajectory(
        name=name,
        steps=s.astype(np.int64),
        profiles=p,
        eta_t=np.asarray(ts),
        fit_correlation=np.asarray(rs),
        eta=used_eta,
        relative_change=rel,
        train_acc=train_acc,
        settling=settling(s, p),
    )


def run_trajectory(
    run: str | os.PathLike[str], stats: Any, *, name: str | None = None
) -> Trajectory:
    """The :class:`Trajectory` of a training run folder (``firstlayer train``'s layout).

    Parameters
    ----------
    run : path
        The run folder: ``first_layer_init.npy`` and ``snapshots/`` are read through
        :class:`firstlayer.train.runs.RunDir`, and the last training accuracy from
        ``metrics.jsonl``.
    stats : PatchStats
        Patch statistics as the network saw the patches (after its input normalisation).
    name : str, optional
        Display name (default the folder's name).

    Raises
    ------
    FileNotFoundError
        If the folder has no initial first layer or no snapshot after step 0.
    """
    from firstlayer.train.runs import RunDir

    rd = RunDir(run)
    init_path = rd / "first_layer_init.npy"
    if not init_path.is_file():
        msg = f"run: expected a run folder with first_layer_init.npy, {str(rd.path)!r} has none"
        raise FileNotFoundError(msg)
    w0 = np.load(init_path, allow_pickle=False).astype(np.float64)
    steps, snaps = rd.snapshots()
    keep = steps > 0
    if not np.any(keep):
        msg = (
            f"run: expected snapshots after step 0 in {str(rd.path / 'snapshots')!r}, got none "
            "(train with snapshots > 0)"
        )
        raise FileNotFoundError(msg)
    steps, snaps = steps[keep], snaps[keep].astype(np.float64)
    _, comps = pca_basis(stats)
    profiles = np.stack([energy_profile(w, basis=comps, init=w0) for w in snaps])
    n0 = float(np.linalg.norm(w0))
    rel = np.array([float(np.linalg.norm(w - w0)) / n0 if n0 > 0 else math.nan for w in snaps])
    metrics = rd.read_metrics()
    acc = metrics[-1].get("train_acc") if metrics else None
    return trajectory(
        steps,
        profiles,
        stats,
        name=rd.path.resolve().name if name is None else name,
        relative_change=rel,
        train_acc=float(acc) if isinstance(acc, int | float) else None,
    )


def matched_steps(a: Trajectory, b: Trajectory) -> tuple[np.ndarray, np.ndarray]:
    """Correlation of two runs' profiles at the steps both recorded.

    When they share no step (other schedules), ``b`` is interpolated linearly in the step at
    ``a``'s steps inside ``b``'s range.

    Returns
    -------
    steps : numpy.ndarray
        (M,) the steps.
    correlation : numpy.ndarray
        (M,) Pearson correlation of the two profiles there.
    """
    common = np.intersect1d(a.steps, b.steps)
    if common.size:
        ia = np.searchsorted(a.steps, common)
        ib = np.searchsorted(b.steps, common)
        r = [pearson(a.profiles[i], b.profiles[j]) for i, j in zip(ia, ib, strict=True)]
        return common.astype(np.int64), np.asarray(r)
    inside = (a.steps >= b.steps[0]) & (a.steps <= b.steps[-1]) if b.steps.size else a.steps < 0
    out_s, out_r = a.steps[inside], []
    for i in np.flatnonzero(inside):
        q = _interp_rows(b.steps.astype(np.float64), b.profiles, float(a.steps[i]))
        out_r.append(pearson(a.profiles[i], q))
    return out_s.astype(np.int64), np.asarray(out_r)


def _interp_rows(x: np.ndarray, rows: np.ndarray, at: float) -> np.ndarray:
    """Rows linearly interpolated at ``at`` along the non-decreasing ``x``, max-normalised."""
    j = int(np.searchsorted(x, at, side="left"))
    if j <= 0:
        return _max_normalised(rows[0])
    if j >= x.size:
        return _max_normalised(rows[-1])
    lo, hi = x[j - 1], x[j]
    w = 0.0 if hi == lo else (at - lo) / (hi - lo)
    return _max_normalised((1.0 - w) * rows[j - 1] + w * rows[j])


def _monotone(t: Trajectory) -> tuple[np.ndarray, np.ndarray]:
    """The fitted log(eta*t) made non-decreasing, and the profiles, where the fit exists."""
    ok = np.isfinite(t.eta_t) & (t.eta_t > 0)
    return np.maximum.accumulate(np.log(t.eta_t[ok])), t.profiles[ok]


def profile_at_eta_t(t: Trajectory, eta_t: float) -> np.ndarray:
    """The run's profile at a fitted ``eta*t``, interpolated between snapshots (see the module).

    Outside the range the run reached, its first or last profile.
    """
    x, rows = _monotone(t)
    if x.size == 0:
        msg = f"{t.name or 'trajectory'}: no snapshot could be fitted, so eta*t is unknown"
        raise ValueError(msg)
    return _interp_rows(x, rows, math.log(eta_t))


def aligned(a: Trajectory, b: Trajectory) -> tuple[np.ndarray, np.ndarray]:
    """Correlation of two runs' profiles at matched fitted ``eta*t`` (beyond the paper).

    The comparison points are every fitted ``eta*t`` of either run inside the range both runs
    reached; each run's profile there is interpolated between its snapshots
    (:func:`profile_at_eta_t`), so a snapshot of one run is met by the same point of the other's
    trajectory.

    Returns
    -------
    eta_t : numpy.ndarray
        (M,) increasing ``eta*t`` values (empty when the ranges do not overlap).
    correlation : numpy.ndarray
        (M,) correlation of the two profiles there.
    """
    xa, _ = _monotone(a)
    xb, _ = _monotone(b)
    if xa.size == 0 or xb.size == 0:
        return np.zeros(0), np.zeros(0)
    lo, hi = max(xa[0], xb[0]), min(xa[-1], xb[-1])
    pts = np.unique(np.concatenate([xa, xb]))
    pts = pts[(pts >= lo) & (pts <= hi)]
    ra, rb = _monotone(a)[1], _monotone(b)[1]
    r = [pearson(_interp_rows(xa, ra, x), _interp_rows(xb, rb, x)) for x in pts]
    return np.exp(pts), np.asarray(r)


@dataclass(frozen=True)
class RunComparison:
    """Two runs compared along training (:func:`compare_runs`).

    Attributes
    ----------
    a, b : Trajectory
        The two runs.
    steps, correlation : numpy.ndarray
        Matched steps and the correlation there (:func:`matched_steps`).
    eta_t_a, eta_t_b : numpy.ndarray
        Each run's fitted ``eta*t`` at those steps.
    aligned_eta_t, aligned_correlation : numpy.ndarray
        The theory-aligned comparison (:func:`aligned`).
    final : float
        Correlation of the two last profiles (the paper's end-of-training number).
    """

    a: Trajectory
    b: Trajectory
    steps: np.ndarray
    correlation: np.ndarray
    eta_t_a: np.ndarray
    eta_t_b: np.ndarray
    aligned_eta_t: np.ndarray
    aligned_correlation: np.ndarray
    final: float

    @property
    def aligned_last(self) -> float:
        """The aligned correlation at the largest ``eta*t`` both runs reached (NaN if none)."""
        return float(self.aligned_correlation[-1]) if self.aligned_correlation.size else math.nan

    def _repr_html_(self) -> str:
        """The key numbers as a table (how Jupyter shows the comparison)."""
        from firstlayer._display import comparison_rows, html_table

        return html_table("RunComparison", comparison_rows(self))

    def plot(self) -> Any:
        """Correlation at matched steps and at matched ``eta*t`` (a matplotlib ``Figure``)."""
        from firstlayer._display import comparison_figure

        return comparison_figure(self)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: ``trajectory`` and ``aligned`` blocks, and both runs' regimes."""
        return {
            "a": self.a.name,
            "b": self.b.name,
            "final": self.final,
            "trajectory": {
                "step": self.steps,
                "correlation": self.correlation,
                "eta_t_a": self.eta_t_a,
                "eta_t_b": self.eta_t_b,
            },
            "aligned": {
                "eta_t": self.aligned_eta_t,
                "correlation": self.aligned_correlation,
                "beyond_paper": True,
            },
            "regime": {"a": self.a.regime(), "b": self.b.regime()},
        }

    def summary(self) -> str:
        """Three lines: matched steps, matched eta*t, and the two regimes."""
        lines = [
            f"{self.a.name} vs {self.b.name}: r = {self.final:.3f} at the end"
            + (
                f"; {self.correlation.min():.3f}..{self.correlation.max():.3f} over "
                f"{self.steps.size} matched steps"
                if self.correlation.size
                else ""
            )
        ]
        if self.aligned_correlation.size:
            lines.append(
                f"  at matched fitted eta*t (beyond the paper): r = {self.aligned_last:.3f} at "
                f"eta*t = {self.aligned_eta_t[-1]:.3g}, {self.aligned_correlation.min():.3f}.."
                f"{self.aligned_correlation.max():.3f} over {self.aligned_eta_t.size} points"
            )
        else:
            lines.append("  at matched fitted eta*t: the runs' eta*t ranges do not overlap")
        for t in (self.a, self.b):
            g = t.regime()
            acc = "n/a" if g["train_acc"] is None else f"{g['train_acc']:.1%}"
            lines.append(
                f"  {t.name}: train acc {acc}, eta*t {g['eta_t']:.3g} (fit r "
                f"{g['fit_correlation']:.3f}), |W - W0|/|W0| {g['relative_change']:.3g}, "
                f"{t.settling.describe()}"
            )
        return "\n".join(lines)


def compare_runs(
    a: Trajectory | str | os.PathLike[str],
    b: Trajectory | str | os.PathLike[str],
    stats: Any = None,
) -> RunComparison:
    """Compare two runs along training: at matched steps and at matched fitted ``eta*t``.

    Parameters
    ----------
    a, b : Trajectory or path
        Trajectories, or run folders (read with :func:`run_trajectory`).
    stats : PatchStats, optional
        Patch statistics as the networks saw them; required when ``a`` or ``b`` is a folder.

    Returns
    -------
    RunComparison

    Examples
    --------
    >>> c = compare_runs("runs/true", "runs/random", stats)  # doctest: +SKIP
    >>> print(c.summary())  # doctest: +SKIP
    """
    ta, tb = [t if isinstance(t, Trajectory) else _need_stats(t, stats) for t in (a, b)]
    if ta.profiles.shape[1:] != tb.profiles.shape[1:]:
        msg = (
            f"b: expected profiles of {ta.profiles.shape[1]} components like a, got "
            f"{tb.profiles.shape[1]}"
        )
        raise ValueError(msg)
    steps, corr = matched_steps(ta, tb)

    def eta_at(t: Trajectory, s: np.ndarray) -> np.ndarray:
        return np.interp(s.astype(np.float64), t.steps.astype(np.float64), t.eta_t)

    ea, eb = aligned(ta, tb)
    final = pearson(ta.profiles[-1], tb.profiles[-1])
    return RunComparison(
        a=ta,
        b=tb,
        steps=steps,
        correlation=corr,
        eta_t_a=eta_at(ta, steps),
        eta_t_b=eta_at(tb, steps),
        aligned_eta_t=ea,
        aligned_correlation=eb,
        final=final,
    )


def _need_stats(run: Any, stats: Any) -> Trajectory:
    if stats is None:
        msg = "stats: expected the patch statistics the runs saw (PatchStats), got None"
        raise ValueError(msg)
    return run_trajectory(run, stats)
