"""Patch statistics past one machine: a map-reduce of :class:`PatchStats` on ``dask.distributed``.

firstlayer grows no cluster code of its own. A dataset is cut into *shards* (a list of image
files, a folder, a ``.npy`` file and an index range, an in-memory array chunk, a dataset name and
an index range); each shard is one Dask task that streams its images through firstlayer's Rust core
inside a worker and returns a :class:`~firstlayer.stats.PatchStats`. The client merges the results
in shard order, so ``uint8`` statistics (exact integers) are bit-identical to the single-process
run, and float statistics are the same from run to run.

A task whose worker dies is rerun elsewhere by the scheduler; a task that raises is retried
``retries`` times. With ``checkpoint_dir`` every finished shard is saved atomically as it arrives
and a restarted job loads it instead of recomputing it.

``dask`` is imported only when a function here needs it: ``import firstlayer`` never loads it.

Examples
--------
>>> from firstlayer.distributed import patch_stats, split  # doctest: +SKIP
>>> stats = patch_stats(split("cifar10", 20), kernel_size=3, workers=2)  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import numpy as np

from firstlayer import sources
from firstlayer._validate import check_int
from firstlayer.stats import MAX_KERNEL_SIZE, PatchStats

if TYPE_CHECKING:
    from distributed import Client

__all__ = [
    "RangeSource",
    "Shard",
    "ShardRun",
    "as_shard",
    "compute_shard",
    "local_cluster",
    "patch_stats",
    "run_shards",
    "shard_key",
    "sharded_stats",
    "split",
]

#: Options of :func:`firstlayer.sources.stream_stats` that a shard task forwards.
SOURCE_OPTIONS = (
    "layout",
    "root",
    "download",
    "batch_size",
    "decode_threads",
    "decoder",
    "on_error",
    "resize",
    "center_crop",
    "grayscale",
)
#: Seconds before the first progress line (short jobs print none).
PROGRESS_DELAY_S = 2.0
_MANIFEST = "job.json"
_MANIFEST_FORMAT = "firstlayer.distributed.job"


# --------------------------------------------------------------------------------------------
# Shards
# --------------------------------------------------------------------------------------------


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
        One class per image of an in-memory ``source`` (the whole array, not the range).
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


def _is_path(x: Any) -> bool:
    return isinstance(x, str | os.PathLike)


def _check_index(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        msg = f"{name}: expected an integer >= 0, got {type(value).__name__} {value!r}"
        raise TypeError(msg)
    if value < 0:
        msg = f"{name}: expected an integer >= 0, got {value}"
        raise ValueError(msg)
    return int(value)


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
    elif isinstance(description, list) and description and all(map(_is_path, description)):
        shard = Shard([os.fspath(p) for p in description])
    elif isinstance(description, list | tuple) and not description:
        kind = type(description).__name__
        msg = f"{name}: expected a non-empty list of image files, got an empty {kind}"
        raise ValueError(msg)
    else:
        shard = Shard(description)
    start = _check_index(f"{name} start", shard.start)
    stop = None if shard.stop is None else _check_index(f"{name} stop", shard.stop)
    if stop is not None and stop <= start:
        msg = f"{name}: expected start < stop, got the empty range [{start}, {stop})"
        raise ValueError(msg)
    if isinstance(shard.source, list | tuple) and not all(map(_is_path, shard.source)):
        bad = next(type(p).__name__ for p in shard.source if not _is_path(p))
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
    if isinstance(n_shards, bool) or not isinstance(n_shards, int | np.integer) or n_shards < 1:
        msg = f"n_shards: expected an integer >= 1, got {n_shards!r}"
        raise ValueError(msg)
    files: list[str] | None = None
    file_labels: list[int] | None = None
    if isinstance(source, np.ndarray):
        total = source.shape[0]
    else:
        opened = _open(Shard(source), _open_options(source_options))
        try:
            total = opened.total
            if isinstance(opened, sources.FileListSource) and not isinstance(source, list):
                files, file_labels = opened.files, opened.labels  # walk a folder only once
        finally:
            opened.close()
        if total is None:
            msg = f"source: expected a source of known length, got {type(source).__name__}"
            raise ValueError(msg)
    if total == 0:
        msg = f"source: expected at least one image, got an empty {type(source).__name__}"
        raise ValueError(msg)
    n = min(int(n_shards), total)
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
# Inside a worker
# --------------------------------------------------------------------------------------------


class RangeSource(sources.Source):
    """Items ``[start, stop)`` of another source, in the batches the source would give.

    A batch that would run past ``stop`` is read again as a shorter one, so every image in range
    is counted exactly once whatever the batch size and the inner source's file boundaries.

    Parameters
    ----------
    inner : Source
        The whole source; closed with this one.
    start, stop : int
        The item range; ``stop=None`` means the end (the source must know its length).
    """

    def __init__(self, inner: sources.Source, start: int, stop: int | None) -> None:
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
        self.has_labels = inner.has_labels
        self.n_classes = inner.n_classes
        self.class_names = inner.class_names
        self.opts = getattr(inner, "opts", None)

    def fingerprint(self) -> str:
        return f"range:{self.start}:{self.stop}:{self.inner.fingerprint()}"

    def steps(self, start: int = 0, batch_size: int = 256) -> Iterator[sources.Step]:
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
                    yield step
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

    def close(self) -> None:
        self.inner.close()


def _open_options(options: dict[str, Any]) -> dict[str, Any]:
    keys = ("layout", "root", "download", "on_error", "resize", "center_crop", "grayscale",
            "decoder")  # fmt: skip
    out = {k: options[k] for k in keys if k in options}
    if options.get("decode_threads") is not None:
        out["workers"] = options["decode_threads"]
    return out


def _open(shard: Shard, open_options: dict[str, Any], data: Any = None) -> sources.Source:
    """The source of a shard (``data``: the shard's array, when it travelled separately)."""
    src = shard.source if data is None else data
    labels = shard.labels
    if isinstance(src, list | tuple) and src and all(map(_is_path, src)):
        opts = sources._decode_options(  # noqa: SLF001 - same package
            open_options.get("resize"),
            open_options.get("center_crop"),
            bool(open_options.get("grayscale", False)),
        )
        inner: sources.Source = sources.FileListSource(
            [os.fspath(p) for p in src],
            labels=None if labels is None else [int(v) for v in labels],
            opts=opts,
            workers=open_options.get("workers"),
            decoder=open_options.get("decoder", "auto"),
            name=f"{len(src)} files",
        )
    else:
        inner = sources.open_source(src, labels=labels, **open_options)
    if shard.start == 0 and shard.stop is None:
        return inner
    return RangeSource(inner, shard.start, shard.stop)


def _worker_threads() -> int | None:
    """Threads of the Dask worker running this code (None outside a worker)."""
    mod = sys.modules.get("distributed")
    if mod is None:
        return None
    try:
        return int(mod.get_worker().state.nthreads)
    except (ValueError, AttributeError):
        return None


def compute_shard(
    shard: Shard, options: dict[str, Any], data: Any = None, labels: Any = None
) -> PatchStats:
    """The statistics of one shard (what each Dask task runs).

    Parameters
    ----------
    shard : Shard
    options : dict
        ``kernel_size``, ``stride``, ``padding``, ``labels``, ``n_classes``, ``method`` and the
        source options of :data:`SOURCE_OPTIONS`.
    data, labels : ndarray, optional
        The shard's array and labels when they were scattered to the workers separately.

    Returns
    -------
    PatchStats
    """
    if labels is not None:
        shard = Shard(shard.source, shard.start, shard.stop, labels, shard.key)
    if isinstance(data, np.ndarray):  # buffers that travelled may be unaligned for the core
        data = np.require(data, requirements=["C", "A"])
    open_options = _open_options(options)
    if "workers" not in open_options:  # decode with the worker's threads, not all the cores
        open_options["workers"] = _worker_threads()
    src = _open(shard, open_options, data)
    try:
        label_mode = options.get("labels")
        return sources.stream_stats(
            src,
            kernel_size=options["kernel_size"],
            stride=options["stride"],
            padding=options["padding"],
            labels=label_mode if isinstance(label_mode, bool) else None,
            n_classes=options.get("n_classes"),
            method=options["method"],
            batch_size=options.get("batch_size", 256),
            on_error=options.get("on_error", "raise"),
            quiet=True,
        )
    finally:
        src.close()


def _timed_task(
    shard: Shard, options: dict[str, Any], data: Any = None, labels: Any = None
) -> tuple[PatchStats, float]:
    t0 = time.perf_counter()
    stats = compute_shard(shard, options, data, labels)
    return stats, time.perf_counter() - t0


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------


def _sha(*parts: Any) -> str:
    h = hashlib.sha256()
    for p in parts:
        if isinstance(p, np.ndarray):
            a = np.ascontiguousarray(p)
            h.update(f"{a.dtype.str}|{a.shape}|".encode())
            h.update(a.data if a.flags.c_contiguous else a.tobytes())
        else:
            h.update(repr(p).encode("utf-8", "surrogateescape"))
        h.update(b"\0")
    return h.hexdigest()


def _path_identity(p: str | os.PathLike[str]) -> str:
    path = Path(p).expanduser()
    if not path.exists():
        return f"name:{os.fspath(p).lower()}"  # a dataset name
    st = path.stat()
    return f"path:{path.resolve()}:{st.st_size}:{st.st_mtime_ns if path.is_file() else ''}"


def shard_key(shard: Shard, index: int = 0) -> str:
    """A digest of a shard's content and range, for the checkpoint directory.

    Raises
    ------
    TypeError
        For a source object with no fingerprint and no ``key``.
    """
    rng = (shard.start, shard.stop)
    if shard.key is not None:
        return _sha("key", shard.key, rng)
    src = shard.source
    if _is_path(src):
        return _sha("path", _path_identity(src), rng)
    if isinstance(src, list | tuple):
        ys = None if shard.labels is None else [int(v) for v in shard.labels]
        return _sha("files", [_path_identity(p) for p in src], ys, rng)
    if isinstance(src, np.ndarray):
        lab = None if shard.labels is None else np.asarray(shard.labels)
        return _sha("array", src, lab, rng)
    fingerprint = getattr(src, "fingerprint", None)
    if callable(fingerprint):
        return _sha("source", fingerprint(), rng)
    msg = (
        f"shards[{index}]: checkpoint_dir needs to recognise each shard; expected a path, a "
        f"dataset name, an array, a Source or Shard(..., key=...), got {type(src).__name__}"
    )
    raise TypeError(msg)


class _CheckpointDir:
    """One ``.npz`` per finished shard, plus ``job.json`` naming the job they belong to."""

    def __init__(self, path: str | os.PathLike[str], job: dict[str, Any], keys: list[str]):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.keys = keys
        manifest = {"format": _MANIFEST_FORMAT, "version": 1, "job": job, "shards": keys}
        target = self.path / _MANIFEST
        if target.exists():
            try:
                old = json.loads(target.read_text())
            except (OSError, ValueError) as exc:
                msg = f"checkpoint_dir: cannot read {target}: {exc}"
                raise ValueError(msg) from exc
            if old.get("job") != job or old.get("shards") != keys:
                msg = (
                    f"checkpoint_dir: {self.path} holds shards of a different job (other "
                    "options or shards); delete it or choose another directory"
                )
                raise ValueError(msg)
        else:
            tmp = self.path / f".{_MANIFEST}.{os.getpid()}.tmp"
            tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True))
            os.replace(tmp, target)

    def file(self, index: int) -> Path:
        return self.path / f"shard-{index:06d}-{self.keys[index][:16]}.npz"

    def load(self, index: int) -> PatchStats | None:
        f = self.file(index)
        if not f.is_file():
            return None
        try:
            return PatchStats.load(f)
        except ValueError:  # damaged (cannot happen with atomic saves, but be safe): recompute
            return None

    def save(self, index: int, stats: PatchStats) -> None:
        stats.save(self.file(index))


# --------------------------------------------------------------------------------------------
# Progress
# --------------------------------------------------------------------------------------------


def _fmt_time(seconds: float) -> str:
    s = int(max(0.0, seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class _Progress:
    """``firstlayer: 7/20 shards (35%), 12,345 images, 3,210 img/s, 0:04 elapsed, 0:07 left``."""

    def __init__(self, total: int, done: int, quiet: bool, stream: TextIO | None = None) -> None:
        self.total = total
        self.done = done
        self.initial = done
        self.images = 0
        self.quiet = quiet
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.start = time.monotonic()
        self.last = -1e9
        self.shown = False
        if done and not quiet:
            self.stream.write(f"firstlayer: {done}/{total} shards loaded from the checkpoint\n")

    def line(self) -> str:
        now = time.monotonic() - self.start
        rate = self.images / max(now, 1e-9)
        new = self.done - self.initial
        left = (self.total - self.done) * now / new if new else 0.0
        return (
            f"firstlayer: {self.done}/{self.total} shards ({100 * self.done / self.total:.0f}%), "
            f"{self.images:,} images, {rate:,.0f} img/s, {_fmt_time(now)} elapsed, "
            f"{_fmt_time(left)} left"
        )

    def update(self, images: int) -> None:
        self.done += 1
        self.images += images
        if self.quiet:
            return
        now = time.monotonic()
        final = self.done == self.total
        if now - self.start < PROGRESS_DELAY_S and not (final and self.shown):
            return
        if now - self.last < (0.1 if self.tty else 5.0) and not final:
            return
        self.last = now
        self.shown = True
        end = "\n" if self.done == self.total or not self.tty else "\x1b[K"
        self.stream.write(("\r" if self.tty else "") + self.line() + end)
        self.stream.flush()


# --------------------------------------------------------------------------------------------
# The driver
# --------------------------------------------------------------------------------------------


@dataclass
class ShardRun:
    """What :func:`run_shards` did.

    Attributes
    ----------
    stats : PatchStats
        The merged statistics, shards added in their order.
    computed : list of int
        Indices of the shards computed by this run.
    loaded : list of int
        Indices of the shards read from ``checkpoint_dir``.
    seconds : float
        Wall time.
    task_seconds : dict of int to float
        Time each computed shard spent in its (last) task, inside the worker: their sum against
        ``seconds`` times the number of worker threads shows the engine's overhead.
    """

    stats: PatchStats
    computed: list[int]
    loaded: list[int]
    seconds: float
    task_seconds: dict[int, float] = field(default_factory=dict)


def local_cluster(workers: int | None = None, threads_per_worker: int = 1) -> Any:
    """A ``LocalCluster`` of worker processes for firstlayer.

    Each worker's Rust thread pool is sized to ``threads_per_worker``
    (``RAYON_NUM_THREADS``), so ``workers`` processes do not oversubscribe the cores.

    Parameters
    ----------
    workers : int, optional
        Worker processes (default: the number of cores).
    threads_per_worker : int
        Threads of each worker (Dask's and the Rust core's).

    Returns
    -------
    distributed.LocalCluster
    """
    from distributed import LocalCluster

    n = workers if workers is not None else (os.cpu_count() or 1)
    for name, value in (("workers", n), ("threads_per_worker", threads_per_worker)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            msg = f"{name}: expected an integer >= 1, got {value!r}"
            raise ValueError(msg)
    return LocalCluster(  # type: ignore[no-untyped-call]
        n_workers=int(n),
        threads_per_worker=int(threads_per_worker),
        processes=True,
        dashboard_address=":0",  # a free port: no clash with another cluster's 8787
        env={"RAYON_NUM_THREADS": str(threads_per_worker)},
    )


def _import_distributed() -> Any:
    try:
        import distributed
    except ImportError as exc:
        msg = (
            "firstlayer.distributed needs dask.distributed: pip install 'dask[distributed]' "
            f"({exc})"
        )
        raise ImportError(msg) from exc
    return distributed


def run_shards(
    shards: Sequence[Any],
    kernel_size: int = 3,
    *,
    stride: int = 1,
    padding: int = 0,
    labels: bool | None = None,
    n_classes: int | None = None,
    method: str = "auto",
    client: Client | str | None = None,
    workers: int | None = None,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    retries: int = 2,
    quiet: bool = False,
    **source_options: Any,
) -> ShardRun:
    """:func:`patch_stats`, returning also which shards were computed and which loaded.

    Parameters and errors are those of :func:`patch_stats`.

    Returns
    -------
    ShardRun
    """
    t0 = time.monotonic()
    if isinstance(shards, str | bytes | os.PathLike | np.ndarray | Shard) or not isinstance(
        shards, Sequence
    ):
        msg = (
            "shards: expected a list of shard descriptions (e.g. split(source, n)), got "
            f"{type(shards).__name__}"
        )
        raise TypeError(msg)
    if len(shards) == 0:
        msg = "shards: expected at least one shard, got an empty list"
        raise ValueError(msg)
    for name, value, lo, hi in (
        ("kernel_size", kernel_size, 1, MAX_KERNEL_SIZE),
        ("stride", stride, 1, None),
        ("padding", padding, 0, None),
        ("retries", retries, 0, None),
    ):
        check_int(name, value, lo, hi)
    if method not in ("auto", "direct", "shifted"):
        msg = f"method: expected 'auto', 'direct' or 'shifted', got {method!r}"
        raise ValueError(msg)
    if labels is not None and not isinstance(labels, bool):
        msg = (
            "labels: expected None, True or False (per-shard label arrays go in Shard(labels=)), "
            f"got {type(labels).__name__}"
        )
        raise TypeError(msg)
    unknown = sorted(set(source_options) - set(SOURCE_OPTIONS))
    if unknown:
        msg = f"unexpected keyword arguments {unknown}; source options are {list(SOURCE_OPTIONS)}"
        raise TypeError(msg)
    if client is not None and workers is not None:
        msg = "workers: a local cluster size, given together with client=; pass only one"
        raise ValueError(msg)

    items = [as_shard(s, i) for i, s in enumerate(shards)]
    options: dict[str, Any] = {
        "kernel_size": int(kernel_size),
        "stride": int(stride),
        "padding": int(padding),
        "labels": labels,
        "n_classes": n_classes,
        "method": method,
        **source_options,
    }
    results: dict[int, PatchStats] = {}
    ckpt: _CheckpointDir | None = None
    if checkpoint_dir is not None:
        keys = [shard_key(s, i) for i, s in enumerate(items)]
        job = {k: _jsonable(v) for k, v in options.items()}
        ckpt = _CheckpointDir(checkpoint_dir, job, keys)
        for i in range(len(items)):
            st = ckpt.load(i)
            if st is not None:
                results[i] = st
    loaded = sorted(results)
    todo = [i for i in range(len(items)) if i not in results]
    progress = _Progress(len(items), len(loaded), quiet)

    task_seconds: dict[int, float] = {}
    if todo:
        _run_tasks(
            items, todo, options, client, workers, retries, ckpt, results, task_seconds, progress
        )
    stats = results[0]
    for i in range(1, len(items)):
        try:
            stats = stats + results[i]
        except ValueError as exc:
            msg = f"shards[{i}] ({items[i].describe()}): cannot be merged with shards[0]: {exc}"
            raise ValueError(msg) from exc
    return ShardRun(stats, todo, loaded, time.monotonic() - t0, task_seconds)


def _jsonable(v: Any) -> Any:
    if isinstance(v, tuple | list):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, str | int | float | bool) or v is None:
        return v
    return repr(v)


def _run_tasks(
    items: list[Shard],
    todo: list[int],
    options: dict[str, Any],
    client: Any,
    workers: int | None,
    retries: int,
    ckpt: _CheckpointDir | None,
    results: dict[int, PatchStats],
    task_seconds: dict[int, float],
    progress: _Progress,
) -> None:
    distributed = _import_distributed()
    own_cluster = None
    own_client = None
    if client is None:
        own_cluster = local_cluster(workers)
        own_client = client = distributed.Client(own_cluster)
    elif isinstance(client, str):
        own_client = client = distributed.Client(client)
    elif not hasattr(client, "submit"):
        msg = (
            "client: expected a distributed.Client, a scheduler address such as "
            f"'tcp://host:8786' or None, got {type(client).__name__}"
        )
        raise TypeError(msg)
    try:
        token = _sha(time.time_ns(), os.getpid())[:10]
        futures = {}
        for i in todo:
            shard = items[i]
            data = lab = None
            if isinstance(shard.source, np.ndarray):
                # Only the chunk travels, inside the task: the scheduler keeps it until the task
                # is done, so a task whose worker died can run again (data scattered to a worker
                # dies with it).
                sl = slice(shard.start, shard.stop)
                data = shard.source[sl]
                if shard.labels is not None:
                    lab = np.asarray(shard.labels)[sl]
                shard = Shard(None, 0, None, None, shard.key)
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*large graph", category=UserWarning)
                fut = client.submit(
                    _timed_task,
                    shard,
                    options,
                    data,
                    lab,
                    key=f"firstlayer-shard-{i:05d}-{token}",
                    retries=retries,
                    pure=False,
                )
            futures[fut] = i
        first_error: tuple[int, BaseException] | None = None
        for fut in distributed.as_completed(list(futures)):
            i = futures[fut]
            try:
                stats, task_seconds[i] = fut.result()
            except Exception as exc:  # noqa: BLE001 - re-raised after the others finish
                if first_error is None or i < first_error[0]:
                    first_error = (i, exc)
                continue
            results[i] = stats
            if ckpt is not None:
                ckpt.save(i, stats)
            progress.update(stats.n_images)
        if first_error is not None:
            bad, cause = first_error
            saved = f"; {len(results)} finished shards are in the checkpoint" if ckpt else ""
            msg = f"shards[{bad}] ({items[bad].describe()}) failed after {retries} retries{saved}"
            raise RuntimeError(msg) from cause
    finally:
        if own_client is not None:
            own_client.close()
        if own_cluster is not None:
            own_cluster.close()


def patch_stats(
    shards: Sequence[Any],
    kernel_size: int = 3,
    *,
    stride: int = 1,
    padding: int = 0,
    labels: bool | None = None,
    n_classes: int | None = None,
    method: str = "auto",
    client: Client | str | None = None,
    workers: int | None = None,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    retries: int = 2,
    quiet: bool = False,
    **source_options: Any,
) -> PatchStats:
    """Patch statistics of a sharded dataset, one Dask task per shard, merged exactly.

    Parameters
    ----------
    shards : list
        Shard descriptions, one task each: a :class:`Shard`; a dataset name or a path (folder,
        ``.npy``, ``.npz``); a list of image files; an array chunk; ``(source, slice(a, b))`` or
        ``(source, a, b)`` for the items ``[a, b)`` of a dataset name, path or array. See
        :func:`split` to cut one source into ``n`` shards.
    kernel_size, stride, padding, method
        As for :func:`firstlayer.patch_stats`.
    labels : bool, optional
        ``None``: per-class statistics when the source has labels; ``False``: none; ``True``:
        required. Label arrays for in-memory chunks go in ``Shard(x, labels=y)``.
    n_classes : int, optional
        For labelled sources that do not say their number of classes.
    client : distributed.Client, str or None
        A client of a running cluster, or a scheduler address (``"tcp://host:8786"``); ``None``
        starts a ``LocalCluster`` of ``workers`` processes (one thread each) for this call.
    workers : int, optional
        Size of that local cluster (default: the number of cores).
    checkpoint_dir : path, optional
        Each finished shard's statistics are saved there atomically as they arrive (by the
        client: no shared file system needed); a restarted job loads them instead of
        recomputing. A directory written by a job with other options or shards is refused.
    retries : int
        Extra attempts of a task that raises. A task whose worker process dies is rerun by the
        scheduler without counting against ``retries`` (up to Dask's
        ``distributed.scheduler.allowed-failures``).
    quiet : bool
        No progress line on stderr.
    **source_options
        ``layout``, ``root``, ``download``, ``batch_size``, ``decode_threads`` (image decoding
        threads in each task; ``workers`` of stream_stats), ``decoder``, ``on_error``,
        ``resize``, ``center_crop``, ``grayscale``: see :func:`firstlayer.sources.stream_stats`.
        They apply in every task.

    Returns
    -------
    PatchStats
        ``uint8`` data gives exact statistics equal, bit for bit, to ``firstlayer.patch_stats`` on
        the whole dataset; ``skipped`` lists unreadable files of all shards, in shard order.

    Raises
    ------
    RuntimeError
        When a shard still fails after ``retries`` (chained to the task's exception); the other
        shards are finished and, with ``checkpoint_dir``, saved first.
    TypeError, ValueError
        Bad arguments, named in the message.
    """
    return run_shards(
        shards,
        kernel_size,
        stride=stride,
        padding=padding,
        labels=labels,
        n_classes=n_classes,
        method=method,
        client=client,
        workers=workers,
        checkpoint_dir=checkpoint_dir,
        retries=retries,
        quiet=quiet,
        **source_options,
    ).stats


def sharded_stats(
    source: Any,
    kernel_size: int = 3,
    *,
    scheduler: str | None = None,
    workers: int | None = None,
    shards_per_thread: int = 4,
    **options: Any,
) -> PatchStats:
    """Statistics of one source on a cluster, cut into shards automatically (``firstlayer stats``).

    Parameters
    ----------
    source : str, path or ndarray
        A dataset name, a folder, a ``.npy``/``.npz`` file, or an array.
    kernel_size : int
    scheduler : str, optional
        Address of a running scheduler (``"tcp://host:8786"``).
    workers : int, optional
        Without ``scheduler``: the size of a local cluster started for this call (default: the
        number of cores).
    shards_per_thread : int
        Shards per worker thread (4: small enough to balance the load and to lose little work
        to a killed worker, large enough that the per-task overhead stays small).
    **options
        As for :func:`patch_stats` (``checkpoint_dir``, ``labels``, ``root``, ``batch_size``, ...).

    Returns
    -------
    PatchStats
    """
    if scheduler is not None and workers is not None:
        msg = f"workers: a local cluster size, given together with scheduler={scheduler!r}"
        raise ValueError(msg)
    if scheduler is not None and not isinstance(scheduler, str):
        msg = f"scheduler: expected an address such as 'tcp://host:8786', got {scheduler!r}"
        raise TypeError(msg)
    distributed = _import_distributed()
    cluster = local_cluster(workers) if scheduler is None else None
    client = distributed.Client(cluster if cluster is not None else scheduler)
    try:
        threads = sum(client.nthreads().values()) or 1
        find = {k: options[k] for k in ("root", "download") if k in options}
        shards = split(source, max(1, shards_per_thread * threads), **find)
        return patch_stats(shards, kernel_size, client=client, **options)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
