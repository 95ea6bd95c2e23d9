"""Tiny seeded models and data shared by the tests."""

from __future__ import annotations

import torch
from torch import nn


class TinyNet(nn.Module):
    """Conv-BN-ReLU-Conv-BN-ReLU-pool-Linear: has every parameter kind AWP must handle."""

    def __init__(self, num_classes: int = 3, channels: int = 4) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=True)
        self.bn2 = nn.BatchNorm2d(channels)
        self.linear = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn2(self.conv2(out)))
        return self.linear(out.mean((2, 3)))


def tiny_model(seed: int = 0, dtype: torch.dtype = torch.float32, **kw) -> TinyNet:
    torch.manual_seed(seed)
    model = TinyNet(**kw).to(dtype)
    # Non-trivial BatchNorm statistics, so "buffers unchanged" is a real check.
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model


def tiny_batch(
    n: int = 8, seed: int = 0, classes: int = 3, size: int = 8, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, size, size, generator=g, dtype=dtype)
    y = torch.randint(0, classes, (n,), generator=g)
    return x, y


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_state(model: nn.Module, snap: dict[str, torch.Tensor]) -> None:
    for k, v in model.state_dict().items():
        assert torch.equal(v, snap[k]), f"{k} changed"
