"""The documentation site: ``mkdocs build --strict`` from the docstrings, then every page loaded in
headless Chromium (Debian's ``chromium`` + ``chromium-driver``, driven by Selenium) over HTTP:
each page loads, logs nothing to the console, and every link inside the site leads to a page
(and an anchor) that exists."""

from __future__ import annotations

import functools
import html
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(
    not (ROOT / "mkdocs.yml").is_file(), reason="needs the source tree (mkdocs.yml, docs/)"
)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    out = tmp_path_factory.mktemp("site")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "WARNING" not in proc.stderr, proc.stderr
    return out


def _quiet_handler(directory: Path) -> Any:
    class Handler(SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

    return functools.partial(Handler, directory=str(directory))


@pytest.fixture(scope="module")
def served(site: Path) -> Iterator[str]:
    """The site over HTTP on a free local port (search and fetches need http, not file://)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _quiet_handler(site))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def pages(site: Path) -> list[str]:
    """Every page of the site as a URL path (``/``, ``/getting-started/``, ...)."""
    out = []
    for f in sorted(site.rglob("index.html")):
        rel = f.parent.relative_to(site).as_posix()
        out.append("/" if rel == "." else f"/{rel}/")
    return out


def target_file(site: Path, path: str) -> Path | None:
    """The file an URL path of the site serves, or None."""
    p = site / unquote(path).lstrip("/")
    if p.is_dir():
        p = p / "index.html"
    return p if p.is_file() else None


def ids_of(page: Path) -> set[str]:
    return {html.unescape(m) for m in re.findall(r'\bid="([^"]+)"', page.read_text())}


def broken_links(site: Path, base: str, hrefs: list[str]) -> list[str]:
    """Links into the site whose page or anchor does not exist (outside links are not followed:
    the check runs offline)."""
    bad = []
    for href in hrefs:
        if not href.startswith(base):
            continue
        parts = urlsplit(href)
        target = target_file(site, parts.path)
        if target is None:
            bad.append(href)
        elif parts.fragment and target.suffix == ".html":
            if unquote(parts.fragment) not in ids_of(target):
                bad.append(href)
    return bad


_LINKS = "return Array.from(document.querySelectorAll('a[href]'), a => a.href);"


def visit(driver: Any, url: str) -> tuple[list[dict[str, Any]], list[str]]:
    driver.get_log("browser")  # drop the messages of earlier pages
    driver.get(url)
    driver.execute_script("return document.readyState")
    return driver.get_log("browser"), driver.execute_script(_LINKS)


def test_the_site_holds_the_task_pages_and_the_api(site: Path) -> None:
    got = pages(site)
    for page in ("/", "/getting-started/", "/dataset-statistics/", "/model-profile/",
                 "/true-vs-random/", "/own-training/", "/scaling-out/", "/api/train/"):  # fmt: skip
        assert page in got
    api = (site / "api" / "train" / "index.html").read_text()
    # generated from the docstrings: the tracker's function, its parameters and its class
    assert "firstlayer.train.tracker.track" in api and "total_steps" in api
    assert "register_step_post_hook" in api
    assert "firstlayer.stats.PatchStats" in (site / "api" / "stats" / "index.html").read_text()


def test_every_page_loads_in_chromium_without_errors_or_broken_links(
    site: Path, served: str, browser: Any
) -> None:
    seen_links = 0
    for page in pages(site):
        logs, hrefs = visit(browser, served + page)
        assert logs == [], f"{page}: console messages {logs}"
        assert "firstlayer" in browser.title, page
        assert broken_links(site, served, hrefs) == [], page
        seen_links += sum(h.startswith(served) for h in hrefs)
    assert seen_links > 100  # navigation, tables of contents, cross-references


def test_the_browser_check_can_fail(site: Path, tmp_path: Path, browser: Any) -> None:
    """A console error and a broken link or anchor on a page are each caught."""
    copy = tmp_path / "site"
    shutil.copytree(site, copy)
    page = copy / "getting-started" / "index.html"
    text = page.read_text().replace(
        "</body>",
        '<a href="../no-such-page/">x</a><a href="../#no-such-anchor">y</a>'
        "<script>console.error('oops')</script></body>",
    )
    page.write_text(text)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _quiet_handler(copy))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        logs, hrefs = visit(browser, base + "/getting-started/")
    finally:
        server.shutdown()
        server.server_close()
    assert any("oops" in e["message"] and e["level"] == "SEVERE" for e in logs)
    bad = broken_links(copy, base, hrefs)
    assert sorted(bad) == [base + "/#no-such-anchor", base + "/no-such-page/"]
