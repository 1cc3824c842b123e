"""Atomic checkpoints of a streaming run, so that a killed run resumes bit-identically.

A checkpoint is one ``.npz`` file (no pickle) holding the :class:`~firstlayer.PatchStats` written
by its own ``save`` (embedded byte for byte), how many source items were consumed, the files
skipped so far, and a fingerprint of the source and of the options. It is written to a temporary
file in the same folder, flushed to disk and moved over the old one with :func:`os.replace`, so
that a run killed at any instant (SIGKILL included) leaves either the previous checkpoint or the
new one, never a torn file.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ._io import read_npz

if TYPE_CHECKING:
    from .stats import PatchStats

__all__ = ["Checkpoint", "write_checkpoint", "read_checkpoint", "atomic_write_bytes"]

CHECKPOINT_VERSION = 1


@dataclass
class Checkpoint:
    """The state of a streaming run at a batch boundary.

    Attributes
    ----------
    stats : PatchStats
        Statistics of the items consumed so far.
    position : int
        Number of source items consumed (decoded or skipped).
    fingerprint : str
        Identifies the source and the options; a resume with a different one is refused.
    skipped : list of (str, str)
        ``(path, reason)`` of every item skipped so far.
    """

    stats: PatchStats
    position: int
    fingerprint: str
    skipped: list[tuple[str, str]] = field(default_factory=list)


def _fsync_dir(folder: Path) -> None:
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike[str], payload: bytes) -> None:
    """Write ``payload`` to ``path`` atomically (temporary file, fsync, rename)."""
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(folder)


def _stats_bytes(stats: PatchStats, folder: Path) -> bytes:
    """The bytes ``stats.save`` writes, through a private temporary file."""
    fd, tmp = tempfile.mkstemp(prefix=".firstlayer-stats.", suffix=".npz", dir=folder)
    os.close(fd)
    try:
        stats.save(tmp)
        return Path(tmp).read_bytes()
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def write_checkpoint(path: str | os.PathLike[str], state: Checkpoint) -> None:
    """Write ``state`` to ``path`` atomically.

    Parameters
    ----------
    path : str or path-like
        Usually ``something.partial.npz``.
    state : Checkpoint
    """
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "checkpoint_version": np.array(CHECKPOINT_VERSION, dtype=np.int64),
        "position": np.array(state.position, dtype=np.int64),
        "fingerprint": np.array(state.fingerprint),
        "skipped_paths": np.array([p for p, _ in state.skipped], dtype=str),
        "skipped_reasons": np.array([r for _, r in state.skipped], dtype=str),
        "stats_npz": np.frombuffer(_stats_bytes(state.stats, folder), dtype=np.uint8),
    }
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    atomic_write_bytes(target, buf.getvalue())


def read_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Read a checkpoint written by :func:`write_checkpoint`.

    Raises
    ------
    ValueError
        If the file is not a firstlayer checkpoint (or of a newer version).
    """
    from .stats import PatchStats

    target = Path(path)
    f = read_npz(target, "firstlayer checkpoint")
    need = {"checkpoint_version", "position", "fingerprint", "stats_npz"}
    if not need <= set(f):
        raise ValueError(
            f"checkpoint={str(target)!r} is not a firstlayer checkpoint "
            f"(keys {sorted(f)}, expected {sorted(need)})"
        )
    try:
        version = int(f["checkpoint_version"])
        if version > CHECKPOINT_VERSION:
            raise ValueError(
                f"checkpoint={str(target)!r} has version {version}; this firstlayer reads "
                f"up to {CHECKPOINT_VERSION}"
            )
        position = int(f["position"])
        fingerprint = str(f["fingerprint"])
        skipped = list(
            zip(
                (str(p) for p in f.get("skipped_paths", ())),
                (str(r) for r in f.get("skipped_reasons", ())),
                strict=True,
            )
        )
        payload = f["stats_npz"].tobytes()
    except (TypeError, ValueError) as exc:
        if str(target) in str(exc):
            raise
        raise ValueError(f"checkpoint={str(target)!r} cannot be read: {exc}") from exc
    folder = target.parent if str(target.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=".firstlayer-stats.", suffix=".npz", dir=folder)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(payload)
        stats = PatchStats.load(tmp)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    return Checkpoint(stats=stats, position=position, fingerprint=fingerprint, skipped=skipped)
