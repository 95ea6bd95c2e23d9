"""The ``awp`` command: ``awp train``, ``awp eval`` and the subcommands of the other packages.

Imports flow figures -> analysis -> landscape -> awp, so this module never imports those
packages statically: each module listed in :data:`SUBCOMMAND_MODULES` that is importable
contributes its subcommands through a ``register(subparsers)`` function, and each subcommand
sets ``func`` (``args -> exit code``) with ``parser.set_defaults``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from awp.config import AttackConfig, add_dataclass_arguments

log = logging.getLogger("awp")

# Packages that add subcommands (landscape, plot, hist, flatness, gap, correlate, report, ...).
SUBCOMMAND_MODULES = (
    "landscape.cli",
    "analysis.cli",
    "figures.cli",
    "figures.demo",
    "figures.report",
)


class CLIError(Exception):
    """A user error the CLI reports as one line, without a traceback."""


def format_table(rows: list[dict], columns: Sequence[str] | None = None) -> str:
    """Plain-text table of dict rows (floats with 4 digits)."""
    if not rows:
        return "(no rows)"
    columns = list(columns or rows[0].keys())

    def cell(v: object) -> str:
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    body = [[cell(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(b[i]) for b in body)) for i, c in enumerate(columns)]
    line = "  ".join(c.ljust(w) for c, w in zip(columns, widths))
    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line, sep, *("  ".join(v.ljust(w) for v, w in zip(b, widths)) for b in body)])


def epoch_line(r: dict) -> str:
    """One line per epoch for the terminal."""
    parts = [
        f"epoch {r['epoch']:3d}",
        f"lr {r['lr']:.4f}",
        f"loss {r['train_loss']:.4f}",
        f"train acc {r['train_acc']:.3f}",
    ]
    for key, label in (
        ("train_robust_acc", "train rob"),
        ("val_robust_acc", "val rob"),
        ("test_nat_acc", "test nat"),
        ("test_robust_acc", "test rob"),
    ):
        if key in r:
            parts.append(f"{label} {r[key]:.3f}")
    parts.append(f"{r['seconds']:.0f}s+{r['eval_seconds']:.0f}s")
    return " | ".join(parts) + (" [AWP]" if r.get("awp") else "")


# --------------------------------------------------------------------------- train
def _add_train(sub: argparse._SubParsersAction) -> None:
    from awp.train import TrainConfig

    p = sub.add_parser(
        "train",
        help="adversarial training (AT, TRADES, MART), with or without AWP",
        description="Train with PGD adversarial training (AT), TRADES or MART, optionally with "
        "AWP. Every option defaults to the paper's CIFAR-10 protocol; options shown with "
        "'for at, ... for trades' take the --method's default unless given "
        "(awp.config.METHOD_DEFAULTS). Several processes: torchrun --nproc_per_node N "
        "-m awp.cli train ... (DDP; --batch-size is the global batch).",
    )
    p.add_argument(
        "--config", type=Path, help="JSON config (a run's config.json); flags override it"
    )
    p.add_argument("--resume", action="store_true", help="continue the run in --out exactly")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_dataclass_arguments(p, TrainConfig)
    p.set_defaults(func=_run_train)


def method_label(cfg) -> str:
    """E.g. ``TRADES-AWP (gamma 0.005, warm-up 10, beta 6, A=1 K1=10 K2=1)``."""
    r = cfg.resolved()
    label = f"{cfg.method.upper()}{'-AWP' if cfg.awp else ''}"
    parts = []
    if cfg.awp:
        parts += [f"gamma {r.gamma:g}", f"warm-up {r.awp_warmup}"]
    if r.beta is not None:
        parts.append(f"beta {r.beta:g}")
    if cfg.awp:
        parts.append(f"A={cfg.awp_alternations} K1={cfg.attack_steps} K2={cfg.awp_steps}")
    return label + (f" ({', '.join(parts)})" if parts else "")


def _run_train(args: argparse.Namespace) -> int:
    from awp.config import dataclass_from_arguments, from_dict
    from awp.ddp import env_rank
    from awp.train import TrainConfig, train

    base = None
    if args.config is not None:
        if not args.config.is_file():
            raise CLIError(f"config file {args.config} does not exist")
        base = from_dict(TrainConfig, json.loads(args.config.read_text()))
    cfg = dataclass_from_arguments(TrainConfig, args, base)
    awp_flags = [
        "--" + name.replace("_", "-")
        for name in ("gamma", "awp_warmup", "awp_steps", "awp_alternations")
        if getattr(args, name, None) is not None
    ]
    if awp_flags and not cfg.awp:
        # `awp train --gamma 0.01` reads like AT-AWP but would silently train plain AT.
        raise CLIError(
            f"{', '.join(awp_flags)} set(s) AWP's weight perturbation, but AWP is off; add --awp "
            "to train with it, or drop the flag"
        )
    main_rank = env_rank() == 0  # under torchrun only rank 0 talks
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if main_rank:
        extras = []
        if cfg.extra_data:
            extras.append(f"extra data {cfg.extra_data} ({cfg.extra_fraction:g} of each batch)")
        if cfg.init:
            extras.append(f"init {cfg.init}")
        if world > 1:
            extras.append(f"{world} processes")
        print(
            f"{method_label(cfg)}: {cfg.model} (width {cfg.width}) on {cfg.data.dataset}, "
            f"{cfg.epochs} epochs, {cfg.train_attack.describe()}"
            + "".join(f", {e}" for e in extras)
            + f" -> {cfg.out}",
            flush=True,
        )
    result = train(
        cfg,
        resume=args.resume,
        progress=not args.no_progress,
        on_epoch=lambda r: print(epoch_line(r), flush=True) if main_rank else None,
    )
    if main_rank:
        print(
            f"checkpoints: {result.out / 'checkpoints'} (last.pt, best.pt"
            f"{', epoch_*.pt' if cfg.save_every else ''}); metrics: {result.out / 'metrics.jsonl'}"
        )
    return 0


# --------------------------------------------------------------------------- eval
INPUTS = ("normalized", "raw")


def _add_eval(sub: argparse._SubParsersAction) -> None:
    from awp.evaluate import EvalConfig
    from awp.models import MODEL_NAMES

    p = sub.add_parser(
        "eval",
        help="natural / FGSM / PGD-20 / CW-20 / AutoAttack accuracy of a checkpoint",
        description="Evaluate a checkpoint: attacks run in the order given, each only on the "
        "points still robust (--no-cascade: every attack on every point). Checkpoints from "
        "elsewhere (official AWP {'state_dict': ...} with module. prefixes, raw state dicts as "
        "Rice et al.'s, RobustBench WideResNets with sub_block1.*) need --model and --input.",
    )
    p.add_argument("checkpoint", type=Path, help="checkpoint: ours, or one from elsewhere")
    p.add_argument(
        "--dataset",
        default=None,
        help="dataset (default: the checkpoint's own; 'sample' for checkpoints from elsewhere)",
    )
    p.add_argument("--data-root", default=None, help="where torchvision datasets live")
    add_dataclass_arguments(p, EvalConfig)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="JSON results file (default: eval_<checkpoint>_<split>.json beside the checkpoint)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing results file made with other settings (refused otherwise)",
    )
    g = p.add_argument_group("checkpoints from elsewhere (their architecture and input)")
    g.add_argument("--model", choices=MODEL_NAMES, default=None, help="architecture")
    g.add_argument("--width", type=float, default=1.0, help="channel width multiplier")
    g.add_argument("--depth", type=int, default=34, help="WideResNet depth (34, 28, ...)")
    g.add_argument("--widen-factor", type=int, default=10, help="WideResNet widen factor")
    g.add_argument(
        "--input",
        choices=INPUTS,
        default=None,
        help="input convention: normalized (the dataset's mean/std; official AT-AWP and Rice "
        "et al. checkpoints) or raw [0,1] (TRADES-AWP, RST-AWP, RobustBench)",
    )
    p.set_defaults(func=_run_eval)


def eval_attacks(
    names: Sequence[str], *, norm: str, eps: float, step_size: float, restarts: int
) -> dict[str, AttackConfig | None]:
    """Attack configs by CLI name (None = natural accuracy); see EvalConfig.attack_table."""
    from awp.evaluate import EvalConfig

    cfg = EvalConfig(
        attacks=tuple(names), norm=norm, eps=eps, step_size=step_size, restarts=restarts
    )
    return cfg.attack_table()  # type: ignore[return-value]


def _eval_model(args: argparse.Namespace, device):
    """(model in eval mode, data config, description for the JSON) of ``args.checkpoint``."""
    import dataclasses

    from awp.checkpoint import load_weights, read_state_dict
    from awp.config import from_dict
    from awp.data import DataConfig, load_data
    from awp.models import ModelSpec, build_model

    path = args.checkpoint
    _, info = read_state_dict(path)
    ckpt = info.get("checkpoint")
    if ckpt is not None:
        spec = from_dict(ModelSpec, ckpt["model_spec"])
        if args.model is not None and args.model != spec.name:
            raise CLIError(
                f"{path} is an awp-landscape checkpoint of a {spec.name}; drop --model "
                f"{args.model} (it describes checkpoints from elsewhere)"
            )
        own_input = "raw" if spec.mean is None else "normalized"
        if args.input is not None and args.input != own_input:
            raise CLIError(
                f"{path} records its input convention ({own_input}); drop --input {args.input}"
            )
        data_cfg = from_dict(DataConfig, ckpt.get("config", {}).get("data", {}))
    else:
        missing = [f for f, v in (("--model", args.model), ("--input", args.input)) if v is None]
        if missing:
            raise CLIError(
                f"{path} is not an awp-landscape checkpoint ({info['layout']}): say what it is "
                f"with {' and '.join(missing)} (e.g. --model wideresnet --depth 34 "
                f"--input raw for TRADES-AWP, --model preactresnet18 --input normalized for "
                f"AT-AWP)"
            )
        data_cfg = DataConfig(val_size=0)  # no training run to hold a validation split for
    changes = {k: v for k, v in (("dataset", args.dataset), ("data_root", args.data_root)) if v}
    data_cfg = dataclasses.replace(data_cfg, **changes)
    data = load_data(data_cfg, device, progress=not args.no_progress)
    if ckpt is None:
        spec = ModelSpec(
            name=args.model,
            num_classes=data.num_classes,
            width=args.width,
            depth=args.depth,
            widen_factor=args.widen_factor,
            mean=tuple(data.mean) if args.input == "normalized" else None,
            std=tuple(data.std) if args.input == "normalized" else None,
        )
    model = build_model(spec)
    how = load_weights(model, path)
    how.pop("checkpoint", None)
    about = {
        "checkpoint": str(path),
        "epoch": ckpt.get("epoch") if ckpt else None,
        "weights": dict(how),
        "model_spec": json.loads(json.dumps(dataclasses.asdict(spec))),
        "input": "raw" if spec.mean is None else "normalized",
    }
    return model.to(device).eval(), data_cfg, data, about


def _refuse_other_results(out: Path, eval_config: dict) -> None:
    """Refuse to replace ``out`` when it holds results of other evaluation settings (or is not
    a results file of ours): an earlier evaluation is never lost to a default file name."""
    if not out.exists():
        return
    try:
        theirs = json.loads(out.read_text()).get("eval_config")
    except (OSError, ValueError, AttributeError):
        theirs = None
    if theirs == eval_config:
        return  # the same evaluation again: replacing it loses nothing
    what = (
        "results of other evaluation settings"
        if theirs is not None
        else "something that is not an `awp eval` results file"
    )
    raise CLIError(
        f"{out} already holds {what}; pass --out NEW.json to keep both, or --overwrite to "
        "replace it"
    )


def _run_eval(args: argparse.Namespace) -> int:
    import torch
    from tqdm.auto import tqdm

    from awp.checkpoint import atomic_write_text, library_versions
    from awp.config import dataclass_from_arguments, to_dict
    from awp.data import fixed_subset
    from awp.evaluate import (
        AutoAttackConfig,
        EvalConfig,
        MissingDependencyError,
        evaluate_robustness,
        require_torchattacks,
    )
    from awp.train import pick_device

    cfg = dataclass_from_arguments(EvalConfig, args)
    out = args.out or args.checkpoint.with_name(f"eval_{args.checkpoint.stem}_{cfg.split}.json")
    if not args.overwrite:
        _refuse_other_results(out, to_dict(cfg))
    attacks = cfg.attack_table()
    if any(isinstance(a, AutoAttackConfig) for a in attacks.values()):
        try:
            require_torchattacks()  # before hours of loading and attacking
        except MissingDependencyError as err:
            raise CLIError(str(err)) from err
    device = pick_device(args.device)
    model, data_cfg, data, about = _eval_model(args, device)
    split = getattr(data, cfg.split)
    if len(split) == 0:
        raise CLIError(f"the {cfg.split} split is empty for dataset {data_cfg.dataset!r}")
    idx = fixed_subset(len(split), cfg.n, seed=cfg.seed) if cfg.n else torch.arange(len(split))
    x, y = split.x[idx.to(device)], split.y[idx.to(device)]

    bars: dict[str, tqdm] = {}

    def on_batch(name: str, done: int, total: int) -> None:
        if name not in bars:
            for bar in bars.values():
                bar.close()
            bars[name] = tqdm(
                total=total, desc=name, leave=False, disable=args.no_progress, dynamic_ncols=True
            )
        bars[name].update(done - bars[name].n)

    try:
        report = evaluate_robustness(
            model,
            x,
            y,
            attacks,
            batch_size=cfg.batch_size,
            seed=cfg.seed,
            cascade=cfg.cascade,
            on_batch=on_batch,
        )
    finally:
        for bar in bars.values():
            bar.close()
    rows = [
        {
            "attack": r.name,
            "setting": r.setting,
            "accuracy": r.accuracy,
            **({} if cfg.cascade else {"alone": r.accuracy_alone}),
            "attacked": r.attacked,
            "seconds": round(r.seconds, 2),
        }
        for r in report.rows
    ]
    print(
        f"{args.checkpoint} (epoch {about['epoch']}, {about['input']} input) on "
        f"{data_cfg.dataset}/{cfg.split}, n={report.n}, device {device}"
    )
    print(format_table(rows))
    print(
        "accuracy: right under this attack and every one above it"
        + (" (cascade: each attack ran only on the points still robust)" if cfg.cascade else "")
        + f"; robust accuracy {report.robust_accuracy:.4f}"
    )
    result = {
        **about,
        "dataset": data_cfg.dataset,
        "split": cfg.split,
        "n": report.n,
        "eval_config": to_dict(cfg),
        "cascade": cfg.cascade,
        "robust_accuracy": report.robust_accuracy,
        "results": [
            {
                "attack": r.name,
                "setting": r.setting,
                "accuracy": r.accuracy,
                "accuracy_alone": r.accuracy_alone,
                "attacked": r.attacked,
                "seconds": r.seconds,
            }
            for r in report.rows
        ],
        "versions": library_versions(),
    }
    atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    print(f"results: {out}")
    return 0


# --------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    """The full ``awp`` parser, with the subcommands of every importable package."""
    parser = argparse.ArgumentParser(
        prog="awp",
        description="Adversarial training with and without AWP, weight loss "
        "landscapes, flatness and the robust generalization gap.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_train(sub)
    _add_eval(sub)
    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name is not None and name.startswith(err.name):
                continue  # that package has no CLI (yet)
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``awp`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (CLIError, ValueError, FileNotFoundError, FileExistsError) as err:
        from awp.checkpoint import CheckpointError

        if args.verbose and not isinstance(err, CLIError | CheckpointError):
            raise
        print(f"awp {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            f"awp {args.command}: interrupted; finished work is on disk "
            f"(rerun with --resume where the command has it)",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
