"""Command-line flags generated from the configuration dataclasses, and read back into them.

Every field of a config becomes a flag whose default and help come from the field
(:func:`awp.config.opt`), so defaults live in one place. Nested configs are flattened
(``TrainConfig.model.width`` is ``--width``; ``FlatnessConfig.attack.steps`` is
``--attack-steps``, the name its field declares); an optional nested config (a landscape's
attack) is dropped by ``--attack none``. Flags are left at None when not given, and
:func:`dataclass_from_arguments` then keeps the config's value.

One vocabulary for every command (docs/cli.md), spelled in one place, the field's own metadata:
``flag`` names its flag where that differs from the field (stored config.json and result files
keep the field's key), and ``old`` lists earlier spellings, kept as hidden aliases that still
work and print a one-line deprecation note naming the flag (:class:`DeprecatedFlag`).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import importlib.util
import re
import sys
import types
import typing
from pathlib import Path
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


# The release that renamed the flags whose fields carry ``old`` spellings (docs/cli.md,
# "Renamed flags"): the old spellings and meanings are those of the versions before it.
RENAMED_IN = "0.1.0"


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _dest(f: dataclasses.Field, cls: type | None = None) -> str:
    """The flag of a field without ``--``, underscored: its ``flag`` metadata, else its name."""
    return f.metadata.get("flag", f.name)


def _old_names(f: dataclasses.Field, cls: type) -> tuple[str, ...]:
    """The deprecated spellings of a field's flag (with ``--``): its ``old`` metadata."""
    return tuple(_flag(n) for n in f.metadata.get("old", ()))


class NotedFlag(argparse.Action):
    """A flag that stores its value and prints one note on stderr when given (``note``)."""

    def note(self, option_string: str | None) -> str:
        raise NotImplementedError

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        print(f"{parser.prog}: note: {self.note(option_string)}", file=sys.stderr)
        setattr(namespace, self.dest, values)


class DeprecatedFlag(NotedFlag):
    """An old spelling of a renamed flag: stores like the new one and says, on stderr, which
    flag replaces it (hidden from ``--help``)."""

    def __init__(self, option_strings: list[str], dest: str, new: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, **kwargs)
        self.new = new

    def note(self, option_string: str | None) -> str:
        return f"{option_string} is deprecated and goes in the next release; write {self.new}"


def deprecated_alias(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup, old: str, new: str, **kwargs: Any
) -> None:
    """Accept ``old`` (hidden from ``--help``) for the already added flag ``new``, with a
    deprecation note naming ``new`` when it is used; ``kwargs`` as ``new``'s (type, nargs)."""
    parser.add_argument(
        old,
        dest=new.lstrip("-").replace("-", "_"),
        default=argparse.SUPPRESS,
        help=argparse.SUPPRESS,
        action=DeprecatedFlag,
        new=new,
        **kwargs,
    )


def in_range(conv: Any, bounds: tuple[float | None, float | None], *, why: str = "") -> Any:
    """A flag's type that also refuses values outside ``bounds`` (inclusive; None: unbounded),
    as :func:`awp.config.check_bounds` does for a config's fields; argparse prints the reason
    after the flag's name."""
    low, high = bounds

    def convert(text: str) -> Any:
        value = conv(text)
        for v in value if isinstance(value, (tuple, list)) else (value,):
            if (low is not None and v < low) or (high is not None and v > high):
                over = why and high is not None and v > high
                raise argparse.ArgumentTypeError(
                    f"{text} is outside [{bounds_text(bounds)}]" + (f": {why}" if over else "")
                )
        return value

    convert.__name__ = getattr(conv, "__name__", "value")
    return convert


def add_bounded_argument(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    *names: str,
    type: Any,  # noqa: A002 - argparse's
    bounds: tuple[float | None, float | None],
    help: str,  # noqa: A002 - argparse's
    why: str = "",
    **kwargs: Any,
) -> None:
    """``add_argument`` for a number that is no config field: ``bounds`` refused by its type
    (:func:`in_range`) and stated in ``--help`` (``; range [low, high]``, before the default),
    as every config field's range is."""
    stated = f"; range [{bounds_text(bounds)}]"
    head, sep, tail = help.partition(" (default")
    parser.add_argument(
        *names, type=in_range(type, bounds, why=why), help=f"{head}{stated}{sep}{tail}", **kwargs
    )


def explain_default(parser: argparse.ArgumentParser, flag: str, why: str) -> None:
    """Add to ``flag``'s help why this command's default differs from the vocabulary's."""
    action = next(a for a in parser._actions if flag in a.option_strings)
    action.help = f"{action.help}; {why}"


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
    """``help_`` with ``(default: shown)`` appended, unless the text states its own default
    (an empty default, "" or (), reads ``none``)."""
    if "(default" in help_:
        return help_
    return f"{help_} (default: {'none' if shown in ('', None, ()) else shown})"


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
        dest = _dest(f, cls)
        names = [_flag(dest)]
        if tp is bool:
            parser.add_argument(
                *names[:1],
                dest=dest,
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
            dest=dest,
            type=conv,
            nargs=nargs,
            default=None,
            metavar=f.metadata.get("metavar", dest.upper()),
            help=_with_default(help_, shown),
            **extra,
        )
        old = _old_names(f, cls)
        if old:
            parser.add_argument(
                *old,
                dest=dest,
                type=conv,
                nargs=nargs,
                default=None,
                help=argparse.SUPPRESS,
                action=DeprecatedFlag,
                new=names[0],
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
        elif getattr(ns, _dest(f, cls), None) is not None:
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
            if selector is not None and getattr(ns, _dest(selector, tp), None) == "none":
                if not _nullable(hints[f.name]):
                    raise ValueError(f"{_flag(_dest(selector, tp))} none is not allowed here")
                changes[f.name] = None
            elif current is not None or _given(tp, ns):
                changes[f.name] = dataclass_from_arguments(tp, ns, current)
            continue
        value = getattr(ns, _dest(f, cls), None)
        if value is not None:
            changes[f.name] = tuple(value) if isinstance(value, list) else value
    if not changes:
        return base
    updated = getattr(base, "updated", None)
    try:
        return updated(**changes) if updated is not None else dataclasses.replace(base, **changes)
    except ValueError as err:
        raise ValueError(_current_names(str(err), cls)) from err


def _current_names(text: str, cls: type) -> str:
    """A config's error message in the command line's words: a flag it names by the field's
    own spelling (``(--n)``) becomes the vocabulary's (``(--n-examples)``), and a field it names
    bare becomes its flag (``eig_tol`` -> ``--eig-tol``, ``eig_tol=0`` -> ``--eig-tol=0``), but
    ``name=value`` is kept where the message names the flag already (``top_k=5135 is outside
    [0, 1000] (--top-k)``). A bare name without an underscore (``gamma``) may be a plain word:
    only ``gamma=value`` is replaced."""
    names = {_flag(f.name): _flag(_dest(f)) for f in dataclasses.fields(cls) if _dest(f) != f.name}
    if names:
        pattern = "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))
        text = re.sub(rf"(?<![\w-])({pattern})(?![\w-])", lambda m: names[m.group(1)], text)
    fields = _field_flags(cls)
    pattern = "|".join(re.escape(n) for n in sorted(fields, key=len, reverse=True))

    def flag_of(m: re.Match) -> str:
        name, assigned = m.group(1), m.group(2)
        flag = fields[name]
        if assigned:
            return m.group(0) if flag in text else f"{flag}="
        return flag if "_" in name else name

    return re.sub(rf"(?<![\w.-])({pattern})(?![\w-])(=?)", flag_of, text)


def _field_flags(cls: type) -> dict[str, str]:
    """Field name -> flag of every field of ``cls`` and of its nested configs that has a flag
    (the outer field wins where two share a name)."""
    hints = typing.get_type_hints(cls)
    flags: dict[str, str] = {}
    nested = []
    for f in dataclasses.fields(cls):
        tp = resolve_type(hints[f.name])
        if dataclasses.is_dataclass(tp):
            nested.append(tp)
        elif f.metadata.get("cli", True) is not False:
            flags[f.name] = _flag(_dest(f, cls))
    for tp in nested:
        for name, flag in _field_flags(tp).items():
            flags.setdefault(name, flag)
    return flags


def add_run_arguments(
    p: argparse.ArgumentParser, *, out_help: str | None = None, device: bool = True
) -> None:
    """The flags every command that computes shares: ``--out`` (where ``out_help`` says what
    it is; a command whose config has its own ``out`` has none here), ``--device`` (likewise)
    and ``--no-progress``."""
    if out_help is not None:
        p.add_argument("--out", type=Path, default=None, help=out_help)
    if device:
        p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def module_doc(name: str) -> str | None:
    """The docstring of module ``name``, read from its source without importing it (a
    command's description, where importing its module would import torch), its markup as
    plain text (``awp demo`` and :data:`x.Y` read awp demo and x.Y); None when the module or
    its source is not found."""
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
        return None
    doc = ast.get_docstring(ast.parse(Path(spec.origin).read_text(encoding="utf-8")), clean=False)
    if doc is None:
        return None
    doc = re.sub(r":[a-z]+:`~?([^`]+)`", r"\1", doc)
    return re.sub(r"``([^`]+)``", r"\1", doc)
