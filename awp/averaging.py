"""Weight averages of a training run: an exponential moving average (EMA) after every step and
the stochastic weight average (SWA) over epochs, each a model of its own.

    EMA:  w_ema <- d w_ema + (1 - d) w      after every optimizer step; BatchNorm buffers copied
    SWA:  w_swa <- w_swa + (w - w_swa) / n  at the end of every epoch from the start epoch on
          (n-th model averaged); BatchNorm statistics re-estimated on the training images
          before the average is evaluated or saved (:func:`awp.modes.recompute_bn_stats`)

Neither touches the trained model: a run with averages trains exactly as one without. The
training loop (:mod:`awp.train`) holds the averaged copies, evaluates and saves them
(``checkpoints/ema/``, ``checkpoints/swa/``) and keeps their state in the resume state.

Reference: Polyak & Juditsky, 1992, and Gowal et al., "Uncovering the Limits of Adversarial
Training against Norm-Bounded Adversarial Examples", 2020 (EMA against robust overfitting);
Izmailov et al., "Averaging Weights Leads to Wider Optima and Better Generalization", UAI 2018,
and Chen et al., "Robust Overfitting may be mitigated by properly learned smoothening", ICLR
2021 (SWA; github.com/VITA-Group/Alleviate-Robust-Overfitting re-estimates BatchNorm
statistics on the training data after every update of the average).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from awp.modes import unwrap


def averaged_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model``'s network (unwrapped) to hold an average: the same weights, buffers,
    memory layout and modes, its parameters not requiring gradients."""
    average = copy.deepcopy(unwrap(model))
    for p in average.parameters():
        p.requires_grad_(False)
    return average


@torch.no_grad()
def ema_update_(average: nn.Module, model: nn.Module, *, decay: float) -> None:
    """One EMA step: every parameter ``a <- decay * a + (1 - decay) * w``, every buffer
    (BatchNorm statistics) copied from ``model``.

    Args:
        average: the averaged copy (:func:`averaged_copy`), changed in place.
        model: the trained network (a DDP wrapper is unwrapped), read only.
        decay: d in (0, 1).
    """
    if not 0 < decay < 1:
        raise ValueError(f"decay={decay} must be in (0, 1)")
    source = unwrap(model)
    for a, w in zip(average.parameters(), source.parameters()):
        a.mul_(decay).add_(w.detach(), alpha=1 - decay)
    for a, b in zip(average.buffers(), source.buffers()):
        a.copy_(b)


@torch.no_grad()
def swa_update_(average: nn.Module, model: nn.Module, *, n: int) -> None:
    """Add the n-th model to a running mean of parameters: ``a <- a (1 - 1/n) + w / n``
    (n = 1 copies w exactly). Buffers are left alone: SWA re-estimates BatchNorm statistics
    (:func:`awp.modes.recompute_bn_stats`) before the average is used.

    Args:
        average: the averaged copy, changed in place.
        model: the trained network (a DDP wrapper is unwrapped), read only.
        n: how many models the mean holds after this one (>= 1).
    """
    if n < 1:
        raise ValueError(f"n={n}: the running mean needs n >= 1")
    source = unwrap(model)
    for a, w in zip(average.parameters(), source.parameters()):
        a.mul_(1 - 1 / n).add_(w.detach(), alpha=1 / n)
