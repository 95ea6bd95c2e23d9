"""Command-line flags generated from the configuration dataclasses, and read back into them.

Every field of a config becomes a flag whose default and help come from the field
(:func:`awp.config.opt`), so defaults live in one place. Nested configs are flattened
(``TrainConfig.model.width`` is ``--width``; ``FlatnessConfig.attack.steps`` is
``--attack-steps``, the name its field declares); an optional nested config (a landscape's
attack) is dropped by ``--attack none``. Flags are left at None when not given, and
:func:`dataclass_from_arguments` then keeps the config's value.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any, TypeVar

from awp.config import bounds_text, parse_number, resolve_type

T = TypeVar("T")


def integer(text: str) -> int:
    """An integer flag's value: ``100000``, or ``1e5`` when it is a whole number.

    Raises:
        ValueError: (argparse then says "invalid integer value") for text that is no integer.
    """
    try:
        return int(text)
    except ValueError:
        value = float(text)
        if not value.is_integer():
            raise
        return int(value)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _dest(f: dataclasses.Field) -> str:
    return f.metadata.get("flag", f.name)


def _nullable(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in (
        typing.get_args(tp)
    )


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _with_default(help_: str, shown: Any) -> str:
    """``help_`` with ``(default: shown)`` appended, unless the text states its own default."""
    return help_ if "(default" in help_ else f"{help_} (default: {shown})"


def _show(default: Any) -> Any:
    """A default as a user would type it: 8/255 rather than 0.0313725."""
    if isinstance(default, float):
        k = default * 255
        if 0 < default < 1 and abs(k - round(k)) < 1e-9:
            return f"{round(k)}/255"
        return f"{default:.6g}"
    if isinstance(default, tuple):
        return " ".join(str(_show(d)) for d in default)
    return default


def add_dataclass_arguments(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    cls: type,
    *,
    skip: tuple[str, ...] = (),
    defaults: Any | None = None,
    nullable: bool = False,
) -> None:
    """Add one flag per field of ``cls`` (nested dataclasses flattened).

    Args:
        parser: the parser or argument group.
        cls: the config dataclass.
        skip: field names (at any depth) left off the command line.
        defaults: the instance whose values ``--help`` shows (a nested config shows its
            enclosing field's default).
        nullable: ``cls`` is an optional nested config: its selecting field (``selects=True``
            in its metadata) also accepts ``none``.
    """
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip or f.metadata.get("cli", True) is False:
            continue
        tp = resolve_type(hints[f.name])
        value = getattr(defaults, f.name) if defaults is not None else _field_default(f)
        if dataclasses.is_dataclass(tp):
            shown = value if value is not None else tp()
            add_dataclass_arguments(
                parser, tp, skip=skip, defaults=shown, nullable=_nullable(hints[f.name])
            )
            continue
        help_ = f.metadata.get("help", "").replace("%", "%%")  # argparse formats help with %
        names = [_flag(_dest(f)), *(_flag(a) for a in f.metadata.get("aliases", ()))]
        if tp is bool:
            parser.add_argument(
                *names[:1],
                dest=_dest(f),
                default=None,
                action=argparse.BooleanOptionalAction,
                help=_with_default(help_, value),
            )
            continue
        conv: Any = {float: parse_number, int: integer, str: str}.get(tp, str)
        nargs: Any = None
        extra: dict[str, Any] = {}
        if "const" in f.metadata:  # `--flag` alone means the field's const (`--flag [VALUE]`)
            nargs, extra = "?", {"const": f.metadata["const"]}
        if typing.get_origin(tp) is tuple:
            inner = typing.get_args(tp)[0]
            conv = {float: parse_number, int: integer}.get(inner, inner)
            nargs = "+"
        if nullable and f.metadata.get("selects"):
            help_ += " | none"
        if f.metadata.get("bounds"):  # the range check_bounds enforces
            help_ += f"; range [{bounds_text(f.metadata['bounds'])}]"
        # A field whose default depends on another (None = "the method's default") says so.
        default_shown = defaults is None or value == _field_default(f)
        shown = f.metadata["shown"] if "shown" in f.metadata and default_shown else _show(value)
        parser.add_argument(
            *names,
            dest=_dest(f),
            type=conv,
            nargs=nargs,
            default=None,
            metavar=f.metadata.get("metavar", _dest(f).upper()),
            help=_with_default(help_, shown),
            **extra,
        )


def _given(cls: type, ns: argparse.Namespace) -> bool:
    """Whether any flag of ``cls`` (or of its nested configs) was given."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = resolve_type(hints[f.name])
        if dataclasses.is_dataclass(tp):
            if _given(tp, ns):
                return True
        elif getattr(ns, _dest(f), None) is not None:
            return True
    return False


def dataclass_from_arguments(cls: type[T], ns: argparse.Namespace, base: T | None = None) -> T:
    """Build ``cls`` from parsed flags: values given on the command line replace ``base``'s.

    A config with an ``updated(**changes)`` method (:class:`awp.config.AttackConfig`) applies
    the changes through it, so a new threat model keeps consistent radii.
    """
    base = base if base is not None else cls()
    hints = typing.get_type_hints(cls)
    changes: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        tp = resolve_type(hints[f.name])
        if dataclasses.is_dataclass(tp):
            current = getattr(base, f.name)
            selector = next((g for g in dataclasses.fields(tp) if g.metadata.get("selects")), None)
            if selector is not None and getattr(ns, _dest(selector), None) == "none":
                if not _nullable(hints[f.name]):
                    raise ValueError(f"{_flag(_dest(selector))} none is not allowed here")
                changes[f.name] = None
            elif current is not None or _given(tp, ns):
                changes[f.name] = dataclass_from_arguments(tp, ns, current)
            continue
        value = getattr(ns, _dest(f), None)
        if value is not None:
            changes[f.name] = tuple(value) if isinstance(value, list) else value
    if not changes:
        return base
    updated = getattr(base, "updated", None)
    return updated(**changes) if updated is not None else dataclasses.replace(base, **changes)
