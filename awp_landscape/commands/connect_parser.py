"""The flags of ``awp connect``, built from modules that import no torch, so that ``awp connect
--help`` answers at once; :mod:`awp_landscape.commands.connect` runs it."""

from __future__ import annotations

import argparse
from pathlib import Path

from analysis.config import ConnectConfig
from awp_landscape.checkpoint_flags import add_checkpoint_arguments
from awp_landscape.commands.common import add_run_arguments
from awp_landscape.flags import add_dataclass_arguments


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``awp connect``."""
    p = sub.add_parser(
        "connect",
        help="mode connectivity of two checkpoints: the line, a trained curve, the barriers",
        description="Natural and robust loss and accuracy along the straight line from A to B "
        "and along a quadratic Bezier curve whose middle point is trained (robust or clean "
        "objective), BatchNorm re-estimated and the attack regenerated at every point; the "
        "barrier (max along the path minus the mean of the ends) with its t. Writes "
        "connect.h5, connect.json and a figure into --out; resumable, points sharded under "
        "torchrun.",
    )
    p.add_argument("checkpoints", nargs=2, type=Path, help="the two ends A and B (.pt)")
    p.add_argument("--labels", nargs=2, default=None, help="names of A and B")
    add_dataclass_arguments(p, ConnectConfig)
    add_checkpoint_arguments(p, dataset_help="dataset (default: A's)")
    add_run_arguments(
        p,
        out_help="results folder (default: <run>/analysis/connect when A and B come from one "
        "run folder; required otherwise)",
    )
    p.add_argument(
        "--formats",
        nargs="+",
        default=["png", "pdf"],
        choices=("png", "pdf", "svg"),
        help="figure file formats: png | pdf | svg (default: png pdf)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """``awp connect``: the command's code, imported when it runs."""
    from awp_landscape.commands import connect

    return connect.run(args)
