"""Atomic checkpoints of a streaming run, so that a killed run resumes bit-identically.

A checkpoint is one ``.npz`` file (no pickle) holding the arrays of the
:class:`~firstlayer.PatchStats` (:meth:`~firstlayer.PatchStats.to_arrays`, under ``stats.``),
how many source items were consumed, the files skipped so far, and a fingerprint of the source
and of the options. It is written with :func:`firstlayer._io.atomic_write`, so a run killed at any
instant (SIGKILL included) leaves either the previous checkpoint or the new one, never a torn
file; the zip's CRCs catch damage. Version 1 files (the statistics embedded as the bytes of their
own ``.npz``) are still read.
"""

from __future__ import annotations

import io
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from firstlayer._io import atomic_write, read_npz
from firstlayer.stats import PatchStats

__all__ = ["Checkpoint", "read_checkpoint", "write_checkpoint"]

#: Version 2 stores the statistics' arrays directly; version 1 stored their ``.npz`` bytes.
CHECKPOINT_VERSION = 2
_STATS = "stats."
_STATS_FORMAT = "firstlayer.PatchStats"
#: What reading a damaged zip may raise besides ValueError.
_UNREADABLE = (zipfile.BadZipFile, OSError, EOFError, RuntimeError, NotImplementedError)


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


def write_checkpoint(path: str | os.PathLike[str], state: Checkpoint) -> None:
    """Write ``state`` to ``path`` atomically (its folder is created when missing).

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
    }
    arrays.update({_STATS + k: v for k, v in state.stats.to_arrays().items()})
    with atomic_write(target) as f:
        np.savez(f, **arrays)  # type: ignore[arg-type]


def read_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Read a checkpoint written by :func:`write_checkpoint`.

    Raises
    ------
    ValueError
        If the file is not a firstlayer checkpoint (or of a newer version).
    """
    target = Path(path)
    f = read_npz(target, "firstlayer checkpoint")
    need = {"checkpoint_version", "position", "fingerprint"}
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
        if version >= 2:
            fields = {k[len(_STATS) :]: v for k, v in f.items() if k.startswith(_STATS)}
            stats = PatchStats.from_arrays(fields, origin=f"checkpoint={str(target)!r}")
        else:
            stats = _embedded_stats(f, target)
    except (TypeError, ValueError) as exc:
        if str(target) in str(exc):
            raise
        raise ValueError(f"checkpoint={str(target)!r} cannot be read: {exc}") from exc
    return Checkpoint(stats=stats, position=position, fingerprint=fingerprint, skipped=skipped)


def _embedded_stats(f: dict[str, np.ndarray], target: Path) -> PatchStats:
    """The statistics of a version 1 checkpoint: a whole ``PatchStats.save`` file as bytes.

    Read in memory; the bytes are covered by the checkpoint's zip CRC.
    """
    where = f"checkpoint={str(target)!r}"
    if "stats_npz" not in f:
        raise ValueError(f"{where} is not a firstlayer checkpoint (no statistics)")
    payload = io.BytesIO(f["stats_npz"].tobytes())
    try:
        if not zipfile.is_zipfile(payload):
            raise ValueError("not an npz file")
        payload.seek(0)
        with np.load(payload, allow_pickle=False) as z:
            inner = {k: z[k] for k in z.files}
    except (*_UNREADABLE, ValueError) as exc:
        raise ValueError(f"{where}: its statistics cannot be read ({exc})") from exc
    version = int(inner.pop("__version__", -1))
    if str(inner.pop("__format__", "")) != _STATS_FORMAT or version not in (1, 2):
        raise ValueError(f"{where}: its embedded statistics are not a firstlayer.PatchStats file")
    inner.pop("__sha256__", None)
    return PatchStats.from_arrays(inner, version=version, origin=where)
