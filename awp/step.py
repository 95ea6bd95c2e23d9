"""One training step of AT, TRADES or MART, with or without AWP: :func:`train_step`.

The step knows nothing of the run: it takes a minibatch, the model, the optimizer and the
settings, and changes the weights, the optimizer's state, the BatchNorm statistics (the
update's forward pass runs in train mode) and the attack generator's state. The loop in
:mod:`awp.train` owns epochs, the learning rate, evaluation, checkpoints and resume;
:mod:`awp.train_config` the settings.

Reference: Wu, Xia, Wang, NeurIPS 2020 (AWP); Madry et al., ICLR 2018 (AT); Zhang et al., ICML
2019 (TRADES); Wang et al., ICLR 2020 (MART).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from awp import distributed
from awp.attacks import LossFn, run_attack
from awp.config import AttackConfig, AWPConfig
from awp.objectives import AttackLossFactory, ObjectiveFn
from awp.perturb import perturbed, select_params, weight_ascent


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    attack: AttackConfig,
    objective: ObjectiveFn,
    awp: AWPConfig | None = None,
    params: dict[str, nn.Parameter] | None = None,
    generator: torch.Generator | None = None,
    grad_hook: Callable[[list[torch.Tensor]], None] | None = None,
    attack_loss: AttackLossFactory | None = None,
    loss_scale: float = 1.0,
    noise: torch.Tensor | None = None,
) -> StepStats:
    """One minibatch step of AT, TRADES or MART, with or without AWP (general A/K1/K2 schedule).

    1. x_adv = PGD-K1 at the current weights w (mode and start from ``attack``; the loss from
       ``attack_loss``, e.g. TRADES' KL term, else the attack's own).
    2. With AWP: v = the AWP ascent of ``objective`` at (x, x_adv, y), K2 steps, BatchNorm
       statistics frozen. For A > 1, A - 1 more times: regenerate x_adv on w + v, then continue
       the projected ascent of v from there (:func:`awp.perturb.weight_ascent` from v0).
    3. Add v, objective at w + v, backward, optimizer step, subtract the same v.

    With ``noise`` (Gaussian data augmentation) the objective, and so the AWP ascent, sees
    x + noise and x_adv + noise; the attack is crafted at the clean x, as without noise.

    The attack and the AWP ascent run on the plain module (inside a DDP wrapper when ``model``
    is one): they take gradients with ``torch.autograd.grad``, which DDP's reducer never sees,
    so a distributed caller averages the AWP gradient through ``grad_hook``. Only the update's
    forward/backward goes through ``model`` (and so through DDP's gradient all-reduce).

    Args:
        model: the network, or a DistributedDataParallel around it (left in train mode).
        optimizer: its optimizer; the learning rate is set by the caller.
        x: augmented images (N, C, H, W) float in [0, 1]; y: labels (N,).
        attack: the training attack (PGD-10, 8/255, 2/255 in the paper).
        objective: ``(model, x, x_adv, y) -> (loss, logits)``.
        awp: AWP settings, or None for no AWP (also during the warm-up).
        params: the perturbed parameters (default :func:`select_params` of ``model``).
        generator: CPU generator of the attack's random start.
        grad_hook: forwarded to the AWP ascent (distributed all-reduce of the weight gradient).
        attack_loss: ``(model, x, mode) -> loss_fn`` for the attack, or None for its own loss.
        loss_scale: multiplies the objective in the backward pass and the AWP ascent; a rank of
            a distributed run whose slice is not 1/N of the global batch passes
            N * slice / global so that averaged gradients are those of the global mean.
        noise: (N, C, H, W) added to x and x_adv where the objective reads them, or None.

    Returns:
        :class:`StepStats` of the objective's forward pass (the loss unscaled).
    """
    net = distributed.plain(model)

    def craft() -> torch.Tensor:
        # At the current weights (w, or w + v inside `perturbed`): TRADES' KL target p(x) too.
        loss: LossFn | None = attack_loss(net, x, attack.mode) if attack_loss else None
        return run_attack(net, x, y, attack, generator=generator, loss=loss)

    def noisy(t: torch.Tensor) -> torch.Tensor:
        return t if noise is None else t + noise

    x_adv = craft()
    model.train()
    if awp is not None and awp.gamma > 0:
        params = params if params is not None else select_params(net)

        def awp_objective() -> torch.Tensor:
            # Reads x_adv when called, so alternations ascend on the regenerated examples.
            loss = objective(net, noisy(x), noisy(x_adv), y)[0]
            return loss * loss_scale if loss_scale != 1.0 else loss

        ascent = dict(gamma=awp.gamma, steps=awp.steps, model=net, grad_hook=grad_hook)
        v = weight_ascent(awp_objective, params, **ascent)
        for _ in range(awp.alternations - 1):
            with perturbed(params, v):
                x_adv = craft()
            v = weight_ascent(awp_objective, params, v0=v, **ascent)
        ratio = _norm_ratio(v, params)
        with perturbed(params, v, restore="subtract"):
            loss, logits = objective(model, noisy(x), noisy(x_adv), y)
            _minimize(optimizer, loss, loss_scale)
    else:
        ratio = None
        loss, logits = objective(model, noisy(x), noisy(x_adv), y)
        _minimize(optimizer, loss, loss_scale)
    correct = int((logits.detach().argmax(1) == y).sum())
    return StepStats(float(loss.detach()), correct, len(y), ratio)


@dataclass(frozen=True)
class StepStats:
    """Loss and accuracy of one minibatch at the weights the optimizer saw (w + v with AWP),
    and with AWP the size of the perturbation, ||v|| / ||w|| over every perturbed tensor."""

    loss: float
    correct: int
    n: int
    v_norm_ratio: float | None = None


def _norm_ratio(v: dict[str, torch.Tensor], params: dict[str, nn.Parameter]) -> float:
    """||v|| / ||w|| over all perturbed tensors together (gamma for one ascent step from 0,
    where every layer's ||v_l|| is gamma ||w_l||; at most gamma with K2 > 1)."""
    v_sq = sum(float(t.double().pow(2).sum()) for t in v.values())
    w_sq = sum(float(params[n].detach().double().pow(2).sum()) for n in v)
    return math.sqrt(v_sq / w_sq) if w_sq > 0 else 0.0


def _minimize(optimizer: torch.optim.Optimizer, loss: torch.Tensor, scale: float) -> None:
    optimizer.zero_grad(set_to_none=True)
    (loss * scale if scale != 1.0 else loss).backward()
    optimizer.step()
