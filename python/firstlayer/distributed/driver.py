"""The client side of a distributed job: check the arguments, submit one task per shard, merge.

:func:`dask_patch_stats` is the entry point; :func:`run_shards` is the same run, reporting also
which shards were computed and which loaded from the checkpoint folder; :func:`sharded_stats`
cuts one source into shards for a cluster's size (``firstlayer stats --workers/--scheduler``);
:func:`local_cluster` starts worker processes on this machine. ``dask`` is imported only here,
and only inside the functions that need it.
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from firstlayer._io import jsonable
from firstlayer._progress import Progress
from firstlayer._validate import MAX_STATS_KERNEL_SIZE, check_choice, check_int, check_optional_int
from firstlayer.distributed.shards import Shard, as_shard, attach_labels, split
from firstlayer.distributed.store import ShardStore, digest, shard_key
from firstlayer.distributed.tasks import SOURCE_OPTIONS, job_token, task_key, timed_task
from firstlayer.stats import PatchStats

if TYPE_CHECKING:
    from distributed import Client

_METHODS = ("auto", "direct", "shifted")


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

    n = check_int("workers", workers if workers is not None else (os.cpu_count() or 1), 1)
    threads = check_int("threads_per_worker", threads_per_worker, 1)
    return LocalCluster(  # type: ignore[no-untyped-call]
        n_workers=n,
        threads_per_worker=threads,
        processes=True,
        dashboard_address=":0",  # a free port: no clash with another cluster's 8787
        env={"RAYON_NUM_THREADS": str(threads)},
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


def _check_labels(labels: Any) -> None:
    """``labels`` as ``firstlayer.patch_stats`` takes them: a mode, an array or a ``.npy`` path."""
    if labels is None or isinstance(labels, bool | str | os.PathLike):
        return
    if not hasattr(labels, "__len__"):
        msg = (
            "labels: expected None, True, False, an array of ints or a .npy path, got "
            f"{type(labels).__name__}"
        )
        raise TypeError(msg)


def run_shards(
    shards: Sequence[Any],
    kernel_size: int = 3,
    *,
    stride: int = 1,
    padding: int = 0,
    labels: Any = None,
    n_classes: int | None = None,
    method: str = "auto",
    client: Client | str | None = None,
    workers: int | None = None,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    retries: int = 2,
    quiet: bool = False,
    **source_options: Any,
) -> ShardRun:
    """:func:`dask_patch_stats`, returning also which shards were computed and which loaded.

    Parameters and errors are those of :func:`dask_patch_stats`.

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
    kernel_size = check_int("kernel_size", kernel_size, 1, MAX_STATS_KERNEL_SIZE)
    stride = check_int("stride", stride, 1)
    padding = check_int("padding", padding, 0)
    retries = check_int("retries", retries, 0)
    n_classes = check_optional_int("n_classes", n_classes, 1)
    check_choice("method", method, _METHODS)
    _check_labels(labels)
    unknown = sorted(set(source_options) - set(SOURCE_OPTIONS))
    if unknown:
        msg = f"unexpected keyword arguments {unknown}; source options are {list(SOURCE_OPTIONS)}"
        raise TypeError(msg)
    if client is not None and workers is not None:
        msg = "workers: a local cluster size, given together with client=; pass only one"
        raise ValueError(msg)

    items = [as_shard(s, i) for i, s in enumerate(shards)]
    item_labels: list[np.ndarray | None] = [None] * len(items)
    job_labels: Any = labels
    if labels is not None and not isinstance(labels, bool):
        items, item_labels = attach_labels(items, labels, source_options)
        labels = None  # every shard has its classes now: the tasks use them
        parts = [s.labels if y is None else y for s, y in zip(items, item_labels, strict=True)]
        job_labels = "sha256:" + digest(*parts)  # job.json names the labels, not lists them
    options: dict[str, Any] = {
        "kernel_size": kernel_size,
        "stride": stride,
        "padding": padding,
        "labels": labels,
        "n_classes": n_classes,
        "method": method,
        **source_options,
    }
    results: dict[int, PatchStats] = {}
    store: ShardStore | None = None
    if checkpoint_dir is not None:
        keys = [shard_key(s, i) for i, s in enumerate(items)]
        store = ShardStore(checkpoint_dir, jsonable({**options, "labels": job_labels}), keys)
        for i in range(len(items)):
            st = store.load(i)
            if st is not None:
                results[i] = st
    loaded = sorted(results)
    todo = [i for i in range(len(items)) if i not in results]
    if loaded and not quiet:
        sys.stderr.write(
            f"firstlayer: {len(loaded)}/{len(items)} shards loaded from the checkpoint\n"
        )
    progress = Progress(
        len(items), name="dask_patch_stats", unit="shards", initial=len(loaded), quiet=quiet
    )
    task_seconds: dict[int, float] = {}
    try:
        if todo:
            _run_tasks(
                items, item_labels, todo, options, client, workers, retries, store, results,
                task_seconds, progress,
            )  # fmt: skip
    finally:
        progress.close()
    stats = results[0]
    for i in range(1, len(items)):
        try:
            stats = stats + results[i]
        except ValueError as exc:
            msg = f"shards[{i}] ({items[i].describe()}): cannot be merged with shards[0]: {exc}"
            raise ValueError(msg) from exc
    return ShardRun(stats, todo, loaded, time.monotonic() - t0, task_seconds)


def _run_tasks(
    items: list[Shard],
    item_labels: list[np.ndarray | None],
    todo: list[int],
    options: dict[str, Any],
    client: Any,
    workers: int | None,
    retries: int,
    store: ShardStore | None,
    results: dict[int, PatchStats],
    task_seconds: dict[int, float],
    progress: Progress,
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
        token = job_token()
        futures = {}
        for i in todo:
            shard = items[i]
            data, lab = None, item_labels[i]
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
                    timed_task,
                    shard,
                    options,
                    data,
                    lab,
                    key=task_key(i, token),
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
            if store is not None:
                store.save(i, stats)
            progress.update(1, images=stats.n_images)
        if first_error is not None:
            bad, cause = first_error
            saved = f"; {len(results)} finished shards are in the checkpoint" if store else ""
            msg = f"shards[{bad}] ({items[bad].describe()}) failed after {retries} retries{saved}"
            raise RuntimeError(msg) from cause
    finally:
        if own_client is not None:
            own_client.close()
        if own_cluster is not None:
            own_cluster.close()


def dask_patch_stats(
    shards: Sequence[Any],
    kernel_size: int = 3,
    *,
    stride: int = 1,
    padding: int = 0,
    labels: Any = None,
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
        :func:`split` to cut one source into ``n`` shards. The job's images are the shards'
        images one after the other, in list order.
    kernel_size, stride, padding, method
        As for :func:`firstlayer.patch_stats`.
    labels : None, bool, array-like of int or path
        As for :func:`firstlayer.patch_stats`. ``None`` (default): per-class statistics when
        the shards' sources have labels; ``False``: none; ``True``: required. An array (or the
        path of a ``.npy`` file): one class per image of the job, for shards of arrays,
        ``.npy``/``.npz`` files and lists of image files (each shard gets its slice). Labels
        that belong to one shard's own source go in ``Shard(x, labels=y)`` instead.
    n_classes : int, optional
        For labelled sources that do not say their number of classes.
    client : distributed.Client, str or None
        A client of a running cluster, or a scheduler address (``"tcp://host:8786"``); ``None``
        starts a ``LocalCluster`` of ``workers`` processes (one thread each) for this call.
    workers : int, optional
        Worker processes of that local cluster (default: the number of cores).
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
        threads in each task; default: the worker's threads), ``decoder``, ``on_error``,
        ``resize``, ``center_crop``, ``grayscale``: see :func:`firstlayer.streaming.stream_stats`.
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

    Examples
    --------
    >>> from firstlayer.distributed import dask_patch_stats, split  # doctest: +SKIP
    >>> stats = dask_patch_stats(split("cifar10", 20), 3, workers=2)  # doctest: +SKIP
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
        Without ``scheduler``: the worker processes of a local cluster started for this call
        (default: the number of cores).
    shards_per_thread : int
        Shards per worker thread (4: small enough to balance the load and to lose little work
        to a killed worker, large enough that the per-task overhead stays small).
    **options
        As for :func:`dask_patch_stats` (``checkpoint_dir``, ``labels``, ``root``,
        ``batch_size``, ...).

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
    shards_per_thread = check_int("shards_per_thread", shards_per_thread, 1)
    distributed = _import_distributed()
    cluster = local_cluster(workers) if scheduler is None else None
    client = distributed.Client(cluster if cluster is not None else scheduler)
    try:
        threads = sum(client.nthreads().values()) or 1
        find = {k: options[k] for k in ("root", "download") if k in options}
        shards = split(source, max(1, shards_per_thread * threads), **find)
        return dask_patch_stats(shards, kernel_size, client=client, **options)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
