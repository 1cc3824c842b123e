"""Dataset names (``"cifar10"``, ``"mnist"``, ``"sample"``, ...): where their files are found,
how they are downloaded, and the CIFAR-10 sample bundled with firstlayer.

Data folders are :func:`firstlayer._paths.data_roots`; downloads go to the first of them.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

import numpy as np

from firstlayer._paths import DATA_ENV, data_roots
from firstlayer.exceptions import DatasetNotFoundError
from firstlayer.sources.base import ArraySource, Source
from firstlayer.sources.formats import (
    CIFAR10_FILES,
    CIFAR100_FILES,
    cifar_source,
    file_identity,
    read_idx,
)

__all__ = ["DATASET_NAMES", "dataset_source", "load_sample", "sample_path"]

_SAMPLE_FILE = "sample.npz"
#: Names understood by :func:`~firstlayer.sources.open_source` (case-blind).
DATASET_NAMES = (
    "cifar10",
    "cifar10-test",
    "cifar100",
    "cifar100-test",
    "mnist",
    "mnist-test",
    "fashion-mnist",
    "fashion-mnist-test",
    "sample",
    "sample-train",
)


def sample_path() -> Path:
    """The bundled sample file (``firstlayer/data/sample.npz``)."""
    return Path(str(resources.files("firstlayer").joinpath("data", _SAMPLE_FILE)))


def load_sample(split: str = "test") -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The CIFAR-10 sample bundled with firstlayer (exact pixels of the original files).

    Parameters
    ----------
    split : {"test", "train"}

    Returns
    -------
    images : numpy.ndarray
        ``uint8``, ``(N, 3, 32, 32)``.
    labels : numpy.ndarray
        ``int64``, ``(N,)``.
    label_names : list of str
        The ten CIFAR-10 class names.
    """
    if split not in ("test", "train"):
        raise ValueError(f"split must be 'test' or 'train', got {split!r}")
    path = sample_path()
    if not path.is_file():
        raise FileNotFoundError(
            f"the bundled sample {path} is missing; regenerate it with scripts/make_sample.py"
        )
    with np.load(path, allow_pickle=False) as f:
        images = f[f"{split}_images"]
        labels = f[f"{split}_labels"].astype(np.int64)
        names = [str(v) for v in f["label_names"]]
    return images, labels, names


def _find_cifar(roots: list[Path], version: str, split: str, looked: list[str]) -> Source | None:
    folder, tarname = (
        ("cifar-10-batches-py", "cifar-10-python.tar.gz")
        if version == "10"
        else ("cifar-100-python", "cifar-100-python.tar.gz")
    )
    files = (CIFAR10_FILES if version == "10" else CIFAR100_FILES)[split]
    meta = "batches.meta" if version == "10" else "meta"
    name = f"cifar{version}" + ("-test" if split == "test" else "")
    for r in roots:
        for base in (r, r / f"cifar{version}"):
            d = base / folder
            looked.append(str(d))
            if d.is_dir() and all((d / fn).is_file() for fn in files):
                return cifar_source(d, files, n_classes=int(version), meta=meta, name=name)
            t = base / tarname
            looked.append(str(t))
            if t.is_file():
                return cifar_source(t, files, n_classes=int(version), meta=meta, name=name)
    return None


_MNIST_FOLDERS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}
_FASHION_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip


def _find_mnist(roots: list[Path], family: str, split: str, looked: list[str]) -> Source | None:
    prefix = "train" if split == "train" else "t10k"
    for r in roots:
        raw = r / _MNIST_FOLDERS[family] / "raw"
        found = {}
        for kind, idx in (("images", 3), ("labels", 1)):
            base = raw / f"{prefix}-{kind}-idx{idx}-ubyte"
            looked.append(f"{base}[.gz]")
            for cand in (base, base.with_name(base.name + ".gz")):
                if cand.is_file():
                    found[kind] = cand
                    break
        if len(found) == 2:
            images = read_idx(found["images"])
            labels = read_idx(found["labels"])
            names = [str(i) for i in range(10)] if family == "mnist" else list(_FASHION_CLASSES)
            return ArraySource(
                images,
                labels=labels,
                n_classes=10,
                class_names=names,
                name=family + ("-test" if split == "test" else ""),
                identity=";".join(file_identity(found[k]) for k in ("images", "labels")),
            )
    return None


def _download(family: str, split: str, root: Path) -> None:
    """Fetch the original files with torchvision's downloader (checksums verified)."""
    import torchvision.datasets as tvd
    from torchvision.datasets.utils import download_and_extract_archive

    root.mkdir(parents=True, exist_ok=True)
    if family in ("cifar10", "cifar100"):
        cls = tvd.CIFAR10 if family == "cifar10" else tvd.CIFAR100
        download_and_extract_archive(cls.url, str(root), filename=cls.filename, md5=cls.tgz_md5)
    else:
        cls = tvd.MNIST if family == "mnist" else tvd.FashionMNIST
        cls(root=str(root), train=split == "train", download=True)


def dataset_source(name: str, *, root: str | os.PathLike[str] | None, download: bool) -> Source:
    """Resolve a dataset name (see :data:`DATASET_NAMES`) to a source.

    Parameters
    ----------
    name : str
    root : path, optional
        The one folder to look in; default :func:`firstlayer._paths.data_roots`.
    download : bool
        Fetch missing files through torchvision into the first data folder.

    Raises
    ------
    DatasetNotFoundError
        Naming every path looked at, and why downloading did not help.
    """
    key = name.lower()
    if key not in DATASET_NAMES:
        raise ValueError(f"unknown dataset name {name!r}; known names: {', '.join(DATASET_NAMES)}")
    if key.startswith("sample"):
        split = "train" if key == "sample-train" else "test"
        images, labels, names = load_sample(split)
        return ArraySource(
            images,
            layout="NCHW",
            labels=labels,
            n_classes=len(names),
            class_names=names,
            name=key,
            identity=file_identity(sample_path()) + f":{split}",
        )
    split = "test" if key.endswith("-test") else "train"
    family = key.removesuffix("-test")
    roots = data_roots(root)

    def find(looked: list[str]) -> Source | None:
        if family in ("cifar10", "cifar100"):
            return _find_cifar(roots, family[5:], split, looked)
        return _find_mnist(roots, family, split, looked)

    looked: list[str] = []
    src = find(looked)
    if src is not None:
        return src
    why = "download=False"
    if download:
        try:
            _download(family, split, roots[0])
        except Exception as exc:  # noqa: BLE001 - reported in the error below
            why = f"download into {roots[0]} failed: {type(exc).__name__}: {exc}"
        else:
            src = find([])
            if src is not None:
                return src
            why = f"download into {roots[0]} gave no readable files"
    listing = "\n  ".join(dict.fromkeys(looked))
    raise DatasetNotFoundError(
        f"dataset {name!r} not found; looked for:\n  {listing}\n({why}). Pass root= or set "
        f"${DATA_ENV} to the folder holding the original files."
    )
