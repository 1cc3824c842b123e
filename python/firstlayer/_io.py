"""Versioned, checksummed, atomically written ``.npz`` files (never pickle)."""

from __future__ import annotations

import hashlib
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np


def _digest(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for key in sorted(arrays):
        a = np.ascontiguousarray(arrays[key])
        h.update(f"{key}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def save_npz(path: str | os.PathLike[str], kind: str, version: int, **arrays: np.ndarray) -> Path:
    """Write ``arrays`` to ``path`` atomically, with a format tag, a version and a checksum.

    The file appears complete or not at all: it is written next to its destination, flushed to
    disk and renamed over it.
    """
    path = Path(path)
    payload = {k: np.asarray(v) for k, v in arrays.items()}
    payload["__format__"] = np.array(kind)
    payload["__version__"] = np.array(version)
    payload["__sha256__"] = np.array(_digest(payload))
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        msg = f"path: directory {directory} does not exist"
        raise FileNotFoundError(msg)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_npz(path: str | os.PathLike[str], what: str) -> dict[str, np.ndarray]:
    """All arrays of the ``.npz`` file ``path``; any unreadable file is a ``ValueError``.

    Object (pickled) arrays are refused without numpy's hint to load them with
    ``allow_pickle=True``: the files this reads come from other people, and unpickling runs code.
    ``what`` names the expected kind of file in the messages.
    """
    path = Path(path)
    if path.is_dir():
        msg = f"{path}: not a readable {what} file (it is a folder)"
        raise ValueError(msg)
    if not path.is_file():
        msg = f"path: no such file: {path}"
        raise FileNotFoundError(msg)
    try:
        # Open the file ourselves: np.load leaks its handle when the zip is damaged.
        with open(path, "rb") as fh:
            if not zipfile.is_zipfile(fh):
                msg = f"{path}: not a readable {what} file (truncated or corrupt: no zip directory)"
                raise ValueError(msg)
            fh.seek(0)
            with np.load(fh, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, OSError, EOFError, RuntimeError, NotImplementedError) as e:
        # RuntimeError / NotImplementedError: entries flagged encrypted or oddly compressed.
        if isinstance(e, FileNotFoundError):
            raise
        msg = f"{path}: not a readable {what} file (truncated or corrupt: {e})"
        raise ValueError(msg) from e
    except ValueError as e:
        if str(e).startswith(str(path)):
            raise
        if "pickle" in str(e):
            why = "it holds pickled (object) arrays, which firstlayer never unpickles"
        else:
            why = f"truncated or corrupt: {e}"
        msg = f"{path}: not a readable {what} file ({why})"
        raise ValueError(msg) from e


def load_npz(
    path: str | os.PathLike[str], kind: str, version: int | tuple[int, ...]
) -> dict[str, np.ndarray]:
    """Read a file written by :func:`save_npz`, checking its format, version and checksum.

    ``version`` is the version, or the versions, this reader understands; the one found is
    returned under ``"__version__"``.
    """
    path = Path(path)
    data = read_npz(path, kind)
    found = str(data.pop("__format__", "")) if "__format__" in data else None
    if found != kind:
        msg = f"{path}: expected a {kind} file, got {found or 'an npz file without a format tag'}"
        raise ValueError(msg)
    accepted = (version,) if isinstance(version, int) else version
    got_version = int(data.pop("__version__"))
    if got_version not in accepted:
        want = " or ".join(str(v) for v in accepted)
        msg = f"{path}: {kind} format version {got_version} is not supported (expected {want})"
        raise ValueError(msg)
    checksum = str(data.pop("__sha256__", ""))
    check = dict(data)
    check["__format__"] = np.array(kind)
    check["__version__"] = np.array(got_version)
    if checksum != _digest(check):
        msg = f"{path}: checksum mismatch: the file was modified or damaged after it was written"
        raise ValueError(msg)
    data["__version__"] = np.array(got_version)
    return data
