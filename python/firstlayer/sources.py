"""Every input kind as a stream of image batches, and the streaming driver behind ``patch_stats``.

A *source* is anything a user holds images in: a torch ``Dataset`` or ``DataLoader``, a torchvision
dataset, a folder of image files, a ``.npy`` file, the original CIFAR python batches, or a dataset
name (``"cifar10"``, ``"sample"``, ...). :func:`open_source` turns it into a :class:`Source`, which
yields :class:`Step` s: a few C-contiguous ``uint8`` (or float) arrays with their labels, and the
number of source items they account for. :func:`stream_stats` feeds the steps to
:meth:`PatchStats.update <firstlayer.PatchStats.update>`, in bounded memory, with a progress line,
an error policy for unreadable files and atomic checkpoints from which a killed run resumes with
bit-identical statistics.

Steps always start at multiples of ``batch_size`` (within each file of a multi-file source), so a
resumed run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import sys
import tarfile
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TextIO

import numpy as np

from .checkpoint import Checkpoint, read_checkpoint, write_checkpoint
from .cifar_reader import read_cifar_batch, read_meta

if TYPE_CHECKING:
    from .stats import PatchStats

__all__ = [
    "DATASET_NAMES",
    "IMAGE_EXTENSIONS",
    "DatasetNotFoundError",
    "ImageDecodeError",
    "Part",
    "Source",
    "Step",
    "data_roots",
    "decode_image",
    "load_sample",
    "open_source",
    "stream_stats",
]

#: File name endings read as images (torchvision's ``IMG_EXTENSIONS``), compared case-blind.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
#: A progress line appears only once a run has lasted this long (seconds).
PROGRESS_DELAY_S = 2.0
#: Environment variable naming the folder(s) where datasets are looked for and downloaded to.
DATA_ENV = "FIRSTLAYER_DATA"

_LAYOUTS = ("NCHW", "NHWC")
_FLOAT_DTYPES = (np.float32, np.float64)

Layout = Literal["NCHW", "NHWC"]
OnError = Literal["raise", "skip"]


class ImageDecodeError(ValueError):
    """An image file that cannot be read, with ``on_error="raise"``.

    Attributes
    ----------
    path : str
        The file.
    reason : str
        What the decoder said.
    """

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(
            f"cannot decode image {path!r}: {reason} "
            "(pass on_error='skip' to count and list such files instead)"
        )
        self.path = path
        self.reason = reason


class DatasetNotFoundError(FileNotFoundError):
    """A dataset name whose files are nowhere, and could not be downloaded."""


# --------------------------------------------------------------------------------------------
# Steps and sources
# --------------------------------------------------------------------------------------------


@dataclass
class Part:
    """One array of images that share a shape, ready for ``PatchStats.update``.

    Attributes
    ----------
    images : numpy.ndarray
        C-contiguous ``uint8``, ``float32`` or ``float64``, 4-D.
    layout : {"NCHW", "NHWC"} or None
        ``None`` only for user arrays whose layout the user left to inference.
    labels : numpy.ndarray or None
        ``int64``, one per image.
    """

    images: np.ndarray
    layout: Layout | None
    labels: np.ndarray | None = None


@dataclass
class Step:
    """What a source yields: some images, and how many source items they stand for.

    Attributes
    ----------
    parts : list of Part
        Usually one; images of different sizes come in separate parts.
    consumed : int
        Source items this step covers, skipped ones included.
    skipped : list of (str, str)
        ``(path or item, reason)`` of the items that could not be read.
    """

    parts: list[Part]
    consumed: int
    skipped: list[tuple[str, str]] = field(default_factory=list)


class Source:
    """Base class of all sources.

    Attributes
    ----------
    name : str
        Human-readable, used in the progress line and in messages.
    total : int or None
        Number of items, when known in advance.
    has_labels : bool or None
        Whether the steps carry labels; ``None`` when only the first batch will tell.
    n_classes : int or None
        Number of classes, when known.
    class_names : list of str or None
    """

    name: str = "source"
    total: int | None = None
    has_labels: bool | None = False
    n_classes: int | None = None
    class_names: list[str] | None = None

    def fingerprint(self) -> str:
        """A string that changes when the source's content or order changes."""
        return f"{type(self).__name__}:{self.name}:{self.total}"

    def steps(self, start: int = 0, batch_size: int = 256) -> Iterator[Step]:
        """Yield the steps from item ``start`` on (``start`` must be a step boundary)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release threads and files."""


def _as_numpy_batch(x: Any, what: str) -> np.ndarray:
    """A C-contiguous numpy array of an allowed dtype from a numpy array or CPU tensor."""
    if type(x).__module__.startswith("torch"):
        x = x.detach()
        if x.device.type != "cpu":
            x = x.cpu()
        if x.dtype.is_floating_point and x.element_size() < 4:
            x = x.float()
        x = x.contiguous().numpy()
    arr = np.asarray(x)
    if arr.dtype == np.float16:
        arr = arr.astype(np.float32)
    if arr.dtype != np.uint8 and arr.dtype not in _FLOAT_DTYPES:
        raise TypeError(
            f"{what} must hold uint8, float32 or float64 pixels, got dtype {arr.dtype} "
            f"(shape {arr.shape})"
        )
    return np.ascontiguousarray(arr)


def _labels_array(y: Any, n: int, what: str) -> np.ndarray:
    if type(y).__module__.startswith("torch"):
        y = y.detach().cpu().numpy()
    arr = np.asarray(y)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.shape != (n,) or (arr.size and arr.dtype.kind not in "iu"):
        raise ValueError(
            f"{what} must be {n} integer class labels, got shape {arr.shape} dtype {arr.dtype}"
        )
    return arr.astype(np.int64)


def _four_d(arr: np.ndarray, layout: Layout | None, what: str) -> tuple[np.ndarray, Layout | None]:
    if arr.ndim == 3:  # (N, H, W) grayscale
        return arr.reshape(arr.shape[0], 1, *arr.shape[1:]), "NCHW"
    if arr.ndim != 4:
        raise ValueError(
            f"{what} must be 4-D (N,C,H,W or N,H,W,C) or 3-D (N,H,W), got shape {arr.shape}"
        )
    return arr, layout


class ArraySource(Source):
    """Images in one array-like indexed along its first axis (numpy, memmap, tensor).

    Parameters
    ----------
    images : array-like
        ``(N, C, H, W)``, ``(N, H, W, C)`` or ``(N, H, W)``; a ``numpy.memmap`` stays on disk and
        only the current batch is read.
    layout : {"NCHW", "NHWC"} or None
        ``None`` lets ``PatchStats.update`` infer it.
    labels : array-like, optional
    n_classes, class_names, name, identity
        Metadata; ``identity`` enters the fingerprint.
    """

    def __init__(
        self,
        images: Any,
        *,
        layout: Layout | None = None,
        labels: Any = None,
        n_classes: int | None = None,
        class_names: list[str] | None = None,
        name: str = "array",
        identity: str = "",
    ) -> None:
        shape = tuple(images.shape)
        if len(shape) not in (3, 4):
            raise ValueError(
                f"{name}: images must be 4-D (N,C,H,W or N,H,W,C) or 3-D (N,H,W), got shape {shape}"
            )
        self.images = images
        self.layout: Layout | None = layout
        self.total = shape[0]
        self.labels = None if labels is None else _labels_array(labels, shape[0], f"{name} labels")
        self.has_labels = self.labels is not None
        self.n_classes = n_classes
        self.class_names = class_names
        self.name = name
        self._identity = identity or f"{shape}:{getattr(images, 'dtype', '')}"

    def fingerprint(self) -> str:
        return f"array:{self.name}:{self._identity}"

    def steps(self, start: int = 0, batch_size: int = 256) -> Iterator[Step]:
        n = int(self.total or 0)
        for i in range(start, n, batch_size):
            j = min(i + batch_size, n)
            arr = _as_numpy_batch(self.images[i:j], f"{self.name}[{i}:{j}]")
            arr, layout = _four_d(arr, self.layout, self.name)
            labels = None if self.labels is None else self.labels[i:j]
            yield Step([Part(arr, layout, labels)], j - i)


class ChainSource(Source):
    """Several sources one after the other, opened lazily (e.g. CIFAR's five training files).

    Parameters
    ----------
    openers : sequence of callables
        Each returns a :class:`Source`; called when the chain reaches it.
    name : str
    identity : str
        Enters the fingerprint.
    total : int, optional
    """

    def __init__(
        self,
        openers: Sequence[Callable[[], Source]],
        *,
        name: str,
        identity: str,
        total: int | None = None,
        has_labels: bool = False,
        n_classes: int | None = None,
        class_names: list[str] | None = None,
    ) -> None:
        self.openers = list(openers)
        self.name = name
        self._identity = identity
        self.total = total
        self.has_labels = has_labels
        self.n_classes = n_classes
        self.class_names = class_names

    def fingerprint(self) -> str:
        return f"chain:{self.name}:{self._identity}"

    def steps(self, start: int = 0, batch_size: int = 256) -> Iterator[Step]:
        offset = 0
        for opener in self.openers:
            part = opener()
            try:
                n = part.total
                if n is None:
                    raise ValueError(f"{self.name}: every part of a chain must know its length")
                if offset + n > start:
                    yield from part.steps(max(0, start - offset), batch_size)
                offset += n
            finally:
                part.close()


# --------------------------------------------------------------------------------------------
# Image decoding (Pillow in threads today; firstlayer._core.decode_images when it exists)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DecodeOptions:
    """How image files become arrays, following torchvision's conventions.

    The image is converted to RGB (as ``ImageFolder``'s loader does), then resized
    (``transforms.Resize``: an int sets the shorter side, bilinear with antialiasing), then
    center-cropped (``transforms.CenterCrop``, zero-padded when the crop is larger), then made
    grayscale (``transforms.Grayscale()``: ITU-R 601-2 luma, as ``PIL.Image.convert("L")``).
    """

    grayscale: bool = False
    resize: int | tuple[int, int] | None = None
    center_crop: tuple[int, int] | None = None

    def describe(self) -> str:
        return json.dumps([self.grayscale, self.resize, self.center_crop])


def _resized_size(h: int, w: int, size: int | tuple[int, int]) -> tuple[int, int]:
    """Output ``(h, w)`` of ``torchvision.transforms.Resize(size)``."""
    if isinstance(size, tuple):
        return size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)
    return (new_long, new_short) if w <= h else (new_short, new_long)


def center_crop_array(arr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``torchvision.transforms.CenterCrop`` on an ``(H, W)`` or ``(H, W, C)`` array.

    Pads with zeros (split as torchvision does) when the crop is larger than the image.
    """
    th, tw = size
    h, w = arr.shape[:2]
    if th > h or tw > w:
        pad_l = (tw - w) // 2 if tw > w else 0
        pad_t = (th - h) // 2 if th > h else 0
        pad_r = (tw - w + 1) // 2 if tw > w else 0
        pad_b = (th - h + 1) // 2 if th > h else 0
        widths = [(pad_t, pad_b), (pad_l, pad_r)] + [(0, 0)] * (arr.ndim - 2)
        arr = np.pad(arr, widths)
        h, w = arr.shape[:2]
        if h == th and w == tw:
            return np.ascontiguousarray(arr)
    top = int(round((h - th) / 2.0))
    left = int(round((w - tw) / 2.0))
    return np.ascontiguousarray(arr[top : top + th, left : left + tw])


def _pil_to_array(img: Any, opts: DecodeOptions) -> np.ndarray:
    from PIL import Image

    if img.mode != "RGB":
        img = img.convert("RGB")
    if opts.resize is not None:
        nh, nw = _resized_size(img.height, img.width, opts.resize)
        if (nh, nw) != (img.height, img.width):
            img = img.resize((nw, nh), Image.Resampling.BILINEAR)
    if opts.grayscale and opts.center_crop is None:
        img = img.convert("L")
    arr = np.asarray(img)
    if opts.center_crop is not None:
        arr = center_crop_array(arr, opts.center_crop)
        if opts.grayscale:  # crop then luma, in PIL so the rounding is PIL's
            arr = np.asarray(Image.fromarray(arr, "RGB").convert("L"))
    return np.ascontiguousarray(arr)


def decode_image(path: str | os.PathLike[str], opts: DecodeOptions | None = None) -> np.ndarray:
    """Decode one image file to ``(H, W, 3)`` (or ``(H, W)`` grayscale) ``uint8`` with Pillow.

    Parameters
    ----------
    path : str or path-like
    opts : DecodeOptions, optional

    Returns
    -------
    numpy.ndarray

    Raises
    ------
    OSError, ValueError, PIL.UnidentifiedImageError
        Whatever Pillow raises on an unreadable or truncated file.
    """
    from PIL import Image

    with Image.open(path) as img:
        img.load()
        return _pil_to_array(img, opts or DecodeOptions())


def _decode_or_reason(path: str, opts: DecodeOptions) -> np.ndarray | str:
    try:
        return decode_image(path, opts)
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - every decoder failure becomes a reported reason
        return f"{type(exc).__name__}: {exc}"


class _Decoder:
    """Decodes lists of files in the background; ``submit`` returns a result getter."""

    def submit(self, paths: list[str]) -> Callable[[], list[np.ndarray | str]]:
        raise NotImplementedError

    def close(self) -> None:
        pass


class _PillowDecoder(_Decoder):
    def __init__(self, opts: DecodeOptions, workers: int) -> None:
        self.opts = opts
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="firstlayer-decode")

    def submit(self, paths: list[str]) -> Callable[[], list[np.ndarray | str]]:
        futures = [self.pool.submit(_decode_or_reason, p, self.opts) for p in paths]
        return lambda: [f.result() for f in futures]

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


class _RustDecoder(_Decoder):
    """``firstlayer._core.decode_images(paths, grayscale=, resize=, center_crop=, threads=)``.

    Expected to return one entry per path: a ``uint8`` array (``(H, W, 3)`` or ``(H, W)``) or a
    ``str`` giving the reason the file could not be decoded; it parallelises internally.
    """

    def __init__(self, fn: Callable[..., list[Any]], opts: DecodeOptions, workers: int) -> None:
        self.fn = fn
        self.opts = opts
        self.workers = workers
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="firstlayer-rust-decode")

    def _run(self, paths: list[str]) -> list[np.ndarray | str]:
        out = self.fn(
            paths,
            grayscale=self.opts.grayscale,
            resize=self.opts.resize,
            center_crop=self.opts.center_crop,
            threads=self.workers,
        )
        return [o if isinstance(o, str) else np.ascontiguousarray(o) for o in out]

    def submit(self, paths: list[str]) -> Callable[[], list[np.ndarray | str]]:
        fut: Future[list[np.ndarray | str]] = self.pool.submit(self._run, paths)
        return fut.result

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def _make_decoder(opts: DecodeOptions, workers: int, decoder: str) -> _Decoder:
    if decoder not in ("auto", "pillow", "rust"):
        raise ValueError(f"decoder must be 'auto', 'pillow' or 'rust', got {decoder!r}")
    fn = None
    if decoder != "pillow":
        try:
            from . import _core

            fn = getattr(_core, "decode_images", None)
        except ImportError:
            fn = None
        if fn is None and decoder == "rust":
            raise ValueError("decoder='rust' needs firstlayer._core.decode_images, not built here")
    if fn is not None:
        return _RustDecoder(fn, opts, workers)
    return _PillowDecoder(opts, workers)


def _group_images(images: list[np.ndarray], labels: list[int] | None, layout: Layout) -> list[Part]:
    """Stack single images into parts of equal shape (first-appearance order)."""
    groups: dict[tuple[Any, ...], list[int]] = {}
    for i, img in enumerate(images):
        groups.setdefault((img.shape, img.dtype.str), []).append(i)
    parts = []
    for idx in groups.values():
        stack = np.stack([images[i] for i in idx])
        if stack.ndim == 3:  # (N, H, W) grayscale
            stack = stack.reshape(stack.shape[0], 1, *stack.shape[1:])
            part_layout: Layout = "NCHW"
        else:
            part_layout = layout
        lab = None if labels is None else np.asarray([labels[i] for i in idx], dtype=np.int64)
        parts.append(Part(np.ascontiguousarray(stack), part_layout, lab))
    return parts


class FileListSource(Source):
    """Image files decoded in parallel, in bounded memory (two batches in flight at most).

    Parameters
    ----------
    files : sequence of str
    labels : sequence of int, optional
    opts : DecodeOptions
    workers : int
        Decoding threads.
    decoder : {"auto", "pillow", "rust"}
    name, class_names
    """

    def __init__(
        self,
        files: Sequence[str],
        *,
        labels: Sequence[int] | None = None,
        opts: DecodeOptions | None = None,
        workers: int | None = None,
        decoder: str = "auto",
        name: str = "files",
        class_names: list[str] | None = None,
        identity: str | None = None,
    ) -> None:
        self.files = [os.fspath(f) for f in files]
        self.labels = None if labels is None else [int(v) for v in labels]
        self.opts = opts or DecodeOptions()
        self.workers = max(1, workers or os.cpu_count() or 1)
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
        dec = _make_decoder(self.opts, self.workers, self.decoder)
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
                parts = _group_images(images, labels if self.labels is not None else None, "NHWC")
                yield Step(parts, j - i, skipped)
        finally:
            dec.close()


def _has_image_ext(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _walk_images(folder: Path) -> list[str]:
    """Image files under ``folder``, walked in sorted order (as torchvision's ``make_dataset``)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames.sort()
        for fn in sorted(filenames):
            if _has_image_ext(fn):
                found.append(os.path.join(dirpath, fn))
    return found


def image_folder(
    folder: str | os.PathLike[str],
    *,
    labels: bool | None = None,
    opts: DecodeOptions | None = None,
    workers: int | None = None,
    decoder: str = "auto",
) -> FileListSource:
    """A folder of images; sub-folders are classes (torchvision ``ImageFolder`` order).

    Parameters
    ----------
    folder : str or path-like
    labels : bool or None
        ``None``: classes when the folder has class sub-folders. ``False``: every image below the
        folder, unlabelled. ``True``: class sub-folders required.
    opts, workers, decoder
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
    if labels is False:
        files = _walk_images(root)
        if not files:
            raise FileNotFoundError(
                f"source={name!r}: no image files ({', '.join(IMAGE_EXTENSIONS)}) found"
            )
        return FileListSource(files, opts=opts, workers=workers, decoder=decoder, name=name)
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir(follow_symlinks=True))
    per_class = [_walk_images(root / c) for c in classes]
    top = sorted(e.name for e in os.scandir(root) if e.is_file() and _has_image_ext(e.name))
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
        return FileListSource(
            files,
            labels=ys,
            opts=opts,
            workers=workers,
            decoder=decoder,
            name=name,
            class_names=class_names,
        )
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
    return FileListSource(files, opts=opts, workers=workers, decoder=decoder, name=name)


# --------------------------------------------------------------------------------------------
# torch Datasets, DataLoaders and other iterables
# --------------------------------------------------------------------------------------------


def _is_pil(x: Any) -> bool:
    mod = sys.modules.get("PIL.Image")
    return mod is not None and isinstance(x, mod.Image)


def _is_tensor(x: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def _single_image(x: Any, opts: DecodeOptions, layout: Layout | None) -> tuple[np.ndarray, Layout]:
    """One image from a dataset item, as ``(H, W[, C])`` (NHWC) or ``(C, H, W)`` (NCHW)."""
    if _is_pil(x):
        return _pil_to_array(x, opts), "NHWC"
    if opts.resize is not None or opts.center_crop is not None:
        raise ValueError(
            "resize= and center_crop= apply to image files and PIL images; this source yields "
            f"{type(x).__name__} items: put the transforms in the dataset instead"
        )
    if _is_tensor(x):
        arr = _as_numpy_batch(x, "dataset item")
        if arr.ndim == 2:
            return arr, "NHWC"
        if arr.ndim == 3:
            return arr, layout or "NCHW"  # torch convention: C, H, W
        raise ValueError(f"a dataset image must be 2-D or 3-D, got tensor shape {tuple(arr.shape)}")
    if isinstance(x, np.ndarray):
        arr = _as_numpy_batch(x, "dataset item")
        if arr.ndim == 2:
            return arr, "NHWC"
        if arr.ndim == 3:
            if layout is None:
                layout = (
                    "NHWC" if arr.shape[-1] in (1, 3, 4) and arr.shape[0] not in (1, 3) else "NCHW"
                )
            return arr, layout
        raise ValueError(f"a dataset image must be 2-D or 3-D, got array shape {arr.shape}")
    raise TypeError(
        f"a dataset item must be a PIL image, a tensor or a numpy array (optionally with a "
        f"label), got {type(x).__name__}"
    )


def _split_item(item: Any) -> tuple[Any, Any]:
    """``(image, label)`` from ``img``, ``(img,)``, ``(img, label[, ...])`` or a dict."""
    if isinstance(item, tuple | list) and len(item) >= 2:
        return item[0], item[1]
    if isinstance(item, tuple | list) and len(item) == 1:  # e.g. a loader over TensorDataset(x)
        return item[0], None
    if isinstance(item, dict):
        img = next((item[k] for k in ("image", "img", "pixel_values") if k in item), None)
        if img is None:
            raise TypeError(f"a dict item needs an 'image' key, got keys {sorted(item)}")
        lab = next((item[k] for k in ("label", "labels", "target") if k in item), None)
        return img, lab
    return item, None


def _label_value(y: Any) -> int:
    if _is_tensor(y):
        y = y.item()
    if isinstance(y, np.generic | np.ndarray):
        y = y.item()
    if isinstance(y, bool) or not isinstance(y, int):
        raise TypeError(f"labels must be integers, got {type(y).__name__} {y!r}")
    return y


def _items_to_parts(
    items: list[Any], opts: DecodeOptions, layout: Layout | None
) -> tuple[list[Part], bool]:
    images: list[np.ndarray] = []
    labels: list[int] = []
    all_labelled = True
    layouts = set()
    for item in items:
        img, y = _split_item(item)
        arr, item_layout = _single_image(img, opts, layout)
        images.append(arr)
        layouts.add(item_layout if arr.ndim == 3 else "2d")
        if y is None:
            all_labelled = False
        else:
            labels.append(_label_value(y))
    if not images:
        return [], all_labelled
    if "NHWC" in layouts and "NCHW" in layouts:
        raise ValueError("a source mixes channel-first and channel-last images")
    lay: Layout = "NCHW" if "NCHW" in layouts else "NHWC"
    return _group_images(images, labels if all_labelled else None, lay), all_labelled


class MapDatasetSource(Source):
    """A map-style dataset (``len`` and ``ds[i]``) read item by item in the calling thread.

    For parallel loading, wrap the dataset in a ``DataLoader`` with ``num_workers``.
    """

    def __init__(
        self,
        ds: Any,
        *,
        opts: DecodeOptions,
        layout: Layout | None,
        on_error: OnError,
        name: str | None = None,
    ) -> None:
        self.ds = ds
        self.opts = opts
        self.layout = layout
        self.on_error = on_error
        self.total = len(ds)
        self.name = name or type(ds).__name__
        classes = getattr(ds, "classes", None)
        self.class_names = [str(c) for c in classes] if isinstance(classes, list | tuple) else None
        self.n_classes = None if self.class_names is None else len(self.class_names)
        self.has_labels = self._probe_labels()

    def _probe_labels(self) -> bool:
        if not self.total:
            return False
        try:
            _, y = _split_item(self.ds[0])
        except Exception:  # noqa: BLE001 - the real read reports it
            return False
        return y is not None

    def fingerprint(self) -> str:
        return f"dataset:{type(self.ds).__module__}.{type(self.ds).__name__}:{self.total}"

    def steps(self, start: int = 0, batch_size: int = 256) -> Iterator[Step]:
        n = int(self.total or 0)
        for i in range(start, n, batch_size):
            j = min(i + batch_size, n)
            items, skipped = [], []
            for k in range(i, j):
                if self.on_error == "skip":
                    try:
                        items.append(self.ds[k])
                    except Exception as exc:  # noqa: BLE001 - counted and listed
                        skipped.append((f"{self.name}[{k}]", f"{type(exc).__name__}: {exc}"))
                else:
                    items.append(self.ds[k])
            parts, labelled = _items_to_parts(items, self.opts, self.layout)
            if self.has_labels and not labelled:
                raise ValueError(f"{self.name}: some items in [{i}, {j}) have no label")
            if not self.has_labels:
                for p in parts:
                    p.labels = None
            yield Step(parts, j - i, skipped)


class IterableSource(Source):
    """Any iterable of batches: a ``DataLoader``, a generator of arrays or ``(x, y)`` pairs.

    An element is a batch (4-D, or 3-D read as ``(N, H, W)``), a pair ``(batch, labels)``, a dict
    with ``image``/``label`` keys, or a list of single images (PIL, tensors). A resumed run
    iterates again and drops the batches already counted, so the iterable must give the same
    batches each time (no shuffling).
    """

    def __init__(
        self,
        iterable: Iterable[Any],
        *,
        opts: DecodeOptions,
        layout: Layout | None,
        name: str | None = None,
        total: int | None = None,
    ) -> None:
        self.iterable = iterable
        self.opts = opts
        self.layout = layout
        self.name = name or type(iterable).__name__
        self.total = total
        self.has_labels: bool | None = None  # decided by the first batch
        self.n_classes = None
        ds = getattr(iterable, "dataset", None)
        classes = getattr(ds, "classes", None)
        if isinstance(classes, list | tuple):
            self.class_names = [str(c) for c in classes]
            self.n_classes = len(classes)

    def fingerprint(self) -> str:
        return (
            f"iterable:{type(self.iterable).__module__}.{type(self.iterable).__name__}:{self.total}"
        )

    def _element_parts(self, el: Any) -> list[Part]:
        x, y = _split_item(el)
        if isinstance(x, list | tuple):
            items = list(x) if y is None else list(zip(x, _labels_list(y), strict=True))
            parts, _ = _items_to_parts(items, self.opts, self.layout)
            return parts
        if _is_pil(x):
            parts, _ = _items_to_parts([el], self.opts, self.layout)
            return parts
        if self.opts.resize is not None or self.opts.center_crop is not None:
            raise ValueError(
                "resize= and center_crop= apply to image files and PIL images; this source "
                "yields batches of arrays: put the transforms in the dataset instead"
            )
        arr = _as_numpy_batch(x, f"{self.name} batch")
        arr, lay = _four_d(arr, self.layout, f"{self.name} batch")
        if lay is None and _is_tensor(x):
            lay = "NCHW"
        labels = None if y is None else _labels_array(y, arr.shape[0], f"{self.name} labels")
        return [Part(arr, lay, labels)]

    def steps(self, start: int = 0, batch_size: int = 256) -> Iterator[Step]:
        seen = 0
        for el in self.iterable:
            parts = self._element_parts(el)
            n = sum(p.images.shape[0] for p in parts)
            if seen < start:
                seen += n
                if seen > start:
                    raise ValueError(
                        f"cannot resume {self.name} at item {start}: its batches no longer end "
                        "there (the iterable must give the same batches every time)"
                    )
                continue
            seen += n
            yield Step(parts, n)


def _labels_list(y: Any) -> list[Any]:
    if _is_tensor(y):
        return y.detach().cpu().tolist()
    return list(np.asarray(y).tolist())


def _torch_source(
    obj: Any,
    *,
    opts: DecodeOptions,
    layout: Layout | None,
    on_error: OnError,
    workers: int | None,
    decoder: str,
) -> Source | None:
    """Fast paths for torchvision datasets (raw pixels, no per-item call), else the generic one."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

    if isinstance(obj, DataLoader):
        sampler = getattr(obj, "sampler", None)
        ordered = type(sampler).__name__ == "SequentialSampler"
        src = IterableSource(obj, opts=opts, layout=layout, name="DataLoader")
        try:
            src.total = len(obj.dataset) if obj.drop_last is False else None  # type: ignore[arg-type]
        except TypeError:
            src.total = None
        src._ordered = ordered  # type: ignore[attr-defined]
        return src
    if isinstance(obj, IterableDataset):
        return IterableSource(obj, opts=opts, layout=layout)
    if not isinstance(obj, Dataset):
        return None
    plain = getattr(obj, "transform", None) is None and getattr(obj, "transforms", None) is None
    plain_target = getattr(obj, "target_transform", None) is None
    tv = sys.modules.get("torchvision.datasets")
    name = type(obj).__name__
    if (
        tv is not None
        and plain
        and plain_target
        and not opts.grayscale
        and opts.resize is None
        and opts.center_crop is None
    ):
        classes = getattr(obj, "classes", None)
        class_names = [str(c) for c in classes] if classes is not None else None
        n_cls = None if class_names is None else len(class_names)
        if isinstance(obj, tv.CIFAR10):  # CIFAR100 too
            return ArraySource(
                np.asarray(obj.data),
                layout="NHWC",
                labels=np.asarray(obj.targets),
                n_classes=n_cls,
                class_names=class_names,
                name=name,
            )
        if isinstance(obj, tv.MNIST):  # FashionMNIST, KMNIST, EMNIST, QMNIST
            data = obj.data.numpy() if _is_tensor(obj.data) else np.asarray(obj.data)
            targets = obj.targets
            if _is_tensor(targets) and targets.ndim == 2:  # QMNIST keeps extra columns
                targets = targets[:, 0]
            return ArraySource(
                data, labels=targets, n_classes=n_cls, class_names=class_names, name=name
            )
        if isinstance(obj, tv.SVHN):
            return ArraySource(
                np.asarray(obj.data),
                layout="NCHW",
                labels=np.asarray(obj.labels),
                n_classes=10,
                class_names=[str(i) for i in range(10)],
                name=name,
            )
    if (
        tv is not None
        and isinstance(obj, tv.ImageFolder)
        and plain
        and plain_target
        and obj.loader is tv.folder.default_loader
    ):
        return FileListSource(
            [p for p, _ in obj.samples],
            labels=[y for _, y in obj.samples],
            opts=opts,
            workers=workers,
            decoder=decoder,
            name=f"ImageFolder({obj.root})",
            class_names=list(obj.classes),
        )
    if isinstance(obj, TensorDataset) and not opts.resize and not opts.center_crop:
        tensors = obj.tensors
        return ArraySource(
            tensors[0],
            layout=layout or "NCHW",
            labels=tensors[1] if len(tensors) > 1 else None,
            name="TensorDataset",
        )
    return MapDatasetSource(obj, opts=opts, layout=layout, on_error=on_error)


# --------------------------------------------------------------------------------------------
# Files on disk: .npy, .npz, CIFAR batches, MNIST idx
# --------------------------------------------------------------------------------------------


def _file_identity(path: Path) -> str:
    st = path.stat()
    return f"{path.resolve()}:{st.st_size}"


def npy_source(path: str | os.PathLike[str], *, layout: Layout | None, labels: Any) -> ArraySource:
    """A ``.npy`` file, memory-mapped (only the current batch is read)."""
    p = Path(path)
    arr = np.load(p, mmap_mode="r", allow_pickle=False)
    return ArraySource(arr, layout=layout, labels=labels, name=str(p), identity=_file_identity(p))


def npz_source(path: str | os.PathLike[str], *, layout: Layout | None, labels: Any) -> ArraySource:
    """A ``.npz`` with an ``images`` array (or a single 3-D/4-D array) and optional ``labels``."""
    p = Path(path)
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
        identity=_file_identity(p),
    )


def _cifar_part(name: str, read: Callable[[], bytes], n_classes: int) -> ArraySource:
    batch = read_cifar_batch(name, data=read())
    return ArraySource(
        batch.images, layout="NCHW", labels=batch.labels, n_classes=n_classes, name=name
    )


_CIFAR10_FILES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
_CIFAR100_FILES = {"train": ["train"], "test": ["test"]}


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
        identity = ";".join(_file_identity(loc / fn) for fn in files)
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
        identity = _file_identity(loc) + ":" + ",".join(files)

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


# --------------------------------------------------------------------------------------------
# Dataset names
# --------------------------------------------------------------------------------------------

_SAMPLE_FILE = "sample.npz"
#: Names understood by :func:`open_source` (case-blind).
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


def data_roots(root: str | os.PathLike[str] | None = None) -> list[Path]:
    """Folders where named datasets are looked for, first one first.

    ``root`` when given; otherwise every folder in ``$FIRSTLAYER_DATA`` (``os.pathsep``
    separated), then ``~/.cache/firstlayer``.
    """
    if root is not None:
        return [Path(root).expanduser()]
    out = [Path(p).expanduser() for p in os.environ.get(DATA_ENV, "").split(os.pathsep) if p]
    out.append(Path.home() / ".cache" / "firstlayer")
    return out


def _sample_path() -> Path:
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
    path = _sample_path()
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
    files = (_CIFAR10_FILES if version == "10" else _CIFAR100_FILES)[split]
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
                identity=";".join(_file_identity(found[k]) for k in ("images", "labels")),
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
            identity=_file_identity(_sample_path()) + f":{split}",
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


# --------------------------------------------------------------------------------------------
# Dispatch
# --------------------------------------------------------------------------------------------


def _decode_options(
    resize: int | Sequence[int] | None, center_crop: int | Sequence[int] | None, grayscale: bool
) -> DecodeOptions:
    def size(value: int | Sequence[int] | None, arg: str, allow_int: bool) -> Any:
        if value is None:
            return None
        if isinstance(value, int) and not isinstance(value, bool):
            if value <= 0:
                raise ValueError(f"{arg} must be positive, got {value}")
            return value if allow_int else (value, value)
        if isinstance(value, bool) or not isinstance(value, Sequence):
            raise ValueError(f"{arg} must be a positive int or (height, width), got {value!r}")
        vals = tuple(value)
        if len(vals) == 1:
            return size(int(vals[0]), arg, allow_int)
        if len(vals) != 2 or not all(isinstance(v, int) and v > 0 for v in vals):
            raise ValueError(f"{arg} must be a positive int or (height, width), got {value!r}")
        return vals

    if not isinstance(grayscale, bool):
        raise TypeError(f"grayscale must be True or False, got {grayscale!r}")
    return DecodeOptions(
        grayscale=grayscale,
        resize=size(resize, "resize", True),
        center_crop=size(center_crop, "center_crop", False),
    )


def open_source(
    source: Any,
    *,
    layout: Layout | None = None,
    labels: Any = None,
    root: str | os.PathLike[str] | None = None,
    download: bool = True,
    on_error: OnError = "raise",
    resize: int | Sequence[int] | None = None,
    center_crop: int | Sequence[int] | None = None,
    grayscale: bool = False,
    workers: int | None = None,
    decoder: str = "auto",
) -> Source:
    """Turn anything holding images into a :class:`Source`.

    Parameters
    ----------
    source
        A dataset name (:data:`DATASET_NAMES`), a folder of images (class sub-folders give
        labels), a CIFAR python batch folder or file, a ``.npy``/``.npz`` file, an image file, a
        torch ``Dataset``/``DataLoader``, a torchvision dataset, a numpy array or tensor, or an
        iterable of batches.
    layout : {"NCHW", "NHWC"}, optional
        For arrays whose layout is ambiguous.
    labels : bool, array-like, path or None
        See :func:`stream_stats`.
    root, download
        Where named datasets are looked for, and whether to fetch them when missing.
    on_error : {"raise", "skip"}
    resize, center_crop, grayscale
        Applied to image files and PIL images (torchvision conventions, see
        :class:`DecodeOptions`).
    workers : int, optional
        Decoding threads (default: all cores).
    decoder : {"auto", "pillow", "rust"}

    Returns
    -------
    Source
    """
    if layout is not None and layout not in _LAYOUTS:
        raise ValueError(f"layout must be 'NCHW', 'NHWC' or None, got {layout!r}")
    opts = _decode_options(resize, center_crop, grayscale)
    explicit = _explicit_labels(labels)
    if isinstance(source, Source):
        return source
    if isinstance(source, str | os.PathLike):
        text = os.fspath(source)
        p = Path(text).expanduser()
        if not p.exists() and isinstance(source, str) and text.lower() in DATASET_NAMES:
            if explicit is not None:
                raise ValueError(_NO_EXPLICIT_LABELS.format(text))
            src = dataset_source(text, root=root, download=download)
            _refuse_transforms(opts, src, text)
            return src
        if not p.exists():
            raise FileNotFoundError(
                f"source={text!r} is neither an existing file or folder nor a dataset name "
                f"({', '.join(DATASET_NAMES)})"
            )
        if p.is_dir():
            if (p / "data_batch_1").is_file() or (p / "test_batch").is_file():
                files = [f for f in _CIFAR10_FILES["train"] if (p / f).is_file()] or ["test_batch"]
                src = cifar_source(p, files, n_classes=10, meta="batches.meta", name=str(p))
            elif (p / "meta").is_file() and ((p / "train").is_file() or (p / "test").is_file()):
                files = ["train"] if (p / "train").is_file() else ["test"]
                src = cifar_source(p, files, n_classes=100, meta="meta", name=str(p))
            else:
                if explicit is not None:
                    raise ValueError(_NO_EXPLICIT_LABELS.format(text))
                return image_folder(
                    p,
                    labels=labels if isinstance(labels, bool) else None,
                    opts=opts,
                    workers=workers,
                    decoder=decoder,
                )
            _refuse_transforms(opts, src, text)
            return src
        suffix = p.name.lower()
        if suffix.endswith(".npy"):
            src = npy_source(p, layout=layout, labels=explicit)
        elif suffix.endswith(".npz"):
            src = npz_source(p, layout=layout, labels=explicit)
        elif explicit is not None:
            raise ValueError(_NO_EXPLICIT_LABELS.format(text))
        elif _has_image_ext(suffix):
            return FileListSource(
                [str(p)], name=str(p), opts=opts, workers=workers, decoder=decoder
            )
        else:
            src = cifar_source(p.parent, [p.name], n_classes=10, meta="batches.meta", name=str(p))
        _refuse_transforms(opts, src, text)
        return src
    if isinstance(source, np.ndarray) or _is_tensor(source):
        if not opts == DecodeOptions():
            raise ValueError(
                "resize=, center_crop= and grayscale= apply to image files, not arrays"
            )
        return ArraySource(source, layout=layout, labels=explicit, name="array")
    if explicit is not None:
        raise ValueError(_NO_EXPLICIT_LABELS.format(type(source).__name__))
    torch_src = _torch_source(
        source, opts=opts, layout=layout, on_error=on_error, workers=workers, decoder=decoder
    )
    if torch_src is not None:
        return torch_src
    if (
        hasattr(source, "__getitem__")
        and hasattr(source, "__len__")
        and not isinstance(source, dict)
    ):
        if isinstance(source, list | tuple) and source and _is_pil(source[0]):
            return MapDatasetSource(
                source, opts=opts, layout=layout, on_error=on_error, name="list"
            )
    if isinstance(source, Iterable) and not isinstance(source, str | bytes | dict):
        return IterableSource(source, opts=opts, layout=layout)
    raise TypeError(
        "source must be an array, a tensor, a torch Dataset or DataLoader, a folder or file path, "
        f"a dataset name ({', '.join(DATASET_NAMES)}) or an iterable of batches; got "
        f"{type(source).__name__}"
    )


_NO_EXPLICIT_LABELS = (
    "labels= as an array is for array, .npy and .npz sources; source={!r} carries its own labels "
    "(or none): pass labels=None, True or False"
)


def _refuse_transforms(opts: DecodeOptions, src: Source, what: str) -> None:
    if opts != DecodeOptions():
        raise ValueError(
            f"resize=, center_crop= and grayscale= apply to image files; source={what!r} gives "
            f"raw arrays ({type(src).__name__})"
        )


def _explicit_labels(labels: Any) -> Any:
    """Per-image labels given as an array or a ``.npy`` path; ``None`` for the modes."""
    if labels is None or isinstance(labels, bool):
        return None
    if isinstance(labels, str | os.PathLike):
        return np.load(Path(labels), allow_pickle=False)
    return labels


# --------------------------------------------------------------------------------------------
# Progress line
# --------------------------------------------------------------------------------------------


def _fmt_time(seconds: float) -> str:
    seconds = int(max(0.0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """A one-line progress indicator on stderr; nothing at all for runs under ``delay`` s.

    On a terminal the line is rewritten in place (at most 10 times a second); elsewhere (logs)
    a line is printed every 10 seconds.
    """

    def __init__(
        self,
        total: int | None,
        *,
        name: str,
        initial: int = 0,
        quiet: bool = False,
        delay: float | None = None,
        stream: TextIO | None = None,
    ) -> None:
        self.total = total
        self.name = name
        self.done = initial
        self.initial = initial
        self.quiet = quiet
        self.delay = PROGRESS_DELAY_S if delay is None else delay
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.start = time.monotonic()
        self.last = 0.0
        self.shown = False

    def _line(self, now: float) -> str:
        rate = (self.done - self.initial) / max(now - self.start, 1e-9)
        if self.total:
            pct = 100.0 * self.done / self.total
            eta = (self.total - self.done) / rate if rate > 0 else 0.0
            return (
                f"firstlayer: {self.name}: {self.done:,}/{self.total:,} images ({pct:.0f}%) "
                f"{rate:,.0f} img/s, {_fmt_time(now - self.start)} elapsed, "
                f"{_fmt_time(eta)} left"
            )
        return (
            f"firstlayer: {self.name}: {self.done:,} images {rate:,.0f} img/s, "
            f"{_fmt_time(now - self.start)} elapsed"
        )

    def update(self, n: int) -> None:
        """Count ``n`` more items."""
        self.done += n
        if self.quiet:
            return
        now = time.monotonic()
        if now - self.start < self.delay:
            return
        if now - self.last < (0.1 if self.tty else 10.0) and self.shown:
            return
        self.last = now
        self.shown = True
        line = self._line(now)
        self.stream.write(("\r" + line + "\x1b[K") if self.tty else line + "\n")
        self.stream.flush()

    def close(self) -> None:
        """Print the final state (only if a line was shown)."""
        if self.quiet or not self.shown:
            return
        line = self._line(time.monotonic())
        self.stream.write(("\r" + line + "\x1b[K\n") if self.tty else line + "\n")
        self.stream.flush()


# --------------------------------------------------------------------------------------------
# The driver
# --------------------------------------------------------------------------------------------


def _new_stats(
    kernel_size: int, channels: int, *, stride: int, padding: int, exact: bool
) -> PatchStats:
    from .stats import PatchStats

    return PatchStats.empty(kernel_size, channels, stride=stride, padding=padding, exact=exact)


def _channels(part: Part) -> int:
    shape = part.images.shape
    if part.layout == "NCHW":
        return shape[1]
    if part.layout == "NHWC":
        return shape[3]
    return shape[3] if shape[3] in (1, 3, 4) and shape[1] not in (1, 3, 4) else shape[1]


def _check_int(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def stream_stats(
    source: Any,
    *,
    kernel_size: int = 3,
    stride: int = 1,
    padding: int = 0,
    layout: Layout | None = None,
    labels: Any = None,
    n_classes: int | None = None,
    method: str = "auto",
    root: str | os.PathLike[str] | None = None,
    download: bool = True,
    batch_size: int = 256,
    workers: int | None = None,
    decoder: str = "auto",
    on_error: OnError = "raise",
    checkpoint: str | os.PathLike[str] | None = None,
    checkpoint_every: int = 10_000,
    quiet: bool = False,
    resize: int | Sequence[int] | None = None,
    center_crop: int | Sequence[int] | None = None,
    grayscale: bool = False,
) -> PatchStats:
    """Patch statistics of any image source, streamed in bounded memory.

    This is what ``firstlayer.patch_stats(source, ...)`` runs when ``source`` is not an in-memory
    array. ``uint8`` images give exact statistics, bit-identical to the in-memory path on the
    same pixels and to an interrupted-then-resumed run.

    Parameters
    ----------
    source
        See :func:`open_source`: a dataset name (``"cifar10"``, ``"cifar10-test"``,
        ``"cifar100"``, ``"mnist"``, ``"fashion-mnist"``, ``"sample"``, ...), a folder of images,
        a CIFAR batch folder or file, a ``.npy``/``.npz`` file, a torch ``Dataset``/``DataLoader``,
        a torchvision dataset, or an iterable of batches.
    kernel_size, stride, padding, method
        As for ``patch_stats``.
    layout : {"NCHW", "NHWC"}, optional
        For array sources whose layout cannot be inferred.
    labels : None, bool, array-like or path
        ``None`` (default): use the source's labels when it has them and the number of classes
        is known (folders with class sub-folders, CIFAR, MNIST, torchvision datasets).
        ``False``: ignore labels. ``True``: require them. An array (or a ``.npy`` path): one label
        per image, for sources without labels.
    n_classes : int, optional
        Number of classes; needed for labelled sources that do not say it themselves.
    root : path, optional
        Folder holding named datasets (default ``$FIRSTLAYER_DATA``, then ``~/.cache/firstlayer``).
    download : bool
        Fetch a missing named dataset through torchvision (when online).
    batch_size : int
        Images per batch; memory stays bounded by about two batches.
    workers : int, optional
        Image decoding threads (default: all cores).
    decoder : {"auto", "pillow", "rust"}
        Image decoder; ``"auto"`` uses the Rust one when built.
    on_error : {"raise", "skip"}
        For unreadable images: stop with the path and the decoder's reason (default), or count
        and list them in ``stats.skipped``.
    checkpoint : path, optional
        File (e.g. ``"run.partial.npz"``) written atomically every ``checkpoint_every`` items;
        when it exists at start, the run resumes from it. It is removed when the run completes.
    checkpoint_every : int
        Items between checkpoints (rounded up to whole batches).
    quiet : bool
        No progress line.
    resize, center_crop, grayscale
        For image files and PIL images: ``transforms.Resize(resize)`` (int = shorter side),
        ``transforms.CenterCrop(center_crop)``, ``transforms.Grayscale()``, after conversion to
        RGB.

    Returns
    -------
    PatchStats
        With ``skipped``, a list of ``(path, reason)``.

    Raises
    ------
    ImageDecodeError
        An unreadable image with ``on_error="raise"``.
    DatasetNotFoundError
        A dataset name whose files are not found (the message lists every path tried).
    ValueError, TypeError
        Bad arguments, or a checkpoint made by a different run.
    """
    kernel_size = _check_int(kernel_size, "kernel_size", 1)
    stride = _check_int(stride, "stride", 1)
    padding = _check_int(padding, "padding", 0)
    batch_size = _check_int(batch_size, "batch_size", 1)
    checkpoint_every = _check_int(checkpoint_every, "checkpoint_every", 1)
    if workers is not None:
        workers = _check_int(workers, "workers", 1)
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    if n_classes is not None:
        n_classes = _check_int(n_classes, "n_classes", 1)
    if labels is not None and not isinstance(labels, bool | str | os.PathLike):
        if not hasattr(labels, "__len__"):
            raise TypeError(
                f"labels must be None, True, False, an array of ints or a .npy path, got "
                f"{type(labels).__name__}"
            )

    src = open_source(
        source,
        layout=layout,
        labels=labels,
        root=root,
        download=download,
        on_error=on_error,
        resize=resize,
        center_crop=center_crop,
        grayscale=grayscale,
        workers=workers,
        decoder=decoder,
    )
    try:
        return _run(
            src,
            kernel_size=kernel_size,
            stride=stride,
            padding=padding,
            labels=labels,
            n_classes=n_classes,
            method=method,
            batch_size=batch_size,
            on_error=on_error,
            checkpoint=checkpoint,
            checkpoint_every=checkpoint_every,
            quiet=quiet,
        )
    finally:
        src.close()


def _run(
    src: Source,
    *,
    kernel_size: int,
    stride: int,
    padding: int,
    labels: Any,
    n_classes: int | None,
    method: str,
    batch_size: int,
    on_error: OnError,
    checkpoint: str | os.PathLike[str] | None,
    checkpoint_every: int,
    quiet: bool,
) -> PatchStats:
    n_cls = n_classes if n_classes is not None else src.n_classes
    if labels is True and src.has_labels is False:
        raise ValueError(f"labels=True but source {src.name!r} has no labels")
    # None: the source's labels when it has some; an array was attached by open_source.
    use_labels: bool | None = False if labels is False else src.has_labels
    if use_labels is False:
        n_cls = None
    if getattr(src, "_ordered", True) is False and checkpoint is not None:
        raise ValueError(
            "checkpoint= needs a DataLoader that yields the same batches every run; this one "
            "shuffles (use shuffle=False)"
        )

    fingerprint = json.dumps(
        {
            "source": src.fingerprint(),
            "kernel_size": kernel_size,
            "stride": stride,
            "padding": padding,
            "labels": use_labels,
            "n_classes": n_cls,
            "batch_size": batch_size,
            "method": method,
            "decode": getattr(getattr(src, "opts", None), "describe", lambda: "")(),
        },
        sort_keys=True,
    )

    stats: PatchStats | None = None
    position = 0
    skipped: list[tuple[str, str]] = []
    if checkpoint is not None and Path(checkpoint).exists():
        state = read_checkpoint(checkpoint)
        if state.fingerprint != fingerprint:
            raise ValueError(
                f"checkpoint={os.fspath(checkpoint)!r} was written by a different run "
                f"(it has {state.fingerprint}, this run is {fingerprint}); delete it or choose "
                "another checkpoint path"
            )
        stats, position, skipped = state.stats, state.position, list(state.skipped)
    last_saved = position

    progress = Progress(src.total, name=src.name, initial=position, quiet=quiet)
    steps = src.steps(position, batch_size)
    try:
        for step in steps:
            if step.skipped and on_error == "raise":
                path, reason = step.skipped[0]
                raise ImageDecodeError(path, reason)
            for part in step.parts:
                if part.images.shape[0] == 0:
                    continue
                if use_labels is None:  # an iterable: its first batch decides
                    use_labels = part.labels is not None
                    if labels is True and not use_labels:
                        raise ValueError(f"labels=True but source {src.name!r} has no labels")
                lab = part.labels if use_labels else None
                if use_labels:
                    if lab is None:
                        raise ValueError(f"source {src.name!r} gave a batch without labels")
                    if n_cls is not None and lab.size and lab.max() >= n_cls:
                        raise ValueError(
                            f"labels must lie in [0, {n_cls}) (n_classes), source {src.name!r} "
                            f"gave {int(lab.max())}"
                        )
                if stats is None:
                    stats = _new_stats(
                        kernel_size,
                        _channels(part),
                        stride=stride,
                        padding=padding,
                        exact=part.images.dtype == np.uint8,
                    )
                stats.update(part.images, lab, layout=part.layout, method=method)
            skipped.extend(step.skipped)
            position += step.consumed
            progress.update(step.consumed)
            if (
                checkpoint is not None
                and stats is not None
                and position - last_saved >= checkpoint_every
            ):
                write_checkpoint(checkpoint, Checkpoint(stats, position, fingerprint, skipped))
                last_saved = position
    finally:
        close = getattr(steps, "close", None)
        if close is not None:
            close()
        progress.close()
    if stats is None:
        detail = f" ({len(skipped)} unreadable, e.g. {skipped[0][0]})" if skipped else ""
        raise ValueError(f"source {src.name!r} yielded no images{detail}")
    stats.skipped = [f"{path}: {reason}" for path, reason in skipped]
    if checkpoint is not None:
        Path(checkpoint).unlink(missing_ok=True)
    return stats
