"""Shards: the units of work of a distributed job, how a source is cut into them, how one is opened.

A :class:`Shard` names some images of a source (a path, a dataset name, a list of files, an
array, a source object) and an index range. :func:`as_shard` reads the short descriptions users
write, :func:`split` cuts a source into shards, :func:`open_shard` turns a shard into the
:class:`~firstlayer.sources.Source` a worker streams (a :class:`RangeSource` when the shard is a
range of a bigger source), and :func:`attach_labels` hands each shard its slice of the job's labels.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from firstlayer._arrays import as_labels, is_torch_tensor
from firstlayer._validate import check_int
from firstlayer.sources import FileListSource, Part, Source, Step, decode_options, open_source

#: Options of :func:`firstlayer.sources.open_source` a shard is opened with.
OPEN_OPTIONS = (
    "layout",
    "root",
    "download",
    "on_error",
    "resize",
    "center_crop",
    "grayscale",
    "decoder",
    "decode_threads",
)
#: Array files, the one kind of path that takes an array of labels (as in ``open_source``).
_ARRAY_FILE_SUFFIXES = (".npy", ".npz")


@dataclass(frozen=True)
class Shard:
    """One unit of work: some images of a source, computed by one task.

    Parameters
    ----------
    source : str, path, list of paths, ndarray or source object
        A dataset name (``"cifar10"``, ``"sample"``, ...), a folder of images, a ``.npy``/``.npz``
        file, a list of image files, an in-memory array ``(N, C, H, W)`` / ``(N, H, W, C)``, or
        any other object :func:`firstlayer.sources.open_source` accepts and pickle can carry
        (a :class:`~firstlayer.sources.Source`, a torch ``Dataset``).
    start, stop : int, optional
        The index range ``[start, stop)`` of the source's items (default: all of them).
    labels : array-like, optional
        One class per image of an in-memory ``source`` or per file of a list of files (the whole
        source, not the range).
    key : str, optional
        Identity of the shard's content for ``checkpoint_dir``; derived automatically for paths,
        dataset names, arrays and :class:`~firstlayer.sources.Source` objects.
    """

    source: Any
    start: int = 0
    stop: int | None = None
    labels: Any = field(default=None, repr=False)
    key: str | None = None

    def describe(self) -> str:
        """A short human-readable name, e.g. ``'cifar10[0:2500]'``."""
        if isinstance(self.source, np.ndarray):
            base = f"array{tuple(self.source.shape)}"
        elif isinstance(self.source, list | tuple):
            base = f"{len(self.source)} files"
        elif isinstance(self.source, str | os.PathLike):
            base = os.fspath(self.source)
        else:
            base = type(self.source).__name__
        if self.start == 0 and self.stop is None:
            return base
        return f"{base}[{self.start}:{'' if self.stop is None else self.stop}]"


def is_path(x: Any) -> bool:
    """Whether ``x`` names a file, a folder or a dataset."""
    return isinstance(x, str | os.PathLike)


def is_file_list(x: Any) -> bool:
    """Whether ``x`` is a non-empty list (or tuple) of image file paths."""
    return isinstance(x, list | tuple) and bool(x) and all(map(is_path, x))


def as_shard(description: Any, index: int = 0) -> Shard:
    """Turn one shard description into a :class:`Shard`.

    Accepted: a :class:`Shard`; a path or dataset name; a list of image file paths; an array;
    ``(source, slice(a, b))``; ``(source, a, b)``; or a source object.

    Parameters
    ----------
    description : Any
        The description.
    index : int
        Its position in ``shards``, for error messages.

    Returns
    -------
    Shard
    """
    name = f"shards[{index}]"
    if isinstance(description, Shard):
        shard = description
    elif (
        isinstance(description, tuple)
        and len(description) in (2, 3)
        and (isinstance(description[1], slice) or len(description) == 3)
    ):
        src = description[0]
        if isinstance(description[1], slice):
            sl = description[1]
            if sl.step not in (None, 1):
                msg = f"{name}: expected a slice with step 1, got {sl!r}"
                raise ValueError(msg)
            start, stop = sl.start or 0, sl.stop
        else:
            start, stop = description[1], description[2]
        shard = Shard(src, start, stop)
    elif isinstance(description, list) and is_file_list(description):
        shard = Shard([os.fspath(p) for p in description])
    elif isinstance(description, list | tuple) and not description:
        kind = type(description).__name__
        msg = f"{name}: expected a non-empty list of image files, got an empty {kind}"
        raise ValueError(msg)
    else:
        shard = Shard(description)
    start = check_int(f"{name} start", shard.start, 0)
    stop = None if shard.stop is None else check_int(f"{name} stop", shard.stop, 0)
    if stop is not None and stop <= start:
        msg = f"{name}: expected start < stop, got the empty range [{start}, {stop})"
        raise ValueError(msg)
    if isinstance(shard.source, list | tuple) and not all(map(is_path, shard.source)):
        bad = next(type(p).__name__ for p in shard.source if not is_path(p))
        msg = f"{name}: expected a list of image file paths, got an element of type {bad}"
        raise TypeError(msg)
    if shard.key is not None and not isinstance(shard.key, str):
        msg = f"{name} key: expected a str, got {type(shard.key).__name__}"
        raise TypeError(msg)
    if (start, stop) != (shard.start, shard.stop):
        shard = Shard(shard.source, start, stop, shard.labels, shard.key)
    return shard


def split(source: Any, n_shards: int, **source_options: Any) -> list[Shard]:
    """Cut a source into ``n_shards`` contiguous index ranges of (nearly) equal size.

    Parameters
    ----------
    source : str, path, list of paths or ndarray
        A dataset name, a folder, a ``.npy``/``.npz`` file, a list of image files, or an array
        (cut into views: chunks of the same memory). A folder is walked once, here: its shards
        are lists of files (with their class labels), so no task walks the folder again.
    n_shards : int
        Number of shards (>= 1); fewer when the source has fewer items.
    **source_options
        ``root``, ``download`` and the other :func:`~firstlayer.sources.open_source` options used
        to find the source's length.

    Returns
    -------
    list of Shard
    """
    n_shards = check_int("n_shards", n_shards, 1)
    files: list[str] | None = None
    file_labels: list[int] | None = None
    if isinstance(source, np.ndarray):
        total = source.shape[0]
    else:
        opened = open_shard(Shard(source), open_options(source_options))
        try:
            total = opened.total
            if isinstance(opened, FileListSource) and not isinstance(source, list):
                files, file_labels = opened.files, opened.labels  # walk a folder only once
        finally:
            opened.close()
        if total is None:
            msg = f"source: expected a source of known length, got {type(source).__name__}"
            raise ValueError(msg)
    if total == 0:
        msg = f"source: expected at least one image, got an empty {type(source).__name__}"
        raise ValueError(msg)
    n = min(n_shards, total)
    bounds = [total * i // n for i in range(n + 1)]
    pairs = list(zip(bounds, bounds[1:], strict=False))
    if files is not None:
        return [
            Shard(files[a:b], labels=None if file_labels is None else file_labels[a:b])
            for a, b in pairs
        ]
    if isinstance(source, list):
        return [Shard(list(source[a:b])) for a, b in pairs]
    if isinstance(source, np.ndarray):
        return [Shard(source[a:b]) for a, b in pairs]
    return [Shard(source, a, b) for a, b in pairs]


# --------------------------------------------------------------------------------------------
# Labels for the whole job
# --------------------------------------------------------------------------------------------


def _takes_labels(src: Any) -> bool:
    """Sources an array of labels can be given for: arrays, array files, lists of files."""
    if isinstance(src, np.ndarray) or is_torch_tensor(src) or is_file_list(src):
        return True
    return is_path(src) and os.fspath(src).lower().endswith(_ARRAY_FILE_SUFFIXES)


def _length(shard: Shard, index: int, options: dict[str, Any]) -> int:
    """The number of items of ``shard`` (its file is opened when its range is open-ended)."""
    src = shard.source
    if isinstance(src, np.ndarray) or is_torch_tensor(src) or isinstance(src, list | tuple):
        total = len(src)
    elif shard.stop is not None:
        return shard.stop - shard.start  # the worker checks it against the source's length
    else:
        opened = open_source(src, **options)
        try:
            known = opened.total
        finally:
            opened.close()
        if known is None:
            msg = f"shards[{index}] ({shard.describe()}): expected a source of known length"
            raise ValueError(msg)
        total = known
    stop = total if shard.stop is None else shard.stop
    if stop > total or shard.start >= stop:
        msg = f"shards[{index}] ({shard.describe()}): expected a range within its {total} items"
        raise ValueError(msg)
    return stop - shard.start


def attach_labels(
    items: Sequence[Shard], labels: Any, source_options: dict[str, Any]
) -> tuple[list[Shard], list[np.ndarray | None]]:
    """Give each shard its slice of ``labels``, one class per image of the whole job.

    The job's images are those of the shards one after the other, in list order, so
    ``labels[i]`` is the class of the job's ``i``-th image, as ``firstlayer.patch_stats(x,
    labels=y)`` takes one class per image of ``x``. Arrays and lists of files take their slice
    in the shard itself (``Shard.labels``); ``.npy``/``.npz`` files and tensors, whose images
    only the worker reads, get it beside the shard (the second list).

    Parameters
    ----------
    items : list of Shard
        The job's shards, as :func:`as_shard` returns them.
    labels : array-like of int, or path of a ``.npy`` file
        One class per image of the job.
    source_options : dict
        The job's source options (``root``, ``layout``, ...), to open a source whose length
        the shard does not say.

    Returns
    -------
    shards : list of Shard
    item_labels : list of ndarray or None
        Per shard, the classes of its items ``[start, stop)`` when they travel beside it.
    """
    for i, shard in enumerate(items):
        if not _takes_labels(shard.source):
            msg = (
                "labels: an array of labels is for shards of arrays, .npy/.npz files and lists "
                f"of image files; shards[{i}] ({shard.describe()}) carries its own labels (or "
                "none): pass labels=None, True or False"
            )
            raise ValueError(msg)
        if shard.labels is not None:
            msg = (
                f"labels: shards[{i}] ({shard.describe()}) has labels of its own "
                "(Shard(labels=)); give labels either for the whole job or in the shards"
            )
            raise ValueError(msg)
    if isinstance(labels, str | os.PathLike):
        labels = np.load(Path(labels), allow_pickle=False)
    options = open_options(source_options)
    lengths = [_length(shard, i, options) for i, shard in enumerate(items)]
    y = as_labels(labels, sum(lengths))
    shards: list[Shard] = []
    item_labels: list[np.ndarray | None] = []
    offset = 0
    for shard, n in zip(items, lengths, strict=True):
        part = y[offset : offset + n]
        offset += n
        src, stop = shard.source, shard.start + n
        if isinstance(src, np.ndarray):
            shards.append(Shard(src[shard.start : stop], labels=part, key=shard.key))
            item_labels.append(None)
        elif isinstance(src, list | tuple):
            shards.append(Shard(list(src[shard.start : stop]), labels=part, key=shard.key))
            item_labels.append(None)
        else:
            shards.append(Shard(src, shard.start, stop, key=shard.key))
            item_labels.append(part)
    return shards, item_labels


# --------------------------------------------------------------------------------------------
# Opening a shard (inside a worker, and in split)
# --------------------------------------------------------------------------------------------


class RangeSource(Source):
    """Items ``[start, stop)`` of another source, in the batches the source would give.

    A batch that would run past ``stop`` is read again as a shorter one, so every image in range
    is counted exactly once whatever the batch size and the inner source's file boundaries.

    Parameters
    ----------
    inner : Source
        The whole source; closed with this one.
    start, stop : int
        The item range; ``stop=None`` means the end (the source must know its length).
    labels : array-like of int, optional
        One class per item of the range, replacing the inner source's labels. The inner source
        must give one image per item (arrays and array files do).
    """

    def __init__(self, inner: Source, start: int, stop: int | None, labels: Any = None) -> None:
        total = inner.total
        if stop is None:
            if total is None:
                msg = f"stop: expected an end index for {inner.name!r} (its length is unknown)"
                raise ValueError(msg)
            stop = total
        if total is not None and stop > total:
            msg = f"stop: expected at most {total} (the length of {inner.name!r}), got {stop}"
            raise ValueError(msg)
        if start >= stop:
            msg = f"start: expected less than stop={stop}, got {start}"
            raise ValueError(msg)
        self.inner = inner
        self.start = start
        self.stop = stop
        self.name = f"{inner.name}[{start}:{stop}]"
        self.total = stop - start
        self.labels = None if labels is None else as_labels(labels, self.total)
        self.has_labels = True if self.labels is not None else inner.has_labels
        self.n_classes = inner.n_classes
        self.class_names = inner.class_names
        self.opts = getattr(inner, "opts", None)

    def fingerprint(self) -> str:
        if self.labels is None:
            relabelled = ""
        else:
            relabelled = f":labels={hashlib.sha256(self.labels.tobytes()).hexdigest()[:16]}"
        return f"range:{self.start}:{self.stop}{relabelled}:{self.inner.fingerprint()}"

    def steps(self, start: int = 0, batch_size: int = 256) -> Iterator[Step]:
        pos, hi = self.start + start, self.stop
        while pos < hi:
            gen = self.inner.steps(pos, min(batch_size, hi - pos))
            crossed = False
            try:
                for step in gen:
                    if step.consumed <= 0:
                        msg = f"{self.inner.name}: a step consumed no items at index {pos}"
                        raise RuntimeError(msg)
                    if pos + step.consumed > hi:
                        crossed = True  # re-read the tail as one shorter batch
                        break
                    yield step if self.labels is None else self._relabel(step, pos)
                    pos += step.consumed
                    if pos >= hi:
                        break
            finally:
                close = getattr(gen, "close", None)
                if close is not None:
                    close()
            if pos < hi and not crossed:
                msg = f"{self.inner.name}: the source ended at index {pos}, before stop={hi}"
                raise ValueError(msg)

    def _relabel(self, step: Step, pos: int) -> Step:
        assert self.labels is not None  # noqa: S101 - only called with labels
        if len(step.parts) != 1 or step.skipped or len(step.parts[0].images) != step.consumed:
            msg = (
                f"labels: {self.inner.name!r} does not give one image per item, so an array of "
                "labels cannot be matched to its images"
            )
            raise ValueError(msg)
        part = step.parts[0]
        i = pos - self.start
        return Step(
            [Part(part.images, part.layout, self.labels[i : i + step.consumed])], step.consumed
        )

    def close(self) -> None:
        self.inner.close()


def open_options(options: dict[str, Any]) -> dict[str, Any]:
    """The :func:`~firstlayer.sources.open_source` options among a job's source options.

    ``decode_threads=None`` is left out, so that a worker can fill in its own thread count.
    """
    out = {k: options[k] for k in OPEN_OPTIONS if k in options}
    if out.get("decode_threads", 0) is None:
        del out["decode_threads"]
    return out


def open_shard(
    shard: Shard, options: dict[str, Any], data: Any = None, item_labels: Any = None
) -> Source:
    """The source of a shard.

    Parameters
    ----------
    shard : Shard
    options : dict
        :func:`~firstlayer.sources.open_source` options (see :func:`open_options`).
    data : ndarray, optional
        The shard's array, when it travelled beside the shard.
    item_labels : array-like, optional
        One class per item of the shard's range, replacing the source's own.
    """
    src = shard.source if data is None else data
    labels = shard.labels
    if is_file_list(src):
        inner: Source = FileListSource(
            [os.fspath(p) for p in src],
            labels=None if labels is None else [int(v) for v in labels],
            opts=decode_options(
                options.get("resize"),
                options.get("center_crop"),
                bool(options.get("grayscale", False)),
            ),
            decode_threads=options.get("decode_threads"),
            decoder=options.get("decoder", "auto"),
            name=f"{len(src)} files",
        )
    else:
        inner = open_source(src, labels=labels, **options)
    if shard.start == 0 and shard.stop is None and item_labels is None:
        return inner
    return RangeSource(inner, shard.start, shard.stop, item_labels)
