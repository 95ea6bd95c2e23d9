"""The one home of torch.distributed (torchrun): joining the job, devices, sharding, collectives.

``torchrun --nproc_per_node N -m awp_landscape CMD ...`` starts N copies of a command; each joins
the process group that torchrun's environment describes (gloo on CPU, nccl on GPU). Training
wraps the model in DistributedDataParallel and trains each rank on a slice of every global batch;
landscapes, flatness, gap and the other analyses split their work units round robin with
:func:`shard`, a pure function of (items, rank, world), so every rank knows every other rank's
share without communication. Without torchrun's variables everything here is a no-op for rank 0
of 1, so a 1-process run takes exactly the code path it always took.

DDP's reducer only sees ``loss.backward()``. The attack and the AWP ascent take gradients with
``torch.autograd.grad`` and run on the unwrapped module, so the AWP weight gradient is averaged
by :func:`all_reduce_mean_` (the ascent's ``grad_hook``) before it is normalized: every rank
then computes the same v.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

T = TypeVar("T")


class PeerError(RuntimeError):
    """Another rank of the job failed; the message carries its error."""


@dataclass(frozen=True)
class DistContext:
    """This process's place in the job (rank 0 of 1 when not launched by torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    created: bool = False  # the process group was created by :func:`init_distributed`

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def env_rank() -> int:
    """RANK from torchrun's environment (0 outside torchrun), without joining anything."""
    return int(os.environ.get("RANK", "0"))


def env_world() -> int:
    """WORLD_SIZE from torchrun's environment (1 outside torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def _uses_cuda(device_name: str) -> bool:
    return device_name.startswith("cuda") or (device_name == "auto" and torch.cuda.is_available())


def init_distributed(device_name: str = "auto") -> DistContext:
    """Join the process group torchrun describes (no-op outside torchrun).

    Args:
        device_name: the command's ``--device``; CUDA ("auto" with a GPU, or "cuda") joins
            with nccl, the CPU with gloo.

    Raises:
        ValueError: an explicit ``cuda:N`` under torchrun (each process owns cuda:LOCAL_RANK).
        RuntimeError: a process group that does not match torchrun's environment.
    """
    world = env_world()
    if world <= 1:
        return DistContext()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device_name.startswith("cuda:"):
        raise ValueError(
            f"--device {device_name} under torchrun: every process uses cuda:LOCAL_RANK; "
            "pass --device cuda (or auto)"
        )
    use_cuda = _uses_cuda(device_name)
    created = False
    if not dist.is_initialized():
        if use_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        created = True
    if dist.get_world_size() != world or dist.get_rank() != rank:
        raise RuntimeError(
            f"the process group (rank {dist.get_rank()} of {dist.get_world_size()}) does not "
            f"match torchrun's environment (RANK={rank}, WORLD_SIZE={world})"
        )
    return DistContext(rank=rank, world=world, local_rank=local_rank, created=created)


def shutdown(ctx: DistContext) -> None:
    """Leave the process group if :func:`init_distributed` created it."""
    if ctx.created and dist.is_initialized():
        dist.destroy_process_group()


@contextmanager
def joined(device_name: str = "auto") -> Iterator[DistContext]:
    """:func:`init_distributed` on entry, :func:`shutdown` on exit."""
    ctx = init_distributed(device_name)
    try:
        yield ctx
    finally:
        shutdown(ctx)


def current() -> DistContext:
    """The running job's place, without initializing anything."""
    if dist.is_available() and dist.is_initialized():
        return DistContext(
            rank=dist.get_rank(),
            world=dist.get_world_size(),
            local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        )
    return DistContext()


def pick_device(name: str = "auto", ctx: DistContext | None = None) -> torch.device:
    """The device this process computes on.

    ``auto`` is CUDA when present, else the CPU; under torchrun a CUDA device without an index
    becomes ``cuda:LOCAL_RANK`` (one GPU per rank).

    Raises:
        ValueError: CUDA asked for but not available (names the fix).
    """
    ctx = ctx or current()
    if name == "auto":
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            dev = torch.device(name)
        except RuntimeError as err:
            raise ValueError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from err
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(
                f"device {name!r} asked for, but CUDA is not available; use --device cpu"
            )
    if dev.type == "cuda" and dev.index is None and ctx.active:
        return torch.device("cuda", ctx.local_rank)
    return dev


# --------------------------------------------------------------------------- sharding
def shard(items: Sequence[T], rank: int, world: int) -> list[T]:
    """The items rank ``rank`` of ``world`` handles: round robin, so ranks get similar loads.

    Every item goes to exactly one rank; order within a shard follows ``items``.
    """
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"need 0 <= rank < world, got rank={rank}, world={world}")
    return list(items[rank::world])


def rank_slice(n: int, rank: int, world: int) -> slice:
    """This rank's contiguous part of a global batch of ``n`` (sizes differ by at most one)."""
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (1 if rank < extra else 0))


# --------------------------------------------------------------------------- collectives
def _in_job() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    """Wait for every rank (no-op outside a job)."""
    if _in_job():
        dist.barrier()


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` on every rank (``[obj]`` outside a job)."""
    if not _in_job():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def gather_to_main(obj: Any) -> list[Any] | None:
    """All ranks' ``obj`` on rank 0 (None elsewhere); ``[obj]`` outside a job."""
    gathered = all_gather_objects(obj)
    return gathered if current().is_main else None


def all_reduce_mean_(tensors: list[torch.Tensor]) -> None:
    """Average ``tensors`` over ranks in place (one flat all-reduce); no-op outside a job."""
    if not _in_job():
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for t in tensors:
        n = t.numel()
        t.copy_(flat[offset : offset + n].view_as(t))
        offset += n


def all_reduce_sum_(flat: torch.Tensor) -> torch.Tensor:
    """Sum one tensor over ranks in place and return it (unchanged outside a job).

    The Hessian-vector products of :mod:`awp.hessian` use it: each rank sums the products of
    its share of the batches in float64, and this adds the shares.
    """
    if _in_job():
        dist.all_reduce(flat)
    return flat


def all_reduce_sums(values: list[float], device: torch.device) -> list[float]:
    """Sum each number over ranks (float64); ``values`` unchanged outside a job."""
    if not _in_job():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def broadcast_buffers_(model: nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s buffers (BatchNorm running statistics) to every rank."""
    if not _in_job():
        return
    for b in model.buffers():
        dist.broadcast(b, src)


def agree(error: BaseException | None) -> None:
    """Raise on every rank when rank 0 failed a step only it ran (so no rank waits forever).

    Rank 0 passes its exception (or None); the others pass None and raise
    :class:`PeerError` with rank 0's message when it failed.
    """
    if not _in_job():
        if error is not None:
            raise error
        return
    box = [None if error is None else f"{type(error).__name__}: {error}"]
    dist.broadcast_object_list(box, src=0)
    if error is not None:
        raise error
    if box[0] is not None:
        raise PeerError(f"rank 0 failed: {box[0]}")


@contextmanager
def main_holds(ctx: DistContext, *managers: AbstractContextManager[Any]) -> Iterator[None]:
    """Rank 0 enters ``managers`` (e.g. the locks of the outputs it writes) for the body; when it
    cannot, every rank raises (:func:`agree`), before any of them computes anything."""
    with ExitStack() as stack:
        error: BaseException | None = None
        if ctx.is_main:
            try:
                for manager in managers:
                    stack.enter_context(manager)
            except Exception as err:  # reported on every rank by agree()
                error = err
        agree(error)
        yield


# --------------------------------------------------------------------------- DDP
def wrap(model: nn.Module, ctx: DistContext, device: torch.device) -> nn.Module:
    """``model`` inside DDP when distributed, else ``model`` itself.

    Buffers are not broadcast by DDP's forward: :func:`broadcast_buffers_` does it at the start
    of every step, before the attack (which may read BatchNorm running statistics in eval mode).
    """
    if not ctx.active:
        return model
    ids = [device.index] if device.type == "cuda" else None
    # Newer torch names the switch forward_sync_buffers (the old name warns); both keep the
    # one broadcast at construction, which gives every rank rank 0's initial buffers.
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters:
        return DistributedDataParallel(model, device_ids=ids, forward_sync_buffers=False)
    return DistributedDataParallel(model, device_ids=ids, broadcast_buffers=False)


def plain(model: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (and only DDP: a model's own ``.module`` is kept)."""
    return model.module if isinstance(model, DistributedDataParallel) else model
