"""The claims table: one row per claim of the paper, its measured value and the verdict.

A claim's ``measured`` value is the mean of its ``values`` (``spread``: their sample standard
deviation), read at the end of training as the paper reads it; :func:`holds` compares it with
the paper's number under the claim's rule. :func:`verdict` then says what that means given where
the runs behind the claim got (their ``regime``, :func:`firstlayer.trajectory.Trajectory.regime`):

* ``holds``: the end value meets the paper's under the rule;
* ``does not hold``: it does not, and every run behind it settled (a comparable regime, by
  :data:`firstlayer.trajectory.SETTLE_RULE`), or no training run is behind it;
* ``not comparable``: it does not, and some run behind it had not settled (the measured cause is
  given), or the claim could not be measured.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from firstlayer._numeric import pearson

__all__ = ["VERDICTS", "claim", "format_claims", "holds", "mean_std", "spearman", "verdict"]

#: The three verdicts.
VERDICTS = ("holds", "does not hold", "not comparable")


def mean_std(values: Sequence[float]) -> tuple[float, float, int]:
    """Mean, sample standard deviation (0 for one value) and count of the finite ``values``."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return math.nan, math.nan, 0
    sd = float(v.std(ddof=1)) if v.size > 1 else 0.0
    return float(v.mean()), sd, int(v.size)


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation (ties get average ranks); NaN for fewer than 3 points."""

    def ranks(a: np.ndarray) -> np.ndarray:
        order = np.argsort(a, kind="stable")
        r = np.empty(a.size)
        r[order] = np.arange(a.size)
        for val in np.unique(a):  # average ranks of ties
            m = a == val
            r[m] = r[m].mean()
        return r

    xa, ya = np.asarray(x, float), np.asarray(y, float)
    if xa.size < 3:
        return math.nan
    return pearson(ranks(xa), ranks(ya))


def claim(
    cid: str,
    experiment: int,
    text: str,
    paper: float,
    paper_spread: float | None,
    source: str,
    values: Sequence[float],
    rule: str,
    tolerance: float,
    note: str = "",
    *,
    regime: dict[str, dict[str, Any]] | None = None,
    trajectory: dict[str, Any] | None = None,
    beyond_paper: bool = False,
) -> dict[str, Any]:
    """One row of the claims table; ``holds`` follows ``rule`` (see :func:`holds`).

    ``regime`` maps the name of each training run behind the claim to its regime (empty or
    None: no run is behind it); ``trajectory`` is the claim along training (``step`` or
    ``eta_t``, and ``values``: one list per run pair or run); ``beyond_paper`` marks a claim the
    paper does not make.
    """
    measured, spread, n = mean_std(values)
    ok, agreement = holds(rule, measured, paper, paper_spread or 0.0, tolerance)
    word, cause = verdict(ok, regime or {})
    return {
        "id": cid,
        "experiment": experiment,
        "claim": text,
        "paper": paper,
        "paper_spread": paper_spread,
        "source": source,
        "measured": measured,
        "spread": spread,
        "n": n,
        "values": [float(v) for v in values],
        "rule": rule,
        "tolerance": tolerance,
        "holds": ok,
        "agreement": agreement,
        "note": note,
        "verdict": word,
        "cause": cause,
        "regime": regime or {},
        "trajectory": trajectory,
        "beyond_paper": beyond_paper,
    }


def verdict(ok: bool | None, regime: dict[str, dict[str, Any]]) -> tuple[str, str]:
    """The verdict of a claim whose end value ``ok`` (see :func:`holds`), and its cause.

    ``regime``: run name -> regime (``settled``, ``settle_change``, ``train_acc``...). The cause
    names the runs that had not settled and by how much their profile still changed.
    """
    why = _unsettled_cause(regime)
    if ok is None:
        return "not comparable", "not measured"
    if ok:
        return "holds", (f"holds at the end, though {why}" if why else "")
    if why:
        return "not comparable", why
    return "does not hold", (
        "every run behind it settled" if regime else "no training run is behind it"
    )


def _kind(name: str, g: dict[str, Any]) -> str:
    if g.get("labels") == "random" or "-random-" in name:
        return "random-label"
    if g.get("labels") == "true" or "-true-" in name:
        return "true-label"
    return "training"


def _span(values: list[float]) -> str:
    """``'4%'`` or ``'3%-7%'``."""
    lo, hi = f"{min(values):.0%}", f"{max(values):.0%}"
    return lo if lo == hi else f"{lo}-{hi}"


def _unsettled_cause(regime: dict[str, dict[str, Any]]) -> str:
    """``'2 of 3 random-label runs did not settle: the profile still changes by 4%-6% over the
    last 20% of steps (train accuracy 11%-12%)'``, random-label runs first; empty when all
    settled."""
    kinds: dict[str, list[dict[str, Any]]] = {}
    for name, g in regime.items():
        kinds.setdefault(_kind(name, g), []).append(g)
    parts = []
    for kind in sorted(kinds, key=lambda k: k != "random-label"):
        items = kinds[kind]
        bad = [g for g in items if not g.get("settled")]
        if not bad:
            continue
        text = f"{len(bad)} of {len(items)} {kind} runs did not settle"
        ch = [float(g["settle_change"]) for g in bad
              if isinstance(g.get("settle_change"), int | float)
              and math.isfinite(g["settle_change"])]  # fmt: skip
        if ch:
            text += f": the profile still changes by {_span(ch)} over the last 20% of steps"
        acc = [float(g["train_acc"]) for g in bad if isinstance(g.get("train_acc"), int | float)]
        if acc:
            text += f" (train accuracy {_span(acc)})"
        parts.append(text)
    return "; ".join(parts)


def holds(
    rule: str, measured: float, paper: float, paper_spread: float, tol: float
) -> tuple[bool | None, str]:
    """Whether a measured value agrees with the paper's, and the comparison as text.

    ``at_least``: measured >= paper - paper_spread - tol. ``near``: |measured - paper| <=
    paper_spread + tol. ``abs_below``: |measured| <= tol (the paper says "around 0").
    """
    if not math.isfinite(measured):
        return None, "not measured"
    if rule == "at_least":
        bound = paper - paper_spread - tol
        ok = measured >= bound
        return ok, f"{measured:.3f} {'>=' if ok else '<'} {bound:.3f} (paper - spread - {tol})"
    if rule == "near":
        bound = paper_spread + tol
        d = abs(measured - paper)
        ok = d <= bound
        return ok, f"|{measured:.3f} - {paper}| = {d:.3f} {'<=' if ok else '>'} {bound:.3f}"
    if rule == "abs_below":
        ok = abs(measured) <= tol
        return ok, f"|{measured:.3f}| {'<=' if ok else '>'} {tol}"
    msg = f"rule: expected at_least, near or abs_below, got {rule!r}"
    raise ValueError(msg)


def format_claims(claims: list[dict[str, Any]]) -> str:
    """The claims as a plain-text table."""
    lines = [f"{'id':<4}{'paper':>14}  {'measured':<22}  {'verdict':<15} claim"]
    for c in claims:
        paper = f"{c['paper']:.2f}" + (
            f"+-{c['paper_spread']:.2f}" if c["paper_spread"] is not None else ""
        )
        m, s = c["measured"], c["spread"]
        meas = "n/a" if m is None or not math.isfinite(m) else f"{m:.3f}+-{s:.3f} (n={c['n']})"
        word = c.get("verdict") or {True: "holds", False: "does not hold", None: "n/a"}[c["holds"]]
        beyond = " [beyond the paper]" if c.get("beyond_paper") else ""
        lines.append(f"{c['id']:<4}{paper:>14}  {meas:<22}  {word:<15} {c['claim']}{beyond}")
        if c.get("cause"):
            lines.append(f"{'':<42}{c['cause']}")
    return "\n".join(lines)
