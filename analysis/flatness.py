"""PAC-Bayes flatness of the robust error: expected (random u) and worst case (adversarial v).

rho(w) is the robust 0-1 error of f_w on a fixed subset: the fraction of examples an attack,
regenerated on the weights being measured, makes misclassified (the robust cross-entropy is
reported beside it). Three measures:

- **Expected flatness** E_u[rho(w+u)] - rho(w), u Gaussian with a scale relative to the weights
  (:func:`noise_scales`), by Monte Carlo over M draws, with a t interval; or with a fresh u per
  example (``per_example``), where the 0-1 outcomes are independent Bernoulli trials and the
  Clopper-Pearson interval is exact (i.i.d. when the example is drawn at random; over a fixed
  subset the success probabilities differ by example, and the interval for their mean is
  conservative, since a Poisson-binomial's tails are lighter than the binomial's: Hoeffding
  1956).
- **Worst-case flatness** max_{||v_l|| <= gamma ||w_l||} rho(w+v) - rho(w): projected ascent on v
  (layer-normalized steps, as AWP's) jointly with the input attack, v shared over the whole
  subset or one per batch. This is what AWP minimizes.
- **Sigma search**: the largest alpha whose expected robust accuracy drop is at most a target,
  by bisection (Jiang et al. 2020).

Work is cut into units with string keys (``base``, ``expected|alpha=0.1|k=3``,
``worst|gamma=0.01|r=0``); a unit's noise and attack seeds derive from its key and the seed,
never from the device, the rank or the order of evaluation, so units can be sharded across
ranks and resumed (:mod:`analysis.store`). Every unit uses the same attack seed as the
baseline (common random numbers), so alpha = 0 gives a flatness of exactly 0, and the noise of
draw k is sigma(alpha) * z_k with the same z_k for every alpha.

Reference: Neyshabur, Bhojanapalli, McAllester, Srebro, "Exploring Generalization in Deep
Learning", NeurIPS 2017; Wu, Xia, Wang, NeurIPS 2020, rebuttal Common Q1; Jiang, Neyshabur,
Mobahi, Krishnan, Bengio, "Fantastic Generalization Measures and Where to Find Them", ICLR 2020.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from awp.attacks import model_mode, run_attack
from awp.config import PGD20_EVAL, AttackConfig, opt
from awp.perturb import PARAM_SETS, perturbed, select_params

NOISE_MODES = ("global", "layer", "filter", "element")
SPLITS = ("train", "test")

Params = Mapping[str, torch.Tensor]
Record = dict


# --------------------------------------------------------------------------- configuration
@dataclass(frozen=True)
class FlatnessConfig:
    """Expected flatness: noise, Monte Carlo, data subset and the attack regenerated on w+u."""

    noise: str = opt(
        "layer",
        "noise scale: global (sigma = alpha ||w||, the rebuttal's) | layer (||u_l|| ~ alpha "
        "||w_l||) | filter (per output filter) | element (sigma_i = alpha |w_i|)",
    )
    alphas: tuple[float, ...] = opt((0.05, 0.1, 0.2), "relative noise scales alpha (a curve)")
    params: str = opt("weights", "perturbed tensors: weights (conv+linear, as AWP) | all")
    samples: int = opt(10, "M: noise draws per alpha")
    per_example: bool = opt(False, "a fresh u per example (exact Clopper-Pearson interval)")
    confidence: float = opt(0.95, "confidence level of the intervals")
    split: str = opt("train", "data split measured: train | test")
    n_examples: int = opt(1000, "size of the fixed seeded subset (0 = the whole split)")
    subset_seed: int = opt(0, "seed choosing the subset")
    seed: int = opt(0, "seed of the noise draws and of the attacks' random starts")
    batch_size: int = opt(256, "examples per forward pass")
    attack: AttackConfig = opt(PGD20_EVAL, "attack regenerated on every perturbed model")

    def __post_init__(self) -> None:
        if self.noise not in NOISE_MODES:
            raise ValueError(f"unknown noise mode {self.noise!r}; choose one of {NOISE_MODES}")
        if self.params not in PARAM_SETS:
            raise ValueError(f"unknown parameter set {self.params!r}; choose one of {PARAM_SETS}")
        if self.split not in SPLITS:
            raise ValueError(f"unknown split {self.split!r}; choose one of {SPLITS}")
        object.__setattr__(self, "alphas", tuple(float(a) for a in self.alphas))
        if not self.alphas or any(not math.isfinite(a) or a < 0 for a in self.alphas):
            raise ValueError(f"alphas={self.alphas}: give one or more finite values >= 0")
        if max(self.alphas) > 1:
            raise ValueError(
                f"alphas={self.alphas}: alpha is the noise relative to the weights (0.05 = 5%); "
                f"above 1 the noise outweighs the weights. Did you mean {max(self.alphas) / 100:g}?"
            )
        if len(set(self.alphas)) != len(self.alphas):
            raise ValueError(f"alphas={self.alphas} has repeated values")
        if self.samples < 1:
            raise ValueError(f"samples={self.samples}: need at least one noise draw")
        if not 0 < self.confidence < 1:
            raise ValueError(f"confidence={self.confidence} must be in (0, 1), e.g. 0.95")
        if self.n_examples < 0 or self.batch_size < 1:
            raise ValueError(
                f"need n_examples >= 0 and batch_size >= 1, got {self.n_examples} "
                f"and {self.batch_size}"
            )


@dataclass(frozen=True)
class WorstCaseConfig:
    """Worst-case flatness: radius, projected ascent on v, restarts, shared or per-batch v."""

    gammas: tuple[float, ...] = opt((0.005, 0.01), "relative radii: ||v_l|| <= gamma*||w_l||")
    ascent_steps: int = opt(5, "projected ascent steps on v (x_adv regenerated every step)")
    step_fraction: float = opt(0.5, "ascent step as a fraction of gamma*||w_l||")
    ascent_restarts: int = opt(1, "restarts (the first from v=0, the others random in the ball)")
    per_batch: bool = opt(False, "one v per batch instead of one v for the whole subset")

    def __post_init__(self) -> None:
        object.__setattr__(self, "gammas", tuple(float(g) for g in self.gammas))
        if not self.gammas or any(not 0 <= g < 1 for g in self.gammas):
            raise ValueError(f"gammas={self.gammas}: give one or more values in [0, 1)")
        if len(set(self.gammas)) != len(self.gammas):
            raise ValueError(f"gammas={self.gammas} has repeated values")
        if self.ascent_steps < 1 or self.ascent_restarts < 1:
            raise ValueError("need ascent_steps >= 1 and ascent_restarts >= 1")
        if not 0 < self.step_fraction <= 1:
            raise ValueError(f"step_fraction={self.step_fraction} must be in (0, 1]")


@dataclass(frozen=True)
class SigmaSearchConfig:
    """Sigma search: the largest alpha whose expected robust accuracy drop is <= target."""

    target: float = opt(0.1, "accepted drop of robust accuracy (absolute, in [0, 1])")
    alpha_low: float = opt(0.0, "lower end of the bracket (its drop must be <= target)")
    alpha_high: float = opt(1.0, "upper end of the bracket (its drop should exceed target)")
    depth: int = opt(10, "bisection steps at most")
    tolerance: float = opt(0.01, "stop when |drop - target| <= tolerance")

    def __post_init__(self) -> None:
        if not 0 < self.target < 1:
            raise ValueError(f"target={self.target} must be in (0, 1), e.g. 0.1")
        if not 0 <= self.alpha_low < self.alpha_high:
            raise ValueError(
                f"need 0 <= alpha_low < alpha_high, got {self.alpha_low}, {self.alpha_high}"
            )
        if self.depth < 1 or self.tolerance < 0:
            raise ValueError(
                f"need depth >= 1 and tolerance >= 0, got {self.depth}, {self.tolerance}"
            )


# --------------------------------------------------------------------------- noise
def unit_seed(*parts: object) -> int:
    """A 60-bit seed from the parts' reprs: the same on every rank, device and run."""
    digest = hashlib.blake2b("|".join(repr(p) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 4


def _generator(*parts: object) -> torch.Generator:
    return torch.Generator().manual_seed(unit_seed(*parts))


def noise_scales(params: Params, *, alpha: float, mode: str) -> dict[str, torch.Tensor]:
    """Standard deviation of the Gaussian noise for each perturbed tensor, by mode.

    - ``global``: sigma = alpha * ||w|| for every element, ||w|| the norm of all perturbed
      tensors together (the rebuttal's choice; ||u|| is then about alpha*||w||*sqrt(d), so
      useful alphas are small).
    - ``layer``: sigma_l = alpha * ||w_l|| / sqrt(d_l), so ||u_l|| is about alpha * ||w_l||.
    - ``filter``: sigma_lf = alpha * ||w_lf|| / sqrt(d_lf) per output filter (slice along dim 0);
      each element of a 1-D tensor is its own filter, sigma = alpha * |w_i|.
    - ``element``: sigma_i = alpha * |w_i|.

    Args:
        params: name -> tensor (from :func:`awp.perturb.select_params`).
        alpha: relative scale, >= 0.
        mode: one of :data:`NOISE_MODES`.

    Returns:
        name -> sigma, broadcastable to the tensor (0-dim for global/layer, (out, 1, ...) for
        filter, full shape for element), same dtype and device as the tensor.
    """
    if mode not in NOISE_MODES:
        raise ValueError(f"unknown noise mode {mode!r}; choose one of {NOISE_MODES}")
    if alpha < 0:
        raise ValueError(f"alpha={alpha} must be >= 0")
    out: dict[str, torch.Tensor] = {}
    if mode == "global":
        total = torch.sqrt(sum(p.detach().double().pow(2).sum() for p in params.values()))
        for n, p in params.items():
            out[n] = (alpha * total).to(p.dtype).to(p.device)
        return out
    for n, p in params.items():
        w = p.detach()
        if mode == "layer":
            out[n] = alpha * w.norm() / math.sqrt(max(w.numel(), 1))
        elif mode == "element" or w.dim() <= 1:
            out[n] = alpha * w.abs()
        else:  # filter
            d_f = w[0].numel()
            norms = w.flatten(1).norm(dim=1).view(-1, *([1] * (w.dim() - 1)))  # (out, 1, ...)
            out[n] = alpha * norms / math.sqrt(d_f)
    return out


def draw_noise(
    params: Params, scales: Mapping[str, torch.Tensor], *, generator: torch.Generator
) -> dict[str, torch.Tensor]:
    """u = sigma * z, z standard normal drawn on the CPU generator in model order, moved over.

    Drawing on the CPU makes a seed give the same u on every device.
    """
    u = {}
    for n, p in params.items():
        z = torch.randn(p.shape, generator=generator, dtype=p.dtype).to(p.device)
        u[n] = z * scales[n]
    return u


def _global_norm(tensors: Iterator[torch.Tensor] | Sequence[torch.Tensor]) -> float:
    return math.sqrt(sum(float(t.detach().double().pow(2).sum()) for t in tensors))


# --------------------------------------------------------------------------- robust error
@dataclass(frozen=True)
class Outcomes:
    """Per-example robust outcomes: misclassified under attack, and cross-entropy (CPU)."""

    wrong: torch.Tensor  # (N,) bool
    loss: torch.Tensor  # (N,) float64

    @property
    def errors(self) -> int:
        """Misclassified examples."""
        return int(self.wrong.sum())

    @property
    def loss_sum(self) -> float:
        """Summed robust cross-entropy (nats)."""
        return float(self.loss.sum())


def _as_float(x: torch.Tensor) -> torch.Tensor:
    return x.float().div_(255) if x.dtype == torch.uint8 else x


def robust_outcomes(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    attack: AttackConfig | None,
    *,
    batch_size: int = 256,
    generator: torch.Generator | None = None,
) -> Outcomes:
    """Misclassification and cross-entropy of each example under an attack on the current weights.

    The attack runs in the mode its config records; the final forward pass is in eval mode;
    the model's mode, weights and BatchNorm statistics are left as they were.

    Args:
        model: classifier on [0, 1] images.
        x: (N, C, H, W) uint8 or float in [0, 1], on the model's device; y: (N,) labels.
        attack: the attack (None: natural outcomes).
        batch_size: examples per pass; generator: CPU generator of the random starts, used
            batch after batch.

    Returns:
        :class:`Outcomes` on the CPU.
    """
    wrong, losses = [], []
    for s in range(0, len(y), batch_size):
        xb, yb = _as_float(x[s : s + batch_size]), y[s : s + batch_size]
        if attack is not None:
            xb = run_attack(model, xb, yb, attack, generator=generator)
        with torch.no_grad(), model_mode(model, "eval"):
            logits = model(xb)  # (B, K)
        wrong.append((logits.argmax(1) != yb).cpu())
        losses.append(F.cross_entropy(logits, yb, reduction="none").double().cpu())
    if not wrong:
        return Outcomes(torch.zeros(0, dtype=torch.bool), torch.zeros(0, dtype=torch.float64))
    return Outcomes(torch.cat(wrong), torch.cat(losses))


# --------------------------------------------------------------------------- units
def _outcome_record(out: Outcomes, **extra: object) -> Record:
    return {"errors": out.errors, "loss_sum": out.loss_sum, "n": int(out.wrong.numel()), **extra}


def baseline_unit(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, cfg: FlatnessConfig
) -> Record:
    """rho(w) and the robust loss at the unperturbed weights (the ``base`` unit)."""
    if cfg.per_example:
        return _outcome_record(_one_by_one(model, x, y, cfg))
    gen = _generator(cfg.seed, "attack")
    return _outcome_record(
        robust_outcomes(model, x, y, cfg.attack, batch_size=cfg.batch_size, generator=gen)
    )


def _one_by_one(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: FlatnessConfig, first: int = 0
) -> Outcomes:
    """Outcomes example by example, example i attacked from the seed (seed, "attack", i).

    In per-example mode every evaluation (baseline, worst case) uses these seeds, so the
    random starts match the noisy evaluations example for example.
    """
    outs = [
        robust_outcomes(
            model,
            x[j : j + 1],
            y[j : j + 1],
            cfg.attack,
            batch_size=1,
            generator=_generator(cfg.seed, "attack", first + j),
        )
        for j in range(len(y))
    ]
    if not outs:
        return Outcomes(torch.zeros(0, dtype=torch.bool), torch.zeros(0, dtype=torch.float64))
    return Outcomes(torch.cat([o.wrong for o in outs]), torch.cat([o.loss for o in outs]))


def expected_unit(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    cfg: FlatnessConfig,
    alpha: float,
    k: int,
) -> Record:
    """rho(w + u_k) with u_k = sigma(alpha) * z_k, the attack regenerated on w + u_k.

    With ``cfg.per_example`` every example i gets its own u_{k,i} and its own attack.

    Returns:
        ``{"errors", "loss_sum", "n", "noise_ratio"}``: misclassified count, summed robust
        cross-entropy, examples, and the mean ||u|| / ||w|| over the perturbed tensors.
    """
    params = select_params(model, cfg.params)
    scales = noise_scales(params, alpha=alpha, mode=cfg.noise)
    w_norm = _global_norm(list(params.values()))

    def noisy(gen: torch.Generator) -> dict[str, torch.Tensor]:
        return draw_noise(params, scales, generator=gen)

    if not cfg.per_example:
        u = noisy(_generator(cfg.seed, "noise", k))
        with perturbed(params, u):
            out = robust_outcomes(
                model,
                x,
                y,
                cfg.attack,
                batch_size=cfg.batch_size,
                generator=_generator(cfg.seed, "attack"),
            )
        return _outcome_record(out, noise_ratio=_global_norm(list(u.values())) / w_norm)
    wrong, losses, ratios = [], [], []
    for i in range(len(y)):
        u = noisy(_generator(cfg.seed, "noise", k, i))
        with perturbed(params, u):
            o = robust_outcomes(
                model,
                x[i : i + 1],
                y[i : i + 1],
                cfg.attack,
                batch_size=1,
                generator=_generator(cfg.seed, "attack", i),
            )
        wrong.append(o.wrong)
        losses.append(o.loss)
        ratios.append(_global_norm(list(u.values())) / w_norm)
    out = Outcomes(torch.cat(wrong), torch.cat(losses))
    return _outcome_record(out, noise_ratio=float(np.mean(ratios)) if ratios else 0.0)


def _project_(v: dict[str, torch.Tensor], radius: Mapping[str, float]) -> None:
    for n in v:
        scale = min(1.0, radius[n] / (float(v[n].norm()) + 1e-20))
        v[n].mul_(scale)


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
) -> dict[str, torch.Tensor]:
    """Projected ascent of the robust cross-entropy on v, x_adv regenerated on w+v every step.

    v_l <- Proj(v_l + step_fraction * gamma * ||w_l|| * g_l / ||g_l||), with g the gradient
    w.r.t. the weights of the mean robust cross-entropy over all ``batches`` (accumulated batch
    by batch, so v is shared by the whole set), model in eval mode, and Proj the projection onto
    ||v_l|| <= gamma * ||w_l||. From v0 = 0 with one step and step_fraction = 1 this is AWP's
    v_l = gamma ||w_l|| g_l / ||g_l||.

    Args:
        model: the network; its weights, mode, BatchNorm statistics and ``.grad`` are unchanged.
        batches: list of (x (B, C, H, W) float in [0, 1], y (B,)) on the model's device.
        params: name -> perturbed parameter.
        gamma: relative radius; steps: ascent steps; step_fraction: step / (gamma ||w_l||).
        attack: regenerated on w + v before every step.
        v0: starting point (name -> tensor) inside the ball; None starts from v = 0.
        seed_parts: seed of the attacks' random starts (step t adds ``("step", t)``).

    Returns:
        name -> v_l, detached, ||v_l|| <= gamma * ||w_l||.

    Reference: Wu et al., NeurIPS 2020, Eq. (11)-(12) (K2 projected steps), here on the robust
    loss with the input attack regenerated at every step.
    """
    names = list(params)
    tensors = [params[n] for n in names]
    w_norm = {n: float(params[n].detach().norm()) for n in names}
    radius = {n: gamma * w_norm[n] for n in names}
    total = sum(len(yb) for _, yb in batches)
    if v0 is None:
        v = {n: torch.zeros_like(p).detach() for n, p in zip(names, tensors)}
    else:
        v = {n: v0[n].detach().clone() for n in names}
    for t in range(steps):
        gen = _generator(*seed_parts, "step", t)
        grads = [torch.zeros_like(p) for p in tensors]
        with perturbed(params, v):
            for xb, yb in batches:
                x_adv = run_attack(model, xb, yb, attack, generator=gen)
                with torch.enable_grad(), model_mode(model, "eval"):
                    loss = F.cross_entropy(model(x_adv), yb, reduction="sum") / total
                    gs = torch.autograd.grad(loss, tensors, allow_unused=True)
                for acc, g in zip(grads, gs):
                    if g is not None:
                        acc.add_(g)
        for n, g in zip(names, grads):
            # Layer-normalized step, as AWP's: the 1e-20 guards a zero gradient.
            v[n] = v[n] + g * (step_fraction * gamma * w_norm[n] / (float(g.norm()) + 1e-20))
        _project_(v, radius)
    return v


def worst_unit(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    cfg: FlatnessConfig,
    worst: WorstCaseConfig,
    gamma: float,
    restart: int,
) -> Record:
    """rho(w + v) for v from one restart of the projected ascent (shared or per batch).

    Restart 0 starts from v = 0 (its first step is AWP's direction); restart r > 0 from a
    random point of the ball. The final robust error is measured with the baseline's attack
    seed, batch by batch, so ``gamma = 0`` reproduces rho(w) exactly.

    Returns:
        ``{"batch_errors", "batch_loss_sums", "batch_n", "v_ratio"}`` per batch of the subset.
    """
    params = select_params(model, cfg.params)
    names = list(params)
    batches = [
        (_as_float(x[s : s + cfg.batch_size]), y[s : s + cfg.batch_size])
        for s in range(0, len(y), cfg.batch_size)
    ]

    def start(parts: tuple) -> dict[str, torch.Tensor]:
        v0 = {n: torch.zeros_like(params[n]).detach() for n in names}
        if restart == 0 or gamma == 0:
            return v0
        gen = _generator(*parts, "start")
        for n in names:
            z = torch.randn(params[n].shape, generator=gen, dtype=params[n].dtype)
            r = float(torch.rand((), generator=gen, dtype=torch.float64))
            v0[n] = (
                z * (r * gamma * float(params[n].detach().norm()) / (float(z.norm()) + 1e-20))
            ).to(params[n].device)
        return v0

    kw = dict(
        gamma=gamma, steps=worst.ascent_steps, step_fraction=worst.step_fraction, attack=cfg.attack
    )
    base_parts = (cfg.seed, "worst", gamma, restart)
    if worst.per_batch:
        vs = []
        for b, batch in enumerate(batches):
            parts = (*base_parts, "batch", b)
            vs.append(
                worst_case_perturbation(
                    model, [batch], params, v0=start(parts), seed_parts=parts, **kw
                )
                if gamma > 0
                else start(parts)
            )
    else:
        v = (
            worst_case_perturbation(
                model, batches, params, v0=start(base_parts), seed_parts=base_parts, **kw
            )
            if gamma > 0
            else start(base_parts)
        )
        vs = [v] * len(batches)
    eval_gen = _generator(cfg.seed, "attack")  # the baseline's sequence of random starts
    errors, loss_sums, counts, ratios = [], [], [], []
    w_norm = _global_norm(list(params.values()))
    first = 0
    for (xb, yb), v in zip(batches, vs):
        with perturbed(params, v):
            if cfg.per_example:  # the baseline's per-example attack seeds
                o = _one_by_one(model, xb, yb, cfg, first)
            else:
                o = robust_outcomes(
                    model, xb, yb, cfg.attack, batch_size=len(yb), generator=eval_gen
                )
        first += len(yb)
        errors.append(o.errors)
        loss_sums.append(o.loss_sum)
        counts.append(len(yb))
        ratios.append(_global_norm(list(v.values())) / w_norm)
    return {
        "batch_errors": errors,
        "batch_loss_sums": loss_sums,
        "batch_n": counts,
        "v_ratio": float(np.mean(ratios)) if ratios else 0.0,
    }


def expected_key(alpha: float, k: int) -> str:
    """The key of draw k at alpha (alpha written exactly, so keys round-trip)."""
    return f"expected|alpha={float(alpha)!r}|k={k}"


def worst_key(gamma: float, restart: int, worst: WorstCaseConfig) -> str:
    """A worst-case unit's key; it names the ascent settings, so runs with other settings
    add their own units instead of clashing with these."""
    return (
        f"worst|gamma={float(gamma)!r}|r={restart}|steps={worst.ascent_steps}"
        f"|fraction={float(worst.step_fraction)!r}|per_batch={int(worst.per_batch)}"
    )


def flatness_keys(
    cfg: FlatnessConfig,
    worst: WorstCaseConfig | None = None,
    alphas: Sequence[float] | None = None,
) -> list[str]:
    """Unit keys of a flatness run: the baseline, M draws per alpha, restarts per gamma."""
    keys = ["base"]
    for a in cfg.alphas if alphas is None else alphas:
        keys += [expected_key(a, k) for k in range(cfg.samples)]
    if worst is not None:
        for g in worst.gammas:
            keys += [worst_key(g, r, worst) for r in range(worst.ascent_restarts)]
    return keys


def compute_unit(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, key: str, *, cfg: FlatnessConfig
) -> Record:
    """The record of one unit, from its key (see :func:`flatness_keys`).

    Args:
        model: the network at w (left exactly as it was).
        x: (N, C, H, W) uint8 or float in [0, 1], the fixed subset; y: (N,) labels.
        key: ``base``, ``expected|alpha=..|k=..`` or ``worst|gamma=..|r=..|steps=..|...``.
        cfg: the settings every unit shares (noise, subset, attack, seeds).

    Returns:
        A JSON-able record (see :func:`baseline_unit`, :func:`expected_unit`,
        :func:`worst_unit`).
    """
    if key == "base":
        return baseline_unit(model, x, y, cfg=cfg)
    kind, *fields = key.split("|")
    values = dict(f.split("=", 1) for f in fields)
    if kind == "expected":
        return expected_unit(model, x, y, cfg=cfg, alpha=float(values["alpha"]), k=int(values["k"]))
    if kind == "worst":
        gamma = float(values["gamma"])
        worst = WorstCaseConfig(
            gammas=(gamma,),
            ascent_steps=int(values["steps"]),
            step_fraction=float(values["fraction"]),
            per_batch=bool(int(values["per_batch"])),
        )
        return worst_unit(model, x, y, cfg=cfg, worst=worst, gamma=gamma, restart=int(values["r"]))
    raise ValueError(f"unknown unit key {key!r}")


# --------------------------------------------------------------------------- summaries
def clopper_pearson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact two-sided binomial interval for a success probability from k successes in n.

    Returns:
        (low, high) with P(Binom(n, low) >= k) = (1-c)/2 and P(Binom(n, high) <= k) = (1-c)/2
        (low = 0 when k = 0, high = 1 when k = n).

    Reference: Clopper & Pearson, Biometrika 1934 (beta-quantile form).
    """
    from scipy import stats as sps  # here, not at import: keeps `awp` quick to start

    if n < 1 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n and n >= 1, got k={k}, n={n}")
    a = 1 - confidence
    low = 0.0 if k == 0 else float(sps.beta.ppf(a / 2, k, n - k + 1))
    high = 1.0 if k == n else float(sps.beta.ppf(1 - a / 2, k + 1, n - k))
    return low, high


def t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """Student-t interval of a mean from i.i.d. values (NaN for fewer than two values)."""
    from scipy import stats as sps

    a = np.asarray(values, dtype=np.float64)
    if a.size < 2:
        return float("nan"), float("nan")
    half = float(sps.t.ppf((1 + confidence) / 2, a.size - 1)) * a.std(ddof=1) / math.sqrt(a.size)
    return float(a.mean() - half), float(a.mean() + half)


@dataclass(frozen=True)
class FlatnessEstimate:
    """Expected flatness at one alpha.

    Errors are fractions in [0, 1], losses mean cross-entropy (nats). The interval
    [ci_low, ci_high] is for E_u[rho(w+u)]; flatness_low/high subtract rho(w), which is a fixed
    number on the subset (same attack seed). ``ci_method`` is ``t`` (over the M draws) or
    ``clopper-pearson`` (over the M*n per-example trials).
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
    else:
        lo, hi = t_interval(errs, confidence)
        method = "t"
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
    )


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


def summarize(
    records: Mapping[str, Record],
    *,
    cfg: FlatnessConfig,
    worst: WorstCaseConfig | None = None,
    alphas: Sequence[float] | None = None,
) -> tuple[list[FlatnessEstimate], list[WorstCaseEstimate]]:
    """Estimates per alpha (and per gamma) from the records of :func:`flatness_keys`."""
    base = records["base"]
    expected = [
        summarize_expected(
            base,
            [records[expected_key(a, k)] for k in range(cfg.samples)],
            alpha=a,
            noise=cfg.noise,
            confidence=cfg.confidence,
            per_example=cfg.per_example,
        )
        for a in (cfg.alphas if alphas is None else alphas)
    ]
    worst_rows = []
    if worst is not None:
        for g in worst.gammas:
            worst_rows.append(
                summarize_worst(
                    base,
                    [records[worst_key(g, r, worst)] for r in range(worst.ascent_restarts)],
                    gamma=g,
                    per_batch=worst.per_batch,
                )
            )
    return expected, worst_rows


# --------------------------------------------------------------------------- sigma search
@dataclass(frozen=True)
class SigmaSearchResult:
    """The largest alpha found whose drop is at most the target (within tolerance).

    ``converged`` is False when the tolerance was not met within the depth, or when the
    upper end's drop was already <= target (then ``alpha`` is that end: raise alpha_high).
    ``history`` lists every (alpha, drop) evaluated, in order.
    """

    alpha: float
    drop: float
    target: float
    converged: bool
    history: tuple[tuple[float, float], ...]


def bisect_alpha(
    drop: Callable[[float], float],
    *,
    target: float,
    low: float,
    high: float,
    depth: int,
    tolerance: float,
) -> SigmaSearchResult:
    """Bisection for the largest alpha with drop(alpha) <= target, drop assumed increasing.

    Args:
        drop: alpha -> expected drop of robust accuracy (= expected flatness of the error).
        target: accepted drop; low, high: the bracket (drop(low) <= target is assumed for
            low = 0, where the drop is exactly 0, and checked otherwise).
        depth: bisection steps at most; tolerance: stop once |drop - target| <= tolerance.

    Returns:
        :class:`SigmaSearchResult`.

    Reference: Jiang et al., ICLR 2020, Appendix (sharpness/PAC-Bayes measures: sigma found by
    bisection to reach a target deviation).
    """
    history: list[tuple[float, float]] = []

    def f(a: float) -> float:
        d = float(drop(a))
        history.append((a, d))
        return d

    d_low = f(low) if low > 0 else 0.0
    if d_low > target:
        raise ValueError(
            f"the drop at alpha_low={low} is already {d_low:.4f} > target {target}; lower alpha_low"
        )
    d_high = f(high)
    if d_high <= target:
        return SigmaSearchResult(high, d_high, target, False, tuple(history))
    lo, hi, d_lo = low, high, d_low
    for _ in range(depth):
        mid = 0.5 * (lo + hi)
        d = f(mid)
        if abs(d - target) <= tolerance:
            return SigmaSearchResult(mid, d, target, True, tuple(history))
        if d <= target:
            lo, d_lo = mid, d
        else:
            hi = mid
    return SigmaSearchResult(lo, d_lo, target, False, tuple(history))
