"""The ``awp`` command: one subcommand per module of :mod:`awp_landscape.commands`."""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import re
import sys
import typing
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from awp_landscape.console import CLIError

# The commands that are not measures: name -> (module of awp_landscape.commands, one-line
# summary). Each module registers its commands with a torch-free ``register``; the measures'
# commands come from the registry (awp_landscape.measures.MEASURES), whose modules import no
# torch either, so `awp --help` and every `awp CMD --help` answer without it. A module that
# registers several commands (demo: demo and reproduce) is listed once per command.
BEFORE: dict[str, tuple[str, str]] = {
    "train": (
        "train",
        "adversarial training (AT, TRADES, MART), with or without AWP, SAM, ASAM, RWP",
    ),
}
AFTER: dict[str, tuple[str, str]] = {
    "plot": ("plot", "draw landscape h5 files (curves, contours, heatmaps, 3-D surfaces)"),
    "report": ("report", "self-contained HTML report (+ markdown) of result folders"),
    "demo": ("demo", "AT vs AT-AWP on real CIFAR-10, measured and reported"),
    "reproduce": (
        "demo",
        "a paper protocol with and without AWP (GPU), then the same analyses and report",
    ),
    "sweep": (
        "sweep",
        "AWP's gamma trade-off and grids of settings: accuracy, gap and flatness against them",
    ),
}


def _measures() -> dict[str, Any]:
    """The measures with a command, by command name (the registry imports no torch)."""
    from awp_landscape.measures import MEASURES

    return {m.command: m for m in MEASURES if m.command is not None}


def _aliases() -> dict[str, str]:
    """Deprecated command names -> the command's name."""
    return {old: name for name, m in _measures().items() for old in m.aliases}


def command_names() -> tuple[str, ...]:
    """Every command, in the order ``awp --help`` lists them."""
    return (*BEFORE, *_measures(), *AFTER)


ALL = "*"


def package_version() -> str:
    """The installed awp-landscape version (``unknown`` when run from an uninstalled tree)."""
    try:
        return version("awp-landscape")
    except PackageNotFoundError:
        return "unknown"


class Parser(argparse.ArgumentParser):
    """argparse, with a hint for a value that starts with a minus (``--x -1:1:5``), which
    argparse reads as another option."""

    argv: Sequence[str] = ()

    def error(self, message: str) -> typing.NoReturn:  # noqa: D102 - argparse's
        self.exit(2, f"{self.format_usage()}{self.prog}: error: {message}{self._hint(message)}\n")

    def _hint(self, message: str) -> str:
        m = re.match(r"argument ((?:-\w|--[\w-]+)(?:/[\w-]+)*): expected .*argument", message)
        if m is None:
            return ""
        names = m.group(1).split("/")
        lead = "\n  a value that starts with '-' is read as an option: write"
        argv = list(Parser.argv)
        for token, value in zip(argv, argv[1:]):
            if token in names and value.startswith("-") and not value.startswith("--"):
                return f"{lead} {token}={value}"
        return f"{lead} {names[-1]}=VALUE"


def command_of(argv: Sequence[str]) -> str | None:
    """The command named in ``argv`` (the first word that is not an option; a deprecated name
    gives the command's), if any."""
    for token in argv:
        if not token.startswith("-"):
            token = _aliases().get(token, token)
            return token if token in command_names() else None
    return None


def build_parser(only: str | None = ALL) -> argparse.ArgumentParser:
    """The ``awp`` parser.

    Args:
        only: the command whose full parser is built (its module imported); the others get a
            light entry (name and summary) that is enough for ``awp --help``. ``ALL`` (the
            default) builds every command's parser; None builds none.
    """
    parser = Parser(
        prog="awp",
        description="Adversarial training with and without AWP, weight loss "
        "landscapes, flatness and the robust generalization gap. The flags mean the same "
        "in every command: docs/cli.md.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument(
        "-V",
        "--version",
        action="version",
        version=f"awp {package_version()}",
        help="print the version of awp-landscape and exit",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    measures, others = _measures(), {**BEFORE, **AFTER}
    wanted = {others[n][0] if n in others else n for n in command_names() if only in (ALL, n)}
    registered: set[str] = set()
    for name in command_names():
        unit = others[name][0] if name in others else name  # a module, or a measure
        if unit not in wanted:  # a light entry: enough for `awp --help`
            if name in measures:
                m = measures[name]
                sub.add_parser(name, aliases=list(m.aliases), help=m.summary, add_help=False)
            else:
                sub.add_parser(name, help=others[name][1], add_help=False)
        elif name in measures:
            measures[name].register(sub)
        elif unit not in registered:  # it registers all its commands (demo: demo, reproduce)
            registered.add(unit)
            importlib.import_module(f"awp_landscape.commands.{unit}").register(sub)
    # A module registers all its commands: keep the table's order in `awp --help`.
    order = {name: i for i, name in enumerate(command_names())}
    sub._choices_actions.sort(key=lambda a: order.get(a.dest, len(order)))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``awp`` console script; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    Parser.argv = argv
    parser = build_parser(only=command_of(argv))
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    canonical = getattr(args, "canonical", args.command)
    if args.command != canonical:
        print(
            f"awp: note: awp {args.command} is deprecated and goes in the next release; write "
            f"awp {canonical}",
            file=sys.stderr,
        )
    # Imported here, after parsing: `awp --help` does not load torch.
    from awp.checkpoint import CheckpointError
    from awp.distributed import PeerError
    from awp.extras import MissingDependencyError
    from awp.io import OutputBusy
    from awp_landscape.inputs import resolve_robustbench

    try:
        if hasattr(args, "robustbench"):  # a command that takes checkpoints
            resolve_robustbench(args)
        return int(args.func(args) or 0)
    except (CLIError, PeerError, OutputBusy, MissingDependencyError, ValueError, OSError) as err:
        quiet = CLIError | CheckpointError | OutputBusy | MissingDependencyError
        if args.verbose and not isinstance(err, quiet):
            raise
        print(f"awp {args.command}: error: {message(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            f"awp {args.command}: interrupted; finished work is on disk "
            f"(rerun with --resume where the command has it)",
            file=sys.stderr,
        )
        return 130


def message(err: BaseException) -> str:
    """One line for the user: ours as written; an OS error names the file and the reason
    (read-only, permission, disk full), without Python's errno prefix."""
    if isinstance(err, OSError) and err.filename is not None and err.strerror:
        verb = "cannot write" if err.errno in _WRITE_ERRORS else "cannot use"
        fix = "; free space or choose another --out" if err.errno in _FULL else ""
        return f"{verb} {err.filename}: {err.strerror}{fix}"
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_WRITE_ERRORS = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, *_FULL)


if __name__ == "__main__":
    sys.exit(main())
