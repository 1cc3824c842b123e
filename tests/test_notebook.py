"""Results in Jupyter: ``_repr_html_`` tables, ``.plot()`` figures (the reports' own), and the
example notebook executed by a real kernel (nbclient + ipykernel)."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import firstlayer
from firstlayer import _display
from firstlayer.report import plots
from firstlayer.sources import load_sample
from firstlayer.theory import fit

pytest.importorskip("matplotlib")
ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "examples" / "quickstart.ipynb"


@pytest.fixture(scope="module")
def stats() -> Any:
    images, labels, _ = load_sample("test")
    return firstlayer.patch_stats(images[:200], kernel_size=3, labels=labels[:200])


@pytest.fixture(scope="module")
def bank() -> np.ndarray:
    return np.random.default_rng(7).normal(size=(16, 3, 3, 3))


def cells(page: str) -> dict[str, str]:
    """The ``<th>``/``<td>`` pairs of a repr table, unescaped."""
    import re

    pairs = re.findall(r"<th[^>]*>(.*?)</th><td[^>]*>(.*?)</td>", page)
    return {html.unescape(k): html.unescape(v) for k, v in pairs}


def test_patch_stats_html_holds_its_numbers(stats: Any) -> None:
    got = cells(stats._repr_html_())
    assert got["patch"] == "3 x 3 x 3" and got["images"] == "200"
    assert got["patches"] == f"{200 * 30 * 30:,}" and got["sums"] == "exact uint8 sums"
    assert got["classes"] == "10"
    # an independent eigendecomposition of the covariance numpy computes from the patches
    images, _, _ = load_sample("test")
    win = np.lib.stride_tricks.sliding_window_view(images[:200].astype(np.float64), (3, 3), (2, 3))
    flat = win.transpose(0, 2, 3, 1, 4, 5).reshape(-1, 27)
    ev = np.sort(np.linalg.eigvalsh(np.cov(flat, rowvar=False, bias=True)))[::-1]
    share = np.cumsum(ev)[:3] / ev.sum()
    assert got["variance in PCs 1..3"] == ", ".join(f"{s:.3f}" for s in share)


def test_fit_and_dft_html_hold_their_numbers(stats: Any, bank: np.ndarray) -> None:
    r = fit(firstlayer.energy_profile(bank, stats), stats)
    got = cells(r._repr_html_())
    assert got["eta * t"] == f"{r.eta_t:.6g}" and got["correlation r"] == f"{r.correlation:.6g}"
    assert got["components"] == "27"
    d = firstlayer.dft_profile(bank)
    got = cells(d._repr_html_())
    power = d.total**2
    assert got["share of power at DC"] == f"{power[0, 0] / power.sum():.6g}"
    assert got["kernel"] == "3 channels x 3 x 3"


def test_html_escapes_names() -> None:
    page = _display.html_table("<b>", [("a<b", "x & y")])
    assert "<b>" not in page.replace("<strong>", "").replace("</strong>", "")
    assert "&lt;b&gt;" in page and "x &amp; y" in page


def test_plot_methods_draw_the_report_figures(stats: Any, bank: np.ndarray) -> None:
    from matplotlib.figure import Figure

    profile = firstlayer.energy_profile(bank, stats)
    r = fit(profile, stats)
    block = {"name": "m", "profile": profile, "fit": {"t": r.t, "eta_t": r.eta_t,
             "correlation": r.correlation, "curve": r.curve}}  # fmt: skip
    title = f"m: theory fit t = {r.t:.4g} (eta*t = {r.eta_t:.4g}), r = {r.correlation:.4f}"
    fig = r.plot(profile, title=title)
    assert isinstance(fig, Figure)
    assert _display.png_bytes(fig) == plots.fit_figure(block)  # byte for byte the report's

    d = firstlayer.dft_profile(bank)
    model = {"name": "m", "init_known": False, "dft": {"total": d.total,
             "per_channel": d.per_channel, "radii": d.radii, "radial": d.radial}}  # fmt: skip
    assert _display.png_bytes(d.plot("m: DFT energy of weights")) == plots.dft_figure(model)

    fig = stats.plot()
    ev = np.asarray(fig.axes[0].lines[0].get_ydata())
    pca = stats.pca() if callable(stats.pca) else stats.pca  # a method since issue 18
    np.testing.assert_allclose(ev, pca.eigenvalues)
    np.testing.assert_allclose(fig.axes[1].lines[0].get_ydata()[-1], 1.0)


def test_the_example_notebook_runs(tmp_path: Path) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    pytest.importorskip("torch")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    kinds = [k for o in outputs for k in o.get("data", {})]
    assert kinds.count("image/png") >= 4  # stats, fit, DFT, trajectory plots
    pages = [o["data"]["text/html"] for o in outputs if "text/html" in o.get("data", {})]
    assert any("PatchStats" in p for p in pages) and any("Trajectory" in p for p in pages)
    assert (tmp_path / "runs" / "quickstart" / "result.json").is_file()
