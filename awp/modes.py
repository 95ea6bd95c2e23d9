"""The one home of model modes: train/eval switches that are restored, frozen BatchNorm, and
BatchNorm statistics re-estimated at a perturbed point.

Attacks, the AWP ascent and every measurement run a model in an explicit mode and give it back
exactly as they found it (per-module ``training`` flags, BatchNorm running statistics). These
context managers are how they do it; nothing else flips ``model.training`` behind a caller.

BatchNorm of a perturbed model (a landscape's point, a flatness draw) has two choices, named in
:data:`BN_MODES`: ``eval`` measures with the running statistics of the unperturbed weights (the
default, and what the model was saved with), ``recompute`` re-estimates them at every perturbed
point from N training images (:func:`recompute_bn_stats`, :func:`bn_recomputed`): the
statistics belong to the point, not to the direction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from awp.config import BN_MODES as BN_MODES  # its home is the torch-free config module
from awp.config import MODES


def unwrap(model: nn.Module) -> nn.Module:
    """The underlying module of a DistributedDataParallel / DataParallel / compiled model."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def batchnorms(model: nn.Module) -> list[_BatchNorm]:
    """The BatchNorm layers of ``model`` that keep running statistics."""
    return [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


def compiled_batchnorm(model: nn.Module) -> bool:
    """Whether ``model`` is (or holds) a TorchScript or ``torch.export`` program with BatchNorm
    running statistics: statistics that exist as buffers but whose layers are no modules to
    re-estimate them with."""
    compiled = any(
        isinstance(m, (torch.jit.ScriptModule, torch.fx.GraphModule)) for m in model.modules()
    )
    return compiled and any(n.endswith("running_mean") for n, _ in model.named_buffers())


def check_bn_recomputable(model: nn.Module, name: str = "the model") -> None:
    """Refuse to re-estimate BatchNorm statistics (``bn="recompute"``) of a model that has no
    BatchNorm layer keeping them: recomputing would silently do nothing.

    Raises:
        ValueError: naming why (no BatchNorm, or one compiled into a TorchScript or
            ``torch.export`` program, whose layers are not modules) and the fix.
    """
    if batchnorms(model):
        return
    why = (
        "its BatchNorm is compiled into a TorchScript or torch.export program"
        if compiled_batchnorm(model)
        else "it has no BatchNorm layer"
    )
    raise ValueError(
        f"{name}: BatchNorm statistics cannot be re-estimated ({why}); use --bn eval (bn='eval')"
    )


@contextmanager
def frozen_bn_stats(model: nn.Module) -> Iterator[nn.Module]:
    """Keep BatchNorm running statistics (and ``num_batches_tracked``) from moving.

    In train mode BatchNorm still normalizes with the batch's statistics; it just does not
    update the running ones. Works by switching ``track_running_stats`` off, which makes
    ``F.batch_norm`` receive no running buffers in train mode (eval mode still reads them).
    """
    bns = batchnorms(model)
    for m in bns:
        m.track_running_stats = False
    try:
        yield model
    finally:
        for m in bns:
            m.track_running_stats = True


@contextmanager
def kept_modes(model: nn.Module) -> Iterator[nn.Module]:
    """Restore every module's ``training`` flag on exit (a model in mixed modes comes back
    exactly as it was), whatever the body switches."""
    flags = [(m, m.training) for m in model.modules()]
    try:
        yield model
    finally:
        for m, flag in flags:
            m.training = flag


@contextmanager
def model_mode(model: nn.Module, mode: str) -> Iterator[nn.Module]:
    """Put ``model`` in ``mode`` ("train" | "eval") with frozen BatchNorm statistics; restore after.

    Args:
        model: the network.
        mode: "train" (BatchNorm normalizes with the batch's statistics) or "eval".
    """
    if mode not in MODES:
        raise ValueError(f"mode must be 'train' or 'eval', got {mode!r}")
    with kept_modes(model):
        model.train(mode == "train")
        with frozen_bn_stats(model):
            yield model


def channels_last_safe(model: nn.Module) -> bool:
    """Whether ``model`` may run in channels_last on the CPU.

    torch 2.14.1's CPU weight gradient of a 1x1 convolution with stride > 1 and fewer than 8
    input channels corrupts the heap in channels_last (a segfault or an abort at every try on
    a 2-core AMD EPYC; the forward pass, the input gradient, contiguous weights and 8 input
    channels or more are fine): a PreActResNet-18 below width 0.125 has such a shortcut. Such a
    model stays contiguous.
    """
    return not any(
        isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and max(m.stride) > 1
        and m.in_channels < 8
        for m in model.modules()
    )  # fmt: skip


@contextmanager
def cpu_channels_last(model: nn.Module) -> Iterator[nn.Module]:
    """On the CPU, keep ``model``'s 4-d weights in channels_last for the block; restored after.

    The same arithmetic in another order (agreement to float32 rounding: tested), measured at
    0.74x the time of a PGD-20 evaluation of the demo's network on the CPU
    (``benchmarks/cpu_levers.py``). On other devices, and for a model
    :func:`channels_last_safe` refuses, nothing changes.
    """
    on_cpu = all(p.device.type == "cpu" for p in model.parameters())
    if not on_cpu or not channels_last_safe(model):
        yield model
        return
    model.to(memory_format=torch.channels_last)
    try:
        yield model
    finally:
        model.to(memory_format=torch.contiguous_format)


def bn_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    """name -> every tracked BatchNorm buffer of ``model`` (running mean/var, batch count),
    the model's own tensors (writing them changes the model), names without wrapper prefixes."""
    out = {}
    for prefix, m in unwrap(model).named_modules():
        if isinstance(m, _BatchNorm) and m.track_running_stats:
            for b in ("running_mean", "running_var", "num_batches_tracked"):
                t = getattr(m, b, None)
                if t is not None:
                    out[f"{prefix}.{b}" if prefix else b] = t
    return out


def recompute_bn_stats(
    model: nn.Module,
    x: torch.Tensor,
    *,
    batch_size: int,
    prepare: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> None:
    """Replace BatchNorm running statistics by their average over ``x`` at the current weights.

    Each BatchNorm's statistics are reset and accumulated with ``momentum=None`` (an exact
    cumulative average over the batches), as ``torch.optim.swa_utils.update_bn`` does. The
    model's modes and the momenta are restored; the caller restores the buffers (or uses
    :func:`bn_recomputed`). SWA re-estimates its average's statistics so, the landscape's and
    flatness' ``--bn recompute`` every point's.

    Args:
        model: the network; x: training inputs (N, ...) (images (N, C, H, W) in [0, 1], or what
            ``prepare`` turns into that) on its device.
        batch_size: examples per pass (a last batch of one image is folded into the previous).
        prepare: applied to every batch before the forward pass (e.g. uint8 images to float
            in the network's memory format), or None.
    """
    bns = batchnorms(model)
    if not bns:
        return
    momenta = [m.momentum for m in bns]
    try:
        with kept_modes(model):
            for m in bns:
                m.reset_running_stats()
                m.momentum = None
            model.train()
            starts = list(range(0, len(x), batch_size))
            if len(starts) > 1 and len(x) - starts[-1] < 2:
                starts.pop()  # BatchNorm cannot take a batch of one: merge it into the last one
            with torch.no_grad():
                for i, s in enumerate(starts):
                    end = starts[i + 1] if i + 1 < len(starts) else len(x)
                    batch = x[s:end]
                    model(prepare(batch) if prepare is not None else batch)
    finally:
        for m, momentum in zip(bns, momenta):
            m.momentum = momentum


@contextmanager
def bn_recomputed(
    model: nn.Module, x: torch.Tensor | None, *, batch_size: int
) -> Iterator[nn.Module]:
    """BatchNorm statistics re-estimated on ``x`` at the current (perturbed) weights for the
    block (:func:`recompute_bn_stats`); the running buffers are copied back bit for bit on
    exit, also after an exception. ``x`` None keeps the statistics as they are (``bn="eval"``).

    Args:
        model: the network at the point to measure.
        x: training inputs (N, ...) with N >= 2 on the model's device, or None.
        batch_size: examples per pass.

    Raises:
        ValueError: fewer than 2 inputs (BatchNorm cannot estimate a variance from one), or a
            model without BatchNorm layers to re-estimate (:func:`check_bn_recomputable`).
    """
    if x is None:
        yield model
        return
    if len(x) < 2:
        raise ValueError(
            f"re-estimating BatchNorm statistics needs at least 2 training inputs, got {len(x)}"
        )
    check_bn_recomputable(model)
    buffers = bn_buffers(model)
    saved = {n: t.detach().clone() for n, t in buffers.items()}
    try:
        recompute_bn_stats(model, x, batch_size=batch_size)
        yield model
    finally:
        with torch.no_grad():
            for n, t in buffers.items():
                t.copy_(saved[n])
