"""The figures of claims along training (:mod:`firstlayer.trajectory`), beside :mod:`.plots`.

Figure-returning functions (``draw_*``, for ``.plot()`` methods and notebooks) and their PNG
encodings through :mod:`.plots`' own helpers, so every report figure is drawn alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from firstlayer.report.plots import _arr, _figure, _png

__all__ = [
    "claim_curves_figure",
    "draw_claim_curves",
    "draw_pair_trajectories",
    "pair_trajectories_figure",
]


def draw_pair_trajectories(
    pairs: Sequence[dict[str, Any]], paper: float | None = None, title: str | None = None
) -> Any:
    """Correlation of run pairs along training (left) and at matched fitted eta*t (right).

    ``pairs`` are ``report.json`` ``pairs[]`` blocks; ``paper`` draws the paper's number as a
    dashed reference line on both panels. Returns the matplotlib Figure.
    """
    fig = _figure(11.0, 3.8, left=0.07, right=0.98, bottom=0.14, top=0.86, wspace=0.22)
    ax_s, ax_e = fig.subplots(1, 2)
    for i, p in enumerate(pairs):
        color = f"C{i % 10}"
        label = f"{p['a']} vs {p['b']}"
        tr, al = p["trajectory"], p["aligned"]
        if len(tr["step"]):
            ax_s.plot(_arr(tr["step"]), _arr(tr["correlation"]), "o-", ms=3, color=color,
                      label=label)  # fmt: skip
        if len(al["eta_t"]):
            ax_e.plot(_arr(al["eta_t"]), _arr(al["correlation"]), "o-", ms=3, color=color,
                      label=label)  # fmt: skip
    for ax in (ax_s, ax_e):
        if paper is not None:
            ax.axhline(paper, color="0.3", ls="--", lw=1, label=f"paper {paper:g}")
        ax.set_xscale("log")
        ax.set_ylim(min(-0.05, ax.get_ylim()[0]), 1.02)
        ax.grid(alpha=0.3)
    ax_s.set_xlabel("optimiser step (matched steps)")
    ax_s.set_ylabel("profile correlation")
    ax_s.set_title("along training, at the same step", fontsize=10)
    ax_e.set_xlabel("fitted eta*t (interpolated between snapshots)")
    ax_e.set_title("at matched fitted eta*t (beyond the paper)", fontsize=10)
    ax_s.legend(fontsize=7, loc="lower left")
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


def pair_trajectories_figure(
    pairs: Sequence[dict[str, Any]], paper: float | None = None, title: str | None = None
) -> bytes:
    """PNG of :func:`draw_pair_trajectories`."""
    return _png(draw_pair_trajectories(pairs, paper, title))


def draw_claim_curves(curves: Sequence[dict[str, Any]]) -> Any:
    """One panel per claim of ``firstlayer reproduce``: its value at every recorded step.

    Each entry of ``curves``: ``id``, ``claim``, ``paper``, ``paper_spread``, ``x`` and
    ``values`` (one list per run pair or run: the x values, steps or eta*t, and the claim's value
    there), ``x_label``. The paper's number is the dashed line (its spread shaded). Returns the
    matplotlib Figure.
    """
    n = max(len(curves), 1)
    cols = min(3, n)
    rows = (n + cols - 1) // cols
    fig = _figure(4.0 * cols, 2.7 * rows + 0.3, left=0.07, right=0.98, bottom=0.1 / rows,
                  top=1 - 0.35 / (2.7 * rows + 0.3), wspace=0.25, hspace=0.55)  # fmt: skip
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    for ax, c in zip(axes, curves, strict=False):
        for k, (x, v) in enumerate(zip(c["x"], c["values"], strict=True)):
            if len(x):
                ax.plot(_arr(x), _arr(v), "o-", ms=2.5, lw=1, color=f"C{k % 10}", alpha=0.8)
        paper, spread = float(c["paper"]), float(c.get("paper_spread") or 0.0)
        ax.axhline(paper, color="0.2", ls="--", lw=1)
        if spread:
            ax.axhspan(paper - spread, paper + spread, color="0.6", alpha=0.2, lw=0)
        ax.set_xscale("log")
        ax.set_ylim(-1.02, 1.02)
        ax.grid(alpha=0.3)
        ax.set_title(f"{c['id']}: {c['claim'][:48]}", fontsize=8)
        ax.set_xlabel(c.get("x_label", "optimiser step"), fontsize=8)
        ax.tick_params(which="both", labelsize=7)
    for ax in axes[len(curves) :]:
        ax.set_visible(False)
    return fig


def claim_curves_figure(curves: Sequence[dict[str, Any]]) -> bytes:
    """PNG of :func:`draw_claim_curves`."""
    return _png(draw_claim_curves(curves))
