"""The flags of ``awp demo`` and ``awp reproduce``, built from modules that import no torch,
so that their ``--help`` answers at once; :mod:`awp_landscape.commands.demo` runs them."""

from __future__ import annotations

import argparse

from awp_landscape.commands.common import module_doc
from awp_landscape.flags import add_dataclass_arguments
from awp_landscape.launch import LaunchConfig
from awp_landscape.plans import DemoConfig, ReproduceConfig


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``awp demo`` and ``awp reproduce``."""
    p = sub.add_parser(
        "demo",
        help="AT vs AT-AWP on real CIFAR-10, measured and reported",
        description=module_doc("awp_landscape.pipeline"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_dataclass_arguments(p, DemoConfig)
    add_dataclass_arguments(p.add_argument_group("independent runs as jobs"), LaunchConfig)
    p.set_defaults(func=run_demo)

    r = sub.add_parser(
        "reproduce",
        help="a paper protocol with and without AWP (GPU), then the same analyses and report",
        description="Train a paper protocol (--preset; --list shows them) with and without "
        "AWP, once per seed, then run the demo's analyses at the paper's sizes and write the "
        "report. Made for a GPU: the presets train 200 epochs on the full datasets.",
    )
    r.add_argument("--list", action="store_true", help="list the presets and exit")
    r.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_dataclass_arguments(r, ReproduceConfig)
    add_dataclass_arguments(r.add_argument_group("independent runs as jobs"), LaunchConfig)
    r.set_defaults(func=run_reproduce)


def run_demo(args: argparse.Namespace) -> int:
    """``awp demo``: the command's code, imported when it runs."""
    from awp_landscape.commands import demo

    return demo.run_demo(args)


def run_reproduce(args: argparse.Namespace) -> int:
    """``awp reproduce``: the command's code, imported when it runs."""
    from awp_landscape.commands import demo

    return demo.run_reproduce(args)
