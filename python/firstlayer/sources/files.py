"""Image files: a list of them decoded in parallel, and folders walked as torchvision does."""

from __future__ import annotations

import hashlib
import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from firstlayer.sources.base import Source, Step, group_images
from firstlayer.sources.decode import DecodeOptions, make_decoder

__all__ = ["IMAGE_EXTENSIONS", "FileListSource", "image_folder"]

#: File name endings read as images (torchvision's ``IMG_EXTENSIONS``), compared case-blind.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


class FileListSource(Source):
    """Image files decoded in parallel, in bounded memory (two batches in flight at most).

    Parameters
    ----------
    files : sequence of str
    labels : sequence of int, optional
    opts : DecodeOptions
    decode_threads : int, optional
        Decoding threads (default: all cores).
    decoder : {"auto", "pillow", "rust"}
    name, class_names
    identity : str, optional
        Enters the fingerprint instead of the files' names and sizes.
    """

    def __init__(
        self,
        files: Sequence[str],
        *,
        labels: Sequence[int] | None = None,
        opts: DecodeOptions | None = None,
        decode_threads: int | None = None,
        decoder: str = "auto",
        name: str = "files",
        class_names: list[str] | None = None,
        identity: str | None = None,
    ) -> None:
        self.files = [os.fspath(f) for f in files]
        self.labels = None if labels is None else [int(v) for v in labels]
        self.opts = opts or DecodeOptions()
        self.decode_threads = max(1, decode_threads or os.cpu_count() or 1)
        self.decoder = decoder
        self.name = name
        self.total = len(self.files)
        self.has_labels = self.labels is not None
        self.class_names = class_names
        self.n_classes = None if class_names is None else len(class_names)
        self._identity = identity

    def fingerprint(self) -> str:
        if self._identity is None:
            h = hashlib.sha256()
            for f in self.files:
                try:
                    size = os.stat(f).st_size
                except OSError:
                    size = -1
                h.update(f"{f}\0{size}\n".encode("utf-8", "surrogateescape"))
            if self.labels is not None:
                h.update(np.asarray(self.labels, dtype=np.int64).tobytes())
            self._identity = f"{self.total}:{h.hexdigest()}"
        return f"files:{self._identity}"

    def steps(self, start: int = 0, batch_size: int = 256) -> Iterator[Step]:
        dec = make_decoder(self.opts, self.decode_threads, self.decoder)
        try:
            n = len(self.files)
            bounds = [(i, min(i + batch_size, n)) for i in range(start, n, batch_size)]
            pending: deque[tuple[int, int, Callable[[], list[np.ndarray | str]]]] = deque()
            it = iter(bounds)
            for _ in range(2):  # prefetch: the next batch decodes while this one is counted
                nxt = next(it, None)
                if nxt is not None:
                    pending.append((nxt[0], nxt[1], dec.submit(self.files[nxt[0] : nxt[1]])))
            while pending:
                i, j, result = pending.popleft()
                decoded = result()
                nxt = next(it, None)
                if nxt is not None:
                    pending.append((nxt[0], nxt[1], dec.submit(self.files[nxt[0] : nxt[1]])))
                images, labels, skipped = [], [], []
                for k, out in enumerate(decoded):
                    if isinstance(out, str):
                        skipped.append((self.files[i + k], out))
                        continue
                    images.append(out)
                    if self.labels is not None:
                        labels.append(self.labels[i + k])
                parts = group_images(images, labels if self.labels is not None else None, "NHWC")
                yield Step(parts, j - i, skipped)
        finally:
            dec.close()


def has_image_ext(name: str) -> bool:
    """Whether the file name ends in one of :data:`IMAGE_EXTENSIONS` (any case)."""
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _walk_images(folder: Path) -> list[str]:
    """Image files under ``folder``, walked in sorted order (as torchvision's ``make_dataset``)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames.sort()
        for fn in sorted(filenames):
            if has_image_ext(fn):
                found.append(os.path.join(dirpath, fn))
    return found


def image_folder(
    folder: str | os.PathLike[str],
    *,
    labels: bool | None = None,
    opts: DecodeOptions | None = None,
    decode_threads: int | None = None,
    decoder: str = "auto",
) -> FileListSource:
    """A folder of images; sub-folders are classes (torchvision ``ImageFolder`` order).

    Parameters
    ----------
    folder : str or path-like
    labels : bool or None
        ``None``: classes when the folder has class sub-folders. ``False``: every image below the
        folder, unlabelled. ``True``: class sub-folders required.
    opts, decode_threads, decoder
        See :class:`FileListSource`.

    Raises
    ------
    FileNotFoundError
        If no image file is found.
    ValueError
        If images lie both directly in the folder and in class sub-folders (unless
        ``labels=False``), so that none is dropped silently.
    """
    root = Path(folder)
    name = str(root)

    def source(files: list[str], **labelling: Any) -> FileListSource:
        return FileListSource(
            files, opts=opts, decode_threads=decode_threads, decoder=decoder, name=name, **labelling
        )

    if labels is False:
        files = _walk_images(root)
        if not files:
            raise FileNotFoundError(
                f"source={name!r}: no image files ({', '.join(IMAGE_EXTENSIONS)}) found"
            )
        return source(files)
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir(follow_symlinks=True))
    per_class = [_walk_images(root / c) for c in classes]
    top = sorted(e.name for e in os.scandir(root) if e.is_file() and has_image_ext(e.name))
    labelled = [(c, f) for c, f in zip(classes, per_class, strict=True) if f]
    if labelled and top:
        raise ValueError(
            f"source={name!r} holds {len(top)} image files directly and {len(labelled)} class "
            "sub-folders; pass labels=False to use every image without labels, or move the "
            "loose files into a class folder"
        )
    if labelled:
        class_names = [c for c, _ in labelled]
        files = [f for _, fs in labelled for f in fs]
        ys = [k for k, (_, fs) in enumerate(labelled) for _ in fs]
        return source(files, labels=ys, class_names=class_names)
    if labels:
        raise ValueError(
            f"labels=True needs class sub-folders in source={name!r}, found images only at the top"
        )
    files = [str(root / f) for f in top]
    if not files:
        raise FileNotFoundError(
            f"source={name!r}: no image files ({', '.join(IMAGE_EXTENSIONS)}) found in the folder "
            "or its class sub-folders"
        )
    return source(files)
