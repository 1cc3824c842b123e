"""The claims section of ``firstlayer reproduce``'s page, and how it joins the comparison report.

:func:`claims_html` renders the claims table (``<section id="claims">``); :func:`with_claims` puts
it at the top of a comparison report's ``index.html`` (with a ``Claims`` link in its navigation);
:func:`claims_page` makes a page of the section alone, for reproductions without training runs.
Page scaffolding and figure encoding are those of :mod:`firstlayer.report.html`.
"""

from __future__ import annotations

import html
import math
from typing import Any

from firstlayer.report.html import page, png_data_uri

__all__ = ["claims_html", "claims_page", "figure_html", "with_claims"]


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return html.escape(str(v))


def figure_html(png: bytes, alt: str) -> str:
    """A ``<figure>`` holding the PNG itself (a ``data:`` URI)."""
    return f"<figure><img src='{png_data_uri(png)}' alt='{html.escape(alt)}'></figure>"


def _regime_table(regimes: dict[str, dict[str, Any]]) -> str:
    """Each training run's regime: where it ended and whether it settled."""
    if not regimes:
        return ""
    head = "".join(f"<th>{h}</th>" for h in ("Run", "Steps", "Train acc", "Fitted eta*t",
                   "Fit r", "|W - W0| / |W0|", "Change, last 20% of steps", "Settled"))  # fmt: skip
    rows = []
    for name, g in regimes.items():
        acc = g.get("train_acc")
        rows.append(
            f"<tr><td>{html.escape(name)}</td><td class='n'>{_fmt(g.get('steps'))}</td>"
            f"<td class='n'>{'n/a' if acc is None else f'{acc:.1%}'}</td>"
            f"<td class='n'>{_fmt(g.get('eta_t'))}</td>"
            f"<td class='n'>{_fmt(g.get('fit_correlation'))}</td>"
            f"<td class='n'>{_fmt(g.get('relative_change'))}</td>"
            f"<td class='n'>{_pct(g.get('settle_change'))}</td>"
            f"<td>{'yes' if g.get('settled') else 'no'}</td></tr>"
        )
    return (
        "<h3>Each run's regime</h3><table><thead><tr>" + head + "</tr></thead><tbody>"
        + "".join(rows) + "</tbody></table>"
    )  # fmt: skip


def _pct(v: Any) -> str:
    return "n/a" if not isinstance(v, int | float) or not math.isfinite(v) else f"{v:.1%}"


def claims_html(
    claims: list[dict[str, Any]],
    scale: str,
    notes: list[str],
    figures: str = "",
    regimes: dict[str, dict[str, Any]] | None = None,
) -> str:
    """The claims table as an HTML section (``<section id="claims">``).

    Parameters
    ----------
    claims : list of dict
        Rows of ``claims.json``.
    scale : str
        Name of the scale the claims were measured at.
    notes : list of str
        Notes listed above the table.
    figures : str
        HTML put at the end of the section (see :func:`figure_html`).
    regimes : dict, optional
        Run name -> regime, shown as a table under the claims.
    """
    held = sum(1 for c in claims if _verdict(c) == "holds")
    failed = sum(1 for c in claims if _verdict(c) == "does not hold")
    apart = sum(1 for c in claims if _verdict(c) == "not comparable")
    rows = []
    for c in claims:
        paper = _fmt(c["paper"], 2)
        if c["paper_spread"] is not None:
            paper += f" &plusmn; {_fmt(c['paper_spread'], 2)}"
        meas = f"{_fmt(c['measured'])} &plusmn; {_fmt(c['spread'])} (n={c['n']})"
        verdict = _verdict(c)
        cls = {"holds": "ok", "does not hold": "bad"}.get(verdict, "na")
        beyond = " <i>(beyond the paper)</i>" if c.get("beyond_paper") else ""
        rows.append(
            f"<tr class='{cls}'><td>{html.escape(c['id'])}</td><td>{html.escape(c['claim'])}"
            f"{beyond}<br><small>{html.escape(c['note'])}</small></td>"
            f"<td class='n'>{paper}<br><small>{html.escape(c['source'])}</small></td>"
            f"<td class='n'>{meas}</td><td>{html.escape(c['agreement'])}</td>"
            f"<td>{html.escape(_regime_text(c))}</td>"
            f"<td><b>{html.escape(verdict)}</b><br><small>{html.escape(c.get('cause') or '')}"
            "</small></td></tr>"
        )
    head = "".join(
        f"<th>{h}</th>"
        for h in ("#", "Claim", "Paper", "Measured at the end (mean &plusmn; std)", "Agreement",
                  "Regime", "Verdict and cause")
    )  # fmt: skip
    note_html = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
    return (
        "<section id='claims'><h2>The paper's claims, re-measured</h2>"
        "<style>#claims tr.ok td:last-child{color:#060}#claims tr.bad td:last-child{color:#b00}"
        "#claims td{vertical-align:top}</style>"
        f"<p>Scale <b>{html.escape(scale)}</b>: {held} claims hold, {failed} do not hold in "
        f"a comparable regime, {apart} are not comparable (the cause is given). Where a claim "
        "does not hold, that is the result at this scale, not hidden.</p>"
        f"<ul>{note_html}</ul>"
        f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
        f"{_regime_table(regimes or {})}{figures}</section>"
    )


def _verdict(c: dict[str, Any]) -> str:
    word = c.get("verdict")
    if isinstance(word, str):
        return word
    return {True: "holds", False: "does not hold", None: "not comparable"}[c["holds"]]


def _regime_text(c: dict[str, Any]) -> str:
    """The runs behind a claim in a few words: how many settled, their accuracy range."""
    reg = c.get("regime") or {}
    if not reg:
        return "no training run"
    settled = sum(1 for g in reg.values() if g.get("settled"))
    acc = [g["train_acc"] for g in reg.values() if isinstance(g.get("train_acc"), int | float)]
    text = f"{settled} of {len(reg)} runs settled"
    if acc:
        text += f"; train acc {min(acc):.0%}-{max(acc):.0%}"
    return text


def with_claims(report_page: str, section: str) -> str:
    """A comparison report's page with ``section`` before its navigation and a link to it."""
    pos = report_page.find("<nav>")
    if pos < 0:
        pos = report_page.find("</h1>") + len("</h1>")
    out = report_page[:pos] + section + report_page[pos:]
    return out.replace("<nav>", "<nav><a href='#claims'>Claims</a>", 1)


def claims_page(scale: str, section: str) -> str:
    """A page of the claims section alone (a reproduction without training runs)."""
    return page(
        "firstlayer reproduce",
        f"<h1>firstlayer reproduce ({html.escape(scale)} scale)</h1>{section}",
    )
