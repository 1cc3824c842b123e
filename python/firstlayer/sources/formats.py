"""Array files on disk as sources: ``.npy``, ``.npz``, the CIFAR python batches, MNIST's IDX.

Nothing here unpickles: ``.npy``/``.npz`` are read with ``allow_pickle=False``, CIFAR batches by
the restricted reader of :mod:`firstlayer.sources.cifar_pickle`.
"""

from __future__ import annotations

import gzip
import os
import tarfile
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from firstlayer.sources.base import ArraySource, ChainSource, Layout
from firstlayer.sources.cifar_pickle import read_cifar_batch, read_meta

__all__ = ["cifar_source", "npy_source", "npz_source", "read_idx"]

#: The batch files of each split, in order.
CIFAR10_FILES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
CIFAR100_FILES = {"train": ["train"], "test": ["test"]}


def file_identity(path: Path) -> str:
    """The resolved path and size of a file (enters source fingerprints)."""
    st = path.stat()
    return f"{path.resolve()}:{st.st_size}"


def npy_source(path: str | os.PathLike[str], *, layout: Layout | None, labels: Any) -> ArraySource:
    """A ``.npy`` file, memory-mapped (only the current batch is read)."""
    p = Path(path)
    try:
        arr = np.load(p, mmap_mode="r", allow_pickle=False)
    except ValueError:
        raise ValueError(
            f"source={str(p)!r}: not a readable .npy array (another kind of file, or pickled "
            "objects, which firstlayer never unpickles)"
        ) from None
    return ArraySource(arr, layout=layout, labels=labels, name=str(p), identity=file_identity(p))


def npz_source(path: str | os.PathLike[str], *, layout: Layout | None, labels: Any) -> ArraySource:
    """A ``.npz`` with an ``images`` array (or a single 3-D/4-D array) and optional ``labels``."""
    p = Path(path)
    if not zipfile.is_zipfile(p):
        raise ValueError(f"source={str(p)!r}: not a readable .npz file (no zip directory)")
    with np.load(p, allow_pickle=False) as f:
        keys = list(f.files)
        if "images" in keys:
            key = "images"
        else:
            cands = [k for k in keys if f[k].ndim in (3, 4)]
            if len(cands) != 1:
                raise ValueError(
                    f"source={str(p)!r}: expected an 'images' array (or exactly one 3-D/4-D "
                    f"array), found keys {keys}"
                )
            key = cands[0]
        images = f[key]
        if labels is None and "labels" in keys:
            labels = f["labels"]
        names = [str(v) for v in f["label_names"]] if "label_names" in keys else None
    return ArraySource(
        images,
        layout=layout,
        labels=labels,
        n_classes=None if names is None else len(names),
        class_names=names,
        name=str(p),
        identity=file_identity(p),
    )


def _cifar_part(name: str, read: Callable[[], bytes], n_classes: int) -> ArraySource:
    batch = read_cifar_batch(name, data=read())
    return ArraySource(
        batch.images, layout="NCHW", labels=batch.labels, n_classes=n_classes, name=name
    )


def cifar_source(
    location: str | os.PathLike[str],
    files: Sequence[str],
    *,
    n_classes: int,
    meta: str,
    name: str,
) -> ChainSource:
    """CIFAR python batches in a folder or inside the original ``.tar.gz``, read safely.

    Parameters
    ----------
    location : str or path-like
        ``cifar-10-batches-py`` / ``cifar-100-python`` folder, or ``cifar-*-python.tar.gz``.
    files : sequence of str
        Batch file names in order (``data_batch_1`` ... or ``test_batch``).
    n_classes : int
    meta : str
        ``batches.meta`` or ``meta``; class names are read from it when present.
    name : str
    """
    loc = Path(location)
    readers: list[tuple[str, Callable[[], bytes]]] = []
    class_names = None
    if loc.is_dir():
        for fn in files:
            fp = loc / fn
            readers.append((str(fp), fp.read_bytes))
        if (loc / meta).is_file():
            class_names = read_meta(loc / meta)
        identity = ";".join(file_identity(loc / fn) for fn in files)
    else:
        try:
            with tarfile.open(loc, "r:*") as tar:
                members = {Path(m.name).name: m.name for m in tar.getmembers() if m.isfile()}
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise ValueError(
                f"{loc}: cannot read the archive ({type(exc).__name__}: {exc}); it may be an "
                "interrupted download: delete it to download again"
            ) from exc
        with tarfile.open(loc, "r:*") as tar:
            missing = [fn for fn in files if fn not in members]
            if missing:
                raise FileNotFoundError(f"{loc}: the archive has no member(s) {missing}")
            if meta in members:
                fobj = tar.extractfile(members[meta])
                class_names = read_meta(f"{loc}:{meta}", data=fobj.read() if fobj else b"")

        def reader(member: str) -> Callable[[], bytes]:
            def read() -> bytes:
                with tarfile.open(loc, "r:*") as tar:
                    fobj = tar.extractfile(member)
                    if fobj is None:
                        raise FileNotFoundError(f"{loc}: member {member} is not a file")
                    return fobj.read()

            return read

        for fn in files:
            readers.append((f"{loc}:{members[fn]}", reader(members[fn])))
        identity = file_identity(loc) + ":" + ",".join(files)

    openers = [(lambda nm=nm, rd=rd: _cifar_part(nm, rd, n_classes)) for nm, rd in readers]
    return ChainSource(
        openers,
        name=name,
        identity=identity,
        has_labels=True,
        n_classes=n_classes,
        class_names=class_names,
    )


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an MNIST-style IDX file (``.gz`` or raw) of unsigned bytes; no pickle involved."""
    p = Path(path)
    opener = gzip.open if p.suffix == ".gz" else open
    with opener(p, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{p}: not an IDX file (bad magic number)")
    if raw[2] != 0x08:
        raise ValueError(f"{p}: IDX element type {raw[2]:#x}, expected 0x08 (unsigned byte)")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    start = 4 + 4 * ndim
    n = int(np.prod(dims)) if dims else 0
    if len(raw) - start != n:
        raise ValueError(
            f"{p}: IDX header says {dims} ({n} bytes), the file holds {len(raw) - start}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=start).reshape(dims)
