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

The modules, in the order of the flow: :mod:`~firstlayer.distributed.shards` (what a shard is,
:func:`split`, the source a worker opens), :mod:`~firstlayer.distributed.tasks` (what runs in a
worker), :mod:`~firstlayer.distributed.store` (the checkpoint folder) and
:mod:`~firstlayer.distributed.driver` (the client: :func:`dask_patch_stats`).

``dask`` is imported only when a function here needs it: ``import firstlayer.distributed`` never
loads it.

Examples
--------
>>> from firstlayer.distributed import dask_patch_stats, split  # doctest: +SKIP
>>> stats = dask_patch_stats(split("cifar10", 20), 3, workers=2)  # doctest: +SKIP
"""

from __future__ import annotations

from firstlayer.distributed.driver import (
    ShardRun,
    dask_patch_stats,
    local_cluster,
    run_shards,
    sharded_stats,
)
from firstlayer.distributed.shards import RangeSource, Shard, as_shard, split
from firstlayer.distributed.store import shard_key
from firstlayer.distributed.tasks import SOURCE_OPTIONS, compute_shard

__all__ = [
    "SOURCE_OPTIONS",
    "RangeSource",
    "Shard",
    "ShardRun",
    "as_shard",
    "compute_shard",
    "dask_patch_stats",
    "local_cluster",
    "run_shards",
    "shard_key",
    "sharded_stats",
    "split",
]
