"""The curvature of the loss at fixed x_adv of the final checkpoints (top Hessian eigenvalue,
Hutchinson trace, SLQ eigenvalue density): ``analysis/curvature/hessian.json``."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from analysis.curvature import HessianConfig
from analysis.curvature_results import curvature_statement
from awp.config import PGD20_EVAL
from awp_landscape.commands.hessian import measure_hessian
from awp_landscape.stages.base import Context, ReportSection, Stage, json_reader

if TYPE_CHECKING:
    from awp_landscape.report.collect import Results
    from figures.html import Section

FILES = ("curvature/hessian.json", "hessian.json")


def config(plan: Any) -> HessianConfig:
    # Sized for ~25 s on 2 cores at the demo's size (two checkpoints): the top eigenvalue
    # (Lanczos with 8 vectors to 1e-2, which ARPACK usually meets in its first 8
    # products), a few Hutchinson probes, one SLQ run of 10 steps.
    return HessianConfig(
        n_examples=plan.hessian_n,
        top_k=1,
        eig_tol=1e-2,
        lanczos_vectors=8,
        trace=True,
        probes_min=plan.hessian_probes,
        probes_max=plan.hessian_probes,
        density=True,
        slq_runs=1,
        slq_steps=10,
        attack=dataclasses.replace(PGD20_EVAL, steps=plan.analysis_steps),
    )


def run(ctx: Context) -> None:
    measure_hessian(
        ctx.last,
        config(ctx.plan),
        out=ctx.path(STAGE).parent,
        labels=ctx.labels,
        sources=ctx.sources(),
    )


read = json_reader(FILES, "results")  # the per-checkpoint results


CURVATURE_COLUMNS = (
    "label",
    "n",
    "loss",
    "accuracy",
    "top_eigenvalue",
    "eigenvalue_2",
    "trace",
    "trace_low",
    "trace_high",
    "trace_probes",
    "slq_trace",
    "hvps",
)


def curvature_sizes(row: Mapping[str, Any]) -> str:
    """What was measured, with its sizes, from a row of hessian.json."""
    loss = (
        f"x_adv crafted at w by {row['attack']} and held fixed"
        if row.get("loss_type") == "adv"
        else "clean images"
    )
    k = sum(1 for c in row if c == "top_eigenvalue" or c.startswith("eigenvalue_"))
    coords = "conv and linear weights" if row["params"] == "weights" else "parameters"
    parts = [
        f"Hessian of the mean cross-entropy over {row['n']} {row['split']} images ({loss}), "
        f"BatchNorm in eval mode, with respect to the {row['p']:,} {coords} ({row['dtype']})"
    ]
    if k:
        what = "the top eigenvalue" if k == 1 else f"the top {k} eigenvalues"
        parts.append(f"{what} by Lanczos")
    if row.get("trace_probes"):
        parts.append(
            f"the trace by Hutchinson with {row['trace_probes']} Rademacher probes "
            f"({row.get('trace_confidence', 0.95):.0%} t interval)"
        )
    if row.get("slq_runs"):
        parts.append(
            f"the eigenvalue density by SLQ ({row['slq_runs']} run(s) of {row['slq_steps']} "
            f"Lanczos steps, Gaussian broadening); hvps: Hessian-vector products in all"
        )
    return "; ".join(parts) + "."


def section(res: Results) -> Section:
    from figures.hessian import plot_eigen_density, plot_layer_curvature, plot_top_eigenvalues
    from figures.html import FigureBlock, Section, Table

    found = res["curvature"]
    s = Section("Curvature: the Hessian of the loss at fixed x_adv")
    rows = [r["row"] for r in found]
    s.paragraphs.append(curvature_sizes(rows[0]))
    s.paragraphs.append(
        "By Danskin's theorem the loss with x_adv held fixed has the robust loss's gradient at "
        "w, but not its full curvature, which also moves with x_adv: these numbers describe "
        "the loss on examples adversarial at w. Small subsets and few probes make them noisy."
    )
    s.paragraphs += curvature_statement(rows)
    cols = [c for c in CURVATURE_COLUMNS if any(c in r for r in rows)]
    s.tables.append(Table(rows, columns=cols, caption="Curvature per checkpoint"))
    if any(r.get("density") for r in found):
        s.figures.append(
            FigureBlock.from_figure(
                plot_eigen_density(found),
                "Eigenvalue density (SLQ), log scale.",
                "eigenvalue density",
            )
        )
    if any(len(r.get("eigenvalues") or ()) > 1 for r in found):
        s.figures.append(
            FigureBlock.from_figure(
                plot_top_eigenvalues(found), "Top eigenvalues.", "top eigenvalues"
            )
        )
    if any(x.get("trace") is not None for r in found for x in r.get("layers", [])):
        s.figures.append(
            FigureBlock.from_figure(
                plot_layer_curvature(found),
                "Trace of each layer's diagonal block (Hutchinson, with its interval) by depth.",
                "per-layer curvature",
            )
        )
    return s


STAGE = Stage(
    name="curvature",
    heading="curvature: Hessian eigenvalues, trace and density",
    files=FILES,
    run=run,
    read=read,
    sections=(
        ReportSection(
            "Curvature",
            lambda r: r["curvature"],
            section,
            "analysis/curvature/hessian.json (awp hessian)",
        ),
    ),
)
