"""A tiny convolutional classifier for tests and quick experiments on a CPU."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from awp.data import CIFAR10_MEAN, CIFAR10_STD
from awp.models._common import Normalized, scale_channels


class SmallCNN(Normalized):
    """Two 3x3 conv-BatchNorm-ReLU layers (16 and 32 channels, the second with stride 2),
    global average pooling and a linear head: about 5.4k parameters at width 1.

    It has the ingredients the AWP and landscape code must handle (conv and linear weights,
    biases, BatchNorm statistics) and runs in milliseconds on a CPU.

    Args:
        num_classes: number of output logits, >= 2.
        width: channel multiplier, > 0.
        mean: per-channel mean for input normalization, length 3, or None for raw [0,1] input.
        std: per-channel std, length 3, > 0, or None (together with mean).
    """

    def __init__(
        self,
        num_classes: int = 10,
        *,
        width: float = 1.0,
        mean: Sequence[float] | None = CIFAR10_MEAN,
        std: Sequence[float] | None = CIFAR10_STD,
    ) -> None:
        super().__init__(mean=mean, std=std)
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        c1, c2 = scale_channels(16, width), scale_channels(32, width)
        # No conv bias: the BatchNorm that follows would cancel it.
        self.conv1 = nn.Conv2d(3, c1, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c1)
        self.conv2 = nn.Conv2d(c1, c2, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c2)
        self.linear = nn.Linear(c2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for images in [0,1].

        Args:
            x: images, shape (N, 3, H, W), values in [0,1].

        Returns:
            Logits, shape (N, num_classes).
        """
        out = F.relu(self.bn1(self.conv1(self.normalize(x))))  # (N, 16w, H, W)
        out = F.relu(self.bn2(self.conv2(out)))  # (N, 32w, H/2, W/2)
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)  # (N, 32w)
        return self.linear(out)
