"""``awp eval``: natural, FGSM, PGD-20, CW-20 and AutoAttack accuracy of a checkpoint."""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from awp import distributed
from awp.config import to_dict
from awp.data import capped_notice, fixed_subset
from awp.evaluate import (
    AutoAttackConfig,
    EvalConfig,
    RobustnessReport,
    SubAttack,
    evaluate_robustness,
    require_autoattack,
)
from awp.extras import MissingDependencyError
from awp.io import exclusive_output, library_versions, write_json
from awp.modes import cpu_channels_last
from awp.progress import progress_bar
from awp_landscape.commands.common import out_folder
from awp_landscape.commands.evaluate_parser import register as register
from awp_landscape.console import CLIError, format_table, say
from awp_landscape.flags import dataclass_from_arguments
from awp_landscape.inputs import Inputs, Loaded, checkpoint_name


def refuse_other_results(out: Path, eval_config: dict) -> None:
    """Refuse to replace ``out`` when it holds results of other evaluation settings (or is not
    a results file of ours): an earlier evaluation is never lost to a default file name."""
    if not out.exists():
        return
    try:
        theirs = json.loads(out.read_text()).get("eval_config")
        if isinstance(theirs, dict):  # written before subset_seed: compare what it measured
            theirs = EvalConfig.migrate(theirs)
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


def evaluate_checkpoint(
    loaded: Loaded, cfg: EvalConfig, *, progress: bool = True
) -> tuple[RobustnessReport, dict[str, Any]]:
    """The robustness report of a loaded checkpoint and the JSON record ``awp eval`` writes."""
    split = getattr(loaded.data, cfg.split)
    if len(split) == 0:
        raise CLIError(f"the {cfg.split} split is empty for dataset {loaded.data_cfg.dataset!r}")
    device = split.x.device
    capped_notice(cfg.n, len(split), flag="--n-examples")
    idx = (
        fixed_subset(len(split), cfg.n, seed=cfg.subset_seed) if cfg.n else torch.arange(len(split))
    )
    x, y = split.x[idx.to(device)], split.y[idx.to(device)]
    bars: dict[str, Any] = {}

    def on_batch(name: str, done: int, total: int) -> None:
        if name not in bars:
            for bar in bars.values():
                bar.close()
            bars[name] = progress_bar(total=total, desc=name, enabled=progress)
        bars[name].update(done - bars[name].n)

    table = cfg.attack_table()
    # channels_last is faster on the CPU with the same numbers (awp.modes); AutoAttack's own
    # code is left the layout it was written for
    own = not any(isinstance(a, AutoAttackConfig) for a in table.values())
    try:
        with cpu_channels_last(loaded.model) if own else nullcontext():
            report = evaluate_robustness(
                loaded.model,
                x,
                y,
                table,
                batch_size=cfg.batch_size,
                seed=cfg.seed,
                cascade=cfg.cascade,
                on_batch=on_batch,
            )
    finally:
        for bar in bars.values():
            bar.close()
    result = {
        "checkpoint": str(loaded.path),
        "epoch": loaded.ckpt.get("epoch") if loaded.ckpt else None,
        "weights": loaded.weights,
        "model_spec": json.loads(json.dumps(dataclasses.asdict(loaded.spec))),
        "input": loaded.input,
        "dataset": loaded.data_cfg.dataset,
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
                **(
                    {
                        "sub_attacks": [dataclasses.asdict(a) for a in r.sub_attacks],
                        "autoattack_log": list(r.log),
                    }
                    if r.log
                    else {}
                ),
            }
            for r in report.rows
        ],
        "versions": library_versions(),
    }
    return report, result


def run(args: argparse.Namespace) -> int:
    """Evaluate one checkpoint, print the table, write the JSON."""
    cfg = dataclass_from_arguments(EvalConfig, args)
    out = args.out or (
        out_folder(None, [args.checkpoint])
        / f"eval_{checkpoint_name(args.checkpoint)}_{cfg.split}.json"
    )
    for attack in cfg.attack_table().values():
        if isinstance(attack, AutoAttackConfig):
            try:
                require_autoattack(attack.implementation)  # before hours of loading and attacking
            except MissingDependencyError as err:
                raise CLIError(str(err)) from err
    device = distributed.pick_device(args.device)
    with exclusive_output(out):
        if not args.overwrite:
            refuse_other_results(out, to_dict(cfg))
        inputs = Inputs.from_args(args, device, progress=not args.no_progress)
        report, result = evaluate_checkpoint(
            inputs.load(args.checkpoint), cfg, progress=not args.no_progress
        )
        _print(args, cfg, report, result, inputs.device)
        write_json(out, result)
    say(f"results: {out}")
    return 0


def _print(
    args: argparse.Namespace,
    cfg: EvalConfig,
    report: RobustnessReport,
    result: dict[str, Any],
    device: torch.device,
) -> None:
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
    say(
        f"{args.checkpoint} (epoch {result['epoch']}, {result['input']} input) on "
        f"{result['dataset']}/{cfg.split}, n={report.n}, device {device}"
    )
    say(format_table(rows))
    for r in report.rows:
        if r.sub_attacks:
            say(f"{r.name}, its sub-attacks on the {r.attacked} points it ran on:")
            say(format_table(_sub_attack_rows(r.sub_attacks, report.n)))
    say(
        "accuracy: right under this attack and every one above it"
        + (" (cascade: each attack ran only on the points still robust)" if cfg.cascade else "")
        + f"; robust accuracy {report.robust_accuracy:.4f}"
    )


def _sub_attack_rows(subs: Sequence[SubAttack], n: int) -> list[dict[str, Any]]:
    """Each sub-attack of the original AutoAttack with the accuracy (of all ``n`` points) right
    after it: the first ran on every point its clean check found right."""
    right = subs[0].attacked
    rows = []
    for a in subs:
        right -= a.broken
        rows.append(
            {
                "sub-attack": a.name,
                "attacked": a.attacked,
                "broken": a.broken,
                "accuracy after": right / max(n, 1),
            }
        )
    return rows
