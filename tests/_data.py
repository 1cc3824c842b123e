"""Test helpers: find the shared data and write the original on-disk formats from it.

The shared data lives in ``$FIRSTLAYER_DATA`` when that is set, else in ``<repo>/../shared/data``.
Tests that need a file skip only when the file is truly absent.
"""

from __future__ import annotations

import functools
import gzip
import io
import os
import struct
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
SUBSET = "cifar10_exact_subset.npz"
JPEG = "cifar10_jpeg_q75.npz"
N_TRAIN = 50_000


def shared_data_dir() -> Path:
    """The shared data folder (it may not exist)."""
    env = os.environ.get("FIRSTLAYER_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


def shared_file(name: str) -> Path:
    """Path of a shared data file; skips the test when it is absent."""
    path = shared_data_dir() / name
    if not path.is_file():
        pytest.skip(f"shared data file {path} is absent")
    return path


@functools.cache
def _subset() -> dict[str, np.ndarray]:
    with np.load(shared_file(SUBSET), allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def exact_cifar() -> dict[str, np.ndarray]:
    """The exact CIFAR-10 subset: ``data`` rows, ``index``, ``labels`` (all 60,000), names..."""
    return _subset()


def exact_images(n: int | None = None, *, test: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """First ``n`` exact images (NCHW uint8) of the training (or test) batches, with labels."""
    d = _subset()
    rows = np.flatnonzero((d["index"] >= N_TRAIN) == test)[:n]
    images = d["data"][rows].reshape(-1, 3, 32, 32)
    return np.ascontiguousarray(images), d["labels"][d["index"][rows]].astype(np.int64)


# ---------------------------------------------------------------------------------------------
# The original CIFAR python format, as Python 2's cPickle wrote it (protocol 2)
# ---------------------------------------------------------------------------------------------


class _Py2Pickler:
    """Writes the opcodes Python 2 ``cPickle.dump(d, f, 2)`` produced for a CIFAR batch."""

    def __init__(self) -> None:
        self.out = bytearray(b"\x80\x02")
        self.memo = 0

    def put(self) -> None:
        self.memo += 1
        if self.memo < 256:
            self.out += b"q" + bytes([self.memo])
        else:
            self.out += b"r" + struct.pack("<I", self.memo)

    def string(self, value: bytes) -> None:
        if len(value) < 256:
            self.out += b"U" + bytes([len(value)]) + value
        else:
            self.out += b"T" + struct.pack("<i", len(value)) + value
        self.put()

    def int_(self, value: int) -> None:
        if 0 <= value < 256:
            self.out += b"K" + bytes([value])
        elif 0 <= value < 65536:
            self.out += b"M" + struct.pack("<H", value)
        else:
            self.out += b"J" + struct.pack("<i", value)

    def items(self, values: list[object]) -> None:
        self.out += b"]"
        self.put()
        for start in range(0, len(values), 1000):  # cPickle's batches of 1000
            chunk = values[start : start + 1000]
            self.out += b"("
            for v in chunk:
                if isinstance(v, bytes):
                    self.string(v)
                else:
                    self.int_(int(v))  # type: ignore[call-overload]
            self.out += b"e"

    def array(self, arr: np.ndarray) -> None:
        assert arr.dtype == np.uint8
        self.out += b"cnumpy.core.multiarray\n_reconstruct\n"
        self.put()
        self.out += b"cnumpy\nndarray\n"
        self.put()
        self.out += b"K\x00\x85"
        self.put()
        self.string(b"b")
        self.out += b"\x87"
        self.put()
        self.out += b"R"
        self.put()
        self.out += b"(K\x01"
        for s in arr.shape:
            self.int_(s)
        self.out += b"\x86"
        self.put()
        self.out += b"cnumpy\ndtype\n"
        self.put()
        self.string(b"u1")
        self.out += b"K\x00K\x01\x87"
        self.put()
        self.out += b"R"
        self.put()
        self.out += b"(K\x03"
        self.string(b"|")
        self.out += b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00t"
        self.put()
        self.out += b"b\x89"
        self.string(arr.tobytes())
        self.out += b"t"
        self.put()
        self.out += b"b"

    def dump(self, d: dict[bytes, object]) -> bytes:
        self.out += b"}"
        self.put()
        self.out += b"("
        for key, value in d.items():
            self.string(key)
            if isinstance(value, np.ndarray):
                self.array(value)
            elif isinstance(value, list):
                self.items(value)
            else:
                assert isinstance(value, bytes)
                self.string(value)
        self.out += b"u."
        return bytes(self.out)


def cifar_batch_bytes(
    images: np.ndarray, labels: np.ndarray, *, batch_label: bytes, fine: bool = False
) -> bytes:
    """One CIFAR python batch (CIFAR-10 form, or CIFAR-100 form with ``fine=True``)."""
    rows = np.ascontiguousarray(images.reshape(len(images), 3072))
    names = [f"image_{i:05d}.png".encode() for i in range(len(images))]
    if fine:
        d: dict[bytes, object] = {
            b"filenames": names,
            b"batch_label": batch_label,
            b"fine_labels": [int(v) for v in labels],
            b"coarse_labels": [int(v) // 5 for v in labels],
            b"data": rows,
        }
    else:
        d = {
            b"batch_label": batch_label,
            b"labels": [int(v) for v in labels],
            b"data": rows,
            b"filenames": names,
        }
    return _Py2Pickler().dump(d)


def write_cifar10_folder(folder: Path, per_batch: int | None = None) -> dict[str, np.ndarray]:
    """Write ``folder/cifar-10-batches-py`` from the exact subset (``per_batch`` images each).

    Returns the images and labels written, in file order: ``train_images``, ``train_labels``,
    ``test_images``, ``test_labels``.
    """
    d = _subset()
    out = folder / "cifar-10-batches-py"
    out.mkdir(parents=True, exist_ok=True)
    (out / "batches.meta").write_bytes(d["batches_meta"].tobytes())
    (out / "readme.html").write_bytes(d["readme_html"].tobytes())
    train_x, train_y = [], []
    for b in range(6):
        lo = b * 10_000
        rows = np.flatnonzero((d["index"] >= lo) & (d["index"] < lo + 10_000))[:per_batch]
        x = d["data"][rows].reshape(-1, 3, 32, 32)
        y = d["labels"][d["index"][rows]].astype(np.int64)
        name = f"data_batch_{b + 1}" if b < 5 else "test_batch"
        label = (f"training batch {b + 1} of 5" if b < 5 else "testing batch 1 of 1").encode()
        (out / name).write_bytes(cifar_batch_bytes(x, y, batch_label=label))
        if b < 5:
            train_x.append(x)
            train_y.append(y)
        else:
            test = (x, y)
    return {
        "train_images": np.concatenate(train_x),
        "train_labels": np.concatenate(train_y),
        "test_images": test[0],
        "test_labels": test[1],
    }


def idx_bytes(arr: np.ndarray) -> bytes:
    """An MNIST IDX file of unsigned bytes."""
    head = bytes([0, 0, 0x08, arr.ndim]) + b"".join(struct.pack(">I", s) for s in arr.shape)
    return head + np.ascontiguousarray(arr, dtype=np.uint8).tobytes()


def write_mnist_raw(folder: Path, images: np.ndarray, labels: np.ndarray, *, gz: bool) -> None:
    """Write torchvision's ``MNIST/raw`` layout (train and t10k parts hold the same data)."""
    folder.mkdir(parents=True, exist_ok=True)
    for prefix in ("train", "t10k"):
        for kind, arr in (("images-idx3", images), ("labels-idx1", labels)):
            payload = idx_bytes(arr)
            name = f"{prefix}-{kind}-ubyte"
            if gz:
                buf = io.BytesIO()
                with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as g:
                    g.write(payload)
                (folder / (name + ".gz")).write_bytes(buf.getvalue())
            else:
                (folder / name).write_bytes(payload)


def write_png_folder(
    folder: Path, images: np.ndarray, labels: np.ndarray | None, names: list[str] | None = None
) -> list[Path]:
    """PNG files from NCHW uint8 images; class sub-folders when ``labels`` is given."""
    from PIL import Image

    paths = []
    for i, img in enumerate(images):
        sub = folder if labels is None else folder / (names or [])[int(labels[i])]
        sub.mkdir(parents=True, exist_ok=True)
        p = sub / f"{i:05d}.png"
        hwc = np.ascontiguousarray(img.transpose(1, 2, 0))
        Image.fromarray(hwc[..., 0] if hwc.shape[2] == 1 else hwc).save(p)
        paths.append(p)
    return paths


@functools.cache
def _jpeg() -> tuple[np.ndarray, np.ndarray]:
    with np.load(shared_file(JPEG), allow_pickle=False) as f:
        return f["jpeg"], f["offsets"]


def jpeg_bytes(g: int) -> bytes:
    """The JPEG file of global CIFAR index ``g`` (quality 75)."""
    data, offsets = _jpeg()
    return data[offsets[g] : offsets[g + 1]].tobytes()
