"""Multi-process training with torch.distributed (torchrun): the few collective verbs it needs.

``torchrun --nproc_per_node N`` starts N copies of ``awp train``; each joins the process group
that torchrun's environment describes (gloo on CPU, nccl on GPU), trains on its slice of every
global batch inside :class:`~torch.nn.parallel.DistributedDataParallel`, and only rank 0 writes
files. Without torchrun's variables everything here is a no-op for rank 0 of 1, so a 1-process
run takes exactly the code path it always took.

DDP's reducer only sees ``loss.backward()``. The attack and the AWP ascent take gradients with
``torch.autograd.grad`` and run on the unwrapped module, so the AWP weight gradient is averaged
here (:func:`all_reduce_mean_`, passed to ``weight_perturbation`` as ``grad_hook``) before it is
normalized: every rank then computes the same v.

This module is part of ``awp`` and does not import ``landscape`` (imports flow one way).
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel


@dataclass(frozen=True)
class DistContext:
    """This process's place in the job (rank 0 of 1 when not launched by torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    created: bool = False  # this process group was created by :func:`init_distributed`

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def env_rank() -> int:
    """RANK from torchrun's environment (0 outside torchrun), without joining anything."""
    return int(os.environ.get("RANK", "0"))


def init_distributed(device_name: str) -> tuple[DistContext, str]:
    """Join the process group torchrun describes; pick this rank's device.

    Args:
        device_name: the run's ``--device`` ("auto", "cpu", "cuda" or "cuda:N").

    Returns:
        (context, device name for this rank): under torchrun "auto"/"cuda" become
        ``cuda:LOCAL_RANK`` when CUDA is available (nccl), otherwise the CPU (gloo).

    Raises:
        ValueError: an explicit ``cuda:N`` under torchrun (each process owns cuda:LOCAL_RANK).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext(), device_name
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device_name.startswith("cuda:"):
        raise ValueError(
            f"--device {device_name} under torchrun: every process uses cuda:LOCAL_RANK; "
            "pass --device cuda (or auto)"
        )
    use_cuda = device_name == "cuda" or (device_name == "auto" and torch.cuda.is_available())
    device = f"cuda:{local_rank}" if use_cuda else "cpu"
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
    return DistContext(rank=rank, world=world, local_rank=local_rank, created=created), device


def shutdown(ctx: DistContext) -> None:
    """Leave the process group if :func:`init_distributed` created it."""
    if ctx.created and dist.is_initialized():
        dist.destroy_process_group()


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


def all_reduce_mean_(tensors: list[torch.Tensor]) -> None:
    """Average ``tensors`` over ranks in place (one flat all-reduce); no-op outside a job."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for t in tensors:
        n = t.numel()
        t.copy_(flat[offset : offset + n].view_as(t))
        offset += n


def all_reduce_sums(values: list[float], device: torch.device) -> list[float]:
    """Sum each number over ranks (float64); returns ``values`` unchanged outside a job."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def broadcast_buffers_(model: nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s buffers (BatchNorm running statistics) to every rank."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    for b in model.buffers():
        dist.broadcast(b, src)


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` on every rank (``[obj]`` outside a job)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    """Wait for every rank (no-op outside a job)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def rank_slice(n: int, rank: int, world: int) -> slice:
    """This rank's contiguous part of a global batch of ``n`` (sizes differ by at most one)."""
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (1 if rank < extra else 0))
