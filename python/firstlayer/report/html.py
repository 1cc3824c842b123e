"""The self-contained ``index.html`` of a comparison report.

One file, no scripts, no external resources: every plot is a PNG embedded as a ``data:`` URI and
every number comes from the report dictionary that is also written as ``report.json``.
"""

from __future__ import annotations

import base64
import html
import json
from typing import Any

__all__ = ["page", "png_data_uri", "render_html"]

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2em auto;
max-width:1200px;padding:0 1em;color:#1d1d1f;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;
margin-top:2em}h3{margin-top:1.4em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}
th,td{border:1px solid #ddd;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#f5f5f7}td.n{text-align:right;font-variant-numeric:tabular-nums}
figure{margin:1em 0}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.85em;color:#555}code{background:#f5f5f7;padding:0 .2em}
.muted{color:#666;font-size:.9em}nav a{margin-right:1em}
"""


def _e(v: Any) -> str:
    return html.escape(str(v), quote=True)


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return _e(v)


def _table(header: list[str], rows: list[list[Any]], numeric: set[int] | None = None) -> str:
    numeric = numeric or set()
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="n">{_fmt(c)}</td>' if i in numeric else f"<td>{_fmt(c)}</td>"
            for i, c in enumerate(r)
        )
        + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def png_data_uri(png: bytes) -> str:
    """A ``data:`` URI of PNG bytes, for an ``<img src=...>`` that needs no other file."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def page(title: str, body: str) -> str:
    """A whole HTML page: the report's head (title, style sheet) around ``body``."""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<link rel="icon" href="data:,">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head>\n<body>\n{body}\n</body></html>\n"
    )


def _figure(fig: dict[str, Any], png: bytes) -> str:
    return (
        f'<figure id="fig-{_e(fig["file"])}"><img src="{png_data_uri(png)}" '
        f'alt="{_e(fig["title"])}" data-file="{_e(fig["file"])}">'
        f"<figcaption><b>{_e(fig['title'])}.</b> {_e(fig['caption'])} "
        f"(<code>{_e(fig['file'])}</code>)</figcaption></figure>"
    )


def render_html(report: dict[str, Any], pngs: dict[str, bytes]) -> str:
    """Render the report dictionary and its PNG figures as one HTML page.

    Parameters
    ----------
    report : dict
        The JSON-ready report (``report.json``).
    pngs : dict
        File name -> PNG bytes of every figure listed in ``report["figures"]``.

    Returns
    -------
    str
        The HTML text.
    """
    figs = {f["file"]: f for f in report["figures"]}

    def section_figs(section: str) -> str:
        chosen = [name for name, f in figs.items() if f["section"] == section]
        return "".join(_figure(figs[name], pngs[name]) for name in chosen)

    models = report["models"]
    groups = report["groups"]
    parts: list[str] = []
    title = report.get("title") or "firstlayer comparison report"
    parts.append(f"<h1>{_e(title)}</h1>")
    data = report["data"]
    version = report["provenance"]["versions"].get("firstlayer")
    parts.append(
        f'<p class="muted">{len(models)} first layer(s) compared on {_e(data.get("name"))}; '
        f"created {_e(report['created'])} by firstlayer {_e(version)}.</p>"
    )
    nav = [
        ("summary", "Summary"),
        ("profiles", "Energy profiles"),
        ("correlation", "Correlations"),
        ("fit", "Theory fit"),
        ("init", "Model vs init"),
        ("dft", "DFT energy"),
        ("filters", "Filters"),
        ("patches", "Patch spectrum"),
        ("labels", "Label check"),
        ("trajectory", "Along training"),
        ("provenance", "Provenance"),
    ]
    parts.append("<nav>" + "".join(f'<a href="#{a}">{_e(t)}</a>' for a, t in nav) + "</nav>")

    # Summary
    rows = []
    for m in models:
        f = m["fit"]
        rows.append(
            [
                m["name"],
                m["kind"],
                "x".join(str(s) for s in m["shape"]),
                m["group"],
                m["meta"].get("labels"),
                m["meta"].get("seed"),
                m["init_known"],
                f.get("t"),
                f.get("correlation"),
            ]
        )
    parts.append('<h2 id="summary">Summary</h2>')
    parts.append(
        _table(
            ["model", "kind", "shape", "group", "labels", "seed", "init known", "fit t", "fit r"],
            rows,
            numeric={5, 7, 8},
        )
    )
    grows = [
        [
            g["key"],
            g["kernel_size"],
            g["channels"],
            g["normalization"]["name"],
            g["n_images"],
            g["count"],
            ", ".join(g["models"]),
        ]
        for g in groups
    ]
    parts.append(
        "<p>Models are compared within groups of equal patch geometry and input normalisation; "
        "each group has its own PCA basis.</p>"
    )
    parts.append(
        _table(
            ["group", "k", "C", "normalisation", "images", "patches", "models"],
            grows,
            numeric={1, 2, 4, 5},
        )
    )

    parts.append('<h2 id="profiles">Energy profiles (PCA basis)</h2>')
    parts.append(
        "<p>Energy of the filters along each principal component of the patches, "
        "<code>e_i = sqrt(mean_f (w_f . u_i)^2)</code>, max-normalised; the initial weights are "
        "subtracted when known.</p>"
    )
    parts.append(section_figs("profiles"))

    parts.append('<h2 id="correlation">Correlation matrix</h2>')
    for g in groups:
        parts.append(f"<h3>group {_e(g['key'])}</h3>")
        header = ["", *g["models"]]
        corr_rows = [[n, *row] for n, row in zip(g["models"], g["correlation"], strict=True)]
        parts.append(_table(header, corr_rows, numeric=set(range(1, len(header)))))
    parts.append(section_figs("correlation"))

    parts.append('<h2 id="fit">Linear-theory fit</h2>')
    fit_rows = [
        [
            m["name"],
            m["fit"].get("t"),
            m["fit"].get("eta"),
            m["fit"].get("eta_t"),
            m["fit"].get("correlation"),
            m["fit"].get("error", ""),
        ]
        for m in models
    ]
    parts.append(
        "<p>The closed-form profile of a linear CNN after <i>t</i> gradient steps (Chowers &amp; "
        "Weiss, Thm. 4.2) fitted to each profile by choosing <i>t</i>.</p>"
    )
    parts.append(
        _table(["model", "t", "eta", "eta*t", "correlation", "note"], fit_rows, {1, 2, 3, 4})
    )
    parts.append(section_figs("fit"))

    parts.append('<h2 id="init">Each model against its initialisation</h2>')
    init_rows = [
        [
            m["name"],
            m["init"]["relative_change"],
            m["init"]["correlation_delta_vs_init"],
            m["init"]["correlation_raw_vs_init"],
            m["init"]["correlation_delta_vs_raw"],
        ]
        for m in models
        if m.get("init")
    ]
    if init_rows:
        parts.append(
            _table(
                [
                    "model",
                    "|W - W0| / |W0|",
                    "r(change, init)",
                    "r(final, init)",
                    "r(change, final)",
                ],
                init_rows,
                {1, 2, 3, 4},
            )
        )
        parts.append(section_figs("init"))
    else:
        parts.append("<p>No model's initial weights are known (pretrained inputs).</p>")

    parts.append('<h2 id="dft">DFT energy maps</h2>')
    parts.append(
        "<p>Energy of the filter bank at each 2D spatial frequency of the k x k grid "
        "(orthonormal DFT; zero frequency at the centre), summed over channels and per channel, "
        "and its radial average.</p>"
    )
    parts.append(section_figs("dft"))

    parts.append('<h2 id="filters">First-layer filters</h2>')
    parts.append(section_figs("filters"))

    parts.append('<h2 id="patches">Patch eigen-spectrum</h2>')
    for g in groups:
        ev = g["eigenvalues"]
        ratio = g["explained_variance_ratio"]
        top = min(10, len(ev))
        parts.append(f"<h3>group {_e(g['key'])}</h3>")
        parts.append(
            _table(
                ["component", "eigenvalue", "explained variance"],
                [[i + 1, ev[i], ratio[i]] for i in range(top)],
                {0, 1, 2},
            )
        )
    parts.append(section_figs("patches"))

    parts.append('<h2 id="labels">Label / patch assumption check</h2>')
    labelled = [g for g in groups if g.get("labels")]
    if labelled:
        parts.append(
            "<p>The theory assumes the labels are uncorrelated with the patches' PCA "
            "coefficients (equal class-mean patches). Small values support it.</p>"
        )
        names = report["data"].get("class_names")
        for g in labelled:
            lab = g["labels"]
            parts.append(
                f"<h3>group {_e(g['key'])}: max |corr| = {_fmt(lab['max_abs_coefficient'])}</h3>"
            )
            lrows = [
                [
                    names[c] if names and c < len(names) else c,
                    lab["class_counts"][i],
                    lab["class_mean_distance"][i],
                    max(abs(v) for v in lab["coefficient"][i]),
                ]
                for i, c in enumerate(lab["classes"])
            ]
            parts.append(
                _table(["class", "patches", "class-mean distance", "max |corr|"], lrows, {1, 2, 3})
            )
        parts.append(section_figs("labels"))
    else:
        parts.append("<p>The statistics carry no labels, so the check was not run.</p>")

    parts.append(_trajectory_section(report, section_figs("trajectory")))

    parts.append('<h2 id="provenance">Provenance</h2>')
    prov = report["provenance"]
    parts.append("<p>Command line: <code>" + _e(" ".join(report["command"])) + "</code></p>")
    parts.append(_table(["package", "version"], [[k, v] for k, v in prov["versions"].items()]))
    parts.append(_table(["data", "value"], [[k, v] for k, v in report["data"].items()]))
    parts.append(
        _table(["group", "statistics sha256"], [[g["key"], g["stats_sha256"]] for g in groups])
    )
    mrows = [
        [m["name"], m["input"], m["layer"], json.dumps(m["meta"], sort_keys=True)] for m in models
    ]
    parts.append(_table(["model", "input", "layer", "seed, labels, config"], mrows))
    frows = [[m["name"], path, sha] for m in models for path, sha in m["files"].items()]
    if frows:
        parts.append(_table(["model", "file", "sha256"], frows))
    parts.append(
        '<p class="muted">Every number on this page is in <code>report.json</code>; profiles '
        "are also in <code>profiles.csv</code>.</p>"
    )
    return page(title, "\n".join(parts))


def _trajectory_section(report: dict[str, Any], figures: str) -> str:
    """Each run's regime and every pair of runs along training (``models[].regime``, ``pairs``)."""
    from firstlayer.trajectory import SETTLE_RULE

    parts = ['<h2 id="trajectory">Along training (an extension beyond the paper)</h2>']
    regimes = [m["regime"] for m in report["models"] if m.get("regime")]
    if not regimes:
        parts.append(
            "<p>No input is a training run with first-layer snapshots, so nothing is shown "
            "along training.</p>"
        )
        return "\n".join(parts)
    parts.append(
        "<p>The paper reads its numbers at the end of training. A network's profile moves along "
        "the linear theory's one-parameter family in <i>eta*t</i> as it trains, at a rate of its "
        "own, so each run's regime is shown (where it ended), and each pair of runs is compared "
        "at every recorded step and, beyond the paper, at matched fitted <i>eta*t</i>. Settling "
        f"rule: {_e(SETTLE_RULE)}.</p>"
    )
    rows = [
        [
            g["name"],
            g["steps"],
            g["train_acc"],
            g["eta_t"],
            g["fit_correlation"],
            g["relative_change"],
            g["settle_change"],
            "yes" if g["settled"] else "no",
        ]
        for g in regimes
    ]
    parts.append(
        _table(
            [
                "run",
                "steps",
                "train acc",
                "fitted eta*t",
                "fit r",
                "|W - W0| / |W0|",
                "change, last 20%",
                "settled",
            ],
            rows,
            {1, 2, 3, 4, 5, 6},
        )  # fmt: skip
    )
    pairs = report.get("pairs") or []
    if pairs:
        prow = []
        for p in pairs:
            tr, al = p["trajectory"], p["aligned"]
            prow.append(
                [
                    p["a"],
                    p["b"],
                    p["final"],
                    min(tr["correlation"]) if tr["correlation"] else None,
                    al["eta_t"][-1] if al["eta_t"] else None,
                    al["correlation"][-1] if al["correlation"] else None,
                    min(al["correlation"]) if al["correlation"] else None,
                ]
            )
        parts.append(
            _table(
                [
                    "run a",
                    "run b",
                    "r at the end",
                    "min r over matched steps",
                    "largest common eta*t",
                    "r there (aligned)",
                    "min r aligned",
                ],
                prow,
                {2, 3, 4, 5, 6},
            )  # fmt: skip
        )
    parts.append(figures)
    return "\n".join(parts)
