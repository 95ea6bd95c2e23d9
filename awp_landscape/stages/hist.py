"""Weight histograms and per-layer statistics of the final checkpoints: ``analysis/weights.json``
(with ``weights_hist.png`` and ``weights_depth.png`` in the demo)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from awp_landscape.commands.hist import weight_histograms
from awp_landscape.stages.base import (
    Context,
    Measure,
    ReportSection,
    Stage,
    SweepColumn,
    json_reader,
)

if TYPE_CHECKING:
    from awp_landscape.report.collect import Results
    from figures.html import Section

FILE = "weights.json"
FIGURES = ("weights_hist", "weights_depth")


def run(ctx: Context) -> None:
    weight_histograms(
        ctx.last,
        out=ctx.path(STAGE).parent,
        labels=ctx.labels,
        figures=ctx.figures,
        progress=ctx.progress,
    )


read = json_reader((FILE,))


def figures_of(folder: Path) -> dict[str, Path]:
    return {n: folder / f"{n}.png" for n in FIGURES if (folder / f"{n}.png").exists()}


def deepest_conv(stat: str) -> Measure:
    """|stat| of the deepest conv layer of a method's final checkpoint."""

    def get(folder: Path, method: str) -> float | None:
        stats = [r for r in STAGE.read_seed(folder).get("stats", []) if r.get("kind") == "conv"]
        if not stats:
            return None
        deepest = max(r["depth"] for r in stats)
        rows = [r for r in stats if r["depth"] == deepest and r["label"] == method]
        return abs(float(rows[0][stat])) if rows and rows[0][stat] is not None else None

    return get


def measures(plan: Any) -> list[tuple[str, Any]]:
    return [
        ("mean |w| of the deepest conv layer", deepest_conv("mean_abs")),
        ("|skewness| of the deepest conv layer (asymmetry)", deepest_conv("skewness")),
    ]


def sweep_values(folder: Path, label: str) -> dict[str, float | None]:
    return {
        "deepest conv mean |w| (last)": deepest_conv("mean_abs")(folder, label),
        "deepest conv |skewness| (last)": deepest_conv("skewness")(folder, label),
    }


WEIGHT_STATS = ("label", "layer", "n", "norm", "std", "mean_abs", "skewness", "excess_kurtosis")
WEIGHT_COMPARISONS = (
    "layer",
    "label_a",
    "label_b",
    "ks_statistic",
    "ks_pvalue",
    "wasserstein",
    "norm_ratio",
)


def section(res: Results) -> Section:
    from figures.html import FigureBlock, Section, Table

    weights = res["hist"]
    s = Section("Weight histograms")
    comps = weights.get("comparisons", [])
    s.tables.append(
        Table(weights.get("stats", []), columns=WEIGHT_STATS, caption="Per-layer statistics")
    )
    if comps:
        s.tables.append(Table(comps, columns=WEIGHT_COMPARISONS, caption="Between checkpoints"))
    for name, cap in (
        ("weights_hist", "Weight values (rebuttal R#1 Q3 figure)."),
        ("weights_depth", "Per-layer statistics against depth."),
    ):
        if name in res.figures:
            s.figures.append(FigureBlock(res.figures[name].read_bytes(), cap, name))
    return s


STAGE = Stage(
    name="hist",
    heading="weight histograms",
    files=(FILE,),
    run=run,
    read=read,
    sections=(
        ReportSection(
            "Weight histograms", lambda r: r["hist"], section, "analysis/weights.json (awp hist)"
        ),
    ),
    measures=measures,
    sweep_columns=(
        SweepColumn("deepest conv mean |w| (last)"),
        SweepColumn("deepest conv |skewness| (last)"),
    ),
    sweep_values=sweep_values,
    figures_of=figures_of,
)
