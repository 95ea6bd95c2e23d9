"""Adaptive sharpness, worst case and average case, on the clean or the robust loss.

With T_w = |w| elementwise (T_w = 1 for plain, non-adaptive sharpness) and batches B of m
examples (m-sharpness):

    S_max(w) = E_B [ max_{||T_w^-1 d||_p <= rho} L_B(w + d) - L_B(w) ],     p = 2 or inf,
    S_avg(w) = E_B E_{d ~ N(0, rho^2 diag(T_w^2))} [ L_B(w + d) - L_B(w) ].

L_B is the mean loss on B: cross-entropy unless a loss callable ``(outputs, targets) -> scalar``
is given. The robust loss evaluates it on x_adv regenerated at w + d by the attack (any
:class:`~awp.config.AttackConfig` of the toolkit); with ``attack=None`` it is the clean loss,
and then the model may be any ``nn.Module`` on inputs of any shape.

**Which parameters, and T_w.** As the official code (``sharpness.py`` perturbs every tensor of
``model.parameters()``), every parameter is perturbed by default, ``T_w = |w|`` for each:
conv and linear weights, biases, and BatchNorm's affine weight and bias. BatchNorm's running
mean and variance are buffers, never perturbed; the loss is computed in eval mode by default
(``bn="eval"``: w's running statistics, as the official evaluation runs the model in eval
mode), or in train mode with each batch's statistics (``bn="train"``; the running ones do not
move). A parameter that is exactly zero has T = 0 and is not moved by the adaptive measure.
``params="weights"`` restricts d to conv and linear weights (AWP's rule).

**The worst case** is a projected gradient ascent in u = T_w^-1 d, where the ball is round
(``||u||_p <= rho``) and d = T_w u (coordinates with T = 0 stay at 0). The gradient in u is
T_w g (g the gradient in w at w + d). Each step is the steepest ascent step of the norm, then
the projection, with Auto-PGD's schedule as the official code uses it: first step
2 rho * ``step_mult``, momentum 0.75, and the step halved (restarting from the best point) at
Auto-PGD's checkpoints when the loss stopped improving; the best iterate over the ``steps``
steps (the start included, so S_max >= 0 on the clean loss) is kept. For p = inf this is the
official code's step (d += eta |w| sign(g), clamped to +-rho |w|). For p = 2 the official code
steps along |w| g / ||g|| in d and projects onto the ellipsoid by bisection; here the step is
T g / ||T g|| in u and the projection exact, the same problem solved in the variable where its
ball is round. On the robust loss the ascent is *joint*: before every step x_adv is
regenerated at the current w + d (a fresh attack of the batch), and the step follows the
gradient of the loss at that x_adv (Danskin), as :mod:`analysis.worst_case` does. The value
reported is the loss at the best d evaluated once more with the batch's evaluation attack seed
(the one the unperturbed loss uses), so both sides of the difference see the same random starts.

**The average case** draws d = rho T_w z, z standard normal (the official ``avg_l2``), one
draw per unit; the attack is regenerated at every w + d with the batch's evaluation seed.

Units (:mod:`analysis.store`): ``base|loss=robust|b=3`` (L_B(w)), ``worst|rho=..|p=..|
steps=..|mult=..|loss=..|b=3`` (one batch's ascent) and ``average|rho=..|loss=..|b=3|k=7``
(one draw on one batch). Batch b is examples [b m, (b + 1) m) of the subset. Every random draw
derives from the key by :func:`awp.seeds.generator_for`: the evaluation attack of batch b from
``(seed, "sharpness attack", b)``, the ascent's attack at step t from ``(seed, "sharpness
ascent", b, t)``, draw k's z from ``(seed, "sharpness noise", b, k)`` (the same z for every
rho). :func:`summarize` gives, per kind, loss and rho, the mean over batches of the per-batch
sharpness and a t interval over batches.

Reference: Andriushchenko, Croce, Müller, Hein, Flammarion, "A Modern Look at the Relationship
between Sharpness and Generalization", ICML 2023, Sec. 2 (github.com/tml-epfl/
sharpness-vs-generalization, ``sharpness.py``); Kwon et al., "ASAM", ICML 2021 (adaptive
sharpness); Croce & Hein, ICML 2020 (Auto-PGD's step-size schedule).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from analysis.config import SHARPNESS_MUTABLE as SHARPNESS_MUTABLE
from analysis.config import AdaptiveSharpnessConfig
from analysis.noise import draw_noise, global_norm
from analysis.stats import t_interval, too_few_for_interval
from analysis.store import SampleStore, UnitKey, run_units
from awp.attacks import run_attack
from awp.augment import as_float
from awp.config import AttackConfig
from awp.distributed import DistContext
from awp.modes import model_mode
from awp.perturb import perturbed, select_params
from awp.seeds import generator_for

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Params = Mapping[str, torch.Tensor]
Record = dict
MOMENTUM = 0.75  # Auto-PGD's alpha, as the official code's weight_ascent_step_momentum
MIN_UPDATE_RATIO = 0.75  # Auto-PGD's rho: halve the step when fewer steps than this improved


# --------------------------------------------------------------------------- the ascent
@dataclass(frozen=True)
class Ascent:
    """The best point of a worst-case ascent: d (name -> tensor), the objective there, the
    step size at the end (2 rho step_mult, halved at checkpoints) and the values at the
    iterates (the start first)."""

    d: dict[str, torch.Tensor]
    value: float
    step_size: float
    values: tuple[float, ...]


def adaptive_ascent(
    objective: Callable[[int], torch.Tensor],
    params: Params,
    scale: Params,
    *,
    rho: float,
    p: str,
    steps: int,
    step_mult: float = 1.0,
) -> Ascent:
    """max over ||u||_p <= rho of objective(w + scale * u), by projected ascent in u from u = 0.

    Step t evaluates the objective and its gradient g at w + d_t (the parameters perturbed by
    :func:`awp.perturb.perturbed`, restored exactly), then moves u along the steepest ascent
    direction of the norm of T g (sign for inf, T g / ||T g||_2 for 2), projects onto the
    ball, and mixes with the previous step (Auto-PGD's momentum). At Auto-PGD's checkpoints
    the step is halved and the ascent restarts from the best point when fewer than 75% of the
    steps since the last checkpoint improved, or when neither the step nor the best value
    changed. The last iterate is evaluated too; the best of the steps + 1 iterates is returned.

    Args:
        objective: t -> the scalar objective at the current weights (t = 0..steps; it may
            regenerate x_adv there). Gradients are taken with :func:`torch.autograd.grad`, so
            no ``.grad`` is touched.
        params: name -> parameter.
        scale: name -> T (same shape, >= 0): |w| adaptive, ones plain.
        rho: radius in u, > 0. p: "2" or "inf". steps: ascent steps, >= 1.
        step_mult: the first step is 2 * rho * step_mult.

    Returns:
        :class:`Ascent` (d detached, ``||d / T||_p <= rho`` up to rounding).

    Reference: Andriushchenko et al., ICML 2023 (``eval_APGD_sharpness``); Croce & Hein,
    ICML 2020, Alg. 1 (momentum and checkpoints).
    """
    if p not in ("2", "inf") or not rho > 0 or steps < 1:
        raise ValueError(f"need p in (2, inf), rho > 0 and steps >= 1; got {p}, {rho}, {steps}")
    names = list(params)
    tensors = [params[n] for n in names]
    scales = [scale[n].detach() for n in names]
    u = [torch.zeros_like(t).detach() for t in tensors]
    u_prev = u
    eta = 2.0 * rho * step_mult
    checks = _checkpoints(steps)
    best_u, best_g, best = u, None, -math.inf
    values: list[float] = []
    updates, last_check, eta_at_check, best_at_check = 0, 0, eta, -math.inf
    for t in range(steps + 1):
        with perturbed(params, _d(names, scales, u)):
            if t == steps:  # the last iterate: its value only
                value = float(objective(t).detach())
            else:
                with torch.enable_grad():
                    loss = objective(t)
                    grads = torch.autograd.grad(loss, tensors, allow_unused=True)
                value = float(loss.detach())
                g = [
                    torch.zeros_like(w) if gi is None else gi.detach()
                    for gi, w in zip(grads, tensors)
                ]
        values.append(value)
        if value > best:
            updates += t > 0
            best, best_u = value, u
            best_g = None if t == steps else g
        if t == steps:
            break
        if t in checks:
            stalled = updates < MIN_UPDATE_RATIO * (t - last_check)
            unchanged = eta == eta_at_check and best == best_at_check
            eta_at_check, best_at_check, last_check, updates = eta, best, t, 0
            if stalled or unchanged:
                eta /= 2
                u, u_prev, g = best_u, best_u, best_g
        z = _project([ui + eta * di for ui, di in zip(u, _direction(g, scales, p))], rho, p)
        if t == 0:
            new = z
        else:
            new = [
                ui + MOMENTUM * (zi - ui) + (1 - MOMENTUM) * (ui - pi)
                for ui, zi, pi in zip(u, z, u_prev)
            ]
            new = _project(new, rho, p)
        u_prev, u = u, new
    return Ascent(_d(names, scales, best_u), best, eta, tuple(values))


def _d(names: list[str], scales: list[torch.Tensor], u: list[torch.Tensor]) -> dict:
    """d = T u."""
    return {n: s * ui for n, s, ui in zip(names, scales, u)}


def _direction(g: list[torch.Tensor], scales: list[torch.Tensor], p: str) -> list[torch.Tensor]:
    """The steepest ascent direction of the norm p for the gradient T g in u."""
    gu = [s * gi for s, gi in zip(scales, g)]
    if p == "inf":
        return [x.sign() for x in gu]
    norm = torch.sqrt(sum((x.double() ** 2).sum() for x in gu))
    return [x / (norm.to(x.dtype) + 1e-12) for x in gu]


def _project(u: list[torch.Tensor], rho: float, p: str) -> list[torch.Tensor]:
    """The nearest point of the ball ||u||_p <= rho."""
    if p == "inf":
        return [x.clamp(-rho, rho) for x in u]
    norm = float(torch.sqrt(sum((x.double() ** 2).sum() for x in u)))
    return u if norm <= rho else [x * (rho / norm) for x in u]


def _checkpoints(steps: int) -> set[int]:
    """Auto-PGD's checkpoints for ``steps`` iterations: ceil(p_j steps) with p_0 = 0,
    p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06) (the official code's
    ``version='default'``)."""
    p, w = [0.0, 0.22], [0, math.ceil(0.22 * steps)]
    while w[-1] < steps and w[-1] != w[-2]:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
        w.append(math.ceil(p[-1] * steps))
    return set(w[1:])


# --------------------------------------------------------------------------- the units
def scales_of(params: Params, *, adaptive: bool) -> dict[str, torch.Tensor]:
    """T_w: |w| elementwise (adaptive) or ones, detached, of the unperturbed weights."""
    return {
        n: p.detach().abs() if adaptive else torch.ones_like(p).detach() for n, p in params.items()
    }


def batch_loss(
    model: nn.Module,
    xb: torch.Tensor,
    yb: torch.Tensor,
    *,
    attack: AttackConfig | None,
    bn: str,
    loss: LossFn,
    generator: torch.Generator,
    grad: bool = False,
) -> torch.Tensor:
    """L_B at the current weights: ``loss(model(x_adv), y)``, x_adv attacked now (x itself
    when ``attack`` is None), the model in mode ``bn`` with frozen BatchNorm statistics.

    Args:
        grad: keep the graph to the parameters (the ascent's steps); the attack always takes
            its input gradients, whatever the caller's grad mode.

    Returns:
        The scalar loss.
    """
    if attack is not None:
        with torch.enable_grad():  # input gradients only (see awp.attacks)
            xb = run_attack(model, xb, yb, attack, generator=generator)
    with model_mode(model, bn), torch.set_grad_enabled(grad):
        return loss(model(xb), yb)


def _batch(x: torch.Tensor, y: torch.Tensor, b: int, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    if (b + 1) * m > len(y):
        raise ValueError(f"batch {b} of m={m} needs {(b + 1) * m} examples, got {len(y)}")
    return as_float(x[b * m : (b + 1) * m]), y[b * m : (b + 1) * m]


def _attack_of(cfg: AdaptiveSharpnessConfig, loss_kind: str) -> AttackConfig | None:
    return cfg.attack if loss_kind == "robust" else None


def base_unit(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    cfg: AdaptiveSharpnessConfig,
    loss_kind: str,
    b: int,
    loss: LossFn,
) -> Record:
    """L_B(w) of batch b, attacked with the batch's evaluation seed: ``{"loss"}``."""
    xb, yb = _batch(x, y, b, cfg.m)
    gen = generator_for(cfg.seed, "sharpness attack", b)
    value = batch_loss(
        model, xb, yb, attack=_attack_of(cfg, loss_kind), bn=cfg.bn, loss=loss, generator=gen
    )
    return {"loss": float(value)}


def worst_unit(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    cfg: AdaptiveSharpnessConfig,
    loss_kind: str,
    b: int,
    rho: float,
    p: str,
    steps: int,
    step_mult: float,
    loss: LossFn,
) -> Record:
    """The ascent on batch b (x_adv regenerated before every step), and L_B(w + d*) at its
    best point d* with the batch's evaluation seed.

    Returns:
        ``{"loss", "ascent_loss", "d_ratio", "step_size"}``: L_B(w + d*), the best value seen
        by the ascent, ||d*|| / ||w|| over the perturbed tensors, the final step size.
    """
    params = select_params(model, cfg.params)
    scale = scales_of(params, adaptive=cfg.adaptive)
    xb, yb = _batch(x, y, b, cfg.m)
    attack = _attack_of(cfg, loss_kind)

    def objective(t: int) -> torch.Tensor:
        gen = generator_for(cfg.seed, "sharpness ascent", b, t)
        return batch_loss(
            model, xb, yb, attack=attack, bn=cfg.bn, loss=loss, generator=gen, grad=True
        )

    best = adaptive_ascent(objective, params, scale, rho=rho, p=p, steps=steps, step_mult=step_mult)
    with perturbed(params, best.d):
        gen = generator_for(cfg.seed, "sharpness attack", b)
        value = batch_loss(model, xb, yb, attack=attack, bn=cfg.bn, loss=loss, generator=gen)
    return {
        "loss": float(value),
        "ascent_loss": best.value,
        "d_ratio": global_norm(list(best.d.values())) / global_norm(list(params.values())),
        "step_size": best.step_size,
    }


def average_unit(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    cfg: AdaptiveSharpnessConfig,
    loss_kind: str,
    b: int,
    rho: float,
    k: int,
    loss: LossFn,
) -> Record:
    """L_B(w + d_k) for draw k on batch b, d_k = rho T_w z_k, attacked with the batch's
    evaluation seed: ``{"loss", "d_ratio"}``."""
    params = select_params(model, cfg.params)
    scale = {n: rho * s for n, s in scales_of(params, adaptive=cfg.adaptive).items()}
    d = draw_noise(params, scale, generator=generator_for(cfg.seed, "sharpness noise", b, k))
    xb, yb = _batch(x, y, b, cfg.m)
    with perturbed(params, d):
        gen = generator_for(cfg.seed, "sharpness attack", b)
        value = batch_loss(
            model, xb, yb, attack=_attack_of(cfg, loss_kind), bn=cfg.bn, loss=loss, generator=gen
        )
    ratio = global_norm(list(d.values())) / global_norm(list(params.values()))
    return {"loss": float(value), "d_ratio": ratio}


# --------------------------------------------------------------------------- keys and dispatch
def base_key(loss_kind: str, b: int) -> str:
    return str(UnitKey.of("base", loss=loss_kind, b=b))


def worst_key(cfg: AdaptiveSharpnessConfig, rho: float, loss_kind: str, b: int) -> str:
    """A worst-case unit's key; it names the ascent's settings, so runs with other settings
    add their own units instead of clashing with these."""
    key = UnitKey.of(
        "worst",
        rho=float(rho),
        p=cfg.p,
        steps=cfg.steps,
        mult=float(cfg.step_mult),
        loss=loss_kind,
        b=b,
    )
    return str(key)


def average_key(rho: float, loss_kind: str, b: int, k: int) -> str:
    return str(UnitKey.of("average", rho=float(rho), loss=loss_kind, b=b, k=k))


def sharpness_keys(cfg: AdaptiveSharpnessConfig, n_batches: int) -> list[str]:
    """Every unit of a run over ``n_batches`` batches: the base losses first, then per kind,
    loss and rho the batches (and draws)."""
    keys = [base_key(lk, b) for lk in cfg.resolved_losses for b in range(n_batches)]
    for kind in cfg.kinds:
        for lk in cfg.resolved_losses:
            for rho in cfg.rhos(kind):
                for b in range(n_batches):
                    if kind == "worst":
                        keys.append(worst_key(cfg, rho, lk, b))
                    else:
                        keys += [average_key(rho, lk, b, k) for k in range(cfg.draws)]
    return keys


def compute_unit(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    key: str,
    *,
    cfg: AdaptiveSharpnessConfig,
    loss: LossFn | None = None,
) -> Record:
    """The record of one unit, from its key (see :func:`sharpness_keys`).

    Args:
        model: the network at w; its weights, buffers, modes and ``.grad`` are left as they
            were.
        x: (N, ...) inputs: images (N, C, H, W) uint8 or float in [0, 1] with an attack, any
            shape without one; y: (N, ...) targets of ``loss``.
        key: ``base|...``, ``worst|...`` or ``average|...``.
        cfg: the settings every unit shares.
        loss: ``(outputs, targets) -> scalar`` mean loss of a batch (default cross-entropy).
    """
    loss = F.cross_entropy if loss is None else loss
    unit = UnitKey.parse(key)
    common = dict(cfg=cfg, loss_kind=unit["loss"], b=unit.int("b"), loss=loss)
    if unit.kind == "base":
        return base_unit(model, x, y, **common)
    if unit.kind == "worst":
        return worst_unit(
            model,
            x,
            y,
            rho=unit.float("rho"),
            p=unit["p"],
            steps=unit.int("steps"),
            step_mult=unit.float("mult"),
            **common,
        )
    if unit.kind == "average":
        return average_unit(model, x, y, rho=unit.float("rho"), k=unit.int("k"), **common)
    raise ValueError(f"unknown sharpness unit key {key!r} (kinds: base, worst, average)")


# --------------------------------------------------------------------------- summaries
@dataclass(frozen=True)
class SharpnessEstimate:
    """One kind of sharpness on one loss at one rho, over ``batches`` batches of m examples.

    Losses are means over a batch (nats for cross-entropy); ``sharpness`` is the mean over
    batches of the per-batch sharpness (the worst case's L_B(w + d*_B) - L_B(w), the average
    case's mean over the draws of L_B(w + d) - L_B(w)), with a Student-t interval over the
    batches [``ci_low``, ``ci_high``] (NaN with fewer than 3 batches, or when every batch gives
    the same value; ``ci_note`` says why). ``p`` is the worst case's norm ("" for the average
    case, whose d is Gaussian); ``draws`` is 0 for the worst case, ``steps`` 0 for the average
    case. ``d_ratio`` is the mean ||d|| / ||w|| over the perturbed tensors.
    """

    kind: str
    loss: str
    rho: float
    p: str
    adaptive: bool
    m: int
    batches: int
    steps: int
    draws: int
    base_loss: float
    perturbed_loss: float
    sharpness: float
    std: float
    ci_low: float
    ci_high: float
    confidence: float
    d_ratio: float
    ci_note: str = ""


def _estimate(
    cfg: AdaptiveSharpnessConfig,
    kind: str,
    loss_kind: str,
    rho: float,
    base: np.ndarray,
    perturbed_losses: np.ndarray,
    ratios: Sequence[float],
) -> SharpnessEstimate:
    per_batch = perturbed_losses - base
    note = too_few_for_interval(per_batch.size, "batches")
    if not note and np.ptp(per_batch) == 0:
        note = f"undefined (all {per_batch.size} batches give the same sharpness)"
    lo, hi = (math.nan, math.nan) if note else t_interval(per_batch, cfg.confidence)
    return SharpnessEstimate(
        kind=kind,
        loss=loss_kind,
        rho=float(rho),
        p=cfg.p if kind == "worst" else "",
        adaptive=cfg.adaptive,
        m=cfg.m,
        batches=int(per_batch.size),
        steps=cfg.steps if kind == "worst" else 0,
        draws=cfg.draws if kind == "average" else 0,
        base_loss=float(base.mean()),
        perturbed_loss=float(perturbed_losses.mean()),
        sharpness=float(per_batch.mean()),
        std=float(per_batch.std(ddof=1)) if per_batch.size > 1 else math.nan,
        ci_low=lo,
        ci_high=hi,
        confidence=cfg.confidence,
        d_ratio=float(np.mean(ratios)),
        ci_note=note,
    )


def summarize(
    records: Mapping[str, Record], *, cfg: AdaptiveSharpnessConfig, n_batches: int
) -> list[SharpnessEstimate]:
    """One estimate per kind, loss and rho from the records of :func:`sharpness_keys`."""
    if n_batches < 1:
        raise ValueError("no batches to summarize")
    out = []
    for kind in cfg.kinds:
        for lk in cfg.resolved_losses:
            base = np.array([records[base_key(lk, b)]["loss"] for b in range(n_batches)])
            for rho in cfg.rhos(kind):
                if kind == "worst":
                    recs = [[records[worst_key(cfg, rho, lk, b)]] for b in range(n_batches)]
                else:
                    recs = [
                        [records[average_key(rho, lk, b, k)] for k in range(cfg.draws)]
                        for b in range(n_batches)
                    ]
                losses = np.array([np.mean([r["loss"] for r in rs]) for rs in recs])
                ratios = [r["d_ratio"] for rs in recs for r in rs]
                out.append(_estimate(cfg, kind, lk, rho, base, losses, ratios))
    return out


def result_rows(
    estimates: Sequence[SharpnessEstimate],
    *,
    cfg: AdaptiveSharpnessConfig,
    ident: Mapping[str, object],
) -> list[dict]:
    """One table row per estimate: the columns naming the checkpoint (``ident``: checkpoint,
    sha256, run, method, epoch, ...), the settings that shaped it, and the estimate."""
    settings = {
        "params": cfg.params,
        "bn": cfg.bn,
        "split": cfg.split,
        "step_mult": cfg.step_mult,
        "attack": None if cfg.attack is None else cfg.attack.describe(),
    }
    return [{**ident, **settings, **dataclasses.asdict(e)} for e in estimates]


@dataclass(frozen=True)
class SharpnessResult:
    """Every estimate of a run, and what it ran on."""

    estimates: list[SharpnessEstimate]
    n_batches: int
    n_used: int
    n_left_out: int


def adaptive_sharpness(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: AdaptiveSharpnessConfig | None = None,
    *,
    loss: LossFn | None = None,
    store: SampleStore | None = None,
    info: DistContext | None = None,
    progress: bool = False,
) -> SharpnessResult:
    """Adaptive sharpness of ``model`` on (x, y): every unit (resumed from ``store``, split
    across torchrun ranks), summarized.

    Args:
        model: any ``nn.Module``; left exactly as it was (weights, buffers, modes, ``.grad``).
        x: (N, ...) inputs; images (N, C, H, W) uint8 or float in [0, 1] when ``cfg.attack``
            is set. The first ``(N // m) * m`` examples make the batches.
        y: (N, ...) targets of ``loss`` (class indices for cross-entropy and the attacks).
        cfg: the settings (default :class:`AdaptiveSharpnessConfig`).
        loss: ``(outputs, targets) -> scalar`` mean loss of a batch (default cross-entropy).
        store: keeps finished units (see :class:`analysis.store.SampleStore`; its meta should be
            ``cfg.store_settings(...)``), None: nothing on disk.
        info: this process's place among the ranks (default: the current one).
        progress: a progress bar on the main rank.

    Raises:
        ValueError: m is larger than the data (naming --m), or x and y differ in length.

    Returns:
        :class:`SharpnessResult`.
    """
    cfg = AdaptiveSharpnessConfig() if cfg is None else cfg
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} examples but y has {len(y)}")
    n_batches = cfg.batches_of(len(y), what="the data given")

    def compute(key: str) -> Record:
        return compute_unit(model, x, y, key, cfg=cfg, loss=loss)

    keys = sharpness_keys(cfg, n_batches)
    records = run_units(keys, compute, store=store, info=info, progress=progress, desc="sharpness")
    return SharpnessResult(
        estimates=summarize(records, cfg=cfg, n_batches=n_batches),
        n_batches=n_batches,
        n_used=n_batches * cfg.m,
        n_left_out=len(y) - n_batches * cfg.m,
    )
