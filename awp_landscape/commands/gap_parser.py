"""The flags of ``awp gap``, built from modules that import no torch, so that ``awp gap
--help`` answers at once; :mod:`awp_landscape.commands.gap` runs it."""

from __future__ import annotations

import argparse

from analysis.config import GapConfig
from awp_landscape.checkpoint_flags import add_checkpoint_arguments, add_checkpoint_list
from awp_landscape.commands.common import add_run_arguments
from awp_landscape.flags import add_dataclass_arguments


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``awp gap``."""
    p = sub.add_parser(
        "gap",
        help="robust generalization gap of many checkpoints",
        description="Robust accuracy on a fixed seeded train subset minus robust accuracy on "
        "a test subset (same attack, eval mode, no augmentation), and the robust loss gap, for "
        "every checkpoint given. Finished checkpoints are kept in <out>/gap/ and skipped when "
        "run again; under torchrun checkpoints are split across ranks.",
    )
    add_checkpoint_list(p, labels=False)
    add_dataclass_arguments(p, GapConfig)
    add_checkpoint_arguments(p, dataset_help="dataset (default: each checkpoint's)")
    add_run_arguments(p, out_help="results folder (default: <run>/analysis)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """``awp gap``: the command's code, imported when it runs."""
    from awp_landscape.commands import gap

    return gap.run(args)
