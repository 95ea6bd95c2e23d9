"""Worst-case flatness: max over ||v_l|| <= gamma ||w_l|| of rho(w + v) - rho(w)

AWP minimizes it.

v comes from a projected ascent on the weights (:func:`awp.perturb.weight_ascent`, the one AWP
ascent, with layer-normalized steps) jointly with the input attack, regenerated on w + v at
every step; v is shared by the whole subset, or one per batch. Restarts start from v = 0 (whose
first step is AWP's direction) and from random points of the ball; the worst is kept.

Reference: Wu, Xia, Wang, NeurIPS 2020, Eq. (11)-(12) and rebuttal Common Q1.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from analysis.config import WorstCaseConfig
from analysis.flatness import FlatnessConfig, Record, one_by_one
from analysis.noise import Params, global_norm
from analysis.store import UnitKey
from awp.attacks import run_attack
from awp.augment import as_float
from awp.config import AttackConfig
from awp.evaluate import Loss, attack_outcomes, batch_loss_sum
from awp.modes import bn_recomputed, model_mode
from awp.perturb import perturbed, select_params, weight_ascent
from awp.seeds import generator_for


def worst_case_perturbation(
    model: nn.Module,
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    params: Params,
    *,
    gamma: float,
    steps: int,
    step_fraction: float,
    attack: AttackConfig,
    v0: Mapping[str, torch.Tensor] | None = None,
    seed_parts: tuple = (0,),
    loss: Loss | None = None,
) -> dict[str, torch.Tensor]:
    """Projected ascent of the robust loss on v, x_adv regenerated on w+v every step.

    :func:`awp.perturb.weight_ascent` with a relative step ``step_fraction * gamma`` on the mean
    robust cross-entropy over all ``batches`` (accumulated batch by batch, so v is shared by the
    whole set), model in eval mode, every step projected onto ||v_l|| <= gamma * ||w_l||. From
    v0 = 0 with one step and step_fraction = 1 this is AWP's v_l = gamma ||w_l|| g_l / ||g_l||.

    Args:
        model: the network; its weights, mode, BatchNorm statistics and ``.grad`` are unchanged.
        batches: list of (x (B, C, H, W) float in [0, 1], y (B,)) on the model's device.
        params: name -> perturbed parameter.
        gamma: relative radius; steps: ascent steps; step_fraction: step / (gamma ||w_l||).
        attack: regenerated on w + v before every step.
        v0: starting point (name -> tensor) inside the ball; None starts from v = 0.
        seed_parts: seed of the attacks' random starts (step t adds ``("step", t)``).
        loss: the loss ascended (default cross-entropy; see :data:`awp.evaluate.Loss`).

    Returns:
        name -> v_l, detached, ||v_l|| <= gamma * ||w_l||.

    Reference: Wu et al., NeurIPS 2020, Eq. (11)-(12) (K2 projected steps), here on the robust
    loss with the input attack regenerated at every step.
    """
    total = sum(len(yb) for _, yb in batches)
    step = iter(range(steps))

    def robust_losses() -> Iterator[torch.Tensor]:
        gen = generator_for(*seed_parts, "step", next(step))
        for xb, yb in batches:
            x_adv = run_attack(model, xb, yb, attack, generator=gen)
            with model_mode(model, "eval"):
                value = batch_loss_sum(model(x_adv), yb, loss) / total
            yield value

    if v0 is None:  # project from the first step, as from any start
        v0 = {n: torch.zeros_like(p).detach() for n, p in params.items()}
    return weight_ascent(
        robust_losses, params, gamma=gamma, steps=steps, step_size=step_fraction * gamma, v0=v0
    )


def random_start(
    params: Params, *, gamma: float, restart: int, parts: tuple
) -> dict[str, torch.Tensor]:
    """Where restart ``restart`` of the ascent starts: v = 0 for restart 0 (its first step is
    AWP's direction), else a random point of the ball drawn from the seed ``parts``."""
    v0 = {n: torch.zeros_like(p).detach() for n, p in params.items()}
    if restart == 0 or gamma == 0:
        return v0
    gen = generator_for(*parts, "start")
    for n, p in params.items():
        z = torch.randn(p.shape, generator=gen, dtype=p.dtype)
        r = float(torch.rand((), generator=gen, dtype=torch.float64))
        v0[n] = (z * (r * gamma * float(p.detach().norm()) / (float(z.norm()) + 1e-20))).to(
            p.device
        )
    return v0


def worst_unit(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    cfg: FlatnessConfig,
    worst: WorstCaseConfig,
    gamma: float,
    restart: int,
    loss: Loss | None = None,
    bn_x: torch.Tensor | None = None,
) -> Record:
    """rho(w + v) for v from one restart of the projected ascent (shared or per batch).

    Restart 0 starts from v = 0 (its first step is AWP's direction); restart r > 0 from a
    random point of the ball. The final robust error is measured with the baseline's attack
    seed, batch by batch, so ``gamma = 0`` reproduces rho(w) exactly. ``loss`` is ascended and
    measured; ``bn_x`` re-estimates the BatchNorm statistics at w + v for the measurement
    (the ascent itself runs with w's, in eval mode).

    Returns:
        ``{"batch_errors", "batch_loss_sums", "batch_n", "v_ratio"}`` per batch of the subset.
    """
    params = select_params(model, cfg.params)
    batches = [
        (as_float(x[s : s + cfg.batch_size]), y[s : s + cfg.batch_size])
        for s in range(0, len(y), cfg.batch_size)
    ]

    def ascend(part: list[tuple[torch.Tensor, torch.Tensor]], seed: tuple) -> dict:
        v0 = random_start(params, gamma=gamma, restart=restart, parts=seed)
        if gamma == 0:
            return v0
        return worst_case_perturbation(
            model,
            part,
            params,
            gamma=gamma,
            steps=worst.ascent_steps,
            step_fraction=worst.step_fraction,
            attack=cfg.attack,
            v0=v0,
            seed_parts=seed,
            loss=loss,
        )

    base_parts = (cfg.seed, "worst", gamma, restart)
    if worst.per_batch:
        vs = [ascend([b], (*base_parts, "batch", i)) for i, b in enumerate(batches)]
    else:
        vs = [ascend(batches, base_parts)] * len(batches)
    return _measure(model, batches, vs, params, cfg, loss=loss, bn_x=bn_x)


def _measure(
    model: nn.Module,
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    vs: Sequence[Mapping[str, torch.Tensor]],
    params: Params,
    cfg: FlatnessConfig,
    *,
    loss: Loss | None = None,
    bn_x: torch.Tensor | None = None,
) -> Record:
    """Robust outcomes of every batch at w + its v, with the baseline's attack seeds."""
    eval_gen = generator_for(cfg.seed, "attack")  # the baseline's sequence of random starts
    errors, loss_sums, counts, ratios = [], [], [], []
    w_norm = global_norm(list(params.values()))
    first = 0
    for (xb, yb), v in zip(batches, vs):
        with perturbed(params, v), bn_recomputed(model, bn_x, batch_size=cfg.batch_size):
            if cfg.per_example:  # the baseline's per-example attack seeds
                o = one_by_one(model, xb, yb, cfg, first, loss=loss)
            else:
                o = attack_outcomes(
                    model, xb, yb, cfg.attack, batch_size=len(yb), generator=eval_gen, loss=loss
                )
        first += len(yb)
        errors.append(o.errors if o.classified else float("nan"))
        loss_sums.append(float(o.loss.sum()))
        counts.append(len(yb))
        ratios.append(global_norm(list(v.values())) / w_norm)
    return {
        "batch_errors": errors,
        "batch_loss_sums": loss_sums,
        "batch_n": counts,
        "v_ratio": float(np.mean(ratios)) if ratios else 0.0,
    }


def worst_key(gamma: float, restart: int, worst: WorstCaseConfig) -> str:
    """A worst-case unit's key; it names the ascent settings, so runs with other settings
    add their own units instead of clashing with these."""
    key = UnitKey.of(
        "worst",
        gamma=float(gamma),
        r=restart,
        steps=worst.ascent_steps,
        fraction=float(worst.step_fraction),
        per_batch=bool(worst.per_batch),
    )
    return str(key)


@dataclass(frozen=True)
class WorstCaseEstimate:
    """Worst-case flatness at one gamma: max over restarts (per batch with ``per_batch``)."""

    gamma: float
    restarts: int
    per_batch: bool
    n: int
    base_error: float
    worst_error: float
    flatness: float
    base_loss: float
    worst_loss: float
    flatness_loss: float
    v_ratio: float


def summarize_worst(
    base: Record, restarts: Sequence[Record], *, gamma: float, per_batch: bool
) -> WorstCaseEstimate:
    """Keep the worst restart (per batch with ``per_batch``): most errors, then highest loss."""
    if not restarts:
        raise ValueError("no restarts to summarize")
    n = int(base["n"])
    if per_batch:
        nb = len(restarts[0]["batch_errors"])
        errors = loss = 0.0
        for b in range(nb):
            best = max(restarts, key=lambda r: (r["batch_errors"][b], r["batch_loss_sums"][b]))
            errors += best["batch_errors"][b]
            loss += best["batch_loss_sums"][b]
        ratio = float(np.mean([r["v_ratio"] for r in restarts]))
    else:
        best = max(restarts, key=lambda r: (sum(r["batch_errors"]), sum(r["batch_loss_sums"])))
        errors, loss, ratio = (
            sum(best["batch_errors"]),
            sum(best["batch_loss_sums"]),
            best["v_ratio"],
        )
    base_err, base_loss = base["errors"] / n, base["loss_sum"] / n
    return WorstCaseEstimate(
        gamma=float(gamma),
        restarts=len(restarts),
        per_batch=per_batch,
        n=n,
        base_error=base_err,
        worst_error=errors / n,
        flatness=errors / n - base_err,
        base_loss=base_loss,
        worst_loss=loss / n,
        flatness_loss=loss / n - base_loss,
        v_ratio=float(ratio),
    )
