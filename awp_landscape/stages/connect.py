"""Mode connectivity of the two final checkpoints: the straight line and a trained quadratic
Bezier curve, robust loss along both, barriers: ``analysis/connect/connect.json`` (and .h5)."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from analysis.connect import ConnectConfig
from awp.config import PGD20_EVAL
from awp_landscape.commands.connect import connect
from awp_landscape.stages.base import Context, ReportSection, Stage, json_reader

if TYPE_CHECKING:
    from awp_landscape.report.collect import Results
    from figures.html import Section

FILE = "connect/connect.json"


def config(plan: Any) -> ConnectConfig:
    # Small on purpose (no plan field yet): 5 points per path, the curve trained for 2
    # epochs on 512 training images with the analysis attack's PGD, evaluated on the
    # landscape's test subset.
    steps = plan.analysis_steps
    return ConnectConfig(
        points=5,
        epochs=2,
        batch_size=32,
        n_fit=512,
        train_steps=steps,
        n_test=plan.landscape_n,
        n_bn=plan.trajectory_bn,
        attack=dataclasses.replace(PGD20_EVAL, steps=steps),
    )


def run(ctx: Context) -> None:
    if len(ctx.last) != 2:
        ctx.log(f"skipped: connectivity joins two runs, these are {len(ctx.last)}")
        return
    connect(
        ctx.last,
        config(ctx.plan),
        out=ctx.path(STAGE).parent,
        labels=ctx.labels,
        sources=ctx.sources(),
    )


read = json_reader((FILE,))


def section(res: Results) -> Section:
    from figures.connect import plot_connect
    from figures.html import FigureBlock, Section, Table

    c = res["connect"]
    a, b = c["a"]["label"], c["b"]["label"]
    s = Section(f"Mode connectivity: {a} to {b}")
    cfg = c["settings"]["connect"]
    training = c.get("curve_settings") or {}
    s.paragraphs.append(
        f"Natural and robust ({c['attack']}, regenerated on every model) loss and accuracy at "
        f"{cfg['points']} points of the straight line from {a} to {b} and of a quadratic Bezier "
        f"curve whose middle point was trained for {training.get('epochs', '?')} epoch(s) on the "
        f"{training.get('objective', '?')} loss, t uniform per batch; BatchNorm statistics "
        "re-estimated at "
        "every point. Barrier: the maximum along the path minus the mean of the ends (for an "
        "accuracy, the drop below the ends' mean)."
    )
    split = "test" if cfg["n_test"] else "train"
    by = {(r["path"], r["metric"]): r for r in c["barriers"]}
    line, curve = by.get(("line", f"{split}_adv_loss")), by.get(("curve", f"{split}_adv_loss"))
    if line and curve:
        word = "lower" if curve["barrier"] < line["barrier"] else "NOT lower"
        s.paragraphs.append(
            f"The trained curve's robust-loss barrier is {word} than the straight line's "
            f"({curve['barrier']:.4g} at t={curve['t']:.2g} vs {line['barrier']:.4g} at "
            f"t={line['t']:.2g}; one pair, one evaluation subset: no interval)."
        )
    rows = [
        {"path": r["path"], "metric": r["metric"], "barrier": r["barrier"], "t": r["t"]}
        for r in c["barriers"]
        if r["metric"].startswith(split)
    ]
    s.tables.append(Table(rows, columns=["path", "metric", "barrier", "t"], caption="Barriers"))
    s.figures.append(
        FigureBlock.from_figure(
            plot_connect(c["paths"], split=split),
            f"Loss and accuracy along the paths from {a} (t=0) to {b} (t=1).",
            "mode connectivity",
        )
    )
    return s


STAGE = Stage(
    name="connect",
    heading="mode connectivity: the line and a trained curve from AT to AT-AWP",
    files=(FILE,),
    run=run,
    read=read,
    sections=(
        ReportSection(
            "Mode connectivity",
            lambda r: r["connect"],
            section,
            "analysis/connect/connect.json (awp connect)",
        ),
    ),
)
