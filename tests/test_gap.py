"""Robust generalization gap: definition, fixed subsets, method labels, model left untouched."""

import pytest
import torch

from analysis.gap import GapConfig, robust_gap, subset
from awp.attacks import pgd
from awp.config import AttackConfig, method_of
from awp.data import Split, fixed_subset
from tests.helpers import assert_same_state, snapshot, synthetic_images, tiny_model

ATTACK = AttackConfig(steps=3, step_size=4 / 255, eps=12 / 255)


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_method_labels_from_the_training_config():
    assert method_of({"method": "at", "awp": True}) == "AT-AWP"
    assert method_of({"method": "at", "awp": False}) == "AT"
    assert method_of({"method": "trades"}) == "TRADES"
    assert method_of({"method": "mart", "awp": True}) == "MART-AWP"
    assert method_of({"awp": True}) == "AT-AWP"  # method defaults to at
    assert method_of({}) == method_of(None) == "unknown"


def test_subsets_are_fixed_seeded_and_n0_takes_all():
    x, y = synthetic_images(50, 3, 8, 0)
    split = Split(x, y)
    a, ya = subset(split, 10, seed=3)
    b, yb = subset(split, 10, seed=3)
    assert torch.equal(a, b) and torch.equal(ya, yb) and len(ya) == 10
    idx = fixed_subset(50, 10, seed=3)  # the same rule as the training run's subsets
    assert torch.equal(a, x[idx]) and len(set(idx.tolist())) == 10
    full, yfull = subset(split, 0, seed=3)
    assert torch.equal(full, x) and torch.equal(yfull, y)


def _reference_accuracy(model, x, y, attack, seed, batch_size):
    """Accuracy written out: PGD per batch with one seeded generator, eval-mode forward."""
    g = torch.Generator().manual_seed(seed)
    correct = 0
    for s in range(0, len(y), batch_size):
        xb = x[s : s + batch_size].float() / 255
        yb = y[s : s + batch_size]
        xa = pgd(
            model, xb, yb, eps=attack.eps, step_size=attack.step_size, steps=attack.steps,
            generator=g,
        )  # fmt: skip
        was = model.training
        model.eval()
        with torch.no_grad():
            correct += int((model(xa).argmax(1) == yb).sum())
        model.train(was)
    return correct / len(y)


def test_gap_is_train_minus_test_robust_accuracy_with_the_same_attack():
    model = tiny_model(4)
    model.train()
    snap = snapshot(model)
    xtr, ytr = synthetic_images(40, 3, 8, 1)
    xte, yte = synthetic_images(30, 3, 8, 2)
    r = robust_gap(model, xtr, ytr, xte, yte, attack=ATTACK, batch_size=16, seed=5)
    train_acc = _reference_accuracy(model, xtr, ytr, ATTACK, 5, 16)
    test_acc = _reference_accuracy(model, xte, yte, ATTACK, 5, 16)
    assert r.train_robust_acc == pytest.approx(train_acc)
    assert r.test_robust_acc == pytest.approx(test_acc)
    assert r.gap == pytest.approx(train_acc - test_acc)
    assert r.loss_gap == pytest.approx(r.test_robust_loss - r.train_robust_loss)
    assert r.nat_gap == pytest.approx(r.train_nat_acc - r.test_nat_acc)
    assert r.train_robust_acc <= r.train_nat_acc and (r.n_train, r.n_test) == (40, 30)
    assert_same_state(model, snap)
    assert model.training


def test_same_data_on_both_sides_gives_a_zero_gap():
    model = tiny_model(5)
    x, y = synthetic_images(24, 3, 8, 3)
    r = robust_gap(model, x, y, x, y, attack=ATTACK, batch_size=8, seed=0)
    assert r.gap == 0.0 and r.loss_gap == 0.0


def test_bad_input():
    model = tiny_model(0)
    x, y = synthetic_images(4, 3, 8, 0)
    with pytest.raises(ValueError, match="empty"):
        robust_gap(model, x[:0], y[:0], x, y)
    with pytest.raises(ValueError, match="n_train"):
        GapConfig(n_train=-1)
