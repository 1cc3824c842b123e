"""What the commands print and write: text or one JSON document, progress lines, result files."""

from __future__ import annotations

import argparse
import io
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from firstlayer._io import atomic_write_bytes, dumps, write_json
from firstlayer.exceptions import UsageError

__all__ = ["emit", "one_line", "say", "write_profile"]


def emit(args: argparse.Namespace, text: str, payload: dict[str, Any]) -> None:
    """Print the result: ``payload`` as JSON with ``--json``, else ``text``."""
    if getattr(args, "json", False):
        print(dumps(payload))
    else:
        print(text)


def say(args: argparse.Namespace) -> Callable[[str], None]:
    """Return a progress printer on stderr, silent with ``--quiet``."""
    start = time.monotonic()

    def printer(msg: str) -> None:
        if not getattr(args, "quiet", False):
            print(f"firstlayer: [{time.monotonic() - start:5.1f}s] {msg}", file=sys.stderr)

    return printer


def one_line(exc: BaseException) -> str:
    """The message of ``exc`` on one line (with its type where the type says something)."""
    text = str(exc).strip() or type(exc).__name__
    if isinstance(exc, KeyError):
        text = f"missing key {text}"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    text = " ".join(lines)
    known = (ValueError, TypeError, OSError, RuntimeError, ImportError, UsageError, LookupError)
    if not isinstance(exc, known):
        text = f"{type(exc).__name__}: {text}"
    return text


def write_profile(out: str | Path, payload: dict[str, Any]) -> None:
    """Write a profile (``payload["profile"]``) as ``.npy``, ``.csv`` or else JSON, atomically.

    The CSV has the columns ``component,energy`` and, when ``payload`` has ``eigenvalues``,
    ``eigenvalue``.
    """
    path = Path(out)
    if path.suffix == ".npy":
        buf = io.BytesIO()
        np.save(buf, np.asarray(payload["profile"]))
        atomic_write_bytes(path, buf.getvalue())
    elif path.suffix == ".csv":
        ev = payload.get("eigenvalues")
        rows = ["component,energy" + (",eigenvalue" if ev is not None else "")]
        for i, v in enumerate(payload["profile"]):
            rows.append(f"{i + 1},{float(v)!r}" + (f",{float(ev[i])!r}" if ev is not None else ""))
        atomic_write_bytes(path, ("\n".join(rows) + "\n").encode())
    else:
        write_json(path, payload)
