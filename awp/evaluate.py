"""Natural and robust accuracy of a model on tensors held on its device."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from awp.attacks import model_mode, run_attack
from awp.config import AttackConfig


@dataclass(frozen=True)
class Accuracy:
    """Accuracy and mean cross-entropy over ``n`` examples."""

    accuracy: float
    loss: float
    n: int


def _as_float(x: torch.Tensor) -> torch.Tensor:
    return x.float().div_(255) if x.dtype == torch.uint8 else x


def evaluate_attack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    attack: AttackConfig | None,
    *,
    batch_size: int = 256,
    seed: int = 0,
) -> Accuracy:
    """Accuracy and loss of ``model`` on ``x`` (natural when ``attack`` is None).

    The model is evaluated in eval mode (its mode is restored afterwards); the attack runs in
    the mode its config records. The attack's random start is drawn from a CPU generator
    seeded with ``seed``, so the number is reproducible.

    Args:
        model: classifier on [0, 1] images.
        x: (N, C, H, W) uint8 (0..255) or float in [0, 1], on the model's device.
        y: (N,) int64 labels.
        attack: the attack, or None for natural accuracy.
        batch_size: examples per forward pass.
        seed: seed of the attack's random start.

    Returns:
        :class:`Accuracy` (fraction in [0, 1], mean cross-entropy, count).
    """
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} examples but y has {len(y)}")
    if len(x) == 0:
        return Accuracy(float("nan"), float("nan"), 0)
    generator = torch.Generator().manual_seed(seed)
    correct = 0
    loss_sum = 0.0
    for start in range(0, len(x), batch_size):
        xb = _as_float(x[start : start + batch_size])
        yb = y[start : start + batch_size]
        if attack is not None:
            xb = run_attack(model, xb, yb, attack, generator=generator)
        with torch.no_grad(), model_mode(model, "eval"):
            logits = model(xb)
        correct += int((logits.argmax(1) == yb).sum())
        loss_sum += float(F.cross_entropy(logits, yb, reduction="sum"))
    return Accuracy(correct / len(x), loss_sum / len(x), len(x))
