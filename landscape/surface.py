"""Weight loss curves and surfaces: theta0 + sum_i c_i d_i, with attacks regenerated at each point.

At every coordinate the model's tensors are written from the stored theta0 (never by
accumulating steps, never through a model copy), the clean loss and accuracy are measured on a
fixed evaluation set held as tensors on the device, and adversarial examples are crafted on the
perturbed model itself with a seed fixed per point, so the adversarial loss is that of
f_{theta0 + sum c_i d_i} and not an underestimate. theta0 (and any BatchNorm buffer touched) is
restored bit for bit when the evaluation ends, also after an exception.

A ``fixed`` mode reuses the adversarial examples crafted once at theta0; it exists only to show
how much that underestimates the loss (rebuttal R#2 Q2).

Reference: Wu, Xia, Wang, NeurIPS 2020, Sec. 3 and Fig. 1 (post-training landscape with attacks
on the perturbed model); Li et al., NeurIPS 2018 (filter-normalized curves and surfaces).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from awp.augment import to_float
from awp.config import AttackConfig, check_choice
from awp.data import DataBundle, capped_notice, fixed_subset
from awp.evaluate import Loss, accuracy_of, attack_outcomes
from awp.modes import bn_buffers, check_bn_recomputable, cpu_channels_last, unwrap
from awp.modes import recompute_bn_stats as recompute_bn_stats  # its home; re-exported
from awp.perturb import kept, write_point
from awp.seeds import derive_seed
from landscape.config import BN_MODES, SurfaceConfig
from landscape.directions import (
    Direction,
    awp_direction,
    check_direction,
    hessian_directions,
    orthogonalize,
    random_direction,
    target_direction,
)
from landscape.grid import Grid
from landscape.trajectory import PathPCA

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class EvalSet:
    """A fixed evaluation set held on the device.

    Attributes:
        name: "train" or "test" (prefix of the metric names).
        x: images, (N, C, H, W) float in [0, 1]; for a clean landscape (no attack) inputs of
            any shape (N, ...), e.g. (N, 8) tabular features.
        y: labels, (N,) int64 (or the targets of the loss, first dimension N).
    """

    name: str
    x: torch.Tensor
    y: torch.Tensor

    def __post_init__(self) -> None:
        if self.x.dim() < 1 or self.y.dim() < 1 or len(self.x) != len(self.y) or not len(self.y):
            raise ValueError(
                f"EvalSet {self.name}: need x (N, ...) and y (N, ...) with N > 0, got "
                f"{tuple(self.x.shape)} and {tuple(self.y.shape)}"
            )


def make_evalsets(data: DataBundle, *, n_train: int, n_test: int, seed: int) -> list[EvalSet]:
    """Fixed seeded subsets of the training and test splits as float tensors on their device.

    Args:
        data: the dataset (uint8 images, or float tensors, on the device).
        n_train: training images (0 = none; more than the split = all of it).
        n_test: test images (0 = none).
        seed: seed of the subsets.

    Returns:
        The evaluation sets, in the order train, test.
    """
    sets = []
    for name, n in (("train", n_train), ("test", n_test)):
        if n <= 0:
            continue
        split = getattr(data, name)
        if len(split) == 0:
            raise ValueError(f"the {name} split of {data.name} is empty; set --n-{name} 0")
        capped_notice(n, len(split), flag=f"--n-{name}")
        idx = fixed_subset(len(split), n, seed=seed).to(split.x.device)
        sets.append(EvalSet(name, _floats(split.x[idx]), split.y[idx]))
    return sets


def _floats(x: torch.Tensor) -> torch.Tensor:
    """uint8 images as float32 in [0, 1]; other tensors (floats, token ids) as they are."""
    return to_float(x) if x.dtype == torch.uint8 else x


def bn_images(data: DataBundle, *, n: int, seed: int) -> torch.Tensor:
    """A fixed seeded subset of training images, (n, C, H, W) float in [0,1], for BN stats
    (drawn with ``derive_seed(seed, "bn images")``, apart from the evaluation subsets)."""
    idx = fixed_subset(len(data.train), n, seed=derive_seed(seed, "bn images"))
    idx = idx.to(data.train.x.device)
    return _floats(data.train.x[idx])


def point_seed(attack_seed: int, index: int, split: str) -> int:
    """The attack seed of one point and split, a pure function (same on every rank):
    ``derive_seed(attack_seed, "point", index, split)``, so every point has its own stream."""
    return derive_seed(attack_seed, "point", index, split)


def fixed_seed(attack_seed: int, split: str) -> int:
    """The seed of the ``fixed`` mode's attack at theta0."""
    return derive_seed(attack_seed, "fixed", split)


def awp_seed(attack_seed: int) -> int:
    """The seed of the attack crafting x_adv for the AWP direction at theta0."""
    return derive_seed(attack_seed, "awp direction")


def hessian_seed(attack_seed: int) -> int:
    """The seed of the attack crafting x_adv for the Hessian directions at theta0."""
    return derive_seed(attack_seed, "hessian direction")


def direction_seed(seed: int, index: int) -> int:
    """The seed of random direction ``index`` (x is 0, y is 1) drawn from ``--direction-seed``."""
    return derive_seed(seed, "direction", index)


def make_directions(
    model: nn.Module,
    cfg: SurfaceConfig,
    *,
    train: EvalSet | None = None,
    target_state: Mapping[str, torch.Tensor] | None = None,
    path: PathPCA | None = None,
) -> tuple[list[Direction], list[str], list[int | None]]:
    """The directions a config asks for, with their types and seeds (deterministic).

    Random direction k is drawn from :func:`direction_seed` (seed, k). 1d: one random
    direction (k = 0) or AWP's; 2d: that and a random y (k = 1), optionally orthogonalized;
    multi: random directions k = 0, 1, ...; interp: ``target_state`` - theta0 over the whole
    state; trajectory: the two principal directions of ``path``. Direction hessian: the top
    Hessian eigenvector v1 of the training loss (1d), or v1 and v2 (2d), from a Lanczos start
    drawn from ``derive_seed(seed, "direction", "hessian")``.

    Args:
        model: the network at theta0.
        cfg: the run's settings (kind, direction, seed, dir_norm, dir_include, orthogonalize,
            and the attack for the AWP direction).
        train: the training evaluation set (the AWP direction's data).
        target_state: the state dict of the interpolation target (kind interp).
        path: the PCA of the training path (kind trajectory; from
            :func:`landscape.trajectory.path_pca`).

    Returns:
        (directions, types "random" | "awp" | "hessian" | "target" | "pca", seeds (None where
        not random)).
    """

    def rand(k: int) -> Direction:
        return random_direction(
            model, seed=direction_seed(cfg.seed, k), norm=cfg.dir_norm, include=cfg.dir_include
        )

    if cfg.kind == "interp":
        if target_state is None:
            raise ValueError("kind interp needs the target checkpoint's state (target_state)")
        return [target_direction(unwrap(model).state_dict(), target_state)], ["target"], [None]
    if cfg.kind == "trajectory":
        if path is None:
            raise ValueError("kind trajectory needs the path's principal directions (path)")
        return list(path.directions), ["pca", "pca"], [None, None]
    if cfg.kind == "multi":
        seeds: list[int | None] = [direction_seed(cfg.seed, k) for k in range(cfg.n_directions)]
        return [rand(k) for k in range(cfg.n_directions)], ["random"] * len(seeds), seeds
    if cfg.direction in ("awp", "hessian") and train is None:
        raise ValueError(f"the {cfg.direction} direction needs the training evaluation set (train)")
    if cfg.direction == "hessian":
        assert train is not None
        dirs, values = hessian_directions(
            model,
            train.x,
            train.y,
            attack=cfg.attack,
            k=2 if cfg.kind == "2d" else 1,
            include=cfg.dir_include,
            batch_size=cfg.batch_size,
            seed=derive_seed(cfg.seed, "direction", "hessian"),
            attack_seed=hessian_seed(cfg.attack_seed),
        )
        log.info("Hessian directions: eigenvalues %s", ", ".join(f"{v:.6g}" for v in values))
        return dirs, ["hessian"] * len(dirs), [None] * len(dirs)
    if cfg.direction == "awp":
        assert train is not None
        first = awp_direction(
            model,
            train.x,
            train.y,
            attack=cfg.attack,
            batch_size=cfg.batch_size,
            generator=torch.Generator().manual_seed(awp_seed(cfg.attack_seed)),
        )
        dirs, types, seeds = [first], ["awp"], [None]
    else:
        dirs, types, seeds = [rand(0)], ["random"], [direction_seed(cfg.seed, 0)]
    if cfg.kind == "2d":
        second = rand(1)
        if cfg.orthogonalize:
            weights = dict(unwrap(model).named_parameters())
            second = orthogonalize(second, dirs[0], weights, norm=cfg.dir_norm)
        dirs.append(second)
        types.append("random")
        seeds.append(direction_seed(cfg.seed, 1))
    return dirs, types, seeds


def metric_names(splits: Sequence[str], *, attack: bool, fixed: bool = False) -> tuple[str, ...]:
    """Value names, loss-landscape's (``train_loss``, ``test_acc``...) plus adversarial ones."""
    kinds = ["loss", "acc"]
    if attack:
        kinds += ["adv_loss", "adv_acc"]
        if fixed:
            kinds += ["adv_fixed_loss", "adv_fixed_acc"]
    return tuple(f"{s}_{k}" for s in splits for k in kinds)


# ----------------------------------------------------------------------------- evaluation


def _model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """name -> the model's own parameter and buffer tensors (writing them changes the model)."""
    return dict(unwrap(model).state_dict(keep_vars=True))


def bn_buffer_names(model: nn.Module) -> list[str]:
    """State names of every tracked BatchNorm buffer (running mean/var, batch count)."""
    return list(bn_buffers(model))


@contextmanager
def anchored(model: nn.Module, names: Sequence[str]) -> Iterator[dict[str, torch.Tensor]]:
    """Store theta0 for the named state tensors; copy it back bit for bit on exit
    (:func:`awp.perturb.kept` on the model's tensors of those names).

    Yields:
        name -> a clone of theta0 (the values every point is written from).

    Raises:
        KeyError: a name is not in the model's state (the first five are listed).
    """
    state = _model_state(model)
    missing = [n for n in names if n not in state]
    if missing:
        raise KeyError(f"not in the model's state: {missing[:5]}")
    with kept({n: state[n] for n in names}) as theta0:
        yield theta0


def split_metrics(
    model: nn.Module,
    evalset: EvalSet,
    *,
    attack: AttackConfig | None,
    seed: int,
    batch_size: int,
    x_adv_fixed: torch.Tensor | None = None,
    loss: Loss | None = None,
) -> dict[str, float]:
    """Clean, regenerated-adversarial and (optionally) fixed-adversarial metrics at the current
    weights, on one evaluation set (:func:`awp.evaluate.attack_outcomes`, eval mode).

    At theta0 the numbers equal :func:`awp.evaluate.evaluate_attack` exactly for the same batch
    size and seed.

    Args:
        model: the network at the point's weights.
        evalset: the fixed images and labels.
        attack: attack crafted on this model (None: clean only).
        seed: seed of the attack's CPU generator (one stream over the batches).
        batch_size: examples per pass.
        x_adv_fixed: (N, C, H, W) adversarial examples crafted at theta0, or None.
        loss: ``(outputs, targets) -> scalar mean or (B,)`` (default cross-entropy; see
            :func:`awp.evaluate.attack_outcomes`).

    Returns:
        {"{split}_loss", "{split}_acc", and "_adv_loss", "_adv_acc", "_adv_fixed_*"}: mean
        loss (cross-entropy in nats by default) and accuracy (fraction in [0, 1]; NaN for
        outputs that are not class scores).
    """
    n, name = len(evalset.y), evalset.name
    runs = [("", evalset.x, None, None)]
    if attack is not None:
        runs.append(("adv_", evalset.x, attack, torch.Generator().manual_seed(seed)))
        if x_adv_fixed is not None:
            runs.append(("adv_fixed_", x_adv_fixed, None, None))
    out: dict[str, float] = {}
    for prefix, x, att, gen in runs:
        o = attack_outcomes(
            model, x, evalset.y, att, batch_size=batch_size, generator=gen, loss=loss
        )
        out[f"{name}_{prefix}loss"] = o.loss_sum / n
        out[f"{name}_{prefix}acc"] = accuracy_of(o)
    return out


def craft_fixed(
    model: nn.Module,
    evalset: EvalSet,
    *,
    attack: AttackConfig,
    seed: int,
    batch_size: int,
) -> torch.Tensor:
    """Adversarial examples crafted once at the current weights (theta0), for the fixed mode.

    Returns:
        x_adv, (N, C, H, W) in [0, 1], on the evaluation set's device.
    """
    gen = torch.Generator().manual_seed(seed)
    out = attack_outcomes(
        model, evalset.x, evalset.y, attack, batch_size=batch_size, generator=gen, keep_adv=True
    )
    assert out.x_adv is not None
    return out.x_adv


PointFn = Callable[[int], dict[str, float]]


def _check_setup(
    directions: Sequence[Direction],
    grid: Grid,
    *,
    bn: str,
    bn_x: torch.Tensor | None,
    fixed: bool,
    attack: AttackConfig | None,
) -> None:
    check_choice(bn, BN_MODES, "bn")
    if len(directions) != grid.n_directions:
        raise ValueError(
            f"a {grid.kind} grid with {grid.rows} rows needs {grid.n_directions} directions, "
            f"got {len(directions)}"
        )
    if bn == "recompute" and (bn_x is None or len(bn_x) < 2):
        raise ValueError("bn='recompute' needs bn_x with at least 2 training images")
    if fixed and attack is None:
        raise ValueError("the fixed mode reuses adversarial examples: it needs an attack")


@contextmanager
def surface_evaluator(
    model: nn.Module,
    directions: Sequence[Direction],
    grid: Grid,
    evalsets: Sequence[EvalSet],
    *,
    attack: AttackConfig | None = None,
    attack_seed: int = 0,
    fixed: bool = False,
    bn: str = "eval",
    bn_x: torch.Tensor | None = None,
    batch_size: int = 256,
    loss: Loss | None = None,
) -> Iterator[PointFn]:
    """Set up a landscape evaluation; yields ``evaluate(index) -> metrics`` for grid points.

    On entry theta0 is stored for every tensor a direction moves (and the BatchNorm buffers
    when ``bn="recompute"``), and the fixed-mode examples are crafted at theta0. Each call
    writes theta0 + sum c_i d_i (the grid's coefficients) and measures the point; the result
    of a point depends only on its index, never on which points were evaluated before, so
    points can be split across processes and resumed. On exit theta0 is restored bit for bit.

    On the CPU the model's 4-d weights are kept in channels_last for the evaluation
    (:func:`awp.modes.cpu_channels_last`, as evaluation, training and flatness do: the same
    numbers to float32 rounding, faster), and given back in their own layout on exit.

    Args:
        model: the network at theta0, on the evaluation sets' device.
        directions: ``grid.n_directions`` directions (name -> tensor; moved to the model's
            devices and dtypes here).
        grid: the coordinates.
        evalsets: fixed evaluation sets (train and/or test).
        attack: attack regenerated on the perturbed model at each point (None: clean only).
        attack_seed: base seed; point i of split s uses :func:`point_seed` (attack_seed, i, s).
        fixed: also evaluate x_adv crafted once at theta0 (needs ``attack``).
        bn: "eval" keeps theta0's BatchNorm statistics; "recompute" re-estimates them on
            ``bn_x`` at every point.
        bn_x: training images (N, C, H, W) in [0,1] for ``bn="recompute"``.
        batch_size: examples per forward pass.
        loss: ``(outputs, targets) -> scalar mean or (B,)`` measured at every point (default
            cross-entropy); with ``attack`` None the inputs may have any shape.

    Yields:
        ``evaluate(index)`` returning {metric name: value} for that point.
    """
    _check_setup(directions, grid, bn=bn, bn_x=bn_x, fixed=fixed, attack=attack)
    with (
        cpu_channels_last(model),
        grid_points(model, directions, grid, bn=bn, bn_x=bn_x, batch_size=batch_size) as goto,
    ):
        fixed_adv = {  # crafted at theta0: no point has been written yet
            es.name: craft_fixed(
                model,
                es,
                attack=attack,
                seed=fixed_seed(attack_seed, es.name),
                batch_size=batch_size,
            )
            for es in evalsets
            if fixed and attack is not None
        }

        def evaluate(index: int) -> dict[str, float]:
            goto(index)
            metrics: dict[str, float] = {}
            for es in evalsets:
                metrics.update(
                    split_metrics(
                        model,
                        es,
                        attack=attack,
                        seed=point_seed(attack_seed, index, es.name),
                        batch_size=batch_size,
                        x_adv_fixed=fixed_adv.get(es.name),
                        loss=loss,
                    )
                )
            return metrics

        yield evaluate


@contextmanager
def grid_points(
    model: nn.Module,
    directions: Sequence[Direction],
    grid: Grid,
    *,
    bn: str = "eval",
    bn_x: torch.Tensor | None = None,
    batch_size: int = 256,
) -> Iterator[Callable[[int], None]]:
    """Yields ``goto(index)``, which writes theta0 + sum c_i d_i of that grid point into the
    model (and re-estimates BatchNorm statistics on ``bn_x`` when ``bn="recompute"``).

    On entry theta0 is stored for every tensor a direction moves (and the BatchNorm buffers
    when recomputed); on exit it is restored bit for bit, also after an exception. Arguments
    as for :func:`surface_evaluator`; every measurement over a grid (the surface's metrics, the
    curvature map's eigenvalues) moves the model through this.
    """
    _check_setup(directions, grid, bn=bn, bn_x=bn_x, fixed=False, attack=None)
    if bn == "recompute":
        check_bn_recomputable(model)
    names = sorted({n for d in directions for n in d})
    for d in directions:
        check_direction(d, model)
    state = _model_state(model)
    # Each direction in its tensor's device, dtype and memory layout (channels_last weights
    # get channels_last directions: the same values, added without a layout conversion).
    dirs = [
        {n: torch.empty_like(state[n]).copy_(t.detach()) for n, t in d.items()} for d in directions
    ]
    tensors = {n: state[n] for n in names}
    # BatchNorm recomputation overwrites the buffers at every point: store them too.
    extra = bn_buffer_names(model) if bn == "recompute" else []
    anchor = names + [b for b in extra if b not in names]
    # Buffers that move with the grid (an interpolation's "all state"): extrapolated running
    # variances can turn negative, and BatchNorm then gives NaN.
    variances = [n for n in names if n.endswith("running_var")]
    with anchored(model, anchor) as theta0:

        def goto(index: int) -> None:
            write_point(tensors, theta0, dirs, grid.coefficients(index))
            if bn == "eval" and variances:
                _warn_negative_variances(tensors, variances, grid.coefficients(index))
            if bn == "recompute":
                assert bn_x is not None
                recompute_bn_stats(model, bn_x, batch_size=batch_size)

        yield goto


def _warn_negative_variances(
    tensors: Mapping[str, torch.Tensor], names: Sequence[str], coefficients: Sequence[float]
) -> None:
    """Log a warning when BatchNorm running variances written at a point are negative."""
    negative = int(sum((tensors[n] < 0).sum() for n in names))  # one device sync per point
    if negative:
        at = (
            f"alpha={coefficients[0]:g}"
            if len(coefficients) == 1
            else "(" + ", ".join(f"{c:g}" for c in coefficients) + ")"
        )
        log.warning(
            "at %s %d BatchNorm running variances are negative (the buffers are "
            "extrapolated), so the losses there are NaN; --bn recompute re-estimates the "
            "statistics at every point",
            at,
            negative,
        )


@dataclass(frozen=True, eq=False)
class SurfaceValues:
    """Values of a landscape in memory.

    Attributes:
        grid: the coordinates.
        values: metric name -> (rows, nx) float64 array, NaN where not computed.
        computed: (rows, nx) bool, True where the point was evaluated.
    """

    grid: Grid
    values: dict[str, np.ndarray]
    computed: np.ndarray


def compute_surface(
    model: nn.Module,
    directions: Sequence[Direction],
    grid: Grid,
    evalsets: Sequence[EvalSet],
    *,
    indices: Sequence[int] | None = None,
    on_point: Callable[[int, dict[str, float]], None] | None = None,
    **setup: Any,
) -> SurfaceValues:
    """Evaluate a landscape (all points, or ``indices``) and return its arrays.

    Args:
        model, directions, grid, evalsets: as :func:`surface_evaluator`.
        indices: flat point indices to evaluate (default all, in order).
        on_point: called with (index, metrics) after each point (progress, saving).
        **setup: the keyword settings of :func:`surface_evaluator` (attack, attack_seed,
            fixed, bn, bn_x, batch_size, loss).

    Returns:
        :class:`SurfaceValues`; the model is back at theta0 bit for bit.
    """
    splits = [es.name for es in evalsets]
    names = metric_names(
        splits, attack=setup.get("attack") is not None, fixed=setup.get("fixed", False)
    )
    values = {n: np.full(grid.shape, np.nan) for n in names}
    computed = np.zeros(grid.shape, dtype=bool)
    todo = range(grid.n_points) if indices is None else indices
    with surface_evaluator(model, directions, grid, evalsets, **setup) as evaluate:
        for index in todo:
            metrics = evaluate(index)
            cell = grid.cell(index)
            for k, v in metrics.items():
                values[k][cell] = v
            computed[cell] = True
            if on_point is not None:
                on_point(index, metrics)
    return SurfaceValues(grid, values, computed)
