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
import sys
from collections.abc import Sequence
from pathlib import Path

from awp.config import AttackConfig, add_dataclass_arguments, check_eps, parse_number

log = logging.getLogger("awp")

# Packages that add subcommands (landscape, plot, hist, flatness, gap, correlate, report, ...).
SUBCOMMAND_MODULES = ("landscape.cli", "analysis.cli", "figures.cli", "figures.demo")


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
        help="adversarial training (AT, AT-AWP)",
        description="Train with PGD adversarial training, optionally with AWP. "
        "Every option defaults to the paper's CIFAR-10 protocol.",
    )
    p.add_argument(
        "--config", type=Path, help="JSON config (a run's config.json); flags override it"
    )
    p.add_argument("--resume", action="store_true", help="continue the run in --out exactly")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_dataclass_arguments(p, TrainConfig)
    p.set_defaults(func=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from awp.config import dataclass_from_arguments, from_dict
    from awp.train import TrainConfig, train

    base = None
    if args.config is not None:
        if not args.config.is_file():
            raise CLIError(f"config file {args.config} does not exist")
        base = from_dict(TrainConfig, json.loads(args.config.read_text()))
    cfg = dataclass_from_arguments(TrainConfig, args, base)
    method = f"{cfg.method.upper()}{'-AWP' if cfg.awp else ''}"
    print(
        f"{method}: {cfg.model} (width {cfg.width}) on {cfg.data.dataset}, {cfg.epochs} epochs, "
        f"{cfg.train_attack.describe()} -> {cfg.out}",
        flush=True,
    )
    result = train(
        cfg,
        resume=args.resume,
        progress=not args.no_progress,
        on_epoch=lambda r: print(epoch_line(r), flush=True),
    )
    print(
        f"checkpoints: {result.out / 'checkpoints'} (last.pt, best.pt"
        f"{', epoch_*.pt' if cfg.save_every else ''}); metrics: {result.out / 'metrics.jsonl'}"
    )
    return 0


# --------------------------------------------------------------------------- eval
EVAL_ATTACKS = ("natural", "fgsm", "pgd20", "cw20")


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="natural / FGSM / PGD-20 / CW-20 accuracy of a checkpoint")
    p.add_argument("checkpoint", type=Path, help="checkpoint .pt written by awp train")
    p.add_argument(
        "--dataset", default=None, help="dataset (default: the one the checkpoint was trained on)"
    )
    p.add_argument("--data-root", default=None, help="where torchvision datasets live")
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    p.add_argument("--n", type=int, default=0, help="seeded subset size (0 = the whole split)")
    p.add_argument(
        "--attacks", nargs="+", default=["natural", "pgd20", "cw20"], choices=EVAL_ATTACKS
    )
    p.add_argument("--norm", default="linf", choices=("linf", "l2"))
    p.add_argument(
        "--eps", type=parse_number, default=None, help="radius (default 8/255 for linf, 0.5 for l2)"
    )
    p.add_argument("--step-size", type=parse_number, default=None, help="step size (default eps/4)")
    p.add_argument("--restarts", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="JSON results file (default: eval_<split>.json beside the checkpoint)",
    )
    p.set_defaults(func=_run_eval)


def eval_attacks(
    names: Sequence[str], *, norm: str, eps: float, step_size: float, restarts: int
) -> dict[str, AttackConfig | None]:
    """Attack configs by CLI name (None = natural accuracy)."""
    table: dict[str, AttackConfig | None] = {}
    for name in names:
        if name == "natural":
            table[name] = None
        elif name == "fgsm":
            table[name] = AttackConfig(
                name="fgsm", norm=norm, eps=eps, step_size=eps, steps=1, random_start="none"
            )
        else:
            table[name] = AttackConfig(
                name="pgd" if name == "pgd20" else "cw",
                norm=norm,
                eps=eps,
                step_size=step_size,
                steps=20,
                restarts=restarts,
            )
    return table


def _run_eval(args: argparse.Namespace) -> int:
    import torch
    from tqdm.auto import tqdm

    from awp.checkpoint import atomic_write_text, load_model
    from awp.config import from_dict
    from awp.data import DataConfig, fixed_subset, load_data
    from awp.evaluate import evaluate_attack
    from awp.train import pick_device

    device = pick_device(args.device)
    model, ckpt = load_model(args.checkpoint, device=device)
    data_cfg = from_dict(DataConfig, ckpt.get("config", {}).get("data", {}))
    if args.dataset is not None or args.data_root is not None:
        import dataclasses

        data_cfg = dataclasses.replace(
            data_cfg,
            **{
                k: v
                for k, v in (("dataset", args.dataset), ("data_root", args.data_root))
                if v is not None
            },
        )
    data = load_data(data_cfg, device)
    split = getattr(data, args.split)
    if len(split) == 0:
        raise CLIError(f"the {args.split} split is empty for dataset {data_cfg.dataset!r}")
    idx = fixed_subset(len(split), args.n, seed=args.seed) if args.n else torch.arange(len(split))
    x, y = split.x[idx.to(device)], split.y[idx.to(device)]
    eps = args.eps if args.eps is not None else (8 / 255 if args.norm == "linf" else 0.5)
    check_eps(eps, args.norm)
    step = args.step_size if args.step_size is not None else eps / 4
    attacks = eval_attacks(
        args.attacks, norm=args.norm, eps=eps, step_size=step, restarts=args.restarts
    )
    rows = []
    for name, attack in tqdm(attacks.items(), desc="attacks", leave=False):
        acc = evaluate_attack(model, x, y, attack, batch_size=args.batch_size, seed=args.seed)
        rows.append(
            {
                "attack": name,
                "setting": attack.describe() if attack else "clean",
                "accuracy": acc.accuracy,
                "loss": acc.loss,
                "n": acc.n,
            }
        )
    print(
        f"{args.checkpoint} (epoch {ckpt.get('epoch')}) on {data_cfg.dataset}/{args.split}, "
        f"n={len(y)}, device {device}"
    )
    print(format_table(rows))
    out = args.out or args.checkpoint.with_name(f"eval_{args.checkpoint.stem}_{args.split}.json")
    atomic_write_text(
        out,
        json.dumps(
            {"checkpoint": str(args.checkpoint), "split": args.split, "n": len(y), "results": rows},
            indent=2,
        )
        + "\n",
    )
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
