"""Make ``python/firstlayer/data/sample.npz``, the small real CIFAR-10 sample firstlayer ships.

The pixels are the exact bytes of the original CIFAR-10 python batches (as recovered in
``shared/data/cifar10_exact_subset.npz``, see its README): every exact test image (the first
1,017 of ``test_batch``) and a class-balanced set of training images (the first
``--train-per-class`` of each class, in ``data_batch_1`` ... ``data_batch_5`` order).

The output loads with ``np.load(path, allow_pickle=False)``:

=================  ===========================  =============================================
key                dtype / shape                meaning
=================  ===========================  =============================================
``test_images``    uint8 (n_test, 3, 32, 32)    NCHW, RGB
``test_labels``    uint8 (n_test,)              CIFAR-10 class index
``test_index``     int64 (n_test,)              position in ``test_batch``
``train_images``   uint8 (n_train, 3, 32, 32)   NCHW, RGB
``train_labels``   uint8 (n_train,)
``train_index``    int64 (n_train,)             global index 0..49,999 (batch order)
``label_names``    <U10 (10,)                   airplane ... truck
``source``         <U (scalar)                  provenance
=================  ===========================  =============================================

The file is byte-for-byte reproducible: the zip entries carry a fixed timestamp and a fixed
order, and compression is zlib at level 9.

Usage::

    python scripts/make_sample.py [--data ../shared/data] [--out python/firstlayer/data/sample.npz]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import zipfile
from pathlib import Path

import numpy as np

from firstlayer._io import atomic_write_bytes

REPO = Path(__file__).resolve().parent.parent
SUBSET = "cifar10_exact_subset.npz"
N_TEST_GLOBAL = 50_000
SOURCE = (
    "CIFAR-10 (Krizhevsky 2009), exact pixels of the original python batches: the first 1,017 "
    "images of test_batch and the first {per_class} images of each class in data_batch_1..5; "
    "made by scripts/make_sample.py from shared/data/cifar10_exact_subset.npz"
)


def default_data_dir() -> Path:
    """``$FIRSTLAYER_DATA`` when set, else ``<repo>/../shared/data``."""
    env = os.environ.get("FIRSTLAYER_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


def build(data_dir: Path, train_per_class: int) -> dict[str, np.ndarray]:
    """The arrays of the sample, from the exact CIFAR-10 subset in ``data_dir``."""
    with np.load(data_dir / SUBSET, allow_pickle=False) as f:
        data, index, labels, names = f["data"], f["index"], f["labels"], f["label_names"]
    order = np.argsort(index, kind="stable")
    data, index = data[order], index[order]
    images = data.reshape(-1, 3, 32, 32)

    test = index >= N_TEST_GLOBAL
    train_rows = []
    for c in range(len(names)):
        rows = np.flatnonzero(~test & (labels[index] == c))[:train_per_class]
        if len(rows) < train_per_class:
            raise ValueError(f"only {len(rows)} exact training images of class {c}")
        train_rows.append(rows)
    train = np.sort(np.concatenate(train_rows))
    return {
        "test_images": np.ascontiguousarray(images[test]),
        "test_labels": labels[index[test]].astype(np.uint8),
        "test_index": (index[test] - N_TEST_GLOBAL).astype(np.int64),
        "train_images": np.ascontiguousarray(images[train]),
        "train_labels": labels[index[train]].astype(np.uint8),
        "train_index": index[train].astype(np.int64),
        "label_names": names.astype("<U10"),
        "source": np.array(SOURCE.format(per_class=train_per_class)),
    }


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> bytes:
    """Write a reproducible compressed ``.npz`` atomically; return its bytes."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for key in arrays:
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            npy = io.BytesIO()
            np.lib.format.write_array(npy, np.asarray(arrays[key]), allow_pickle=False)
            zf.writestr(info, npy.getvalue(), compresslevel=9)
    payload = buf.getvalue()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, payload)
    return payload


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, help="folder holding cifar10_exact_subset.npz")
    parser.add_argument(
        "--out", type=Path, default=REPO / "python" / "firstlayer" / "data" / "sample.npz"
    )
    parser.add_argument("--train-per-class", type=int, default=35)
    args = parser.parse_args(argv)
    data_dir = args.data or default_data_dir()
    arrays = build(data_dir, args.train_per_class)
    payload = write_npz(args.out, arrays)
    print(
        f"{args.out}: {len(payload):,} bytes, sha256 {hashlib.sha256(payload).hexdigest()}, "
        f"{len(arrays['test_images'])} test + {len(arrays['train_images'])} train images"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
