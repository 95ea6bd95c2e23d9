"""The ``awp`` command: one subcommand per module of :mod:`awp_landscape.commands`."""

from __future__ import annotations

import _thread
import argparse
import contextlib
import errno
import importlib
import logging
import os
import re
import signal
import sys
import threading
import types
import typing
from collections.abc import Iterator, Sequence
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
    # Imported here: importlib.metadata takes a while to import, and until main() runs a
    # Ctrl-C ends the process with a traceback.
    from importlib.metadata import PackageNotFoundError, version

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
    """Entry point of the ``awp`` console script; returns the exit code.

    A Ctrl-C at any moment, start-up (imports, data loading) included, ends the command with
    the "interrupted" line and exit code 130.

    Args:
        argv: the arguments (default: the process's own, ``sys.argv[1:]``: then this is the
            process's entry point, and its exit is not interrupted once the outcome is known).
    """
    entry = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    interrupted = False
    with interrupts_reach_main():
        try:
            code = _run(argv)
        except KeyboardInterrupt:
            prog = " ".join(["awp", *filter(None, [command_of(argv)])])
            print(
                f"{prog}: interrupted; finished work is on disk (rerun with --resume where the "
                "command has it)",
                file=sys.stderr,
            )
            code, interrupted = 130, True
    if entry and threading.current_thread() is threading.main_thread():
        # The outcome is decided: a second Ctrl-C must not turn the exit into a traceback.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if interrupted:
            # CPython ends a process with SIGINT (not exit code 130) once a KeyboardInterrupt
            # has left any eval() of a string (collections.namedtuple's, while torch imports),
            # even when the program handled it: exit here, after the buffers are written.
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    return code


def _run(argv: list[str]) -> int:
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


@contextlib.contextmanager
def interrupts_reach_main() -> Iterator[None]:
    """Deliver every Ctrl-C of a command as a KeyboardInterrupt in the main thread, at a place
    where it can end the command.

    Python raises KeyboardInterrupt at whatever instruction the main thread is running. Two
    kinds of place lose it, both frequent while a command starts (torch, scipy and h5py
    import for seconds):

    - inside an import: torch's import calls Python back from C++ (where the exception aborts
      the process) and library code swallows it; a Ctrl-C that arrives during an import is
      raised as soon as the outermost import in progress returns (a profile function watches
      for it meanwhile);
    - a callback of the garbage collector (a weakref callback, ``__del__``), from which it
      cannot propagate: Python prints "Exception ignored in ..." and goes on; such an
      interrupt is raised again 50 ms later.

    Does nothing where SIGINT is ignored (a job started in the background) or handled by
    someone else, or outside the main thread.
    """
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield
        return

    def again() -> None:  # from another thread, 50 ms later: never inside the caller
        retry = threading.Timer(0.05, _thread.interrupt_main)
        retry.daemon = True
        retry.start()

    def when_imported(frame: types.FrameType, event: str, arg: typing.Any) -> None:
        # A profile function, set only while an interrupt waits for an import to end: raised
        # here, when the outermost import returns, the interrupt leaves the import statement
        # in the code that ran it.
        if event == "return" and frame.f_code is _FIND_AND_LOAD and not _importing(frame.f_back):
            sys.setprofile(None)
            raise KeyboardInterrupt

    def on_sigint(signum: int, frame: types.FrameType | None) -> None:
        if _inside(frame, hook.__code__):
            again()
        elif _importing(frame):
            sys.setprofile(when_imported)
        else:
            sys.setprofile(None)
            raise KeyboardInterrupt

    previous_hook = sys.unraisablehook

    def hook(unraisable: typing.Any) -> None:
        if isinstance(unraisable.exc_value, KeyboardInterrupt):
            again()
            return
        previous_hook(unraisable)

    signal.signal(signal.SIGINT, on_sigint)
    sys.unraisablehook = hook
    try:
        yield
    finally:
        sys.setprofile(None)
        sys.unraisablehook = previous_hook
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _inside(frame: types.FrameType | None, code: types.CodeType) -> bool:
    """Whether ``frame`` runs ``code`` or is called from a frame that does."""
    while frame is not None:
        if frame.f_code is code:
            return True
        frame = frame.f_back
    return False


# importlib's function that imports one module (not yet imported); the import statement's
# frame is the one that called the outermost of them.
_FIND_AND_LOAD = importlib._bootstrap._find_and_load.__code__  # type: ignore[attr-defined]


def _importing(frame: types.FrameType | None) -> bool:
    """Whether ``frame`` runs inside an import (a frame of importlib's bootstrap below it)."""
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib."):
            return True
        frame = frame.f_back
    return False


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
