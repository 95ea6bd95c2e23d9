"""The training step of AT / TRADES / MART with or without AWP as it was before SAM, ASAM, RWP
and the weight averages were added (commit 4480e5c: ``awp/step.py`` and the AWP ascent of
``awp/perturb.py``), kept as it was: the reference that AT and AT-AWP training stay
bit-identical to (tests/test_weight_methods.py runs both side by side).

Trimmed to the branches training takes (docstrings, argument checks and the per-batch
objective of the ascent left out) and renamed (``_before``); every operation on tensors is that
commit's, in its order, so a change of the current step that alters an AT or AT-AWP result,
even in the last bit, fails the comparison.
"""

from __future__ import annotations

import math
from contextlib import nullcontext

import torch

from awp import distributed
from awp.attacks import run_attack
from awp.modes import frozen_bn_stats
from awp.perturb import perturbed, select_params


def train_step_before(
    model,
    optimizer,
    x,
    y,
    *,
    attack,
    objective,
    awp=None,
    params=None,
    generator=None,
    grad_hook=None,
    attack_loss=None,
    loss_scale=1.0,
    noise=None,
):
    net = distributed.plain(model)

    def craft():
        loss = attack_loss(net, x, attack.mode) if attack_loss else None
        return run_attack(net, x, y, attack, generator=generator, loss=loss)

    def noisy(t):
        return t if noise is None else t + noise

    x_adv = craft()
    model.train()
    if awp is not None and awp.gamma > 0:
        params = params if params is not None else select_params(net)

        def awp_objective():
            loss = objective(net, noisy(x), noisy(x_adv), y)[0]
            return loss * loss_scale if loss_scale != 1.0 else loss

        ascent = dict(gamma=awp.gamma, steps=awp.steps, model=net, grad_hook=grad_hook)
        v = weight_ascent_before(awp_objective, params, **ascent)
        for _ in range(awp.alternations - 1):
            with perturbed(params, v):
                x_adv = craft()
            v = weight_ascent_before(awp_objective, params, v0=v, **ascent)
        ratio = _norm_ratio_before(v, params)
        with perturbed(params, v, restore="subtract"):
            loss, logits = objective(model, noisy(x), noisy(x_adv), y)
            _minimize_before(optimizer, loss, loss_scale)
    else:
        ratio = None
        loss, logits = objective(model, noisy(x), noisy(x_adv), y)
        _minimize_before(optimizer, loss, loss_scale)
    correct = int((logits.detach().argmax(1) == y).sum())
    return float(loss.detach()), correct, len(y), ratio


def _norm_ratio_before(v, params):
    v_sq = sum(float(t.double().pow(2).sum()) for t in v.values())
    w_sq = sum(float(params[n].detach().double().pow(2).sum()) for n in v)
    return math.sqrt(v_sq / w_sq) if w_sq > 0 else 0.0


def _minimize_before(optimizer, loss, scale):
    optimizer.zero_grad(set_to_none=True)
    (loss * scale if scale != 1.0 else loss).backward()
    optimizer.step()


def _gradient_before(objective, tensors):
    with torch.enable_grad():
        value = objective()
        grads = torch.autograd.grad(value, tensors, allow_unused=True)
        return [torch.zeros_like(p) if g is None else g.detach() for g, p in zip(grads, tensors)]


def weight_ascent_before(objective, params, *, gamma, steps=1, v0=None, model=None, grad_hook=None):
    names = list(params)
    tensors = [params[n] for n in names]
    w_norms = [p.detach().norm() for p in tensors]
    step = gamma
    project = steps > 1 or v0 is not None
    if v0 is None:
        v = {n: torch.zeros_like(p).detach() for n, p in zip(names, tensors)}
    else:
        v = {n: v0[n].detach().clone() for n in names}
    with frozen_bn_stats(model) if model is not None else nullcontext():
        for k in range(steps):
            at_w = k == 0 and v0 is None
            with nullcontext() if at_w else perturbed(params, v):
                grads = _gradient_before(objective, tensors)
            if grad_hook is not None:
                grad_hook(grads)
            for n, g, wn in zip(names, grads, w_norms):
                ascent = g * (step * wn / (g.norm() + 1e-20))
                if project:
                    new = v[n] + ascent
                    ascent = new * torch.clamp(gamma * wn / (new.norm() + 1e-20), max=1.0)
                v[n] = ascent
    return v
