"""The robust generalization gap of every checkpoint (the demo: every epoch checkpoint; the
sweep: the last ones): ``analysis/gap.json``."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

from analysis.gap import GapConfig
from awp.config import PGD20_EVAL
from awp_landscape.commands.gap import measure_gap
from awp_landscape.stages.base import Context, ReportSection, Stage, SweepColumn, json_reader

if TYPE_CHECKING:
    from awp_landscape.report.collect import Results
    from figures.html import Section

FILE = "gap.json"


def config(plan: Any) -> GapConfig:
    return GapConfig(
        n_train=plan.gap_n,
        n_test=plan.gap_n,
        attack=dataclasses.replace(PGD20_EVAL, steps=plan.analysis_steps),
    )


def run(ctx: Context) -> None:
    checkpoints = ctx.epoch_ckpts() if ctx.gap_epochs else ctx.last
    measure_gap(checkpoints, config(ctx.plan), out=ctx.path(STAGE).parent, sources=ctx.sources())


read = json_reader((FILE,), "rows")


def _last_gap(folder: Path, method: str) -> float | None:
    rows = [r for r in STAGE.read_seed(folder) if r.get("method") == method]
    return float(max(rows, key=lambda r: r["epoch"])["gap"]) if rows else None


def measures(plan: Any) -> list[tuple[str, Any]]:
    sizes = f"PGD-{plan.analysis_steps}, {plan.gap_n} train and {plan.gap_n} test images"
    return [
        (f"robust gap at the last checkpoint (train - test robust accuracy; {sizes})", _last_gap)
    ]


def sweep_values(folder: Path, label: str) -> dict[str, float | None]:
    rows = [r for r in STAGE.read_seed(folder) if r.get("run") == label]
    last = max(rows, key=lambda r: r["epoch"]) if rows else None
    return {"robust gap (last)": None if last is None else float(last["gap"])}


def section(res: Results) -> Section:
    from figures.curves import plot_gap_by_epoch
    from figures.html import FigureBlock, Section, Table

    rows = res["gap"]
    s = Section("Robust generalization gap")
    cols = ["method", "epoch", "train_robust_acc", "test_robust_acc", "gap", "loss_gap"]
    s.paragraphs.append(
        f"Robust accuracy on a fixed train subset minus robust accuracy on a "
        f"test subset, same attack ({rows[0].get('attack')}), eval mode, "
        f"unperturbed weights."
    )
    s.tables.append(
        Table(
            sorted(rows, key=lambda r: (r["method"], r.get("epoch") or 0)),
            columns=cols,
            caption="Gap per checkpoint",
        )
    )
    s.figures.append(
        FigureBlock.from_figure(plot_gap_by_epoch(rows), "Robust gap per epoch.", "gap by epoch")
    )
    return s


STAGE = Stage(
    name="gap",
    heading="robust generalization gap of every checkpoint",
    files=(FILE,),
    run=run,
    read=read,
    accumulate=True,
    sections=(
        ReportSection(
            "Robust generalization gap", lambda r: r["gap"], section, "analysis/gap.json (awp gap)"
        ),
    ),
    measures=measures,
    sweep_columns=(SweepColumn("robust gap (last)"),),
    sweep_values=sweep_values,
)
