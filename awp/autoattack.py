"""AutoAttack (Croce & Hein, 2020) as one entry of the attack table: its config and runner.

:class:`AutoAttackConfig` names the version, threat model and implementation;
:func:`autoattack` runs it in eval mode without touching ``.grad``, the model's mode or the
global RNG; :func:`run_autoattack` is its runner in :data:`awp.attacks.ATTACKS` (the signature
every runner there shares); :func:`sub_attacks` counts what each sub-attack broke from the
original's own log.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from awp.config import check_eps
from awp.extras import require
from awp.modes import model_mode

AA_VERSIONS = ("standard", "plus", "rand")
# "original": Croce & Hein's code as PyPI serves it (pyautoattack), what RobustBench's numbers
# come from; "torchattacks": Kim's reimplementation.
AA_IMPLEMENTATIONS = ("original", "torchattacks")
AA_MODULES = {"original": "pyautoattack", "torchattacks": "torchattacks"}


@dataclass(frozen=True)
class AutoAttackConfig:
    """AutoAttack (APGD-CE, APGD-T, FAB-T, Square for "standard").

    Args:
        norm: "linf" or "l2".
        eps: radius in [0, 1] pixel units.
        version: "standard" (the leaderboard's), "plus" or "rand".
        implementation: "original" (pyautoattack, the code RobustBench evaluates with) or
            "torchattacks" (its reimplementation).
    """

    name: ClassVar[str] = "autoattack"  # its runner's key in awp.attacks (not a field)

    norm: str = "linf"
    eps: float = 8 / 255
    version: str = "standard"
    implementation: str = "original"

    def __post_init__(self) -> None:
        if self.norm not in ("linf", "l2"):
            raise ValueError(f"unknown norm {self.norm!r}; choose linf or l2")
        if self.version not in AA_VERSIONS:
            raise ValueError(f"unknown AutoAttack version {self.version!r}; one of {AA_VERSIONS}")
        if self.implementation not in AA_IMPLEMENTATIONS:
            raise ValueError(
                f"unknown AutoAttack implementation {self.implementation!r}; one of "
                f"{AA_IMPLEMENTATIONS}"
            )
        check_eps(self.eps, self.norm)

    def describe(self) -> str:
        eps = f"{self.eps * 255:g}/255" if self.norm == "linf" else f"{self.eps:g}"
        by = "" if self.implementation == "original" else f" ({self.implementation})"
        return f"AutoAttack-{self.version} {self.norm} eps={eps}{by}"


def require_autoattack(implementation: str = "original"):
    """Import the AutoAttack package of ``implementation``, or raise
    :class:`MissingDependencyError` saying how to install it."""
    return require(AA_MODULES[implementation], purpose=f"AutoAttack ({implementation})")


@contextmanager
def _no_param_grads(model: nn.Module) -> Iterator[None]:
    # FAB (both implementations) calls .backward(): with requires_grad off no .grad is written.
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def autoattack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    norm: str = "linf",
    eps: float = 8 / 255,
    version: str = "standard",
    seed: int = 0,
    implementation: str = "original",
    log: list[str] | None = None,
) -> torch.Tensor:
    """AutoAttack in eval mode, without touching ``.grad``, the mode or the global RNG.

    Both implementations reseed torch's global generator inside every sub-attack; it is
    restored afterwards. With fewer than 10 classes the targeted sub-attacks (APGD-T, FAB-T)
    take every other class as a target (the original takes the top 9 of 10).

    Args:
        model: classifier on [0, 1] images.
        x: images (N, C, H, W) float in [0, 1]; y: labels (N,).
        norm: "linf" or "l2"; eps: radius in pixel units.
        version: "standard", "plus" or "rand".
        seed: seed of the attacks' random starts.
        implementation: "original" (pyautoattack) or "torchattacks".
        log: when given, the original's own log lines are appended (its clean accuracy, each
            sub-attack's successes, the robust accuracy after each).

    Returns:
        x_adv (N, C, H, W) in the ball and in [0, 1], detached.

    Raises:
        MissingDependencyError: the implementation's package is not installed (the message
            says how to install it).

    Reference: Croce & Hein, "Reliable Evaluation of Adversarial Robustness with an Ensemble of
    Diverse Parameter-free Attacks", ICML 2020 (code: fra31/auto-attack, packaged as
    pyautoattack; reimplementation: Kim, torchattacks).
    """
    package = require_autoattack(implementation)
    devices = [x.device] if x.device.type == "cuda" else []
    with model_mode(model, "eval"), _no_param_grads(model), torch.random.fork_rng(devices):
        with torch.no_grad():
            n_classes = int(model(x[:1]).shape[1])
        if n_classes < 4:
            raise ValueError(
                f"AutoAttack needs at least 4 classes (its targeted DLR loss compares the top "
                f"four logits), the model has {n_classes}; use pgd20 and cw20 instead"
            )
        torch_norm = {"linf": "Linf", "l2": "L2"}[norm]
        if implementation == "torchattacks":
            attack = package.AutoAttack(
                model, norm=torch_norm, eps=eps, version=version, n_classes=n_classes, seed=seed
            )
            return attack(x, y).detach()
        with _captured_log(AA_LOGGER) as lines:
            adversary = package.AutoAttack(
                model, norm=torch_norm, eps=eps, version=version, seed=seed, device=x.device
            )
            targets = min(9, n_classes - 1)
            adversary.apgd_targeted.n_target_classes = targets
            adversary.fab.n_target_classes = targets
            x_adv, _ = adversary.run_standard_evaluation(x, y, batch_size=len(x))
        if log is not None:
            log.extend(lines)
    return x_adv.detach()


def run_autoattack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: AutoAttackConfig,
    *,
    generator: torch.Generator | None = None,
    loss: Any = None,
    seed: int = 0,
    log: list[str] | None = None,
) -> torch.Tensor:
    """The runner of the attack table's ``autoattack`` entry: :func:`autoattack` with ``cfg``.

    ``generator`` is not used (AutoAttack seeds its own random starts with ``seed``).

    Raises:
        ValueError: a ``loss`` is given; AutoAttack attacks its own losses.
    """
    if loss is not None:
        raise ValueError(
            "AutoAttack attacks its own losses (CE, DLR); pass loss= only to pgd, fgsm or cw"
        )
    return autoattack(
        model,
        x,
        y,
        norm=cfg.norm,
        eps=cfg.eps,
        version=cfg.version,
        seed=seed,
        implementation=cfg.implementation,
        log=log,
    )


AA_LOGGER = "auto-attack"  # the original's logger
_SUCCESSES = re.compile(r"^(?P<name>[\w-]+) - \d+/\d+ - (?P<broken>\d+) out of (?P<attacked>\d+)")


@contextmanager
def _captured_log(name: str) -> Iterator[list[str]]:
    """The messages of logger ``name`` (debug and up) while the block runs, kept from the
    root logger's handlers (the caller decides what to show)."""
    logger = logging.getLogger(name)
    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    handler = Keep(logging.DEBUG)
    level, propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        yield lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


@dataclass(frozen=True)
class SubAttack:
    """One sub-attack of the original AutoAttack, counted from its own log.

    Attributes:
        name: "apgd-ce", "apgd-t", "fab-t", "square", ...
        attacked: points it ran on (those still robust when its turn came).
        broken: points it broke.
    """

    name: str
    attacked: int
    broken: int


def sub_attacks(log: Sequence[str]) -> tuple[SubAttack, ...]:
    """The sub-attacks' counts summed over the batches of an AutoAttack log, in order."""
    counts: dict[str, list[int]] = {}
    for line in log:
        m = _SUCCESSES.match(line)
        if m:
            c = counts.setdefault(m["name"], [0, 0])
            c[0] += int(m["attacked"])
            c[1] += int(m["broken"])
    return tuple(SubAttack(name, a, b) for name, (a, b) in counts.items())
