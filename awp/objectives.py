"""Training objectives sharing one signature: ``objective(model, x, x_adv, y) -> (loss, logits)``.

``loss`` is the scalar the optimizer minimizes and the AWP ascent maximizes (so with AWP the
weight perturbation ascends the method's own objective); ``logits`` are the model's outputs on
``x_adv`` (used for the training accuracy).

A method may also attack its own loss: TRADES maximizes the KL term, not the cross-entropy.
:func:`get_attack_loss` returns, per method, a factory ``(model, x, mode) -> loss_fn`` whose
``loss_fn(logits_adv, y) -> (N,)`` is handed to the PGD attack, or None for the attack's own
cross-entropy.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from awp.attacks import LossFn
from awp.config import METHODS, check_beta, method_defaults
from awp.modes import model_mode

ObjectiveFn = Callable[
    [nn.Module, torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]
]
AttackLossFactory = Callable[[nn.Module, torch.Tensor, str], LossFn]


def at_objective(
    model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Adversarial training: mean cross-entropy on the adversarial examples.

    Args:
        model: classifier on [0, 1] images.
        x: clean images (N, C, H, W), unused by AT (kept for the shared signature).
        x_adv: adversarial images (N, C, H, W) in [0, 1].
        y: labels (N,).

    Reference: Madry et al., ICLR 2018.
    """
    logits = model(x_adv)  # (N, K)
    return F.cross_entropy(logits, y), logits


def trades_objective(
    model: nn.Module,
    x: torch.Tensor,
    x_adv: torch.Tensor,
    y: torch.Tensor,
    *,
    beta: float = 6.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """TRADES: CE(f(x), y) + beta * KL(f(x) || f(x_adv)), the KL averaged over the batch.

    Gradients flow through both the clean and the adversarial branch, as in the official code.
    The official TRADES-AWP loop forwards x twice (once for the KL target, once for the CE); the
    two outputs are identical, so x is forwarded once here: the only difference is one momentum
    step fewer of the BatchNorm running statistics towards the clean batch.

    Args:
        model: classifier on [0, 1] images.
        x: clean images (N, C, H, W) in [0, 1].
        x_adv: adversarial images (N, C, H, W) in [0, 1].
        y: labels (N,).
        beta: weight of the KL term, >= 0 (6 in the paper; 1/lambda in TRADES).

    Returns:
        (scalar loss, logits on x_adv (N, K)).

    Reference: Zhang et al., "Theoretically Principled Trade-off between Robustness and
    Accuracy", ICML 2019 (github.com/yaodongyu/TRADES, trades.py).
    """
    logits_adv = model(x_adv)  # (N, K); the official order: adversarial first, then clean
    logits_nat = model(x)  # (N, K)
    kl = F.kl_div(
        F.log_softmax(logits_adv, dim=1), F.softmax(logits_nat, dim=1), reduction="batchmean"
    )
    return F.cross_entropy(logits_nat, y) + beta * kl, logits_adv


def mart_objective(
    model: nn.Module,
    x: torch.Tensor,
    x_adv: torch.Tensor,
    y: torch.Tensor,
    *,
    beta: float = 6.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """MART: boosted CE on x_adv plus beta * KL(p(x) || p(x_adv)) weighted by (1 - p_y(x)).

    BCE(p(x_adv), y) = -log p_y(x_adv) - log(1 - max_{k != y} p_k(x_adv)), and the
    misclassification-aware regularizer is mean_i KL(p(x_i) || p(x_adv_i)) * (1 - p_{y_i}(x_i)).
    The constants (1.0001, 1e-12, 1.0000001) are the official code's numerical guards.

    Args:
        model: classifier on [0, 1] images.
        x: clean images (N, C, H, W) in [0, 1].
        x_adv: adversarial images (N, C, H, W) in [0, 1].
        y: labels (N,).
        beta: weight of the regularizer, >= 0 (6 in the paper).

    Returns:
        (scalar loss, logits on x_adv (N, K)).

    Reference: Wang et al., "Improving Adversarial Robustness Requires Revisiting Misclassified
    Examples", ICLR 2020 (github.com/YisenWang/MART, mart.py).
    """
    logits_nat = model(x)  # (N, K); the official order: clean first, then adversarial
    logits_adv = model(x_adv)  # (N, K)
    adv_probs = F.softmax(logits_adv, dim=1)
    # The most probable wrong class under attack.
    wrong = adv_probs.masked_fill(F.one_hot(y, adv_probs.shape[1]).bool(), float("-inf"))
    new_y = wrong.argmax(dim=1)  # (N,)
    loss_adv = F.cross_entropy(logits_adv, y) + F.nll_loss(
        torch.log(1.0001 - adv_probs + 1e-12), new_y
    )
    nat_probs = F.softmax(logits_nat, dim=1)
    true_probs = nat_probs.gather(1, y[:, None]).squeeze(1)  # (N,)
    kl = F.kl_div(torch.log(adv_probs + 1e-12), nat_probs, reduction="none").sum(dim=1)  # (N,)
    loss_robust = (kl * (1.0000001 - true_probs)).mean()
    return loss_adv + beta * loss_robust, logits_adv


def trades_attack_loss(model: nn.Module, x: torch.Tensor, mode: str = "eval") -> LossFn:
    """The TRADES attack's loss: per-example KL(p(x) || p(x_adv)), p(x) fixed at the start.

    Args:
        model: classifier on [0, 1] images.
        x: clean images (N, C, H, W) in [0, 1].
        mode: the model's mode while p(x) is computed; the attack's own mode ("eval" in the
            TRADES code). BatchNorm running statistics do not move.

    Returns:
        ``loss_fn(logits_adv (N, K), y (N,)) -> (N,)``; its sum is the official
        ``kl_div(..., reduction='sum')`` that PGD ascends from x + 0.001 * N(0, 1).

    Reference: Zhang et al., ICML 2019 (trades.py, the inner maximization).
    """
    with torch.no_grad(), model_mode(model, mode):
        p_nat = F.softmax(model(x), dim=1)  # (N, K)

    def loss_fn(logits_adv: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.kl_div(F.log_softmax(logits_adv, dim=1), p_nat, reduction="none").sum(dim=1)

    return loss_fn


def at_losses(
    model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """AT's objective per example: the cross-entropy on each adversarial example.

    Args: as :func:`at_objective`.

    Returns:
        (losses (N,), logits on x_adv (N, K)); the losses' mean is :func:`at_objective`.
    """
    logits = model(x_adv)  # (N, K)
    return F.cross_entropy(logits, y, reduction="none"), logits


def trades_losses(
    model: nn.Module,
    x: torch.Tensor,
    x_adv: torch.Tensor,
    y: torch.Tensor,
    *,
    beta: float = 6.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """TRADES' objective per example: CE(f(x_i), y_i) + beta * KL(f(x_i) || f(x_adv_i)).

    Args: as :func:`trades_objective`.

    Returns:
        (losses (N,), logits on x_adv (N, K)); the losses' mean is :func:`trades_objective`
        (to float rounding).

    Reference: Yu et al., IJCAI 2022 (trades_AWP_RWP/utils_rwp.py: the per-example TRADES loss
    that RWP thresholds).
    """
    logits_adv = model(x_adv)  # (N, K)
    logits_nat = model(x)  # (N, K)
    kl = F.kl_div(
        F.log_softmax(logits_adv, dim=1), F.softmax(logits_nat, dim=1), reduction="none"
    ).sum(dim=1)  # (N,)
    return F.cross_entropy(logits_nat, y, reduction="none") + beta * kl, logits_adv


OBJECTIVES: dict[str, ObjectiveFn] = {
    "at": at_objective,
    "trades": trades_objective,
    "mart": mart_objective,
}
# The objectives per example, for a weight perturbation that weighs examples (RWP).
PER_EXAMPLE: dict[str, ObjectiveFn] = {"at": at_losses, "trades": trades_losses}
# Methods whose attack ascends something other than the cross-entropy (MART attacks the CE).
ATTACK_LOSSES: dict[str, AttackLossFactory] = {"trades": trades_attack_loss}


def get_objective(method: str, *, beta: float | None = None) -> ObjectiveFn:
    """The objective of a training method by name, with its beta bound.

    Args:
        method: "at", "trades" or "mart".
        beta: the KL weight of TRADES/MART (None = the method's default, 6); AT has none.

    Raises:
        ValueError: unknown method, or a beta for a method without one.
    """
    if method not in OBJECTIVES:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    check_beta(method, beta)
    default = method_defaults(method).beta
    if default is None:
        return OBJECTIVES[method]
    return functools.partial(OBJECTIVES[method], beta=default if beta is None else beta)


def get_attack_loss(method: str) -> AttackLossFactory | None:
    """The factory of a method's attack loss, or None when the attack uses its own CE loss."""
    if method not in OBJECTIVES:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    return ATTACK_LOSSES.get(method)


def get_per_example(method: str, *, beta: float | None = None) -> ObjectiveFn:
    """The per-example objective of a training method, ``(model, x, x_adv, y) -> ((N,),
    logits)``, with its beta bound (as :func:`get_objective`).

    Raises:
        ValueError: a method without one (MART), naming those that have one.
    """
    if method not in PER_EXAMPLE:
        raise ValueError(
            f"method {method!r} has no per-example objective; those with one: "
            f"{', '.join(PER_EXAMPLE)}"
        )
    check_beta(method, beta)
    default = method_defaults(method).beta
    if default is None:
        return PER_EXAMPLE[method]
    return functools.partial(PER_EXAMPLE[method], beta=default if beta is None else beta)
