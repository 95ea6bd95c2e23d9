"""Frozen, validated configuration dataclasses and their CLI / JSON round trip.

One dataclass per concern. The CLI is generated from the same dataclasses
(:func:`add_dataclass_arguments`), so every default lives in exactly one place and a Python
user passes the same object the CLI builds. Numbers accept fractions (``--eps 8/255``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, TypeVar

T = TypeVar("T")

NORMS = ("linf", "l2")
ATTACK_NAMES = ("pgd", "fgsm", "cw")
RANDOM_STARTS = ("uniform", "gaussian", "none")
MODES = ("train", "eval")


def opt(default: Any, help: str, **kwargs: Any) -> Any:  # noqa: A002 - mirrors argparse
    """A dataclass field carrying its CLI help text (mutable defaults via default_factory).

    ``shown="..."`` replaces the default printed by ``--help`` (for ``None`` meaning "depends on
    another setting", e.g. the training method's default).
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


def check_eps(eps: float, norm: str, what: str = "eps") -> None:
    """Refuse an L-inf radius given in pixel units (eps=8 meaning 8/255)."""
    if eps < 0:
        raise ValueError(f"{what}={eps} is negative; radii are >= 0")
    if norm == "linf" and eps > 1:
        raise ValueError(
            f"{what}={eps:g} is larger than 1, but images are in [0, 1]: an L-inf radius of "
            f"{eps:g} pixels is written {eps:g}/255 (e.g. --{what.replace('_', '-')} {eps:g}/255)"
        )


def _choice(value: str, allowed: tuple[str, ...], what: str) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; choose one of {', '.join(allowed)}")


@dataclass(frozen=True)
class AttackConfig:
    """An input-space attack: which one, its threat model and the model's mode while it runs.

    The mode is recorded because it changes the attack: in ``train`` mode BatchNorm uses the
    batch's statistics (running statistics are never updated by an attack).
    """

    name: str = opt("pgd", "attack: pgd | fgsm | cw (CW-inf margin loss)")
    norm: str = opt("linf", "threat model: linf | l2")
    eps: float = opt(8 / 255, "radius in [0,1] pixel units (8/255 for linf, 0.5 for l2)")
    step_size: float = opt(2 / 255, "step size in pixel units")
    steps: int = opt(10, "number of attack steps")
    restarts: int = opt(1, "random restarts; the worst case per example is kept")
    random_start: str = opt("uniform", "uniform | gaussian | none")
    mode: str = opt("eval", "model mode during the attack: train | eval")
    kappa: float = opt(50.0, "CW margin confidence (official AWP eval uses 50)")

    def __post_init__(self) -> None:
        _choice(self.name, ATTACK_NAMES, "attack")
        _choice(self.norm, NORMS, "norm")
        _choice(self.random_start, RANDOM_STARTS, "random_start")
        _choice(self.mode, MODES, "attack mode")
        check_eps(self.eps, self.norm)
        if self.step_size < 0:
            raise ValueError(f"step_size={self.step_size} is negative")
        check_eps(self.step_size, self.norm, "step_size")
        if self.steps < 1 and self.name != "fgsm":
            raise ValueError(f"steps={self.steps}: an iterative attack needs at least one step")
        if self.restarts < 1:
            raise ValueError(f"restarts={self.restarts}: need at least 1")

    def describe(self) -> str:
        """Short human label, e.g. ``PGD-20 linf eps=8/255``."""
        label = "FGSM" if self.name == "fgsm" else f"{self.name.upper()}-{self.steps}"
        eps = f"{self.eps * 255:g}/255" if self.norm == "linf" else f"{self.eps:g}"
        return f"{label} {self.norm} eps={eps}"


# Paper presets (Rice et al. / official AWP): train-time PGD-10 in train mode, eval in eval mode.
PGD10_TRAIN = AttackConfig(name="pgd", steps=10, step_size=2 / 255, mode="train")
PGD20_EVAL = AttackConfig(name="pgd", steps=20, step_size=2 / 255, mode="eval")
CW20_EVAL = AttackConfig(name="cw", steps=20, step_size=2 / 255, mode="eval")
FGSM_EVAL = AttackConfig(name="fgsm", steps=1, step_size=8 / 255, random_start="none", mode="eval")


def _resolve_type(tp: Any) -> Any:
    """Strip Optional[...] / X | None to X."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Build dataclass ``cls`` from a (JSON) dict, recursing into nested dataclasses.

    Raises:
        ValueError: listing unknown keys, so a typo in a config file is never silently ignored.
    """
    if not isinstance(data, dict):
        raise ValueError(f"{cls.__name__}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown keys {unknown}; valid keys are {sorted(names)}")
    kwargs = {}
    for key, value in data.items():
        tp = _resolve_type(hints[key])
        if dataclasses.is_dataclass(tp) and isinstance(value, dict):
            value = from_dict(tp, value)
        elif typing.get_origin(tp) is tuple and isinstance(value, list):
            value = tuple(value)
        kwargs[key] = value
    return cls(**kwargs)


def to_dict(obj: Any) -> dict[str, Any]:
    """Dataclass -> JSON-ready dict (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(obj)))


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_dataclass_arguments(
    parser: argparse.ArgumentParser,
    cls: type,
    *,
    skip: tuple[str, ...] = (),
    defaults: Any | None = None,
) -> None:
    """Add one CLI flag per field of ``cls`` (nested dataclasses are flattened).

    Defaults are read from the dataclass, so they are never repeated in the CLI; a nested
    dataclass shows the values of its enclosing field's default (``defaults``: the instance
    whose values are shown). Flags are left at ``None`` when not given, and
    :func:`dataclass_from_arguments` keeps the dataclass default.
    """
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        tp = _resolve_type(hints[f.name])
        field_default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        value = getattr(defaults, f.name) if defaults is not None else field_default
        if dataclasses.is_dataclass(tp):
            add_dataclass_arguments(parser, tp, skip=skip, defaults=value)
            continue
        help_ = f.metadata.get("help", "").replace("%", "%%")  # argparse formats help with %
        if tp is bool:
            parser.add_argument(
                _flag(f.name),
                dest=f.name,
                default=None,
                action=argparse.BooleanOptionalAction,
                help=_with_default(help_, value),
            )
            continue
        conv: Any = {float: parse_number, int: int, str: str}.get(tp, str)
        nargs = None
        if typing.get_origin(tp) is tuple:
            inner = typing.get_args(tp)[0]
            conv = parse_number if inner is float else inner
            nargs = "+"
        # A field whose default depends on another (None = "the method's default") says so.
        shown = (
            f.metadata["shown"]
            if "shown" in f.metadata and value == field_default
            else _show(value)
        )
        parser.add_argument(
            _flag(f.name),
            dest=f.name,
            type=conv,
            nargs=nargs,
            default=None,
            metavar=f.name.upper(),
            help=_with_default(help_, shown),
        )


def _with_default(help_: str, shown: Any) -> str:
    """``help_`` with ``(default: shown)`` appended, unless the text states its own default
    (e.g. an empty "" meaning "derived from the checkpoint")."""
    return help_ if "(default" in help_ else f"{help_} (default: {shown})"


def _show(default: Any) -> Any:
    """A default as a user would type it: 8/255 rather than 0.0313725."""
    if isinstance(default, float):
        k = default * 255
        if 0 < default < 1 and abs(k - round(k)) < 1e-9:
            return f"{round(k)}/255"
        return f"{default:.6g}"
    return default


def dataclass_from_arguments(cls: type[T], ns: argparse.Namespace, base: T | None = None) -> T:
    """Build ``cls`` from parsed flags: values given on the command line replace ``base``'s."""
    base = base if base is not None else cls()
    hints = typing.get_type_hints(cls)
    changes = {}
    for f in dataclasses.fields(cls):
        tp = _resolve_type(hints[f.name])
        if dataclasses.is_dataclass(tp):
            changes[f.name] = dataclass_from_arguments(tp, ns, getattr(base, f.name))
            continue
        value = getattr(ns, f.name, None)
        if value is not None:
            changes[f.name] = tuple(value) if isinstance(value, list) else value
    return dataclasses.replace(base, **changes)


@dataclass(frozen=True)
class AWPConfig:
    """Adversarial Weight Perturbation: radius, schedule and warm-up.

    Defaults are the paper's (A=1, K1=10 input steps set by the training attack, K2=1).
    """

    gamma: float = opt(0.01, "relative radius: ||v_l|| <= gamma * ||w_l|| (0.01 AT, 0.005 TRADES)")
    warmup: int = opt(0, "epochs trained without AWP before it starts")
    steps: int = opt(1, "K2: weight ascent steps (projected for K2 > 1)")
    alternations: int = opt(1, "A: alternations; A > 1 regenerates x_adv on w+v between ascents")

    def __post_init__(self) -> None:
        if not 0 <= self.gamma < 1:
            raise ValueError(f"gamma={self.gamma} must be in [0, 1): it is relative to ||w_l||")
        if self.warmup < 0 or self.steps < 1 or self.alternations < 1:
            raise ValueError(
                f"need warmup >= 0, steps >= 1, alternations >= 1; got {self.warmup}, "
                f"{self.steps}, {self.alternations}"
            )


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
        _choice(self.attack_mode, MODES, "attack mode")
        _choice(self.attack_start, RANDOM_STARTS, "random start")


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
    _choice(method, METHODS, "method")
    return METHOD_DEFAULTS[method]
