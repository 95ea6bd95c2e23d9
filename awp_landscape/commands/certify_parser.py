"""The flags of ``awp certify``, built from modules that import no torch, so that ``awp certify
--help`` answers at once; :mod:`awp_landscape.commands.certify` runs it."""

from __future__ import annotations

import argparse

from analysis.config import CertifyConfig
from awp_landscape.checkpoint_flags import add_checkpoint_arguments, add_checkpoint_list
from awp_landscape.commands.common import add_run_arguments
from awp_landscape.flags import add_dataclass_arguments


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``awp certify``."""
    p = sub.add_parser(
        "certify",
        help="certified L2 radius by randomized smoothing (Cohen et al.), accuracy under noise",
        description="CERTIFY (and optionally PREDICT) of the Gaussian-smoothed classifier of "
        "every checkpoint, for several sigmas, on a fixed seeded test subset: n0 selection and "
        "n estimation samples per example, a one-sided Clopper-Pearson bound on pA, radius "
        "sigma * Phi^-1(pA_lower) or abstention; and the base classifier's accuracy under "
        "x + N(0, s^2) over a range of s. Writes certify.json, certify.csv (per sigma), "
        "certify_examples.csv, certify_curves.csv, noise_accuracy.csv and figures. Finished "
        "examples are kept in <out>/certify/ and skipped when run again; under torchrun "
        "examples are split across ranks.",
    )
    add_checkpoint_list(p)
    add_dataclass_arguments(p, CertifyConfig)
    p.add_argument("--no-figures", action="store_true", help="only tables, no PNG/PDF")
    add_checkpoint_arguments(p)
    add_run_arguments(p, out_help="results folder (default: <run>/analysis)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """``awp certify``: the command's code, imported when it runs."""
    from awp_landscape.commands import certify

    return certify.run(args)
