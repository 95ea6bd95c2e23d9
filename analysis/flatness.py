"""PAC-Bayes flatness of the robust error: the expected flatness under random weight noise.

rho(w) is the robust 0-1 error of f_w on a fixed subset: the fraction of examples an attack,
regenerated on the weights being measured, makes misclassified (the robust cross-entropy is
reported beside it).

**Expected flatness** E_u[rho(w+u)] - rho(w), u Gaussian with a scale relative to the weights
(:func:`analysis.noise.noise_scales`), by Monte Carlo over M draws, with a t interval; or with a
fresh u per example (``per_example``), where the 0-1 outcomes are independent Bernoulli trials
and the Clopper-Pearson interval is exact (i.i.d. when the example is drawn at random; over a
fixed subset the success probabilities differ by example, and the interval for their mean is
conservative, since a Poisson-binomial's tails are lighter than the binomial's: Hoeffding
1956). The worst case is :mod:`analysis.worst_case`, the sigma search :mod:`analysis.sigma`,
and the plan of units of a whole run :mod:`analysis.flatness_units`.

A unit's noise and attack seeds derive from its key and the seed, never from the device, the
rank or the order of evaluation, so units can be sharded across ranks and resumed
(:mod:`analysis.store`). Every unit uses the same attack seed as the baseline (common random
numbers), so alpha = 0 gives a flatness of exactly 0, and the noise of draw k is
sigma(alpha) * z_k with the same z_k for every alpha.

Every unit also takes ``loss`` (any ``(outputs, targets) -> scalar mean or (B,)``, default
cross-entropy; with ``cfg.attack`` None the clean loss on inputs of any shape) and ``bn_x``:
None measures with the running BatchNorm statistics of w (eval mode, the default); training
inputs re-estimate them at every measured point, w included (:func:`awp.modes.bn_recomputed`).

Reference: Neyshabur, Bhojanapalli, McAllester, Srebro, "Exploring Generalization in Deep
Learning", NeurIPS 2017; Wu, Xia, Wang, NeurIPS 2020, rebuttal Common Q1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from analysis.config import NOISE_MODES as NOISE_MODES
from analysis.config import SPLITS as SPLITS
from analysis.config import FlatnessConfig
from analysis.noise import draw_noise, global_norm, noise_scales
from analysis.stats import clopper_pearson, t_interval, too_few_for_interval
from analysis.store import UnitKey
from awp.evaluate import Loss, Outcomes, attack_outcomes
from awp.modes import bn_recomputed
from awp.perturb import perturbed, select_params
from awp.seeds import generator_for

Record = dict


def outcome_record(out: Outcomes, **extra: object) -> Record:
    """A unit's record: misclassified count (NaN for outputs that are not class scores),
    summed robust loss (float64 over the examples), examples."""
    errors: float | int = out.errors if out.classified else float("nan")
    return {"errors": errors, "loss_sum": float(out.loss.sum()), "n": out.n, **extra}


def baseline_unit(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    cfg: FlatnessConfig,
    loss: Loss | None = None,
    bn_x: torch.Tensor | None = None,
) -> Record:
    """rho(w) and the robust loss at the unperturbed weights (the ``base`` unit); ``loss`` and
    ``bn_x`` as the module says."""
    with bn_recomputed(model, bn_x, batch_size=cfg.batch_size):
        if cfg.per_example:
            return outcome_record(one_by_one(model, x, y, cfg, loss=loss))
        gen = generator_for(cfg.seed, "attack")
        return outcome_record(
            attack_outcomes(
                model, x, y, cfg.attack, batch_size=cfg.batch_size, generator=gen, loss=loss
            )
        )


def one_by_one(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: FlatnessConfig,
    first: int = 0,
    *,
    loss: Loss | None = None,
) -> Outcomes:
    """Outcomes example by example, example i attacked from the seed (seed, "attack", i).

    In per-example mode every evaluation (baseline, worst case) uses these seeds, so the
    random starts match the noisy evaluations example for example.
    """
    outs = [
        attack_outcomes(
            model,
            x[j : j + 1],
            y[j : j + 1],
            cfg.attack,
            batch_size=1,
            generator=generator_for(cfg.seed, "attack", first + j),
            loss=loss,
        )
        for j in range(len(y))
    ]
    return Outcomes.cat(outs)


def expected_unit(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    cfg: FlatnessConfig,
    alpha: float,
    k: int,
    loss: Loss | None = None,
    bn_x: torch.Tensor | None = None,
) -> Record:
    """rho(w + u_k) with u_k = sigma(alpha) * z_k, the attack regenerated on w + u_k.

    With ``cfg.per_example`` every example i gets its own u_{k,i} and its own attack. ``loss``
    and ``bn_x`` (BatchNorm statistics re-estimated at w + u_k) as the module says.

    Returns:
        ``{"errors", "loss_sum", "n", "noise_ratio"}``: misclassified count, summed robust
        cross-entropy, examples, and the mean ||u|| / ||w|| over the perturbed tensors.
    """
    params = select_params(model, cfg.params)
    scales = noise_scales(params, alpha=alpha, mode=cfg.noise)
    w_norm = global_norm(list(params.values()))

    def noisy(gen: torch.Generator) -> dict[str, torch.Tensor]:
        return draw_noise(params, scales, generator=gen)

    if not cfg.per_example:
        u = noisy(generator_for(cfg.seed, "noise", k))
        with perturbed(params, u), bn_recomputed(model, bn_x, batch_size=cfg.batch_size):
            out = attack_outcomes(
                model,
                x,
                y,
                cfg.attack,
                batch_size=cfg.batch_size,
                generator=generator_for(cfg.seed, "attack"),
                loss=loss,
            )
        return outcome_record(out, noise_ratio=global_norm(list(u.values())) / w_norm)
    outs, ratios = [], []
    for i in range(len(y)):
        u = noisy(generator_for(cfg.seed, "noise", k, i))
        with perturbed(params, u), bn_recomputed(model, bn_x, batch_size=cfg.batch_size):
            o = attack_outcomes(
                model,
                x[i : i + 1],
                y[i : i + 1],
                cfg.attack,
                batch_size=1,
                generator=generator_for(cfg.seed, "attack", i),
                loss=loss,
            )
        outs.append(o)
        ratios.append(global_norm(list(u.values())) / w_norm)
    return outcome_record(Outcomes.cat(outs), noise_ratio=float(np.mean(ratios)) if ratios else 0.0)


def expected_key(alpha: float, k: int) -> str:
    """The key of draw k at alpha (alpha written exactly, so keys round-trip)."""
    return str(UnitKey.of("expected", alpha=float(alpha), k=k))


@dataclass(frozen=True)
class FlatnessEstimate:
    """Expected flatness at one alpha.

    Errors are fractions in [0, 1], losses mean cross-entropy (nats). The interval
    [ci_low, ci_high] is for E_u[rho(w+u)]; flatness_low/high subtract rho(w), which is a fixed
    number on the subset (same attack seed). ``ci_method`` is ``t`` (over the M draws) or
    ``clopper-pearson`` (over the M*n per-example trials). The t interval is undefined (NaN,
    ``ci_note`` says why) with fewer than 3 draws or when all draws are equal (a zero-width
    interval that would claim certainty it does not have). ``abs_flatness`` and
    ``abs_flatness_loss`` are the absolute flatness of the rebuttal (reviewer 4, question 1),
    E_u |rho(w+u) - rho(w)| over the draws: unlike the signed mean, a draw that lowers the
    robust error or loss does not cancel one that raises it.
    """

    alpha: float
    noise: str
    samples: int
    n: int
    base_error: float
    mean_error: float
    std_error: float
    ci_low: float
    ci_high: float
    ci_method: str
    confidence: float
    flatness: float
    flatness_low: float
    flatness_high: float
    base_loss: float
    mean_loss: float
    std_loss: float
    flatness_loss: float
    noise_ratio: float
    abs_flatness: float
    abs_flatness_loss: float
    ci_note: str = ""


def _sd(a: np.ndarray) -> float:
    return float(a.std(ddof=1)) if a.size > 1 else float("nan")


def summarize_expected(
    base: Record,
    samples: Sequence[Record],
    *,
    alpha: float,
    noise: str,
    confidence: float = 0.95,
    per_example: bool = False,
) -> FlatnessEstimate:
    """Mean, spread and interval of rho(w+u) over the draws, and the flatness."""
    if not samples:
        raise ValueError("no samples to summarize")
    n = int(base["n"])
    if n == 0:
        raise ValueError("the subset is empty")
    errs = np.array([s["errors"] / s["n"] for s in samples])
    losses = np.array([s["loss_sum"] / s["n"] for s in samples])
    base_err, base_loss = base["errors"] / n, base["loss_sum"] / n
    if per_example:
        lo, hi = clopper_pearson(
            int(sum(s["errors"] for s in samples)), int(sum(s["n"] for s in samples)), confidence
        )
        method = "clopper-pearson"
        note = ""
    else:
        method = "t"
        note = too_few_for_interval(len(samples), "noise draws")
        if not note and np.ptp(errs) == 0:
            note = (
                f"undefined (all {len(samples)} noise draws give the same error; "
                "--per-example gives an exact interval)"
            )
        lo, hi = (math.nan, math.nan) if note else t_interval(errs, confidence)
    return FlatnessEstimate(
        alpha=float(alpha),
        noise=noise,
        samples=len(samples),
        n=n,
        base_error=base_err,
        mean_error=float(errs.mean()),
        std_error=_sd(errs),
        ci_low=lo,
        ci_high=hi,
        ci_method=method,
        confidence=confidence,
        flatness=float(errs.mean()) - base_err,
        flatness_low=lo - base_err,
        flatness_high=hi - base_err,
        base_loss=base_loss,
        mean_loss=float(losses.mean()),
        std_loss=_sd(losses),
        flatness_loss=float(losses.mean()) - base_loss,
        noise_ratio=float(np.mean([s["noise_ratio"] for s in samples])),
        abs_flatness=float(np.abs(errs - base_err).mean()),
        abs_flatness_loss=float(np.abs(losses - base_loss).mean()),
        ci_note=note,
    )
