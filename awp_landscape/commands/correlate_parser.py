"""The flags of ``awp correlate``, built from modules that import no torch, so that ``awp correlate
--help`` answers at once; :mod:`awp_landscape.commands.correlate` runs it."""

from __future__ import annotations

import argparse
from pathlib import Path

from awp.config import parse_number
from awp_landscape.flags import add_bounded_argument, deprecated_alias, in_range, integer


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``awp correlate``."""
    p = sub.add_parser(
        "correlate",
        help="correlate a flatness measure with the robust gap across checkpoints",
        description="Join result tables (flatness.json, gap.json, or CSV) on the checkpoint's "
        "sha256 and report Kendall tau-b, Spearman and Pearson between two columns, with "
        "p-values and intervals (the union of a percentile bootstrap and the analytic Fisher-z "
        "interval, both printed), pooled and per method; and a scatter figure.",
    )
    p.add_argument("tables", nargs="+", type=Path, help="result tables (.json or .csv)")
    p.add_argument("--x", default="flatness", help="column on x (default: flatness)")
    p.add_argument("--y", default="gap", help="column on y (default: gap)")
    p.add_argument(
        "--where",
        action="append",
        default=[],
        metavar="COL=VALUE",
        help="keep rows whose COL equals VALUE (tables without COL are not filtered), "
        "e.g. --where kind=expected --where alpha=0.1; repeatable",
    )
    p.add_argument("--by", default="method", help="grouping column (default: method)")
    add_bounded_argument(
        p,
        "--n-boot",
        type=integer,
        bounds=(0, 1_000_000),
        why="every resample recomputes every correlation",
        default=1000,
        help="bootstrap resamples (0 = no bootstrap interval) (default: 1000)",
    )
    add_bounded_argument(
        p,
        "--confidence",
        type=parse_number,
        bounds=(0, 1),
        default=0.95,
        help="interval level, strictly between 0 and 1 (default: 0.95)",
    )
    add_bounded_argument(
        p,
        "--bootstrap-seed",
        type=integer,
        bounds=(0, None),
        default=0,
        help="seed of the bootstrap resamples (default: 0)",
    )
    deprecated_alias(p, "--seed", "--bootstrap-seed", type=in_range(integer, (0, None)))
    p.add_argument("--no-figures", action="store_true", help="only tables, no PNG/PDF")
    p.add_argument(
        "--out", type=Path, default=None, help="results folder (default: the first table's)"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """``awp correlate``: the command's code, imported when it runs."""
    from awp_landscape.commands import correlate

    return correlate.run(args)
