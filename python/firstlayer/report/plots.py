"""The figures of a comparison report, drawn with matplotlib's Agg canvas into PNG bytes.

matplotlib is imported inside the functions (``import firstlayer`` stays light), and only its
object-oriented API is used: no pyplot, no global backend switch, no state shared with the caller.
Each function takes the blocks of ``report.json`` (see :mod:`firstlayer.report.compute`) so that a
figure shows exactly the numbers the JSON holds.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

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

_DPI = 100


def _figure(width: float, height: float, **margins: float) -> Any:
    """Make a figure with fixed margins (no layout engine: constrained layout doubles the time)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=_DPI)
    adjust = {"left": 0.07, "right": 0.97, "bottom": 0.15, "top": 0.85, "wspace": 0.25}
    adjust.update(margins)
    fig.subplots_adjust(**adjust)
    return fig


def _png(fig: Any) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI, metadata={"Software": None})
    return buf.getvalue()


def _arr(v: Any) -> np.ndarray:
    return np.asarray(v, dtype=np.float64)


def profiles_figure(group: dict[str, Any], models: list[dict[str, Any]]) -> bytes:
    """Energy profiles of a group's models in its PCA basis, on linear and log axes."""
    fig = _figure(11, 4)
    axes = fig.subplots(1, 2)
    for scale, ax in zip(("linear", "log"), axes, strict=True):
        for m in models:
            p = _arr(m["profile"])
            x = np.arange(1, p.size + 1)
            y = np.where(p > 0, p, np.nan) if scale == "log" else p
            ax.plot(x, y, marker=".", label=m["name"])
        ax.set_yscale(scale)
        ax.set_xlabel("PCA component (most variance first)")
        ax.set_ylabel("energy (max-normalised)")
        ax.set_title(f"energy profiles, {scale} axis")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"group {group['key']}: {group['count']:,} patches")
    return _png(fig)


def correlation_figure(group: dict[str, Any]) -> bytes:
    """Pearson correlation matrix of the group's profiles, with the values written in."""
    r = _arr(group["correlation"])
    names = group["models"]
    n = len(names)
    size = max(3.5, 1.0 + 0.8 * n)
    fig = _figure(size + 1.2, size, left=0.25, bottom=0.25, top=0.9, right=0.95)
    ax = fig.subplots()
    im = ax.imshow(r, vmin=-1, vmax=1, cmap="RdBu_r")
    ax.set_xticks(range(n), names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n), names, fontsize=8)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, f"{r[i, j]:.3f}", ha="center", va="center", fontsize=8)
    fig.colorbar(im, ax=ax, shrink=0.8)
    ax.set_title("profile correlation")
    return _png(fig)


def dft_figure(model: dict[str, Any]) -> bytes:
    """Draw a model's filter energy per 2D frequency: summed, per channel, radial average."""
    dft = model["dft"]
    total = _arr(dft["total"])
    per = _arr(dft["per_channel"])
    chans = per.shape[0] if per.shape[0] <= 4 else 0
    fig = _figure(2.6 * (2 + chans), 2.9, left=0.05, bottom=0.2, top=0.82, wspace=0.45)
    axes = fig.subplots(1, 2 + chans)
    maps = [("all channels", total)] + [(f"channel {c}", per[c]) for c in range(chans)]
    k = total.shape[0]
    freqs = np.fft.fftshift(np.fft.fftfreq(k))
    extent = (freqs[0] - 0.5 / k, freqs[-1] + 0.5 / k, freqs[-1] + 0.5 / k, freqs[0] - 0.5 / k)
    vmax = float(total.max()) or 1.0
    for ax, (title, m) in zip(axes, maps, strict=False):
        im = ax.imshow(np.fft.fftshift(m), cmap="magma", vmin=0, vmax=vmax, extent=extent)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("fx (cycles/px)", fontsize=8)
        ax.set_ylabel("fy", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.colorbar(im, ax=list(axes[: len(maps)]), shrink=0.8)
    ax = axes[-1]
    ax.plot(_arr(dft["radii"]), _arr(dft["radial"]), marker="o")
    ax.set_xlabel("radial frequency (cycles/px)", fontsize=8)
    ax.set_title("radial average", fontsize=9)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    what = "final - init" if model["init_known"] else "weights"
    fig.suptitle(f"{model['name']}: DFT energy of {what}", fontsize=10)
    return _png(fig)


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
    p = _arr(model["profile"])
    curve = _arr(f["curve"])
    x = np.arange(1, p.size + 1)
    fig = _figure(11, 3.8)
    axes = fig.subplots(1, 2)
    for scale, ax in zip(("linear", "log"), axes, strict=True):
        y1 = np.where(p > 0, p, np.nan) if scale == "log" else p
        y2 = np.where(curve > 0, curve, np.nan) if scale == "log" else curve
        ax.plot(x, y1, "o", label="network")
        ax.plot(x, y2, "-", label="linear theory")
        ax.set_yscale(scale)
        ax.set_xlabel("PCA component")
        ax.set_ylabel("energy (max-normalised)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(
        f"{model['name']}: theory fit t = {f['t']:.4g} (eta*t = {f['eta_t']:.4g}), "
        f"r = {f['correlation']:.4f}",
        fontsize=10,
    )
    return _png(fig)


def _mosaic(w: np.ndarray) -> np.ndarray:
    """Tile a (F, C, k, k) bank into an image; each filter scaled symmetrically around grey."""
    f, c, k, _ = w.shape
    cols = int(np.ceil(np.sqrt(f)))
    rows = int(np.ceil(f / cols))
    show = w if c == 3 else w.mean(axis=1, keepdims=True)
    ch = show.shape[1]
    pad = 1
    out = np.ones(((k + pad) * rows + pad, (k + pad) * cols + pad, 3))
    for i in range(f):
        r, q = divmod(i, cols)
        tile = show[i]
        m = float(np.abs(tile).max()) or 1.0
        tile = 0.5 + 0.5 * tile / m
        img = np.repeat(tile, 3, axis=0) if ch == 1 else tile
        y, x = pad + r * (k + pad), pad + q * (k + pad)
        out[y : y + k, x : x + k] = img.transpose(1, 2, 0)
    return out


def filters_figure(name: str, weight: np.ndarray, init: np.ndarray | None) -> bytes:
    """Draw the first-layer filters as an image grid (and their change from init when known)."""
    banks = [("final weights", weight)]
    if init is not None:
        banks.append(("final - init", weight - init))
    fig = _figure(4.2 * len(banks), 4.6, left=0.02, right=0.98, bottom=0.02, top=0.88)
    axes = np.atleast_1d(fig.subplots(1, len(banks)))
    for ax, (title, w) in zip(axes, banks, strict=True):
        ax.imshow(_mosaic(w), interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.set_axis_off()
    f, c, k, _ = weight.shape
    fig.suptitle(f"{name}: {f} filters of {c}x{k}x{k}", fontsize=10)
    return _png(fig)


def eigenspectrum_figure(group: dict[str, Any]) -> bytes:
    """Draw the patch eigenvalues, their cumulative share and the patch power spectrum."""
    ev = _arr(group["eigenvalues"])
    ratio = _arr(group["explained_variance_ratio"])
    spec = _arr(group["patch_power_spectrum"]).sum(axis=0)
    x = np.arange(1, ev.size + 1)
    fig = _figure(12, 3.6, wspace=0.3)
    axes = fig.subplots(1, 3)
    axes[0].semilogy(x, np.where(ev > 0, ev, np.nan), marker=".")
    axes[0].set_title("patch PCA eigenvalues", fontsize=9)
    axes[0].set_xlabel("component")
    axes[0].grid(alpha=0.3)
    axes[1].plot(x, np.cumsum(ratio), marker=".")
    axes[1].set_ylim(0, 1.02)
    axes[1].set_title("cumulative explained variance", fontsize=9)
    axes[1].set_xlabel("components")
    axes[1].grid(alpha=0.3)
    im = axes[2].imshow(np.log10(np.maximum(np.fft.fftshift(spec), 1e-300)), cmap="viridis")
    axes[2].set_title("patch DFT power, log10 (centre = DC)", fontsize=9)
    axes[2].set_axis_off()
    fig.colorbar(im, ax=axes[2], shrink=0.8)
    fig.suptitle(f"group {group['key']}: {group['count']:,} patches", fontsize=10)
    return _png(fig)


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
