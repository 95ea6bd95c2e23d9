"""The flags of ``awp train``, built from modules that import no torch, so that ``awp train
--help`` answers at once; :mod:`awp_landscape.commands.train` runs it."""

from __future__ import annotations

import argparse
from pathlib import Path

from awp.train_config import TrainConfig
from awp_landscape.checkpoint_flags import add_zoo_location
from awp_landscape.flags import add_dataclass_arguments


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``awp train``."""
    p = sub.add_parser(
        "train",
        help="adversarial training (AT, TRADES, MART), with or without AWP, SAM, ASAM, RWP",
        description="Train with PGD adversarial training (AT), TRADES or MART, optionally with "
        "a weight perturbation (--awp, or a method name: --method at-awp, at-sam, at-asam, "
        "at-rwp, trades-sam...) and weight averages (--ema, --swa). Every option defaults to "
        "the paper's CIFAR-10 protocol; options shown with "
        "'for at, ... for trades' take the --method's default unless given "
        "(awp.config.METHOD_DEFAULTS). Several processes: torchrun --nproc_per_node N "
        "-m awp_landscape train ... (DDP; --batch-size is the global batch).",
    )
    p.add_argument(
        "--config", type=Path, help="JSON config (a run's config.json); flags override it"
    )
    p.add_argument("--resume", action="store_true", help="continue the run in --out exactly")
    p.add_argument(
        "--resume-from",
        type=Path,
        default=None,
        metavar="CHECKPOINT",
        help="continue the run in --out exactly from one of its epoch checkpoints (when "
        "last.pt is missing or corrupt); later epochs are recomputed",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_dataclass_arguments(p, TrainConfig)
    z = p.add_argument_group(
        "--init from RobustBench's zoo by name (read from --model-dir only; docs/robustbench.md)"
    )
    z.add_argument(
        "--robustbench",
        dest="init_robustbench",  # one zoo model to start from, not checkpoints to measure
        default=None,
        metavar="NAME",
        help="start from this zoo model's weights (as --init with its file), e.g. "
        "Wu2020Adversarial_extra; --model must name its architecture",
    )
    add_zoo_location(z)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """``awp train``: the command's code, imported when it runs."""
    from awp_landscape.commands import train

    return train.run(args)
