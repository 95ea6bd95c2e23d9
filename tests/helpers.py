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


def synthetic_images(
    n: int, classes: int = 3, size: int = 8, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Learnable uint8 images: class c brightens channel c % 3 and a class-specific stripe."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    y = y[torch.randperm(n, generator=g)]
    x = torch.randint(0, 120, (n, 3, size, size), generator=g)
    for c in range(classes):
        m = y == c
        x[m, c % 3] += 100
        x[m, :, (2 * c) % size, :] += 35
    return x.clamp(0, 255).to(torch.uint8), y


def synthetic_bundle(
    n_train: int = 96,
    n_val: int = 32,
    n_test: int = 32,
    classes: int = 3,
    size: int = 8,
    seed: int = 0,
):
    """A DataBundle of synthetic images (no files)."""
    from awp.data import DataBundle, Split

    x, y = synthetic_images(n_train + n_val + n_test, classes, size, seed)
    a, b = n_train, n_train + n_val
    return DataBundle(
        train=Split(x[:a], y[:a]),
        val=Split(x[a:b], y[a:b]),
        test=Split(x[b:], y[b:]),
        classes=tuple(f"c{i}" for i in range(classes)),
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
        name="synthetic",
    )


def make_image_folder(
    root, classes: int = 3, n_train: int = 24, n_test: int = 9, size: int = 8, seed: int = 0
):
    """Write a tiny ImageFolder dataset (lossless PNG) under ``root``; returns ``root``."""
    from pathlib import Path

    from PIL import Image

    root = Path(root)
    for split, n, s in (("train", n_train, seed), ("test", n_test, seed + 1)):
        x, y = synthetic_images(n, classes, size, s)
        for i in range(n):
            d = root / split / f"class{int(y[i])}"
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(x[i].permute(1, 2, 0).numpy()).save(d / f"{i:04d}.png")
    return root


def write_pid_and_sleep(path: str, seconds: float) -> None:
    """A job that says where it runs and then waits (tests of a launcher's cancellation)."""
    import os
    import time
    from pathlib import Path

    Path(path).write_text(str(os.getpid()))
    time.sleep(seconds)
