"""Several processes under ``torchrun``: the process group, and rank 0 acting for all.

With ``WORLD_SIZE`` unset or 1 every helper is a plain call, so a single process never touches
``torch.distributed``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["Dist", "all_reduce", "barrier", "dist_setup", "dist_teardown", "on_main"]


@dataclass
class Dist:
    """This process's place among the ``world`` processes of the run."""

    world: int
    rank: int
    local_rank: int
    owns_group: bool

    @property
    def main(self) -> bool:
        """Whether this is rank 0, the process that writes the run directory."""
        return self.rank == 0


def dist_setup(device_kind: str) -> Dist:
    """Join (or start) the process group of a ``torchrun`` launch: NCCL on CUDA, gloo else."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(1, 0, 0, False)
    import torch.distributed as dist

    owns = False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_kind == "cuda" else "gloo")
        owns = True
    return Dist(
        dist.get_world_size(), dist.get_rank(), int(os.environ.get("LOCAL_RANK", "0")), owns
    )


def on_main(d: Dist, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` on rank 0 and hand its result (or its exception) to every rank."""
    if d.world == 1:
        return fn()
    import torch.distributed as dist

    box: list[Any] = [None]
    if d.main:
        try:
            box[0] = ("ok", fn())
        except Exception as exc:  # noqa: BLE001 - re-raised on every rank below
            box[0] = ("err", exc)
    dist.broadcast_object_list(box, src=0)
    kind, value = box[0]
    if kind == "err":
        raise value
    return value


def all_reduce(d: Dist, t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over the processes, in place."""
    if d.world > 1:
        import torch.distributed as dist

        dist.all_reduce(t)
    return t


def barrier(d: Dist) -> None:
    """Wait for every process."""
    if d.world > 1:
        import torch.distributed as dist

        dist.barrier()


def dist_teardown(d: Dist) -> None:
    """Leave the process group if :func:`dist_setup` started it."""
    if d.owns_group:
        import torch.distributed as dist

        dist.destroy_process_group()
