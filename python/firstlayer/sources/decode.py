"""Image files to arrays: torchvision's resize / crop / grayscale, with Pillow or the Rust decoder.

:class:`DecodeOptions` says what happens to each file (torchvision's conventions), and
:func:`decode_options` builds one from what users pass. Files are decoded in the background by
a decoder: Pillow in a thread pool, or ``firstlayer._core.decode_images`` (Rust, parallel inside)
when it is built. A decoder never raises for a bad file: it returns the reason as a string, and
the caller decides (``on_error``).
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from firstlayer._validate import MAX_IMAGE_PIXELS

__all__ = ["DecodeOptions", "center_crop_array", "decode_image", "decode_options"]

DECODERS = ("auto", "pillow", "rust")
#: The Rust decoder's reason prefix for files it leaves to Pillow (``decode.rs::UNSUPPORTED``).
_UNSUPPORTED = "Unsupported: "


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
        """The options as JSON text (enters a streaming run's fingerprint)."""
        return json.dumps([self.grayscale, self.resize, self.center_crop])


def decode_options(
    resize: int | Sequence[int] | None = None,
    center_crop: int | Sequence[int] | None = None,
    grayscale: bool = False,
) -> DecodeOptions:
    """Checked :class:`DecodeOptions` from what users pass.

    Parameters
    ----------
    resize : int or (height, width), optional
        An int sets the shorter side.
    center_crop : int or (height, width), optional
        An int crops a square.
    grayscale : bool

    Raises
    ------
    ValueError
        For sizes that are not positive ints or pairs of them.
    TypeError
        For a ``grayscale`` that is not a bool.
    """

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

    def bounded(value: Any, arg: str) -> Any:
        # Checked here, before a decoder allocates the image (see _validate.MAX_IMAGE_PIXELS).
        if value is not None:
            h, w = (value, value) if isinstance(value, int) else value
            if h * w > MAX_IMAGE_PIXELS:
                raise ValueError(
                    f"{arg}: expected at most {MAX_IMAGE_PIXELS:,} pixels per image, got "
                    f"{value!r} ({h * w:,} pixels)"
                )
        return value

    if not isinstance(grayscale, bool):
        raise TypeError(f"grayscale must be True or False, got {grayscale!r}")
    return DecodeOptions(
        grayscale=grayscale,
        resize=bounded(size(resize, "resize", True), "resize"),
        center_crop=bounded(size(center_crop, "center_crop", False), "center_crop"),
    )


# -- resize and crop --------------------------------------------------------------------------


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


def pil_to_array(img: Any, opts: DecodeOptions) -> np.ndarray:
    """A PIL image as ``(H, W, 3)`` (or ``(H, W)`` grayscale) ``uint8``, ``opts`` applied."""
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

    opts = opts or DecodeOptions()
    # Only regular files: open() of a FIFO blocks until a writer comes, a device never ends.
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise OSError(f"{os.fspath(path)}: not a regular file (a FIFO, device, socket or folder)")
    with Image.open(path) as img:
        if img.width * img.height > MAX_IMAGE_PIXELS:  # the header's claim, before decoding
            raise ValueError(
                f"image of {img.height} x {img.width} pixels is above the limit of "
                f"{MAX_IMAGE_PIXELS:,} pixels"
            )
        if opts.resize is not None:
            nh, nw = _resized_size(img.height, img.width, opts.resize)
            if nh * nw > MAX_IMAGE_PIXELS:
                raise ValueError(
                    f"resize={opts.resize!r} makes {nh} x {nw} pixels, above the limit of "
                    f"{MAX_IMAGE_PIXELS:,} pixels"
                )
        img.load()
        return pil_to_array(img, opts)


def _decode_or_reason(path: str, opts: DecodeOptions) -> np.ndarray | str:
    try:
        return decode_image(path, opts)
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - every decoder failure becomes a reported reason
        return f"{type(exc).__name__}: {exc}"


# -- decoders ---------------------------------------------------------------------------------


class Decoder:
    """Decodes lists of files in the background; ``submit`` returns a result getter."""

    def submit(self, paths: list[str]) -> Callable[[], list[np.ndarray | str]]:
        raise NotImplementedError

    def close(self) -> None:
        pass


class _PillowDecoder(Decoder):
    def __init__(self, opts: DecodeOptions, threads: int) -> None:
        self.opts = opts
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="firstlayer-decode")

    def submit(self, paths: list[str]) -> Callable[[], list[np.ndarray | str]]:
        futures = [self.pool.submit(_decode_or_reason, p, self.opts) for p in paths]
        return lambda: [f.result() for f in futures]

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


class _RustDecoder(Decoder):
    """``firstlayer._core.decode_images(paths, grayscale=, resize=, center_crop=, threads=)``.

    Expected to return one entry per path: a ``uint8`` array (``(H, W, 3)`` or ``(H, W)``) or a
    ``str`` giving the reason the file could not be decoded; it parallelises internally.
    """

    def __init__(self, fn: Callable[..., list[Any]], opts: DecodeOptions, threads: int) -> None:
        self.fn = fn
        self.opts = opts
        self.threads = threads
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="firstlayer-rust-decode")

    def _run(self, paths: list[str]) -> list[np.ndarray | str]:
        out = self.fn(
            paths,
            grayscale=self.opts.grayscale,
            resize=self.opts.resize,
            center_crop=self.opts.center_crop,
            threads=self.threads,
        )
        # What the Rust decoder does not decode exactly as Pillow (TIFF, WebP, PPM/PGM,
        # progressive and CMYK JPEGs) it answers "Unsupported: ..."; Pillow decodes those.
        return [
            (_decode_or_reason(p, self.opts) if o.startswith(_UNSUPPORTED) else o)
            if isinstance(o, str)
            else np.ascontiguousarray(o)
            for p, o in zip(paths, out, strict=True)
        ]

    def submit(self, paths: list[str]) -> Callable[[], list[np.ndarray | str]]:
        fut: Future[list[np.ndarray | str]] = self.pool.submit(self._run, paths)
        return fut.result

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def make_decoder(opts: DecodeOptions, threads: int, decoder: str) -> Decoder:
    """The decoder ``decoder`` names (``"auto"``: Rust when built, else Pillow)."""
    if decoder not in DECODERS:
        raise ValueError(f"decoder must be 'auto', 'pillow' or 'rust', got {decoder!r}")
    fn = None
    if decoder != "pillow":
        try:
            from firstlayer import _core

            fn = getattr(_core, "decode_images", None)
        except ImportError:
            fn = None
        if fn is None and decoder == "rust":
            raise ValueError("decoder='rust' needs firstlayer._core.decode_images, not built here")
    if fn is not None:
        return _RustDecoder(fn, opts, threads)
    return _PillowDecoder(opts, threads)
