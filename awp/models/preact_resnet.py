"""PreAct ResNet-18 with the parameter names of the official AWP / robust_overfitting code."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from awp.data import CIFAR10_MEAN, CIFAR10_STD
from awp.models._common import Normalized, scale_channels


class PreActBlock(nn.Module):
    """Pre-activation basic block: BN-ReLU before each 3x3 conv, 1x1 conv shortcut when needed.

    Reference: He et al., "Identity Mappings in Deep Residual Networks", ECCV 2016; names follow
    github.com/csdongxian/AWP (AT_AWP/preactresnet.py, from locuslab/robust_overfitting).
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        # Only where the identity cannot be added; a Sequential so the key is `shortcut.0.weight`.
        self.shortcut: nn.Sequential | None = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        # The projection shortcut sees the pre-activated input, as in the official block.
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet(Normalized):
    """Pre-activation ResNet for 32x32-style images; normalization is its first step.

    Args:
        num_blocks: blocks per stage, four stages of 64/128/256/512 channels (times width).
        num_classes: number of output logits, >= 2.
        width: channel multiplier, > 0; 1.0 gives the official shapes.
        mean: per-channel mean for input normalization, length 3, or None for raw [0,1] input.
        std: per-channel std, length 3, > 0, or None (together with mean).

    Reference: github.com/csdongxian/AWP (AT_AWP/preactresnet.py). The official head uses
    ``avg_pool2d(out, 4)``; we pool adaptively to 1x1, identical at 32x32, so other sizes work.
    """

    def __init__(
        self,
        num_blocks: Sequence[int] = (2, 2, 2, 2),
        num_classes: int = 10,
        *,
        width: float = 1.0,
        mean: Sequence[float] | None = CIFAR10_MEAN,
        std: Sequence[float] | None = CIFAR10_STD,
    ) -> None:
        super().__init__(mean=mean, std=std)
        if len(num_blocks) != 4 or any(int(n) < 1 for n in num_blocks):
            raise ValueError(f"num_blocks must be four counts >= 1, got {tuple(num_blocks)}")
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        stem = scale_channels(64, width)
        self.conv1 = nn.Conv2d(3, stem, 3, stride=1, padding=1, bias=False)
        in_planes = stem
        stages = []
        for base, n, stride in zip((64, 128, 256, 512), num_blocks, (1, 2, 2, 2), strict=True):
            planes = scale_channels(base, width)
            blocks = []
            for s in [stride] + [1] * (int(n) - 1):
                blocks.append(PreActBlock(in_planes, planes, s))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.bn = nn.BatchNorm2d(in_planes)
        self.linear = nn.Linear(in_planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for images in [0,1].

        Args:
            x: images, shape (N, 3, H, W), values in [0,1].

        Returns:
            Logits, shape (N, num_classes).
        """
        out = self.conv1(self.normalize(x))  # (N, 64w, H, W)
        out = self.layer1(out)
        out = self.layer2(out)
        out = self.layer3(out)
        out = self.layer4(out)  # (N, 512w, H/8, W/8)
        out = F.relu(self.bn(out))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)  # (N, 512w)
        return self.linear(out)


class PreActResNet18(PreActResNet):
    """PreAct ResNet-18 (two blocks per stage), the AT-AWP default architecture.

    Args:
        num_classes: number of output logits, >= 2.
        width: channel multiplier, > 0; 1.0 gives the official shapes (11.2M parameters).
        mean: per-channel mean for input normalization, length 3, or None for raw [0,1] input.
        std: per-channel std, length 3, > 0, or None (together with mean).

    Reference: github.com/csdongxian/AWP (AT_AWP/preactresnet.py, ``PreActResNet18``).
    """

    def __init__(
        self,
        num_classes: int = 10,
        *,
        width: float = 1.0,
        mean: Sequence[float] | None = CIFAR10_MEAN,
        std: Sequence[float] | None = CIFAR10_STD,
    ) -> None:
        super().__init__((2, 2, 2, 2), num_classes, width=width, mean=mean, std=std)
