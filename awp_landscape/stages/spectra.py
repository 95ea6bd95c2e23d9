"""Weight spectra of every checkpoint (singular values, stable rank, power-law tails, FFT
operator norms): ``analysis/spectra/spectra.json``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from analysis.weight_spectra import SpectraConfig
from awp_landscape.commands.spectra import measure_spectra
from awp_landscape.stages.base import Context, ReportSection, Stage, json_reader

if TYPE_CHECKING:
    from awp_landscape.report.collect import Results
    from figures.html import Section

FILES = ("spectra/spectra.json", "spectra.json")


def run(ctx: Context) -> None:
    measure_spectra(
        ctx.epoch_ckpts() or ctx.last,
        SpectraConfig(),
        out=ctx.path(STAGE).parent,
        sources=ctx.sources(),
    )


read = json_reader(FILES)


SPECTRA_COLUMNS = ("label", "layer", "fft_size", "spectral_norm", "op_norm_circular")
SPECTRA_COLUMNS += ("op_norm_zero_lower", "op_norm_zero_bound", "stable_rank", "alpha", "alpha_se")
SPECTRA_COLUMNS += ("n_tail",)
SPECTRA_SUMMARY = ("label", "epoch", "fitted", "alpha_mean", "stable_rank_mean")
SPECTRA_SUMMARY += ("log10_op_norm_mean",)


def section(res: Results) -> Section:
    from figures.html import FigureBlock, Section, Table
    from figures.spectra import plot_esd, plot_spectra_depth, plot_spectra_epochs

    sp, s = res["spectra"], Section("Weight spectra")
    cfg, finals = sp.get("config", {}), set(sp.get("final", []))
    final = [r for r in sp.get("stats", []) if r["label"] in finals]
    s.paragraphs.append(
        f"Per conv and linear layer ({len(sp.get('layers', []))} layers) of "
        f"{len(sp.get('checkpoints', []))} checkpoints: the singular values of W reshaped to "
        "(out, in*kh*kw) (WeightWatcher's convention), the stable rank ||W||_F^2 / ||W||_2^2, "
        "and a power law p(lambda) ~ lambda^-alpha fitted to the eigenvalues of W^T W by "
        "maximum likelihood with x_min chosen by the Clauset-Shalizi-Newman KS rule, alpha "
        "+- its standard error (alpha - 1) / sqrt(n_tail); layers with fewer than "
        f"{cfg.get('min_tail')} eigenvalues get no fit. Smaller alpha reads as a heavier tail."
    )
    s.paragraphs.append(
        str(sp.get("operator_note", "")) + f" Sizes: each conv's own input "
        f"size in the network for a {cfg.get('image_size')} x "
        f"{cfg.get('image_size')} image; {cfg.get('power_iterations')} power "
        "iterations."
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
            columns=SPECTRA_COLUMNS,
            caption="Per layer, last checkpoints (no fit: fewer than min_tail eigenvalues)",
            missing={"alpha": "no fit", "alpha_se": "no fit", "n_tail": "no fit"},
        )
    )
    summary = sp.get("summary", [])
    esd = [r for r in sp.get("esd", []) if r["label"] in finals]
    if esd:
        s.figures.append(
            FigureBlock.from_figure(
                plot_esd(esd),
                "Eigenvalue density of one layer (log-log) with the fitted power law (dashed) "
                "from x_min (dotted).",
                "ESD",
            )
        )
    s.figures.append(
        FigureBlock.from_figure(
            plot_spectra_depth(final),
            "Per layer against depth: alpha (+- SE), stable rank, ||W||_2, and the FFT "
            "operator norm (circular, solid; zero-padding upper bound, dotted).",
            "spectra by depth",
        )
    )
    if len(summary) > len(finals):  # several checkpoints of a run: over epochs
        s.tables.append(
            Table(
                summary,
                columns=SPECTRA_SUMMARY,
                caption="Layer means per checkpoint",
                missing={"alpha_mean": "no fit"},
            )
        )
        s.figures.append(
            FigureBlock.from_figure(
                plot_spectra_epochs(summary), "Layer means against epoch.", "spectra by epoch"
            )
        )
    return s


STAGE = Stage(
    name="spectra",
    heading="weight spectra",
    files=FILES,
    run=run,
    read=read,
    sections=(
        ReportSection(
            "Weight spectra",
            lambda r: r["spectra"],
            section,
            "analysis/spectra/spectra.json (awp spectra)",
        ),
    ),
)
