"""What ``awp sweep`` trains and measures (:class:`SweepConfig`) and its grid of settings
(:func:`grid_points`), in a module that imports no torch, so that ``awp sweep --help`` is built
without it; :mod:`awp_landscape.sweep` runs the sweep and re-exports these names."""

from __future__ import annotations

import argparse
import dataclasses
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from awp.config import check_bounds, opt
from awp_landscape.flags import add_dataclass_arguments, dataclass_from_arguments
from awp_landscape.plans import SweepPlan, TrainingPlan


@dataclass(frozen=True)
class SweepConfig:
    """What ``awp sweep`` trains and measures."""

    out: str = opt("runs/sweep", "sweep folder")
    gammas: tuple[float, ...] = opt(
        (0.0, 0.0025, 0.005, 0.01, 0.02),
        "AWP radii to train (0 = AT without AWP; below 1)",
        bounds=(0, 1),
    )
    seeds: tuple[int, ...] = opt((0,), "seeds; every gamma is trained with each", bounds=(0, None))
    grid: tuple[str, ...] = opt(
        (),
        "settings to vary, each NAME=V1,V2,... with NAME a training or measurement flag "
        "(train_size=250,500 epochs=60,100): every combination is trained and measured",
    )
    training: TrainingPlan = opt(TrainingPlan(), "training of every run")
    plan: SweepPlan = opt(SweepPlan(), "measurement sizes")

    def __post_init__(self) -> None:
        check_bounds(self)
        object.__setattr__(self, "gammas", tuple(float(g) for g in self.gammas))
        object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))
        object.__setattr__(self, "grid", tuple(str(g) for g in self.grid))
        if not self.gammas or any(not 0 <= g < 1 for g in self.gammas):
            raise ValueError(f"gammas={self.gammas}: give values in [0, 1) (0 = AT)")
        if len(set(self.gammas)) != len(self.gammas) or len(set(self.seeds)) != len(self.seeds):
            raise ValueError("gammas and seeds must not repeat")
        if not self.seeds or any(s < 0 for s in self.seeds):
            raise ValueError(f"seeds={self.seeds}: give one or more seeds >= 0")
        grid_points(self)  # refuses an unknown field or a value of the wrong type


def run_name(gamma: float) -> str:
    """``gamma_0``, ``gamma_0.005``: the folder and label of a run."""
    return f"gamma_{gamma:g}"


# --------------------------------------------------------------------------- the grid
@dataclass(frozen=True)
class GridPoint:
    """One combination of the grid: every grid field's value, and the plans it gives.

    ``name`` lists the values that differ from the sweep's other flags (``epochs=60,width=0.5``)
    and is the point's folder under the sweep folder; "" is the sweep folder itself, so a sweep
    without a grid keeps the layout it always had and a grid that grows reuses its points."""

    values: dict[str, Any]
    name: str
    training: TrainingPlan
    plan: SweepPlan

    def folder(self, out: str | Path) -> Path:
        return Path(out) / self.name if self.name else Path(out)


class _GridError(ValueError):
    pass


class _RaisingParser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse would print usage and exit
        raise _GridError(message.replace("invalid parse_number value", "not a number"))


_RESERVED = {"gamma": "--gammas", "gammas": "--gammas", "seed": "--seeds", "seeds": "--seeds"}
_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def _grid_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.Action]]:
    parser = _RaisingParser(add_help=False)
    add_dataclass_arguments(parser, TrainingPlan)
    add_dataclass_arguments(parser, SweepPlan)
    return parser, {a.dest: a for a in parser._actions}


def _value_text(v: Any) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    return f"{v:g}" if isinstance(v, float) else str(v)


def parse_grid(grid: Sequence[str]) -> dict[str, list[str]]:
    """``("train_size=250,500", "epochs=60")`` -> ``{"train_size": ["250", "500"], ...}``,
    with the names checked against the training and measurement flags (one-line errors)."""
    _, actions = _grid_parser()
    out: dict[str, list[str]] = {}
    for item in grid:
        name, sep, values = item.partition("=")
        name = name.strip().lstrip("-").replace("-", "_")
        if not sep or not name:
            raise ValueError(f"--grid {item!r}: write NAME=V1,V2 (for example epochs=60,100)")
        if name in _RESERVED:
            raise ValueError(f"--grid {item!r}: vary {name} with {_RESERVED[name]}, not the grid")
        if name not in actions:
            known = ", ".join(sorted(a for a in actions if a != "help"))
            raise ValueError(f"--grid {item!r}: unknown field {name!r}; fields: {known}")
        if actions[name].nargs == "+":
            raise ValueError(f"--grid {item!r}: {name} takes several values; set it with its flag")
        if name in out:
            raise ValueError(f"--grid names {name} twice; give all its values in one NAME=V1,V2")
        vals = [v.strip() for v in values.split(",")]
        if not values or any(not v for v in vals) or len(set(vals)) != len(vals):
            raise ValueError(f"--grid {item!r}: give distinct values separated by commas")
        out[name] = vals
    return out


def _argv(action: argparse.Action, value: str) -> list[str]:
    flag = action.option_strings[0]
    if isinstance(action, argparse.BooleanOptionalAction):
        low = value.lower()
        if low not in _TRUE + _FALSE:
            raise _GridError(f"argument {flag}: expected true or false, got {value!r}")
        return [flag] if low in _TRUE else ["--no-" + flag[2:]]
    return [flag, value]


def grid_points(cfg: SweepConfig) -> list[GridPoint]:
    """Every combination of ``cfg.grid`` (in the order given), each with its plans and folder.

    Raises:
        ValueError: an unknown field, a value of the wrong type, or settings that the training
            or measurement configs refuse; the message names the grid entry.
    """
    if not cfg.grid:  # the sweep's own settings
        return [GridPoint({}, "", cfg.training, cfg.plan)]
    grid = parse_grid(cfg.grid)
    parser, actions = _grid_parser()
    points = []
    for combo in itertools.product(*grid.values()):
        argv: list[str] = []
        for name, value in zip(grid, combo):
            try:
                argv += _argv(actions[name], value)
            except _GridError as e:
                raise ValueError(f"--grid {name}={value}: {e}") from None
        try:
            ns = parser.parse_args(argv)
            training = dataclass_from_arguments(TrainingPlan, ns, cfg.training)
            plan = dataclass_from_arguments(SweepPlan, ns, cfg.plan)
            for gamma in cfg.gammas:  # TrainConfig's own checks (one perturbation a run...)
                try:
                    training.train_config(Path(cfg.out), seed=0, awp=gamma > 0, gamma=gamma)
                except ValueError as e:
                    if gamma > 0 and "two weight perturbations" in str(e):
                        raise ValueError(
                            f"--gammas {gamma:g} adds AWP to method {training.method}, which "
                            "perturbs the weights itself: sweep such methods with --gammas 0"
                        ) from None
                    raise
        except (_GridError, ValueError, TypeError) as e:
            shown = ",".join(f"{n}={v}" for n, v in zip(grid, combo))
            raise ValueError(f"--grid point {shown}: {e}") from None
        values = {n: _current(n, training, plan) for n in grid}
        name = ",".join(
            f"{n}={_value_text(values[n])}"
            for n in sorted(grid)
            if values[n] != _current(n, cfg.training, cfg.plan)
        )
        points.append(GridPoint(values, name, training, plan))
    return points


def _current(name: str, training: TrainingPlan, plan: SweepPlan) -> Any:
    """The value of the flag ``name`` in the training plan or the measurement plan."""
    for root in (training, plan):
        found = _find(root, name)
        if found is not _MISSING:
            return found
    raise KeyError(name)


_MISSING = object()


def _find(obj: Any, name: str) -> Any:
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            found = _find(value, name)
            if found is not _MISSING:
                return found
        elif f.metadata.get("flag", f.name) == name:
            return value
    return _MISSING
