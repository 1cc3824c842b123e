"""The figures of a comparison report, drawn with matplotlib's Agg canvas into PNG bytes.

The figures that results also show through ``.plot()`` (profiles, correlation, DFT, theory fit,
filters, eigenspectrum) are drawn by :mod:`firstlayer._display`, one implementation for both;
here they are fed the blocks of ``report.json`` and encoded as PNG.

matplotlib is imported inside the functions (``import firstlayer`` stays light), and only its
object-oriented API is used: no pyplot, no global backend switch, no state shared with the caller.
Each function takes the blocks of ``report.json`` (see :mod:`firstlayer.report.compute`) so that a
figure shows exactly the numbers the JSON holds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from firstlayer._display import (
    draw_correlation,
    draw_dft,
    draw_eigenspectrum,
    draw_filters,
    draw_fit,
    draw_profiles,
    new_figure,
    png_bytes,
)

__all__ = [
    "claims_figure",
    "correlation_figure",
    "dft_figure",
    "eigenspectrum_figure",
    "filters_figure",
    "fit_figure",
    "init_figure",
    "labels_figure",
    "profiles_figure",
    "true_random_figure",
]


def _figure(width: float, height: float, **margins: float) -> Any:
    """A figure with fixed margins (:func:`firstlayer._display.new_figure`)."""
    return new_figure(width, height, **margins)


def _png(fig: Any) -> bytes:
    return png_bytes(fig)


def _arr(v: Any) -> np.ndarray:
    return np.asarray(v, dtype=np.float64)


def profiles_figure(group: dict[str, Any], models: list[dict[str, Any]]) -> bytes:
    """Energy profiles of a group's models in its PCA basis, on linear and log axes."""
    pairs = [(m["name"], m["profile"]) for m in models]
    return _png(draw_profiles(pairs, f"group {group['key']}: {group['count']:,} patches"))


def correlation_figure(group: dict[str, Any]) -> bytes:
    """Pearson correlation matrix of the group's profiles, with the values written in."""
    return _png(draw_correlation(group["correlation"], group["models"]))


def dft_figure(model: dict[str, Any]) -> bytes:
    """Draw a model's filter energy per 2D frequency: summed, per channel, radial average."""
    dft = model["dft"]
    what = "final - init" if model["init_known"] else "weights"
    title = f"{model['name']}: DFT energy of {what}"
    return _png(draw_dft(dft["total"], dft["per_channel"], dft["radii"], dft["radial"], title))


def init_figure(model: dict[str, Any]) -> bytes:
    """Draw a model against its initialisation: profiles of the change, raw weights, init."""
    init = model["init"]
    fig = _figure(11, 3.8)
    axes = fig.subplots(1, 2)
    curves = [
        ("final - init", model["profile"]),
        ("final (raw)", init["profile_raw"]),
        ("init", init["init_profile"]),
    ]
    for scale, ax in zip(("linear", "log"), axes, strict=True):
        for label, v in curves:
            p = _arr(v)
            x = np.arange(1, p.size + 1)
            ax.plot(x, np.where(p > 0, p, np.nan) if scale == "log" else p, marker=".", label=label)
        ax.set_yscale(scale)
        ax.set_xlabel("PCA component")
        ax.set_ylabel("energy (max-normalised)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    rc = init["relative_change"]
    change = "n/a" if rc is None else f"{rc:.3f}"
    fig.suptitle(
        f"{model['name']} vs its init: r(change, init) = "
        f"{init['correlation_delta_vs_init']:.3f}, |W - W0| / |W0| = {change}",
        fontsize=10,
    )
    return _png(fig)


def fit_figure(model: dict[str, Any]) -> bytes:
    """Draw a model's profile with the fitted linear-CNN theory curve."""
    f = model["fit"]
    title = (
        f"{model['name']}: theory fit t = {f['t']:.4g} (eta*t = {f['eta_t']:.4g}), "
        f"r = {f['correlation']:.4f}"
    )
    return _png(draw_fit(model["profile"], f["curve"], title))


def filters_figure(name: str, weight: np.ndarray, init: np.ndarray | None) -> bytes:
    """Draw the first-layer filters as an image grid (and their change from init when known)."""
    return _png(draw_filters(name, weight, init))


def eigenspectrum_figure(group: dict[str, Any]) -> bytes:
    """Draw the patch eigenvalues, their cumulative share and the patch power spectrum."""
    title = f"group {group['key']}: {group['count']:,} patches"
    return _png(draw_eigenspectrum(group["eigenvalues"], group["explained_variance_ratio"],
                                   group["patch_power_spectrum"], title))  # fmt: skip


def labels_figure(group: dict[str, Any], class_names: list[str] | None) -> bytes:
    """Draw the label/patch assumption check: label correlation per class and component."""
    lab = group["labels"]
    coef = _arr(lab["coefficient"])
    dist = _arr(lab["class_mean_distance"])
    classes = [int(c) for c in lab["classes"]]
    names = [
        class_names[c] if class_names is not None and c < len(class_names) else str(c)
        for c in classes
    ]
    fig = _figure(12, 3.8, left=0.1, wspace=0.35)
    axes = fig.subplots(1, 2, width_ratios=[2, 1])
    lim = max(float(np.abs(coef).max()), 1e-12)
    im = axes[0].imshow(coef, aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim)
    axes[0].set_yticks(range(len(names)), names, fontsize=7)
    axes[0].set_xlabel("PCA component")
    axes[0].set_title("corr(one-vs-all label, PCA coefficient) per patch", fontsize=9)
    fig.colorbar(im, ax=axes[0], shrink=0.8)
    axes[1].barh(range(len(names)), dist)
    axes[1].set_yticks(range(len(names)), names, fontsize=7)
    axes[1].invert_yaxis()
    axes[1].set_xlabel("|class mean - mean| / patch std")
    axes[1].set_title("class-mean patch distance", fontsize=9)
    axes[1].grid(alpha=0.3)
    fig.suptitle(
        f"group {group['key']}: max |corr| = {lab['max_abs_coefficient']:.4f}", fontsize=10
    )
    return _png(fig)


def claims_figure(claims: list[dict[str, Any]]) -> bytes:
    """The paper's number against the measured one for every claim of ``firstlayer reproduce``."""
    fig = _figure(9.0, 0.32 * len(claims) + 1.2, left=0.07, right=0.98, bottom=0.6 / (
        0.32 * len(claims) + 1.2), top=0.97)  # fmt: skip
    ax = fig.add_subplot(1, 1, 1)
    ys = np.arange(len(claims))[::-1]
    for y, c in zip(ys, claims, strict=True):
        ax.errorbar(c["paper"], y + 0.15, xerr=c["paper_spread"] or 0.0, fmt="s", color="0.4",
                    ms=5, capsize=3, label="paper" if y == ys[0] else None)  # fmt: skip
        m = c["measured"]
        if m is not None and math.isfinite(m):
            color = "tab:green" if c["holds"] else "tab:red"
            ax.errorbar(m, y - 0.15, xerr=c["spread"] or 0.0, fmt="o", color=color, ms=5,
                        capsize=3, label="measured" if y == ys[0] else None)  # fmt: skip
    ax.set_yticks(ys)
    ax.set_yticklabels([c["id"] for c in claims])
    ax.axvline(0, color="0.85", lw=0.8)
    ax.set_xlabel("correlation (paper: grey squares; measured: green holds, red does not)")
    ax.set_xlim(-1.05, 1.05)
    return _png(fig)


def true_random_figure(
    true: Sequence[Any], rand: Sequence[Any], curves: Sequence[Any] = ()
) -> bytes:
    """Mean energy profiles (+- std) of true- and random-label runs, with the mean fitted curve."""
    true_a, rand_a = [_arr(v) for v in true], [_arr(v) for v in rand]
    fig = _figure(7.0, 3.2, left=0.09, bottom=0.15, top=0.92)
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(1, true_a[0].size + 1)
    for arr, label, color in ((true_a, "true labels", "tab:blue"),
                              (rand_a, "random labels", "tab:orange")):  # fmt: skip
        a = np.stack(arr)
        ax.plot(x, a.mean(0), color=color, label=f"{label} (mean of {len(arr)})")
        ax.fill_between(x, a.mean(0) - a.std(0), a.mean(0) + a.std(0), color=color, alpha=0.2)
    if len(curves):
        ax.plot(x, np.stack([_arr(c) for c in curves]).mean(0), "k--",
                label="linear-CNN formula (fitted)")  # fmt: skip
    ax.set_xlabel("PCA component")
    ax.set_ylabel("energy (max-normalised)")
    ax.set_title("Energy profiles (cf. the paper's Figs. 3 and 7)")
    ax.legend(fontsize=8)
    return _png(fig)
