"""Pieces every model in the zoo shares: channel scaling and the input normalization layer."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn


def scale_channels(channels: int, width: float) -> int:
    """Scale a channel count by a width multiplier.

    Args:
        channels: channel count of the full-width (official) architecture, >= 1.
        width: multiplier, > 0; 1.0 returns ``channels`` unchanged.

    Returns:
        ``round(channels * width)``, at least 1.
    """
    if not (width > 0 and math.isfinite(width)):
        raise ValueError(f"width must be a finite number > 0, got {width!r}")
    return max(1, int(round(channels * width)))


def check_mean_std(
    mean: Sequence[float] | None, std: Sequence[float] | None
) -> tuple[tuple[float, ...] | None, tuple[float, ...] | None]:
    """Validate per-channel normalization statistics.

    Args:
        mean: per-channel mean of the [0,1] input, length 3, or None for no normalization.
        std: per-channel standard deviation, length 3, each > 0, or None (together with mean).

    Returns:
        ``(mean, std)`` as tuples of floats, or ``(None, None)``.
    """
    if (mean is None) != (std is None):
        raise ValueError(
            "mean and std must be both given or both None (None = the model takes raw [0,1] "
            f"input without normalization); got mean={mean!r}, std={std!r}"
        )
    if mean is None:
        return None, None
    mean_t = tuple(float(m) for m in mean)
    std_t = tuple(float(s) for s in std)
    if len(mean_t) != 3 or len(std_t) != 3:
        raise ValueError(
            f"mean and std need one value per RGB channel (length 3); got lengths "
            f"{len(mean_t)} and {len(std_t)}"
        )
    if not all(math.isfinite(m) for m in mean_t):
        raise ValueError(f"mean must be finite, got {mean_t}")
    if not all(math.isfinite(s) and s > 0 for s in std_t):
        raise ValueError(f"std must be finite and > 0 for every channel, got {std_t}")
    return mean_t, std_t


class Normalized(nn.Module):
    """Base class: holds ``mean``/``std`` buffers and normalizes [0,1] input as the first step.

    The buffers are non-persistent, so they never enter ``state_dict`` and checkpoint keys
    match the official code, whose scripts normalize outside the model. Attacks therefore
    work in pixel space, and the statistics follow ``model.to(device/dtype)``.
    """

    mean: torch.Tensor | None
    std: torch.Tensor | None

    def __init__(self, *, mean: Sequence[float] | None, std: Sequence[float] | None) -> None:
        super().__init__()
        mean_t, std_t = check_mean_std(mean, std)
        if mean_t is None:
            self.register_buffer("mean", None, persistent=False)
            self.register_buffer("std", None, persistent=False)
        else:
            self.register_buffer("mean", torch.tensor(mean_t).view(1, 3, 1, 1), persistent=False)
            self.register_buffer("std", torch.tensor(std_t).view(1, 3, 1, 1), persistent=False)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Check the input layout and apply ``(x - mean) / std`` when statistics are held.

        Args:
            x: images in [0,1], shape (N, 3, H, W).

        Returns:
            Normalized images, shape (N, 3, H, W); ``x`` itself when mean/std are None.
        """
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(
                f"expected images of shape (N, 3, H, W) in [0,1], got shape {tuple(x.shape)}; "
                "add a batch dimension with x.unsqueeze(0) or convert grayscale to RGB"
            )
        if self.mean is None:
            return x
        return (x - self.mean) / self.std
