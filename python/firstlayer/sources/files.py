"""Image files: a list of them decoded in parallel, and folders walked as torchvision does."""

from __future__ import annotations

import hashlib
import os
import stat
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
                    if min(out.shape[:2]) < self.min_side:
                        h, w = out.shape[:2]
                        m = self.min_side
                        why = f"image of {h} x {w} pixels, smaller than the {m} x {m} window"
                        skipped.append((self.files[i + k], why))
                        continue
                    images.append(out)
                    if self.labels is not None:
                        labels.append(self.labels[i + k])
                parts = group_images(images, labels if self.labels is not None else None, "NHWC")
                yield Step(parts, j - i, skipped)
        finally:
            dec.close()


def _is_regular(entry: os.DirEntry[str]) -> bool:
    try:
        return stat.S_ISREG(entry.stat(follow_symlinks=True).st_mode)
    except OSError:
        return entry.is_symlink()  # dangling: kept, so that the decoder reports it


def has_image_ext(name: str) -> bool:
    """Whether the file name ends in one of :data:`IMAGE_EXTENSIONS` (any case)."""
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _walk_images(folder: Path, seen: set[tuple[int, int]] | None = None) -> list[str]:
    """Image files under ``folder`` in sorted order (as torchvision's ``make_dataset``).

    Symbolic links are followed, but each directory is entered once, by ``(device, inode)``:
    a link loop or a link to ``.`` can neither hang the walk nor count an image twice. Only
    regular files are taken (a FIFO named ``x.png`` would block its reader forever); a link
    that leads nowhere is kept, so that the decoder reports it. A folder that cannot be read is
    a ``PermissionError`` naming it, never a silently smaller dataset.
    """
    seen = set() if seen is None else seen
    found: list[str] = []

    def walk(path: str) -> None:
        try:
            st = os.stat(path)
        except OSError as exc:
            raise PermissionError(f"{path}: cannot read this folder ({exc.strerror})") from exc
        key = (st.st_dev, st.st_ino)
        if key in seen:
            return
        seen.add(key)
        try:
            with os.scandir(path) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            raise PermissionError(
                f"{path}: cannot list this folder ({exc.strerror}); fix its permissions or "
                "move it out of the dataset"
            ) from exc
        subdirs: list[str] = []
        for e in entries:
            try:
                est = e.stat(follow_symlinks=True)
            except OSError:
                if e.is_symlink() and has_image_ext(e.name):
                    found.append(e.path)  # a dangling link: the decoder reports it
                continue
            if stat.S_ISDIR(est.st_mode):
                subdirs.append(e.path)
            elif stat.S_ISREG(est.st_mode) and has_image_ext(e.name):
                found.append(e.path)
        # os.walk's order: a folder's files, then its sub-folders, each in sorted order (the
        # stack holds them reversed, so that the first is walked next; no recursion limit).
        stack.extend(reversed(subdirs))

    stack = [os.fspath(folder)]
    while stack:
        walk(stack.pop())
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
    try:
        with os.scandir(root) as it:
            entries = sorted(it, key=lambda e: e.name)
    except NotADirectoryError:
        raise
    except OSError as exc:
        raise PermissionError(f"source={name!r}: cannot list this folder ({exc.strerror})") from exc
    classes = [e.name for e in entries if e.is_dir(follow_symlinks=True)]
    st = os.stat(root)
    # Each class walks its own tree (a class linked to another is read twice, as torchvision
    # does), but never back into the dataset's root.
    per_class = [_walk_images(root / c, {(st.st_dev, st.st_ino)}) for c in classes]
    top = [e.name for e in entries if _is_regular(e) and has_image_ext(e.name)]
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
