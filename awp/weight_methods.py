"""The weight perturbations of the training step, one table: AWP, SAM, ASAM and RWP.

Each entry of :data:`WEIGHT_METHODS` computes a perturbation v of named parameters by ascending
the training objective at the current weights (x_adv crafted at w, as AT), and says where the
update is taken. :func:`awp.step.train_step` runs every one the same way:

    x_adv = attack(w);  v = ascent(objective at w);  g = grad objective(w + v);  update with g

- AWP (Wu et al., 2020): ||v_l|| <= gamma ||w_l|| per layer (:func:`awp.perturb.weight_ascent`).
- SAM (Foret et al., 2021): e = rho g / ||g||_2 over every parameter at once (:func:`sam_ascent`).
- ASAM (Kwon et al., 2021): e = rho T_w^2 g / ||T_w g||_2, T_w = |w| + eta on the weights
  (:func:`sam_ascent` with ``eta``).
- RWP (Yu et al., 2022): AWP's direction accumulated over up to 10 steps on the examples whose
  loss is below c_min, rescaled to ||v|| = gamma ||w|| over all layers at once
  (:func:`rwp_ascent`).

The ascent's BatchNorm running statistics are frozen (the gradient is taken in train mode with
the batch's statistics); the update's forward pass at w + v moves them, once per step, as in
plain AT. The official ASAM code moves them in both passes; one move per step keeps the four
methods comparable with each other and with AT.

Adding a weight perturbation: its settings dataclass and one entry of
:data:`awp.method_config.WEIGHT_METHOD_SPECS` (torch-free: what TrainConfig reads), and its
ascent and one entry here; this module refuses to import when the two tables disagree.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from awp.method_config import WEIGHT_METHOD_SPECS, PerturbationConfig
from awp.modes import frozen_bn_stats
from awp.perturb import (
    GradHook,
    Perturbation,
    kept,
    objective_gradient,
    perturbed,
    weight_ascent,
    write_point,
)

# The guards against a zero gradient: the official codes' values.
SAM_GUARD = 1e-16  # github.com/SamsungLabs/ASAM (SAM and ASAM)
RWP_GUARD = 1e-20  # github.com/ChaojianYu/Robust-Weight-Perturbation (as AWP's)


def sam_ascent(
    objective: Callable[[], torch.Tensor],
    params: Mapping[str, torch.Tensor],
    *,
    rho: float,
    eta: float | None = None,
    model: nn.Module | None = None,
    grad_hook: GradHook | None = None,
) -> Perturbation:
    """SAM's perturbation e = rho g / ||g||_2, or with ``eta`` ASAM's e = rho T^2 g / ||T g||_2.

    g is the objective's gradient at the current weights w over every tensor of ``params`` at
    once (one global norm). ASAM scales it elementwise by T = |w| + eta for the tensors named
    ``weight`` (conv, linear and BatchNorm weights) and by 1 for the others (biases), so that
    ||T^-1 e||_2 = rho: the official code's rule.

    Args:
        objective: closure returning the scalar objective at the current weights.
        params: name -> parameter (SAM and ASAM perturb every parameter:
            ``select_params(model, "all")``).
        rho: radius, > 0 (0.05 for SAM, 0.5 for ASAM on CIFAR-10).
        eta: ASAM's offset of T (0.01), or None for SAM.
        model: when given, its BatchNorm running statistics are frozen during the gradient.
        grad_hook: called with the gradients before they are normalized (the distributed
            trainer's all-reduce, so every rank gets the same e).

    Returns:
        name -> e (detached, the parameter's shape and dtype); parameters and ``.grad`` are
        left as they were.

    Reference: Foret et al., ICLR 2021, Eq. (2); Kwon et al., ICML 2021, Eq. (11) and
    github.com/SamsungLabs/ASAM (asam.py, ``ascent_step``).
    """
    if not rho > 0:
        raise ValueError(f"rho={rho} must be > 0")
    names = list(params)
    tensors = [params[n] for n in names]
    with frozen_bn_stats(model) if model is not None else nullcontext():
        grads = objective_gradient(objective, tensors)
    if grad_hook is not None:
        grad_hook(grads)
    if eta is None:
        scales: list[torch.Tensor | None] = [None] * len(names)
    else:
        scales = [
            p.detach().abs().add_(eta) if _is_weight(n) else None for n, p in zip(names, tensors)
        ]
    scaled = [g if t is None else g * t for g, t in zip(grads, scales)]  # T g
    factor = rho / (torch.linalg.vector_norm(torch.stack([s.norm() for s in scaled])) + SAM_GUARD)
    # e = rho T (T g) / ||T g||, in place on the T g this function allocated (never on g).
    return {
        n: s * factor if t is None else s.mul_(t).mul_(factor)
        for n, s, t in zip(names, scaled, scales)
    }


def _is_weight(name: str) -> bool:
    """ASAM's rule: a parameter named ``weight`` (conv, linear, BatchNorm) is scaled by T."""
    return name.rsplit(".", 1)[-1] == "weight"


def rwp_ascent(
    losses: Callable[[], torch.Tensor],
    params: Mapping[str, torch.Tensor],
    *,
    gamma: float,
    c_min: float,
    steps: int = 10,
    model: nn.Module | None = None,
    grad_hook: GradHook | None = None,
    loss_scale: float = 1.0,
) -> Perturbation:
    """Robust Weight Perturbation: the ascent on the examples whose loss is below ``c_min``.

    From v = 0, each of ``steps`` steps takes, at w + v, the gradient g of

        mean_i [l_i < c_min] * l_i          (the mean over the whole batch, the mask detached)

    adds it to the accumulated direction D and rescales, one scale for every tensor together:

        v = gamma * ||w|| * D / ||D||,      ||.|| over all perturbed tensors at once.

    Args:
        losses: closure returning the per-example objective (N,) at the current weights.
        params: name -> parameter (conv and linear weights: ``select_params(model)``).
        gamma: relative radius, > 0 (0.01 for AT, 0.005 for TRADES).
        c_min: the loss threshold (1.7): examples at or above it get weight 0.
        steps: ascent steps (10).
        model: when given, its BatchNorm running statistics are frozen during the ascent.
        grad_hook: called with every step's gradients (the distributed all-reduce).
        loss_scale: multiplies the masked mean (a distributed rank's share of the global mean).

    Returns:
        name -> v (detached); parameters and ``.grad`` are left as they were. No example below
        the threshold gives v = 0.

    Reference: Yu et al., "Robust Weight Perturbation for Adversarial Training", IJCAI 2022,
    Alg. 1; github.com/ChaojianYu/Robust-Weight-Perturbation (utils_rwp.py: the proxy's SGD step
    on the negated masked loss is the gradient up to its learning rate, which the rescaling
    cancels).
    """
    if not gamma > 0 or steps < 1:
        raise ValueError(f"need gamma > 0 and steps >= 1, got gamma={gamma}, steps={steps}")
    names = list(params)
    tensors = [params[n] for n in names]
    w_norm = _global_norm(tensors)

    def masked() -> torch.Tensor:
        loss = losses()  # (N,)
        keep = (loss.detach() < c_min).to(loss.dtype)
        mean = (loss * keep).mean()
        return mean * loss_scale if loss_scale != 1.0 else mean

    direction: list[torch.Tensor] | None = None
    v: Perturbation = {}
    # w is stored once and every step writes w + v from it (restored bit for bit at the end).
    with kept(params) as w, frozen_bn_stats(model) if model is not None else nullcontext():
        for k in range(steps):
            if k > 0:
                write_point(params, w, [v], [1.0])
            grads = objective_gradient(masked, tensors)
            if grad_hook is not None:
                grad_hook(grads)
            direction = grads if direction is None else [d + g for d, g in zip(direction, grads)]
            scale = gamma * w_norm / (_global_norm(direction) + RWP_GUARD)
            v = {n: d * scale for n, d in zip(names, direction)}
    return v


def _global_norm(tensors: list[torch.Tensor]) -> torch.Tensor:
    """||t|| over every tensor together (a 0-d tensor)."""
    return torch.linalg.vector_norm(torch.stack([t.detach().norm() for t in tensors]))


# --------------------------------------------------------------------------- the table
@dataclass(frozen=True)
class AscentInputs:
    """What an ascent reads at the current weights, from :func:`awp.step.train_step`.

    Attributes:
        objective: the training objective on the current x_adv (scalar, times the rank's
            loss scale).
        losses: the per-example objective (N,), unscaled, or None (only RWP needs it).
        recraft: regenerates x_adv at the current weights (AWP's alternations A > 1).
        params: name -> the perturbed parameters.
        model: the plain module (its BatchNorm statistics are frozen during the ascent).
        grad_hook: the distributed all-reduce of weight gradients, or None.
        loss_scale: the rank's loss scale (see ``train_step``).
    """

    objective: Callable[[], torch.Tensor]
    losses: Callable[[], torch.Tensor] | None
    recraft: Callable[[], None]
    params: Mapping[str, nn.Parameter]
    model: nn.Module
    grad_hook: GradHook | None
    loss_scale: float = 1.0


def _awp(a: AscentInputs, cfg: Any) -> Perturbation:
    # K2 projected steps; A > 1 regenerates x_adv on w + v and continues from v.
    ascent = dict(gamma=cfg.gamma, steps=cfg.steps, model=a.model, grad_hook=a.grad_hook)
    v = weight_ascent(a.objective, a.params, **ascent)
    for _ in range(cfg.alternations - 1):
        with perturbed(a.params, v):
            a.recraft()
        v = weight_ascent(a.objective, a.params, v0=v, **ascent)
    return v


def _sam(a: AscentInputs, cfg: Any) -> Perturbation:
    eta = getattr(cfg, "eta", None)  # ASAM's; SAM has none
    return sam_ascent(
        a.objective, a.params, rho=cfg.rho, eta=eta, model=a.model, grad_hook=a.grad_hook
    )


def _rwp(a: AscentInputs, cfg: Any) -> Perturbation:
    if a.losses is None:
        raise ValueError("RWP needs the per-example objective: pass losses= to train_step")
    return rwp_ascent(
        a.losses,
        a.params,
        gamma=cfg.gamma,
        c_min=cfg.c_min,
        steps=cfg.steps,
        model=a.model,
        grad_hook=a.grad_hook,
        loss_scale=a.loss_scale,
    )


@dataclass(frozen=True)
class WeightMethod:
    """One weight perturbation of the training step.

    Attributes:
        name: its name in method names (``at-sam``) and in :data:`WEIGHT_METHOD_SPECS`.
        ascend: ``(inputs, settings) -> v``.
        param_set: the parameters it perturbs (``awp.perturb.select_params``): "weights" (conv
            and linear weights, AWP's rule) or "all".
        update_at: "w+v": the optimizer steps at w + v and v is subtracted after (AWP and RWP,
            as their official code); "w": the gradient is taken at w + v, w restored exactly,
            and the optimizer steps at w (SAM and ASAM: weight decay and momentum act at w).
        logs_ratio: the step reports ||v|| / ||w|| (AWP's ``awp_v_norm_ratio`` column).
    """

    name: str
    ascend: Callable[[AscentInputs, Any], Perturbation]
    param_set: str
    update_at: str
    logs_ratio: bool = False


WEIGHT_METHODS: Mapping[str, WeightMethod] = {
    m.name: m
    for m in (
        WeightMethod("awp", _awp, "weights", "w+v", logs_ratio=True),
        WeightMethod("sam", _sam, "all", "w"),
        WeightMethod("asam", _sam, "all", "w"),
        WeightMethod("rwp", _rwp, "weights", "w+v"),
    )
}
"""Every weight perturbation by name; :data:`awp.method_config.WEIGHT_METHOD_SPECS` holds the
same names with what a training config reads."""

if set(WEIGHT_METHODS) != set(WEIGHT_METHOD_SPECS):
    raise RuntimeError(
        f"awp.weight_methods.WEIGHT_METHODS {sorted(WEIGHT_METHODS)} and "
        f"awp.method_config.WEIGHT_METHOD_SPECS {sorted(WEIGHT_METHOD_SPECS)} disagree"
    )


def weight_method(config: PerturbationConfig) -> WeightMethod:
    """The table's entry of a perturbation's settings (an AWPConfig, SAMConfig, ...)."""
    return WEIGHT_METHODS[config.name]
