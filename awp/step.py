"""One training step of AT, TRADES or MART, plain or with a weight perturbation (AWP, SAM,
ASAM, RWP): :func:`train_step`.

The step knows nothing of the run: it takes a minibatch, the model, the optimizer and the
settings, and changes the weights, the optimizer's state, the BatchNorm statistics (the
update's forward pass runs in train mode) and the attack generator's state. The loop in
:mod:`awp.train` owns epochs, the learning rate, evaluation, checkpoints, weight averages and
resume; :mod:`awp.train_config` the settings; :mod:`awp.weight_methods` the weight
perturbations' ascents.

Reference: Wu, Xia, Wang, NeurIPS 2020 (AWP); Madry et al., ICLR 2018 (AT); Zhang et al., ICML
2019 (TRADES); Wang et al., ICLR 2020 (MART); Foret et al., ICLR 2021 (SAM); Kwon et al., ICML
2021 (ASAM); Yu et al., IJCAI 2022 (RWP).
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
from awp.method_config import PerturbationConfig
from awp.objectives import AttackLossFactory, ObjectiveFn
from awp.perturb import perturbed, select_params
from awp.weight_methods import AscentInputs, weight_method


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    attack: AttackConfig,
    objective: ObjectiveFn,
    perturbation: PerturbationConfig | None = None,
    awp: AWPConfig | None = None,
    params: dict[str, nn.Parameter] | None = None,
    generator: torch.Generator | None = None,
    grad_hook: Callable[[list[torch.Tensor]], None] | None = None,
    attack_loss: AttackLossFactory | None = None,
    loss_scale: float = 1.0,
    noise: torch.Tensor | None = None,
    losses: ObjectiveFn | None = None,
) -> StepStats:
    """One minibatch step of AT, TRADES or MART, plain or with a weight perturbation.

    1. x_adv = PGD-K1 at the current weights w (mode and start from ``attack``; the loss from
       ``attack_loss``, e.g. TRADES' KL term, else the attack's own).
    2. With a weight perturbation: v = its ascent of ``objective`` at (x, x_adv, y), BatchNorm
       statistics frozen (:data:`awp.weight_methods.WEIGHT_METHODS`): AWP (K2 steps; for
       A > 1, A - 1 more times x_adv regenerated on w + v and the ascent continued from v),
       SAM, ASAM or RWP.
    3. The objective at w + v, backward; AWP and RWP step the optimizer at w + v and subtract
       the same v, SAM and ASAM restore w exactly and step there. Without a perturbation, the
       objective at w, backward, step.

    With ``noise`` (Gaussian data augmentation) the objective, and so the ascent, sees
    x + noise and x_adv + noise; the attack is crafted at the clean x, as without noise.

    The attack and the ascent run on the plain module (inside a DDP wrapper when ``model`` is
    one): they take gradients with ``torch.autograd.grad``, which DDP's reducer never sees, so
    a distributed caller averages the ascent's gradients through ``grad_hook``. Only the
    update's forward/backward goes through ``model`` (and so through DDP's gradient
    all-reduce).

    Args:
        model: the network, or a DistributedDataParallel around it (left in train mode).
        optimizer: its optimizer; the learning rate is set by the caller.
        x: augmented images (N, C, H, W) float in [0, 1]; y: labels (N,).
        attack: the training attack (PGD-10, 8/255, 2/255 in the paper).
        objective: ``(model, x, x_adv, y) -> (loss, logits)``.
        perturbation: the weight perturbation's settings (:class:`~awp.config.AWPConfig`,
            :class:`~awp.method_config.SAMConfig`, ``ASAMConfig``, ``RWPConfig``), or None for
            none (also during its warm-up).
        awp: the same as ``perturbation`` for an AWPConfig (the name callers used before the
            other perturbations); give one of the two.
        params: the perturbed parameters (default :func:`select_params` of ``model`` with the
            perturbation's parameter set: conv and linear weights for AWP and RWP, every
            parameter for SAM and ASAM).
        generator: CPU generator of the attack's random start.
        grad_hook: forwarded to the ascent (distributed all-reduce of the weight gradients).
        attack_loss: ``(model, x, mode) -> loss_fn`` for the attack, or None for its own loss.
        loss_scale: multiplies the objective in the backward pass and the ascent; a rank of
            a distributed run whose slice is not 1/N of the global batch passes
            N * slice / global so that averaged gradients are those of the global mean.
        noise: (N, C, H, W) added to x and x_adv where the objective reads them, or None.
        losses: the per-example objective ``(model, x, x_adv, y) -> ((N,), logits)``, needed
            by RWP (``TrainConfig.per_example_objective``).

    Returns:
        :class:`StepStats` of the objective's forward pass (the loss unscaled).
    """
    if awp is not None and perturbation is not None:
        raise ValueError("give the weight perturbation as perturbation= or awp=, not both")
    perturbation = awp if awp is not None else perturbation
    net = distributed.plain(model)

    def craft() -> torch.Tensor:
        # At the current weights (w, or w + v inside `perturbed`): TRADES' KL target p(x) too.
        loss: LossFn | None = attack_loss(net, x, attack.mode) if attack_loss else None
        return run_attack(net, x, y, attack, generator=generator, loss=loss)

    def noisy(t: torch.Tensor) -> torch.Tensor:
        return t if noise is None else t + noise

    x_adv = craft()
    model.train()
    if perturbation is None or not perturbation.active:
        loss, logits = objective(model, noisy(x), noisy(x_adv), y)
        _backward(optimizer, loss, loss_scale)
        optimizer.step()
        return _stats(loss, logits, y, None)
    method = weight_method(perturbation)
    params = params if params is not None else select_params(net, method.param_set)

    def ascent_objective() -> torch.Tensor:
        # Reads x_adv when called, so alternations ascend on the regenerated examples.
        loss = objective(net, noisy(x), noisy(x_adv), y)[0]
        return loss * loss_scale if loss_scale != 1.0 else loss

    def recraft() -> None:
        nonlocal x_adv
        x_adv = craft()

    per_example = None
    if losses is not None:

        def per_example() -> torch.Tensor:
            return losses(net, noisy(x), noisy(x_adv), y)[0]

    inputs = AscentInputs(
        ascent_objective, per_example, recraft, params, net, grad_hook, loss_scale
    )
    v = method.ascend(inputs, perturbation)
    ratio = _norm_ratio(v, params) if method.logs_ratio else None
    if method.update_at == "w+v":
        with perturbed(params, v, restore="subtract"):
            loss, logits = objective(model, noisy(x), noisy(x_adv), y)
            _backward(optimizer, loss, loss_scale)
            optimizer.step()
    else:  # the gradient at w + v, the step at w (restored bit for bit)
        with perturbed(params, v):
            loss, logits = objective(model, noisy(x), noisy(x_adv), y)
            _backward(optimizer, loss, loss_scale)
        optimizer.step()
    return _stats(loss, logits, y, ratio)


def _stats(
    loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor, ratio: float | None
) -> StepStats:
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
    v_sq = sum(_squared_norm64(t) for t in v.values())
    w_sq = sum(_squared_norm64(params[n]) for n in v)
    return math.sqrt(v_sq / w_sq) if w_sq > 0 else 0.0


def _squared_norm64(t: torch.Tensor) -> float:
    """||t||^2 summed in float64, squared in place on the float64 copy: the same bits as
    ``t.double().pow(2).sum()`` (pow by 2 is x * x) without a second float64 tensor."""
    t64 = t.detach().to(torch.float64, copy=True)  # a copy even when t is already float64
    return float(t64.mul_(t64).sum())


def _backward(optimizer: torch.optim.Optimizer, loss: torch.Tensor, scale: float) -> None:
    optimizer.zero_grad(set_to_none=True)
    (loss * scale if scale != 1.0 else loss).backward()
