"""The ``awp`` command: one subcommand per module of :mod:`awp_landscape.commands`."""

from __future__ import annotations

import argparse
import errno
import logging
import sys
from collections.abc import Sequence

from awp.checkpoint import CheckpointError
from awp.distributed import PeerError
from awp.extras import MissingDependencyError
from awp.io import OutputBusy
from awp_landscape.commands import (
    certify,
    connect,
    correlate,
    demo,
    evaluate,
    flatness,
    gap,
    hessian,
    hist,
    landscape,
    plot,
    report,
    spectra,
    sweep,
    train,
)
from awp_landscape.console import CLIError
from awp_landscape.inputs import resolve_robustbench

# In the order `awp --help` lists them.
COMMANDS = (
    train,
    evaluate,
    landscape,
    connect,
    plot,
    hist,
    spectra,
    flatness,
    gap,
    hessian,
    correlate,
    certify,
    report,
    demo,
    sweep,
)


def build_parser() -> argparse.ArgumentParser:
    """The full ``awp`` parser."""
    parser = argparse.ArgumentParser(
        prog="awp",
        description="Adversarial training with and without AWP, weight loss "
        "landscapes, flatness and the robust generalization gap.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``awp`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
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
