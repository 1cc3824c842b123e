"""How results show themselves: HTML tables for Jupyter and the matplotlib figures.

One implementation of each figure serves both the reports (:mod:`firstlayer.report.plots`
encodes them as PNG) and the ``.plot()`` methods of :class:`~firstlayer.stats.PatchStats`,
:class:`~firstlayer.profile.DFTProfile` and :class:`~firstlayer.theory.FitResult`, which return
the :class:`matplotlib.figure.Figure` itself (Jupyter draws it inline). The figures take plain
arrays, so this module sits at the bottom of the package and imports nothing of it.

matplotlib is imported inside the functions, and only its object-oriented API is used: no
pyplot, no global backend switch, no state shared with the caller.
"""

from __future__ import annotations

import html
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "DPI",
    "comparison_figure",
    "comparison_rows",
    "dft_figure",
    "dft_rows",
    "draw_correlation",
    "draw_dft",
    "draw_eigenspectrum",
    "draw_filters",
    "draw_fit",
    "draw_profiles",
    "figure_rgb",
    "fit_figure",
    "fit_rows",
    "html_table",
    "mosaic",
    "new_figure",
    "png_bytes",
    "stats_figure",
    "stats_rows",
    "trajectory_figure",
    "trajectory_rows",
]

DPI = 100


def new_figure(width: float, height: float, **margins: float) -> Any:
    """Make a figure with fixed margins (no layout engine: constrained layout doubles the time)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI)
    adjust = {"left": 0.07, "right": 0.97, "bottom": 0.15, "top": 0.85, "wspace": 0.25}
    adjust.update(margins)
    fig.subplots_adjust(**adjust)
    return fig


def png_bytes(fig: Any) -> bytes:
    """The figure as PNG bytes, without a timestamp or software tag (reproducible files)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def figure_rgb(fig: Any) -> np.ndarray:
    """The figure rendered to a ``uint8`` ``(H, W, 3)`` array (for TensorBoard images)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def _arr(v: Any) -> np.ndarray:
    return np.asarray(v, dtype=np.float64)


def _positive(y: np.ndarray, scale: str) -> np.ndarray:
    return np.where(y > 0, y, np.nan) if scale == "log" else y


# -- figures ----------------------------------------------------------------------------------


def draw_profiles(profiles: Mapping[str, Any] | Sequence[tuple[str, Any]], title: str) -> Any:
    """Energy profiles (name -> (p,) array, or (name, array) pairs) on linear and log axes."""
    pairs = list(profiles.items()) if isinstance(profiles, Mapping) else list(profiles)
    fig = new_figure(11, 4)
    axes = fig.subplots(1, 2)
    for scale, ax in zip(("linear", "log"), axes, strict=True):
        for name, v in pairs:
            p = _arr(v)
            ax.plot(np.arange(1, p.size + 1), _positive(p, scale), marker=".", label=name)
        ax.set_yscale(scale)
        ax.set_xlabel("PCA component (most variance first)")
        ax.set_ylabel("energy (max-normalised)")
        ax.set_title(f"energy profiles, {scale} axis")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    return fig


def draw_correlation(r: Any, names: Sequence[str], title: str = "profile correlation") -> Any:
    """A correlation matrix with the values written in."""
    r = _arr(r)
    n = len(names)
    size = max(3.5, 1.0 + 0.8 * n)
    fig = new_figure(size + 1.2, size, left=0.25, bottom=0.25, top=0.9, right=0.95)
    ax = fig.subplots()
    im = ax.imshow(r, vmin=-1, vmax=1, cmap="RdBu_r")
    ax.set_xticks(range(n), names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n), names, fontsize=8)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, f"{r[i, j]:.3f}", ha="center", va="center", fontsize=8)
    fig.colorbar(im, ax=ax, shrink=0.8)
    ax.set_title(title)
    return fig


def draw_dft(total: Any, per_channel: Any, radii: Any, radial: Any, title: str) -> Any:
    """Filter energy per 2D frequency: summed, per channel (up to 4), and its radial average."""
    total = _arr(total)
    per = _arr(per_channel)
    chans = per.shape[0] if per.shape[0] <= 4 else 0
    fig = new_figure(2.6 * (2 + chans), 2.9, left=0.05, bottom=0.2, top=0.82, wspace=0.45)
    axes = fig.subplots(1, 2 + chans)
    maps = [("all channels", total)] + [(f"channel {c}", per[c]) for c in range(chans)]
    k = total.shape[0]
    freqs = np.fft.fftshift(np.fft.fftfreq(k))
    extent = (freqs[0] - 0.5 / k, freqs[-1] + 0.5 / k, freqs[-1] + 0.5 / k, freqs[0] - 0.5 / k)
    vmax = float(total.max()) or 1.0
    for ax, (name, m) in zip(axes, maps, strict=False):
        im = ax.imshow(np.fft.fftshift(m), cmap="magma", vmin=0, vmax=vmax, extent=extent)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("fx (cycles/px)", fontsize=8)
        ax.set_ylabel("fy", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.colorbar(im, ax=list(axes[: len(maps)]), shrink=0.8)
    ax = axes[-1]
    ax.plot(_arr(radii), _arr(radial), marker="o")
    ax.set_xlabel("radial frequency (cycles/px)", fontsize=8)
    ax.set_title("radial average", fontsize=9)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    return fig


def draw_fit(profile: Any, curve: Any, title: str) -> Any:
    """A network's profile (dots; omitted when None) with the fitted theory curve (line)."""
    curve = _arr(curve)
    x = np.arange(1, curve.size + 1)
    fig = new_figure(11, 3.8)
    axes = fig.subplots(1, 2)
    for scale, ax in zip(("linear", "log"), axes, strict=True):
        if profile is not None:
            ax.plot(x, _positive(_arr(profile), scale), "o", label="network")
        ax.plot(x, _positive(curve, scale), "-", label="linear theory")
        ax.set_yscale(scale)
        ax.set_xlabel("PCA component")
        ax.set_ylabel("energy (max-normalised)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    return fig


def mosaic(w: np.ndarray) -> np.ndarray:
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


def draw_filters(name: str, weight: np.ndarray, init: np.ndarray | None) -> Any:
    """The filters as an image grid (and their change from init when known)."""
    banks = [("final weights", weight)]
    if init is not None:
        banks.append(("final - init", weight - init))
    fig = new_figure(4.2 * len(banks), 4.6, left=0.02, right=0.98, bottom=0.02, top=0.88)
    axes = np.atleast_1d(fig.subplots(1, len(banks)))
    for ax, (label, w) in zip(axes, banks, strict=True):
        ax.imshow(mosaic(w), interpolation="nearest")
        ax.set_title(label, fontsize=9)
        ax.set_axis_off()
    f, c, k, _ = weight.shape
    fig.suptitle(f"{name}: {f} filters of {c}x{k}x{k}", fontsize=10)
    return fig


def draw_eigenspectrum(eigenvalues: Any, ratio: Any, spectrum: Any, title: str) -> Any:
    """Patch eigenvalues, their cumulative share, and the patch power spectrum ((C, k, k))."""
    ev = _arr(eigenvalues)
    spec = _arr(spectrum).sum(axis=0)
    x = np.arange(1, ev.size + 1)
    fig = new_figure(12, 3.6, wspace=0.3)
    axes = fig.subplots(1, 3)
    axes[0].semilogy(x, np.where(ev > 0, ev, np.nan), marker=".")
    axes[0].set_title("patch PCA eigenvalues", fontsize=9)
    axes[0].set_xlabel("component")
    axes[0].grid(alpha=0.3)
    axes[1].plot(x, np.cumsum(_arr(ratio)), marker=".")
    axes[1].set_ylim(0, 1.02)
    axes[1].set_title("cumulative explained variance", fontsize=9)
    axes[1].set_xlabel("components")
    axes[1].grid(alpha=0.3)
    im = axes[2].imshow(np.log10(np.maximum(np.fft.fftshift(spec), 1e-300)), cmap="viridis")
    axes[2].set_title("patch DFT power, log10 (centre = DC)", fontsize=9)
    axes[2].set_axis_off()
    fig.colorbar(im, ax=axes[2], shrink=0.8)
    fig.suptitle(title, fontsize=10)
    return fig


# -- HTML -------------------------------------------------------------------------------------


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    if isinstance(v, np.ndarray):
        head = ", ".join(f"{x:.4g}" for x in v.ravel()[:6])
        more = ", ..." if v.size > 6 else ""
        return f"{v.dtype} {tuple(v.shape)}: [{head}{more}]"
    return str(v)


def html_table(title: str, rows: Sequence[tuple[str, Any]]) -> str:
    """A small two-column table (the key numbers of a result), escaped, for ``_repr_html_``."""
    body = "".join(
        f"<tr><th style='text-align:left;padding-right:1em'>{html.escape(k)}</th>"
        f"<td style='text-align:left'>{html.escape(_cell(v))}</td></tr>"
        for k, v in rows
    )
    return f"<div><strong>{html.escape(title)}</strong><table>{body}</table></div>"


# -- the results' own views (the objects are taken as they come: no import of their modules) ---


def _eigenvalues(stats: Any) -> np.ndarray:
    pca = stats.pca
    return np.asarray((pca() if callable(pca) else pca).eigenvalues)  # a method or a property


def stats_rows(stats: Any) -> list[tuple[str, Any]]:
    """The key numbers of a :class:`~firstlayer.stats.PatchStats`."""
    rows: list[tuple[str, Any]] = [
        ("patch", f"{stats.channels} x {stats.kernel_size} x {stats.kernel_size}"),
        ("stride, padding", f"{stats.stride}, {stats.padding}"),
        ("images", int(stats.n_images)),
        ("patches", int(stats.count)),
        ("sums", "exact uint8 sums" if stats.exact else "float64 sums"),
    ]
    if stats.transform is not None:
        t = stats.transform
        rows.append(("normalized", f"mean {t.get('mean')}, std {t.get('std')}"))
    if len(stats.class_counts):
        rows.append(("classes", len(stats.class_counts)))
    if stats.count > 1 and stats.dim <= 1024:  # an eigendecomposition of at most 1024 x 1024
        ev = _eigenvalues(stats)
        total = float(ev.sum())
        if total > 0:
            share = np.cumsum(ev)[: min(3, ev.size)] / total
            rows.append(("variance in PCs 1..3", ", ".join(f"{s:.3f}" for s in share)))
    if stats.skipped:
        rows.append(("skipped inputs", len(stats.skipped)))
    return rows


def stats_figure(stats: Any) -> Any:
    """Eigenvalues, explained variance and patch power spectrum (the report's figure)."""
    ev = _eigenvalues(stats)
    total = float(ev.sum())
    ratio = ev / total if total > 0 else np.zeros_like(ev)
    k, c = stats.kernel_size, stats.channels
    title = f"{c}x{k}x{k} patches: {int(stats.count):,} from {int(stats.n_images):,} images"
    return draw_eigenspectrum(ev, ratio, stats.spectrum(), title)


def dft_rows(p: Any) -> list[tuple[str, Any]]:
    """The key numbers of a :class:`~firstlayer.profile.DFTProfile`."""
    total = np.asarray(p.total, dtype=np.float64)
    power = total**2
    radial = np.asarray(p.radial, dtype=np.float64)
    return [
        ("kernel", f"{p.per_channel.shape[0]} channels x {total.shape[0]} x {total.shape[1]}"),
        ("share of power at DC", float(power[0, 0] / power.sum()) if power.sum() > 0 else 0.0),
        ("peak radial frequency", float(np.asarray(p.radii)[int(np.argmax(radial))])),
        ("radial average", radial),
    ]


def dft_figure(p: Any, title: str = "DFT energy of the filters") -> Any:
    """The report's DFT figure of a :class:`~firstlayer.profile.DFTProfile`."""
    return draw_dft(p.total, p.per_channel, p.radii, p.radial, title)


def fit_rows(r: Any) -> list[tuple[str, Any]]:
    """The key numbers of a :class:`~firstlayer.theory.FitResult`."""
    return [
        ("eta * t", float(r.eta_t)),
        ("t", float(r.t)),
        ("eta", float(r.eta)),
        ("correlation r", float(r.correlation)),
        ("components", int(np.asarray(r.curve).size)),
    ]


def fit_figure(r: Any, profile: Any = None, title: str | None = None) -> Any:
    """The report's theory-fit figure: the profile (when given) and the fitted curve."""
    if title is None:
        title = f"theory fit t = {r.t:.4g} (eta*t = {r.eta_t:.4g}), r = {r.correlation:.4f}"
    return draw_fit(profile, r.curve, title)


def trajectory_rows(t: Any) -> list[tuple[str, Any]]:
    """The key numbers of a :class:`~firstlayer.trajectory.Trajectory` (where the run ended)."""
    g = t.regime()
    return [
        ("run", t.name),
        ("snapshots", int(np.asarray(t.steps).size)),
        ("last step", g["steps"]),
        ("train accuracy", g["train_acc"]),
        ("fitted eta*t", g["eta_t"]),
        ("fit r", g["fit_correlation"]),
        ("|W - W0| / |W0|", g["relative_change"]),
        ("settling", g["settling"]),
    ]


def trajectory_figure(t: Any) -> Any:
    """Fitted ``eta*t`` and the fit's r along training, against the step (log axes)."""
    steps = np.asarray(t.steps, dtype=np.float64)
    fig = new_figure(11, 3.6, wspace=0.3)
    axes = fig.subplots(1, 2)
    axes[0].loglog(steps, np.where(t.eta_t > 0, t.eta_t, np.nan), marker=".")
    axes[0].set_ylabel("fitted eta*t")
    axes[1].semilogx(steps, t.fit_correlation, marker=".")
    axes[1].set_ylabel("theory fit r")
    for ax in axes:
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
    fig.suptitle(f"{t.name}: the first layer along training", fontsize=10)
    return fig


def comparison_rows(c: Any) -> list[tuple[str, Any]]:
    """The key numbers of a :class:`~firstlayer.trajectory.RunComparison`."""
    return [
        ("runs", f"{c.a.name} vs {c.b.name}"),
        ("profile r at the end", float(c.final)),
        ("matched steps", int(np.asarray(c.steps).size)),
        ("r at matched eta*t (last)", float(c.aligned_last)),
        (f"{c.a.name} fitted eta*t", c.a.regime()["eta_t"]),
        (f"{c.b.name} fitted eta*t", c.b.regime()["eta_t"]),
    ]


def comparison_figure(c: Any) -> Any:
    """Profile correlation of two runs at matched steps and at matched fitted ``eta*t``."""
    fig = new_figure(11, 3.6, wspace=0.3)
    axes = fig.subplots(1, 2)
    axes[0].semilogx(np.asarray(c.steps, dtype=np.float64), c.correlation, marker=".")
    axes[0].set_xlabel("optimizer step (matched)")
    axes[1].semilogx(c.aligned_eta_t, c.aligned_correlation, marker=".")
    axes[1].set_xlabel("fitted eta*t (matched; beyond the paper)")
    for ax in axes:
        ax.set_ylabel("profile correlation")
        ax.grid(alpha=0.3)
    fig.suptitle(f"{c.a.name} vs {c.b.name}: r = {c.final:.3f} at the end", fontsize=10)
    return fig
