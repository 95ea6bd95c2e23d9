"""Per-layer weight statistics of checkpoints (matched by layer name), the KS statistic and
Wasserstein-1 distance between them, overlaid histograms (the rebuttal's reviewer 1, question 3)
and the statistics against depth.

    awp hist runs/at/checkpoints/last.pt runs/at_awp/checkpoints/last.pt --labels AT AT-AWP \\
        --out runs/analysis

The demo measures the final checkpoints: ``analysis/weights.json`` with ``weights_hist.png`` and
``weights_depth.png``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from awp_landscape.measures.base import (
    Context,
    Measure,
    ReportSection,
    SeedValue,
    SweepColumn,
    figures_current,
)

if TYPE_CHECKING:
    from awp_landscape.inputs import Inputs
    from awp_landscape.results import Results
    from figures.html import Section

FILE = "weights.json"
FIGURES = {
    "weights_hist": "Weight values (rebuttal R#1 Q3 figure).",
    "weights_depth": "Per-layer statistics against depth.",
}
STATS = ("label", "layer", "n", "norm", "std", "mean_abs", "skewness", "excess_kurtosis")
COMPARISONS = ("layer", "label_a", "label_b", "ks_statistic", "ks_pvalue", "wasserstein",
               "norm_ratio")  # fmt: skip


class Hist(Measure):
    name = "hist"
    heading = "weight histograms"
    command = "hist"
    summary = "per-layer weight statistics, KS/Wasserstein distances and histograms"
    files = (FILE,)
    pipelines = ("demo", "sweep")
    sweep_columns = (
        SweepColumn("deepest conv mean |w| (last)"),
        SweepColumn("deepest conv |skewness| (last)"),
    )

    # -- the command line ---------------------------------------------------------------
    def register(self, sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
        from awp.config import parse_number
        from awp_landscape.checkpoint_flags import add_checkpoint_arguments
        from awp_landscape.flags import add_bounded_argument, add_run_arguments, integer

        p = self.parser(
            sub,
            "Per-layer weight statistics of checkpoints (matched by layer name), KS statistic "
            "and Wasserstein-1 distance between them, overlaid histograms (rebuttal R#1 Q3) and "
            "statistics against depth.",
        )
        p.add_argument(
            "checkpoints",
            nargs="*",
            type=Path,
            help="checkpoints (.pt; or --robustbench NAME) to compare",
        )
        p.add_argument("--labels", nargs="+", help="names in the legend (default: AT / AT-AWP ...)")
        p.add_argument(
            "--layers",
            nargs="+",
            default=["weights"],
            help="layers measured: weights (conv+linear, default) | all | conv | linear | norm | "
            "bias | first-conv | last-conv | first-linear | last-linear | names | glob patterns",
        )
        p.add_argument(
            "--plot-layers",
            nargs="+",
            default=["last-conv"],
            help="layers drawn as histograms, among --layers (default: last-conv, the rebuttal's)",
        )
        add_bounded_argument(
            p,
            "--bins",
            type=integer,
            bounds=(1, 100_000),
            why="every layer's histogram of every checkpoint is stored with its bins",
            default=80,
            help="histogram bins (default: 80)",
        )
        add_bounded_argument(
            p,
            "--clip-quantile",
            type=parse_number,
            bounds=(0, 1),
            default=None,
            help="histogram range: this quantile of |w| instead of the max (e.g. 0.999; above 0)",
        )
        p.add_argument("--no-figures", action="store_true", help="only tables, no PNG/PDF")
        add_checkpoint_arguments(p, dataset_help="dataset (only for checkpoints from elsewhere)")
        add_run_arguments(
            p,
            out_help="results folder (default: <run>/analysis when all checkpoints are from one "
            "run)",
        )
        return p

    def run_command(self, args: argparse.Namespace) -> int:
        from awp import distributed
        from awp_landscape.inputs import Inputs, out_folder

        weight_histograms(
            args.checkpoints,
            out=out_folder(args.out, args.checkpoints),
            labels=args.labels,
            layers=args.layers,
            plot_layers=args.plot_layers,
            bins=args.bins,
            clip_quantile=args.clip_quantile,
            figures=not args.no_figures,
            inputs=Inputs.from_args(
                args, distributed.pick_device(args.device), progress=not args.no_progress
            ),
            progress=not args.no_progress,
        )
        return 0

    # -- the pipeline ---------------------------------------------------------------------
    def run(self, ctx: Context) -> None:
        weight_histograms(
            ctx.last,
            out=self.path(ctx).parent,
            labels=ctx.labels,
            figures=ctx.figures,
            progress=ctx.progress,
        )

    def read(self, folder: Path) -> dict[str, Any]:
        from awp_landscape.measures.base import json_table

        return json_table(folder, self.files)

    def figures_of(self, folder: Path) -> dict[str, Path]:
        return {n: folder / f"{n}.png" for n in FIGURES if (folder / f"{n}.png").exists()}

    def deepest_conv(self, stat: str) -> SeedValue:
        """|stat| of the deepest conv layer of a method's final checkpoint."""

        def get(folder: Path, method: str) -> float | None:
            stats = [r for r in self.read_seed(folder).get("stats", []) if r.get("kind") == "conv"]
            if not stats:
                return None
            deepest = max(r["depth"] for r in stats)
            rows = [r for r in stats if r["depth"] == deepest and r["label"] == method]
            return abs(float(rows[0][stat])) if rows and rows[0][stat] is not None else None

        return get

    def over_seeds(self, plan: Any) -> list[tuple[str, Any]]:
        return [
            ("mean |w| of the deepest conv layer", self.deepest_conv("mean_abs")),
            ("|skewness| of the deepest conv layer (asymmetry)", self.deepest_conv("skewness")),
        ]

    def sweep_values(self, folder: Path, label: str) -> dict[str, float | None]:
        return {
            "deepest conv mean |w| (last)": self.deepest_conv("mean_abs")(folder, label),
            "deepest conv |skewness| (last)": self.deepest_conv("skewness")(folder, label),
        }

    # -- the report -----------------------------------------------------------------------
    def section(self, res: Results) -> Section:
        from figures.html import FigureBlock, Section, Table

        weights = res[self.name]
        s = Section("Weight histograms")
        comps = weights.get("comparisons", [])
        s.tables.append(
            Table(weights.get("stats", []), columns=STATS, caption="Per-layer statistics")
        )
        if comps:
            s.tables.append(Table(comps, columns=COMPARISONS, caption="Between checkpoints"))
        for name, caption in FIGURES.items():
            if name in res.figures:
                s.figures.append(FigureBlock(res.figures[name].read_bytes(), caption, name))
        return s

    def sections(self) -> tuple[ReportSection, ...]:
        return (
            ReportSection(
                "Weight histograms", lambda r: r[self.name], self.section,
                "analysis/weights.json (awp hist)",
            ),
        )  # fmt: skip


def weight_histograms(
    checkpoints: list[Path],
    *,
    out: Path,
    labels: list[str] | None = None,
    layers: list[str] | tuple[str, ...] = ("weights",),
    plot_layers: list[str] | tuple[str, ...] = ("last-conv",),
    bins: int = 80,
    clip_quantile: float | None = None,
    figures: bool = True,
    inputs: Inputs | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """``awp hist`` as a function: weights.json, the CSV tables and the figures in ``out``;
    returns what weights.json holds."""
    import torch

    from analysis.weights import model_layers, select_layers, weight_report
    from awp.io import atomic_write_set, csv_text, exclusive_output, json_text
    from awp.progress import progress_bar
    from awp_landscape.console import format_table, say
    from awp_landscape.inputs import Inputs, check_files, rows_of, unique_labels

    check_files(checkpoints)
    inputs = inputs or Inputs(torch.device("cpu"))
    names = ("weights.json", "weights_stats.csv", "weights_compare.csv")
    with exclusive_output(out / names[0], cleans=[out / n for n in names]):
        idents, weights = [], []
        bar = progress_bar(
            checkpoints, desc="checkpoints", enabled=progress and len(checkpoints) > 4
        )
        for path in bar:
            loaded = inputs.load(path, with_data=False)
            idents.append(loaded.identity())
            weights.append(model_layers(loaded.model, ["all"]))
        labelled = unique_labels(idents, labels)
        for ident, label in zip(idents, labelled):
            ident["label"] = label
        report = weight_report(
            dict(zip(labelled, weights)), layers=layers, bins=bins, clip_quantile=clip_quantile
        )
        stats, comps = rows_of(report.stats), rows_of(report.comparisons)
        say(format_table([{k: r[k] for k in STATS} for r in stats]))
        if comps:
            cols = ("layer", "label_a", "label_b", "ks_statistic", "ks_pvalue", "wasserstein")
            say("\n" + format_table(comps, cols))
        result = {
            "checkpoints": idents,
            "layers": list(report.layers),
            "stats": stats,
            "comparisons": comps,
            "histograms": rows_of(report.histograms),
        }
        files = {
            out / "weights.json": json_text(result),
            out / "weights_stats.csv": csv_text(stats),
        }
        if comps:
            files[out / "weights_compare.csv"] = csv_text(comps)
        written = atomic_write_set(files)  # the tables always agree, also after a full disk
        pngs = [out / "weights_hist.png", out / "weights_depth.png"]
        if figures and not figures_current(list(files), written, pngs):
            # matplotlib is imported only when a figure is drawn: `awp` starts without it.
            from figures.style import save_figure
            from figures.weights import plot_layer_stats, plot_weight_histograms

            first = {n: weights[0][n] for n in report.layers}
            plot = select_layers(first, plot_layers)
            fig = plot_weight_histograms(
                report.histograms, layers=plot, comparisons=report.comparisons
            )
            written += save_figure(fig, out / "weights_hist")
            written += save_figure(plot_layer_stats(report.stats), out / "weights_depth")
        say(f"results: {out} ({', '.join(p.name for p in written)})")
        return result


MEASURE = Hist()
