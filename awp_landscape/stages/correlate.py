"""Flatness against the robust gap across the epoch checkpoints (Pearson, Spearman, Kendall
with bootstrap intervals, overall and per method): ``analysis/correlation.json``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from awp_landscape.commands.correlate import correlate_tables
from awp_landscape.stages import flatness_epochs, gap
from awp_landscape.stages.base import Context, ReportSection, Stage, json_reader

if TYPE_CHECKING:
    from awp_landscape.report.collect import Results
    from figures.html import Section

FILE = "correlation.json"


def run(ctx: Context) -> None:
    n = len(ctx.epoch_ckpts())
    if n < 3:
        ctx.log(f"skipped: a correlation needs at least 3 checkpoints, these runs have {n}")
        return
    correlate_tables(
        [ctx.path(flatness_epochs.STAGE), ctx.path(gap.STAGE)],
        x="flatness_loss",
        where=[f"alpha={ctx.plan.correlate_alpha}", "kind=expected"],
        out=ctx.path(STAGE).parent,
    )


read = json_reader((FILE,))


def figures_of(folder: Path) -> dict[str, Path]:
    scatter = sorted(folder.glob("*_vs_gap.png"))
    return {"vs_gap": scatter[0]} if scatter else {}


def _tau(folder: Path, method: str) -> float | None:
    for c in STAGE.read_seed(folder).get("correlations", []):
        if c["group"] == method and c["measure"] == "kendall" and c["statistic"] is not None:
            return float(c["statistic"])
    return None


def measures(plan: Any) -> list[tuple[str, Any]]:
    return [("Kendall tau of flatness vs gap within the method", _tau)]


def section(res: Results) -> Section:
    from figures.html import FigureBlock, Section, Table

    c = res["correlate"]
    s = Section("Flatness versus the robust gap")
    s.paragraphs.append(
        f"Across checkpoints: x = {c.get('x')} ({', '.join(c.get('where', []))}), y = {c.get('y')}."
    )
    s.tables.append(
        Table(
            c.get("correlations", []),
            columns=["group", "measure", "n", "statistic", "pvalue", "ci_low", "ci_high", "note"],
            caption="Correlations with bootstrap intervals",
        )
    )
    if "vs_gap" in res.figures:
        s.figures.append(
            FigureBlock(
                res.figures["vs_gap"].read_bytes(),
                "Flatness against gap, one point per "
                "checkpoint, coloured by method, with fitted lines.",
                "flatness vs gap",
            )
        )
    return s


STAGE = Stage(
    name="correlate",
    heading="flatness versus gap",
    files=(FILE,),
    run=run,
    read=read,
    sections=(
        ReportSection(
            "Flatness versus the robust gap",
            lambda r: r["correlate"],
            section,
            "analysis/correlation.json (awp correlate)",
        ),
    ),
    measures=measures,
    figures_of=figures_of,
)
