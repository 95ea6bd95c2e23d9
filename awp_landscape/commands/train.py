"""``awp train``: adversarial training (AT, TRADES, MART), with or without AWP."""

from __future__ import annotations

import argparse
import dataclasses
import json

from awp import distributed
from awp.config import from_dict
from awp.train import TrainConfig, train
from awp.zoo import find_zoo_model, zoo_dataset, zoo_file
from awp_landscape.commands.train_parser import register as register
from awp_landscape.console import CLIError, epoch_line, say
from awp_landscape.flags import dataclass_from_arguments

# Settings of AWP's weight perturbation: given without --awp they would silently do nothing.
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
    if awp_flags and not cfg.awp:
        # `awp train --gamma 0.01` reads like AT-AWP but would silently train plain AT.
        raise CLIError(
            f"{', '.join(awp_flags)} set(s) AWP's weight perturbation, but AWP is off; add --awp "
            "to train with it, or drop the flag"
        )
    return cfg


def run(args: argparse.Namespace) -> int:
    """Train as the flags say; rank 0 prints one line per epoch."""
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
