"""``awp sweep``: AWP's gamma trade-off, and any grid of training or measurement settings.

Its flags come from :mod:`awp_landscape.sweep_config`, which imports no torch; the sweep is
imported when it runs.
"""

from __future__ import annotations

import argparse

from awp_landscape.console import say
from awp_landscape.flags import (
    dataclass_from_arguments,
    module_doc,
)
from awp_landscape.launch import LaunchConfig, add_pipeline_arguments
from awp_landscape.sweep_config import SweepConfig


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``awp sweep``."""
    p = sub.add_parser(
        "sweep",
        help="AWP's gamma trade-off and grids of settings: accuracy, gap and flatness against them",
        description=module_doc("awp_landscape.sweep"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_pipeline_arguments(p, SweepConfig)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Train and measure every gamma and seed (reusing what is done), write the summary."""
    from awp_landscape import sweep

    cfg = dataclass_from_arguments(SweepConfig, args)
    launch = dataclass_from_arguments(LaunchConfig, args)
    path = sweep.run_sweep(cfg, progress=not args.no_progress, launch=launch)
    say(f"sweep: {path} (and sweep.csv, sweep_tradeoff.png, sweep_gap_flatness.png)")
    return 0
