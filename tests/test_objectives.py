"""TRADES and MART (with and without AWP) against the official formulas written out here."""

import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F

from awp.attacks import run_attack
from awp.config import METHOD_DEFAULTS, AWPConfig
from awp.modes import model_mode
from awp.objectives import (
    at_objective,
    get_attack_loss,
    get_objective,
    mart_objective,
    trades_attack_loss,
    trades_objective,
)
from awp.perturb import select_params, weight_ascent
from awp.train import TrainConfig, train_step
from tests.helpers import tiny_batch, tiny_model

BETA = 6.0


def batch64(seed=0, n=8):
    x, y = tiny_batch(n=n, seed=seed, dtype=torch.float64)
    g = torch.Generator().manual_seed(seed + 100)
    x_adv = (x + (torch.rand(x.shape, generator=g, dtype=torch.float64) * 2 - 1) * 8 / 255).clamp(
        0, 1
    )
    return x, x_adv, y


def softmax_row(z):
    e = torch.exp(z - z.max())
    return e / e.sum()


def trades_reference(model, x, x_adv, y, beta):
    """Example by example: CE(f(x_i), y_i) + beta * sum_k p_k(x_i) log(p_k(x_i) / p_k(x_adv_i))."""
    total = 0.0
    for i in range(len(y)):
        p = softmax_row(model(x[i : i + 1])[0])
        q = softmax_row(model(x_adv[i : i + 1])[0])
        ce = -torch.log(p[y[i]])
        kl = (p * (torch.log(p) - torch.log(q))).sum()
        total = total + ce + beta * kl
    return total / len(y)


def mart_reference(model, x, x_adv, y, beta):
    """The official mart_loss, example by example (argsort for the best wrong class)."""
    total = 0.0
    for i in range(len(y)):
        p_nat = softmax_row(model(x[i : i + 1])[0])
        p_adv = softmax_row(model(x_adv[i : i + 1])[0])
        top2 = torch.argsort(p_adv)[-2:]
        new_y = top2[-2] if top2[-1] == y[i] else top2[-1]
        bce = -torch.log(p_adv[y[i]]) - torch.log(1.0001 - p_adv[new_y] + 1e-12)
        kl = (p_nat * (torch.log(p_nat) - torch.log(p_adv + 1e-12))).sum()
        total = total + bce + beta * kl * (1.0000001 - p_nat[y[i]])
    return total / len(y)


@pytest.mark.parametrize(
    "ours, reference", [(trades_objective, trades_reference), (mart_objective, mart_reference)]
)
def test_loss_and_gradient_match_the_per_example_reference(ours, reference):
    # Eval mode: BatchNorm uses running statistics, so one example at a time is the same model.
    model = tiny_model(dtype=torch.float64).eval()
    x, x_adv, y = batch64()
    loss, logits = ours(model, x, x_adv, y, beta=BETA)
    ref = reference(model, x, x_adv, y, BETA)
    assert torch.allclose(loss, ref, rtol=1e-10, atol=1e-12)
    assert torch.allclose(logits, model(x_adv))  # logits on x_adv, for the training accuracy
    params = list(model.parameters())
    g_ours = torch.autograd.grad(loss, params)
    g_ref = torch.autograd.grad(ref, params)
    for a, b in zip(g_ours, g_ref):
        assert torch.allclose(a, b, rtol=1e-8, atol=1e-12)


def test_trades_gradient_flows_through_the_clean_branch():
    model = tiny_model(dtype=torch.float64).eval()
    x, x_adv, y = batch64()
    x = x.clone().requires_grad_(True)
    loss, _ = trades_objective(model, x, x_adv, y, beta=BETA)
    (gx,) = torch.autograd.grad(loss, x)
    # Without the clean branch in the KL (a detached target) the gradient on x differs.
    logits_nat = model(x)
    detached = F.cross_entropy(logits_nat, y) + BETA * F.kl_div(
        F.log_softmax(model(x_adv), 1), F.softmax(logits_nat, 1).detach(), reduction="batchmean"
    )
    (gd,) = torch.autograd.grad(detached, x)
    assert not torch.allclose(gx, gd)


def test_beta_zero_leaves_the_natural_or_boosted_loss():
    model = tiny_model(dtype=torch.float64).eval()
    x, x_adv, y = batch64()
    loss, _ = trades_objective(model, x, x_adv, y, beta=0.0)
    assert torch.allclose(loss, F.cross_entropy(model(x), y))
    loss_mart, _ = mart_objective(model, x, x_adv, y, beta=0.0)
    assert loss_mart > F.cross_entropy(model(x_adv), y)  # the boosting term is positive


def official_trades_attack(model, x, *, eps, step, steps, noise):
    """TRADES' perturb_input (linf): eval mode, from x + 0.001 * noise, sign steps on KL(sum)."""
    model.eval()
    x_adv = x.detach() + 0.001 * noise
    for _ in range(steps):
        x_adv.requires_grad_()
        with torch.enable_grad():
            loss_kl = F.kl_div(
                F.log_softmax(model(x_adv), dim=1), F.softmax(model(x), dim=1), reduction="sum"
            )
        grad = torch.autograd.grad(loss_kl, [x_adv])[0]
        x_adv = x_adv.detach() + step * torch.sign(grad.detach())
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps)
        x_adv = torch.clamp(x_adv, 0.0, 1.0)
    return x_adv


def test_trades_attack_matches_the_official_inner_maximization():
    model = tiny_model(dtype=torch.float64).train()
    x, _, y = batch64()
    x = 0.1 + 0.8 * x  # away from 0 and 1, where the official start is not clipped
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    ref = official_trades_attack(
        copy.deepcopy(model), x, eps=8 / 255, step=2 / 255, steps=5, noise=noise
    )
    cfg = TrainConfig(method="trades", attack_steps=5).train_attack
    assert (cfg.mode, cfg.random_start) == ("eval", "gaussian")
    ours = run_attack(
        model,
        x,
        y,
        cfg,
        generator=torch.Generator().manual_seed(5),
        loss=trades_attack_loss(model, x, cfg.mode),
    )
    assert model.training  # the caller's mode is back
    assert torch.allclose(ours, ref, atol=1e-12)
    assert not torch.allclose(ours, x, atol=1e-3)


def test_method_defaults_and_explicit_values():
    at = TrainConfig(awp=True)
    assert at.awp_config == AWPConfig(gamma=0.01, warmup=0)
    assert (at.train_attack.mode, at.train_attack.random_start) == ("train", "uniform")
    trades = TrainConfig(method="trades", awp=True)
    assert trades.awp_config == AWPConfig(gamma=0.005, warmup=10)
    assert trades.gamma is None and trades.resolved().gamma == 0.005
    assert trades.resolved().beta == 6.0 and at.resolved().beta is None
    # None keeps meaning "the method's default" through dataclasses.replace.
    assert dataclasses.replace(at, method="trades").awp_config.gamma == 0.005
    explicit = TrainConfig(method="trades", awp=True, gamma=0.002, awp_warmup=0, beta=3.0)
    assert explicit.awp_config == AWPConfig(gamma=0.002, warmup=0)
    assert explicit.objective.keywords == {"beta": 3.0}
    assert TrainConfig(method="trades", attack_mode="train").train_attack.mode == "train"
    mart = TrainConfig(method="mart", awp=True)
    assert mart.awp_config.gamma == METHOD_DEFAULTS["mart"].gamma
    assert get_attack_loss("mart") is None and get_attack_loss("at") is None
    assert get_objective("at") is at_objective
    with pytest.raises(ValueError, match="has no beta"):
        TrainConfig(beta=6.0)
    with pytest.raises(ValueError, match="unknown method"):
        TrainConfig(method="trade")
    with pytest.raises(ValueError, match="attack_start"):
        TrainConfig(attack_start="zeros")


def proxy_awp(model, loss_of, gamma):
    """The official AWP proxy step for any objective: copy, SGD on -loss, rescaled difference."""
    proxy = copy.deepcopy(model)
    proxy.train()
    opt = torch.optim.SGD(proxy.parameters(), lr=0.37)  # any lr: it cancels
    loss = -loss_of(proxy)
    opt.zero_grad()
    loss.backward()
    opt.step()
    v = {}
    w, wp = dict(model.named_parameters()), dict(proxy.named_parameters())
    for name in w:
        if len(w[name].size()) <= 1 or "weight" not in name:
            continue
        diff = wp[name].detach() - w[name].detach()
        v[name] = gamma * w[name].norm() / (diff.norm() + 1e-20) * diff
    return v


def official_trades_loss(model, x, x_adv, y, beta):
    """TradesAWP.calc_awp's loss (before the minus): CE on x plus beta * KL(batchmean)."""
    loss_natural = F.cross_entropy(model(x), y)
    loss_robust = F.kl_div(
        F.log_softmax(model(x_adv), dim=1), F.softmax(model(x), dim=1), reduction="batchmean"
    )
    return loss_natural + beta * loss_robust


@pytest.mark.parametrize("method", ["trades", "mart"])
def test_awp_ascends_the_methods_own_objective(method):
    model = tiny_model(dtype=torch.float64).train()
    x, x_adv, y = batch64()
    gamma = 0.005
    if method == "trades":
        ref = proxy_awp(model, lambda m: official_trades_loss(m, x, x_adv, y, BETA), gamma)
    else:
        ref = proxy_awp(model, lambda m: mart_reference_batch(m, x, x_adv, y), gamma)
    objective = get_objective(method)
    ours = weight_ascent(
        lambda: objective(model, x, x_adv, y)[0], select_params(model), gamma=gamma, model=model
    )
    assert set(ours) == set(ref)
    for name in ref:
        assert torch.allclose(ours[name], ref[name], rtol=1e-6, atol=1e-12), name
    # ... and not the cross-entropy on x_adv of AT.
    at_v = weight_ascent(
        lambda: at_objective(model, x, x_adv, y)[0], select_params(model), gamma=gamma, model=model
    )
    assert not torch.allclose(at_v["linear.weight"], ours["linear.weight"])


def mart_reference_batch(model, x, x_adv, y):
    """The official mart_loss on a batch (train mode, BatchNorm on batch statistics)."""
    kl = torch.nn.KLDivLoss(reduction="none")
    logits = model(x)
    logits_adv = model(x_adv)
    adv_probs = F.softmax(logits_adv, dim=1)
    tmp1 = torch.argsort(adv_probs, dim=1)[:, -2:]
    new_y = torch.where(tmp1[:, -1] == y, tmp1[:, -2], tmp1[:, -1])
    loss_adv = F.cross_entropy(logits_adv, y) + F.nll_loss(
        torch.log(1.0001 - adv_probs + 1e-12), new_y
    )
    nat_probs = F.softmax(logits, dim=1)
    true_probs = torch.gather(nat_probs, 1, (y.unsqueeze(1)).long()).squeeze()
    loss_robust = (1.0 / len(y)) * torch.sum(
        torch.sum(kl(torch.log(adv_probs + 1e-12), nat_probs), dim=1) * (1.0000001 - true_probs)
    )
    return loss_adv + BETA * loss_robust


def test_trades_awp_step_matches_the_official_step():
    """One TRADES-AWP step of the official loop (attack, proxy AWP, update at w+v, restore)."""
    torch.manual_seed(0)
    model_a = tiny_model(dtype=torch.float64)
    model_b = copy.deepcopy(model_a)
    x, _, y = batch64()
    x = 0.1 + 0.8 * x
    cfg = TrainConfig(method="trades", awp=True, attack_steps=3, step_size=2 / 255)
    gamma, steps = cfg.awp_config.gamma, 3
    opt_a = torch.optim.SGD(model_a.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    opt_b = torch.optim.SGD(model_b.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)

    # The official TRADES-AWP loop, written out.
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    x_adv = official_trades_attack(model_b, x, eps=8 / 255, step=2 / 255, steps=steps, noise=noise)
    model_b.train()
    v = proxy_awp(model_b, lambda m: official_trades_loss(m, x, x_adv, y, BETA), gamma)
    named = dict(model_b.named_parameters())
    with torch.no_grad():
        for n, t in v.items():
            named[n].add_(t)
    logits_adv = model_b(x_adv)
    loss_robust = F.kl_div(
        F.log_softmax(logits_adv, dim=1), F.softmax(model_b(x), dim=1), reduction="batchmean"
    )
    loss = F.cross_entropy(model_b(x), y) + BETA * loss_robust
    opt_b.zero_grad()
    loss.backward()
    opt_b.step()
    with torch.no_grad():
        for n, t in v.items():
            named[n].sub_(t)

    model_a.train()
    train_step(
        model_a,
        opt_a,
        x,
        y,
        attack=cfg.train_attack,
        objective=cfg.objective,
        awp=cfg.awp_config,
        generator=torch.Generator().manual_seed(9),
        attack_loss=cfg.attack_loss,
    )
    for (n, a), b in zip(model_a.named_parameters(), model_b.parameters()):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-12), n
    assert model_a.training


def test_objectives_do_not_change_the_mode():
    model = tiny_model()
    x, y = tiny_batch()
    for objective in (trades_objective, mart_objective):
        for mode in ("train", "eval"):
            with model_mode(model, mode):
                objective(model, x, x, y)
                assert model.training == (mode == "train")
