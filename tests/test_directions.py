"""Directions: filter normalization against a loop, seeds, orthogonality, target and AWP."""

import copy

import pytest
import torch
import torch.nn.functional as F

from awp.config import AttackConfig
from awp.perturb import select_params, weight_ascent
from landscape.directions import (
    awp_direction,
    check_direction,
    cosine,
    normalize_direction,
    orthogonalize,
    random_direction,
    target_direction,
)
from tests.helpers import assert_same_state, snapshot, tiny_batch, tiny_model


def filter_norms_loop(t: torch.Tensor) -> list[float]:
    """Reference: the norm of every output filter t[i], one at a time."""
    if t.dim() == 1:
        return [float(t.norm())]  # 1-D tensors have no filters: one unit
    return [float(t[i].norm()) for i in range(t.shape[0])]


def test_filter_normalized_direction_has_the_weights_filter_norms():
    model = tiny_model(dtype=torch.float64)
    d = random_direction(model, seed=3, norm="filter", include="all")
    params = dict(model.named_parameters())
    for name, t in d.items():
        want = filter_norms_loop(params[name].detach())
        got = filter_norms_loop(t)
        assert got == pytest.approx(want, rel=1e-9), name


def test_layer_and_none_normalization():
    model = tiny_model(dtype=torch.float64)
    params = select_params(model)
    raw = {n: torch.randn(p.shape, dtype=p.dtype) for n, p in params.items()}
    layer = normalize_direction(raw, params, norm="layer")
    none = normalize_direction(raw, params, norm="none")
    for n, p in params.items():
        assert float(layer[n].norm()) == pytest.approx(float(p.detach().norm()), rel=1e-9)
        # Same direction as the draw, only rescaled.
        assert torch.allclose(layer[n] / layer[n].norm(), raw[n] / raw[n].norm())
        assert torch.equal(none[n], raw[n])
    with pytest.raises(ValueError, match="normalization"):
        normalize_direction(raw, params, norm="weight")


def test_random_direction_draws_from_a_cpu_generator_per_seed():
    model = tiny_model()
    d = random_direction(model, seed=5, norm="none")
    # Reference: one CPU generator, a draw for every parameter in model order.
    g = torch.Generator().manual_seed(5)
    ref = {n: torch.randn(p.shape, generator=g, dtype=p.dtype) for n, p in model.named_parameters()}
    assert set(d) == {"conv1.weight", "conv2.weight", "linear.weight"}
    for n in d:
        assert torch.equal(d[n], ref[n])
    again = random_direction(model, seed=5, norm="filter")
    assert all(torch.equal(again[n], random_direction(model, seed=5)[n]) for n in again)
    other = random_direction(model, seed=6)
    assert not torch.equal(other["conv1.weight"], again["conv1.weight"])


def test_biases_and_batchnorm_are_zero_by_default_and_included_on_request():
    model = tiny_model()
    weights_only = random_direction(model, seed=1)
    everything = random_direction(model, seed=1, include="all")
    assert set(weights_only) == set(select_params(model))
    assert set(everything) == {n for n, _ in model.named_parameters()}
    # Including biases does not change the conv/linear draws.
    for n in weights_only:
        assert torch.equal(weights_only[n], everything[n])
    # BatchNorm buffers are never part of a random direction.
    assert not any("running" in n or "num_batches" in n for n in everything)


def test_orthogonalized_second_direction():
    model = tiny_model(dtype=torch.float64)
    params = dict(model.named_parameters())
    for norm in ("filter", "layer", "none"):
        d1 = random_direction(model, seed=0, norm=norm, include="all")
        d2 = random_direction(model, seed=1, norm=norm, include="all")
        assert abs(cosine(d1, d2)) > 1e-4  # not orthogonal by chance
        d2o = orthogonalize(d2, d1, params, norm=norm)
        assert abs(cosine(d1, d2o)) < 1e-12, norm
        if norm == "filter":
            for n, t in d2o.items():
                assert filter_norms_loop(t) == pytest.approx(
                    filter_norms_loop(params[n].detach()), rel=1e-9
                )


def test_target_direction_covers_the_whole_state():
    a, b = tiny_model(seed=0), tiny_model(seed=1)
    sa, sb = a.state_dict(), b.state_dict()
    d = target_direction(sa, sb)
    assert "bn1.running_mean" in d and "bn1.running_var" in d
    assert "bn1.num_batches_tracked" not in d  # integers stay at A's
    for n, t in d.items():
        assert torch.equal(sa[n] + t, sa[n] + (sb[n] - sa[n]))
    del sb["linear.bias"]
    with pytest.raises(ValueError, match="different state entries"):
        target_direction(sa, sb)
    wide = tiny_model(seed=1, channels=5).state_dict()
    with pytest.raises(ValueError, match="same architecture"):
        target_direction(sa, wide)


def test_awp_direction_is_the_awp_perturbation_with_gamma_one():
    model = tiny_model(dtype=torch.float64)
    x, y = tiny_batch(16, dtype=torch.float64)
    model.train()  # the caller's mode must survive
    before = snapshot(model)
    d = awp_direction(model, x, y, attack=None, batch_size=5)  # 4 batches, summed
    assert model.training and all(p.grad is None for p in model.parameters())
    assert_same_state(model, before)
    # Reference 1: the AWP perturbation of awp.perturb on the whole batch in eval mode.
    ref_model = copy.deepcopy(model).eval()
    v = weight_ascent(lambda: F.cross_entropy(ref_model(x), y), select_params(ref_model), gamma=1.0)
    # Reference 2: ||w|| g / ||g|| written out.
    loss = F.cross_entropy(ref_model(x), y)
    loss.backward()
    for n, p in select_params(ref_model).items():
        direct = p.norm() * p.grad / p.grad.norm()
        assert torch.allclose(d[n], v[n], rtol=1e-9, atol=1e-12), n
        assert torch.allclose(d[n], direct, rtol=1e-9, atol=1e-12), n


def test_awp_direction_with_attack_raises_the_adversarial_loss():
    model = tiny_model(dtype=torch.float64).eval()
    x, y = tiny_batch(16, dtype=torch.float64)
    attack = AttackConfig(steps=3, eps=8 / 255, step_size=2 / 255)
    d = awp_direction(model, x, y, attack=attack, generator=torch.Generator().manual_seed(0))
    params = select_params(model)
    with torch.no_grad():
        base = F.cross_entropy(model(x), y)
        for n, p in params.items():
            p.add_(1e-3 * d[n])
        moved = F.cross_entropy(model(x), y)
    assert moved > base  # an ascent direction


def test_check_direction_errors():
    model = tiny_model()
    d = random_direction(model, seed=0)
    check_direction(d, model)
    with pytest.raises(KeyError, match="not in the model"):
        check_direction({"nope.weight": torch.zeros(1)}, model)
    with pytest.raises(ValueError, match="shape"):
        check_direction({"conv1.weight": torch.zeros(2, 2)}, model)
    bad = dict(d)
    bad["conv1.weight"] = torch.full_like(d["conv1.weight"], float("nan"))
    with pytest.raises(ValueError, match="non-finite"):
        check_direction(bad, model)
    with pytest.raises(ValueError, match="seed"):
        random_direction(model, seed=-1)
