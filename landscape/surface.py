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

import json
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from awp.attacks import model_mode, run_attack
from awp.config import ATTACK_NAMES, AttackConfig, check_eps, opt
from awp.data import DataBundle, fixed_subset, to_float
from awp.perturb import unwrap
from landscape.directions import (
    INCLUDES,
    NORMS,
    Direction,
    awp_direction,
    check_direction,
    orthogonalize,
    random_direction,
    target_direction,
)

log = logging.getLogger(__name__)

KINDS = ("1d", "2d", "multi", "interp")
DIRECTION_TYPES = ("random", "awp")
BN_MODES = ("eval", "recompute")
SPLITS = ("train", "test")
SPLIT_IDS = {"train": 0, "test": 1}
DEFAULT_RANGE = "-1:1:21"
DEFAULT_INTERP_RANGE = "-0.5:1.5:21"
MAX_AXIS_POINTS = 10_001  # a typo guard (-1:1:210000); no figure resolves more
MAX_GRID_POINTS = 1001 * 1001
# Keys that may change between a run and its resumption without changing any value.
RESUME_MUTABLE = ("device",)


def parse_range(text: str) -> np.ndarray:
    """Coordinates from loss-landscape's ``min:max:num`` notation (``-1:1:21``).

    Values are rounded to 12 decimals so that e.g. 0 and 1 are hit exactly when the grid
    contains them (linspace alone gives 1.0000000000000002 for ``-0.5:1.5:21``).

    Returns:
        float64 array of ``num`` increasing coordinates (``num == 1`` gives ``[min]``).

    Raises:
        ValueError: not three fields, num < 1, max < min, min == max with num > 1, more than
            :data:`MAX_AXIS_POINTS`, or non-finite values.
    """
    parts = str(text).split(":")
    try:
        if len(parts) != 3:
            raise ValueError
        lo, hi, num = float(parts[0]), float(parts[1]), int(parts[2])
    except ValueError:
        raise ValueError(
            f"cannot read coordinates {text!r}: write min:max:num, e.g. --x=-1:1:21 "
            "(with '=' so the leading minus is not read as a flag)"
        ) from None
    if not (np.isfinite(lo) and np.isfinite(hi)) or num < 1 or hi < lo:
        raise ValueError(f"coordinates {text!r}: need finite min <= max and num >= 1")
    if hi == lo and num > 1:
        raise ValueError(
            f"coordinates {text!r}: min == max gives {num} copies of one point; "
            f"write {parts[0]}:{parts[1]}:1, or widen the range"
        )
    if num > MAX_AXIS_POINTS:
        raise ValueError(
            f"coordinates {text!r}: {num} points on one axis (at most {MAX_AXIS_POINTS}); a "
            f"figure shows 21-101, e.g. {parts[0]}:{parts[1]}:51"
        )
    if num == 1:
        return np.array([lo])
    return np.round(np.linspace(lo, hi, num), 12) + 0.0  # + 0.0 turns -0.0 into 0.0


@dataclass(frozen=True)
class SurfaceConfig:
    """What a landscape run computes; saved as JSON in the result file (resume checks it).

    Defaults: a 1-D curve, alpha in -1:1:21 along one filter-normalized Gaussian direction
    (biases and BatchNorm fixed), 1000 test and 1000 training images, PGD-10 (8/255, step
    2/255, eval mode) regenerated at every point, BatchNorm with w0's statistics.
    """

    kind: str = opt(
        "1d",
        "1d: curve along one direction | 2d: surface | multi: 1-D curves along several "
        "random directions (mean and spread) | interp: from the first checkpoint to the second",
    )
    x: str = opt(
        "",
        "x coordinates min:max:num, write --x=-1:1:21 (default -1:1:21; interp "
        "-0.5:1.5:21; for --direction awp alpha is AWP's gamma, e.g. -0.02:0.02:21)",
    )
    y: str = opt("", "y coordinates of a 2d surface, min:max:num (default -1:1:21)")
    n_directions: int = opt(5, "number of random directions of kind multi")
    seed: int = opt(0, "seed of the first random direction; direction i is drawn from seed + i")
    direction: str = opt(
        "random", "x direction: random | awp (AWP's worst-case direction at w0, layer-normalized)"
    )
    dir_norm: str = opt("filter", "random direction normalization: filter | layer | none")
    dir_include: str = opt(
        "weights", "weights (conv/linear; biases and BatchNorm get 0) | all (every parameter)"
    )
    orthogonalize: bool = opt(False, "make the y direction of a 2d surface orthogonal to x")
    n_test: int = opt(1000, "fixed seeded subset of test images (0 = no test metrics)")
    n_train: int = opt(1000, "fixed seeded subset of training images (0 = no train metrics)")
    subset_seed: int = opt(0, "seed of the evaluation subsets")
    attack: str = opt("pgd", "attack regenerated at every point: pgd | cw | fgsm | none")
    norm: str = opt("linf", "threat model: linf | l2")
    eps: float = opt(8 / 255, "attack radius in [0,1] pixel units (8/255 linf, 0.5 l2)")
    step_size: float = opt(2 / 255, "attack step size, pixel units")
    attack_steps: int = opt(10, "attack steps")
    restarts: int = opt(1, "attack restarts")
    attack_mode: str = opt("eval", "model mode during the attack: eval | train")
    attack_seed: int = opt(0, "seed of the attacks' random starts (one stream per point)")
    fixed: bool = opt(
        False, "also reuse x_adv crafted once at w0 (*_adv_fixed_*: shows the underestimate)"
    )
    bn: str = opt(
        "eval",
        "BatchNorm: eval (w0's statistics; interp moves them with the weights, and beyond "
        "the end points variances can turn negative) | recompute (on training images at every "
        "point; restored afterwards)",
    )
    n_bn: int = opt(1000, "training images used to recompute BatchNorm statistics")
    batch_size: int = opt(256, "examples per forward pass")
    dataset: str = opt("", "dataset (default: the one the checkpoint was trained on)")
    data_root: str = opt("", "where torchvision datasets live (default: the checkpoint's)")
    device: str = opt("auto", "auto | cpu | cuda | cuda:N (under torchrun: one GPU per rank)")

    def __post_init__(self) -> None:
        _choice(self.kind, KINDS, "kind")
        _choice(self.direction, DIRECTION_TYPES, "direction")
        _choice(self.dir_norm, NORMS, "dir_norm")
        _choice(self.dir_include, INCLUDES, "dir_include")
        _choice(self.bn, BN_MODES, "bn")
        _choice(self.attack, (*ATTACK_NAMES, "none"), "attack")
        # Resolve the kind-dependent defaults now, so the saved config says what was run.
        if not self.x:
            x = DEFAULT_INTERP_RANGE if self.kind == "interp" else DEFAULT_RANGE
            object.__setattr__(self, "x", x)
        if self.kind == "2d" and not self.y:
            object.__setattr__(self, "y", DEFAULT_RANGE)
        parse_range(self.x)
        if self.kind == "2d":
            parse_range(self.y)
        elif self.y:
            raise ValueError(f"--y is only for kind 2d (kind is {self.kind!r})")
        if self.kind == "multi" and self.n_directions < 2:
            raise ValueError(
                f"kind multi needs n_directions >= 2 (got {self.n_directions}); use kind 1d "
                "for a single direction"
            )
        if self.direction == "awp" and self.kind in ("multi", "interp"):
            raise ValueError(
                f"--direction awp is one deterministic direction: use it with kind 1d or 2d, "
                f"not {self.kind}"
            )
        if self.direction == "awp" and self.n_train < 1:
            raise ValueError(
                "the AWP direction is the adversarial-loss gradient on the training subset: "
                "set --n-train > 0"
            )
        if self.bn == "recompute" and self.n_bn < 2:
            raise ValueError(f"bn recompute needs n_bn >= 2 training images, got {self.n_bn}")
        for name in ("n_test", "n_train", "n_bn", "seed", "subset_seed", "attack_seed"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 0")
        if self.n_test == 0 and self.n_train == 0:
            raise ValueError("nothing to evaluate: n_test and n_train are both 0")
        if self.batch_size < 1:
            raise ValueError(f"batch_size={self.batch_size} must be >= 1")
        check_eps(self.eps, self.norm)
        _ = self.attack_config  # validate the attack now, not at the first point

    @property
    def attack_config(self) -> AttackConfig | None:
        """The attack regenerated at every point (None: clean metrics only)."""
        if self.attack == "none":
            return None
        return AttackConfig(
            name=self.attack,
            norm=self.norm,
            eps=self.eps,
            step_size=self.eps if self.attack == "fgsm" else self.step_size,
            steps=1 if self.attack == "fgsm" else self.attack_steps,
            restarts=self.restarts,
            random_start="none" if self.attack == "fgsm" else "uniform",
            mode=self.attack_mode,
        )

    @property
    def splits(self) -> tuple[str, ...]:
        """Evaluated splits, in the order of :data:`SPLITS`."""
        sizes = {"train": self.n_train, "test": self.n_test}
        return tuple(s for s in SPLITS if sizes[s] > 0)

    def grid(self) -> Grid:
        """The coordinates this config describes (:func:`make_grid`)."""
        return make_grid(
            self.kind,
            parse_range(self.x),
            parse_range(self.y) if self.kind == "2d" else None,
            n_directions=self.n_directions if self.kind == "multi" else 1,
        )

    def to_json(self) -> str:
        """Canonical JSON (sorted keys), as stored in the result file."""
        from awp.config import to_dict

        return json.dumps(to_dict(self), sort_keys=True)


def _choice(value: str, allowed: Sequence[str], what: str) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; choose one of {', '.join(allowed)}")


def config_diff(saved: Mapping, current: Mapping) -> list[str]:
    """Differences between two SurfaceConfig dicts that change results (device is ignored)."""
    return [
        f"{k}: {saved.get(k)!r} in the file, {current.get(k)!r} now"
        for k in sorted(set(saved) | set(current))
        if k not in RESUME_MUTABLE and saved.get(k) != current.get(k)
    ]


# ----------------------------------------------------------------------------- grid


@dataclass(frozen=True, eq=False)
class Grid:
    """Where a landscape is evaluated: ``rows x nx`` points, flat index ``row * nx + col``.

    Attributes:
        kind: "1d" / "interp" (one row, one direction), "2d" (row = y index; directions x, y)
            or "multi" (row = direction index; each row moves along its own direction).
        x: (nx,) coordinates along the x direction(s).
        y: (ny,) coordinates along y for "2d", else None.
        rows: ny for "2d", the number of directions for "multi", 1 otherwise.
    """

    kind: str
    x: np.ndarray
    y: np.ndarray | None
    rows: int

    @property
    def nx(self) -> int:
        return len(self.x)

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, nx): the in-memory shape of every value array."""
        return self.rows, self.nx

    @property
    def n_points(self) -> int:
        return self.rows * self.nx

    @property
    def n_directions(self) -> int:
        return {"2d": 2, "multi": self.rows}.get(self.kind, 1)

    def cell(self, index: int) -> tuple[int, int]:
        """(row, col) of a flat point index."""
        if not 0 <= index < self.n_points:
            raise IndexError(f"point {index} outside a grid of {self.n_points} points")
        return divmod(index, self.nx)

    def coefficients(self, index: int) -> tuple[float, ...]:
        """c_i of every direction at a point: theta = theta0 + sum_i c_i d_i."""
        row, col = self.cell(index)
        if self.kind == "2d":
            assert self.y is not None
            return float(self.x[col]), float(self.y[row])
        if self.kind == "multi":
            c = [0.0] * self.rows
            c[row] = float(self.x[col])
            return tuple(c)
        return (float(self.x[col]),)


def make_grid(
    kind: str, x: np.ndarray, y: np.ndarray | None = None, *, n_directions: int = 1
) -> Grid:
    """Build a :class:`Grid` (1d/interp: one row; 2d: ny rows; multi: one row per direction).

    Args:
        kind: one of :data:`KINDS`.
        x: (nx,) coordinates; y: (ny,) coordinates for "2d" only.
        n_directions: number of directions for "multi" (>= 1).
    """
    _choice(kind, KINDS, "kind")
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    if kind == "2d":
        if y is None:
            raise ValueError("a 2d grid needs y coordinates")
        y = np.asarray(y, dtype=np.float64).reshape(-1)
        if len(x) * len(y) > MAX_GRID_POINTS:
            raise ValueError(
                f"a {len(y)} x {len(x)} surface has {len(x) * len(y)} points, more than "
                f"{MAX_GRID_POINTS} (1001 x 1001); use fewer coordinates, e.g. 51 x 51"
            )
        return Grid(kind, x, y, len(y))
    if y is not None:
        raise ValueError(f"only a 2d grid has y coordinates (kind {kind!r})")
    return Grid(kind, x, None, n_directions if kind == "multi" else 1)


# ----------------------------------------------------------------------------- data


@dataclass(frozen=True, eq=False)
class EvalSet:
    """A fixed evaluation set held on the device.

    Attributes:
        name: "train" or "test" (prefix of the metric names).
        x: images, (N, C, H, W) float in [0, 1].
        y: labels, (N,) int64.
    """

    name: str
    x: torch.Tensor
    y: torch.Tensor

    def __post_init__(self) -> None:
        if self.x.dim() != 4 or len(self.x) != len(self.y) or len(self.y) == 0:
            raise ValueError(
                f"EvalSet {self.name}: need x (N, C, H, W) and y (N,) with N > 0, got "
                f"{tuple(self.x.shape)} and {tuple(self.y.shape)}"
            )


def make_evalsets(data: DataBundle, *, n_train: int, n_test: int, seed: int) -> list[EvalSet]:
    """Fixed seeded subsets of the training and test splits as float tensors on their device.

    Args:
        data: the dataset (uint8 tensors on the device).
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
        idx = fixed_subset(len(split), n, seed=seed).to(split.x.device)
        sets.append(EvalSet(name, to_float(split.x[idx]), split.y[idx]))
    return sets


def bn_images(data: DataBundle, *, n: int, seed: int) -> torch.Tensor:
    """A fixed seeded subset of training images, (n, C, H, W) float in [0,1], for BN stats."""
    idx = fixed_subset(len(data.train), n, seed=seed + 1).to(data.train.x.device)
    return to_float(data.train.x[idx])


def point_seed(attack_seed: int, index: int, split: str) -> int:
    """The attack seed of one point and split, a pure function (same on every rank).

    Mixed through numpy's SeedSequence so neighbouring points get unrelated streams.
    """
    ss = np.random.SeedSequence([attack_seed, 0, index, SPLIT_IDS[split]])
    return int(ss.generate_state(1)[0])


def fixed_seed(attack_seed: int, split: str) -> int:
    """The seed of the ``fixed`` mode's attack at theta0."""
    ss = np.random.SeedSequence([attack_seed, 1, SPLIT_IDS[split]])
    return int(ss.generate_state(1)[0])


def awp_seed(attack_seed: int) -> int:
    """The seed of the attack crafting x_adv for the AWP direction at theta0."""
    ss = np.random.SeedSequence([attack_seed, 2, SPLIT_IDS["train"]])
    return int(ss.generate_state(1)[0])


def make_directions(
    model: nn.Module,
    cfg: SurfaceConfig,
    *,
    train: EvalSet | None = None,
    target_state: Mapping[str, torch.Tensor] | None = None,
) -> tuple[list[Direction], list[str], list[int | None]]:
    """The directions a config asks for, with their types and seeds (deterministic).

    1d: one random direction (seed) or AWP's; 2d: that and a random y (seed + 1), optionally
    orthogonalized; multi: random directions seed, seed + 1, ...; interp: ``target_state`` -
    theta0 over the whole state.

    Args:
        model: the network at theta0.
        cfg: the run's settings (kind, direction, seed, dir_norm, dir_include, orthogonalize,
            and the attack for the AWP direction).
        train: the training evaluation set (the AWP direction's data).
        target_state: the state dict of the interpolation target (kind interp).

    Returns:
        (directions, types "random" | "awp" | "target", seeds (None where not random)).
    """

    def rand(k: int) -> Direction:
        return random_direction(
            model, seed=cfg.seed + k, norm=cfg.dir_norm, include=cfg.dir_include
        )

    if cfg.kind == "interp":
        if target_state is None:
            raise ValueError("kind interp needs the target checkpoint's state (target_state)")
        return [target_direction(unwrap(model).state_dict(), target_state)], ["target"], [None]
    if cfg.kind == "multi":
        seeds: list[int | None] = [cfg.seed + k for k in range(cfg.n_directions)]
        return [rand(k) for k in range(cfg.n_directions)], ["random"] * len(seeds), seeds
    if cfg.direction == "awp":
        if train is None:
            raise ValueError("the AWP direction needs the training evaluation set (train)")
        first = awp_direction(
            model,
            train.x,
            train.y,
            attack=cfg.attack_config,
            batch_size=cfg.batch_size,
            generator=torch.Generator().manual_seed(awp_seed(cfg.attack_seed)),
        )
        dirs, types, seeds = [first], ["awp"], [None]
    else:
        dirs, types, seeds = [rand(0)], ["random"], [cfg.seed]
    if cfg.kind == "2d":
        second = rand(1)
        if cfg.orthogonalize:
            weights = dict(unwrap(model).named_parameters())
            second = orthogonalize(second, dirs[0], weights, norm=cfg.dir_norm)
        dirs.append(second)
        types.append("random")
        seeds.append(cfg.seed + 1)
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


def _bn_buffers(model: nn.Module) -> list[str]:
    names = []
    for prefix, m in unwrap(model).named_modules():
        if isinstance(m, _BatchNorm) and m.track_running_stats:
            for b in ("running_mean", "running_var", "num_batches_tracked"):
                if getattr(m, b, None) is not None:
                    names.append(f"{prefix}.{b}" if prefix else b)
    return names


@contextmanager
def anchored(model: nn.Module, names: Sequence[str]) -> Iterator[dict[str, torch.Tensor]]:
    """Store theta0 for the named state tensors; copy it back bit for bit on exit.

    Yields:
        name -> a clone of theta0 (the values every point is written from).
    """
    state = _model_state(model)
    missing = [n for n in names if n not in state]
    if missing:
        raise KeyError(f"not in the model's state: {missing[:5]}")
    theta0 = {n: state[n].detach().clone() for n in names}
    try:
        yield theta0
    finally:
        with torch.no_grad():
            for n, t in theta0.items():
                state[n].copy_(t)


def set_point(
    tensors: Mapping[str, torch.Tensor],
    theta0: Mapping[str, torch.Tensor],
    directions: Sequence[Mapping[str, torch.Tensor]],
    coefficients: Sequence[float],
) -> None:
    """Write theta = theta0 + sum_i c_i d_i into the model's tensors, from theta0 every time.

    A zero coefficient adds nothing, so a point at the origin is theta0 bit for bit.

    Args:
        tensors: name -> the model's tensors to write (parameters and maybe buffers).
        theta0: name -> stored original values.
        directions: one name -> tensor mapping per direction (absent names are zero).
        coefficients: c_i, one per direction.
    """
    if len(directions) != len(coefficients):
        raise ValueError(f"{len(directions)} directions but {len(coefficients)} coefficients")
    with torch.no_grad():
        for name, t in tensors.items():
            t.copy_(theta0[name])
            for d, c in zip(directions, coefficients):
                if c != 0.0 and name in d:
                    t.add_(d[name], alpha=c)


def recompute_bn_stats(model: nn.Module, x: torch.Tensor, *, batch_size: int) -> None:
    """Replace BatchNorm running statistics by their average over ``x`` at the current weights.

    Each BatchNorm's statistics are reset and accumulated with ``momentum=None`` (an exact
    cumulative average over the batches), as ``torch.optim.swa_utils.update_bn`` does. The
    model's modes and the momenta are restored; the caller restores the buffers.

    Args:
        model: the network; x: training images (N, C, H, W) in [0,1] on its device.
        batch_size: examples per pass (a last batch of one image is folded into the previous).
    """
    bns = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    if not bns:
        return
    momenta = [m.momentum for m in bns]
    flags = [(m, m.training) for m in model.modules()]
    try:
        for m in bns:
            m.reset_running_stats()
            m.momentum = None
        model.train()
        starts = list(range(0, len(x), batch_size))
        if len(starts) > 1 and len(x) - starts[-1] < 2:
            starts.pop()  # BatchNorm cannot take a batch of one: merge it into the last one
        with torch.no_grad():
            for i, s in enumerate(starts):
                end = starts[i + 1] if i + 1 < len(starts) else len(x)
                model(x[s:end])
    finally:
        for m, momentum in zip(bns, momenta):
            m.momentum = momentum
        for m, flag in flags:
            m.training = flag


@torch.no_grad()
def _forward_metrics(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, int]:
    with model_mode(model, "eval"):
        logits = model(x)
    return float(F.cross_entropy(logits, y, reduction="sum")), int((logits.argmax(1) == y).sum())


def split_metrics(
    model: nn.Module,
    evalset: EvalSet,
    *,
    attack: AttackConfig | None,
    seed: int,
    batch_size: int,
    x_adv_fixed: torch.Tensor | None = None,
) -> dict[str, float]:
    """Clean, regenerated-adversarial and (optionally) fixed-adversarial metrics at the current
    weights, on one evaluation set; the model is evaluated in eval mode.

    Sums are accumulated per batch in the same way as :func:`awp.evaluate.evaluate_attack`, so
    at theta0 the numbers equal it exactly for the same batch size and seed.

    Args:
        model: the network at the point's weights.
        evalset: the fixed images and labels.
        attack: attack crafted on this model (None: clean only).
        seed: seed of the attack's CPU generator (one stream over the batches).
        batch_size: examples per pass.
        x_adv_fixed: (N, C, H, W) adversarial examples crafted at theta0, or None.

    Returns:
        {"{split}_loss", "{split}_acc", and "_adv_loss", "_adv_acc", "_adv_fixed_*"}: mean
        cross-entropy (nats) and accuracy (fraction in [0, 1]).
    """
    generator = torch.Generator().manual_seed(seed)
    n = len(evalset.y)
    sums = {"loss": 0.0, "acc": 0, "adv_loss": 0.0, "adv_acc": 0}
    sums_fixed = {"adv_fixed_loss": 0.0, "adv_fixed_acc": 0}
    for start in range(0, n, batch_size):
        xb = evalset.x[start : start + batch_size]  # (B, C, H, W)
        yb = evalset.y[start : start + batch_size]
        loss, correct = _forward_metrics(model, xb, yb)
        sums["loss"] += loss
        sums["acc"] += correct
        if attack is None:
            continue
        x_adv = run_attack(model, xb, yb, attack, generator=generator)
        loss, correct = _forward_metrics(model, x_adv, yb)
        sums["adv_loss"] += loss
        sums["adv_acc"] += correct
        if x_adv_fixed is not None:
            loss, correct = _forward_metrics(model, x_adv_fixed[start : start + batch_size], yb)
            sums_fixed["adv_fixed_loss"] += loss
            sums_fixed["adv_fixed_acc"] += correct
    if attack is None:
        keys = ("loss", "acc")
    else:
        keys = ("loss", "acc", "adv_loss", "adv_acc")
    out = {f"{evalset.name}_{k}": sums[k] / n for k in keys}
    if attack is not None and x_adv_fixed is not None:
        out.update({f"{evalset.name}_{k}": v / n for k, v in sums_fixed.items()})
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
    generator = torch.Generator().manual_seed(seed)
    parts = [
        run_attack(
            model,
            evalset.x[s : s + batch_size],
            evalset.y[s : s + batch_size],
            attack,
            generator=generator,
        )
        for s in range(0, len(evalset.y), batch_size)
    ]
    return torch.cat(parts)


PointFn = Callable[[int], dict[str, float]]


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
) -> Iterator[PointFn]:
    """Set up a landscape evaluation; yields ``evaluate(index) -> metrics`` for grid points.

    On entry theta0 is stored for every tensor a direction moves (and the BatchNorm buffers
    when ``bn="recompute"``), and the fixed-mode examples are crafted at theta0. Each call
    writes theta0 + sum c_i d_i (the grid's coefficients) and measures the point; the result
    of a point depends only on its index, never on which points were evaluated before, so
    points can be split across processes and resumed. On exit theta0 is restored bit for bit.

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

    Yields:
        ``evaluate(index)`` returning {metric name: value} for that point.
    """
    _choice(bn, BN_MODES, "bn")
    if len(directions) != grid.n_directions:
        raise ValueError(
            f"a {grid.kind} grid with {grid.rows} rows needs {grid.n_directions} directions, "
            f"got {len(directions)}"
        )
    if bn == "recompute" and (bn_x is None or len(bn_x) < 2):
        raise ValueError("bn='recompute' needs bn_x with at least 2 training images")
    if fixed and attack is None:
        raise ValueError("the fixed mode reuses adversarial examples: it needs an attack")
    names = sorted({n for d in directions for n in d})
    for d in directions:
        check_direction(d, model)
    state = _model_state(model)
    dirs = [
        {n: t.detach().to(device=state[n].device, dtype=state[n].dtype) for n, t in d.items()}
        for d in directions
    ]
    tensors = {n: state[n] for n in names}
    # BatchNorm recomputation overwrites the buffers at every point: store them too.
    extra = _bn_buffers(model) if bn == "recompute" else []
    anchor = names + [b for b in extra if b not in names]
    # Buffers that move with the grid (an interpolation's "all state"): extrapolated running
    # variances can turn negative, and BatchNorm then gives NaN.
    variances = [n for n in names if n.endswith("running_var")]
    with anchored(model, anchor) as theta0:
        fixed_adv: dict[str, torch.Tensor] = {}
        if fixed and attack is not None:
            for es in evalsets:
                fixed_adv[es.name] = craft_fixed(
                    model,
                    es,
                    attack=attack,
                    seed=fixed_seed(attack_seed, es.name),
                    batch_size=batch_size,
                )

        def evaluate(index: int) -> dict[str, float]:
            set_point(tensors, theta0, dirs, grid.coefficients(index))
            if bn == "eval" and variances:
                _warn_negative_variances(tensors, variances, grid.coefficients(index))
            if bn == "recompute":
                assert bn_x is not None
                recompute_bn_stats(model, bn_x, batch_size=batch_size)
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
                    )
                )
            return metrics

        yield evaluate


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
    attack: AttackConfig | None = None,
    attack_seed: int = 0,
    fixed: bool = False,
    bn: str = "eval",
    bn_x: torch.Tensor | None = None,
    batch_size: int = 256,
    indices: Sequence[int] | None = None,
    on_point: Callable[[int, dict[str, float]], None] | None = None,
) -> SurfaceValues:
    """Evaluate a landscape (all points, or ``indices``) and return its arrays.

    Args: as :func:`surface_evaluator`, plus
        indices: flat point indices to evaluate (default all, in order).
        on_point: called with (index, metrics) after each point (progress, saving).

    Returns:
        :class:`SurfaceValues`; the model is back at theta0 bit for bit.
    """
    splits = [es.name for es in evalsets]
    names = metric_names(splits, attack=attack is not None, fixed=fixed)
    values = {n: np.full(grid.shape, np.nan) for n in names}
    computed = np.zeros(grid.shape, dtype=bool)
    todo = range(grid.n_points) if indices is None else indices
    with surface_evaluator(
        model,
        directions,
        grid,
        evalsets,
        attack=attack,
        attack_seed=attack_seed,
        fixed=fixed,
        bn=bn,
        bn_x=bn_x,
        batch_size=batch_size,
    ) as evaluate:
        for index in todo:
            metrics = evaluate(index)
            cell = grid.cell(index)
            for k, v in metrics.items():
                values[k][cell] = v
            computed[cell] = True
            if on_point is not None:
                on_point(index, metrics)
    return SurfaceValues(grid, values, computed)
