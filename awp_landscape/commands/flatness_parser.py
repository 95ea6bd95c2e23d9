"""The flags of ``awp flatness``, built from modules that import no torch, so that ``awp flatness
--help`` answers at once; :mod:`awp_landscape.commands.flatness` runs it."""

from __future__ import annotations

import argparse

from analysis.config import FlatnessConfig, PacBayesConfig, WorstCaseConfig
from analysis.sigma import SigmaSearchConfig
from awp_landscape.checkpoint_flags import add_checkpoint_arguments, add_checkpoint_list
from awp_landscape.commands.common import add_run_arguments
from awp_landscape.flags import add_dataclass_arguments


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``awp flatness``."""
    p = sub.add_parser(
        "flatness",
        help="expected / worst-case PAC-Bayes flatness, sigma search, PAC-Bayes bound",
        description="E_u[rho(w+u)] - rho(w) with the attack regenerated on every w+u, for "
        "several alphas (a curve); optionally the worst case over ||v_l|| <= gamma ||w_l|| "
        "(--worst-case) and the largest alpha whose robust accuracy drop is <= a target "
        "(--sigma-search); with the PAC-Bayes bound's terms. Finished samples are kept in "
        "<out>/flatness/ and skipped when run again; under torchrun samples are split across "
        "ranks.",
    )
    add_checkpoint_list(p)
    add_dataclass_arguments(p, FlatnessConfig)
    p.add_argument("--worst-case", action="store_true", help="also measure worst-case flatness")
    add_dataclass_arguments(p.add_argument_group("worst case (--worst-case)"), WorstCaseConfig)
    p.add_argument("--sigma-search", action="store_true", help="also run the sigma search")
    add_dataclass_arguments(
        p.add_argument_group("sigma search (--sigma-search)"), SigmaSearchConfig
    )
    add_dataclass_arguments(p.add_argument_group("PAC-Bayes bound"), PacBayesConfig)
    p.add_argument("--no-figures", action="store_true", help="only tables, no PNG/PDF")
    add_checkpoint_arguments(p)
    add_run_arguments(p, out_help="results folder (default: <run>/analysis)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """``awp flatness``: the command's code, imported when it runs."""
    from awp_landscape.commands import flatness

    return flatness.run(args)
