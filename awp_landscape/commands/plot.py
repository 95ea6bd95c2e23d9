"""``awp plot FILE.h5 [FILE.h5 ...]``: draw landscape files (ours or loss-landscape's).

Curves (1-D, several directions, interpolation) of every file go into one Figure 1 style
figure, one panel per metric, a band over directions; each 2-D file gets a contour, filled
contour, heatmap and 3-D surface per metric (a trajectory file also its path on the
contour). Figures are written as PNG and PDF. Matplotlib and the landscape code are imported
only when the command runs, so ``awp plot --help`` answers at once.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from awp.config import parse_number
from awp_landscape.flags import add_bounded_argument, integer
from landscape.config import VTP_METHODS as METHODS
from landscape.grid import PLANES

if TYPE_CHECKING:
    from landscape.storage import Surface

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


def default_metrics(names: Sequence[str]) -> list[str]:
    """The metric drawn when none is asked for: test adversarial loss, else the first loss."""
    for preferred in ("test_adv_loss", "train_adv_loss", "test_loss", "train_loss"):
        if preferred in names:
            return [preferred]
    losses = sorted(n for n in names if n.endswith("_loss"))
    return losses[:1] or sorted(names)[:1]


def run(args: argparse.Namespace) -> int:
    """Read every file, draw the figures, save them; prints the paths written."""
    from awp.io import exclusive_output
    from landscape.storage import read_surface

    # A shell glob like landscape/*.h5 also matches the NAME.directions.h5 companions: skip them
    # (a directions file given alone still gets read_surface's clear error).
    files = [f for f in args.files if not str(f).endswith(".directions.h5")] or list(args.files)
    surfaces = [read_surface(f) for f in files]
    if args.labels is not None and len(args.labels) != len(surfaces):
        raise ValueError(f"got {len(args.labels)} labels for {len(surfaces)} files")
    labels = args.labels or [s.label for s in surfaces]
    for s in surfaces:
        _mask_missing(s)
    out_dir = args.out or files[0].parent
    with exclusive_output(out_dir, folder_lock="plot"):
        written = _draw(args, surfaces, labels, out_dir)
    for path in written:
        print(path)
    return 0


def _draw(
    args: argparse.Namespace, surfaces: list[Surface], labels: list[str], out_dir: Path
) -> list[Path]:
    """Every figure the files and flags ask for, saved into ``out_dir``."""
    # matplotlib is imported only when `awp plot` runs: `awp` starts without it.
    from figures.landscape import (
        Curve,
        metric_label,
        plot_curves,
        plot_eig_ratio,
        plot_surface_views,
    )
    from figures.style import new_figure, save_figure
    from figures.trajectory import plot_trajectories, trajectory_panel
    from landscape.curvature_map import EIG_NAMES
    from landscape.run import safe_name

    plots = set(args.plots)
    curves_wanted = bool(plots & {"auto", "curve"})
    views = [
        p for p in ("contour", "contourf", "heatmap", "surface") if p in plots or "auto" in plots
    ]
    written: list[Path] = []

    curve_files = [(s, lab) for s, lab in zip(surfaces, labels) if s.kind not in PLANES]
    surface_files = [(s, lab) for s, lab in zip(surfaces, labels) if s.kind in PLANES]
    if curve_files and curves_wanted:
        metrics = args.metrics or default_metrics(curve_files[0][0].values)
        _check_metrics(metrics, curve_files)
        fig, axes = new_figure(1, len(metrics), width=4.2, height=3.2, squeeze=False)
        for ax, metric in zip(axes[0], metrics):
            curves = [Curve(_marked(s, lab), s.x, s.values[metric]) for s, lab in curve_files]
            xlabel = (
                r"$\alpha$ (0: first checkpoint, 1: second)"
                if any(s.kind == "interp" for s, _ in curve_files)
                else r"$\alpha$"
            )
            plot_curves(curves, ylabel=metric_label(metric), xlabel=xlabel, band=args.band, ax=ax)
        stem = "_".join(safe_name(lab) for _, lab in curve_files)
        written += save_figure(fig, out_dir / f"{stem}_{'_'.join(metrics)}", args.formats)
    if surface_files and views:
        for s, lab in surface_files:
            metrics = args.metrics or default_metrics(s.values)
            _check_metrics(metrics, [(s, lab)])
            for metric in metrics:
                figs = plot_surface_views(
                    s.x,
                    s.y,
                    s.values[metric],
                    zlabel=metric_label(metric),
                    title=f"{_marked(s, lab)}: {metric_label(metric)}",
                    plots=views,
                    vmin=args.vmin,
                    vmax=args.vmax,
                    levels=args.levels,
                )
                if s.kind == "trajectory":  # the contour with the training path on it
                    panel = dataclasses.replace(trajectory_panel(s, metric), label=lab)
                    figs["trajectory"] = plot_trajectories(
                        [[panel]], metrics=[metric], levels=args.levels or 14
                    )
                for view, fig in figs.items():
                    stem = out_dir / f"{safe_name(lab)}_{metric}_{view}"
                    written += save_figure(fig, stem, args.formats)
            if all(n in s.values for n in EIG_NAMES):  # a curvature map (--hessian-eigs)
                fig = plot_eig_ratio(s.x, s.y, *(s.values[n] for n in EIG_NAMES), title=lab)
                stem = out_dir / f"{safe_name(lab)}_min_eig_max_eig_abs_ratio"
                written += save_figure(fig, stem, args.formats)
    if args.vtp:
        for s, lab in curve_files:  # a .vtp is a surface: a curve has none
            print(
                f"note: --vtp writes nothing for {s.path} ({lab}): it is a {s.kind} curve, and a "
                ".vtp is a 2-D surface (awp landscape --kind 2d)"
            )
        written += _write_vtp(args, surface_files, out_dir)
    if not written:
        raise ValueError(
            f"nothing to draw: --plots {' '.join(args.plots)} does not apply to these files "
            f"(kinds: {', '.join(sorted({s.kind for s in surfaces}))})"
        )
    return written


def _mask_missing(surface: Surface) -> None:
    """A file not complete (a run killed midway) has its points not computed drawn as missing,
    never as a finished curve; a note says so."""
    import numpy as np

    for name, values in surface.values.items():
        surface.values[name] = np.where(surface.computed, values, np.nan)
    if not surface.computed.all():
        print(
            f"note: {surface.path} is incomplete: {_marked(surface, '').strip(' ()')} computed "
            "(the others are left out; awp landscape ... --resume computes them)"
        )


def _marked(surface: Surface, label: str) -> str:
    """``label``, with "(15 of 41 points)" when the file is not complete."""
    done, total = int(surface.computed.sum()), int(surface.computed.size)
    return label if done == total else f"{label} ({done} of {total} points)"


def _write_vtp(
    args: argparse.Namespace, surface_files: list[tuple[Surface, str]], out_dir: Path
) -> list[Path]:
    """One .vtp per 2-D surface and metric asked for (every metric as a point array)."""
    from landscape.run import safe_name
    from landscape.vtp import surface_mesh, write_vtp

    written = []
    for s, lab in surface_files:
        assert s.y is not None
        metrics = args.metrics or default_metrics(s.values)
        _check_metrics(metrics, [(s, lab)])
        for metric in metrics:
            mesh = surface_mesh(
                s.x, s.y, s.values, z=metric, points=args.vtp_points, method=args.vtp_method
            )
            path = out_dir / f"{safe_name(lab)}_{metric}.vtp"
            written.append(write_vtp(path, mesh, scalars=metric))
    return written


def _check_metrics(metrics: Sequence[str], files) -> None:
    import numpy as np

    for s, lab in files:
        missing = [m for m in metrics if m not in s.values]
        if missing:
            raise ValueError(
                f"{s.path} ({lab}) has no {', '.join(missing)}; "
                f"it has {', '.join(sorted(s.values))}"
            )
        empty = [m for m in metrics if not np.isfinite(s.values[m]).any()]
        if empty:
            raise ValueError(
                f"{s.path} has no value of {', '.join(empty)} ({int(s.computed.sum())} of "
                f"{s.computed.size} points computed, none finite): nothing to draw; compute it "
                "with awp landscape ... --resume, or choose other --metrics"
            )
