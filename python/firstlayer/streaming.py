"""``patch_stats`` and the streaming driver: any source, through the core, into a ``PatchStats``.

This is the middle of the flow ``source -> batches -> kernels -> PatchStats``. An in-memory
array goes to :meth:`PatchStats.update <firstlayer.PatchStats.update>` in one call. Anything else
is opened with :func:`firstlayer.sources.open_source` and streamed by :func:`stream_stats`: in
bounded memory, with a progress line, an error policy for unreadable files and atomic checkpoints
(:mod:`firstlayer.checkpoint`) from which a killed run resumes with bit-identical statistics.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from firstlayer._arrays import as_batch, is_torch_tensor
from firstlayer._io import check_writable
from firstlayer._progress import Progress
from firstlayer._validate import MAX_STATS_KERNEL_SIZE, MAX_STRIDE, check_choice, check_int
from firstlayer.checkpoint import Checkpoint, read_checkpoint, write_checkpoint
from firstlayer.exceptions import ImageDecodeError
from firstlayer.sources import Layout, OnError, Part, Source, open_source
from firstlayer.stats import PatchStats

__all__ = ["patch_stats", "stream_stats"]


def patch_stats(
    x: Any,
    kernel_size: int = 3,
    *,
    stride: int = 1,
    padding: int = 0,
    layout: str | None = None,
    labels: Any = None,
    method: str = "auto",
    **source_options: Any,
) -> PatchStats:
    """Exact second-order statistics of every ``C x k x k`` patch of a dataset.

    Parameters
    ----------
    x : ndarray, torch.Tensor, dataset, path or name
        An in-memory batch ``(N, C, H, W)``, ``(N, H, W, C)`` or ``(N, H, W)`` of ``uint8``
        (exact integer statistics) or ``float32``/``float64`` (``f64`` accumulation), read in
        place. Anything else (a torch dataset or loader, an image folder, a ``.npy`` file, a
        dataset name such as ``"sample"``) is streamed by :func:`stream_stats`.
    kernel_size : int
        Patch side ``k``, 1 to 32 (``_validate.MAX_STATS_KERNEL_SIZE``).
    stride, padding : int
        Window stride (>= 1) and zero padding (0: valid positions only, as the paper).
    layout : {"NCHW", "NHWC"}, optional
        When omitted: torch tensors are NCHW; for numpy arrays the channel axis is axis 1 or 3,
        whichever has size 1, 3 or 4 while the other does not; otherwise pass it explicitly.
    labels : array-like of int, optional
        One class per image, for per-class counts and mean patches.
    method : {"auto", "direct", "shifted"}
        Kernel choice; "auto" picks the faster. All give the same result.
    **source_options
        Options of streamed sources (``batch_size``, ``decode_threads``, ``checkpoint``, ...;
        see :func:`stream_stats`).

    Returns
    -------
    PatchStats

    Examples
    --------
    >>> import numpy as np, firstlayer
    >>> x = np.random.default_rng(0).integers(0, 256, (10, 3, 32, 32), dtype=np.uint8)
    >>> firstlayer.patch_stats(x, kernel_size=3).count
    9000
    """
    k = check_int("kernel_size", kernel_size, 1, MAX_STATS_KERNEL_SIZE)
    check_int("stride", stride, 1, MAX_STRIDE)
    check_int("padding", padding, 0, k - 1)
    if isinstance(x, np.ndarray) or is_torch_tensor(x):
        if source_options:
            msg = f"unexpected options for an in-memory array: {sorted(source_options)}"
            raise TypeError(msg)
        arr, lay = as_batch(x, layout)
        stats = PatchStats.empty(
            k,
            arr.shape[1] if lay == "NCHW" else arr.shape[3],
            stride=stride,
            padding=padding,
            exact=arr.dtype == np.uint8,
        )
        return stats.update(arr, labels, layout=lay, method=method)
    return stream_stats(
        x,
        k,
        stride=stride,
        padding=padding,
        layout=layout,  # type: ignore[arg-type]
        labels=labels,
        method=method,
        **source_options,
    )


def stream_stats(
    source: Any,
    kernel_size: int = 3,
    *,
    stride: int = 1,
    padding: int = 0,
    layout: Layout | None = None,
    labels: Any = None,
    n_classes: int | None = None,
    method: str = "auto",
    root: str | os.PathLike[str] | None = None,
    download: bool = True,
    batch_size: int = 256,
    decode_threads: int | None = None,
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
        See :func:`firstlayer.sources.open_source`: a dataset name (``"cifar10"``,
        ``"cifar10-test"``, ``"cifar100"``, ``"mnist"``, ``"fashion-mnist"``, ``"sample"``, ...),
        a folder of images, a CIFAR batch folder or file, a ``.npy``/``.npz`` file, a torch
        ``Dataset``/``DataLoader``, a torchvision dataset, or an iterable of batches.
    kernel_size, stride, padding, method
        As for :func:`patch_stats`.
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
        Folder holding named datasets (default: ``$FIRSTLAYER_DATA``, then
        ``~/.cache/firstlayer``, then a checkout's ``../shared/data``).
    download : bool
        Fetch a missing named dataset through torchvision (when online).
    batch_size : int
        Images per batch; memory stays bounded by about two batches.
    decode_threads : int, optional
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
    kernel_size = check_int("kernel_size", kernel_size, 1, MAX_STATS_KERNEL_SIZE)
    stride = check_int("stride", stride, 1, MAX_STRIDE)
    padding = check_int("padding", padding, 0, kernel_size - 1)
    batch_size = check_int("batch_size", batch_size, 1)
    checkpoint_every = check_int("checkpoint_every", checkpoint_every, 1)
    if decode_threads is not None:
        decode_threads = check_int("decode_threads", decode_threads, 1)
    check_choice("on_error", on_error, ("raise", "skip"))
    if n_classes is not None:
        n_classes = check_int("n_classes", n_classes, 1)
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
        decode_threads=decode_threads,
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


def _channels(part: Part) -> int:
    shape = part.images.shape
    if part.layout == "NCHW":
        return shape[1]
    if part.layout == "NHWC":
        return shape[3]
    return shape[3] if shape[3] in (1, 3, 4) and shape[1] not in (1, 3, 4) else shape[1]


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
    if checkpoint is not None:
        check_writable(checkpoint, "checkpoint")  # before the work, not at the first save
    # Files smaller than the window are unreadable items (named, and skipped under "skip").
    src.min_side = max(1, kernel_size - 2 * padding)
    if checkpoint is not None and Path(checkpoint).exists():
        state = read_checkpoint(checkpoint)
        if state.fingerprint != fingerprint:
            raise ValueError(
                f"checkpoint={os.fspath(checkpoint)!r} was written by a different run "
                f"(it has {state.fingerprint}, this run is {fingerprint}); delete it or choose "
                "another checkpoint path"
            )
        stats, position, skipped = state.stats, state.position, list(state.skipped)
        if stats.n_images + len(skipped) != position:  # every item is an image or a skip
            raise ValueError(
                f"checkpoint={os.fspath(checkpoint)!r} contradicts itself: position {position} "
                f"but {stats.n_images} images and {len(skipped)} skipped items; delete it"
            )
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
                    stats = PatchStats.empty(
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
