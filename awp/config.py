"""Frozen, validated configuration dataclasses, their JSON round trip, and config diffs.

One dataclass per concern. Each field carries its help text (:func:`opt`), so the CLI is
generated from the same dataclasses and every default lives in exactly one place; a Python user
passes the same object the CLI builds. Numbers accept fractions (``--eps 8/255``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, ClassVar, TypeVar

from awp.attack_names import ATTACK_KINDS
from awp.seeds import SEED_SCHEME_KEY

T = TypeVar("T")

# Model modes (awp.modes) and parameter sets (awp.perturb), named here so that the config
# dataclasses, and `awp CMD --help` built from them, import no torch.
MODES = ("train", "eval")
# BatchNorm at a perturbed point (awp.modes): w0's running statistics, or re-estimated there.
BN_MODES = ("eval", "recompute")
PARAM_SETS = ("weights", "all")

NORMS = ("linf", "l2")
RANDOM_STARTS = ("uniform", "gaussian", "none")
HVP_METHODS = ("auto", "graph", "jvp", "double")  # Hessian-vector products (awp.hessian)
SCHEDULES = ("piecewise", "cosine", "constant")  # learning-rate schedules (awp.train_config)


def opt(default: Any, help: str, **kwargs: Any) -> Any:  # noqa: A002 - mirrors argparse
    """A dataclass field carrying its CLI help text (mutable defaults via default_factory).

    Keyword metadata understood by the CLI generator:

    - ``shown="..."`` replaces the default printed by ``--help`` (for ``None`` meaning "depends
      on another setting", e.g. the training method's default);
    - ``flag="name"`` names the flag (``--name``) instead of the field name, e.g. the attack
      config's ``name`` is ``--attack``;
    - ``old=("old_name", ...)``: earlier spellings of the flag, accepted for one release as
      hidden aliases that print a deprecation note naming the flag;
    - ``cli=False`` keeps the field off the command line;
    - ``bounds=(low, high)`` is the field's valid range, inclusive (None: unbounded on that
      side; a tuple field bounds each of its values), checked by :func:`check_bounds` in the
      config's ``__post_init__`` and shown by ``--help``; ``why="..."`` says where an upper
      bound comes from (the memory or time it would take).
    - ``const=value``: the flag may be given without a value, which then means ``value``
      (``--tensorboard [DIR]``);
    - ``metavar="DIR"`` names the flag's value in ``--help``.
    """
    if isinstance(default, (list, dict, set)):
        return field(
            default_factory=lambda: type(default)(default), metadata={"help": help, **kwargs}
        )
    if dataclasses.is_dataclass(default):
        return field(default_factory=lambda: default, metadata={"help": help, **kwargs})
    return field(default=default, metadata={"help": help, **kwargs})


def parse_number(text: str | float | int) -> float:
    """Parse ``"8/255"``, ``"0.031"`` or ``"2e-3"`` into a float.

    Raises:
        ValueError: naming the text when it is not a number or a fraction of two numbers.
    """
    if isinstance(text, (int, float)):
        return float(text)
    s = str(text).strip()
    try:
        if "/" in s:
            num, den = s.split("/", 1)
            value = float(Fraction(num.strip())) / float(Fraction(den.strip()))
        else:
            value = float(s)
    except (ValueError, ZeroDivisionError) as err:
        raise ValueError(
            f"cannot read {text!r} as a number: use e.g. 0.031, 2e-3 or 8/255"
        ) from err
    if not math.isfinite(value):
        raise ValueError(f"{text!r} is not a finite number")
    return value


def bounds_of(cls: type, name: str) -> dict[str, Any]:
    """The range (``bounds``, ``why``) declared with field ``name`` of config ``cls``, for a
    field elsewhere that is passed on to it (a plan's ``epochs`` is TrainConfig's): one range,
    refused as early as the outer config is built."""
    meta = next(f.metadata for f in dataclasses.fields(cls) if f.name == name)
    return {k: meta[k] for k in ("bounds", "why") if k in meta}


def flag_of(cls: type, name: str) -> dict[str, Any]:
    """:func:`bounds_of` and the flag's spelling (``flag``, ``old``) of field ``name`` of
    ``cls``, for a field elsewhere that is the same setting under the same flag (a plan's
    ``step_size`` is TrainConfig's ``--attack-step-size``)."""
    meta = next(f.metadata for f in dataclasses.fields(cls) if f.name == name)
    return {**bounds_of(cls, name), **{k: meta[k] for k in ("flag", "old") if k in meta}}


def check_bounds(config: Any) -> None:
    """Refuse a numeric field outside the range declared with it (``opt(..., bounds=...)``).

    Called first in a config's ``__post_init__``, so the CLI and the Python API refuse the same
    values with the same line.

    Raises:
        ValueError: naming the field, its flag, the value and the range (and ``why``).
    """
    for f in dataclasses.fields(config):
        bounds = f.metadata.get("bounds")
        value = getattr(config, f.name)
        if bounds is None or value is None:
            continue
        low, high = bounds
        for v in value if isinstance(value, (tuple, list)) else (value,):
            if (
                not math.isfinite(v)
                or (low is not None and v < low)
                or (high is not None and v > high)
            ):
                flag = "--" + f.metadata.get("flag", f.name).replace("_", "-")
                why = f.metadata.get("why", "")
                raise ValueError(
                    f"{f.name}={_num(v)} is outside [{bounds_text(bounds)}] ({flag})"
                    + (f": {why}" if why and high is not None and v > high else "")
                )


def bounds_text(bounds: tuple[float | None, float | None]) -> str:
    """``low, high`` of a range as a user reads it (``1, 10000000``; ``0, inf``)."""
    low, high = bounds
    return f"{'-inf' if low is None else _num(low)}, {'inf' if high is None else _num(high)}"


def _num(v: float) -> str:
    return str(v) if isinstance(v, int) or float(v).is_integer() and abs(v) < 1e15 else f"{v:g}"


def check_eps(eps: float, norm: str, what: str = "eps") -> None:
    """Refuse an L-inf radius given in pixel units (eps=8 meaning 8/255)."""
    if eps < 0:
        raise ValueError(f"{what}={eps} is negative; radii are >= 0")
    if norm == "linf" and eps > 1:
        raise ValueError(
            f"{what}={eps:g} is larger than 1, but images are in [0, 1]: an L-inf radius of "
            f"{eps:g} pixels is written {eps:g}/255 (e.g. --{what.replace('_', '-')} {eps:g}/255)"
        )


def check_choice(value: Any, allowed: Sequence[Any], what: str) -> None:
    """Refuse a value outside ``allowed``, naming the setting and the valid values."""
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; choose one of {', '.join(map(str, allowed))}")


def default_eps(norm: str) -> float:
    """The threat model's usual radius: 8/255 for linf, 0.5 (128/255) for l2."""
    check_choice(norm, NORMS, "norm")
    return 8 / 255 if norm == "linf" else 0.5


@dataclass(frozen=True)
class AttackConfig:
    """An input-space attack: which one, its threat model and the model's mode while it runs.

    The mode is recorded because it changes the attack: in ``train`` mode BatchNorm uses the
    batch's statistics (running statistics are never updated by an attack). FGSM is one step
    of size eps from x: its ``steps``, ``step_size`` and ``random_start`` are pinned to that.
    """

    name: str = opt(
        "pgd", "attack: pgd | fgsm | cw (CW-inf margin loss)", flag="attack", selects=True
    )
    norm: str = opt("linf", "threat model: linf | l2")
    eps: float = opt(
        8 / 255, "radius in [0,1] pixel units (8/255 for linf, 0.5 for l2)", bounds=(0, None)
    )
    step_size: float = opt(
        2 / 255,
        "attack step size in pixel units (eps/4 when only --norm/--eps change)",
        flag="attack_step_size",
        old=("step_size",),
        bounds=(0, None),
    )
    steps: int = opt(
        10,
        "number of attack steps",
        flag="attack_steps",
        bounds=(1, 10_000),
        why="every step is a forward and a backward pass of every example",
    )
    restarts: int = opt(
        1,
        "random restarts; the worst case per example is kept",
        flag="attack_restarts",
        old=("restarts",),
        bounds=(1, 1000),
        why="every restart repeats the whole attack",
    )
    random_start: str = opt("uniform", "uniform | gaussian | none", flag="attack_start")
    mode: str = opt("eval", "model mode during the attack: train | eval", flag="attack_mode")
    kappa: float = opt(
        50.0, "CW margin confidence (official AWP eval uses 50)", flag="cw_kappa", bounds=(0, None)
    )

    def __post_init__(self) -> None:
        check_bounds(self)
        check_choice(self.name, ATTACK_KINDS, "attack")
        check_choice(self.norm, NORMS, "norm")
        check_choice(self.random_start, RANDOM_STARTS, "random_start")
        check_choice(self.mode, MODES, "attack mode")
        check_eps(self.eps, self.norm)
        if self.name == "fgsm":
            object.__setattr__(self, "steps", 1)
            object.__setattr__(self, "step_size", self.eps)
            object.__setattr__(self, "random_start", "none")
        if self.step_size < 0:
            raise ValueError(f"step_size={self.step_size} is negative")
        check_eps(self.step_size, self.norm, "step_size")
        if self.steps < 1:
            raise ValueError(f"steps={self.steps}: an iterative attack needs at least one step")
        if self.restarts < 1:
            raise ValueError(f"restarts={self.restarts}: need at least 1")

    def updated(self, **changes: Any) -> AttackConfig:
        """This attack with ``changes``; a new threat model keeps consistent radii.

        A changed ``norm`` without an ``eps`` takes that norm's usual radius
        (:func:`default_eps`), and a changed radius without a ``step_size`` takes eps/4, so
        ``--norm l2`` alone means L2 at 0.5 with step 0.125, not L2 at 8/255.
        """
        norm = changes.get("norm", self.norm)
        if "eps" not in changes and norm != self.norm:
            changes["eps"] = default_eps(norm)
        eps = changes.get("eps", self.eps)
        if "step_size" not in changes and (eps != self.eps or norm != self.norm):
            changes["step_size"] = eps / 4
        return dataclasses.replace(self, **changes)

    def describe(self) -> str:
        """Short human label, e.g. ``PGD-20 linf eps=8/255``."""
        label = "FGSM" if self.name == "fgsm" else f"{self.name.upper()}-{self.steps}"
        eps = f"{self.eps * 255:g}/255" if self.norm == "linf" else f"{self.eps:g}"
        return f"{label} {self.norm} eps={eps}"


# Paper presets (Rice et al. / official AWP): train-time PGD-10 in train mode, eval in eval mode.
PGD10_TRAIN = AttackConfig(name="pgd", steps=10, step_size=2 / 255, mode="train")
PGD10_EVAL = AttackConfig(name="pgd", steps=10, step_size=2 / 255, mode="eval")
PGD20_EVAL = AttackConfig(name="pgd", steps=20, step_size=2 / 255, mode="eval")
CW20_EVAL = AttackConfig(name="cw", steps=20, step_size=2 / 255, mode="eval")
FGSM_EVAL = AttackConfig(name="fgsm", mode="eval")


# --------------------------------------------------------------------------- JSON round trip
def resolve_type(tp: Any) -> Any:
    """Strip ``Optional[X]`` / ``X | None`` to X."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def from_dict(cls: type[T], data: Mapping[str, Any]) -> T:
    """Build dataclass ``cls`` from a (JSON) dict, recursing into nested dataclasses.

    A class may upgrade dicts written by older versions through a ``migrate(data) -> data``
    staticmethod (e.g. flat keys that are now a nested config).

    Raises:
        ValueError: listing unknown keys, so a typo in a config file is never silently ignored.
    """
    if not isinstance(data, Mapping):
        raise ValueError(f"{cls.__name__}: expected a mapping, got {type(data).__name__}")
    migrate = getattr(cls, "migrate", None)
    data = dict(migrate(dict(data)) if migrate is not None else data)
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown keys {unknown}; valid keys are {sorted(names)}")
    kwargs = {}
    for key, value in data.items():
        tp = resolve_type(hints[key])
        if dataclasses.is_dataclass(tp) and isinstance(value, Mapping):
            value = from_dict(tp, value)
        elif typing.get_origin(tp) is tuple and isinstance(value, list):
            value = tuple(value)
        kwargs[key] = value
    return cls(**kwargs)


def to_dict(obj: Any) -> dict[str, Any]:
    """Dataclass -> JSON-ready dict (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(obj)))


def config_diff(
    saved: Any, current: Any, *, ignore: Sequence[str] = (), saved_as: str = "on disk"
) -> list[str]:
    """Every difference between two JSON-like configs, as ``path: old <saved_as>, new now``.

    Nested dicts are compared key by key (``attack.steps: 10 in the file, 20 now``); entries
    of ``ignore`` are settings that do not change results: a bare name (``device``) at any
    depth, a dotted path (``flatness.alphas``) at that place only.
    """
    return _diff(saved, current, "", tuple(ignore), saved_as)


def _diff(a: Any, b: Any, prefix: str, ignore: tuple[str, ...], saved_as: str) -> list[str]:
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        out: list[str] = []
        for key in sorted(set(a) | set(b)):
            if key not in ignore and f"{prefix}{key}" not in ignore:
                out += _diff(a.get(key), b.get(key), f"{prefix}{key}.", ignore, saved_as)
        return out
    return [] if a == b else [f"{prefix.rstrip('.')}: {a!r} {saved_as}, {b!r} now"]


class SettingsMismatch(ValueError):
    """Results on disk were made under other settings than the ones asked for now."""


def check_same_settings(
    saved: Any,
    current: Any,
    *,
    where: str,
    fix: str,
    ignore: Sequence[str] = (),
    saved_as: str = "on disk",
    problems: Sequence[str] = (),
    shown: int | None = None,
    error: type[Exception] = SettingsMismatch,
) -> None:
    """Refuse to mix results made under other settings: the one "settings must match" guard.

    Every place that resumes or reuses stored work (run folders, surface files, the analysis
    store, demo folders) calls this with its own ``ignore`` list, the settings that may change
    between runs without changing a stored result (each keeps it as ``RESUME_MUTABLE``).

    Args:
        saved: the settings stored with the results (JSON-like).
        current: the settings asked for now.
        where: what is refused, naming the file or folder (``cannot resume runs/at``).
        fix: the sentence telling what to do instead.
        ignore: see :func:`config_diff` (bare names at any depth, dotted paths exactly).
        saved_as: how the saved values are described (``in the run``, ``in the file``).
        problems: further differences found by the caller (a checkpoint's hash).
        shown: at most this many differences in the message (None: all), then a count.
        error: the exception class raised (a subclass of ValueError by convention).

    Raises:
        error: ``<where> (<setting>: <old> <saved_as>, <new> now; ...). <fix>``.
    """
    diffs = config_diff(saved, current, ignore=ignore, saved_as=saved_as) + list(problems)
    if not diffs:
        return
    listed = diffs if shown is None else diffs[:shown]
    more = f"; and {len(diffs) - len(listed)} more" if len(diffs) > len(listed) else ""
    raise error(f"{where} ({'; '.join(listed)}{more}). {fix}{_scheme_note(saved, current)}")


def _scheme_note(saved: Any, current: Any) -> str:
    """Why a differing seed scheme refuses (see :mod:`awp.seeds`), or ''."""
    key = SEED_SCHEME_KEY
    if not isinstance(saved, Mapping) or not isinstance(current, Mapping) or key not in current:
        return ""
    if saved.get(key) == current[key]:
        return ""
    made = (
        "by a version from before every seed was derived with awp.seeds.derive_seed"
        if saved.get(key) is None
        else f"with the seed scheme {saved[key]!r}, this version's is {current[key]!r}"
    )
    return (
        f" (The results were made {made}: their random draws differ from this version's, so "
        'they cannot be continued by it. They still read; see docs/architecture.md, "Seeds".)'
    )


ASCENT_WHY = "every one adds a forward and a backward pass to every training step"


@dataclass(frozen=True)
class AWPConfig:
    """Adversarial Weight Perturbation: radius, schedule and warm-up.

    Defaults are the paper's (A=1, K1=10 input steps set by the training attack, K2=1).
    """

    gamma: float = opt(
        0.01,
        "relative radius: ||v_l|| <= gamma * ||w_l|| (0.01 AT, 0.005 TRADES)",
        bounds=(0, 1),
    )
    warmup: int = opt(0, "epochs trained without AWP before it starts", bounds=(0, None))
    steps: int = opt(
        1, "K2: weight ascent steps (projected for K2 > 1)", bounds=(1, 1000), why=ASCENT_WHY
    )
    alternations: int = opt(
        1,
        "A: alternations; A > 1 regenerates x_adv on w+v between ascents",
        bounds=(1, 1000),
        why=ASCENT_WHY,
    )
    name: ClassVar[str] = "awp"  # its entry in awp.weight_methods.WEIGHT_METHODS

    def __post_init__(self) -> None:
        check_bounds(self)
        if not 0 <= self.gamma < 1:
            raise ValueError(f"gamma={self.gamma} must be in [0, 1): it is relative to ||w_l||")
        if self.warmup < 0 or self.steps < 1 or self.alternations < 1:
            raise ValueError(
                f"need warmup >= 0, steps >= 1, alternations >= 1; got {self.warmup}, "
                f"{self.steps}, {self.alternations}"
            )

    @property
    def active(self) -> bool:
        """Whether the step perturbs the weights at all (gamma 0 is plain training)."""
        return self.gamma > 0


METHODS = ("at", "trades", "mart")


@dataclass(frozen=True)
class MethodDefaults:
    """What a training method uses for every :class:`~awp.train.TrainConfig` field left at None.

    Args:
        gamma: AWP relative radius, ||v_l|| <= gamma * ||w_l||.
        awp_warmup: epochs trained without AWP before it starts.
        beta: weight of the KL regularizer (TRADES, MART); None for a method without one.
        attack_mode: the model's mode while the training attack runs ("train" | "eval").
        attack_start: the training attack's random start ("uniform" in the eps-ball, or
            "gaussian" = x + 0.001 * N(0, 1) as the TRADES and MART code start).
    """

    gamma: float
    awp_warmup: int
    beta: float | None
    attack_mode: str
    attack_start: str

    def __post_init__(self) -> None:
        check_choice(self.attack_mode, MODES, "attack mode")
        check_choice(self.attack_start, RANDOM_STARTS, "random start")


# The official code's defaults, in one place. `awp train --method trades --awp` leaves
# --gamma/--awp-warmup/--beta/--attack-mode/--attack-start at None and gets these; a value given
# on the command line (or in a config) always wins.
#   AT-AWP: github.com/csdongxian/AWP at-awp/train_cifar10.py (after Rice et al.): gamma 0.01, no
#     warm-up, PGD in train mode from a uniform start.
#   TRADES-AWP: trades_AWP/train_trades_cifar.py: gamma 0.005, 10 warm-up epochs, beta 6, the KL
#     attack in eval mode from x + 0.001 * N(0, 1) (yaodongyu/TRADES).
#   MART-AWP: no official script is published; gamma 0.005 as the paper's TRADES-family value,
#     no warm-up, beta 6 and the attack of the MART code (YisenWang/MART: CE, eval mode, gaussian
#     start).
METHOD_DEFAULTS: dict[str, MethodDefaults] = {
    "at": MethodDefaults(
        gamma=0.01, awp_warmup=0, beta=None, attack_mode="train", attack_start="uniform"
    ),
    "trades": MethodDefaults(
        gamma=0.005, awp_warmup=10, beta=6.0, attack_mode="eval", attack_start="gaussian"
    ),
    "mart": MethodDefaults(
        gamma=0.005, awp_warmup=0, beta=6.0, attack_mode="eval", attack_start="gaussian"
    ),
}


def method_defaults(method: str) -> MethodDefaults:
    """The defaults of a training method by name (see :data:`METHOD_DEFAULTS`)."""
    check_choice(method, METHODS, "method")
    return METHOD_DEFAULTS[method]


def check_beta(method: str, beta: float | None) -> None:
    """Refuse a beta for a method without one (AT) and a negative beta (TRADES, MART).

    Raises:
        ValueError: naming the problem and the fix.
    """
    default = method_defaults(method).beta
    if default is None:
        if beta is not None:
            raise ValueError(
                f"beta={beta} was given, but method {method!r} has no beta; beta weighs the KL "
                f"term of trades and mart (drop --beta or choose --method trades/mart)"
            )
        return
    if not (default if beta is None else beta) >= 0:
        raise ValueError(f"beta={beta} must be >= 0")


def method_of(config: Mapping[str, Any] | None, average: str | None = None) -> str:
    """The method label of a run from its training config: ``AT``, ``AT-AWP``, ``TRADES-SAM``...

    ``config["method"]`` names the objective (at / trades / mart, default at); ``config["awp"]``
    adds ``-AWP`` and ``config["weight_method"]`` (sam / asam / rwp) ``-SAM``, ``-ASAM``,
    ``-RWP``. Gaussian data augmentation (``noise_sd`` > 0) gives ``Gaussian`` /
    ``Gaussian-AWP`` without an attack (``eps`` 0) and appends ``+Gaussian`` to the others.
    ``average`` ("ema" or "swa": a checkpoint of the run's weight average) appends ``+EMA`` or
    ``+SWA``. An empty or missing config gives ``unknown``.
    """
    if not config:
        return "unknown"
    base = str(config.get("method") or "at").upper()
    weights = "awp" if config.get("awp") else str(config.get("weight_method") or "none")
    label = base if weights == "none" else f"{base}-{weights.upper()}"
    suffix = f"+{average.upper()}" if average else ""
    if float(config.get("noise_sd") or 0) > 0:  # Gaussian data augmentation
        if base == "AT" and float(config.get("eps", 1)) == 0:
            return "Gaussian" + label[2:] + suffix  # no attack: Gaussian, Gaussian-AWP
        return f"{label}+Gaussian{suffix}"
    return label + suffix
