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


def claims_html(
    claims: list[dict[str, Any]], scale: str, notes: list[str], figures: str = ""
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
    """
    held = sum(1 for c in claims if c["holds"] is True)
    measured = sum(1 for c in claims if c["holds"] is not None)
    rows = []
    for c in claims:
        paper = _fmt(c["paper"], 2)
        if c["paper_spread"] is not None:
            paper += f" &plusmn; {_fmt(c['paper_spread'], 2)}"
        meas = f"{_fmt(c['measured'])} &plusmn; {_fmt(c['spread'])} (n={c['n']})"
        verdict = {True: "holds", False: "DOES NOT HOLD", None: "not measured"}[c["holds"]]
        cls = {True: "ok", False: "bad", None: "na"}[c["holds"]]
        rows.append(
            f"<tr class='{cls}'><td>{html.escape(c['id'])}</td><td>{html.escape(c['claim'])}"
            f"<br><small>{html.escape(c['note'])}</small></td>"
            f"<td class='n'>{paper}<br><small>{html.escape(c['source'])}</small></td>"
            f"<td class='n'>{meas}</td><td>{html.escape(c['agreement'])}</td>"
            f"<td><b>{verdict}</b></td></tr>"
        )
    head = "".join(
        f"<th>{h}</th>"
        for h in ("#", "Claim", "Paper", "Measured (mean &plusmn; std)", "Agreement", "Verdict")
    )
    note_html = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
    return (
        "<section id='claims'><h2>The paper's claims, re-measured</h2>"
        "<style>#claims tr.ok td:last-child{color:#060}#claims tr.bad td:last-child{color:#b00}"
        "#claims td{vertical-align:top}</style>"
        f"<p>Scale <b>{html.escape(scale)}</b>: {held} of {measured} measured claims hold "
        "within the paper's spread or the stated tolerance. Where a claim does not hold, that is "
        "the result at this scale, not hidden.</p>"
        f"<ul>{note_html}</ul>"
        f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
        f"{figures}</section>"
    )


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
