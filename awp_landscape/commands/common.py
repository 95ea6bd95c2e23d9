"""Flags and folders shared by the analysis commands (hist, flatness, gap, landscape...)."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from awp.io import read_json
from awp_landscape.console import CLIError
from awp_landscape.inputs import run_folder_of


def add_run_arguments(p: argparse.ArgumentParser, *, out_help: str) -> None:
    """--out, --device and --no-progress."""
    p.add_argument("--out", type=Path, default=None, help=out_help)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


log = logging.getLogger(__name__)


def current_results(folder: Path, *, what: str) -> list[dict[str, Any]]:
    """The result of every checkpoint measured into ``folder`` (``<stem>-<sha8>/result.json``),
    one per checkpoint sha256, in folder order.

    A checkpoint overwritten in place since it was measured has a result for each version:
    only its newest measurement's is kept (the log names the one replaced), so a summary has
    one row per checkpoint file, and rows are never lost when another checkpoint is measured.
    """
    paths = sorted(folder.glob("*/result.json"), key=lambda p: p.stat().st_mtime_ns)
    by_sha: dict[str, tuple[Path, dict[str, Any]]] = {}
    for path in paths:  # oldest first: a newer result of the same sha replaces the older
        result = read_json(path, what=f"{what} result")
        by_sha[result.get("sha256") or str(path)] = (path, result)
    by_file: dict[str, tuple[Path, dict[str, Any]]] = {}
    for path, result in sorted(by_sha.values(), key=lambda t: t[0].stat().st_mtime_ns):
        name = str(Path(result.get("checkpoint") or path).resolve())
        if name in by_file:
            stale = by_file[name][1]
            log.info(
                "%s: %s changed since it was measured (sha256 %s, now %s): its row is replaced",
                what,
                result.get("checkpoint"),
                str(stale.get("sha256"))[:8],
                str(result.get("sha256"))[:8],
            )
        by_file[name] = (path, result)
    return [result for _, result in sorted(by_file.values(), key=lambda t: str(t[0]))]


def out_folder(out: Path | None, checkpoints: Sequence[Path], *, under: str = "") -> Path:
    """``--out``, or else the one rule of every command that reads checkpoints (docs/cli.md):
    ``<run>/analysis`` (``/under``, where the command has its own folder) when every checkpoint
    comes from one run folder (``<run>/checkpoints/x.pt``, or the folder of a lone file);
    checkpoints from several folders need ``--out``."""
    if out is not None:
        return out
    runs = {run_folder_of(c) for c in checkpoints}
    if len(runs) != 1:
        raise CLIError(
            f"the checkpoints come from {len(runs)} run folders; name one results folder "
            f"with --out (e.g. --out results/analysis)"
        )
    folder = runs.pop() / "analysis"
    return folder / under if under else folder
