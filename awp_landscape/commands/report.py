"""``awp report``: one self-contained HTML report (and a markdown summary) of result folders."""

from __future__ import annotations

import argparse
from pathlib import Path

from awp_landscape.console import say


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``awp report``."""
    p = sub.add_parser(
        "report",
        help="self-contained HTML report (+ markdown) of result folders",
        description="Collect what is on disk in demo, run and analysis folders (learning "
        "curves, evaluations, gap, landscapes, flatness, curvature, certification, "
        "correlations), state the verdicts they support, and write one self-contained HTML "
        "file (figures inlined) and a markdown summary beside it. Nothing is recomputed.",
    )
    p.add_argument(
        "paths",
        nargs="+",
        type=Path,
        help="a demo folder, run folders (metrics.jsonl) or analysis folders",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="HTML file (default: report.html in the first folder)",
    )
    p.add_argument(
        "--title", default=None, help="the report's title (default: AWP: what this run measured)"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Collect, render, write."""
    # The report draws its figures with matplotlib, imported only when it runs.
    from awp_landscape.report import write_report

    out = args.out or args.paths[0] / "report.html"
    html_path, md_path = write_report(args.paths, out, title=args.title)
    say(f"report: {html_path} (self-contained), summary: {md_path}")
    return 0
