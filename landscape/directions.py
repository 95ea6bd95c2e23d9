"""Directions in weight space: filter-normalized Gaussian, target (w_B - w_A), AWP's worst case
and the top Hessian eigenvectors.

A direction is a ``dict`` from state-dict names (no wrapper prefixes) to tensors shaped like the
named parameter or buffer; a name that is absent moves by zero. Random directions only name
parameters, so BatchNorm running statistics never move along them; a target direction names
every floating-point entry of the state (BatchNorm buffers included), as loss-landscape's
``states`` directions do.

Filter normalization rescales each output filter (row ``d[i]`` of a conv or linear weight) to
the norm of the same filter of the weights, ``d[i] <- d[i] * ||w[i]|| / ||d[i]||``, so that a
step ``alpha`` means the same relative change in every layer whatever its scale.

Reference: Li, Xu, Taylor, Studer, Goldstein, "Visualizing the Loss Landscape of Neural Nets",
NeurIPS 2018 (filter normalization; github.com/tomgoldstein/loss-landscape, net_plotter.py);
Wu, Xia, Wang, NeurIPS 2020 (AWP's weight perturbation, the worst-case direction); Yao et al.,
"PyHessian", 2020 (landscapes along the top Hessian eigenvectors).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from awp.attacks import run_attack
from awp.config import AttackConfig
from awp.hessian import LossHessian, loss_batches, top_eigenpairs
from awp.modes import model_mode, unwrap
from awp.perturb import select_params, weight_ascent
from landscape.config import INCLUDES, NORMS

Direction = dict[str, torch.Tensor]

# loss-landscape's guard against an all-zero random filter (never hit in practice).
_EPS = 1e-10


def _check_norm(norm: str) -> None:
    if norm not in NORMS:
        raise ValueError(f"unknown direction normalization {norm!r}; choose one of {NORMS}")


def _units(t: torch.Tensor, norm: str) -> torch.Tensor:
    """The normalization units of ``t`` as rows of a 2-D view.

    filter: one row per output filter for tensors with more than one dimension (conv
    ``(out, in, kh, kw)`` -> ``(out, in*kh*kw)``); 1-D tensors (biases, BatchNorm affine) have
    no filters and are one unit as a whole. layer: the whole tensor is one unit.
    """
    if norm == "filter" and t.dim() > 1:
        return t.reshape(t.shape[0], -1)
    return t.reshape(1, -1)


def normalize_direction(
    direction: Mapping[str, torch.Tensor],
    weights: Mapping[str, torch.Tensor],
    *,
    norm: str = "filter",
) -> Direction:
    """Rescale each unit of ``direction`` to the norm of the same unit of ``weights``.

    Args:
        direction: name -> tensor, each shaped like ``weights[name]``.
        weights: name -> the reference weights w0 (parameters or any tensors).
        norm: "filter" (each output filter of a conv/linear weight; 1-D tensors as a whole),
            "layer" (each tensor as a whole) or "none" (unchanged copy).

    Returns:
        A new direction (the inputs are not modified), same names, shapes, dtypes, devices.

    Reference: Li et al., NeurIPS 2018, Eq. (1), and net_plotter.normalize_direction; for
    1-D tensors loss-landscape copies w instead, we scale the draw to ||w|| (same norm).
    """
    _check_norm(norm)
    out: Direction = {}
    for name, d in direction.items():
        if name not in weights:
            raise KeyError(f"direction entry {name!r} has no weights to normalize against")
        w = weights[name].detach()
        if d.shape != w.shape:
            raise ValueError(
                f"direction {name} has shape {tuple(d.shape)}, weights have {tuple(w.shape)}"
            )
        d = d.detach()
        if norm == "none":
            out[name] = d.clone()
            continue
        du, wu = _units(d, norm), _units(w, norm)  # (units, elements)
        scale = wu.norm(dim=1, keepdim=True) / (du.norm(dim=1, keepdim=True) + _EPS)
        out[name] = (du * scale).reshape(d.shape)
    return out


def random_direction(
    model: nn.Module,
    *,
    seed: int,
    norm: str = "filter",
    include: str = "weights",
) -> Direction:
    """A Gaussian direction drawn from its own seed, normalized to the model's weights.

    The draws come from a CPU generator, one tensor per parameter in model order, always for
    every parameter (biases and BatchNorm included) before the excluded ones are dropped: so a
    seed gives the same numbers on every device and rank, and the same conv/linear directions
    whether or not biases are included.

    Args:
        model: the network at w0 (a DDP/compiled wrapper is unwrapped).
        seed: seed of this direction (>= 0).
        norm: "filter" (default), "layer" or "none"; see :func:`normalize_direction`.
        include: "weights" (conv and linear weights, AWP's selection rule; biases and
            BatchNorm affine parameters get zero) or "all" (every parameter).

    Returns:
        name -> tensor on the parameters' devices and dtypes. BatchNorm buffers are never
        named, so they never move.

    Reference: Li et al., NeurIPS 2018 (net_plotter.create_random_direction, ignore=biasbn).
    """
    _check_norm(norm)
    if include not in INCLUDES:
        raise ValueError(f"unknown include {include!r}; choose one of {INCLUDES}")
    if seed < 0:
        raise ValueError(f"seed={seed} must be >= 0")
    generator = torch.Generator().manual_seed(seed)
    keep = select_params(model, include)
    draws: Direction = {}
    weights: dict[str, torch.Tensor] = {}
    for name, p in unwrap(model).named_parameters():
        d = torch.randn(p.shape, generator=generator, dtype=p.dtype)
        if name in keep:
            draws[name] = d.to(p.device)
            weights[name] = p
    return normalize_direction(draws, weights, norm=norm)


def _dot(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> torch.Tensor:
    total = torch.zeros((), dtype=torch.float64)
    for name, t in a.items():
        if name in b:
            total += (t.double() * b[name].double()).sum().cpu()
    return total


def cosine(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> float:
    """Cosine similarity of two directions over all their entries (absent names are zero)."""
    denom = (_dot(a, a) * _dot(b, b)).sqrt()
    return float(_dot(a, b) / denom) if denom > 0 else float("nan")


def orthogonalize(
    direction: Mapping[str, torch.Tensor],
    against: Mapping[str, torch.Tensor],
    weights: Mapping[str, torch.Tensor],
    *,
    norm: str = "filter",
) -> Direction:
    """Make ``direction`` orthogonal to ``against`` and normalize it again.

    The projection is removed per normalization unit (per filter for "filter", per tensor for
    "layer", over everything for "none"). Rescaling a unit keeps it orthogonal to the same unit
    of ``against``, so the result is both orthogonal to ``against`` (per unit, hence overall)
    and normalized like ``against``.

    Args:
        direction: the direction to change (e.g. y), name -> tensor.
        against: the fixed direction (e.g. x); names it lacks are zero there.
        weights: w0, for the normalization.
        norm: the normalization both directions use.

    Returns:
        The new direction; its cosine with ``against`` is zero up to rounding.
    """
    _check_norm(norm)
    if norm == "none":
        # One unit over the whole model: a global Gram-Schmidt step.
        coef = _dot(direction, against) / _dot(against, against).clamp_min(1e-300)
        return {
            n: (d - coef.to(d.dtype).to(d.device) * against[n]) if n in against else d.clone()
            for n, d in direction.items()
        }
    out: Direction = {}
    for name, d in direction.items():
        if name not in against:
            out[name] = d.clone()
            continue
        du, au = _units(d, norm), _units(against[name].to(d), norm)  # (units, elements)
        coef = (du * au).sum(1, keepdim=True) / (au * au).sum(1, keepdim=True).clamp_min(1e-30)
        out[name] = (du - coef * au).reshape(d.shape)
    return normalize_direction(out, weights, norm=norm)


def target_direction(
    state_a: Mapping[str, torch.Tensor], state_b: Mapping[str, torch.Tensor]
) -> Direction:
    """The direction from model A to model B over the whole state: ``w_B - w_A``.

    Every floating-point entry moves, BatchNorm running statistics included (loss-landscape's
    ``states`` directions), so alpha=0 is model A and alpha=1 is model B exactly (up to
    rounding); integer entries such as ``num_batches_tracked`` stay at A's.

    Args:
        state_a: A's state dict (e.g. ``model.state_dict()``), prefixes already stripped.
        state_b: B's state dict, same names and shapes.

    Returns:
        name -> (B - A), on A's devices and dtypes.

    Raises:
        ValueError: names or shapes differ (different architectures), naming them.
    """
    only_a = sorted(set(state_a) - set(state_b))
    only_b = sorted(set(state_b) - set(state_a))
    if only_a or only_b:
        raise ValueError(
            f"the two models have different state entries (not the same architecture): "
            f"only in A {only_a[:5]}, only in B {only_b[:5]}"
        )
    out: Direction = {}
    for name, a in state_a.items():
        b = state_b[name]
        if a.shape != b.shape:
            raise ValueError(
                f"{name} has shape {tuple(a.shape)} in A and {tuple(b.shape)} in B; "
                "interpolation needs the same architecture and width"
            )
        if not a.is_floating_point():
            continue
        out[name] = b.detach().to(a.device, a.dtype) - a.detach()
    return out


def awp_direction(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    attack: AttackConfig | None,
    batch_size: int = 256,
    generator: torch.Generator | None = None,
) -> Direction:
    """AWP's worst-case direction at w0: d_l = ||w_l|| g_l / ||g_l|| per conv/linear weight.

    g is the gradient of the mean cross-entropy on adversarial examples crafted at w0 (clean
    examples when ``attack`` is None), taken in eval mode so that it is the gradient of the
    loss the landscape measures. A step ``alpha`` along d is AWP's perturbation with
    gamma = alpha (layer-wise relative radius).

    Args:
        model: the network at w0; left exactly as it was (mode, weights, buffers, ``.grad``).
        x: images (N, C, H, W) in [0, 1] on the model's device; y: labels (N,).
        attack: attack crafting x_adv at w0, or None.
        batch_size: examples per pass; gradients are summed over batches.
        generator: CPU generator of the attack's random start.

    Returns:
        name -> d_l for the conv and linear weights (AWP's selection rule).

    Reference: Wu et al., NeurIPS 2020, Eq. (11) with the direct gradient (rebuttal R#4 Q3):
    :func:`awp.perturb.weight_ascent` with gamma = 1.
    """
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(f"need as many labels as images (> 0), got {len(x)} and {len(y)}")
    params = select_params(model, "weights")

    def batch_losses() -> Iterator[torch.Tensor]:
        # Summed over batches, so the gradient is that of the mean loss over all of x.
        for start in range(0, len(x), batch_size):
            xb, yb = x[start : start + batch_size], y[start : start + batch_size]
            if attack is not None:
                xb = run_attack(model, xb, yb, attack, generator=generator)
            with model_mode(model, "eval"):
                loss = F.cross_entropy(model(xb), yb, reduction="sum") / len(x)
            yield loss

    # One step of AWP's ascent with gamma = 1 from v = 0: d_l = ||w_l|| g_l / ||g_l||.
    return weight_ascent(batch_losses, params, gamma=1.0)


def hessian_directions(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    attack: AttackConfig | None,
    k: int = 1,
    include: str = "weights",
    batch_size: int = 256,
    seed: int = 0,
    attack_seed: int = 0,
    tol: float = 1e-4,
) -> tuple[list[Direction], list[float]]:
    """The top-k Hessian eigenvectors of the loss at w0, each scaled to ||d|| = ||w||.

    The loss is the mean cross-entropy over (x, y) with x_adv crafted once at w0 by ``attack``
    and held fixed (clean x when None), BatchNorm in eval mode: by Danskin's theorem its
    gradient is the robust loss's, but its Hessian leaves out how x_adv moves with w
    (:mod:`awp.hessian`). The eigenvectors are unit vectors over the included tensors, scaled
    to the norm of those weights, so that alpha is a step relative to ||w|| as for a
    filter-normalized direction (whose norm is ||w|| too), while d stays an eigenvector.

    Args:
        model: the network at w0; left exactly as it was.
        x: images (N, C, H, W) in [0, 1] on the model's device; y: labels (N,).
        attack: attack crafting x_adv at w0, or None (the clean loss).
        k: eigenvectors (1 for a curve, 2 for a surface).
        include: "weights" (conv and linear weights; the rest get zero) or "all".
        batch_size: examples per Hessian-vector product batch.
        seed: seed of the Lanczos start vector; attack_seed: of the attack's random starts.
        tol: ARPACK's relative accuracy of the eigenvalues.

    Returns:
        (directions v_1..v_k as name -> tensor on the parameters' devices and dtypes,
        eigenvalues lambda_1 >= ... >= lambda_k).

    Raises:
        ValueError: the eigensolver did not converge.
    """
    if include not in INCLUDES:
        raise ValueError(f"unknown include {include!r}; choose one of {INCLUDES}")
    params = select_params(model, include)
    data = loss_batches(model, x, y, attack=attack, batch_size=batch_size, seed=attack_seed)
    op = LossHessian(model, data, params)
    pairs = top_eigenpairs(op, k, tol=tol, seed=seed)
    if not pairs.converged:
        raise ValueError(
            f"the Lanczos solver found {int(np.isfinite(pairs.values).sum())} of the top {k} "
            f"Hessian eigenvectors after {pairs.hvps} products; use fewer directions"
        )
    w_norm = float(torch.sqrt(sum((p.detach().double() ** 2).sum() for p in params.values())))
    directions = []
    for j in range(k):
        flat = torch.from_numpy(pairs.vectors[:, j] * w_norm)  # (p,) float64, ||flat|| = ||w||
        directions.append(
            {
                n: t.to(device=params[n].device, dtype=params[n].dtype).clone()
                for n, t in op.unflatten(flat).items()
            }
        )
    return directions, [float(v) for v in pairs.values]


def check_direction(direction: Mapping[str, torch.Tensor], model: nn.Module) -> None:
    """Raise a clear error when a direction does not fit the model's state.

    Raises:
        KeyError: a name the model's state does not have.
        ValueError: a shape that differs, or a non-finite entry.
    """
    state = unwrap(model).state_dict()
    unknown = [n for n in direction if n not in state]
    if unknown:
        raise KeyError(
            f"direction names not in the model's state: {unknown[:5]}; the direction was made "
            "for another architecture"
        )
    for name, d in direction.items():
        if d.shape != state[name].shape:
            raise ValueError(
                f"direction {name} has shape {tuple(d.shape)}, the model has "
                f"{tuple(state[name].shape)}"
            )
        if not torch.isfinite(d).all():
            raise ValueError(f"direction {name} has non-finite entries")


def direction_norms(
    direction: Mapping[str, torch.Tensor], weights: Mapping[str, torch.Tensor]
) -> dict[str, float]:
    """||d_l|| / ||w_l|| per named tensor, a quick check of a normalization."""
    return {
        n: float(d.norm() / weights[n].detach().norm().clamp_min(1e-30))
        for n, d in direction.items()
        if n in weights
    }


def stack_names(directions: Sequence[Mapping[str, torch.Tensor]]) -> list[str]:
    """Every name any of ``directions`` moves, in first-seen order."""
    names: dict[str, None] = {}
    for d in directions:
        for n in d:
            names.setdefault(n, None)
    return list(names)
