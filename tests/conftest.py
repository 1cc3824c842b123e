"""Session set-up shared by every test file."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# The library finds the shared data through $FIRSTLAYER_DATA; from an installed (not editable)
# package it cannot see the repository, so point it at <repo>/../shared/data when that exists.
_SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
if "FIRSTLAYER_DATA" not in os.environ and _SHARED.is_dir():
    os.environ["FIRSTLAYER_DATA"] = str(_SHARED)


# -- a real browser: Debian's headless chromium through selenium (reports and docs pages) ------

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """A headless Chromium that keeps its console log; skipped where it is not installed."""
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip(
            "Debian's chromium and chromium-driver are not installed (.ci/run installs them)"
        )
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,1600", "--disable-background-networking"):  # fmt: skip
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)
    driver.set_script_timeout(60)
    yield driver
    driver.quit()
