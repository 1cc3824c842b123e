"""Session set-up shared by every test file."""

from __future__ import annotations

import os
from pathlib import Path

# The library finds the shared data through $FIRSTLAYER_DATA; from an installed (not editable)
# package it cannot see the repository, so point it at <repo>/../shared/data when that exists.
_SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
if "FIRSTLAYER_DATA" not in os.environ and _SHARED.is_dir():
    os.environ["FIRSTLAYER_DATA"] = str(_SHARED)
