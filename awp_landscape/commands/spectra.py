"""``awp spectra``: per-layer singular values, operator norms, stable rank and ESD power laws.

    awp spectra runs/at/checkpoints/last.pt runs/at_awp/checkpoints/last.pt --out results
    awp spectra runs/*/checkpoints/epoch_*.pt --out results/spectra      # and over epochs

Each checkpoint is one unit of ``<out>/spectra_units`` (a rerun skips finished ones; under
torchrun they are split across ranks). Writes ``spectra.json`` (every record, the chosen
layer's eigenvalues, the settings),
``spectra_stats.csv``, ``spectra_summary.csv`` and the figures ``spectra_esd``,
``spectra_depth`` (the last checkpoint of every run) and ``spectra_epochs`` (runs with several
checkpoints).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from analysis.store import SampleStore, run_units
from analysis.weight_spectra import SpectraConfig, esd_layer_name, model_spectra, summarize
from awp import distributed
from awp.config import to_dict
from awp.io import atomic_write_set, csv_text, json_text, sha256_file
from awp.modes import unwrap
from awp_landscape.commands.common import out_folder
from awp_landscape.commands.spectra_parser import register as register
from awp_landscape.console import format_table, say
from awp_landscape.flags import dataclass_from_arguments
from awp_landscape.inputs import (
    Inputs,
    Sources,
    held_inputs,
    rows_of,
    unique_labels,
)

OPERATOR_NOTE = (
    "op_norm_circular: exact operator norm of the conv with circular (wrap-around) padding on "
    "fft_size x fft_size inputs (Sedghi et al. 2019; strided convs exactly, as conv then "
    "subsampling). The networks pad with zeros: op_norm_zero_bound is a guaranteed upper bound "
    "of the zero-padded conv's norm (the circular norm on bound_grid x bound_grid, where "
    "nothing wraps); the circular value itself can be above or below the zero-padded one."
)
SHOWN = ("label", "layer", "fft_size", "spectral_norm", "op_norm_circular", "op_norm_zero_lower")
SHOWN += ("op_norm_zero_bound",)
SHOWN += ("stable_rank", "alpha", "alpha_se", "n_tail")


def final_labels(idents: Sequence[dict[str, Any]]) -> list[str]:
    """The label of the last checkpoint (highest epoch) of every run, in first-seen order."""
    last: dict[str, dict[str, Any]] = {}
    for i in idents:
        if i["run"] not in last or i["epoch"] > last[i["run"]]["epoch"]:
            last[i["run"]] = i
    return [i["label"] for i in last.values()]


def _settings(cfg: SpectraConfig, inputs: Inputs) -> dict[str, Any]:
    return {"spectra": to_dict(cfg), "dataset": inputs.dataset, "image": inputs.input}


def spectra_units(
    checkpoints: Sequence[Path], cfg: SpectraConfig, *, out: Path, inputs: Inputs, progress: bool
) -> list[dict[str, Any]]:
    """One unit per checkpoint (resumable, sharded): its identity, records (no label yet) and
    the ESD of ``cfg.esd_layer``; every rank gets them, in order."""
    ctx = distributed.current()
    order = [sha256_file(p) for p in checkpoints]
    paths = dict(zip(order, checkpoints))
    store = SampleStore(
        out / "spectra_units", meta=_settings(cfg, inputs), name="spectra", rank=ctx.rank
    )

    def compute(sha: str) -> dict[str, Any]:
        loaded = inputs.load(paths[sha], with_data=False)
        layer = esd_layer_name(dict(unwrap(loaded.model).named_parameters()), cfg.esd_layer)
        recs, eigs = model_spectra(loaded.model, cfg)
        esd = eigs[layer].tolist() if layer in eigs else None
        return {"identity": loaded.identity(), "stats": rows_of(recs), "esd": [layer, esd]}

    records = run_units(
        list(dict.fromkeys(order)), compute, store=store, progress=progress, desc="checkpoints"
    )
    return [records[sha] for sha in order]


def measure_spectra(
    checkpoints: list[Path],
    cfg: SpectraConfig,
    *,
    out: Path,
    labels: list[str] | None = None,
    figures: bool = True,
    sources: Sources = Sources(),
) -> dict[str, Any]:
    """``awp spectra`` as a function: spectra.json, the CSV tables and the figures in ``out``.

    Checkpoints finished before are read from ``out/spectra_units`` (same settings); under
    torchrun they are split across ranks and rank 0 writes the results.

    Returns:
        What ``spectra.json`` holds (on every rank).
    """
    names = ("spectra.json", "spectra_stats.csv", "spectra_summary.csv")
    cleans = [out / "spectra_units", *(out / n for n in names)]
    held = held_inputs(checkpoints, out=out, lock="spectra", cleans=cleans, sources=sources)
    with held as (inputs, ctx):
        units = spectra_units(
            checkpoints, cfg, out=out, inputs=inputs, progress=sources.progress and ctx.is_main
        )
        result = spectra_result(units, cfg, labels=labels)
        distributed.barrier()
        if not ctx.is_main:
            return result
        _print(result)
        written = atomic_write_set(
            {
                out / "spectra.json": json_text(result),
                out / "spectra_stats.csv": csv_text(result["stats"]),
                out / "spectra_summary.csv": csv_text(result["summary"]),
            }
        )
        if figures:
            written += _draw(result, out)
        say(f"results: {out} ({', '.join(p.name for p in written)})")
        return result


def spectra_result(
    units: Sequence[dict[str, Any]], cfg: SpectraConfig, *, labels: list[str] | None = None
) -> dict[str, Any]:
    """Label the units' records (``--labels``, else AT / AT-AWP and epochs) and gather them
    into what ``spectra.json`` holds."""
    idents = [dict(u["identity"]) for u in units]
    names = unique_labels(idents, labels)
    stats, esd_rows = [], []
    for ident, label, unit in zip(idents, names, units):
        ident["label"] = label
        rows = [{**r, "label": label, **_where(ident)} for r in unit["stats"]]
        stats += rows
        layer, eigs = unit["esd"]
        fit = next((r for r in rows if r["layer"] == layer), None)
        if eigs is not None and fit is not None:
            keep = ("label", "layer", "method", "epoch", "run", "alpha", "alpha_se", "xmin")
            esd_rows.append({**{k: fit[k] for k in keep + ("n_tail",)}, "eigenvalues": eigs})
    by_label = {i["label"]: _where(i) for i in idents}
    summary = [{**row, **by_label[row["label"]]} for row in rows_of(summarize(stats))]
    return {
        "checkpoints": idents,
        "config": to_dict(cfg),
        "layers": list(dict.fromkeys(r["layer"] for r in stats)),
        "final": final_labels(idents),
        "stats": stats,
        "summary": summary,
        "esd": esd_rows,
        "operator_note": OPERATOR_NOTE,
    }


def _where(ident: dict[str, Any]) -> dict[str, Any]:
    """The identity columns every row carries: method, epoch, run."""
    return {k: ident[k] for k in ("method", "epoch", "run")}


def _print(result: dict[str, Any]) -> None:
    finals = set(result["final"])
    say(format_table([r for r in result["stats"] if r["label"] in finals], SHOWN))
    if len(result["summary"]) > len(finals):
        cols = ("label", "epoch", "alpha_mean", "stable_rank_mean", "log10_op_norm_mean")
        say("\n" + format_table(result["summary"], cols))


def _draw(result: dict[str, Any], out: Path) -> list[Path]:
    # matplotlib is imported only when a figure is drawn: `awp` starts without it.
    from figures.spectra import plot_esd, plot_spectra_depth, plot_spectra_epochs
    from figures.style import save_figure

    finals = set(result["final"])
    written = []
    esd = [r for r in result["esd"] if r["label"] in finals]
    if esd and any(np.size(r["eigenvalues"]) for r in esd):
        written += save_figure(plot_esd(esd), out / "spectra_esd")
    depth = [r for r in result["stats"] if r["label"] in finals]
    written += save_figure(plot_spectra_depth(depth), out / "spectra_depth")
    if len(result["summary"]) > len(finals):
        written += save_figure(plot_spectra_epochs(result["summary"]), out / "spectra_epochs")
    return written


def run(args: argparse.Namespace) -> int:
    """Spectra, tables and figures of the checkpoints' layers."""
    measure_spectra(
        args.checkpoints,
        dataclass_from_arguments(SpectraConfig, args),
        out=out_folder(args.out, args.checkpoints),
        labels=args.labels,
        figures=not args.no_figures,
        sources=Sources.from_args(args),
    )
    return 0
