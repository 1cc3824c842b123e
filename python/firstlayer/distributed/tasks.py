"""What runs inside a Dask worker: one shard's statistics, and the keys the tasks go by.

Nothing here imports Dask: a task is a plain function of picklable arguments, so the same
:func:`compute_shard` also runs in a loop in one process (``benches/bench_distributed.py``).
"""

from __future__ import annotations

import sys
import time
import uuid
from typing import Any

import numpy as np

from firstlayer.distributed.shards import Shard, open_options, open_shard
from firstlayer.stats import PatchStats
from firstlayer.streaming import stream_stats

#: Options of :func:`firstlayer.streaming.stream_stats` that a shard task forwards.
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


def worker_threads() -> int | None:
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
        ``kernel_size``, ``stride``, ``padding``, ``labels`` (``None``, ``True`` or ``False``),
        ``n_classes``, ``method`` and the source options of :data:`SOURCE_OPTIONS`.
    data : ndarray, optional
        The shard's array, when it travelled beside the shard; ``labels`` are then its labels.
    labels : array-like of int, optional
        Without ``data``: one class per item of the shard's range (the job's labels, sliced).

    Returns
    -------
    PatchStats
    """
    if labels is not None:  # buffers that travelled may be unaligned for the core
        labels = np.require(labels, requirements=["C", "A"])
    item_labels = None
    if data is not None and labels is not None:
        shard = Shard(shard.source, shard.start, shard.stop, labels, shard.key)
    elif labels is not None:
        item_labels = labels
    if isinstance(data, np.ndarray):
        data = np.require(data, requirements=["C", "A"])
    opening = open_options(options)
    if "decode_threads" not in opening:  # decode with the worker's threads, not all the cores
        opening["decode_threads"] = worker_threads()
    src = open_shard(shard, opening, data, item_labels)
    try:
        label_mode = options.get("labels")
        return stream_stats(
            src,
            options["kernel_size"],
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


def timed_task(
    shard: Shard, options: dict[str, Any], data: Any = None, labels: Any = None
) -> tuple[PatchStats, float]:
    """:func:`compute_shard`, with the seconds it took inside the worker."""
    t0 = time.perf_counter()
    stats = compute_shard(shard, options, data, labels)
    return stats, time.perf_counter() - t0


def job_token() -> str:
    """A token that tells one job's task keys from another's (the scheduler keeps old keys)."""
    return uuid.uuid4().hex[:10]


def task_key(index: int, token: str) -> str:
    """The Dask key of the task of ``shards[index]``: the dashboard shows the shard's index."""
    return f"firstlayer-shard-{index:05d}-{token}"
