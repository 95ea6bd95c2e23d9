"""Training objectives sharing one signature: ``objective(model, x, x_adv, y) -> (loss, logits)``.

``loss`` is the scalar the optimizer minimizes and the AWP ascent maximizes; ``logits`` are the
model's outputs on ``x_adv`` (used for the training accuracy).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

ObjectiveFn = Callable[
    [nn.Module, torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]
]


def at_objective(
    model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Adversarial training: mean cross-entropy on the adversarial examples.

    Args:
        model: classifier on [0, 1] images.
        x: clean images (N, C, H, W), unused by AT (kept for the shared signature).
        x_adv: adversarial images (N, C, H, W) in [0, 1].
        y: labels (N,).

    Reference: Madry et al., ICLR 2018.
    """
    logits = model(x_adv)  # (N, K)
    return F.cross_entropy(logits, y), logits


OBJECTIVES: dict[str, ObjectiveFn] = {"at": at_objective}


def get_objective(method: str) -> ObjectiveFn:
    """The objective of a training method by name."""
    try:
        return OBJECTIVES[method]
    except KeyError:
        raise ValueError(f"unknown method {method!r}; choose one of {sorted(OBJECTIVES)}") from None
