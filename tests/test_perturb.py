"""AWP against the official proxy-model implementation, written out here as the oracle."""

import copy

import pytest
import torch
import torch.nn.functional as F

from awp.config import AttackConfig
from awp.modes import unwrap
from awp.objectives import at_objective
from awp.perturb import (
    is_perturbed_weight,
    perturbed,
    select_params,
    weight_ascent,
)
from awp.train import train_step
from tests.helpers import assert_same_state, snapshot, tiny_batch, tiny_model

GAMMA = 0.01


def proxy_awp(model, x_adv, y, gamma):
    """The official utils_awp.py: copy the model, one SGD step on the negated loss, rescale."""
    proxy = copy.deepcopy(model)
    proxy.load_state_dict(model.state_dict())
    proxy.train()
    opt = torch.optim.SGD(proxy.parameters(), lr=0.123)  # any lr: it cancels
    loss = -F.cross_entropy(proxy(x_adv), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    v = {}
    w_model, w_proxy = dict(model.named_parameters()), dict(proxy.named_parameters())
    for name in w_model:
        if len(w_model[name].size()) <= 1 or "weight" not in name:
            continue
        diff = w_proxy[name].detach() - w_model[name].detach()
        v[name] = gamma * w_model[name].norm() / (diff.norm() + 1e-20) * diff
    return v


def our_v(model, x_adv, y, gamma=GAMMA, **kw):
    model.train()
    params = select_params(model)
    return weight_ascent(
        lambda: F.cross_entropy(model(x_adv), y), params, gamma=gamma, model=model, **kw
    )


def test_matches_proxy_model_in_float64():
    model = tiny_model(dtype=torch.float64)
    x, y = tiny_batch(dtype=torch.float64)
    ours = our_v(model, x, y)
    ref = proxy_awp(model, x, y, GAMMA)
    assert set(ours) == set(ref) == {"conv1.weight", "conv2.weight", "linear.weight"}
    for name in ref:
        assert torch.allclose(ours[name], ref[name], rtol=1e-6, atol=1e-12), name


def test_layer_norm_is_gamma_times_weight_norm():
    model = tiny_model(dtype=torch.float64)
    x, y = tiny_batch(dtype=torch.float64)
    params = select_params(model)
    for name, v in our_v(model, x, y, gamma=0.02).items():
        assert torch.isclose(v.norm(), 0.02 * params[name].norm(), rtol=1e-10)


def test_ascent_raises_the_loss():
    model = tiny_model(dtype=torch.float64).train()
    x, y = tiny_batch(dtype=torch.float64)
    v = our_v(model, x, y, gamma=0.01)
    from awp.modes import frozen_bn_stats

    with frozen_bn_stats(model), torch.no_grad():
        before = F.cross_entropy(model(x), y)
        with perturbed(select_params(model), v):
            after = F.cross_entropy(model(x), y)
    assert after > before


def test_awp_pass_leaves_weights_buffers_grads_and_mode():
    model = tiny_model()
    x, y = tiny_batch()
    model.train()
    snap = snapshot(model)
    our_v(model, x, y, steps=3)
    assert_same_state(model, snap)  # includes BatchNorm running stats and num_batches_tracked
    assert all(p.grad is None for p in model.parameters())
    assert model.training


def test_projected_ascent_stays_in_the_ball_and_k1_matches():
    model = tiny_model(dtype=torch.float64)
    x, y = tiny_batch(dtype=torch.float64)
    params = select_params(model)
    v1 = our_v(model, x, y, steps=1)
    v3 = our_v(model, x, y, steps=3)
    for name in v3:
        assert v3[name].norm() <= GAMMA * params[name].norm() * (1 + 1e-9)
        assert not torch.allclose(v3[name], v1[name])


def test_selection_rule():
    model = tiny_model()
    chosen = select_params(model)
    assert list(chosen) == ["conv1.weight", "conv2.weight", "linear.weight"]
    assert not is_perturbed_weight("bn1.weight", model.bn1.weight)
    assert not is_perturbed_weight("conv2.bias", model.conv2.bias)
    assert len(select_params(model, "all")) == len(list(model.parameters()))
    wrapped = torch.nn.DataParallel(model)
    assert list(select_params(wrapped)) == list(chosen) and unwrap(wrapped) is model
    with pytest.raises(ValueError, match="unknown parameter set"):
        select_params(model, "biases")


def test_perturbed_restores_bit_for_bit_also_after_exception():
    model = tiny_model()
    params = select_params(model)
    snap = snapshot(model)
    g = torch.Generator().manual_seed(0)
    v = {n: torch.randn(p.shape, generator=g) * 0.1 for n, p in params.items()}
    with perturbed(params, v):
        assert not torch.equal(model.conv1.weight, snap["conv1.weight"])
        assert torch.allclose(model.conv1.weight, snap["conv1.weight"] + v["conv1.weight"])
    assert_same_state(model, snap)
    with pytest.raises(RuntimeError, match="boom"), perturbed(params, v, restore="subtract"):
        raise RuntimeError("boom")
    assert_same_state(model, snap)
    with pytest.raises(ValueError, match="shape"):
        with perturbed(params, {"conv1.weight": torch.zeros(1)}):
            pass
    assert_same_state(model, snap)


def official_awp_step(model, opt, x_adv, y, gamma):
    """Official AT-AWP step: proxy v, add v, loss at w+v, backward, step, subtract v."""
    v = proxy_awp(model, x_adv, y, gamma)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for n, t in v.items():
            params[n].add_(t)
    model.train()
    loss = F.cross_entropy(model(x_adv), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    with torch.no_grad():
        for n, t in v.items():
            params[n].sub_(t)


def test_train_step_matches_official_step():
    torch.manual_seed(0)
    model_a = tiny_model(dtype=torch.float64)
    model_b = copy.deepcopy(model_a)
    x, y = tiny_batch(dtype=torch.float64)
    attack = AttackConfig(steps=2, step_size=2 / 255, mode="train")
    opt_a = torch.optim.SGD(model_a.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    opt_b = torch.optim.SGD(model_b.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    from awp.attacks import run_attack
    from awp.config import AWPConfig

    for step in range(2):
        x_adv = run_attack(model_b, x, y, attack, generator=torch.Generator().manual_seed(step))
        official_awp_step(model_b, opt_b, x_adv, y, GAMMA)
        train_step(
            model_a,
            opt_a,
            x,
            y,
            attack=attack,
            objective=at_objective,
            awp=AWPConfig(gamma=GAMMA),
            generator=torch.Generator().manual_seed(step),
        )
    for (n, a), b in zip(model_a.state_dict().items(), model_b.state_dict().values()):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-12), n


# ----------------------------------------------------------------- the general schedule A/K1/K2
def test_extending_from_zero_is_the_foundation_ascent():
    """The ascent of the later alternations (from v0), started from v0 = 0, is the ascent from
    nothing: projecting a step that lands on the boundary changes nothing."""

    model = tiny_model(dtype=torch.float64).train()
    x, y = tiny_batch(dtype=torch.float64)
    params = select_params(model)
    zero = {n: torch.zeros_like(p) for n, p in params.items()}
    for k2 in (1, 3):
        ours = weight_ascent(
            lambda: F.cross_entropy(model(x), y),
            params,
            v0=zero,
            gamma=GAMMA,
            steps=k2,
            model=model,
        )
        ref = our_v(model, x, y, steps=k2)
        for name in ref:
            assert torch.allclose(ours[name], ref[name], rtol=1e-12, atol=1e-15), (k2, name)


def schedule_oracle(model, opt, x, y, attack, gamma, alternations, k2, generator):
    """Appendix D written out with model copies: PGD on w (+v), projected ascent, update at w+v."""
    from awp.attacks import run_attack

    names = [n for n, p in model.named_parameters() if p.dim() > 1 and n.endswith("weight")]
    w = {n: p.detach().clone() for n, p in model.named_parameters() if n in names}
    v = {n: torch.zeros_like(t) for n, t in w.items()}

    def at_w_plus_v():
        copy_ = copy.deepcopy(model)
        with torch.no_grad():
            for n, p in copy_.named_parameters():
                if n in v:
                    p.add_(v[n])
        return copy_

    x_adv = None
    for _ in range(alternations):
        x_adv = run_attack(at_w_plus_v(), x, y, attack, generator=generator)
        for _ in range(k2):
            shifted = at_w_plus_v().train()
            for m in shifted.modules():  # the gradient must not move BatchNorm statistics
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.momentum = 0.0
            loss = F.cross_entropy(shifted(x_adv), y)
            grads = dict(
                zip(
                    names,
                    torch.autograd.grad(loss, [dict(shifted.named_parameters())[n] for n in names]),
                )
            )
            for n in names:
                g, radius = grads[n], gamma * w[n].norm()
                new = v[n] + gamma * w[n].norm() * g / (g.norm() + 1e-20)
                v[n] = new * min(1.0, float(radius / (new.norm() + 1e-20)))
    params = dict(model.named_parameters())
    with torch.no_grad():
        for n in names:
            params[n].add_(v[n])
    model.train()
    loss = F.cross_entropy(model(x_adv), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    with torch.no_grad():
        for n in names:
            params[n].sub_(v[n])


@pytest.mark.parametrize("alternations, k2", [(1, 1), (2, 1), (2, 2), (3, 1)])
def test_train_step_follows_the_general_schedule(alternations, k2):
    from awp.config import AWPConfig

    torch.manual_seed(0)
    model_a = tiny_model(dtype=torch.float64)
    model_b = copy.deepcopy(model_a)
    x, y = tiny_batch(dtype=torch.float64)
    attack = AttackConfig(steps=2, step_size=2 / 255, mode="train")
    opt_a = torch.optim.SGD(model_a.parameters(), lr=0.1, momentum=0.9)
    opt_b = torch.optim.SGD(model_b.parameters(), lr=0.1, momentum=0.9)
    awp = AWPConfig(gamma=GAMMA, steps=k2, alternations=alternations)
    for step in range(2):
        schedule_oracle(
            model_b, opt_b, x, y, attack, GAMMA, alternations, k2,
            torch.Generator().manual_seed(step),
        )  # fmt: skip
        train_step(
            model_a,
            opt_a,
            x,
            y,
            attack=attack,
            objective=at_objective,
            awp=awp,
            generator=torch.Generator().manual_seed(step),
        )
    for (n, a), b in zip(model_a.state_dict().items(), model_b.state_dict().values()):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-12), n


def test_alternations_change_the_step():
    """A = 2 is not A = 1: x_adv is regenerated on w + v and v moves."""
    from awp.config import AWPConfig

    results = []
    for alternations in (1, 2):
        model = tiny_model(dtype=torch.float64)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        x, y = tiny_batch(dtype=torch.float64)
        train_step(
            model,
            opt,
            x,
            y,
            attack=AttackConfig(steps=2, step_size=2 / 255, mode="train"),
            objective=at_objective,
            awp=AWPConfig(gamma=0.05, alternations=alternations),
            generator=torch.Generator().manual_seed(0),
        )
        results.append(model.linear.weight.detach().clone())
    assert not torch.allclose(results[0], results[1])


def test_an_objective_given_batch_by_batch_is_the_sum_of_its_terms():
    """The landscape's AWP direction and worst-case flatness hand the ascent one loss per batch;
    the ascent then follows the gradient of their sum (eval mode: BatchNorm decomposes)."""
    model = tiny_model(dtype=torch.float64).eval()
    x, y = tiny_batch(n=8, dtype=torch.float64)
    params = select_params(model)
    whole = weight_ascent(
        lambda: F.cross_entropy(model(x), y, reduction="sum"), params, gamma=GAMMA, steps=2
    )
    parts = weight_ascent(
        lambda: (
            F.cross_entropy(model(x[s : s + 3]), y[s : s + 3], reduction="sum")
            for s in range(0, 8, 3)
        ),
        params,
        gamma=GAMMA,
        steps=2,
    )
    for name in whole:
        assert torch.allclose(whole[name], parts[name], rtol=1e-12, atol=1e-15), name
        assert float(parts[name].norm()) <= GAMMA * float(params[name].norm()) * (1 + 1e-12)


def test_kept_and_write_point_move_a_model_through_points_and_back_bit_for_bit():
    """write_point writes theta0 + sum c_i d_i from theta0 every time (the value of a point
    does not depend on the one before), term by term; kept restores theta0 after an error."""
    from awp.perturb import kept, write_point

    model = tiny_model()
    state = dict(model.state_dict(keep_vars=True))
    names = ["conv1.weight", "bn1.running_var"]
    tensors = {n: state[n] for n in names}
    snap = snapshot(model)
    g = torch.Generator().manual_seed(0)
    d1 = {n: torch.randn(t.shape, generator=g) for n, t in tensors.items()}
    d2 = {"conv1.weight": torch.randn(tensors["conv1.weight"].shape, generator=g)}
    with pytest.raises(RuntimeError, match="boom"), kept(tensors) as theta0:
        write_point(tensors, theta0, [d1, d2], [0.5, -0.25])
        first = {n: t.detach().clone() for n, t in tensors.items()}
        expected = theta0["conv1.weight"].clone().add_(d1["conv1.weight"], alpha=0.5)
        expected.add_(d2["conv1.weight"], alpha=-0.25)
        assert torch.equal(first["conv1.weight"], expected)
        assert torch.equal(
            first["bn1.running_var"], theta0["bn1.running_var"] + 0.5 * d1["bn1.running_var"]
        )
        write_point(tensors, theta0, [d1, d2], [3.0, 1.0])  # elsewhere, then back
        write_point(tensors, theta0, [d1, d2], [0.5, -0.25])
        assert all(torch.equal(tensors[n], first[n]) for n in names)
        write_point(tensors, theta0, [d1, d2], [0.0, 0.0])
        assert all(torch.equal(tensors[n], theta0[n]) for n in names)
        write_point(tensors, theta0, [d1, d2], [1.0, 1.0])
        raise RuntimeError("boom")
    assert_same_state(model, snap)
    with pytest.raises(ValueError, match="2 directions but 1 coefficients"):
        write_point(tensors, snap, [d1, d2], [1.0])
