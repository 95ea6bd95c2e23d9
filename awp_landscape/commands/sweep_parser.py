"""The flags of ``awp sweep``, built from modules that import no torch, so that ``awp sweep
--help`` answers at once; :mod:`awp_landscape.commands.sweep` runs it."""

from __future__ import annotations

import argparse

from awp_landscape.commands.common import module_doc
from awp_landscape.flags import add_dataclass_arguments
from awp_landscape.launch import LaunchConfig
from awp_landscape.sweep_config import SweepConfig


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``awp sweep``."""
    p = sub.add_parser(
        "sweep",
        help="AWP's gamma trade-off: natural vs robust accuracy, gap and flatness against gamma",
        description=module_doc("awp_landscape.sweep"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_dataclass_arguments(p, SweepConfig)
    add_dataclass_arguments(p.add_argument_group("independent runs as jobs"), LaunchConfig)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """``awp sweep``: the command's code, imported when it runs."""
    from awp_landscape.commands import sweep

    return sweep.run(args)
