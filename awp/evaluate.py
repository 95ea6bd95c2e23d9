"""Natural and robust accuracy of a model on tensors held on its device.

:func:`attack_outcomes` is the one loop that attacks examples batch by batch and evaluates the
model on them: per-example correctness and cross-entropy. Everything that measures a model
under attack calls it: :func:`evaluate_attack` (one attack's accuracy and loss, the per-epoch
evaluation of training and the robust gap), :func:`evaluate_robustness` (several attacks as a
cascade, what ``awp eval`` reports), the flatness estimates and the landscape's points. This
module computes; the application prints, shows progress bars and writes the JSON.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from awp.attacks import Attack, run_attack
from awp.augment import as_float
from awp.autoattack import (  # noqa: F401 - re-exported: awp.evaluate's names before the split
    AA_IMPLEMENTATIONS,
    AA_LOGGER,
    AA_MODULES,
    AA_VERSIONS,
    AutoAttackConfig,
    SubAttack,
    autoattack,
    require_autoattack,
    sub_attacks,
)
from awp.config import AttackConfig
from awp.eval_config import SPLITS as SPLITS
from awp.eval_config import EvalConfig as EvalConfig
from awp.modes import model_mode
from awp.seeds import derive_seed

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""A loss ``(outputs, targets) -> value``: a scalar (the batch's mean, as torch's losses
reduce by default) or one value per example, shape (B,). None everywhere means cross-entropy."""


def checked_loss(outputs: torch.Tensor, y: torch.Tensor, loss: Loss) -> torch.Tensor:
    """``loss(outputs, y)``, checked: a scalar (the batch's mean) or (B,) values.

    Raises:
        ValueError: a loss that returns neither a scalar nor (B,) values.
    """
    value = loss(outputs, y)
    n = len(outputs)
    if not isinstance(value, torch.Tensor) or tuple(value.shape) not in ((), (n,)):
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise ValueError(
            f"the loss returned {shape}; it must return a scalar tensor (the batch's mean) or "
            f"one value per example ({n},), e.g. torch.nn.functional.mse_loss(outputs, targets)"
        )
    return value


def loss_values(outputs: torch.Tensor, y: torch.Tensor, loss: Loss | None) -> torch.Tensor:
    """A batch's loss as one value per example, (B,), differentiable.

    Cross-entropy (``loss`` None) per example; a loss that returns a scalar is taken as the
    batch's mean, so every example carries that mean (sums and means over examples are exact,
    the values of single examples are not separated).
    """
    if loss is None:
        return F.cross_entropy(outputs, y, reduction="none")
    value = checked_loss(outputs, y, loss)
    return value.expand(len(outputs)) if value.dim() == 0 else value


def batch_loss_sum(outputs: torch.Tensor, y: torch.Tensor, loss: Loss | None) -> torch.Tensor:
    """The loss summed over a batch, a differentiable scalar: cross-entropy's sum (``loss``
    None, exactly ``F.cross_entropy(..., reduction="sum")``), B times a scalar loss (its mean),
    or the sum of per-example values."""
    if loss is None:
        return F.cross_entropy(outputs, y, reduction="sum")
    value = checked_loss(outputs, y, loss)
    return value * len(outputs) if value.dim() == 0 else value.sum()


def correct_of(outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
    """Per-example correctness of a classifier's outputs, (B,) bool, or None when the outputs
    are not class scores for these targets.

    Classes are dimension 1, as torch's cross-entropy has them: (B, K) with labels (B,), or
    (B, K, d1, ...) with labels (B, d1, ...), where an example is right when every position is.
    Float targets (a regression) or other shapes have no accuracy.
    """
    if outputs.dim() < 2 or y.is_floating_point() or y.is_complex():
        return None
    if tuple(y.shape) != (outputs.shape[0], *outputs.shape[2:]):
        return None
    right = outputs.argmax(1) == y
    return right if right.dim() == 1 else right.reshape(len(right), -1).all(1)


@dataclass(frozen=True)
class Accuracy:
    """Accuracy and mean loss (cross-entropy unless another loss was given) over ``n``
    examples; accuracy is NaN for outputs that are not class scores (:func:`correct_of`)."""

    accuracy: float
    loss: float
    n: int


# --------------------------------------------------------------------------- robustness report
EvalAttack = Attack


@dataclass(frozen=True)
class Outcomes:
    """Per-example outcomes of a model on (attacked) examples.

    Attributes:
        correct: (N,) bool on the labels' device: right on the (attacked) input (all False
            when ``classified`` is False).
        loss: (N,) float64 on the CPU: the loss of each example (cross-entropy in nats unless
            another loss was given; see :func:`loss_values`).
        loss_sum: the loss summed batch by batch (each batch's sum in the outputs' dtype,
            added in float64), the number the mean losses of :func:`evaluate_attack` come from.
        x_adv: the inputs the model was evaluated on, (N, C, H, W), when asked to keep them.
        log: the original AutoAttack's own log lines, batch after batch (else empty).
        classified: the outputs were class scores for the labels (:func:`correct_of`); False
            for a regression, whose accuracy is undefined.
    """

    correct: torch.Tensor
    loss: torch.Tensor
    loss_sum: float
    x_adv: torch.Tensor | None = None
    log: tuple[str, ...] = ()
    classified: bool = True

    @property
    def n(self) -> int:
        return int(self.correct.numel())

    @property
    def errors(self) -> int:
        """Misclassified examples."""
        return int((~self.correct).sum())

    @staticmethod
    def cat(parts: Sequence[Outcomes]) -> Outcomes:
        """The outcomes of consecutive parts of a set, as one."""
        if not parts:
            return Outcomes(
                torch.zeros(0, dtype=torch.bool), torch.zeros(0, dtype=torch.float64), 0.0
            )
        advs = [p.x_adv for p in parts]
        return Outcomes(
            torch.cat([p.correct for p in parts]),
            torch.cat([p.loss for p in parts]),
            float(sum(p.loss_sum for p in parts)),
            torch.cat(advs) if all(a is not None for a in advs) else None,
            tuple(line for p in parts for line in p.log),
            all(p.classified for p in parts),
        )


def attack_outcomes(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    attack: EvalAttack,
    *,
    batch_size: int = 256,
    generator: torch.Generator | None = None,
    seed: int = 0,
    keep_adv: bool = False,
    on_batch: Callable[[int], None] | None = None,
    loss: Loss | None = None,
) -> Outcomes:
    """Attack the examples batch by batch at the current weights and evaluate the model on them.

    The attack runs in the mode its config records (input gradients only); the evaluation is
    in eval mode without gradients; the model's modes, weights and BatchNorm statistics are
    left as they were.

    Args:
        model: classifier on [0, 1] images; with ``attack`` None, any model on any inputs
            (e.g. (N, 8) tabular features, token sequences).
        x: (N, C, H, W) uint8 (0..255) or float in [0, 1], on the model's device; with
            ``attack`` None, (N, ...) of any shape and dtype (uint8 is still divided by 255).
        y: (N,) int64 labels (or the targets ``loss`` takes, first dimension N).
        attack: :class:`~awp.config.AttackConfig`, :class:`AutoAttackConfig`, or None (clean).
        batch_size: examples per batch.
        generator: CPU generator of the random starts, used batch after batch (default: one
            seeded with ``seed``).
        seed: seed of the default generator and of AutoAttack.
        keep_adv: also return the attacked inputs (``x_adv``).
        on_batch: called with the size of each finished batch (progress bars).
        loss: ``(outputs, targets) -> scalar mean or (B,)`` measured on the (attacked) inputs
            (default cross-entropy); the attack keeps its own objective.

    Returns:
        :class:`Outcomes`.
    """
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} examples but y has {len(y)}")
    generator = generator if generator is not None else torch.Generator().manual_seed(seed)
    correct = torch.zeros(len(y), dtype=torch.bool, device=y.device)
    losses, advs, loss_sum = [], [], 0.0
    log: list[str] = []
    classified = True
    for start in range(0, len(x), batch_size):
        xb = as_float(x[start : start + batch_size])  # (B, C, H, W)
        yb = y[start : start + batch_size]
        xb = run_attack(model, xb, yb, attack, generator=generator, seed=seed, log=log)
        with torch.no_grad(), model_mode(model, "eval"):
            logits = model(xb)  # (B, K)
            right = correct_of(logits, yb)
            if right is None:
                classified = False
            else:
                correct[start : start + len(yb)] = right
            if loss is None:  # cross-entropy, as it always was (the same float32 sums)
                loss_sum += float(F.cross_entropy(logits, yb, reduction="sum"))
                losses.append(F.cross_entropy(logits, yb, reduction="none").double().cpu())
            else:
                value = checked_loss(logits, yb, loss)  # the batch's mean, or (B,) values
                each = value.expand(len(yb)) if value.dim() == 0 else value
                loss_sum += float(value * len(yb) if value.dim() == 0 else value.sum())
                losses.append(each.double().cpu())
        if keep_adv:
            advs.append(xb)
        if on_batch is not None:
            on_batch(len(yb))
    per_example = torch.cat(losses) if losses else torch.zeros(0, dtype=torch.float64)
    x_adv = torch.cat(advs) if keep_adv and advs else None
    if not classified:
        correct.zero_()
    return Outcomes(correct, per_example, loss_sum, x_adv, tuple(log), classified)


def evaluate_attack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    attack: AttackConfig | None,
    *,
    batch_size: int = 256,
    seed: int = 0,
    loss: Loss | None = None,
) -> Accuracy:
    """Accuracy and mean loss of ``model`` on ``x`` (natural when ``attack`` is None).

    The model is evaluated in eval mode (its mode is restored afterwards); the attack runs in
    the mode its config records, its random starts drawn from a CPU generator seeded with
    ``seed``, so the number is reproducible.

    Args:
        model: classifier on [0, 1] images.
        x: (N, C, H, W) uint8 (0..255) or float in [0, 1], on the model's device.
        y: (N,) int64 labels.
        attack: the attack, or None for natural accuracy.
        batch_size: examples per forward pass.
        seed: seed of the attack's random start.
        loss: the loss measured (default cross-entropy; see :func:`attack_outcomes`).

    Returns:
        :class:`Accuracy` (fraction in [0, 1] or NaN without classes, mean loss, count).
    """
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} examples but y has {len(y)}")
    if len(x) == 0:
        return Accuracy(float("nan"), float("nan"), 0)
    out = attack_outcomes(model, x, y, attack, batch_size=batch_size, seed=seed, loss=loss)
    return Accuracy(accuracy_of(out), out.loss_sum / len(x), len(x))


def accuracy_of(out: Outcomes) -> float:
    """The fraction right of some outcomes; NaN when they have no classes or no examples."""
    if not out.classified or out.n == 0:
        return float("nan")
    return int(out.correct.sum()) / out.n


@dataclass(frozen=True)
class AttackRow:
    """One attack's line of a :class:`RobustnessReport`.

    Attributes:
        name: the CLI name ("natural", "pgd20", ...); setting: its description.
        accuracy: fraction right under this attack and every attack before it (the cascade's
            number; the last row's is the worst-case robust accuracy).
        accuracy_alone: fraction right under this attack alone (None in a cascade, where it is
            only run on the points still robust).
        attacked: points this attack ran on; seconds: its wall time.
        log: the original AutoAttack's own log lines (else empty).
        sub_attacks: the counts of its sub-attacks from that log, in order (else empty):
            each ran on the points still right after the ones before it.
    """

    name: str
    setting: str
    accuracy: float
    accuracy_alone: float | None
    attacked: int
    seconds: float
    log: tuple[str, ...] = ()
    sub_attacks: tuple[SubAttack, ...] = ()


@dataclass(frozen=True)
class RobustnessReport:
    """Result of :func:`evaluate_robustness`: rows in attack order, the per-point outcome."""

    n: int
    cascade: bool
    rows: tuple[AttackRow, ...]
    robust: torch.Tensor  # (N,) bool: right under every attack

    @property
    def robust_accuracy(self) -> float:
        return float(self.robust.float().mean()) if self.n else float("nan")


def evaluate_robustness(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    attacks: Mapping[str, EvalAttack],
    *,
    batch_size: int = 256,
    seed: int = 0,
    cascade: bool = True,
    on_batch: Callable[[str, int, int], None] | None = None,
) -> RobustnessReport:
    """Natural and robust accuracy under several attacks, the way AutoAttack reports it.

    With ``cascade`` each attack runs only on the points still right under every attack
    before it (points already lost cannot be won back), which gives the same per-point worst
    case as running every attack on every point, for a fraction of the cost. Without it every
    attack runs on every point and each row also gets its accuracy alone.

    Attack k draws its random starts from a CPU generator seeded with
    ``derive_seed(seed, "attack", k)`` (:mod:`awp.seeds`); a random
    start depends on which points share the batch, so only deterministic attacks (FGSM, or PGD/CW
    with ``random_start="none"``) give the two modes bit-identical outcomes.

    Args:
        model: classifier on [0, 1] images (eval mode during evaluation; restored after).
        x: (N, C, H, W) uint8 or float in [0, 1] on the model's device; y: (N,) labels.
        attacks: name -> attack, in order (None = natural accuracy).
        batch_size: examples per batch.
        seed: base seed of the attacks' random starts.
        cascade: attack only the points still robust.
        on_batch: ``(attack name, examples done, examples to do)`` after each batch.

    Returns:
        :class:`RobustnessReport`.
    """
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} examples but y has {len(y)}")
    if not attacks:
        raise ValueError("no attacks to evaluate: give at least one (e.g. natural)")
    robust = torch.ones(len(y), dtype=torch.bool, device=y.device)
    rows = []
    for k, (name, attack) in enumerate(attacks.items()):
        t0 = time.perf_counter()
        idx = robust.nonzero().squeeze(1) if cascade else torch.arange(len(y), device=y.device)
        done = 0

        def tick(b: int, name: str = name, total: int = len(idx)) -> None:
            nonlocal done
            done += b
            if on_batch is not None:
                on_batch(name, done, total)

        ok = torch.zeros(len(y), dtype=torch.bool, device=y.device)
        log: tuple[str, ...] = ()
        if len(idx):
            outcomes = attack_outcomes(
                model,
                x[idx],
                y[idx],
                attack,
                batch_size=batch_size,
                seed=derive_seed(seed, "attack", k),
                on_batch=tick,
            )
            ok[idx], log = outcomes.correct, outcomes.log
        robust &= ok
        n = max(len(y), 1)
        rows.append(
            AttackRow(
                name=name,
                setting=attack.describe() if attack is not None else "clean",
                accuracy=float(robust.sum()) / n,
                accuracy_alone=None if cascade else float(ok.sum()) / n,
                attacked=len(idx),
                seconds=time.perf_counter() - t0,
                log=log,
                sub_attacks=sub_attacks(log),
            )
        )
    return RobustnessReport(n=len(y), cascade=cascade, rows=tuple(rows), robust=robust)
