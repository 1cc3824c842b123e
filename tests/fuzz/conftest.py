"""The fuzzing job: long hypothesis runs, outside the main suite.

Run it with ``FIRSTLAYER_FUZZ=1 pytest -m slow tests/fuzz`` (``FIRSTLAYER_FUZZ_EXAMPLES=N`` sets
the examples per test, default 1000). Without ``FIRSTLAYER_FUZZ=1`` every test here is skipped at
collection cost only, so the main ``pytest`` run stays fast; every test is also marked ``slow``.
"""

from __future__ import annotations

import os

import pytest

FUZZ = os.environ.get("FIRSTLAYER_FUZZ") == "1"
EXAMPLES = int(os.environ.get("FIRSTLAYER_FUZZ_EXAMPLES", "1000"))


def pytest_configure(config: pytest.Config) -> None:
    # hypothesis' failure report trips this under filterwarnings=error, hiding the real failure.
    config.addinivalue_line("filterwarnings", "ignore:mypy_extensions:DeprecationWarning")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip = pytest.mark.skip(reason="fuzzing job: set FIRSTLAYER_FUZZ=1 (pytest -m slow tests/fuzz)")
    for item in items:
        if "tests/fuzz" not in str(item.path).replace(os.sep, "/"):
            continue
        item.add_marker(pytest.mark.slow)
        if not FUZZ:
            item.add_marker(skip)
