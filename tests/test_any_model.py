"""Measures of any model on any inputs with any loss: a tabular MLP, a sequence model, a
custom loss, BatchNorm re-estimated at the perturbed point, and landscapes in channels_last,
each against a straightforward reference computed in the test."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from analysis.config import FlatnessConfig
from analysis.flatness_units import compute_unit
from analysis.noise import draw_noise, noise_scales
from awp.evaluate import attack_outcomes, evaluate_attack
from awp.hessian import LossHessian, loss_batches, top_eigenpairs
from awp.modes import bn_recomputed, recompute_bn_stats
from awp.perturb import select_params
from awp.seeds import generator_for
from landscape.directions import random_direction
from landscape.grid import make_grid
from landscape.surface import EvalSet, compute_surface
from tests.helpers import assert_same_state, snapshot, tiny_batch, tiny_model


class TabularMLP(nn.Module):
    """(N, 8) features -> 3 classes, with a BatchNorm1d so the BN choices matter."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 6)
        self.bn = nn.BatchNorm1d(6)
        self.fc2 = nn.Linear(6, 3)

    def forward(self, x):
        return self.fc2(torch.tanh(self.bn(self.fc1(x))))


class TinySequence(nn.Module):
    """Token ids (N, T) -> per-position scores (N, V, T): a next-token model."""

    def __init__(self, vocab: int = 7, dim: int = 5) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.mix = nn.Conv1d(dim, dim, 3, padding=1)
        self.out = nn.Linear(dim, vocab)

    def forward(self, tokens):
        h = self.embed(tokens).transpose(1, 2)  # (N, D, T)
        h = torch.tanh(self.mix(h)).transpose(1, 2)  # (N, T, D)
        return self.out(h).transpose(1, 2)  # (N, V, T)


def tabular(n=24, seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    model = TabularMLP().to(dtype).eval()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.3, 0.3)
        model.bn.running_var.uniform_(0.5, 1.5)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(n, 8, generator=g, dtype=dtype)
    y = torch.randint(0, 3, (n,), generator=g)
    return model, x, y


def moved(model, direction, alpha):
    """Reference: a copy of the model with w0 + alpha d loaded into it by hand."""
    ref = copy.deepcopy(model)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for name, t in direction.items():
        state[name] = state[name] + alpha * t
    ref.load_state_dict(state)
    return ref


def test_custom_losses_scalar_or_per_example_give_the_sums_by_hand():
    model, x, y = tabular()
    targets = F.one_hot(y, 3).double()  # a regression target: no accuracy

    def mse(out, t):  # a scalar: the batch's mean
        return F.mse_loss(out, t)

    out = attack_outcomes(model, x, targets, None, batch_size=5, loss=mse)
    with torch.no_grad():
        logits = model(x)
    want = sum(float(F.mse_loss(logits[s : s + 5], targets[s : s + 5])) * len(targets[s : s + 5])
               for s in range(0, 24, 5))  # fmt: skip
    assert out.loss_sum == pytest.approx(want, rel=1e-12)
    assert not out.classified and out.correct.sum() == 0
    assert np.isnan(evaluate_attack(model, x, targets, None, batch_size=5, loss=mse).accuracy)

    def per_example(out, t):  # (B,) values
        return F.cross_entropy(out, t, reduction="none") * 2

    out = attack_outcomes(model, x, y, None, batch_size=7, loss=per_example)
    ref = F.cross_entropy(logits, y, reduction="none").double() * 2
    assert torch.allclose(out.loss, ref, rtol=1e-12) and out.classified
    assert torch.equal(out.correct, logits.argmax(1) == y)
    # the default stays cross-entropy, exactly as before
    default = attack_outcomes(model, x, y, None, batch_size=7)
    assert default.loss_sum == pytest.approx(float(F.cross_entropy(logits, y, reduction="sum")))
    with pytest.raises(ValueError, match=r"must return a scalar tensor.*\(7,\)"):
        attack_outcomes(model, x, y, None, batch_size=7, loss=lambda o, t: o)


def test_clean_landscape_of_a_tabular_model_matches_models_built_by_hand():
    model, x, y = tabular()
    before = snapshot(model)
    es = EvalSet("test", x, y)
    d = random_direction(model, seed=3, include="all")
    alphas = np.array([-0.5, 0.0, 0.25, 1.0])

    def smooth_ce(out, t):
        return F.cross_entropy(out, t, label_smoothing=0.1)

    got = compute_surface(model, [d], make_grid("1d", alphas), [es], batch_size=10, loss=smooth_ce)
    for j, a in enumerate(alphas):
        ref = moved(model, d, a)
        with torch.no_grad():
            logits = ref(x)
        want = sum(float(smooth_ce(logits[s : s + 10], y[s : s + 10])) * len(y[s : s + 10])
                   for s in range(0, 24, 10)) / 24  # fmt: skip
        assert got.values["test_loss"][0, j] == pytest.approx(want, rel=1e-12)
        acc = float((logits.argmax(1) == y).double().mean())
        assert got.values["test_acc"][0, j] == acc
    assert_same_state(model, before)


def test_clean_landscape_of_a_sequence_model_on_token_ids():
    torch.manual_seed(0)
    model = TinySequence().double().eval()
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 7, (6, 9), generator=g)  # (N, T) int64 inputs
    targets = torch.randint(0, 7, (6, 9), generator=g)  # (N, T): the default CE takes (N, V, T)
    d = random_direction(model, seed=0)
    got = compute_surface(
        model, [d], make_grid("1d", np.array([0.0, 0.5])), [EvalSet("test", tokens, targets)]
    )
    for j, a in enumerate((0.0, 0.5)):
        with torch.no_grad():
            scores = moved(model, d, a)(tokens)
        want = float(F.cross_entropy(scores, targets, reduction="sum")) / 6
        assert got.values["test_loss"][0, j] == pytest.approx(want, rel=1e-12)
        # an example is right when every position is
        right = (scores.argmax(1) == targets).all(1).double().mean()
        assert got.values["test_acc"][0, j] == float(right)


def test_hessian_top_eigenvalue_of_a_tabular_model_with_a_custom_loss():
    model, x, y = tabular(n=20)
    model.eval()

    def loss(out, t):
        return F.cross_entropy(out, t) + 0.1 * out.square().mean()

    data = loss_batches(model, x, y, attack=None, batch_size=6, loss=loss)
    params = select_params(model)  # fc1.weight, fc2.weight
    op = LossHessian(model, data, params, method="double")
    top = top_eigenpairs(op, k=1, tol=1e-10)
    # Reference: the dense Hessian of the mean loss over all 20 examples, by autograd.
    names = list(params)
    shapes = [params[n].shape for n in names]
    flat0 = torch.cat([params[n].detach().reshape(-1) for n in names])

    def mean_loss(flat):
        chunks, start = {}, 0
        for n, s in zip(names, shapes):
            k = int(np.prod(s))
            chunks[n] = flat[start : start + k].view(s)
            start += k
        out = torch.func.functional_call(model, chunks, (x,))
        return loss(out, y)

    dense = torch.autograd.functional.hessian(mean_loss, flat0)
    assert top.values[0] == pytest.approx(float(torch.linalg.eigvalsh(dense)[-1]), rel=1e-7)
    assert data.loss == pytest.approx(float(mean_loss(flat0).detach()), rel=1e-12)
    for method in ("jvp", "graph"):
        v = torch.randn(op.size, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
        other = LossHessian(model, data, params, method=method).matvec(v)
        assert torch.allclose(other, dense @ v, rtol=1e-9, atol=1e-12)


def test_batchnorm_recomputed_at_the_point_and_given_back():
    model, x, y = tabular()
    before = snapshot(model)
    bn_x = torch.randn(16, 8, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    with bn_recomputed(model, bn_x, batch_size=8):
        # the running statistics are the mean of the two half batches' statistics
        with torch.no_grad():
            h = model.fc1(bn_x)
        halves = [h[:8], h[8:]]
        assert torch.allclose(model.bn.running_mean, sum(t.mean(0) for t in halves) / 2)
        assert torch.allclose(model.bn.running_var, sum(t.var(0) for t in halves) / 2)
    assert_same_state(model, before)
    with pytest.raises(ValueError, match="at least 2"):
        with bn_recomputed(model, bn_x[:1], batch_size=8):
            pass


def test_flatness_units_with_a_loss_and_batchnorm_recomputed_at_every_draw():
    model, x, y = tabular()
    before = snapshot(model)
    bn_x = torch.randn(16, 8, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    cfg = FlatnessConfig(attack=None, samples=2, alphas=(0.1,), batch_size=8)

    def loss(out, t):
        return F.cross_entropy(out, t, reduction="none")

    rec = compute_unit(model, x, y, "expected|alpha=0.1|k=1", cfg=cfg, loss=loss, bn_x=bn_x)
    # Reference by hand: w + u_1, the statistics re-estimated there, the loss summed.
    params = select_params(model, cfg.params)
    u = draw_noise(
        params,
        noise_scales(params, alpha=0.1, mode=cfg.noise),
        generator=generator_for(0, "noise", 1),
    )
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for n, p in select_params(ref, cfg.params).items():
            p.add_(u[n])
    recompute_bn_stats(ref, bn_x, batch_size=8)
    with torch.no_grad():
        logits = ref(x)
    assert rec["loss_sum"] == pytest.approx(float(loss(logits, y).sum()), rel=1e-12)
    assert rec["errors"] == int((logits.argmax(1) != y).sum())
    base = compute_unit(model, x, y, "base", cfg=cfg, loss=loss, bn_x=bn_x)
    eval_mode = compute_unit(model, x, y, "base", cfg=cfg, loss=loss)
    assert base["loss_sum"] != pytest.approx(eval_mode["loss_sum"])  # the statistics matter
    assert_same_state(model, before)


def test_landscape_points_run_in_channels_last_on_the_cpu_with_the_same_numbers():
    model = tiny_model(channels=8)
    x, y = tiny_batch(16, seed=1, size=12)
    es = EvalSet("test", x, y)
    d = random_direction(model, seed=0)
    alphas = np.array([-1.0, 0.5])
    seen = []

    def spy(out, t):  # what layout the conv weights have while a point is measured
        seen.append(model.conv1.weight.is_contiguous(memory_format=torch.channels_last))
        return F.cross_entropy(out, t)

    got = compute_surface(model, [d], make_grid("1d", alphas), [es], batch_size=8, loss=spy)
    assert seen and all(seen)
    assert model.conv1.weight.is_contiguous()  # given back in its own layout
    for j, a in enumerate(alphas):
        want = evaluate_attack(moved(model, d, a), x, y, None, batch_size=8).loss  # contiguous
        # float32 rounding of the same sums in another order: 1e-5 relative is far above it
        assert got.values["test_loss"][0, j] == pytest.approx(want, rel=1e-5)
