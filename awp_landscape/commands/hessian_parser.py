"""The flags of ``awp hessian``, built from modules that import no torch, so that ``awp hessian
--help`` answers at once; :mod:`awp_landscape.commands.hessian` runs it."""

from __future__ import annotations

import argparse

from analysis.config import HessianConfig
from awp_landscape.checkpoint_flags import add_checkpoint_arguments, add_checkpoint_list
from awp_landscape.commands.common import add_run_arguments
from awp_landscape.flags import add_dataclass_arguments


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``awp hessian``."""
    p = sub.add_parser(
        "hessian",
        help="top Hessian eigenvalues, trace, eigenvalue density and per-layer curvature",
        description="Curvature of each checkpoint's loss on a fixed seeded subset (PyHessian's "
        "measures): top-k eigenvalues by Lanczos (ARPACK), the trace by Hutchinson with an "
        "interval and a stopping rule, the eigenvalue density by stochastic Lanczos "
        "quadrature, per-layer block traces and top eigenvalues. --loss adv crafts x_adv at w "
        "and holds it fixed: by Danskin's theorem that is the robust loss's gradient, not its "
        "full curvature. Finished units are kept in <out>/hessian/ and skipped when run "
        "again; under torchrun the Hessian-vector products are summed over ranks.",
    )
    add_checkpoint_list(p)
    add_dataclass_arguments(p, HessianConfig)
    p.add_argument("--no-figures", action="store_true", help="only tables, no PNG/PDF")
    add_checkpoint_arguments(p)
    add_run_arguments(p, out_help="results folder (default: <run>/analysis)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """``awp hessian``: the command's code, imported when it runs."""
    from awp_landscape.commands import hessian

    return hessian.run(args)
