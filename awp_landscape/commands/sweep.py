"""``awp sweep``: AWP's gamma trade-off, one run per gamma (and seed), measured and plotted."""

from __future__ import annotations

import argparse

from awp_landscape import sweep
from awp_landscape.console import say
from awp_landscape.flags import add_dataclass_arguments, dataclass_from_arguments
from awp_landscape.launch import LaunchConfig
from awp_landscape.sweep import SweepConfig


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``awp sweep``."""
    p = sub.add_parser(
        "sweep",
        help="AWP's gamma trade-off: natural vs robust accuracy, gap and flatness against gamma",
        description=sweep.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_dataclass_arguments(p, SweepConfig)
    add_dataclass_arguments(p.add_argument_group("independent runs as jobs"), LaunchConfig)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Train and measure every gamma and seed (reusing what is done), write the summary."""
    cfg = dataclass_from_arguments(SweepConfig, args)
    launch = dataclass_from_arguments(LaunchConfig, args)
    path = sweep.run_sweep(cfg, progress=not args.no_progress, launch=launch)
    say(f"sweep: {path} (and sweep.csv, sweep_tradeoff.png, sweep_gap_flatness.png)")
    return 0
