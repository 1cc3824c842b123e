"""The images of a reproduction: the CIFAR-10 sets of each scale, and natural photographs.

The shared data files (``cifar10_exact_subset.npz``, ``cifar10_jpeg_q75.npz``,
``pretrained_first_layers.npz``) are looked for in the folders of
:func:`firstlayer._paths.data_roots`.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from firstlayer._paths import DATA_ENV
from firstlayer.reproduce.scales import Scale

__all__ = ["SKIMAGE_PHOTOS", "find_file", "load_data", "natural_images", "need_file"]


def find_file(name: str, dirs: list[Path]) -> Path | None:
    """The first ``dirs/name`` that is a file, or None."""
    for d in dirs:
        if (d / name).is_file():
            return d / name
    return None


def need_file(name: str, dirs: list[Path], why: str) -> Path:
    """Like :func:`find_file`, but a missing file is a FileNotFoundError saying where to put it."""
    p = find_file(name, dirs)
    if p is None:
        looked = ", ".join(str(d) for d in dirs)
        msg = (
            f"data_root: expected {name} (for {why}) in one of {looked}; not found. Pass "
            f"--data-root or set ${DATA_ENV}."
        )
        raise FileNotFoundError(msg)
    return p


def _decode_jpeg_set(path: Path, index: np.ndarray) -> np.ndarray:
    from PIL import Image

    with np.load(path, allow_pickle=False) as f:
        blob, off = f["jpeg"], f["offsets"]
    out = np.empty((index.size, 3, 32, 32), dtype=np.uint8)
    for i, g in enumerate(index):
        img = Image.open(io.BytesIO(blob[off[g] : off[g + 1]].tobytes())).convert("RGB")
        out[i] = np.asarray(img).transpose(2, 0, 1)
    return out


def load_data(
    scale: Scale, dirs: list[Path]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """Training and held-out images of a scale.

    Returns
    -------
    train_x, train_y, test_x, test_y : numpy.ndarray
        uint8 ``(N, 3, 32, 32)`` images and int64 labels.
    description : dict
        Name, files and caveats of the data, for the report.
    """
    from firstlayer.sources import load_sample

    desc: dict[str, Any]
    names: list[str] | None
    if scale.data == "sample":
        x, y, names = load_sample("test")
        tx, ty, _ = load_sample("train")
        desc = {
            "name": "CIFAR-10 sample bundled with firstlayer (exact pixels)",
            "class_names": names,
        }
    elif scale.data == "exact":
        p = need_file("cifar10_exact_subset.npz", dirs, f"scale {scale.name!r}")
        with np.load(p, allow_pickle=False) as f:
            idx, data, labels = f["index"], f["data"], f["labels"].astype(np.int64)
            names = [str(v) for v in f["label_names"]]
        imgs = data.reshape(-1, 3, 32, 32)
        tr = idx < 50000
        x, y, tx, ty = imgs[tr], labels[idx[tr]], imgs[~tr], labels[idx[~tr]]
        desc = {
            "name": "CIFAR-10 exact subset (5,085 training and 1,017 test images, exact pixels)",
            "path": str(p),
            "class_names": names,
        }
    elif scale.data == "full":
        p = need_file("cifar10_jpeg_q75.npz", dirs, f"scale {scale.name!r}")
        with np.load(p, allow_pickle=False) as f:
            labels = f["labels"].astype(np.int64)
        x = _decode_jpeg_set(p, np.arange(50000))
        tx = _decode_jpeg_set(p, np.arange(50000, 60000))
        y, ty = labels[:50000], labels[50000:]
        names = None
        desc = {
            "name": "CIFAR-10, all 60,000 images decoded from JPEG quality 75",
            "path": str(p),
            "caveat": "JPEG damages the tail of the patch spectrum (components beyond ~20)",
        }
    else:  # pragma: no cover - Scale values are fixed in scales.py
        msg = f"scale.data: expected sample, exact or full, got {scale.data!r}"
        raise ValueError(msg)
    if scale.n_train is not None:
        x, y = x[: scale.n_train], y[: scale.n_train]
    if scale.n_test is not None:
        tx, ty = tx[: scale.n_test], ty[: scale.n_test]
    desc.update(train_images=int(len(x)), test_images=int(len(tx)))
    if names is not None:
        desc["class_names"] = names
    return x, y, tx, ty, desc


#: scikit-image's bundled colour photographs stored losslessly (PNG): natural scenes, no
#: synthetic or microscopy images, no JPEG (``rocket`` and ``hubble_deep_field`` are JPEGs).
SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "motorcycle_left", "motorcycle_right")


def natural_images(size: int) -> tuple[list[np.ndarray], str]:
    """Natural photographs for ImageNet-style patch statistics, and what they are.

    scikit-image's lossless colour photographs (:data:`SKIMAGE_PHOTOS`, full resolution) when it
    is installed; otherwise CIFAR-10 sample images upsampled (bilinear) to ``size`` pixels.
    """
    try:
        import importlib
        from importlib import metadata

        from PIL import Image

        skdata = importlib.import_module("skimage.data")
        folder = Path(str(skdata.__file__)).parent
        imgs = []
        for n in SKIMAGE_PHOTOS:
            with Image.open(folder / f"{n}.png") as im:
                imgs.append(np.ascontiguousarray(np.asarray(im.convert("RGB"))))
        version = metadata.version("scikit-image")
        pairs = zip(SKIMAGE_PHOTOS, imgs, strict=True)
        sizes = ", ".join(f"{n} {a.shape[1]}x{a.shape[0]}" for n, a in pairs)
        what = f"scikit-image {version}'s lossless (PNG) colour photographs, full size: {sizes}"
        return imgs, what
    except Exception:  # noqa: BLE001 - any failure falls back to CIFAR
        from PIL import Image

        from firstlayer.sources import load_sample

        x, _, _ = load_sample("test")
        out = [
            np.asarray(
                Image.fromarray(im.transpose(1, 2, 0)).resize(
                    (size, size), Image.Resampling.BILINEAR
                )
            )
            for im in x[:256]
        ]
        return out, f"256 CIFAR-10 sample images upsampled bilinearly to {size}x{size}"
