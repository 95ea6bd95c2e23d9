"""The final evaluation: natural and attacked test accuracy of every run's best and last
checkpoint, into ``eval/<label>_{best,last}.json`` of the seed folder.

Its section is the report's accuracy table with the learning curves; its measures over seeds
are the best and last checkpoints' PGD-20 accuracy (the attack run alone, not in a cascade).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from awp.attacks import attack_label
from awp.config import method_of
from awp.evaluate import EvalConfig
from awp.io import exclusive_output, read_json, sha256_file, write_json
from awp.runs import RunFolder
from awp_landscape.commands.evaluate import evaluate_checkpoint
from awp_landscape.console import say
from awp_landscape.inputs import Inputs
from awp_landscape.stages.base import Context, ReportSection, Stage, SweepColumn

if TYPE_CHECKING:
    from awp_landscape.report.collect import Results
    from figures.html import Section

FOLDER = "eval"


def eval_file(seed_folder: Path, label: str, which: str) -> Path:
    """``eval/<label>_<which>.json`` of a seed folder (which: best or last)."""
    return seed_folder / FOLDER / f"{label}_{which}.json"


def evaluate_runs(
    runs: Mapping[str, RunFolder], out: Path, *, cfg: EvalConfig, inputs: Inputs, progress: bool
) -> None:
    """The evaluation ``cfg`` of every run's best and last checkpoint, into ``out/eval``; a file
    of the same checkpoint's bytes is kept."""
    for label, run in runs.items():
        for which, ckpt in (("best", run.best), ("last", run.last)):
            dest = eval_file(out, label, which)
            if not ckpt.exists() or _fresh(dest, ckpt):
                continue
            with exclusive_output(dest):
                _, result = evaluate_checkpoint(inputs.load(ckpt), cfg, progress=progress)
                write_json(dest, result)
            log_accuracies(label, which, result)


def log_accuracies(label: str, which: str, result: Mapping[str, Any]) -> None:
    """One line with the accuracies of an evaluation."""
    accs = ", ".join(f"{r['attack']} {r['accuracy']:.4f}" for r in result["results"])
    say(f"[{label}] {which} (epoch {result['epoch']}): {accs}")


def _fresh(dest: Path, ckpt: Path) -> bool:
    """An evaluation file exists for exactly this checkpoint's bytes."""
    if not dest.exists():
        return False
    try:
        return json.loads(dest.read_text())["weights"]["sha256"] == sha256_file(ckpt)
    except (json.JSONDecodeError, KeyError, TypeError):
        return False


def run(ctx: Context) -> None:
    cfg = EvalConfig(attacks=ctx.eval_attacks, n=ctx.plan.eval_n, cascade=False)
    evaluate_runs(ctx.runs, ctx.out, cfg=cfg, inputs=ctx.inputs(), progress=ctx.progress)


def read(folder: Path) -> list[dict[str, Any]]:
    """Every evaluation file of a seed folder, with its file name."""
    d = folder / FOLDER
    return (
        [{"file": e.name, **read_json(e)} for e in sorted(d.glob("*.json"))] if d.is_dir() else []
    )


def accuracies(path: Path) -> dict[str, float]:
    """Each attack's accuracy in an evaluation file, the attack run alone where it was part of
    a cascade."""
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


def _pgd20(which: str):
    def get(folder: Path, method: str) -> float | None:
        path = eval_file(folder, method, which)
        return accuracies(path).get("pgd20") if path.exists() else None

    return get


def measures(plan: Any) -> list[tuple[str, Any]]:
    n = f"{plan.eval_n} test images" if plan.eval_n else "all test images"
    return [
        (f"last-checkpoint robust accuracy (PGD-20 alone, {n})", _pgd20("last")),
        (f"best-checkpoint robust accuracy (PGD-20 alone, {n})", _pgd20("best")),
    ]


def sweep_values(folder: Path, label: str) -> dict[str, float | None]:
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


# ----------------------------------------------------------------------------- report
def _best_epoch(history: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    with_val = [r for r in history if "val_robust_acc" in r]
    if not with_val:
        return None
    best = with_val[0]
    for r in with_val[1:]:  # first epoch reaching the maximum, as train() selects best.pt
        if r["val_robust_acc"] > best["val_robust_acc"]:
            best = r
    return best


REPORTED_ATTACKS = ("natural", "pgd20", "cw20", "autoattack")  # names in awp.attacks.ATTACKS


def accuracy_rows(res: Results) -> list[dict[str, Any]]:
    """Natural / PGD-20 / CW-20 (and AutoAttack where run) per method, best and last."""
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
                **{attack_label(a): accs.get(a) for a in REPORTED_ATTACKS},
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


def section(res: Results) -> Section:
    from awp_landscape.report.collect import per_epoch_evaluation
    from figures.curves import plot_learning_curves
    from figures.html import FigureBlock, Section, Table

    s = Section("Accuracy and learning curves")
    s.tables.append(
        Table(
            accuracy_rows(res),
            caption="Test accuracy of the final evaluation on n test images (the demo runs "
            "each attack alone; best = highest validation robust accuracy; last = final epoch)",
        )
    )
    s.figures.append(
        FigureBlock.from_figure(
            plot_learning_curves({r.label: r.history for r in res.runs}),
            "Train (dashed) and test (solid) robust accuracy (left, the paper's Fig. 3(d)) and "
            f"robust loss (right), {per_epoch_evaluation(res)}: the training run's own "
            "evaluation, smaller than the final one in the table.",
            "learning curves",
        )
    )
    return s


STAGE = Stage(
    name="evaluate",
    heading="evaluation (PGD-20, CW-20; best and last)",
    files=(FOLDER,),
    run=run,
    read=read,
    in_analysis=False,
    accumulate=True,
    sections=(
        ReportSection(
            "Accuracy", lambda r: r.runs, section, "metrics.jsonl of each run (awp train)"
        ),
    ),
    measures=measures,
    sweep_columns=(
        SweepColumn("natural accuracy (best)", paired=False),
        SweepColumn("natural accuracy (last)", paired=False),
        SweepColumn("robust accuracy (best)"),
        SweepColumn("robust accuracy (last)"),
        SweepColumn("best minus last robust accuracy"),
    ),
    sweep_values=sweep_values,
)
