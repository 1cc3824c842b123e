"""The checkpoint folder of a distributed job: one ``.npz`` per finished shard, and ``job.json``.

The client (not the workers) writes it, so no shared file system is needed. Each shard's file is
named by its index and a digest of its content (:func:`shard_key`); ``job.json`` records the
job's options and keys, so a folder written by another job is refused instead of mixed in. Every
file is written atomically (:mod:`firstlayer._io`): a job killed at any point leaves whole files.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from firstlayer._io import write_json
from firstlayer.distributed.shards import Shard, is_path
from firstlayer.stats import PatchStats

MANIFEST = "job.json"
MANIFEST_FORMAT = "firstlayer.distributed.job"


def digest(*parts: Any) -> str:
    """SHA-256 of ``parts``: arrays by dtype, shape and bytes, anything else by ``repr``."""
    h = hashlib.sha256()
    for p in parts:
        if isinstance(p, np.ndarray):
            a = np.ascontiguousarray(p)
            h.update(f"{a.dtype.str}|{a.shape}|".encode())
            h.update(a.data if a.flags.c_contiguous else a.tobytes())
        else:
            h.update(repr(p).encode("utf-8", "surrogateescape"))
        h.update(b"\0")
    return h.hexdigest()


def _path_identity(p: str | os.PathLike[str]) -> str:
    path = Path(p).expanduser()
    if not path.exists():
        return f"name:{os.fspath(p).lower()}"  # a dataset name
    st = path.stat()
    return f"path:{path.resolve()}:{st.st_size}:{st.st_mtime_ns if path.is_file() else ''}"


def shard_key(shard: Shard, index: int = 0) -> str:
    """A digest of a shard's content and range, for the checkpoint directory.

    Raises
    ------
    TypeError
        For a source object with no fingerprint and no ``key``.
    """
    rng = (shard.start, shard.stop)
    if shard.key is not None:
        return digest("key", shard.key, rng)
    src = shard.source
    if is_path(src):
        return digest("path", _path_identity(src), rng)
    if isinstance(src, list | tuple):
        ys = None if shard.labels is None else [int(v) for v in shard.labels]
        return digest("files", [_path_identity(p) for p in src], ys, rng)
    if isinstance(src, np.ndarray):
        lab = None if shard.labels is None else np.asarray(shard.labels)
        return digest("array", src, lab, rng)
    fingerprint = getattr(src, "fingerprint", None)
    if callable(fingerprint):
        return digest("source", fingerprint(), rng)
    msg = (
        f"shards[{index}]: checkpoint_dir needs to recognise each shard; expected a path, a "
        f"dataset name, an array, a Source or Shard(..., key=...), got {type(src).__name__}"
    )
    raise TypeError(msg)


class ShardStore:
    """The checkpoint folder of one job.

    Parameters
    ----------
    path : path
        The folder (created if missing).
    job : dict
        The job's options, JSON-ready; a folder holding another job's is refused.
    keys : list of str
        :func:`shard_key` of each shard, in order.
    """

    def __init__(self, path: str | os.PathLike[str], job: dict[str, Any], keys: list[str]):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.keys = keys
        target = self.path / MANIFEST
        if target.exists():
            try:
                old = json.loads(target.read_text())
            except (OSError, ValueError) as exc:
                msg = f"checkpoint_dir: cannot read {target}: {exc}"
                raise ValueError(msg) from exc
            if old.get("job") != job or old.get("shards") != keys:
                msg = (
                    f"checkpoint_dir: {self.path} holds shards of a different job (other "
                    "options or shards); delete it or choose another directory"
                )
                raise ValueError(msg)
        else:
            manifest = {"format": MANIFEST_FORMAT, "version": 1, "job": job, "shards": keys}
            write_json(target, manifest, sort_keys=True)

    def file(self, index: int) -> Path:
        """The file of ``shards[index]``."""
        return self.path / f"shard-{index:06d}-{self.keys[index][:16]}.npz"

    def load(self, index: int) -> PatchStats | None:
        """The saved statistics of ``shards[index]``, or None when it is still to compute."""
        f = self.file(index)
        if not f.is_file():
            return None
        try:
            return PatchStats.load(f)
        except ValueError:  # damaged (cannot happen with atomic saves, but be safe): recompute
            return None

    def save(self, index: int, stats: PatchStats) -> None:
        """Save the statistics of ``shards[index]`` (atomically: ``PatchStats.save``)."""
        stats.save(self.file(index))
