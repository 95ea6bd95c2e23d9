"""Weight spectra of every checkpoint given: per conv and linear layer, the singular values of W
reshaped to (out, in*kh*kw), the convolution's exact operator norm by FFT, the stable rank and a
power-law fit of the eigenvalue density.

    awp spectra runs/at/checkpoints/last.pt runs/at_awp/checkpoints/last.pt --out results
    awp spectra runs/*/checkpoints/epoch_*.pt --out results/spectra      # and over epochs

Writes ``spectra.json`` (every record, the chosen layer's eigenvalues, the settings),
``spectra_stats.csv``, ``spectra_summary.csv`` and the figures ``spectra_esd``,
``spectra_depth`` (the last checkpoint of every run) and ``spectra_epochs`` (runs with several
checkpoints).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from analysis.config import SpectraConfig
from awp_landscape.measures.base import CheckpointMeasure, Context, FigureSpec, ReportSection

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from awp_landscape.inputs import Loaded, Sources
    from awp_landscape.measures.runner import Entry
    from awp_landscape.results import Results
    from figures.html import Section

OPERATOR_NOTE = (
    "op_norm_circular: exact operator norm of the conv with circular (wrap-around) padding on "
    "fft_size x fft_size inputs (Sedghi et al. 2019; strided convs exactly, as conv then "
    "subsampling). The networks pad with zeros: op_norm_zero_bound is a guaranteed upper bound "
    "of the zero-padded conv's norm (the circular norm on bound_grid x bound_grid, where "
    "nothing wraps); the circular value itself can be above or below the zero-padded one."
)
COLUMNS = ("label", "layer", "fft_size", "spectral_norm", "op_norm_circular")
COLUMNS += ("op_norm_zero_lower", "op_norm_zero_bound", "stable_rank", "alpha", "alpha_se")
COLUMNS += ("n_tail",)
SUMMARY = ("label", "epoch", "fitted", "alpha_mean", "stable_rank_mean", "log10_op_norm_mean")


def _finals(sp: dict[str, Any]) -> set[str]:
    return set(sp.get("final", []))


def _esd(sp: dict[str, Any]) -> Figure | None:
    import numpy as np

    from figures.spectra import plot_esd

    esd = [r for r in sp.get("esd", []) if r["label"] in _finals(sp)]
    return plot_esd(esd) if esd and any(np.size(r["eigenvalues"]) for r in esd) else None


def _depth(sp: dict[str, Any]) -> Figure | None:
    from figures.spectra import plot_spectra_depth

    final = [r for r in sp.get("stats", []) if r["label"] in _finals(sp)]
    return plot_spectra_depth(final) if final else None


def _epochs(sp: dict[str, Any]) -> Figure | None:
    from figures.spectra import plot_spectra_epochs

    summary = sp.get("summary", [])
    return plot_spectra_epochs(summary) if len(summary) > len(_finals(sp)) else None


def final_labels(idents: Sequence[dict[str, Any]]) -> list[str]:
    """The label of the last checkpoint (highest epoch) of every run, in first-seen order."""
    last: dict[str, dict[str, Any]] = {}
    for i in idents:
        if i["run"] not in last or i["epoch"] > last[i["run"]]["epoch"]:
            last[i["run"]] = i
    return [i["label"] for i in last.values()]


def _where(ident: dict[str, Any]) -> dict[str, Any]:
    """The identity columns every row carries: method, epoch, run."""
    return {k: ident[k] for k in ("method", "epoch", "run")}


class Spectra(CheckpointMeasure):
    name = "spectra"
    heading = "weight spectra"
    command = "spectra"
    summary = "per-layer singular values, conv operator norms (FFT), stable rank, ESD alpha"
    description = (
        "Per conv and linear layer of each checkpoint: singular values of W reshaped to (out, "
        "in*kh*kw), the exact operator norm of the convolution by FFT (Sedghi et al. 2019), "
        "the stable rank, and a power-law fit of the eigenvalue density (MLE, x_min by the KS "
        "rule). Finished checkpoints are kept in <out>/spectra_units/ and skipped when run "
        "again; under torchrun checkpoints are split across ranks."
    )
    dataset_help = "dataset (only for checkpoints from elsewhere)"
    out_help = "results folder (default: <run>/analysis when all checkpoints are from one run)"
    files = ("spectra/spectra.json", "spectra.json")
    config_type = SpectraConfig
    units = "spectra_units"
    table_files = ("spectra.json", "spectra_stats.csv", "spectra_summary.csv")
    needs_data = False
    figure_specs = (
        FigureSpec(
            "spectra_esd",
            _esd,
            "Eigenvalue density of one layer (log-log) with the fitted power law (dashed) from "
            "x_min (dotted).",
        ),
        FigureSpec(
            "spectra_depth",
            _depth,
            "Per layer against depth: alpha (+- SE), stable rank, ||W||_2, and the FFT operator "
            "norm (circular, solid; zero-padding upper bound, dotted).",
        ),
        FigureSpec("spectra_epochs", _epochs, "Layer means against epoch."),
    )

    def settings(self, cfg: SpectraConfig, sources: Sources) -> dict[str, Any]:
        from awp.config import to_dict

        return {"spectra": to_dict(cfg), "dataset": sources.dataset, "image": sources.foreign.input}

    def compute(
        self, loaded: Loaded, cfg: SpectraConfig, *, label: str, folder: Path, progress: bool
    ) -> dict[str, Any]:
        from analysis.weight_spectra import esd_layer_name, model_spectra
        from awp.modes import unwrap
        from awp_landscape.inputs import rows_of

        layer = esd_layer_name(dict(unwrap(loaded.model).named_parameters()), cfg.esd_layer)
        recs, eigs = model_spectra(loaded.model, cfg)
        esd = eigs[layer].tolist() if layer in eigs else None
        return {"stats": rows_of(recs), "esd": [layer, esd]}

    def legacy(self, out: Path, sha256: str, settings: dict[str, Any]) -> dict[str, Any] | None:
        """A checkpoint measured by an earlier version (``spectra_units/spectra.rank*.json``)."""
        from analysis.store import SampleStore, StoreMismatch

        try:
            record = SampleStore(out / self.units, meta=settings, name="spectra").load()
        except StoreMismatch:
            return None
        found = record.get(sha256)
        return None if found is None else {"stats": found["stats"], "esd": found["esd"]}

    def result(self, entries: Sequence[Entry], cfg: SpectraConfig) -> dict[str, Any]:
        """What ``spectra.json`` holds: every checkpoint's records, labelled."""
        from analysis.weight_spectra import summarize
        from awp.config import to_dict
        from awp_landscape.inputs import rows_of

        idents = [e.row() for e in entries]
        stats, esd_rows = [], []
        for ident, e in zip(idents, entries):
            rows = [{**r, "label": e.label, **_where(ident)} for r in e.result["stats"]]
            stats += rows
            layer, eigs = e.result["esd"]
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

    def tables(self, entries: Sequence[Entry], cfg: SpectraConfig, out: Path) -> dict[str, str]:
        from awp.io import csv_text, json_text

        result = self.result(entries, cfg)
        return {
            "spectra.json": json_text(result),
            "spectra_stats.csv": csv_text(result["stats"]),
            "spectra_summary.csv": csv_text(result["summary"]),
        }

    def show(self, entries: Sequence[Entry], cfg: SpectraConfig) -> None:
        from awp_landscape.console import format_table, say

        result = self.result(entries, cfg)
        finals = set(result["final"])
        say(format_table([r for r in result["stats"] if r["label"] in finals], COLUMNS))
        if len(result["summary"]) > len(finals):
            cols = ("label", "epoch", "alpha_mean", "stable_rank_mean", "log10_op_norm_mean")
            say("\n" + format_table(result["summary"], cols))

    # -- the pipeline ---------------------------------------------------------------------
    def run(self, ctx: Context) -> None:

        self.run_on(ctx, SpectraConfig(), ctx.epoch_ckpts() or ctx.last, labelled=False)

    # -- the report -----------------------------------------------------------------------
    def section(self, res: Results) -> Section:
        import numpy as np

        from figures.html import Section, Table

        sp, s = res[self.name], Section("Weight spectra")
        cfg, finals = sp.get("config", {}), _finals(sp)
        final = [r for r in sp.get("stats", []) if r["label"] in finals]
        s.paragraphs.append(
            f"Per conv and linear layer ({len(sp.get('layers', []))} layers) of "
            f"{len(sp.get('checkpoints', []))} checkpoints: the singular values of W reshaped "
            "to (out, in*kh*kw) (WeightWatcher's convention), the stable rank ||W||_F^2 / "
            "||W||_2^2, and a power law p(lambda) ~ lambda^-alpha fitted to the eigenvalues of "
            "W^T W by maximum likelihood with x_min chosen by the Clauset-Shalizi-Newman KS "
            "rule, alpha +- its standard error (alpha - 1) / sqrt(n_tail); layers with fewer "
            f"than {cfg.get('min_tail')} eigenvalues get no fit. Smaller alpha reads as a "
            "heavier tail."
        )
        s.paragraphs.append(
            str(sp.get("operator_note", "")) + f" Sizes: each conv's own input size in the "
            f"network for a {cfg.get('image_size')} x {cfg.get('image_size')} image; "
            f"{cfg.get('power_iterations')} power iterations."
        )
        gaps = [
            (np.float64(r["op_norm_circular"]) / np.float64(r["op_norm_zero_lower"]) - 1, r)
            for r in final
            if r["kind"] == "conv"
        ]
        gaps = [(g, r) for g, r in gaps if np.isfinite(g)]
        if gaps:
            gap, r = max(gaps, key=lambda t: t[0])
            s.paragraphs.append(
                f"In this run the circular FFT value exceeded the zero-padded layer's norm (its "
                f"power-iteration lower bound) by up to {gap:.1%} ({r['label']}, {r['layer']}, "
                f"{r['fft_size']} x {r['fft_size']} inputs): on small inputs wrap-around matters."
            )
        s.tables.append(
            Table(
                final,
                columns=COLUMNS,
                caption="Per layer, last checkpoints (no fit: fewer than min_tail eigenvalues)",
                missing={"alpha": "no fit", "alpha_se": "no fit", "n_tail": "no fit"},
            )
        )
        summary = sp.get("summary", [])
        if len(summary) > len(finals):  # several checkpoints of a run: over epochs
            s.tables.append(
                Table(
                    summary,
                    columns=SUMMARY,
                    caption="Layer means per checkpoint",
                    missing={"alpha_mean": "no fit"},
                )
            )
        s.figures += self.figure_blocks(res)
        return s

    def sections(self) -> tuple[ReportSection, ...]:
        return (
            ReportSection(
                "Weight spectra",
                lambda r: r[self.name],
                self.section,
                "analysis/spectra/spectra.json (awp spectra)",
            ),
        )


MEASURE = Spectra()
