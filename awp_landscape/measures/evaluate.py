"""Natural, FGSM, PGD-20, CW-20 and AutoAttack accuracy of a checkpoint: ``awp eval``, and the
demo's final evaluation of every run's best and last checkpoint (``eval/<label>_{best,last}.json``
of the seed folder).

    awp eval runs/at_awp/checkpoints/best.pt --attacks natural pgd20 cw20 autoattack

Attacks run in the order given, each only on the points still robust (``--no-cascade``: every
attack on every point). One JSON file per checkpoint; the same evaluation again reuses it, other
settings are refused unless ``--overwrite`` (or another ``--out``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from awp.attack_names import ATTACK_LABELS
from awp.eval_config import EvalConfig
from awp_landscape.measures.base import CheckpointMeasure, Context, ReportSection, Size, SweepColumn

if TYPE_CHECKING:
    from awp.evaluate import SubAttack
    from awp_landscape.inputs import Loaded, Sources
    from awp_landscape.measures.runner import Entry
    from awp_landscape.results import Results
    from figures.html import Section

FOLDER = "eval"
#: The attacks of the report's accuracy table, where they were run.
REPORTED_ATTACKS = ("natural", "pgd20", "cw20", "autoattack")


def eval_file(seed_folder: Path, label: str, which: str) -> Path:
    """``eval/<label>_<which>.json`` of a seed folder (which: best or last)."""
    return seed_folder / FOLDER / f"{label}_{which}.json"


class Evaluate(CheckpointMeasure):
    name = "evaluate"
    heading = "evaluation (PGD-20, CW-20; best and last)"
    command = "eval"
    summary = "natural / FGSM / PGD-20 / CW-20 / AutoAttack accuracy of a checkpoint"
    description = (
        "Evaluate a checkpoint: attacks run in the order given, each only on the points still "
        "robust (--no-cascade: every attack on every point). Checkpoints from elsewhere "
        "(official AWP {'state_dict': ...} with module. prefixes, raw state dicts as Rice et "
        "al.'s, RobustBench WideResNets with sub_block1.*) need --model and --input."
    )
    files = (FOLDER,)
    in_analysis = False
    accumulate = True
    config_type = EvalConfig
    units = ""  # one JSON file per checkpoint, in --out's folder
    sizes = (
        Size(
            "eval_n",
            0,
            "test images of the final evaluation (natural, PGD-20, ...; 0 = all, 1000 in the demo)",
            EvalConfig,
            "n",
            plans=("demo", "sweep"),
        ),
    )
    pipelines = ("demo", "sweep")
    sweep_columns = (
        SweepColumn("natural accuracy (best)", paired=False),
        SweepColumn("natural accuracy (last)", paired=False, reported=True),
        SweepColumn("robust accuracy (best)", reported=True),
        SweepColumn("robust accuracy (last)", reported=True),
        SweepColumn("best minus last robust accuracy"),
    )

    # -- the command line ---------------------------------------------------------------
    def register(self, sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
        from awp_landscape.checkpoint_flags import add_checkpoint_arguments
        from awp_landscape.flags import add_run_arguments

        p = self.parser(sub, self.description)
        p.add_argument(
            "checkpoint",
            nargs="?",
            type=Path,
            help="checkpoint: ours, or one from elsewhere (or --robustbench NAME)",
        )
        self.add_flags(p)
        add_run_arguments(
            p, out_help="JSON results file (default: <run>/analysis/eval_<checkpoint>_<split>.json)"
        )
        p.add_argument(
            "--overwrite",
            action="store_true",
            help="replace an existing results file made with other settings (refused otherwise)",
        )
        add_checkpoint_arguments(p)
        return p

    def run_command(self, args: argparse.Namespace) -> int:
        from awp_landscape.inputs import Sources, checkpoint_name, out_folder
        from awp_landscape.measures.runner import run_measure

        cfg = self.config_from(args)
        # a weight average's file is named apart from the run's own (eval_ema_last_test.json)
        name = f"eval_{checkpoint_name(args.checkpoint)}_{cfg.split}.json"
        out = args.out or out_folder(None, [args.checkpoint]) / name
        run_measure(
            self,
            [args.checkpoint],
            cfg,
            out=out.parent,
            labels=[out.name],
            sources=Sources.from_args(args),
            overwrite=args.overwrite,
        )
        return 0

    def check(self, cfg: EvalConfig) -> None:
        """AutoAttack's package before hours of loading and attacking."""
        from awp.evaluate import AutoAttackConfig, require_autoattack
        from awp.extras import MissingDependencyError
        from awp_landscape.console import CLIError

        for attack in cfg.attack_table().values():
            if isinstance(attack, AutoAttackConfig):
                try:
                    require_autoattack(attack.implementation)
                except MissingDependencyError as err:
                    raise CLIError(str(err)) from err

    # -- one checkpoint: one file, named by its label ---------------------------------------
    def settings(self, cfg: EvalConfig, sources: Sources) -> dict[str, Any]:
        from awp.config import to_dict

        return {"eval": to_dict(cfg), **sources.settings()}

    def entry_path(self, out: Path, checkpoint: Path, sha256: str, label: str) -> Path:
        return out / label

    def saved_entries(self, out: Path, paths: Sequence[Path]) -> list[Entry]:
        return [e for p in paths if (e := self.load_entry(p)) is not None]

    def load_entry(self, path: Path) -> Entry | None:
        """An evaluation file (of any version); a file that is none is an Entry without a
        result, which :meth:`check_saved` refuses."""
        from awp.seeds import with_scheme
        from awp_landscape.measures.runner import Entry

        if not path.exists():
            return None
        try:
            data = json.loads(path.read_text())
            cfg = data["eval_config"]
            # files of earlier versions have no identity: their checkpoint file's sha256 (a
            # model built from a source string has no weights file, its identity names it)
            identity = data.get("identity") or {
                "checkpoint": data.get("checkpoint"),
                "sha256": data["weights"]["sha256"],
            }
        except (OSError, ValueError, KeyError, TypeError):
            return Entry({"checkpoint": "", "sha256": ""}, path.name, {}, None, path)
        settings = data.get("settings") or with_scheme(  # files of earlier versions
            {"eval": EvalConfig.migrate(dict(cfg)), "dataset": None, "data_root": None}
        )
        result = {k: v for k, v in data.items() if k not in ("identity", "settings")}
        return Entry(identity, path.name, settings, result, path)

    def write_entry(self, entry: Entry) -> Path:
        from awp.io import write_json

        return write_json(
            entry.path, {**entry.result, "identity": entry.identity, "settings": entry.settings}
        )

    def check_saved(self, entries: Sequence[Entry], settings: dict[str, Any], *, out: Path) -> None:
        """An earlier evaluation is never lost to a default file name: a file of other settings
        (or no evaluation at all) is refused."""
        from awp.config import check_same_settings
        from awp_landscape.console import CLIError

        fix = "pass --out NEW.json to keep both, or --overwrite to replace it"
        for e in entries:
            if e.result is None:
                raise CLIError(f"{e.path} already holds something that is not an `awp eval` "
                               f"results file; {fix}")  # fmt: skip
            check_same_settings(
                e.settings,
                settings,
                where=f"{e.path} already holds results of other evaluation settings",
                fix=fix[0].upper() + fix[1:] + ".",
                shown=4,
                error=CLIError,
            )

    def compute(
        self, loaded: Loaded, cfg: EvalConfig, *, label: str, folder: Path, progress: bool
    ) -> dict[str, Any]:
        return evaluate_checkpoint(loaded, cfg, progress=progress)[1]

    def tables(self, entries: Sequence[Entry], cfg: EvalConfig, out: Path) -> dict[str, str]:
        return {}  # each checkpoint's file is its table

    def show(self, entries: Sequence[Entry], cfg: EvalConfig) -> None:
        from awp_landscape.console import format_table, say

        for e in entries:
            result = e.result
            rows = [
                {
                    "attack": r["attack"],
                    "setting": r["setting"],
                    "accuracy": r["accuracy"],
                    **({} if cfg.cascade else {"alone": r["accuracy_alone"]}),
                    "attacked": r["attacked"],
                    "seconds": round(r["seconds"], 2),
                }
                for r in result["results"]
            ]
            say(
                f"{result['checkpoint']} (epoch {result['epoch']}, {result['input']} input) on "
                f"{result['dataset']}/{cfg.split}, n={result['n']}"
            )
            say(format_table(rows))
            for r in result["results"]:
                if r.get("sub_attacks"):
                    say(f"{r['attack']}, its sub-attacks on the {r['attacked']} points it ran on:")
                    say(format_table(_sub_attack_rows(r["sub_attacks"], result["n"])))
            say(
                "accuracy: right under this attack and every one above it"
                + (" (cascade: each attack ran only on the points still robust)"
                   if cfg.cascade else "")
                + f"; robust accuracy {result['robust_accuracy']:.4f}"
            )  # fmt: skip
            say(f"results: {e.path}")

    # -- the pipeline ---------------------------------------------------------------------
    def run(self, ctx: Context) -> None:
        from awp_landscape.measures.runner import run_measure

        attacks = ("natural", "pgd20") if ctx.sweep else ("natural", "pgd20", "cw20")
        cfg = EvalConfig(attacks=attacks, n=ctx.plan.eval_n, cascade=False)
        checkpoints, labels = [], []
        for label, run in ctx.runs.items():
            for which, ckpt in (("best", run.best), ("last", run.last)):
                if ckpt.exists():
                    checkpoints.append(ckpt)
                    labels.append(eval_file(ctx.out, label, which).name)
        if checkpoints:
            run_measure(
                self, checkpoints, cfg, out=ctx.out / FOLDER, labels=labels, sources=ctx.sources()
            )

    def read(self, folder: Path) -> list[dict[str, Any]]:
        """Every evaluation file of a seed folder, with its file name."""
        from awp.io import read_json

        d = folder / FOLDER
        if not d.is_dir():
            return []
        return [{"file": e.name, **read_json(e)} for e in sorted(d.glob("*.json"))]

    def pgd20(self, which: str) -> Any:
        def get(folder: Path, method: str) -> float | None:
            path = eval_file(folder, method, which)
            return accuracies(path).get("pgd20") if path.exists() else None

        return get

    def over_seeds(self, plan: Any) -> list[tuple[str, Any]]:
        n = f"{plan.eval_n} test images" if plan.eval_n else "all test images"
        return [
            (f"last-checkpoint robust accuracy (PGD-20 alone, {n})", self.pgd20("last")),
            (f"best-checkpoint robust accuracy (PGD-20 alone, {n})", self.pgd20("best")),
        ]

    def sweep_values(self, folder: Path, label: str) -> dict[str, float | None]:
        best, last = (
            accuracies(p) if p.exists() else {}
            for p in (eval_file(folder, label, "best"), eval_file(folder, label, "last"))
        )
        robust = (best.get("pgd20"), last.get("pgd20"))
        return {
            "natural accuracy (best)": best.get("natural"),
            "natural accuracy (last)": last.get("natural"),
            "robust accuracy (best)": robust[0],
            "robust accuracy (last)": robust[1],
            "best minus last robust accuracy": None if None in robust else robust[0] - robust[1],
        }

    # -- the report -----------------------------------------------------------------------
    def section(self, res: Results) -> Section:
        from awp_landscape.results import per_epoch_evaluation
        from figures.curves import plot_learning_curves
        from figures.html import FigureBlock, Section, Table

        s = Section("Accuracy and learning curves")
        s.tables.append(
            Table(
                accuracy_rows(res),
                caption="Test accuracy of the final evaluation on n test images (the demo runs "
                "each attack alone; best = highest validation robust accuracy; last = final "
                "epoch)",
            )
        )
        s.figures.append(
            FigureBlock.from_figure(
                plot_learning_curves({r.label: r.history for r in res.runs}),
                "Train (dashed) and test (solid) robust accuracy (left, the paper's Fig. 3(d)) "
                f"and robust loss (right), {per_epoch_evaluation(res)}: the training run's own "
                "evaluation, smaller than the final one in the table.",
                "learning curves",
            )
        )
        return s

    def sections(self) -> tuple[ReportSection, ...]:
        return (
            ReportSection(
                "Accuracy", lambda r: r.runs, self.section, "metrics.jsonl of each run (awp train)"
            ),
        )


def evaluate_checkpoint(loaded: Loaded, cfg: EvalConfig, *, progress: bool = True) -> tuple:
    """The robustness report of a loaded checkpoint and the JSON record ``awp eval`` writes."""
    from contextlib import nullcontext

    import torch

    from awp.config import to_dict
    from awp.data import capped_notice, fixed_subset
    from awp.evaluate import AutoAttackConfig, evaluate_robustness
    from awp.io import library_versions
    from awp.modes import cpu_channels_last
    from awp.progress import progress_bar
    from awp_landscape.console import CLIError

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
                loaded.model, x, y, table, batch_size=cfg.batch_size, seed=cfg.seed,
                cascade=cfg.cascade, on_batch=on_batch,
            )  # fmt: skip
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


def _sub_attack_rows(subs: Sequence[dict[str, Any] | SubAttack], n: int) -> list[dict[str, Any]]:
    """Each sub-attack of the original AutoAttack with the accuracy (of all ``n`` points) right
    after it: the first ran on every point its clean check found right."""
    subs = [a if isinstance(a, dict) else dataclasses.asdict(a) for a in subs]
    right = subs[0]["attacked"]
    rows = []
    for a in subs:
        right -= a["broken"]
        rows.append(
            {
                "sub-attack": a["name"],
                "attacked": a["attacked"],
                "broken": a["broken"],
                "accuracy after": right / max(n, 1),
            }
        )
    return rows


def accuracies(path: Path) -> dict[str, float]:
    """Each attack's accuracy in an evaluation file, the attack run alone where it was part of
    a cascade."""
    from awp.io import read_json

    return alone_accuracies(read_json(path)["results"])


def alone_accuracies(results: list[dict[str, Any]]) -> dict[str, float]:
    """Attack name -> its accuracy run alone (``accuracy_alone``; a cascade's rows, which have
    none, by ``accuracy``): the one number the report gives for an attack."""
    out = {}
    for r in results:
        alone = r.get("accuracy_alone")
        value = alone if alone is not None else r.get("accuracy")
        if value is not None:
            out[r["attack"]] = float(value)
    return out


def _best_epoch(history: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    with_val = [r for r in history if "val_robust_acc" in r]
    if not with_val:
        return None
    best = with_val[0]
    for r in with_val[1:]:  # first epoch reaching the maximum, as train() selects best.pt
        if r["val_robust_acc"] > best["val_robust_acc"]:
            best = r
    return best


def accuracy_rows(res: Results) -> list[dict[str, Any]]:
    """Natural / PGD-20 / CW-20 (and AutoAttack where run) per method, best and last."""
    from awp.config import method_of

    rows = []
    for e in res["evaluate"]:
        # each attack alone, as the outcome table reads it (an attack's "accuracy" after
        # natural is the fraction right under both, which can be lower)
        accs = alone_accuracies(e.get("results", e.get("rows", [])))
        method = e.get("method") or method_of(e.get("train_config") or {})
        stem = e["file"].removesuffix(".json")
        label, _, which = stem.rpartition("_")
        rows.append(
            {
                "method": label or method,
                "checkpoint": which,
                "epoch": e.get("epoch"),
                "n": e.get("n"),
                **{ATTACK_LABELS[a]: accs.get(a) for a in REPORTED_ATTACKS},
            }
        )
    if rows:
        return rows
    for r_ in res.runs:  # no separate evaluation: the per-epoch test numbers
        best, last = _best_epoch(r_.history), r_.history[-1] if r_.history else None
        for which, r in (("best", best), ("last", last)):
            if r is not None:
                rows.append(
                    {
                        "method": r_.label,
                        "checkpoint": which,
                        "epoch": r["epoch"],
                        "natural": r.get("test_nat_acc"),
                        "PGD (per-epoch eval)": r.get("test_robust_acc"),
                    }
                )
    return rows


MEASURE = Evaluate()
