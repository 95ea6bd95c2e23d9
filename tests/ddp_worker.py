"""Run under ``torchrun --nproc_per_node 2`` by tests/test_ddp.py (not a test module itself).

    torchrun --standalone --nproc_per_node 2 tests/ddp_worker.py OUT

writes, under OUT, the runs that test_ddp.py compares with 1-process runs and with each other:
``equal_<method>/`` (a BatchNorm-free model, deterministic attack start: 2 processes must give
the 1-process weights), and ``full/``, ``cut/`` (interrupted after epoch 2, then resumed) of a
BatchNorm model with random starts (exact resume of a distributed run).
"""

from __future__ import annotations

import dataclasses
import pathlib
import sys

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from awp.data import DataConfig  # noqa: E402
from awp.models import ModelConfig  # noqa: E402
from awp.train import TrainConfig, train  # noqa: E402
from tests.helpers import synthetic_bundle  # noqa: E402


class BNFreeNet(nn.Module):
    """Conv-ReLU-Conv-ReLU-pool-Linear without BatchNorm, computing in float64.

    Without BatchNorm nothing couples the examples of a batch, so a rank's slice gives exactly
    its share of the global batch's gradient; float64 keeps the two summation orders (one
    process vs an all-reduce of two halves) within ~1e-15 of each other.
    """

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 8, 3, stride=2, padding=1)
        self.linear = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.conv1.weight.dtype)
        out = F.relu(self.conv1(x))
        out = F.relu(self.conv2(out))
        return self.linear(out.mean((2, 3)))


def bn_free_model(seed: int = 0) -> BNFreeNet:
    torch.manual_seed(seed)
    return BNFreeNet().double()


# 30 examples in batches of 15: slices of 8 and 7 examples, so the uneven-slice weighting counts.
def equal_config(out, method: str) -> TrainConfig:
    return TrainConfig(
        out=str(out),
        data=DataConfig(dataset="synthetic-in-memory", val_size=0),
        model=ModelConfig("smallcnn"),
        method=method,
        awp=True,
        gamma=0.01,
        awp_warmup=0,
        awp_steps=2,
        awp_alternations=2 if method == "at" else 1,
        attack_start="none",
        epochs=2,
        batch_size=15,
        lr=0.05,
        attack_steps=2,
        step_size=4 / 255,
        eval_steps=2,
        train_eval_size=16,
        eval_batch_size=32,
        seed=0,
        device="cpu",
    )


# SAM, ASAM and RWP with an EMA, on the same uneven slices: the ascents' gradients all-reduced
# and weighted by the slices, the EMA of identical weights on every rank.
METHODS = ("at-sam", "at-asam", "at-rwp")


def method_config(out, name: str) -> TrainConfig:
    rwp = dict(rwp_steps=3, c_min=1.1, gamma=0.01) if name.endswith("rwp") else {}
    return TrainConfig(
        out=str(out),
        data=DataConfig(dataset="synthetic-in-memory", val_size=0),
        model=ModelConfig("smallcnn"),
        method=name,
        ema=True,
        ema_decay=0.5,
        attack_start="none",
        epochs=2,
        batch_size=15,
        lr=0.05,
        attack_steps=2,
        step_size=4 / 255,
        eval_steps=2,
        train_eval_size=16,
        eval_batch_size=32,
        seed=0,
        device="cpu",
        **rwp,
    )


def resume_config(out) -> TrainConfig:
    return TrainConfig(
        out=str(out),
        data=DataConfig(dataset="synthetic-in-memory", val_size=0),
        model=ModelConfig("smallcnn"),
        awp=True,
        awp_warmup=1,
        epochs=3,
        batch_size=16,
        lr=0.05,
        attack_steps=2,
        step_size=4 / 255,
        eval_steps=2,
        train_eval_size=16,
        eval_batch_size=32,
        seed=0,
        device="cpu",
    )


def data():
    return synthetic_bundle(n_train=30, n_val=8, n_test=8)


def main(out: pathlib.Path) -> None:
    torch.distributed.init_process_group("gloo")  # train() joins it and leaves it open
    for method in ("at", "trades", "mart"):
        train(
            equal_config(out / f"equal_{method}", method),
            progress=False,
            data=data(),
            model=bn_free_model(),
        )
    for name in METHODS:
        train(method_config(out / name, name), progress=False, data=data(), model=bn_free_model())
    # Gaussian augmentation: every rank draws the global batch's noise and keeps its slice
    noisy = dataclasses.replace(equal_config(out / "equal_at_noise", "at"), noise_sd=0.1)
    train(noisy, progress=False, data=data(), model=bn_free_model())
    cfg = resume_config(out / "full")
    train(cfg, progress=False, data=data())
    cut = dataclasses.replace(cfg, out=str(out / "cut"))

    def die(record):
        if record["epoch"] == 2:
            raise KeyboardInterrupt  # every rank stops after epoch 2 was saved

    try:
        train(cut, progress=False, data=data(), on_epoch=die)
    except KeyboardInterrupt:
        pass
    train(cut, resume=True, progress=False, data=data())
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(pathlib.Path(sys.argv[1]))
