"""``awp demo`` and ``awp reproduce``: the whole AWP story, trained, measured and reported.

Their flags come from :mod:`awp_landscape.plans`, which imports no torch; the pipeline is
imported when they run.
"""

from __future__ import annotations

import argparse

from awp_landscape.console import say
from awp_landscape.flags import (
    dataclass_from_arguments,
    module_doc,
)
from awp_landscape.launch import LaunchConfig, add_pipeline_arguments
from awp_landscape.plans import PRESETS, DemoConfig, ReproduceConfig


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``awp demo`` and ``awp reproduce``."""
    p = sub.add_parser(
        "demo",
        help="AT vs AT-AWP on real CIFAR-10, measured and reported",
        description=module_doc("awp_landscape.pipeline"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_pipeline_arguments(p, DemoConfig)
    p.set_defaults(func=run_demo)

    r = sub.add_parser(
        "reproduce",
        help="a paper protocol with and without AWP (GPU), then the same analyses and report",
        description="Train a paper protocol (--preset; --list shows them) with and without "
        "AWP, once per seed, then run the demo's analyses at the paper's sizes and write the "
        "report. Made for a GPU: the presets train 200 epochs on the full datasets.",
    )
    r.add_argument("--list", action="store_true", help="list the presets and exit")
    add_pipeline_arguments(r, ReproduceConfig)
    r.set_defaults(func=run_reproduce)


def run_demo(args: argparse.Namespace) -> int:
    """``awp demo``."""
    from awp_landscape import pipeline

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
    from awp_landscape import pipeline

    cfg = dataclass_from_arguments(ReproduceConfig, args)
    launch = dataclass_from_arguments(LaunchConfig, args)
    pipeline.run_configured(
        cfg, "reproduce_config.json", progress=not args.no_progress, launch=launch
    )
    return 0
