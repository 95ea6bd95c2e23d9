"""Input-space attacks in pixel space: PGD (L-inf, L2), FGSM and CW-inf, and the attack table.

:data:`ATTACKS` is the one table of named attacks: name (``pgd20``) -> display name
("PGD-20"), preset (the config of :mod:`awp.config`, or :class:`~awp.autoattack.AutoAttackConfig`)
and runner. :func:`run_attack` dispatches every config through it, ``awp eval`` builds its
attacks from it and reports label their columns with :func:`attack_label`.

Every attack takes gradients with respect to the input only (``torch.autograd.grad`` on the
input): parameter gradients are never computed nor accumulated, so an attack can run in the
middle of a training step without touching ``.grad``. The model's mode during the attack is an
explicit argument; the caller's mode and every BatchNorm running statistic are restored.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from awp.attack_names import ATTACK_KINDS, ATTACK_LABELS, ATTACK_TABLE
from awp.autoattack import AutoAttackConfig, run_autoattack
from awp.config import (
    CW20_EVAL,
    FGSM_EVAL,
    PGD10_EVAL,
    PGD20_EVAL,
    AttackConfig,
    check_eps,
)
from awp.modes import model_mode

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def cross_entropy_per_example(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """CE loss per example, (N, K), (N,) -> (N,)."""
    return F.cross_entropy(logits, y, reduction="none")


def cw_margin_per_example(
    logits: torch.Tensor, y: torch.Tensor, kappa: float = 50.0
) -> torch.Tensor:
    """CW margin loss per example: clamp(max_{j != y} z_j - z_y, max=kappa).

    Rises as the true logit falls behind the best other one. Equal to the official AWP
    evaluation's ``cwloss`` (confidence 50) up to the sign convention (that one is minimized).

    Reference: Carlini & Wagner, "Towards Evaluating the Robustness of Neural Networks", 2017.
    """
    true = logits.gather(1, y[:, None]).squeeze(1)  # (N,)
    other = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf")).amax(1)
    return torch.clamp(other - true, max=kappa)


def _rand(shape: torch.Size, generator: torch.Generator | None, like: torch.Tensor, kind: str):
    # Drawn on the CPU generator and moved, so a seed gives the same numbers on every device.
    if kind == "uniform":
        r = torch.rand(shape, generator=generator, dtype=like.dtype)
    else:
        r = torch.randn(shape, generator=generator, dtype=like.dtype)
    return r.to(like.device)


def _flat_norm(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1).view(-1, *([1] * (t.dim() - 1)))  # (N, 1, 1, 1)


def _random_start(
    x: torch.Tensor,
    *,
    eps: float,
    norm: str,
    kind: str,
    init_std: float,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """A starting delta inside the eps-ball (before clipping to [0,1])."""
    if kind == "none" or eps == 0:
        return torch.zeros_like(x)
    if kind == "gaussian":
        # TRADES' start: x + 0.001 * N(0, 1), then projected into the ball.
        delta = init_std * _rand(x.shape, generator, x, "gaussian")
        return _project(delta, eps=eps, norm=norm)
    if norm == "linf":
        return (2 * _rand(x.shape, generator, x, "uniform") - 1) * eps
    # L2: a uniform direction scaled by a uniform radius in [0, eps].
    direction = _rand(x.shape, generator, x, "gaussian")
    direction = direction / _flat_norm(direction).clamp_min(1e-12)
    radius = _rand(torch.Size([x.shape[0]]), generator, x, "uniform").view(-1, 1, 1, 1)
    return direction * radius * eps


def _project(delta: torch.Tensor, *, eps: float, norm: str) -> torch.Tensor:
    if norm == "linf":
        return delta.clamp(-eps, eps)
    scale = (eps / _flat_norm(delta).clamp_min(1e-12)).clamp(max=1.0)
    return delta * scale


def _ascend(
    delta: torch.Tensor, grad: torch.Tensor, *, step_size: float, norm: str
) -> torch.Tensor:
    if norm == "linf":
        return delta + step_size * grad.sign()
    return delta + step_size * grad / _flat_norm(grad).clamp_min(1e-12)


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    step_size: float,
    steps: int,
    norm: str = "linf",
    loss: str | LossFn = "ce",
    random_start: str = "uniform",
    restarts: int = 1,
    mode: str = "eval",
    kappa: float = 50.0,
    init_std: float = 1e-3,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Projected gradient ascent on the loss within an L-inf or L2 ball around ``x``.

    Args:
        model: classifier taking images in [0, 1]; its parameters are not differentiated.
        x: clean images, (N, C, H, W) float in [0, 1].
        y: labels, (N,) int64.
        eps: radius of the ball, pixel units ([0, 1] scale): 8/255 for linf, 0.5 for l2.
        step_size: step length, pixel units (sign step for linf, normalized-gradient step for l2).
        steps: number of ascent steps.
        norm: "linf" or "l2".
        loss: "ce" (cross-entropy), "cw" (CW margin with ``kappa``) or a callable
            ``(logits, y) -> (N,)`` per-example loss to maximize (TRADES passes its KL term).
        random_start: "uniform" in the ball, "gaussian" (``init_std`` * N(0,1)), or "none".
        restarts: independent runs; per example the worst case is kept (misclassified first,
            then the higher loss).
        mode: the model's mode during the attack, "train" or "eval". BatchNorm running
            statistics are never updated, and the caller's mode is restored afterwards.
        kappa: CW confidence.
        init_std: standard deviation of the gaussian start.
        generator: CPU generator for the random start (seeded attacks are reproducible on any
            device).

    Returns:
        x_adv, same shape as ``x``, detached, within the ball and in [0, 1].

    Reference: Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks",
    ICLR 2018.
    """
    check_eps(eps, norm)
    if steps < 0 or restarts < 1:
        raise ValueError(
            f"need steps >= 0 and restarts >= 1, got steps={steps}, restarts={restarts}"
        )
    loss_fn = _loss_fn(loss, kappa)
    x = x.detach()
    if eps == 0:  # nothing to search (no random start is drawn either): training with --eps 0
        return x.clamp(0, 1)
    best: torch.Tensor | None = None
    with model_mode(model, mode):
        for _ in range(restarts):
            delta = _random_start(
                x, eps=eps, norm=norm, kind=random_start, init_std=init_std, generator=generator
            )
            x_adv = (x + delta).clamp(0, 1)
            for _ in range(steps):
                x_adv.requires_grad_(True)
                # Only the input is differentiated: no parameter gradient is computed or stored.
                (grad,) = torch.autograd.grad(loss_fn(model(x_adv), y).sum(), x_adv)
                delta = _ascend(x_adv.detach() - x, grad, step_size=step_size, norm=norm)
                x_adv = (x + _project(delta, eps=eps, norm=norm)).clamp(0, 1)
            x_adv = x_adv.detach()
            if restarts == 1:
                return x_adv
            best = x_adv if best is None else _keep_worst(model, x, y, best, x_adv, loss_fn)
    assert best is not None
    return best


@torch.no_grad()
def _keep_worst(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    old: torch.Tensor,
    new: torch.Tensor,
    loss_fn: LossFn,
) -> torch.Tensor:
    lo, ln = model(old), model(new)
    wrong_o, wrong_n = lo.argmax(1) != y, ln.argmax(1) != y
    take = (wrong_n & ~wrong_o) | ((wrong_n == wrong_o) & (loss_fn(ln, y) > loss_fn(lo, y)))
    return torch.where(take.view(-1, *([1] * (x.dim() - 1))), new, old)


def _loss_fn(loss: str | LossFn, kappa: float) -> LossFn:
    if callable(loss):
        return loss
    if loss == "ce":
        return cross_entropy_per_example
    if loss == "cw":
        return lambda logits, y: cw_margin_per_example(logits, y, kappa)
    raise ValueError(f"unknown attack loss {loss!r}; use 'ce', 'cw' or a callable")


def fgsm(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: str = "linf",
    mode: str = "eval",
    loss: str | LossFn = "ce",
) -> torch.Tensor:
    """Fast gradient sign method: one step of size ``eps`` from ``x`` (no random start).

    Args and Returns as :func:`pgd`.

    Reference: Goodfellow et al., "Explaining and Harnessing Adversarial Examples", ICLR 2015.
    """
    return pgd(
        model,
        x,
        y,
        eps=eps,
        step_size=eps,
        steps=1,
        norm=norm,
        loss=loss,
        random_start="none",
        mode=mode,
    )


# --------------------------------------------------------------------------- the attack table
Attack = AttackConfig | AutoAttackConfig | None  # None: no attack (natural accuracy)
Runner = Callable[..., torch.Tensor]
"""``(model, x, y, cfg, *, generator, loss, seed, log) -> x_adv``: every runner takes these
keywords (each uses those it needs) and returns x_adv detached, in the ball and in [0, 1]."""


@dataclass(frozen=True)
class AttackSpec:
    """One named attack of :data:`ATTACKS`.

    Attributes:
        name: the name users type and results record (``pgd20``).
        label: the display name (``PGD-20``), e.g. a report's column.
        preset: its config with every default (one of :mod:`awp.config`'s presets, an
            :class:`~awp.autoattack.AutoAttackConfig`, or None for no attack).
        runner: the function that runs a config of this kind (see :data:`Runner`).
        options: the settings of a threat model that :meth:`configured` applies to the preset
            (``awp eval``'s ``--norm``, ``--eps``, ``--step-size``, ``--restarts``, ...).
    """

    name: str
    label: str
    preset: Attack
    runner: Runner
    options: tuple[str, ...] = ()

    @property
    def kind(self) -> str:
        """The algorithm the preset runs (``pgd``, ``cw``, ``fgsm``, ``autoattack``) or
        ``natural``: the key :func:`run_attack` dispatches on."""
        return kind_of(self.preset)

    def configured(self, **settings: Any) -> Attack:
        """The preset with those of ``settings`` that are among its :attr:`options` (the others
        are ignored: FGSM takes no step size, AutoAttack no restarts)."""
        if self.preset is None:
            return None
        return dataclasses.replace(
            self.preset, **{k: v for k, v in settings.items() if k in self.options}
        )


def kind_of(attack: Attack) -> str:
    """The runner key of a config: its ``name`` (``pgd``, ``cw``, ``fgsm``, ``autoattack``), or
    ``natural`` for None."""
    return "natural" if attack is None else attack.name


def _natural(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: None, **_: Any):
    return x


def _run_fgsm(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: AttackConfig,
    *,
    loss: str | LossFn | None = None,
    **_: Any,
) -> torch.Tensor:
    return fgsm(model, x, y, eps=cfg.eps, norm=cfg.norm, mode=cfg.mode, loss=loss or "ce")


def _run_pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: AttackConfig,
    *,
    generator: torch.Generator | None = None,
    loss: str | LossFn | None = None,
    **_: Any,
) -> torch.Tensor:
    # PGD and CW differ in their default loss only: CE, or the CW margin (config name "cw").
    return pgd(
        model,
        x,
        y,
        eps=cfg.eps,
        step_size=cfg.step_size,
        steps=cfg.steps,
        norm=cfg.norm,
        loss=loss or ("cw" if cfg.name == "cw" else "ce"),
        random_start=cfg.random_start,
        restarts=cfg.restarts,
        mode=cfg.mode,
        kappa=cfg.kappa,
        generator=generator,
    )


_THREAT = ("norm", "eps")
_ITERATIVE = (*_THREAT, "step_size", "restarts")

# The preset, runner and threat-model settings of every name of awp.attack_names (its torch-free
# half, which gives the names, labels and kinds): a name without an entry here fails at import.
_ENTRIES: dict[str, tuple[Attack | None, Runner, tuple[str, ...]]] = {
    "natural": (None, _natural, ()),
    "fgsm": (FGSM_EVAL, _run_fgsm, _THREAT),
    "pgd10": (PGD10_EVAL, _run_pgd, _ITERATIVE),
    "pgd20": (PGD20_EVAL, _run_pgd, _ITERATIVE),
    "cw20": (CW20_EVAL, _run_pgd, _ITERATIVE),
    "autoattack": (AutoAttackConfig(), run_autoattack, (*_THREAT, "version", "implementation")),
}
if set(_ENTRIES) != set(ATTACK_LABELS):
    raise RuntimeError(
        f"awp.attack_names names {sorted(ATTACK_LABELS)}, awp.attacks.ATTACKS runs "
        f"{sorted(_ENTRIES)}: give every name one entry"
    )
ATTACKS: Mapping[str, AttackSpec] = {
    name: AttackSpec(name, label, *_ENTRIES[name]) for name, label in ATTACK_LABELS.items()
}
"""Every named attack, in the order ``awp eval`` lists them."""
if any(ATTACKS[name].kind != kind for name, _, kind in ATTACK_TABLE):
    raise RuntimeError("awp.attack_names gives an attack another kind than its preset's")

_RUNNERS: dict[str, Runner] = {spec.kind: spec.runner for spec in ATTACKS.values()}
# One runner per kind (pgd10 and pgd20 share PGD's), and one for every AttackConfig name.
if any(spec.runner is not _RUNNERS[spec.kind] for spec in ATTACKS.values()):
    raise RuntimeError("two entries of ATTACKS run the same kind of attack with other runners")
if not set(ATTACK_KINDS) <= set(_RUNNERS):
    raise RuntimeError(f"awp.attack_names.ATTACK_KINDS {ATTACK_KINDS} has no runner in ATTACKS")


def attack_spec(name: str) -> AttackSpec:
    """The table's entry ``name``.

    Raises:
        ValueError: naming the unknown attack and listing the known ones.
    """
    try:
        return ATTACKS[name]
    except KeyError:
        raise ValueError(f"unknown attack {name!r}; choose one of {', '.join(ATTACKS)}") from None


def attack_label(name: str) -> str:
    """The display name of attack ``name``: ``attack_label("pgd20") == "PGD-20"``.

    Raises:
        ValueError: ``name`` is not in :data:`ATTACKS` (the message lists those that are).
    """
    return attack_spec(name).label


def run_attack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: Attack,
    *,
    generator: torch.Generator | None = None,
    loss: str | LossFn | None = None,
    seed: int = 0,
    log: list[str] | None = None,
) -> torch.Tensor:
    """Run the attack described by ``cfg`` through its runner in :data:`ATTACKS` (see
    :func:`pgd` for shapes and units); ``cfg`` None returns ``x`` (no attack).

    Args:
        generator: CPU generator of the random starts (PGD, CW).
        loss: overrides the attack's own loss (TRADES attacks its KL term).
        seed: seed of AutoAttack's random starts.
        log: AutoAttack (original) appends its own log lines here.

    Raises:
        ValueError: no runner for the config's kind (the message lists those there are).
    """
    runner = _RUNNERS.get(kind_of(cfg))
    if runner is None:
        raise ValueError(
            f"no runner for attack {kind_of(cfg)!r}; the table has {', '.join(_RUNNERS)}"
        )
    return runner(model, x, y, cfg, generator=generator, loss=loss, seed=seed, log=log)
