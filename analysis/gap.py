"""The robust generalization gap: robust accuracy on train minus robust accuracy on test.

Both accuracies use the same attack (PGD-20 at 8/255 by default) with the same seed, eval
mode, no augmentation and the unperturbed weights, on a fixed seeded subset of each split, so
checkpoints of different runs and epochs are measured alike. The robust loss gap is the test
robust cross-entropy minus the train one (both gaps are positive when the model overfits).

Reference: Rice, Wong, Kolter, "Overfitting in Adversarially Robust Deep Learning", ICML 2020;
Wu, Xia, Wang, NeurIPS 2020 (robust generalization gap, Sec. 3).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from analysis.config import GapConfig as GapConfig
from awp.config import PGD20_EVAL, AttackConfig
from awp.data import Split, capped_notice, fixed_subset
from awp.evaluate import evaluate_attack
from awp.modes import cpu_channels_last


def subset(split: Split, n: int, *, seed: int, flag: str = "") -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed seeded subset of ``n`` examples of a split (all for n = 0): (x, y).

    A request larger than the split takes all of it, and ``flag`` (the setting's name, e.g.
    ``--n-examples``) is named in a notice that says so.
    """
    capped_notice(n, len(split), flag=flag)
    idx = fixed_subset(len(split), n, seed=seed) if n else torch.arange(len(split))
    idx = idx.to(split.x.device)
    return split.x[idx], split.y[idx]


@dataclass(frozen=True)
class GapRecord:
    """Robust and natural accuracies (fractions) and robust losses (nats) on both subsets."""

    train_robust_acc: float
    test_robust_acc: float
    gap: float  # train_robust_acc - test_robust_acc
    train_robust_loss: float
    test_robust_loss: float
    loss_gap: float  # test_robust_loss - train_robust_loss
    train_nat_acc: float
    test_nat_acc: float
    nat_gap: float  # train_nat_acc - test_nat_acc
    n_train: int
    n_test: int


def robust_gap(
    model: nn.Module,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    *,
    attack: AttackConfig = PGD20_EVAL,
    batch_size: int = 256,
    seed: int = 0,
) -> GapRecord:
    """Robust (and natural) accuracy and loss on a train and a test subset, and their gaps.

    Args:
        model: classifier on [0, 1] images (its mode and weights are left unchanged).
        x_train, x_test: (N, C, H, W) uint8 or float in [0, 1]; y_train, y_test: (N,) labels,
            on the model's device.
        attack: the attack for both splits; batch_size: per pass; seed: the attack's start,
            the same for both splits on purpose (common random numbers: the same images on
            both sides give a gap of exactly zero).

    Returns:
        :class:`GapRecord`.
    """
    if len(y_train) == 0 or len(y_test) == 0:
        raise ValueError("the train or the test subset is empty: the gap needs both")
    # channels_last on the CPU: faster, the same numbers to float32 rounding (awp.modes)
    with cpu_channels_last(model):
        tr = evaluate_attack(model, x_train, y_train, attack, batch_size=batch_size, seed=seed)
        te = evaluate_attack(model, x_test, y_test, attack, batch_size=batch_size, seed=seed)
        trn = evaluate_attack(model, x_train, y_train, None, batch_size=batch_size, seed=seed)
        ten = evaluate_attack(model, x_test, y_test, None, batch_size=batch_size, seed=seed)
    return GapRecord(
        train_robust_acc=tr.accuracy,
        test_robust_acc=te.accuracy,
        gap=tr.accuracy - te.accuracy,
        train_robust_loss=tr.loss,
        test_robust_loss=te.loss,
        loss_gap=te.loss - tr.loss,
        train_nat_acc=trn.accuracy,
        test_nat_acc=ten.accuracy,
        nat_gap=trn.accuracy - ten.accuracy,
        n_train=tr.n,
        n_test=te.n,
    )
