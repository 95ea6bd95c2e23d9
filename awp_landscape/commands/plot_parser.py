"""The flags of ``awp plot``, built from modules that import no torch, so that ``awp plot
--help`` answers at once; :mod:`awp_landscape.commands.plot` runs it."""

from __future__ import annotations

import argparse
from pathlib import Path

from awp.config import parse_number
from awp_landscape.flags import add_bounded_argument, integer
from landscape.config import VTP_METHODS as METHODS

PLOTS = ("auto", "curve", "contour", "contourf", "heatmap", "surface")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``awp plot`` to the ``awp`` command."""
    p = subparsers.add_parser(
        "plot",
        help="draw landscape h5 files (curves, contours, heatmaps, 3-D surfaces)",
        description=(
            "Draw the h5 files written by 'awp landscape' (or loss-landscape's "
            "plot_surface.py). Curves of several files share one figure (AT vs AT-AWP); "
            "2-D surfaces get contour, filled contour, heatmap and 3-D views. PNG and PDF."
        ),
    )
    p.add_argument("files", nargs="+", type=Path, help="landscape .h5 files")
    p.add_argument(
        "--metrics",
        nargs="+",
        default=None,
        help="datasets to draw, e.g. test_adv_loss test_loss (default: the adversarial loss "
        "of the test split, else the first loss found)",
    )
    p.add_argument(
        "--plots",
        nargs="+",
        default=["auto"],
        choices=PLOTS,
        help="auto: curves for 1-D files, every view for 2-D files",
    )
    p.add_argument(
        "--band",
        default="std",
        choices=("std", "minmax", "none"),
        help="shaded band of a multi-direction curve: std (mean +- one standard deviation) | "
        "minmax (the range over directions) | none (default: std)",
    )
    p.add_argument("--labels", nargs="+", default=None, help="legend labels, one per file")
    for flag, which in (("--vmin", "lowest"), ("--vmax", "highest")):
        add_bounded_argument(
            p,
            flag,
            type=parse_number,
            bounds=(None, None),
            default=None,
            help=f"{which} level of 2-D views, in the metric's units (default: the data's)",
        )
    add_bounded_argument(
        p,
        "--levels",
        type=integer,
        bounds=(1, 1000),
        default=None,
        help="number of contour levels of 2-D views (default: 15; a trajectory's: 14)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="folder for the figures (default: the first file's folder)",
    )
    p.add_argument(
        "--formats",
        nargs="+",
        default=["png", "pdf"],
        choices=("png", "pdf", "svg"),
        help="figure file formats: png | pdf | svg (default: png pdf)",
    )
    g = p.add_argument_group("ParaView (VTK XML PolyData, the [viz] extra)")
    g.add_argument(
        "--vtp",
        action="store_true",
        help="also write every 2-D surface as LABEL_METRIC.vtp: points (x, y, metric), every "
        "metric of the file as a point array",
    )
    add_bounded_argument(
        g,
        "--vtp-points",
        type=integer,
        bounds=(0, 4096),
        why="the mesh holds N x N points and 2 (N - 1)^2 triangles",
        default=0,
        metavar="N",
        help="resample onto N x N points over the same ranges (0 = the file's grid)",
    )
    g.add_argument(
        "--vtp-method",
        default="cubic",
        choices=tuple(METHODS),
        help="interpolation of --vtp-points (scipy's RegularGridInterpolator; default cubic)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """``awp plot``: the command's code, imported when it runs."""
    from awp_landscape.commands import plot

    return plot.run(args)
