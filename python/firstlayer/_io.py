"""Files firstlayer writes and reads: atomic writes, JSON, and versioned ``.npz`` (never pickle).

Every file firstlayer produces goes through :func:`atomic_write`: it is written to a temporary
name in the destination folder, flushed and fsynced, renamed over the destination and the folder
fsynced, so a kill at any point leaves the old file or the new one, never a torn one. The new
file gets the permissions a plain ``open()`` would give (``0o666`` less the umask), or those of
the file it replaces.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np


def _umask() -> int:
    """The process umask. Read from ``/proc`` where it is there: setting it to read it back
    (``os.umask``) would, for that instant, give 0666 files to any other thread that creates one."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def check_writable(path: str | os.PathLike[str], name: str) -> None:
    """Fail now, not after hours of work, when ``path`` cannot be written later.

    Creates and removes a temporary file beside ``path`` (what :func:`atomic_write` will do),
    so a missing, read-only or full folder is an ``OSError`` naming ``name`` before computing.
    """
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    if target.is_dir():
        raise IsADirectoryError(f"{name}: {os.fspath(path)!r} is a folder, expected a file path")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".probe", dir=folder)
    except OSError as exc:
        msg = f"{name}: cannot write into {os.fspath(folder)!r} ({exc.strerror})"
        raise type(exc)(msg) from exc
    os.close(fd)
    os.unlink(tmp)


def fsync_dir(folder: str | os.PathLike[str]) -> None:
    """Make a rename inside ``folder`` durable (no-op where folders cannot be opened)."""
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as e:
        # Some file systems (network mounts, FUSE) refuse fsync on a folder; the rename
        # itself has happened, so only its durability is left to the file system.
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str]) -> Iterator[IO[bytes]]:
    """Open a binary file that replaces ``path`` atomically when the block ends without error.

    The destination folder must exist. On an exception the temporary file is removed and
    ``path`` is left as it was.
    """
    if not isinstance(path, str | os.PathLike):
        msg = f"path: expected a file path (str or path-like), got {type(path).__name__}"
        raise TypeError(msg)
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        msg = f"path: directory {folder} does not exist"
        raise FileNotFoundError(msg)
    if target.is_dir():
        msg = f"path: {os.fspath(path)!r} is a folder, expected a file path"
        raise IsADirectoryError(msg)
    try:
        mode = target.stat().st_mode & 0o7777
    except OSError:
        mode = 0o666 & ~_umask()
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(folder)


def atomic_write_bytes(path: str | os.PathLike[str], payload: bytes) -> None:
    """Write ``payload`` to ``path`` atomically (see :func:`atomic_write`)."""
    with atomic_write(path) as f:
        f.write(payload)


def jsonable(v: Any) -> Any:
    """A JSON-ready copy of ``v``: numpy to Python, NaN and infinity to None, paths to text.

    Dict keys become strings, tuples lists; anything else JSON cannot hold is written as its
    ``repr`` rather than failing a long run at its last step.
    """
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [jsonable(x) for x in v]
    if isinstance(v, np.ndarray):
        return jsonable(v.tolist())
    if isinstance(v, np.generic):
        return jsonable(v.item())
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, str | int | bool) or v is None:
        return v
    if isinstance(v, os.PathLike):
        return os.fspath(v)
    return repr(v)


def dumps(obj: Any, *, indent: int | None = 1, sort_keys: bool = False) -> str:
    """JSON text of :func:`jsonable` ``(obj)`` (strict JSON: no NaN)."""
    return json.dumps(jsonable(obj), indent=indent, sort_keys=sort_keys, allow_nan=False)


def write_json(path: str | os.PathLike[str], obj: Any, *, sort_keys: bool = False) -> Path:
    """Write ``obj`` as JSON (see :func:`dumps`) to ``path`` atomically."""
    atomic_write_bytes(path, (dumps(obj, sort_keys=sort_keys) + "\n").encode())
    return Path(path)


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
    if not isinstance(path, str | os.PathLike):
        msg = f"path: expected a file path (str or path-like), got {type(path).__name__}"
        raise TypeError(msg)
    path = Path(path)
    payload = {k: np.asarray(v) for k, v in arrays.items()}
    payload["__format__"] = np.array(kind)
    payload["__version__"] = np.array(version)
    payload["__sha256__"] = np.array(_digest(payload))
    with atomic_write(path) as f:
        np.savez(f, **payload)
    return path


def read_npy(path: str | os.PathLike[str], name: str) -> np.ndarray:
    """A plain ``.npy`` array, or a ``ValueError`` naming ``name`` and the path.

    numpy's own message for a file that is not one suggests ``allow_pickle=True``, an
    invitation to run an untrusted file; this one says what the file is not.
    """
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, EOFError) as exc:
        if isinstance(exc, FileNotFoundError | IsADirectoryError | PermissionError):
            raise
        msg = f"{name}: {os.fspath(path)!r} is not a readable .npy array ({type(exc).__name__})"
        raise ValueError(msg) from None
    except ValueError:
        msg = (
            f"{name}: {os.fspath(path)!r} is not a readable .npy array (it is another kind of "
            "file, or holds pickled objects, which firstlayer never unpickles)"
        )
        raise ValueError(msg) from None
    if not isinstance(arr, np.ndarray):
        msg = f"{name}: {os.fspath(path)!r} is an .npz archive, expected a single .npy array"
        raise ValueError(msg)
    return arr


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
            # np.load picks the format from the first bytes: a file that starts like an .npy
            # and ends like a zip would come back as one array, not as an npz.
            if fh.read(4) not in (b"PK\x03\x04", b"PK\x05\x06") or not zipfile.is_zipfile(fh):
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
