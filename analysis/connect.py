"""Mode connectivity: the straight line and a trained quadratic Bezier curve between two
checkpoints, natural and robust loss and accuracy along them, and the barrier.

The line is phi(t) = (1-t) A + t B; the curve is

    phi_theta(t) = (1-t)^2 A + 2t(1-t) theta + t^2 B,   t in [0, 1],

whose middle point theta (every parameter) starts at (A + B) / 2 and is trained with A and B
fixed on E_{t ~ U(0,1)} loss(phi_theta(t)), one t per batch: the robust loss (PGD crafted on the
model at phi_theta(t), :func:`awp.train.train_step` with AT's objective) or the clean one.
Since d phi / d theta = 2t(1-t), the gradient of theta is 2t(1-t) times the gradient of the
weights at phi_theta(t): :class:`CurveStep` is the optimizer ``train_step`` sees, and it moves
theta. Every parameter of a point is written from the stored ends (never accumulated), so t=0
and t=1 are A and B bit for bit. At every evaluated point BatchNorm statistics are re-estimated
on training images (an interpolated network's own statistics; A's would not fit), and the
attack is regenerated on that model (:func:`landscape.surface.split_metrics`, the
attack-and-evaluate loop of every measurement).

The barrier of a loss along a path is max_t loss(phi(t)) - (loss(A) + loss(B)) / 2, with the t
of the maximum; of an accuracy, (acc(A) + acc(B)) / 2 - min_t acc(phi(t)).

Reference: Garipov, Izmailov, Podoprikhin, Vetrov, Wilson, "Loss Surfaces, Mode Connectivity,
and Fast Ensembling of DNNs", NeurIPS 2018; Zhao, Chen, Das, Ramamurthy, Lin, "Bridging Mode
Connectivity in Loss Landscapes and Adversarial Robustness", ICLR 2020.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from analysis.config import CURVE_OBJECTIVES as CURVE_OBJECTIVES
from analysis.config import ConnectConfig
from analysis.store import UnitKey
from awp.augment import as_float, augment
from awp.config import AttackConfig, check_choice
from awp.data import iterate_batches
from awp.modes import kept_modes, unwrap
from awp.objectives import at_objective
from awp.seeds import derive_seed, generator_for
from awp.train import lr_at, train_step
from landscape.surface import EvalSet, anchored, bn_buffer_names, recompute_bn_stats, split_metrics

PATHS = ("line", "curve")
State = Mapping[str, torch.Tensor]


# ----------------------------------------------------------------------------- the paths


def coefficients(path: str, t: float) -> tuple[float, float, float]:
    """The weights of (A, theta, B) at t: line (1-t, 0, t); curve the Bernstein basis."""
    check_choice(path, PATHS, "path")
    if path == "line":
        return (1.0 - t, 0.0, t)
    return ((1.0 - t) ** 2, 2.0 * t * (1.0 - t), t**2)


def write_point(
    tensors: Mapping[str, torch.Tensor], ends: Sequence[State], coefs: Sequence[float]
) -> None:
    """tensors[n] = sum_k coefs[k] * ends[k][n], zero terms skipped (so t=0, 1 give an end
    bit for bit); ``ends`` are (A, theta, B), theta may be None on the line."""
    with torch.no_grad():
        for name, t in tensors.items():
            terms = [(c, e[name]) for c, e in zip(coefs, ends) if c != 0.0]
            c0, e0 = terms[0]
            t.copy_(e0)
            if c0 != 1.0:
                t.mul_(c0)
            for c, e in terms[1:]:
                t.add_(e.to(t), alpha=c)


class CurveStep:
    """The optimizer :func:`awp.train.train_step` sees while the model sits at phi_theta(t):
    ``step`` hands the weights' gradient, times d phi / d theta = 2t(1-t), to theta's SGD."""

    def __init__(
        self, params: Mapping[str, nn.Parameter], theta: Mapping[str, nn.Parameter], inner
    ) -> None:
        self.params, self.theta, self.inner = params, theta, inner
        self.t = 0.5

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.inner.param_groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params.values():
            p.grad = None
        self.inner.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        scale = 2.0 * self.t * (1.0 - self.t)
        for name, th in self.theta.items():
            g = self.params[name].grad
            th.grad = torch.zeros_like(th) if g is None else g.detach() * scale
        self.inner.step()


@dataclass(frozen=True)
class CurveState:
    """A curve training's resumable state: the middle point, its optimizer, epochs done."""

    theta: dict[str, torch.Tensor]
    optimizer: dict[str, Any] | None
    epoch: int


def train_curve(
    model: nn.Module,
    a: State,
    b: State,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: ConnectConfig,
    *,
    start: CurveState | None = None,
    on_epoch: Callable[[CurveState], None] | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> CurveState:
    """Train the Bezier curve's middle point theta with A and B fixed, one t ~ U(0,1) per batch.

    Every random draw of epoch e, batch i (t, augmentation, the attack's start) comes from
    generators seeded by (seed, e, i), and the order of epoch e from (seed, e): a run resumed
    from the state after epoch e continues exactly as an uninterrupted one.

    Args:
        model: the network (any weights: every parameter is overwritten at each batch and
            restored, with the buffers and modes, at the end).
        a, b: the ends, name -> tensor for every parameter of ``model``.
        x: (N, C, H, W) uint8 training images on the model's device; y: (N,) labels.
        cfg: the settings.
        start: the state to resume from (None: theta = (A + B) / 2, epoch 0).
        on_epoch: called with the state after every epoch (the shell saves it).
        on_batch: called with the batch size after every step (a progress bar).

    Returns:
        The state after ``cfg.epochs`` epochs.
    """
    net = unwrap(model)
    params = dict(net.named_parameters())
    if set(params) != set(a) or set(params) != set(b):
        raise ValueError("the ends must give every parameter of the model (same architecture)")
    if start is None:
        start = CurveState({n: (a[n] + b[n]) / 2 for n in params}, None, 0)
    theta = {n: nn.Parameter(start.theta[n].detach().clone().to(a[n])) for n in params}
    inner = torch.optim.SGD(
        list(theta.values()), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )
    if start.optimizer is not None:
        inner.load_state_dict(start.optimizer)
    stepper = CurveStep(params, theta, inner)
    attack = cfg.train_attack
    per_epoch = len(y) // cfg.batch_size
    if per_epoch < 1:
        raise ValueError(f"{len(y)} training images make no batch of {cfg.batch_size}")
    state = start
    names = list(net.state_dict())
    with kept_modes(net), anchored(net, names):
        for epoch in range(start.epoch, cfg.epochs):
            order = generator_for(cfg.seed, "order", epoch)
            batches = iterate_batches(
                len(y), cfg.batch_size, shuffle=True, generator=order, drop_last=True
            )
            for i, idx in enumerate(batches):
                gen = generator_for(cfg.seed, "batch", epoch, i)
                stepper.t = float(torch.rand((), generator=gen, dtype=torch.float64))
                xb = x[idx.to(x.device)]
                xb = augment(xb, generator=gen) if cfg.augment else as_float(xb)
                write_point(params, (a, theta, b), coefficients("curve", stepper.t))
                for group in inner.param_groups:
                    group["lr"] = lr_at(
                        epoch + i / per_epoch, lr=cfg.lr, epochs=cfg.epochs, schedule=cfg.schedule
                    )
                yb = y[idx.to(y.device)]
                if attack is None:  # the clean objective: no attack to craft
                    net.train()
                    stepper.zero_grad()
                    F.cross_entropy(net(xb), yb).backward()
                    stepper.step()
                else:
                    train_step(
                        net,
                        stepper,  # type: ignore[arg-type]
                        xb,
                        yb,
                        attack=attack,
                        objective=at_objective,
                        generator=gen,
                    )
                if on_batch is not None:
                    on_batch(len(idx))
            state = CurveState(
                {n: t.detach().clone() for n, t in theta.items()}, inner.state_dict(), epoch + 1
            )
            if on_epoch is not None:
                on_epoch(state)
        for p in params.values():
            p.grad = None
    return state


# ----------------------------------------------------------------------------- evaluation


def point_key(path: str, t: float) -> str:
    """The unit key of the point at t on ``path`` (``line|t=0.25``)."""
    return str(UnitKey.of(path, t=float(t)))


def point_metrics(
    model: nn.Module,
    ends: Sequence[State | None],
    path: str,
    t: float,
    evalsets: Sequence[EvalSet],
    *,
    bn_x: torch.Tensor,
    attack: AttackConfig | None,
    seed: int,
    batch_size: int,
) -> dict[str, float]:
    """Natural and robust loss and accuracy of the model at phi(t) on every evaluation set,
    BatchNorm statistics re-estimated on ``bn_x`` there, the attack regenerated on it.

    The model's parameters and buffers are restored afterwards. Metric names are the
    landscape's (``test_loss``, ``test_adv_acc``, ...); ``t`` is added.
    """
    net = unwrap(model)
    state = dict(net.state_dict(keep_vars=True))
    names = [n for n, _ in net.named_parameters()]
    coefs = coefficients(path, t)
    with anchored(net, names + [b for b in bn_buffer_names(net) if b not in names]):
        write_point({n: state[n] for n in names}, [e if e is not None else {} for e in ends], coefs)
        recompute_bn_stats(net, bn_x, batch_size=batch_size)
        out: dict[str, float] = {"t": float(t)}
        for es in evalsets:
            out.update(
                split_metrics(
                    net,
                    es,
                    attack=attack,
                    seed=derive_seed(seed, "attack", path, float(t), es.name),
                    batch_size=batch_size,
                )
            )
    return out


@dataclass(frozen=True)
class Barrier:
    """A metric's barrier along a path (loss: max minus the ends' mean; accuracy: the ends'
    mean minus min), and the t where it is reached."""

    path: str
    metric: str
    barrier: float
    t: float
    ends_mean: float
    extreme: float


def barriers(path: str, records: Sequence[Mapping[str, float]]) -> list[Barrier]:
    """The barrier of every loss and accuracy along one path (records ordered by t, ends
    included)."""
    rows = sorted(records, key=lambda r: r["t"])
    if rows[0]["t"] != 0.0 or rows[-1]["t"] != 1.0:
        raise ValueError("a path's barrier needs its two ends (t = 0 and t = 1)")
    out = []
    for m in [k for k in rows[0] if k != "t"]:
        v = np.array([r[m] for r in rows], dtype=np.float64)
        ends = (v[0] + v[-1]) / 2
        sign = -1.0 if m.endswith("_acc") else 1.0  # accuracies: the drop below the ends
        j = int(np.nanargmax(sign * v))
        out.append(Barrier(path, m, float(sign * (v[j] - ends)), rows[j]["t"], ends, float(v[j])))
    return out
