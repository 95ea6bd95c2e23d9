"""``awp demo`` and ``awp reproduce``: the whole AWP story, trained, measured and reported."""

from __future__ import annotations

import argparse

from awp_landscape import pipeline
from awp_landscape.commands.demo_parser import register as register
from awp_landscape.console import say
from awp_landscape.flags import dataclass_from_arguments
from awp_landscape.launch import LaunchConfig
from awp_landscape.pipeline import PRESETS, DemoConfig, ReproduceConfig


def run_demo(args: argparse.Namespace) -> int:
    """``awp demo``."""
    cfg = dataclass_from_arguments(DemoConfig, args)
    launch = dataclass_from_arguments(LaunchConfig, args)
    pipeline.run_configured(cfg, "demo_config.json", progress=not args.no_progress, launch=launch)
    return 0


def run_reproduce(args: argparse.Namespace) -> int:
    """``awp reproduce``."""
    if args.list:
        for name, p in sorted(PRESETS.items()):
            say(f"{name:24s} {p.dataset} {p.model} {p.method} (+AWP), {p.epochs} epochs, lr {p.lr}")
        return 0
    cfg = dataclass_from_arguments(ReproduceConfig, args)
    launch = dataclass_from_arguments(LaunchConfig, args)
    pipeline.run_configured(
        cfg, "reproduce_config.json", progress=not args.no_progress, launch=launch
    )
    return 0
