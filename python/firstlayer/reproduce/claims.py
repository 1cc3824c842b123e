"""The claims table: one row per claim of the paper, its measured value and the verdict.

A claim's ``measured`` value is the mean of its ``values`` (``spread``: their sample standard
deviation); :func:`holds` compares it with the paper's number under the claim's rule.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from firstlayer._numeric import pearson

__all__ = ["claim", "format_claims", "holds", "mean_std", "spearman"]


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
) -> dict[str, Any]:
    """One row of the claims table; ``holds`` follows ``rule`` (see :func:`holds`)."""
    measured, spread, n = mean_std(values)
    ok, agreement = holds(rule, measured, paper, paper_spread or 0.0, tolerance)
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
    }


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
    lines = [f"{'id':<4}{'paper':>14}  {'measured':<22}  verdict   claim"]
    for c in claims:
        paper = f"{c['paper']:.2f}" + (
            f"+-{c['paper_spread']:.2f}" if c["paper_spread"] is not None else ""
        )
        m, s = c["measured"], c["spread"]
        meas = "n/a" if m is None or not math.isfinite(m) else f"{m:.3f}+-{s:.3f} (n={c['n']})"
        verdict = {True: "holds", False: "NO", None: "n/a"}[c["holds"]]
        lines.append(f"{c['id']:<4}{paper:>14}  {meas:<22}  {verdict:<8}  {c['claim']}")
    return "\n".join(lines)
