"""What a landscape run computes (:class:`SurfaceConfig`), saved in every result file."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from awp.config import (
    BN_MODES,
    PARAM_SETS,
    PGD10_EVAL,
    AttackConfig,
    check_bounds,
    check_choice,
    opt,
    to_dict,
)
from landscape.grid import (
    DEFAULT_INTERP_RANGE,
    DEFAULT_RANGE,
    KINDS,
    PLANES,
    Grid,
    make_grid,
    parse_range,
)

# This module imports no torch (`awp landscape --help` is built from it): the names that
# landscape.directions and landscape.curvature_map check against live here.
NORMS = ("filter", "layer", "none")  # normalizations of a random direction
INCLUDES = ("weights", "all")  # the tensors a direction covers
EIG_LOSSES = ("clean", "adv")
EIG_SPLITS = ("train", "test")
# RegularGridInterpolator's methods, with the fewest points per axis each needs (landscape.vtp).
VTP_METHODS = {"linear": 2, "cubic": 4, "quintic": 6, "pchip": 4}
DIRECTION_TYPES = ("random", "awp", "hessian")
SPLITS = ("train", "test")
# A trajectory's coordinates are in units of the farthest checkpoint's distance from the last
# one, and the first checkpoint sits at x, y <= 0 (landscape.trajectory): the path lies in
# [-1, 0] along x, mostly, and within [-1, 1] along y.
DEFAULT_TRAJECTORY_X = "-1.2:0.4:17"
DEFAULT_TRAJECTORY_Y = "-0.8:0.8:17"
# Keys that may change between a run and its resumption without changing any value.
RESUME_MUTABLE = ("device",)
# The attack's keys of configs written before it was nested.
_FLAT_ATTACK_KEYS = ("norm", "eps", "step_size", "attack_steps", "restarts", "attack_mode")


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
        "random directions (mean and spread) | interp: from the first checkpoint to the second | "
        "trajectory: the plane of the first two principal directions of a training path "
        "(checkpoints in training order, theta0 = the last; coordinates in units of the "
        "farthest checkpoint's distance)",
    )
    x: str = opt(
        "",
        "x coordinates min:max:num, write --x=-1:1:21 (default -1:1:21; interp "
        "-0.5:1.5:21; trajectory -1.2:0.4:17; for --direction awp alpha is AWP's gamma, e.g. "
        "-0.02:0.02:21; for --direction hessian alpha is relative to ||w||, e.g. "
        "-0.05:0.05:21)",
    )
    y: str = opt(
        "",
        "y coordinates of a 2d or trajectory surface, min:max:num (default -1:1:21; "
        "trajectory -0.8:0.8:17)",
    )
    n_directions: int = opt(
        5,
        "number of random directions of kind multi",
        bounds=(1, 1000),
        why="every direction is a whole curve",
    )
    seed: int = opt(
        0,
        "seed of the random directions: direction i is drawn from "
        "derive_seed(seed, 'direction', i) (before 0.1.0 this was --seed)",
        bounds=(0, None),
        flag="direction_seed",
    )
    direction: str = opt(
        "random",
        "x direction: random | awp (AWP's worst-case direction at w0, layer-normalized) | "
        "hessian (the top eigenvector v1 of the Hessian of the training loss at w0, x_adv "
        "crafted at w0 and held fixed; 2d: v1 and v2; scaled to ||d|| = ||w||)",
    )
    dir_norm: str = opt("filter", "random direction normalization: filter | layer | none")
    dir_include: str = opt(
        "weights",
        "weights (conv/linear; biases and BatchNorm get 0) | all (every parameter); for a "
        "trajectory, the tensors the PCA runs over",
    )
    orthogonalize: bool = opt(False, "make the y direction of a 2d surface orthogonal to x")
    n_test: int = opt(
        1000, "fixed seeded subset of test images (0 = no test metrics)", bounds=(0, None)
    )
    n_train: int = opt(
        1000, "fixed seeded subset of training images (0 = no train metrics)", bounds=(0, None)
    )
    subset_seed: int = opt(0, "seed of the evaluation subsets", bounds=(0, None))
    attack: AttackConfig | None = opt(
        PGD10_EVAL, "attack regenerated at every point (--attack none: clean metrics only)"
    )
    attack_seed: int = opt(
        0,
        "seed of the attacks' random starts, one stream per point (before 0.1.0 this was "
        "--attack-seed, and --seed seeded the directions: now --direction-seed)",
        bounds=(0, None),
        flag="seed",
        old=("attack_seed",),
    )
    fixed: bool = opt(
        False, "also reuse x_adv crafted once at w0 (*_adv_fixed_*: shows the underestimate)"
    )
    bn: str = opt(
        "eval",
        "BatchNorm: eval (w0's statistics; interp moves them with the weights, and beyond "
        "the end points variances can turn negative) | recompute (on training images at every "
        "point; restored afterwards)",
    )
    n_bn: int = opt(
        1000, "training images used to recompute BatchNorm statistics", bounds=(0, None)
    )
    batch_size: int = opt(256, "examples per forward pass", bounds=(1, None))
    dataset: str = opt("", "dataset (default: the one the checkpoint was trained on)")
    data_root: str = opt("", "where torchvision datasets live (default: the checkpoint's)")
    device: str = opt("auto", "auto | cpu | cuda | cuda:N (under torchrun: one GPU per rank)")

    def __post_init__(self) -> None:
        check_bounds(self)
        check_choice(self.kind, KINDS, "kind")
        check_choice(self.direction, DIRECTION_TYPES, "direction")
        check_choice(self.dir_norm, NORMS, "dir_norm")
        check_choice(self.dir_include, INCLUDES, "dir_include")
        check_choice(self.bn, BN_MODES, "bn")
        # Resolve the kind-dependent defaults now, so the saved config says what was run.
        if not self.x:
            x = {"interp": DEFAULT_INTERP_RANGE, "trajectory": DEFAULT_TRAJECTORY_X}
            object.__setattr__(self, "x", x.get(self.kind, DEFAULT_RANGE))
        if self.kind in PLANES and not self.y:
            y = DEFAULT_TRAJECTORY_Y if self.kind == "trajectory" else DEFAULT_RANGE
            object.__setattr__(self, "y", y)
        parse_range(self.x)
        if self.kind in PLANES:
            parse_range(self.y)
        elif self.y:
            raise ValueError(f"--y is only for kind 2d or trajectory (kind is {self.kind!r})")
        if self.kind == "trajectory" and (self.direction != "random" or self.orthogonalize):
            raise ValueError(
                "a trajectory's directions are the path's two principal directions (orthogonal "
                "already): drop --direction and --orthogonalize"
            )
        if self.kind == "multi" and self.n_directions < 2:
            raise ValueError(
                f"kind multi needs n_directions >= 2 (got {self.n_directions}); use kind 1d "
                "for a single direction"
            )
        if self.direction in ("awp", "hessian") and self.kind in ("multi", "interp"):
            raise ValueError(
                f"--direction {self.direction} is deterministic: use it with kind 1d or 2d, "
                f"not {self.kind}"
            )
        if self.direction == "awp" and self.n_train < 1:
            raise ValueError(
                "the AWP direction is the adversarial-loss gradient on the training subset: "
                "set --n-train > 0"
            )
        if self.direction == "hessian" and self.n_train < 1:
            raise ValueError(
                "the Hessian directions are eigenvectors of the loss on the training subset: "
                "set --n-train > 0"
            )
        if self.direction == "hessian" and self.orthogonalize:
            raise ValueError(
                "--orthogonalize: the Hessian eigenvectors v1 and v2 are orthogonal already "
                "(and renormalizing v2 per filter would make it no eigenvector); drop it"
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
        if self.attack is not None and not isinstance(self.attack, AttackConfig):
            raise ValueError(f"attack must be an AttackConfig or None, got {self.attack!r}")
        if self.fixed and self.attack is None:
            raise ValueError("--fixed reuses adversarial examples: it needs an --attack")
        for name, what in self._ignored().items():
            if getattr(self, name) != _DEFAULTS[name]:
                flag = "--" + name.replace("_", "-")
                raise ValueError(
                    f"{flag} {getattr(self, name)} has no effect on {what}: drop {flag}"
                )

    def _ignored(self) -> dict[str, str]:
        """The settings this kind and direction do not use, each with what makes them unused:
        a value other than the default would be silently ignored, so it is refused."""
        ignored = {}
        if self.kind != "multi":
            ignored["n_directions"] = f"kind {self.kind} (it is the number of kind multi's curves)"
        if self.kind in ("interp", "trajectory"):
            what = {
                "interp": "kind interp (its direction is the second checkpoint minus the first)",
                "trajectory": "a trajectory (its directions are the path's PCA)",
            }
            ignored.update(dict.fromkeys(("dir_norm", "seed"), what[self.kind]))
        elif self.direction == "hessian":  # v1 (and v2) scaled to ||d|| = ||w||
            ignored["dir_norm"] = "--direction hessian (its directions are scaled to ||d|| = ||w||)"
        elif self.direction == "awp" and self.kind == "1d":  # no random direction at all
            what = "--direction awp of kind 1d (AWP's direction is layer-normalized, not random)"
            ignored.update(dict.fromkeys(("dir_norm", "seed"), what))
        return ignored

    @staticmethod
    def migrate(data: dict[str, Any]) -> dict[str, Any]:
        """A config written before the attack was nested (``attack`` a name, its settings flat:
        ``norm``, ``eps``, ``step_size``, ``attack_steps``, ``restarts``, ``attack_mode``)."""
        if not isinstance(data.get("attack"), str):
            return data
        name = data.pop("attack")
        flat = {k: data.pop(k) for k in _FLAT_ATTACK_KEYS if k in data}
        if name == "none":
            data["attack"] = None
            return data
        renamed = {"attack_steps": "steps", "attack_mode": "mode"}
        attack = {renamed.get(k, k): v for k, v in flat.items()}
        attack.update(name=name, random_start="none" if name == "fgsm" else "uniform")
        data["attack"] = attack
        return data

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
            parse_range(self.y) if self.kind in PLANES else None,
            n_directions=self.n_directions if self.kind == "multi" else 1,
        )

    def to_json(self) -> str:
        """Canonical JSON (sorted keys), as stored in the result file."""
        return json.dumps(to_dict(self), sort_keys=True)


# The defaults a setting keeps when a kind or direction does not use it (SurfaceConfig._ignored).
_DEFAULTS = {
    f.name: f.default
    for f in dataclasses.fields(SurfaceConfig)
    if f.name in ("n_directions", "dir_norm", "seed")
}


@dataclass(frozen=True)
class EigenMapConfig:
    """Whether and how ``awp landscape`` maps the extreme Hessian eigenvalues on its grid."""

    hessian_eigs: bool = opt(
        False,
        "also the largest and smallest Hessian eigenvalues at every grid point (max_eig, "
        "min_eig: loss-landscape's names) and the |min_eig / max_eig| map",
    )
    eig_loss: str = opt(
        "clean",
        "loss of the eigenvalues: clean | adv (x_adv crafted on the model at the point by "
        "--attack, then held fixed)",
    )
    eig_split: str = opt("train", "evaluation set of the eigenvalues: train | test")
    eig_examples: int = opt(
        128,
        "the first N images of that set (0 = all of it; more than the set is capped to it)",
        bounds=(0, None),
    )
    eig_tol: float = opt(1e-3, "relative accuracy of each eigenvalue", bounds=(0, 1))
    eig_params: str = opt("weights", "Hessian coordinates: weights (conv+linear) | all")

    def __post_init__(self) -> None:
        check_bounds(self)
        check_choice(self.eig_loss, EIG_LOSSES, "eig_loss")
        check_choice(self.eig_split, EIG_SPLITS, "eig_split")
        check_choice(self.eig_params, PARAM_SETS, "eig_params")
        if not 0 < self.eig_tol < 1:
            raise ValueError(f"eig_tol={self.eig_tol} must be strictly between 0 and 1")

    def check_surface(self, surface: SurfaceConfig) -> None:
        """Refuse a curvature map the surface's settings cannot give (before anything is
        computed: the map is computed after the whole surface).

        Raises:
            ValueError: its split has no images (``--n-train 0`` / ``--n-test 0``), or the
                adversarial loss without an attack.
        """
        if not self.hessian_eigs:
            return
        sizes = {"train": surface.n_train, "test": surface.n_test}
        if sizes[self.eig_split] == 0:
            raise ValueError(
                f"--hessian-eigs on --eig-split {self.eig_split} needs {self.eig_split} images, "
                f"but --n-{self.eig_split} is 0: set --n-{self.eig_split} (e.g. 128), or "
                f"--eig-split {'test' if self.eig_split == 'train' else 'train'}"
            )
        if self.eig_loss == "adv" and surface.attack is None:
            raise ValueError(
                "--eig-loss adv crafts x_adv with --attack, but --attack is none: give an "
                "attack, or --eig-loss clean"
            )
