"""``awp train``: adversarial training (AT, TRADES, MART), plain or with a weight perturbation
(AWP, SAM, ASAM, RWP), optionally keeping weight averages (EMA, SWA).

Its flags come from :class:`awp.train_config.TrainConfig`, which imports no torch, so that
``awp train --help`` answers at once; the training is imported when it runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from awp.config import from_dict
from awp.method_config import method_name
from awp.train_config import TrainConfig
from awp.zoo import find_zoo_model, zoo_dataset, zoo_file
from awp_landscape.checkpoint_flags import add_zoo_location
from awp_landscape.console import CLIError, epoch_line, say
from awp_landscape.flags import add_dataclass_arguments, add_run_arguments, dataclass_from_arguments


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
    add_run_arguments(p, device=False)
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


# Settings of AWP's weight perturbation: given without any weight perturbation they would
# silently do nothing (TrainConfig refuses them with a perturbation that does not read them).
AWP_FLAGS = ("gamma", "awp_warmup", "awp_steps", "awp_alternations")


def config_from(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig of the command line (over ``--config`` when given)."""
    base = None
    if args.config is not None:
        if not args.config.is_file():
            raise CLIError(f"config file {args.config} does not exist")
        base = from_dict(TrainConfig, json.loads(args.config.read_text()))
    cfg = dataclass_from_arguments(TrainConfig, args, base)
    if getattr(args, "init_robustbench", None):
        if cfg.init:
            raise CLIError("give --init FILE or --robustbench NAME, not both")
        model = find_zoo_model(
            args.init_robustbench,
            dataset=zoo_dataset(cfg.data.dataset),
            threat_model=args.threat_model,
        )
        path = zoo_file(model, args.model_dir)  # one line naming the expected path if missing
        cfg = dataclasses.replace(cfg, init=str(path))
    awp_flags = [
        "--" + n.replace("_", "-") for n in AWP_FLAGS if getattr(args, n, None) is not None
    ]
    if awp_flags and cfg.perturbation_name is None:
        # `awp train --gamma 0.01` reads like AT-AWP but would silently train plain AT.
        raise CLIError(
            f"{', '.join(awp_flags)} set(s) AWP's weight perturbation, but method "
            f"{method_name(cfg)} has none; add --awp (or name it: --method {cfg.method}-awp) to "
            "train with it, or drop the flag"
        )
    return cfg


def run(args: argparse.Namespace) -> int:
    """Train as the flags say; rank 0 prints one line per epoch."""
    from awp import distributed
    from awp.train import train

    cfg = config_from(args)
    main_rank = distributed.env_rank() == 0  # under torchrun only rank 0 talks
    if main_rank:
        extras = []
        if cfg.extra_data:
            extras.append(f"extra data {cfg.extra_data} ({cfg.extra_fraction:g} of each batch)")
        if cfg.init:
            extras.append(f"init {cfg.init}")
        if distributed.env_world() > 1:
            extras.append(f"{distributed.env_world()} processes")
        say(
            f"{cfg.describe()}: {cfg.model.name} (width {cfg.model.width}) on "
            f"{cfg.data.dataset}, {cfg.epochs} epochs, {cfg.train_attack.describe()}"
            + "".join(f", {e}" for e in extras)
            + f" -> {cfg.out}"
        )
    result = train(
        cfg,
        resume=args.resume,
        resume_from=args.resume_from,
        progress=not args.no_progress,
        on_epoch=lambda r: say(epoch_line(r)) if main_rank else None,
    )
    if main_rank:
        folder = result.out / "checkpoints"
        # best.pt only with a validation split (--val-size > 0), epoch_*.pt with --save-every
        names = [n for n in ("last.pt", "best.pt") if (folder / n).exists()]
        names += ["epoch_*.pt"] if any(folder.glob("epoch_*.pt")) else []
        say(f"checkpoints: {folder} ({', '.join(names)}); metrics: {result.out / 'metrics.jsonl'}")
    return 0
