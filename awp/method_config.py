"""Training methods beyond plain AT, TRADES and MART, torch-free: the weight perturbations of
the update (AWP, SAM, ASAM, RWP) and their settings, the weight averages (EMA, SWA), and the
method names researchers write (``at-sam``) with the TrainConfig fields they stand for.

A training method is an objective (``TrainConfig.method``: at | trades | mart), at most one
weight perturbation (AWP is ``TrainConfig.awp``, as it always was; SAM, ASAM and RWP are
``TrainConfig.weight_method``) and any weight averages (``ema``, ``swa``), which do not change
the training itself. A method is named ``<objective>[-<perturbation>]``: ``at``, ``at-awp``,
``at-sam``, ``at-asam``, ``at-rwp``, ``trades-sam``...; :func:`method_fields` turns a name
into the TrainConfig fields it stands for, :func:`method_name` a config back into its name, and
:func:`awp.config.method_of` gives the label (``AT-SAM``).

:data:`WEIGHT_METHOD_SPECS` is what a config needs to know of each perturbation (its settings
dataclass, the TrainConfig fields it reads, the objectives it is defined with); the ascents
themselves, which need torch, are :data:`awp.weight_methods.WEIGHT_METHODS`, keyed by the same
names (checked when that module is imported). Adding a weight perturbation is one entry in
each.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from awp.config import METHODS, AWPConfig, check_bounds, opt

# ASAM's eta and the radii's guards are the official codes' values (see the dataclasses).
ASAM_ETA = 0.01


def check_radius(value: float, what: str, flag: str) -> None:
    """Refuse a radius that is not > 0 (a zero radius is no perturbation: train without it).

    Raises:
        ValueError: naming the setting, its flag and the fix.
    """
    if not value > 0:
        raise ValueError(
            f"{what}={value} must be > 0 ({flag}): it is the radius of the weight perturbation; "
            "to train without one, drop the perturbation from --method"
        )


@dataclass(frozen=True)
class SAMConfig:
    """Sharpness-Aware Minimization's ascent on the training objective (SAM-AT, TRADES-SAM).

    e = rho * g / ||g||_2 with g the objective's gradient at w over every parameter together
    (one global norm; SAM perturbs biases and BatchNorm parameters too); the update's gradient
    is taken at w + e and applied at w.

    Reference: Foret et al., "Sharpness-Aware Minimization for Efficiently Improving
    Generalization", ICLR 2021 (rho 0.05 on CIFAR-10); the SAM of github.com/SamsungLabs/ASAM
    (the 1e-16 guard of the norm).
    """

    rho: float = opt(0.05, "radius ||e||_2 = rho over all parameters together", bounds=(0, None))
    warmup: int = opt(0, "epochs trained without SAM before it starts", bounds=(0, None))
    name: ClassVar[str] = "sam"

    def __post_init__(self) -> None:
        check_bounds(self)
        check_radius(self.rho, "rho", "--rho")

    @property
    def active(self) -> bool:
        """Whether the step perturbs the weights at all (always, for a radius > 0)."""
        return True


@dataclass(frozen=True)
class ASAMConfig:
    """Adaptive SAM's ascent: SAM in the coordinates of T_w = |w| + eta.

    e = rho * T_w^2 g / ||T_w g||_2 over every parameter together, with T_w = |w| + eta
    elementwise for the weights (conv, linear and BatchNorm weights: every parameter named
    ``weight``) and T_w = 1 for biases (BatchNorm's too), as the official code does; the update
    as SAM's.

    Reference: Kwon et al., "ASAM: Adaptive Sharpness-Aware Minimization for Scale-Invariant
    Learning of Deep Neural Networks", ICML 2021 (rho 0.5 and eta 0.01 on CIFAR-10);
    github.com/SamsungLabs/ASAM, asam.py.
    """

    rho: float = opt(
        0.5, "radius ||T_w^-1 e||_2 = rho over all parameters together", bounds=(0, None)
    )
    eta: float = opt(ASAM_ETA, "T_w = |w| + eta on the weights", bounds=(0, None))
    warmup: int = opt(0, "epochs trained without ASAM before it starts", bounds=(0, None))
    name: ClassVar[str] = "asam"

    def __post_init__(self) -> None:
        check_bounds(self)
        check_radius(self.rho, "rho", "--rho")

    @property
    def active(self) -> bool:
        """Whether the step perturbs the weights at all (always, for a radius > 0)."""
        return True


@dataclass(frozen=True)
class RWPConfig:
    """Robust Weight Perturbation: AWP's ascent on the examples below a loss threshold only.

    Every one of ``steps`` ascent steps takes the gradient of mean_i [l_i < c_min] l_i (the
    examples whose adversarial loss is at least c_min get weight 0, the mean is over the whole
    batch), adds it to the accumulated direction D and rescales: v = gamma ||w|| D / ||D||,
    one global scale over every perturbed tensor (conv and linear weights); the update's
    gradient is taken at w + v and applied there, then v is subtracted (as AWP).

    Reference: Yu et al., "Robust Weight Perturbation for Adversarial Training", IJCAI 2022;
    github.com/ChaojianYu/Robust-Weight-Perturbation (utils_rwp.py: 10 steps, c_min 1.7 (its
    ``LSC_loss``), gamma 0.01 for AT and 0.005 with a 10-epoch warm-up for TRADES).
    """

    gamma: float = opt(0.01, "relative radius: ||v|| = gamma ||w|| over all layers", bounds=(0, 1))
    c_min: float = opt(
        1.7, "only examples whose loss is below c_min enter the ascent", bounds=(0, None)
    )
    steps: int = opt(10, "ascent steps", bounds=(1, 1000), why="each is a forward and backward")
    warmup: int = opt(0, "epochs trained without RWP before it starts", bounds=(0, None))
    name: ClassVar[str] = "rwp"

    def __post_init__(self) -> None:
        check_bounds(self)
        check_radius(self.gamma, "gamma", "--gamma")

    @property
    def active(self) -> bool:
        """Whether the step perturbs the weights at all (always, for a radius > 0)."""
        return True


PerturbationConfig = AWPConfig | SAMConfig | ASAMConfig | RWPConfig


@dataclass(frozen=True)
class EMAConfig:
    """An exponential moving average of the weights: w_ema <- d w_ema + (1 - d) w after every
    optimizer step, BatchNorm buffers copied from the model (Gowal et al., 2020 use it against
    robust overfitting; 0.999 is ``torch.optim.swa_utils.get_ema_multi_avg_fn``'s decay)."""

    decay: float = opt(0.999, "decay d in (0, 1)", bounds=(0, 1))
    name: ClassVar[str] = "ema"

    def __post_init__(self) -> None:
        check_bounds(self)
        check_decay(self.decay)


@dataclass(frozen=True)
class SWAConfig:
    """Stochastic weight averaging: the running mean of the weights at the end of every epoch
    from ``start`` on (1-based), BatchNorm statistics re-estimated on the training images before
    the average is evaluated or saved (Izmailov et al., UAI 2018; Chen et al., ICLR 2021 use it
    against robust overfitting, from just after the first learning-rate decay)."""

    start: int = opt(
        1, "the first epoch (1-based) whose weights enter the average", bounds=(1, None)
    )
    name: ClassVar[str] = "swa"

    def __post_init__(self) -> None:
        check_bounds(self)


AverageConfig = EMAConfig | SWAConfig
#: The weight averages, by name (also the ends of a pipeline's method name: ``at-sam+ema``).
AVERAGES = ("ema", "swa")


def check_decay(decay: float) -> None:
    """Refuse an EMA decay outside (0, 1)."""
    if not 0 < decay < 1:
        raise ValueError(
            f"ema_decay={decay} must be in (0, 1) (--ema-decay): the weight of the old average "
            "at every step, e.g. 0.999"
        )


def swa_default_start(epochs: int) -> int:
    """SWA's default first epoch: the first one after the piecewise schedule's first decay (at
    half the epochs), as Chen et al. start just after their first decay."""
    return epochs // 2 + 1


@dataclass(frozen=True)
class WeightMethodSpec:
    """What a training config knows of one weight perturbation.

    Attributes:
        config: its settings' dataclass (built by ``TrainConfig.perturbation_config``).
        settings: the TrainConfig fields it reads besides ``awp_warmup`` (which every one
            reads: the epochs trained without the perturbation); given with another method they
            would be ignored, so they are refused.
        objectives: the objectives it is defined with.
    """

    config: type
    settings: tuple[str, ...]
    objectives: tuple[str, ...] = METHODS

    @property
    def label(self) -> str:
        return self.config.name.upper()


WEIGHT_METHOD_SPECS: Mapping[str, WeightMethodSpec] = {
    "awp": WeightMethodSpec(AWPConfig, ("gamma", "awp_steps", "awp_alternations")),
    "sam": WeightMethodSpec(SAMConfig, ("rho",)),
    "asam": WeightMethodSpec(ASAMConfig, ("rho",)),
    # The RWP paper and code train AT, TRADES and RST (AT with extra data), not MART: its
    # threshold c_min is a value of their losses.
    "rwp": WeightMethodSpec(RWPConfig, ("gamma", "c_min", "rwp_steps"), ("at", "trades")),
}
"""Every weight perturbation, by the name it has in method names (``at-sam``)."""

# The values of TrainConfig.weight_method (AWP is TrainConfig.awp; "awp" is accepted there and
# moved to it).
WEIGHT_METHOD_NAMES = ("none", *(n for n in WEIGHT_METHOD_SPECS if n != "awp"))

METHOD_NAMES: tuple[str, ...] = tuple(
    name
    for objective in METHODS
    for name in (
        objective,
        *(f"{objective}-{w}" for w, s in WEIGHT_METHOD_SPECS.items() if objective in s.objectives),
    )
)
"""Every method name: an objective, alone or with a weight perturbation it is defined with."""

# Settings whose default is "not given" (None), refused with a method that does not read them.
# gamma, awp_steps and awp_alternations are refused with SAM and ASAM; without any perturbation
# the command line refuses them (config.json files of plain runs that carry them still load).
_LEGACY = ("gamma", "awp_steps", "awp_alternations")
_DEFAULTS = {"awp_steps": 1, "awp_alternations": 1}


def method_fields(name: str) -> dict[str, Any]:
    """The TrainConfig fields a method name stands for.

    ``method_fields("at-sam") == {"method": "at", "awp": False, "weight_method": "sam"}``;
    ``method_fields("trades-awp") == {"method": "trades", "awp": True, "weight_method":
    "none"}``. Case does not matter (``AT-SAM`` is a label of the same method).

    Raises:
        ValueError: an unknown name, listing the known ones.
    """
    key = str(name).strip().lower()
    if key not in METHOD_NAMES:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(METHOD_NAMES)}")
    objective, _, weights = key.partition("-")
    return {
        "method": objective,
        "awp": weights == "awp",
        "weight_method": weights if weights and weights != "awp" else "none",
    }


def split_average(name: str) -> tuple[str, str]:
    """A pipeline's method name and the weight average it is measured by: ``at-sam+ema`` ->
    ``("at-sam", "ema")`` (trained as at-sam with ``--ema``, its EMA weights evaluated and
    measured as its checkpoints, ``checkpoints/ema/``); ``at`` -> ``("at", "")``.

    Raises:
        ValueError: an unknown method or average, listing the known ones.
    """
    method, plus, average = str(name).strip().lower().partition("+")
    method_fields(method)
    if plus and average not in AVERAGES:
        raise ValueError(
            f"unknown weight average {average!r} in method {name!r}: write METHOD+ema or "
            f"METHOD+swa ({', '.join(AVERAGES)}), e.g. at+ema"
        )
    return method, average


def measured_average(config: Any) -> str:
    """The weight average a pipeline measures in place of a run's weights (a TrainConfig or
    its JSON dict): the one average the run kept (``ema`` or ``swa``), else "" (its own
    weights). The pipelines train an average only for a ``METHOD+ema``/``+swa`` name."""
    if dataclasses.is_dataclass(config):
        config = dataclasses.asdict(config)
    kept = [a for a in AVERAGES if config.get(a)]
    return kept[0] if len(kept) == 1 else ""


def method_name(config: Any) -> str:
    """The method name of a training config (a TrainConfig or its JSON dict): ``at-sam``.

    The inverse of :func:`method_fields`: ``method_fields(method_name(c))`` are ``c``'s values
    of those fields. A dict without the keys gets their defaults (``at``, no perturbation), so
    every config.json written before the weight perturbations were added reads.
    """
    if dataclasses.is_dataclass(config):
        config = dataclasses.asdict(config)
    objective = str(config.get("method") or "at")
    weights = "awp" if config.get("awp") else str(config.get("weight_method") or "none")
    return objective if weights == "none" else f"{objective}-{weights}"


def canonical_method(method: str, awp: bool, weight_method: str) -> tuple[str, bool, str]:
    """``(method, awp, weight_method)`` of a TrainConfig with a method name split into its
    fields: ``("at-sam", False, "none") -> ("at", False, "sam")``; ``weight_method "awp"`` is
    ``awp=True`` (AWP's own field).

    Raises:
        ValueError: an unknown method or weight perturbation (listing the known ones), two
            perturbations at once, or a perturbation with an objective it is not defined with.
    """
    if weight_method not in (*WEIGHT_METHOD_NAMES, "awp"):
        raise ValueError(
            f"unknown weight_method {weight_method!r}; choose one of "
            f"{', '.join((*WEIGHT_METHOD_NAMES, 'awp'))} (or a method name: --method at-sam)"
        )
    asked = {"awp"} if awp else set()
    asked |= {weight_method} - {"none"}
    if method not in METHODS:
        fields = method_fields(method)  # refuses an unknown name, listing the known ones
        method = fields["method"]
        asked |= {"awp"} if fields["awp"] else {fields["weight_method"]} - {"none"}
    if len(asked) > 1:
        named = " and ".join(sorted(n.upper() for n in asked))
        raise ValueError(
            f"{named} are two weight perturbations and a run trains with one: choose one of "
            + ", ".join(f"--method {method}-{n}" for n in sorted(asked))
        )
    weights = asked.pop() if asked else "none"
    spec = WEIGHT_METHOD_SPECS.get(weights)
    if spec is not None and method not in spec.objectives:
        raise ValueError(
            f"{method}-{weights} is not a method: {spec.label} is defined with "
            f"{' and '.join(spec.objectives)}; choose one of {', '.join(METHOD_NAMES)}"
        )
    return method, weights == "awp", weights if weights != "awp" else "none"


def check_method_settings(config: Any) -> None:
    """Refuse a setting the run's method ignores, and the averages' bad values.

    ``config`` is a TrainConfig (read by attribute): ``--rho`` without SAM or ASAM,
    ``--gamma`` with SAM, ``--c-min`` without RWP, ``--ema-decay`` without ``--ema``, an SWA
    start after the last epoch...

    Raises:
        ValueError: one line naming the setting, the method and the fix.
    """
    weights = "awp" if config.awp else config.weight_method
    objective = config.method
    owners: dict[str, list[str]] = {}
    for name, spec in WEIGHT_METHOD_SPECS.items():
        for setting in spec.settings:
            owners.setdefault(setting, []).append(name)
    for setting, names in owners.items():
        value = getattr(config, setting)
        if value is None or value == _DEFAULTS.get(setting) or weights in names:
            continue
        if weights == "none" and setting in _LEGACY:
            continue  # the command line refuses these (awp_landscape.commands.train)
        flag = "--" + setting.replace("_", "-")
        choices = " or ".join(f"--method {objective}-{n}" for n in names)
        raise ValueError(
            f"{setting}={value} ({flag}) is a setting of {' and '.join(n.upper() for n in names)}, "
            f"which method {method_name(config)} does not use; drop {flag} or train {choices}"
        )
    if config.weight_method == "rwp" and config.gamma is not None:
        check_radius(config.gamma, "gamma", "--gamma")
    if config.rho is not None:
        check_radius(config.rho, "rho", "--rho")
    for flag, value, on in (
        ("ema_decay", config.ema_decay, config.ema),
        ("swa_start", config.swa_start, config.swa),
    ):
        if value is not None and not on:
            average, option = flag.split("_")[0], "--" + flag.replace("_", "-")
            raise ValueError(
                f"{flag}={value} ({option}) is a setting of the {average.upper()} average, "
                f"which this run does not keep; add --{average} or drop {option}"
            )
    if config.ema_decay is not None:
        check_decay(config.ema_decay)
    if config.swa_start is not None and config.swa_start > config.epochs:
        raise ValueError(
            f"swa_start={config.swa_start} (--swa-start) is after the last epoch "
            f"({config.epochs}): no weights would be averaged; give an epoch in 1..{config.epochs}"
        )
