"""VGG-19 with BatchNorm for 32x32-style images (CIFAR layout: conv features + one linear layer)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from awp.data import CIFAR10_MEAN, CIFAR10_STD
from awp.models._common import Normalized, scale_channels

# Configuration E of Simonyan & Zisserman: output channels of each 3x3 conv, "M" = 2x2 max pool.
VGG19_CONFIG: tuple[int | str, ...] = (
    64, 64, "M",
    128, 128, "M",
    256, 256, 256, 256, "M",
    512, 512, 512, 512, "M",
    512, 512, 512, 512, "M",
)  # fmt: skip


class VGG19(Normalized):
    """VGG-19-BN: ``features`` (conv3x3 with bias, BatchNorm, ReLU; max pools) and a linear head.

    Parameter names are ``features.{i}.weight|bias`` (conv at i = 0, 3, 7, 10, ...; BatchNorm
    at i + 1) and ``classifier.weight|bias`` (512 -> num_classes), the CIFAR VGG layout
    (kuangliu/pytorch-cifar style) found next to the AWP code in an AT_AWP fork; the official
    csdongxian/AWP repository itself ships no VGG file that we could read.

    Args:
        num_classes: number of output logits, >= 2.
        width: channel multiplier, > 0; 1.0 gives the 64..512-channel shapes.
        mean: per-channel mean for input normalization, length 3, or None for raw [0,1] input.
        std: per-channel std, length 3, > 0, or None (together with mean).

    Reference: Simonyan & Zisserman, "Very Deep Convolutional Networks", ICLR 2015 (config E).
    After the five pools a 32x32 input is 1x1; we average-pool adaptively to 1x1 so that other
    input sizes still give 512 features (identical at 32x32).
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
        layers: list[nn.Module] = []
        in_channels = 3
        for item in VGG19_CONFIG:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                out_channels = scale_channels(int(item), width)
                layers += [
                    nn.Conv2d(in_channels, out_channels, 3, padding=1),
                    nn.BatchNorm2d(out_channels),
                    nn.ReLU(inplace=True),
                ]
                in_channels = out_channels
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(in_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for images in [0,1].

        Args:
            x: images, shape (N, 3, H, W), values in [0,1]; H and W at least 32 (five pools).

        Returns:
            Logits, shape (N, num_classes).
        """
        x = self.normalize(x)
        if min(x.shape[-2:]) < 32:
            raise ValueError(
                f"VGG19 halves the resolution five times and needs H, W >= 32, got "
                f"{tuple(x.shape[-2:])}; upsample the input or use another model"
            )
        out = self.features(x)  # (N, 512w, H/32, W/32)
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)  # (N, 512w)
        return self.classifier(out)
