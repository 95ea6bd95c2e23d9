"""The settings of the analyses that the commands build their flags from: :class:`GapConfig`,
:class:`FlatnessConfig`, :class:`WorstCaseConfig`, :class:`AdaptiveSharpnessConfig`,
:class:`PacBayesConfig`, :class:`SpectraConfig`, :class:`ConnectConfig`,
:class:`HessianConfig` and :class:`CertifyConfig`, with the names and bounds they check against.

This module imports no torch (``awp CMD --help`` is built from it); the modules that compute
with them (:mod:`analysis.gap`, :mod:`analysis.flatness`, ...) re-export them.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from awp.config import (
    BN_MODES,
    HVP_METHODS,
    MODES,
    PARAM_SETS,
    PGD10_EVAL,
    PGD20_EVAL,
    SCHEDULES,
    AttackConfig,
    bounds_of,
    check_bounds,
    check_choice,
    opt,
)
from awp.train_config import TrainConfig

if TYPE_CHECKING:
    import torch

SPLITS = ("train", "test")  # the splits flatness and hessian measure
NOISE_MODES = ("global", "layer", "filter", "element")  # scales of flatness' noise
CURVE_OBJECTIVES = ("robust", "clean")  # what connect's curve is trained on
# adaptive sharpness: its kinds, the norms of its worst-case ball, the losses it measures
SHARPNESS_KINDS = ("worst", "average")
SHARPNESS_NORMS = ("2", "inf")
SHARPNESS_LOSSES = ("robust", "clean")
# hessian's losses and dtypes
LOSSES = ("adv", "clean")
DTYPES = ("float32", "float64")
# Upper bounds of hessian's sizes that set time and memory (the problem's own bound, the number
# of coordinates p, is checked when the model is known: HessianConfig.check_sizes).
MAX_EIGENPAIRS, MAX_PRODUCTS = 1000, 100_000
EIG_WHY = (
    "ARPACK keeps max(2k+1, ncv) vectors of p numbers and restarts over them; PyHessian's "
    "top-k is a handful"
)
HVP_WHY = "each one is a Hessian-vector product over the whole subset"
#: Samples per independently seeded noise chunk of certify (part of the noise's definition:
#: changing it changes every draw, so stores record it).
NOISE_CHUNK = 100
# Upper bounds of certify's sample counts: every sample is a forward pass per image and sigma.
MAX_SAMPLES = 10_000_000
MAX_PATH_POINTS = 1001  # connect's points on a path in [0, 1]: a typo guard, as a grid axis's
N_WHY = (
    "every sample is one forward pass per image and sigma (Cohen et al. use n = 100,000 and "
    "n0 = 100)"
)
SD_WHY = (
    "standard deviations are in [0,1] pixel units, so values above 4 drown the image (Cohen et "
    "al. use 0.12, 0.25, 0.5, 1.0; 25 pixel levels are 25/255)"
)
log = logging.getLogger("analysis.curvature")  # HessianConfig's warnings, where it is used


@dataclass(frozen=True)
class GapConfig:
    """Subsets, attack and seeds of a robust-gap measurement."""

    n_train: int = opt(
        1000,
        "fixed seeded train subset size (0 = the whole train split; more is capped to it)",
        bounds=(0, None),
    )
    n_test: int = opt(
        1000,
        "fixed seeded test subset size (0 = the whole test split; more is capped to it)",
        bounds=(0, None),
    )
    subset_seed: int = opt(0, "seed choosing both subsets", bounds=(0, None))
    seed: int = opt(0, "seed of the attack's random start", bounds=(0, None))
    batch_size: int = opt(256, "examples per forward pass", bounds=(1, None))
    attack: AttackConfig = opt(PGD20_EVAL, "attack used on both splits")

    def __post_init__(self) -> None:
        check_bounds(self)
        if self.n_train < 0 or self.n_test < 0:
            raise ValueError(
                f"need n_train, n_test >= 0 (0 = whole split), got {self.n_train}, {self.n_test}"
            )
        if self.batch_size < 1:
            raise ValueError(f"batch_size={self.batch_size} must be >= 1")


@dataclass(frozen=True)
class FlatnessConfig:
    """Expected flatness: noise, Monte Carlo, data subset and the attack regenerated on w+u."""

    noise: str = opt(
        "layer",
        "noise scale: global (sigma = alpha ||w||, the rebuttal's) | layer (||u_l|| ~ alpha "
        "||w_l||) | filter (per output filter) | element (sigma_i = alpha |w_i|)",
    )
    alphas: tuple[float, ...] = opt(
        (0.05, 0.1, 0.2), "relative noise scales alpha (a curve)", bounds=(0, 1)
    )
    params: str = opt("weights", "perturbed tensors: weights (conv+linear, as AWP) | all")
    samples: int = opt(
        10,
        "M: noise draws per alpha",
        bounds=(1, 100_000),
        why="every draw attacks every example on its own perturbed model",
    )
    per_example: bool = opt(False, "a fresh u per example (exact Clopper-Pearson interval)")
    confidence: float = opt(0.95, "confidence level of the intervals", bounds=(0, 1))
    split: str = opt("train", "data split measured: train | test")
    n_examples: int = opt(
        1000,
        "size of the fixed seeded subset (0 = the whole split; more is capped to it)",
        bounds=(0, None),
    )
    subset_seed: int = opt(0, "seed choosing the subset", bounds=(0, None))
    seed: int = opt(
        0, "seed of the noise draws and of the attacks' random starts", bounds=(0, None)
    )
    batch_size: int = opt(256, "examples per forward pass", bounds=(1, None))
    attack: AttackConfig | None = opt(
        PGD20_EVAL,
        "attack regenerated on every perturbed model (--attack none: the clean loss and 0-1 error)",
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "alphas", tuple(float(a) for a in self.alphas))
        if any(a == 0 for a in self.alphas):  # said before the range: what 0 means
            raise ValueError(
                f"alphas={self.alphas}: alpha = 0 is no noise: its flatness is 0 by definition "
                "and its PAC-Bayes KL infinite; give noise scales > 0"
            )
        if max(self.alphas, default=0) > 1:
            raise ValueError(
                f"alphas={self.alphas}: alpha is the noise relative to the weights (0.05 = 5%); "
                f"above 1 the noise outweighs the weights. Did you mean {max(self.alphas) / 100:g}?"
            )
        check_bounds(self)
        if self.noise not in NOISE_MODES:
            raise ValueError(f"unknown noise mode {self.noise!r}; choose one of {NOISE_MODES}")
        if self.params not in PARAM_SETS:
            raise ValueError(f"unknown parameter set {self.params!r}; choose one of {PARAM_SETS}")
        if self.split not in SPLITS:
            raise ValueError(f"unknown split {self.split!r}; choose one of {SPLITS}")
        object.__setattr__(self, "alphas", tuple(float(a) for a in self.alphas))
        if not self.alphas or any(not math.isfinite(a) or a <= 0 for a in self.alphas):
            raise ValueError(
                f"alphas={self.alphas}: give one or more noise scales > 0 (alpha = 0 is no "
                "noise: its flatness is 0 by definition and its PAC-Bayes KL infinite)"
            )
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

    gammas: tuple[float, ...] = opt(
        (0.005, 0.01), "relative radii: ||v_l|| <= gamma*||w_l||", bounds=(0, 1)
    )
    ascent_steps: int = opt(
        5,
        "projected ascent steps on v (x_adv regenerated every step)",
        bounds=(1, 10_000),
        why="every step regenerates x_adv on every example",
    )
    step_fraction: float = opt(0.5, "ascent step as a fraction of gamma*||w_l||", bounds=(0, 1))
    ascent_restarts: int = opt(
        1,
        "restarts (the first from v=0, the others random in the ball)",
        bounds=(1, 1000),
        why="every restart repeats the whole ascent",
    )
    per_batch: bool = opt(False, "one v per batch instead of one v for the whole subset")

    def __post_init__(self) -> None:
        object.__setattr__(self, "gammas", tuple(float(g) for g in self.gammas))
        check_bounds(self)
        if not self.gammas or any(not 0 < g < 1 for g in self.gammas):
            raise ValueError(
                f"gammas={self.gammas}: give one or more relative radii in (0, 1) (gamma = 0 is "
                "no perturbation: its worst-case flatness is 0 by definition)"
            )
        if len(set(self.gammas)) != len(self.gammas):
            raise ValueError(f"gammas={self.gammas} has repeated values")
        if self.ascent_steps < 1 or self.ascent_restarts < 1:
            raise ValueError("need ascent_steps >= 1 and ascent_restarts >= 1")
        if not 0 < self.step_fraction <= 1:
            raise ValueError(f"step_fraction={self.step_fraction} must be in (0, 1]")


@dataclass(frozen=True)
class AdaptiveSharpnessConfig:
    """Adaptive sharpness (Andriushchenko et al., ICML 2023): kinds, radii, ball, batches, attack.

    With T_w = |w| elementwise, the worst case is max over ||T_w^-1 d||_p <= rho of
    L_B(w + d) - L_B(w) and the average case E_{d ~ N(0, rho^2 diag(T_w^2))} of the same, both
    averaged over batches B of m examples (:mod:`analysis.adaptive_sharpness`).
    """

    kinds: tuple[str, ...] = opt(
        SHARPNESS_KINDS,
        "worst (max over the ball, by projected ascent per batch) | average (Gaussian d ~ "
        "N(0, rho^2 diag(T_w^2)))",
    )
    rho_worst: tuple[float, ...] = opt(
        (0.002,),
        "radii of the worst case, ||d / T_w||_p <= rho (the paper's CIFAR-10 ResNet grid: "
        "0.001-0.008 at p = inf, 0.25-2 at p = 2)",
        bounds=(0, None),
    )
    rho_average: tuple[float, ...] = opt(
        (0.1,),
        "radii of the average case, d ~ N(0, rho^2 diag(T_w^2)) (the paper's CIFAR-10 ResNet "
        "grid: 0.05-0.4)",
        bounds=(0, None),
    )
    p: str = opt("inf", "norm of the worst case's ball: inf | 2")
    adaptive: bool = opt(
        True,
        "T_w = |w| elementwise (invariant to rescaling layers); --no-adaptive: T_w = 1, plain "
        "sharpness, for comparison",
    )
    m: int = opt(
        128,
        "examples per batch B (m-sharpness: the worst case is taken per batch, then averaged)",
        bounds=(1, 100_000),
        why="the m examples of a batch go through one forward and backward pass together",
    )
    fit_m: bool = opt(
        False,
        "a split with fewer than m examples is measured as one batch of all of them (m lowered "
        "to their number, with a warning) instead of refused: the demo's and the sweep's runs "
        "on a small dataset",
        cli=False,
    )
    n_examples: int = opt(
        1024,
        "size of the fixed seeded subset, a multiple of m (more than the split is capped to it)",
        bounds=(1, None),
    )
    steps: int = opt(
        20,
        "ascent steps of the worst case per batch (x_adv regenerated at every step)",
        bounds=(1, 10_000),
        why="every step attacks the batch and is a forward and backward pass",
    )
    step_mult: float = opt(
        1.0,
        "the ascent's first step is 2 * rho * step_mult, halved at Auto-PGD's checkpoints",
        bounds=(0, 10),
    )
    draws: int = opt(
        20,
        "Gaussian draws of d per batch (average case)",
        bounds=(1, 100_000),
        why="every draw attacks the batch on its own perturbed model",
    )
    losses: tuple[str, ...] = opt(
        (),
        "losses measured: robust (x_adv regenerated at w + d) | clean (default: both with an "
        "attack, clean alone with --attack none)",
    )
    params: str = opt(
        "all",
        "perturbed tensors: all (every parameter, biases and BatchNorm's too, as the paper) | "
        "weights (conv and linear weights, as AWP)",
    )
    bn: str = opt(
        "eval",
        "BatchNorm while the loss is computed: eval (w's running statistics) | train (each "
        "batch's own statistics; the running ones never move)",
    )
    split: str = opt("train", "data split measured: train | test")
    subset_seed: int = opt(0, "seed choosing the subset", bounds=(0, None))
    seed: int = opt(
        0,
        "seed of the Gaussian draws and of the attacks' random starts",
        bounds=(0, None),
    )
    confidence: float = opt(0.95, "confidence level of the t intervals over batches", bounds=(0, 1))
    attack: AttackConfig | None = opt(
        PGD10_EVAL,
        "attack regenerated at every perturbed point and ascent step (--attack none: the "
        "clean loss only)",
    )

    def __post_init__(self) -> None:
        for name in ("rho_worst", "rho_average"):
            rhos = tuple(float(r) for r in getattr(self, name))
            object.__setattr__(self, name, rhos)
            if any(not r > 0 for r in rhos):  # said before the range: what rho = 0 means
                raise ValueError(
                    f"{name}={rhos}: give radii > 0 (--{name.replace('_', '-')}); rho = 0 is no "
                    "perturbation, its sharpness 0 by definition"
                )
        object.__setattr__(self, "p", _norm_name(self.p))
        object.__setattr__(self, "kinds", tuple(self.kinds))
        check_bounds(self)
        check_choice(self.p, SHARPNESS_NORMS, "norm p of the worst case (--p)")
        check_choice(self.params, PARAM_SETS, "parameter set")
        check_choice(self.bn, MODES, "BatchNorm mode (--bn)")
        check_choice(self.split, SPLITS, "split")
        if not self.kinds or len(set(self.kinds)) != len(self.kinds):
            raise ValueError(f"kinds={self.kinds}: give worst, average or both, once each")
        for kind in self.kinds:
            check_choice(kind, SHARPNESS_KINDS, "sharpness kind (--kinds)")
        for name in ("rho_worst", "rho_average"):
            if len(set(getattr(self, name))) != len(getattr(self, name)):
                raise ValueError(f"{name}={getattr(self, name)} repeats a value")
        if self.attack is not None and not isinstance(self.attack, AttackConfig):
            raise ValueError(f"attack must be an AttackConfig or None, got {self.attack!r}")
        object.__setattr__(self, "losses", tuple(self.losses))
        losses = self.resolved_losses
        for loss in losses:
            check_choice(loss, SHARPNESS_LOSSES, "loss (--losses)")
        if len(set(losses)) != len(losses):
            raise ValueError(f"losses={losses} repeats a value")
        if "robust" in losses and self.attack is None:
            raise ValueError(
                "the robust loss needs an attack: give --attack, or --losses clean for the "
                "clean loss alone"
            )
        if not self.step_mult > 0:
            raise ValueError(f"step_mult={self.step_mult} must be > 0 (1 is the paper's)")
        if not 0 < self.confidence < 1:
            raise ValueError(f"confidence={self.confidence} must be in (0, 1), e.g. 0.95")
        self.batches_of(self.n_examples, what="n_examples")
        if self.n_examples % self.m:
            below = self.n_examples // self.m * self.m
            raise ValueError(
                f"n_examples={self.n_examples} is not a multiple of m={self.m} (m-sharpness "
                f"averages over whole batches of m): use --n-examples {below} or "
                f"{below + self.m}, or another --m"
            )

    @property
    def resolved_losses(self) -> tuple[str, ...]:
        """The losses measured: ``losses``, or when empty robust and clean with an attack, clean
        alone without one (kept unresolved in the field, so replacing the attack re-decides)."""
        return self.losses or (("robust", "clean") if self.attack is not None else ("clean",))

    def batches_of(self, n: int, *, what: str = "the data") -> int:
        """The number of whole batches of m examples among ``n`` examples.

        Raises:
            ValueError: m is larger than ``n``, naming --m and ``what`` (where the examples are).
        """
        if self.m > n:
            raise ValueError(
                f"m={self.m} is larger than {what} ({n} examples): a batch B of m-sharpness "
                f"needs m examples; give --m {n} or less, or more examples"
            )
        return n // self.m

    def rhos(self, kind: str) -> tuple[float, ...]:
        """The radii of ``kind`` (worst or average)."""
        check_choice(kind, SHARPNESS_KINDS, "sharpness kind")
        return self.rho_worst if kind == "worst" else self.rho_average

    def store_settings(self, loss_name: str = "cross_entropy") -> dict[str, Any]:
        """The settings every unit's record depends on (a unit store's meta); radii, kinds,
        losses, p, steps, step_mult and draws are in the unit keys (:data:`SHARPNESS_MUTABLE`).

        Args:
            loss_name: names the loss function (a custom callable's name), which changes every
                record.
        """
        attack = None if self.attack is None else dataclasses.asdict(self.attack)
        return {
            "adaptive": self.adaptive,
            "m": self.m,
            "n_examples": self.n_examples,
            "params": self.params,
            "bn": self.bn,
            "split": self.split,
            "subset_seed": self.subset_seed,
            "seed": self.seed,
            "attack": attack,
            "loss_fn": loss_name,
        }


#: Settings of :class:`AdaptiveSharpnessConfig` that only add units or change the summary:
#: a store computed with other values of these is continued, never refused.
SHARPNESS_MUTABLE = (
    "kinds",
    "rho_worst",
    "rho_average",
    "p",
    "steps",
    "step_mult",
    "draws",
    "losses",
    "confidence",
)


def _norm_name(p: object) -> str:
    """``2``, ``2.0``, ``"2"`` -> ``"2"``; ``inf``, ``"inf"``, ``"linf"`` -> ``"inf"``; other
    values are returned as text (and refused by the caller's choice check)."""
    text = str(p).strip().lower()
    if text in ("2", "2.0", "l2"):
        return "2"
    if text in ("inf", "linf", "infinity"):
        return "inf"
    return text


@dataclass(frozen=True)
class PacBayesConfig:
    """The bound's confidence and training-set size."""

    delta: float = opt(0.05, "the bound holds with probability 1 - delta", bounds=(0, 1))
    n_bound: int = opt(
        0, "training examples n in the bound (0 = size of the train split)", bounds=(0, None)
    )

    def __post_init__(self) -> None:
        check_bounds(self)
        if not 0 < self.delta < 1:
            raise ValueError(f"delta={self.delta} must be in (0, 1), e.g. 0.05")
        if self.n_bound < 0:
            raise ValueError(f"n_bound={self.n_bound} must be >= 0 (0 = the train split size)")


@dataclass(frozen=True)
class SpectraConfig:
    """What ``awp spectra`` measures per layer."""

    layers: tuple[str, ...] = opt(
        ("weights",),
        "layers measured (conv and linear weights; selectors of awp hist --layers: weights | "
        "conv | linear | last-conv | names | glob patterns)",
    )
    esd_layer: str = opt("last-conv", "layer whose eigenvalue density is drawn and stored")
    image_size: int = opt(
        32,
        "input image size; gives each conv's input size in the network",
        bounds=(1, 2048),
        why="one probe image goes through the network, whose activations grow as image_size^2 "
        "(2048 x 2048 already holds about 1 GB per 64 channels)",
    )
    fft_size: int = opt(
        0,
        "input size n of the FFT operator norms: 0 = each conv's own input size in the network "
        "(for an --image-size image); else n x n for every conv",
        bounds=(0, 1024),
        why="the FFT of a conv holds c_out x c_in x n^2 complex numbers (a 512-channel conv at "
        "n = 1024 is 2 TB)",
    )
    min_tail: int = opt(
        10, "fewest eigenvalues in the power-law tail (the KS search's limit)", bounds=(2, None)
    )
    power_iterations: int = opt(
        50,
        "power iterations on each zero-padded conv itself: a lower bound of the norm the network "
        "applies (0 = skip)",
        bounds=(0, 100_000),
        why="each iteration is two convolutions of the layer",
    )

    def __post_init__(self) -> None:
        check_bounds(self)
        if not self.layers:
            raise ValueError("no layer selector given; use e.g. --layers weights")
        if self.image_size < 1 or self.fft_size < 0:
            raise ValueError(
                f"image_size={self.image_size} must be >= 1 and fft_size={self.fft_size} >= 0"
            )
        if self.min_tail < 2:
            raise ValueError(f"min_tail={self.min_tail} must be >= 2")
        if self.power_iterations < 0:
            raise ValueError(f"power_iterations={self.power_iterations} must be >= 0")


@dataclass(frozen=True)
class ConnectConfig:
    """What ``awp connect`` trains and measures."""

    points: int = opt(
        11,
        "evaluated points t on each path, evenly spaced in [0, 1]",
        bounds=(2, MAX_PATH_POINTS),
        why="every point re-estimates BatchNorm and attacks every image on its own model",
    )
    curve: bool = opt(True, "also train the Bezier curve's middle point and evaluate the curve")
    objective: str = opt(
        "robust",
        "curve training objective: robust (PGD crafted on the model at the curve's point, "
        "AT's loss) | clean",
    )
    epochs: int = opt(10, "epochs of curve training", bounds=(0, 100_000))
    batch_size: int = opt(128, "minibatch size of curve training", bounds=(1, None))
    lr: float = opt(0.05, "peak learning rate of the middle point", **bounds_of(TrainConfig, "lr"))
    schedule: str = opt("cosine", "learning-rate schedule: piecewise | cosine | constant")
    momentum: float = opt(0.9, "SGD momentum", **bounds_of(TrainConfig, "momentum"))
    weight_decay: float = opt(
        5e-4, "SGD weight decay of the middle point", **bounds_of(TrainConfig, "weight_decay")
    )
    augment: bool = opt(True, "random crop (4 px reflect pad) and flip of training images")
    train_steps: int = opt(
        10, "PGD steps of the robust training objective", **bounds_of(TrainConfig, "attack_steps")
    )
    train_step_size: float = opt(
        2 / 255,
        "PGD step size of the robust training objective",
        **bounds_of(TrainConfig, "step_size"),
    )
    n_fit: int = opt(
        0, "training images the curve is trained on (0 = the whole split)", bounds=(0, None)
    )
    n_test: int = opt(
        1000, "fixed seeded test subset evaluated on every path (0 = none)", bounds=(0, None)
    )
    n_train: int = opt(
        0, "fixed seeded train subset evaluated on every path (0 = none)", bounds=(0, None)
    )
    n_bn: int = opt(
        1000,
        "training images re-estimating BatchNorm statistics at every point",
        bounds=(2, None),
    )
    subset_seed: int = opt(0, "seed of the subsets", bounds=(0, None))
    seed: int = opt(
        0, "seed of the order, the t draws, augmentation and the attacks", bounds=(0, None)
    )
    eval_batch_size: int = opt(256, "examples per forward pass of the evaluation", bounds=(1, None))
    attack: AttackConfig = opt(PGD20_EVAL, "attack regenerated on every model on the paths")

    def __post_init__(self) -> None:
        check_bounds(self)
        check_choice(self.objective, CURVE_OBJECTIVES, "objective")
        check_choice(self.schedule, SCHEDULES, "schedule")
        if not self.n_test and not self.n_train:
            raise ValueError("nothing to evaluate: set --n-test or --n-train > 0")

    @property
    def ts(self) -> list[float]:
        import numpy as np  # here: the module imports only the standard library

        return [float(t) for t in np.linspace(0.0, 1.0, self.points)]

    @property
    def train_attack(self) -> AttackConfig | None:
        """PGD on the curve's point (the robust objective), or None (the clean one)."""
        if self.objective == "clean":
            return None
        return self.attack.updated(
            name="pgd", steps=self.train_steps, step_size=self.train_step_size, mode="train"
        )


@dataclass(frozen=True)
class HessianConfig:
    """What ``awp hessian`` measures: the loss, its data, the estimators and their sizes."""

    loss: str = opt(
        "adv",
        "loss: adv (x_adv crafted at w by the attack and held fixed: the robust loss's "
        "gradient by Danskin, not its full curvature) | clean",
    )
    split: str = opt("train", "data split measured: train | test")
    n_examples: int = opt(
        1000,
        "size of the fixed seeded subset (0 = the whole split; more than the split is capped to "
        "it)",
        bounds=(0, None),
    )
    subset_seed: int = opt(0, "seed choosing the subset", bounds=(0, None))
    seed: int = opt(
        0,
        "seed of the probes, the Lanczos starts and the attacks' random starts",
        bounds=(0, None),
    )
    batch_size: int = opt(
        128, "examples per batch of every Hessian-vector product", bounds=(1, None)
    )
    params: str = opt("weights", "Hessian coordinates: weights (conv+linear, as AWP) | all")
    dtype: str = opt("float32", "precision of the products: float32 | float64")
    method: str = opt(
        "auto",
        "Hessian-vector product: auto (graph when the graphs fit in half the available "
        "memory, else jvp) | graph (double backward through gradient graphs kept in memory, one "
        "per batch: fastest) | jvp (forward-over-reverse) | double (double backward)",
    )
    top_k: int = opt(
        5,
        "top eigenvalues by Lanczos (0 = none; fewer than the number of coordinates p)",
        bounds=(0, MAX_EIGENPAIRS),
        why=EIG_WHY,
    )
    eig_tol: float = opt(
        1e-4,
        "relative accuracy of the eigenvalues (Lanczos stops at the first product that meets "
        "it; ARPACK's tol beyond)",
        bounds=(0, 1),
    )
    lanczos_vectors: int = opt(
        0,
        "Lanczos vectors (ncv): the most products before ARPACK's restarts take over, and the "
        "vectors ARPACK keeps between restarts (0 = scipy's max(2k+1, 20)); at most the number "
        "of coordinates p",
        bounds=(0, 2 * MAX_EIGENPAIRS + 1),
        why=EIG_WHY,
    )
    trace: bool = opt(False, "Hutchinson trace, and the trace of every layer's diagonal block")
    probes_min: int = opt(
        10,
        "Hutchinson probes before the stopping rule is checked (a block)",
        bounds=(2, MAX_PRODUCTS),
        why=HVP_WHY,
    )
    probes_max: int = opt(100, "most Hutchinson probes", bounds=(2, MAX_PRODUCTS), why=HVP_WHY)
    trace_rel_tol: float = opt(
        0.05,
        "stop adding probes once the interval's half-width is <= this fraction of |trace|",
        bounds=(0, None),
    )
    density: bool = opt(False, "eigenvalue density by stochastic Lanczos quadrature")
    slq_runs: int = opt(
        3,
        "SLQ runs (Rademacher starts) averaged in the density",
        bounds=(1, MAX_PRODUCTS),
        why=HVP_WHY,
    )
    slq_steps: int = opt(
        50,
        "Lanczos steps per SLQ run",
        bounds=(2, MAX_EIGENPAIRS),
        why="each step is a Hessian-vector product and keeps a vector of p numbers",
    )
    slq_sigma: float = opt(
        0.01,
        "Gaussian broadening of the density, as a fraction of the eigenvalues' span",
        bounds=(0, None),
    )
    per_layer: bool = opt(
        False, "top eigenvalue of every layer's diagonal block (one Lanczos each)"
    )
    power: bool = opt(
        False,
        "also PyHessian's power iteration for the top-k (tol 1e-3, at most 100 products per "
        "eigenvalue), to compare values and products with Lanczos",
    )
    confidence: float = opt(0.95, "confidence level of the trace intervals", bounds=(0, 1))
    attack: AttackConfig = opt(PGD20_EVAL, "attack crafting x_adv at w (--loss adv)")

    def __post_init__(self) -> None:
        check_bounds(self)
        check_choice(self.loss, LOSSES, "loss")
        check_choice(self.split, SPLITS, "split")
        check_choice(self.params, PARAM_SETS, "parameter set")
        check_choice(self.dtype, DTYPES, "dtype")
        check_choice(self.method, HVP_METHODS, "HVP method")
        if self.n_examples < 0 or self.batch_size < 1:
            raise ValueError(
                f"need n_examples >= 0 and batch_size >= 1, got {self.n_examples}, "
                f"{self.batch_size}"
            )
        if self.lanczos_vectors and self.lanczos_vectors <= max(self.top_k, 1) + 1:
            raise ValueError(
                f"lanczos_vectors={self.lanczos_vectors} must exceed top_k + 1 "
                f"({self.top_k + 1}); or 0 for scipy's default"
            )
        if self.top_k < 0 or not 0 <= self.eig_tol < 1:
            raise ValueError(
                f"need top_k >= 0 and 0 <= eig_tol < 1, got {self.top_k}, {self.eig_tol}"
            )
        if not 2 <= self.probes_min <= self.probes_max:
            raise ValueError(
                f"need 2 <= probes_min <= probes_max (an interval needs 2 probes), got "
                f"{self.probes_min}, {self.probes_max}"
            )
        if not self.trace_rel_tol > 0:
            raise ValueError(f"trace_rel_tol={self.trace_rel_tol} must be > 0, e.g. 0.05")
        if self.slq_runs < 1 or self.slq_steps < 2 or not self.slq_sigma > 0:
            raise ValueError(
                f"need slq_runs >= 1, slq_steps >= 2 and slq_sigma > 0, got {self.slq_runs}, "
                f"{self.slq_steps}, {self.slq_sigma}"
            )
        if not 0 < self.confidence < 1:
            raise ValueError(f"confidence={self.confidence} must be in (0, 1), e.g. 0.95")
        if self.power and not self.top_k:
            raise ValueError("--power compares with the top-k eigenvalues: set --top-k > 0")
        if not (self.top_k or self.trace or self.density or self.per_layer):
            raise ValueError(
                "nothing to measure: ask for --top-k > 0, --trace, --density or --per-layer"
            )

    @property
    def torch_dtype(self) -> torch.dtype:
        import torch  # here: this module imports no torch

        return torch.float64 if self.dtype == "float64" else torch.float32

    def check_sizes(self, p: int) -> None:
        """Refuse an eigen-solve larger than the problem: ARPACK finds k < p eigenpairs with at
        most p Lanczos vectors, ``p`` being the number of Hessian coordinates.

        Raises:
            ValueError: naming the flag, its value and p.
        """
        if self.top_k >= p:
            raise ValueError(
                f"top_k={self.top_k} needs fewer eigenpairs than the {p:,} Hessian coordinates "
                f"(--top-k {max(p - 1, 0)} at most; a handful is usual)"
            )
        if self.lanczos_vectors > p:
            raise ValueError(
                f"lanczos_vectors={self.lanczos_vectors} is more than the {p:,} Hessian "
                f"coordinates (--lanczos-vectors {p} at most, or 0 for scipy's default)"
            )
        # ARPACK keeps ncv vectors: --lanczos-vectors, else scipy's default max(2k + 1, 20)
        ncv = self.lanczos_vectors or max(2 * self.top_k + 1, 20)
        vectors = ncv if self.top_k else 0
        gib = max(vectors, self.slq_steps if self.density else 0) * p * 8 / 2**30
        if gib > 1:
            log.warning(
                "the Lanczos vectors of %d coordinates take %.1f GiB (%d vectors of float64); "
                "lower --top-k, --lanczos-vectors or --slq-steps to use less",
                p,
                gib,
                max(vectors, self.slq_steps if self.density else 0),
            )


@dataclass(frozen=True)
class CertifyConfig:
    """Randomized smoothing of a base classifier: noise levels, samples, confidence, subset."""

    sigmas: tuple[float, ...] = opt(
        (0.12, 0.25, 0.5, 1.0),
        "noise standard deviations sigma of the smoothed classifiers, pixel units ([0,1] scale)",
        flag="sigma",
        bounds=(0, 4),
        why=SD_WHY,
    )
    n0: int = opt(
        100, "selection samples per example (CERTIFY's n0)", bounds=(1, MAX_SAMPLES), why=N_WHY
    )
    n: int = opt(
        100_000,
        "Monte-Carlo noise samples per example for the estimate (CERTIFY's n)",
        flag="samples",
        old=("n", "n_samples"),
        bounds=(1, MAX_SAMPLES),
        why=N_WHY,
    )
    alpha: float = opt(
        0.001, "each certificate is wrong with probability at most alpha", bounds=(0, 0.5)
    )
    n_test: int = opt(
        500,
        "test images certified: a fixed seeded subset (0 = the whole split; more than the split "
        "is capped to it)",
        bounds=(0, None),
    )
    subset_seed: int = opt(0, "seed choosing the subset", bounds=(0, None))
    seed: int = opt(
        0, "seed of every example's noise (the same for every checkpoint)", bounds=(0, None)
    )
    batch_size: int = opt(
        0,
        "noisy copies per forward pass (0: 100 on a CPU, 1000 on a GPU, as measured; it does "
        "not change any result)",
        bounds=(0, 1_000_000),
        why="one forward pass holds batch_size noisy images at once",
    )
    noise_threads: int = opt(
        -1,
        "CPU threads drawing noise ahead of the device (-1: none on a CPU, 4 on a GPU)",
        bounds=(-1, 64),
    )
    predict: bool = opt(False, "also run PREDICT (n fresh samples per example and sigma)")
    noise_levels: tuple[float, ...] = opt(
        (0.0, 0.06, 0.12, 0.18, 0.25, 0.37, 0.5, 0.75, 1.0),
        "noise standard deviations s of the base classifier's Gaussian-noise accuracy curve",
        bounds=(0, 4),
        why=SD_WHY,
    )
    noise_draws: int = opt(
        10,
        "noisy copies per example and level of that curve (0 = no curve)",
        bounds=(0, MAX_SAMPLES),
        why=N_WHY,
    )
    radii: tuple[float, ...] = opt(
        (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5),
        "L2 radii of the certified-accuracy table",
        bounds=(0, None),
    )

    def __post_init__(self) -> None:
        for name in ("sigmas", "noise_levels", "radii"):
            object.__setattr__(self, name, tuple(float(v) for v in getattr(self, name)))
        check_bounds(self)
        if not self.sigmas or any(s <= 0 for s in self.sigmas):
            raise ValueError(f"sigma={self.sigmas}: give one or more noise levels > 0")
        if len(set(self.sigmas)) != len(self.sigmas):
            raise ValueError(f"sigma={self.sigmas} repeats a value")
        if self.n0 < 1 or self.batch_size < 0 or self.n_test < 0 or self.noise_draws < 0:
            raise ValueError(
                "need n0 >= 1, batch_size >= 0 (0 = by device), n_test >= 0 and noise_draws >= 0"
            )
        if not 0 < self.alpha < 0.5:
            raise ValueError(f"alpha={self.alpha} must be in (0, 0.5), e.g. 0.001")
        # Even n of n on the selected class gives pA_lower = alpha^(1/n), which must reach 1/2.
        need = math.floor(math.log(self.alpha) / math.log(0.5)) + 1
        if self.n < need:
            raise ValueError(
                f"n={self.n} can never certify at alpha={self.alpha}: with all {self.n} samples "
                f"on one class pA_lower is {self.alpha ** (1 / self.n):.3f} < 0.5; use n >= {need}"
            )
        if self.noise_threads < -1:
            raise ValueError(f"noise_threads={self.noise_threads}: give -1 (auto), 0 or more")
        if any(r < 0 for r in self.radii):
            raise ValueError(f"radii={self.radii} must be >= 0")
        if self.noise_draws and not self.noise_levels:
            raise ValueError("noise_levels is empty: give levels or --noise-draws 0")

    def threads(self, device: torch.device) -> int:
        """Threads drawing noise: ``noise_threads``, or for -1 none on a CPU and 4 on a GPU."""
        if self.noise_threads >= 0:
            return self.noise_threads
        return 0 if device.type == "cpu" else 4

    def batch(self, device: torch.device) -> int:
        """Noisy copies per forward pass: ``batch_size``, or for 0 the measured default of the
        device. On a 2-core CPU (``python benchmarks/batch_sizes.py --parts certify``: CERTIFY
        with n0=100, n=1000, per image against batch 400) batch 100 took 0.695x at the demo's
        width 0.25 and 0.703x at full width, the fastest of 25-1000 (1000: 1.60x); small
        batches keep the activations in cache. A GPU keeps 1000 (not measured here)."""
        if self.batch_size > 0:
            return self.batch_size
        return 100 if device.type == "cpu" else 1000

    def stores(self) -> dict[str, dict[str, Any]]:
        """The settings each kind of unit depends on (its store's meta); the rest (alpha, radii,
        batch size, the subset, sigmas and levels, which are in the keys) does not change them."""
        common = {"seed": self.seed, "noise_chunk": NOISE_CHUNK}
        out = {"certify": {**common, "n0": self.n0, "n": self.n}}
        if self.predict:
            out["predict"] = {**common, "n": self.n}
        if self.noise_draws:
            out["noise"] = {**common, "levels": list(self.noise_levels), "draws": self.noise_draws}
        return out


#: The float weights' row of the quantization measure carries this in its ``bits`` column.
FLOAT_BITS = 32


@dataclass(frozen=True)
class QuantizeConfig:
    """Bit widths, the test subset and the attack of the quantization measure."""

    bits: tuple[int, ...] = opt(
        (8, 6, 4), "bit widths of the symmetric per-channel quantization", bounds=(2, 16)
    )
    n_test: int = opt(200, "test images (0 = all)", bounds=(0, None))
    attack: AttackConfig = opt(PGD20_EVAL, "the attack, regenerated on each quantized model")
    batch_size: int = opt(256, "examples per batch", bounds=(1, None))
    seed: int = opt(0, "seed of the test subset and the attack's random starts", bounds=(0, None))

    def __post_init__(self) -> None:
        check_bounds(self)
        if len(set(self.bits)) != len(self.bits):
            raise ValueError(f"bits={self.bits}: give each bit width once")


@dataclass(frozen=True)
class BatchNormChoice:
    """The BatchNorm statistics of a measure at a perturbed point: w's own, in eval mode (the
    default), or re-estimated at every point on ``n_bn`` training images (the statistics belong
    to the point, not to w: what a model trained elsewhere may need far from w)."""

    bn: str = opt(
        "eval",
        "BatchNorm at a perturbed point: eval (w's statistics) | recompute (re-estimated on "
        "--n-bn training images at every point)",
    )
    n_bn: int = opt(
        128,
        "training images re-estimating BatchNorm at every point (--bn recompute)",
        bounds=(2, 100_000),
        why="every point adds a forward pass of them",
    )

    def __post_init__(self) -> None:
        check_bounds(self)
        check_choice(self.bn, BN_MODES, "bn")
