"""Flags and folders shared by the analysis commands (hist, flatness, gap, landscape...)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from awp_landscape.console import CLIError
from awp_landscape.inputs import run_folder_of


def add_run_arguments(p: argparse.ArgumentParser, *, out_help: str) -> None:
    """--out, --device and --no-progress."""
    p.add_argument("--out", type=Path, default=None, help=out_help)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def out_folder(out: Path | None, checkpoints: Sequence[Path]) -> Path:
    """``--out``, or ``<run>/analysis`` when every checkpoint comes from one run folder."""
    if out is not None:
        return out
    runs = {run_folder_of(c) for c in checkpoints}
    if len(runs) != 1:
        raise CLIError(
            f"the checkpoints come from {len(runs)} run folders; name one results folder "
            f"with --out (e.g. --out results/analysis)"
        )
    return runs.pop() / "analysis"
