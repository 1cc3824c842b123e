"""MkDocs hook (mkdocs.yml ``hooks:``): the docstrings' Sphinx roles, shown as plain code.

The package's docstrings use Sphinx roles (``:func:`firstlayer.track```, ``:class:`~x.Y```),
which mkdocstrings leaves as text. Each rendered ``:role:<code>target</code>`` becomes
``<code>target</code>``, with a leading ``~`` shortening the target to its last part, as Sphinx
shows it.
"""

from __future__ import annotations

import re
from typing import Any

_ROLE = re.compile(r":(?:py:)?(?:mod|func|class|meth|attr|data|exc|obj|const):(<code>)(~?)([^<]*)")


def _shown(m: re.Match[str]) -> str:
    target = m.group(3)
    return m.group(1) + (target.rsplit(".", 1)[-1] if m.group(2) else target)


def on_page_content(html: str, **kwargs: Any) -> str:
    """Drop the role prefixes of a rendered page."""
    return _ROLE.sub(_shown, html)
