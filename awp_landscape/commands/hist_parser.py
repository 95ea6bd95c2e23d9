"""The flags of ``awp hist``, built from modules that import no torch, so that ``awp hist
--help`` answers at once; :mod:`awp_landscape.commands.hist` runs it."""

from __future__ import annotations

import argparse
from pathlib import Path

from awp.config import parse_number
from awp_landscape.checkpoint_flags import add_checkpoint_arguments
from awp_landscape.commands.common import add_run_arguments
from awp_landscape.flags import add_bounded_argument, integer


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``awp hist``."""
    p = sub.add_parser(
        "hist",
        help="per-layer weight statistics, KS/Wasserstein distances and histograms",
        description="Per-layer weight statistics of checkpoints (matched by layer name), "
        "KS statistic and Wasserstein-1 distance between them, overlaid histograms "
        "(rebuttal R#1 Q3) and statistics against depth.",
    )
    p.add_argument(
        "checkpoints",
        nargs="*",
        type=Path,
        help="checkpoints (.pt; or --robustbench NAME) to compare",
    )
    p.add_argument("--labels", nargs="+", help="names in the legend (default: AT / AT-AWP ...)")
    p.add_argument(
        "--layers",
        nargs="+",
        default=["weights"],
        help="layers measured: weights (conv+linear, default) | all | conv | linear | norm | "
        "bias | first-conv | last-conv | first-linear | last-linear | names | glob patterns",
    )
    p.add_argument(
        "--plot-layers",
        nargs="+",
        default=["last-conv"],
        help="layers drawn as histograms, among --layers (default: last-conv, the rebuttal's)",
    )
    add_bounded_argument(
        p,
        "--bins",
        type=integer,
        bounds=(1, 100_000),
        why="every layer's histogram of every checkpoint is stored with its bins",
        default=80,
        help="histogram bins (default: 80)",
    )
    add_bounded_argument(
        p,
        "--clip-quantile",
        type=parse_number,
        bounds=(0, 1),
        default=None,
        help="histogram range: this quantile of |w| instead of the max (e.g. 0.999; above 0)",
    )
    p.add_argument("--no-figures", action="store_true", help="only tables, no PNG/PDF")
    add_checkpoint_arguments(p, dataset_help="dataset (only for checkpoints from elsewhere)")
    add_run_arguments(
        p, out_help="results folder (default: <run>/analysis when all checkpoints are from one run)"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """``awp hist``: the command's code, imported when it runs."""
    from awp_landscape.commands import hist

    return hist.run(args)
