"""The flags of ``awp eval``, built from modules that import no torch, so that ``awp eval
--help`` answers at once; :mod:`awp_landscape.commands.evaluate` runs it."""

from __future__ import annotations

import argparse
from pathlib import Path

from awp.eval_config import EvalConfig
from awp_landscape.checkpoint_flags import add_checkpoint_arguments
from awp_landscape.flags import add_dataclass_arguments


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``awp eval``."""
    p = sub.add_parser(
        "eval",
        help="natural / FGSM / PGD-20 / CW-20 / AutoAttack accuracy of a checkpoint",
        description="Evaluate a checkpoint: attacks run in the order given, each only on the "
        "points still robust (--no-cascade: every attack on every point). Checkpoints from "
        "elsewhere (official AWP {'state_dict': ...} with module. prefixes, raw state dicts as "
        "Rice et al.'s, RobustBench WideResNets with sub_block1.*) need --model and --input.",
    )
    p.add_argument(
        "checkpoint",
        nargs="?",
        type=Path,
        help="checkpoint: ours, or one from elsewhere (or --robustbench NAME)",
    )
    add_dataclass_arguments(p, EvalConfig)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="JSON results file (default: <run>/analysis/eval_<checkpoint>_<split>.json)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing results file made with other settings (refused otherwise)",
    )
    add_checkpoint_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """``awp eval``: the command's code, imported when it runs."""
    from awp_landscape.commands import evaluate

    return evaluate.run(args)
