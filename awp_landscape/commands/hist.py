"""``awp hist``: per-layer weight statistics, KS / Wasserstein distances and histograms."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from analysis.weights import model_layers, select_layers, weight_report
from awp import distributed
from awp.io import atomic_write_set, csv_text, exclusive_output, json_text
from awp.progress import progress_bar
from awp_landscape.commands.common import out_folder
from awp_landscape.commands.hist_parser import register as register
from awp_landscape.console import format_table, say
from awp_landscape.inputs import (
    Inputs,
    check_files,
    rows_of,
    unique_labels,
)


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
) -> None:
    """``awp hist`` as a function: weights.json, the CSV tables and the figures in ``out``."""
    check_files(checkpoints)
    names = ("weights.json", "weights_stats.csv", "weights_compare.csv")
    with exclusive_output(out / names[0], cleans=[out / n for n in names]):
        _weight_histograms(
            checkpoints,
            out=out,
            labels=labels,
            layers=layers,
            plot_layers=plot_layers,
            bins=bins,
            clip_quantile=clip_quantile,
            figures=figures,
            inputs=inputs or Inputs(torch.device("cpu")),
            progress=progress,
        )


def _weight_histograms(
    checkpoints: list[Path],
    *,
    out: Path,
    labels: list[str] | None,
    layers: list[str] | tuple[str, ...],
    plot_layers: list[str] | tuple[str, ...],
    bins: int,
    clip_quantile: float | None,
    figures: bool,
    inputs: Inputs,
    progress: bool,
) -> None:
    idents, weights = [], []
    bar = progress_bar(checkpoints, desc="checkpoints", enabled=progress and len(checkpoints) > 4)
    for path in bar:
        loaded = inputs.load(path, with_data=False)
        idents.append(loaded.identity())
        weights.append(model_layers(loaded.model, ["all"]))
    names = unique_labels(idents, labels)
    for ident, label in zip(idents, names):
        ident["label"] = label
    report = weight_report(
        dict(zip(names, weights)), layers=layers, bins=bins, clip_quantile=clip_quantile
    )
    stats, comps = rows_of(report.stats), rows_of(report.comparisons)
    shown = ("label", "layer", "n", "norm", "std", "mean_abs", "skewness", "excess_kurtosis")
    say(format_table([{k: r[k] for k in shown} for r in stats]))
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
    files = {out / "weights.json": json_text(result), out / "weights_stats.csv": csv_text(stats)}
    if comps:
        files[out / "weights_compare.csv"] = csv_text(comps)
    written = atomic_write_set(files)  # the tables always agree, also after a full disk
    if figures:
        # matplotlib is imported only when a figure is drawn: `awp` starts without it.
        from figures.style import save_figure
        from figures.weights import plot_layer_stats, plot_weight_histograms

        first = {n: weights[0][n] for n in report.layers}
        plot = select_layers(first, plot_layers)
        fig = plot_weight_histograms(report.histograms, layers=plot, comparisons=report.comparisons)
        written += save_figure(fig, out / "weights_hist")
        written += save_figure(plot_layer_stats(report.stats), out / "weights_depth")
    say(f"results: {out} ({', '.join(p.name for p in written)})")


def run(args: argparse.Namespace) -> int:
    """Statistics, comparisons and figures of the checkpoints' layers."""
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
