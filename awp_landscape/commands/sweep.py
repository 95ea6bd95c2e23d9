"""``awp sweep``: AWP's gamma trade-off, one run per gamma (and seed), measured and plotted."""

from __future__ import annotations

import argparse

from awp_landscape import sweep
from awp_landscape.commands.sweep_parser import register as register
from awp_landscape.console import say
from awp_landscape.flags import dataclass_from_arguments
from awp_landscape.launch import LaunchConfig
from awp_landscape.sweep import SweepConfig


def run(args: argparse.Namespace) -> int:
    """Train and measure every gamma and seed (reusing what is done), write the summary."""
    cfg = dataclass_from_arguments(SweepConfig, args)
    launch = dataclass_from_arguments(LaunchConfig, args)
    path = sweep.run_sweep(cfg, progress=not args.no_progress, launch=launch)
    say(f"sweep: {path} (and sweep.csv, sweep_tradeoff.png, sweep_gap_flatness.png)")
    return 0
