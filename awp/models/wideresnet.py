"""Wide ResNet (WRN-depth-k) with the parameter names of the official AWP / TRADES code."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from awp.data import CIFAR10_MEAN, CIFAR10_STD
from awp.models._common import Normalized, scale_channels


class WideBasicBlock(nn.Module):
    """Pre-activation wide basic block (BN-ReLU-conv3x3 twice) with an optional 1x1 shortcut.

    Reference: Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016; names follow the
    ``BasicBlock`` of github.com/csdongxian/AWP (from yaodongyu/TRADES and
    locuslab/robust_overfitting).
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        # The official code adds a shortcut conv only where in != out, which at width 1 is
        # exactly the first layer of each group. Tiny width multipliers can round in == out
        # while the stride is 2, where an identity cannot be added, hence the stride test too.
        self.equal_in_out = in_planes == out_planes and stride == 1
        self.convShortcut: nn.Conv2d | None = None
        if not self.equal_in_out:
            self.convShortcut = nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(x))
        # As in the official block: the projection shortcut sees the pre-activated input, the
        # identity shortcut the raw input. `out` is a fresh tensor, so the in-place ReLU never
        # overwrites x.
        shortcut = x if self.convShortcut is None else self.convShortcut(out)
        out = self.relu2(self.bn2(self.conv1(out)))
        out = self.conv2(out)
        return out + shortcut


class NetworkBlock(nn.Module):
    """A group of ``num_layers`` wide blocks, held as ``layer`` (official key ``block*.layer.i``).

    Args:
        num_layers: blocks in the group, >= 1.
        in_planes: input channels of the first block.
        out_planes: output channels of every block.
        stride: stride of the first block (1 or 2).
    """

    def __init__(self, num_layers: int, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        blocks = [WideBasicBlock(in_planes, out_planes, stride)]
        blocks += [WideBasicBlock(out_planes, out_planes, 1) for _ in range(num_layers - 1)]
        self.layer = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(Normalized):
    """WRN-depth-widen_factor for 32x32-style images; normalization is its first step.

    Args:
        depth: total depth, (depth - 4) % 6 == 0 (34 -> 5 blocks per group, 28 -> 4).
        num_classes: number of output logits, >= 2.
        widen_factor: k, multiplies the 16/32/64 group widths, >= 1.
        width: extra channel multiplier on every layer, > 0; 1.0 gives the official shapes.
        mean: per-channel mean for input normalization, length 3, or None for raw [0,1] input.
        std: per-channel std, length 3, > 0, or None (together with mean).

    Reference: github.com/csdongxian/AWP (wideresnet.py, from yaodongyu/TRADES). The official
    head uses ``avg_pool2d(out, 8)``; we pool adaptively to 1x1, identical at 32x32. Dropout
    (``dropRate``, 0 in AWP) is left out. TRADES-derived checkpoints may also carry unused
    ``sub_block1.*`` keys that this model does not have.
    """

    def __init__(
        self,
        depth: int = 34,
        num_classes: int = 10,
        widen_factor: int = 10,
        *,
        width: float = 1.0,
        mean: Sequence[float] | None = CIFAR10_MEAN,
        std: Sequence[float] | None = CIFAR10_STD,
    ) -> None:
        super().__init__(mean=mean, std=std)
        if depth < 10 or (depth - 4) % 6 != 0:
            raise ValueError(
                f"WideResNet depth must satisfy (depth - 4) % 6 == 0 and depth >= 10 "
                f"(e.g. 16, 22, 28, 34, 40), got depth={depth}"
            )
        if widen_factor < 1:
            raise ValueError(f"widen_factor must be an integer >= 1, got {widen_factor}")
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        n = (depth - 4) // 6
        channels = [
            scale_channels(c, width)
            for c in (16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        ]
        self.conv1 = nn.Conv2d(3, channels[0], 3, stride=1, padding=1, bias=False)
        self.block1 = NetworkBlock(n, channels[0], channels[1], 1)
        self.block2 = NetworkBlock(n, channels[1], channels[2], 2)
        self.block3 = NetworkBlock(n, channels[2], channels[3], 2)
        self.bn1 = nn.BatchNorm2d(channels[3])
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(channels[3], num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        # Official init: conv ~ N(0, 2 / (k*k*out_channels)) (Kaiming normal, fan_out),
        # BatchNorm weight 1 bias 0, linear bias 0 (linear weight keeps PyTorch's default).
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for images in [0,1].

        Args:
            x: images, shape (N, 3, H, W), values in [0,1].

        Returns:
            Logits, shape (N, num_classes).
        """
        out = self.conv1(self.normalize(x))  # (N, 16w, H, W)
        out = self.block1(out)  # (N, 16kw, H, W)
        out = self.block2(out)  # (N, 32kw, H/2, W/2)
        out = self.block3(out)  # (N, 64kw, H/4, W/4)
        out = self.relu(self.bn1(out))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)  # (N, 64kw)
        return self.fc(out)
