"""Where firstlayer looks for data: named datasets and the shared data files."""

from __future__ import annotations

import os
from pathlib import Path

#: Environment variable listing data folders (``os.pathsep`` separated), searched first.
DATA_ENV = "FIRSTLAYER_DATA"


def data_roots(root: str | os.PathLike[str] | None = None) -> list[Path]:
    """Folders where datasets and data files are looked for, first one first.

    ``root`` alone when given; otherwise every folder in ``$FIRSTLAYER_DATA``, then
    ``~/.cache/firstlayer`` (where downloads go), then, in a source checkout, the project's
    ``../shared/data``.
    """
    if root is not None:
        return [Path(root).expanduser()]
    out = [Path(p).expanduser() for p in os.environ.get(DATA_ENV, "").split(os.pathsep) if p]
    out = [p for p in out if str(p) != "."]
    out.append(Path.home() / ".cache" / "firstlayer")
    checkout = Path(__file__).resolve().parents[3] / "shared" / "data"
    if checkout.is_dir():
        out.append(checkout)
    return out
