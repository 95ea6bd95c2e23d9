"""Work sharding across torch.distributed ranks (torchrun), shared by landscapes and flatness.

The split is a pure function of (number of items, rank, world size), so every rank knows every
other rank's share without communication, and a 1-process run is the special case world=1.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


def shard(items: Sequence[T], rank: int, world: int) -> list[T]:
    """The items rank ``rank`` of ``world`` handles: round-robin, so ranks get similar loads.

    Every item goes to exactly one rank; order within a shard follows ``items``.
    """
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"need 0 <= rank < world, got rank={rank}, world={world}")
    return list(items[rank::world])


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job (rank 0 of 1 when not launched by torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def init_from_env(backend: str | None = None) -> DistInfo:
    """Join the process group torchrun describes (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_*).

    Without torchrun's variables this is a no-op returning rank 0 of 1. The backend defaults
    to nccl when CUDA is available, else gloo.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        if backend is None:
            backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend)
    return DistInfo(rank=rank, world=world, local_rank=local_rank)


def current() -> DistInfo:
    """The running job's info, without initializing anything."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(
            rank=dist.get_rank(),
            world=dist.get_world_size(),
            local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        )
    return DistInfo()


def gather_to_main(obj: Any) -> list[Any] | None:
    """All ranks' ``obj`` on rank 0 (None elsewhere); ``[obj]`` when not distributed."""
    info = current()
    if not info.active:
        return [obj]
    out: list[Any] = [None] * info.world
    dist.all_gather_object(out, obj)
    return out if info.is_main else None


def barrier() -> None:
    """Wait for every rank (no-op when not distributed)."""
    if current().active:
        dist.barrier()
