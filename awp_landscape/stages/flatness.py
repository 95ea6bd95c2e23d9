"""Expected and worst-case flatness of the final checkpoints, with the PAC-Bayes terms:
``analysis/flatness_final/flatness.json`` (``flatness.json`` where ``awp flatness`` wrote it)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from analysis.flatness import FlatnessConfig
from analysis.worst_case import WorstCaseConfig
from awp.config import PGD20_EVAL
from awp_landscape.commands.flatness import measure_flatness
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

FILES = ("flatness_final/flatness.json", "flatness.json")


def alphas(plan: Any) -> tuple[float, ...]:
    """The noise scales of the final checkpoints' expected flatness: the demo's curve
    (``flatness_alphas``), or the sweep's one scale (``flatness_alpha``)."""
    if hasattr(plan, "flatness_alphas"):
        return tuple(plan.flatness_alphas)
    return (plan.flatness_alpha,)


def config(plan: Any, scales: tuple[float, ...], samples: int) -> FlatnessConfig:
    """The flatness settings of a plan at the given noise scales and draws."""
    return FlatnessConfig(
        alphas=scales,
        samples=samples,
        n_examples=plan.flatness_n,
        attack=dataclasses.replace(PGD20_EVAL, steps=plan.analysis_steps),
    )


def run(ctx: Context) -> None:
    p = ctx.plan
    measure_flatness(
        ctx.last,
        config(p, alphas(p), p.flatness_samples),
        out=ctx.path(STAGE).parent,
        labels=ctx.labels,
        worst=WorstCaseConfig(gammas=(p.worst_gamma,), ascent_steps=p.worst_steps),
        sources=ctx.sources(),
        figures=ctx.figures,
    )


read = json_reader(FILES, "rows")


def flatness_of(kind: str, key: str, value: float, column: str = "flatness_loss") -> Measure:
    """A method's final-checkpoint flatness of one kind (expected at an alpha, worst at a
    gamma), by label."""

    def get(folder: Path, method: str) -> float | None:
        rows = [
            r
            for r in STAGE.read_seed(folder)
            if r.get("kind") == kind and r.get("label") == method and r.get(key) == value
        ]
        return float(rows[0][column]) if rows and rows[0].get(column) is not None else None

    return get


# The names of the expected-flatness measures over seeds, by alpha: the signed one and the
# absolute one (the rebuttal's, reviewer 4).
SIGNED = "expected flatness at alpha={alpha:g}"
ABSOLUTE = "expected absolute flatness at alpha={alpha:g}"


def measures(plan: Any) -> list[tuple[str, Any]]:
    on = f"PGD-{plan.analysis_steps}, {plan.flatness_n} train images"
    out: list[tuple[str, Any]] = [
        (
            f"{SIGNED.format(alpha=a)} (robust loss increase; {on})",
            flatness_of("expected", "alpha", a),
        )
        for a in alphas(plan)
    ]
    out += [
        (
            f"{ABSOLUTE.format(alpha=a)} (mean |robust loss change|; {on})",
            flatness_of("expected", "alpha", a, "abs_flatness_loss"),
        )
        for a in alphas(plan)
    ]
    out.append(
        (
            f"worst-case flatness at gamma={plan.worst_gamma:g} (robust loss increase; {on}, "
            f"{plan.worst_steps} ascent steps)",
            flatness_of("worst", "gamma", plan.worst_gamma),
        )
    )
    return out


def absolute_as_signed(
    measures: list[dict[str, Any]],
) -> tuple[list[dict[str, Any]], str | None]:
    """The measures over seeds without the expected absolute flatness that equals the signed
    one for both methods (every noise draw raised the robust loss: E|d| = E d), and the one
    sentence that says so instead of repeating those rows; the others are kept."""

    def alpha_of(name: str, template: str) -> str | None:
        head = template.split("{")[0]
        return name[len(head) :].split(" ", 1)[0] if name.startswith(head) else None

    signed = {alpha_of(m["measure"], SIGNED): m for m in measures}
    same = []
    for m in measures:
        alpha = alpha_of(m["measure"], ABSOLUTE)
        twin = signed.get(alpha) if alpha is not None else None
        if twin is not None and all(
            m.get(k) is not None
            and twin.get(k) is not None
            and math.isclose(m[k], twin[k], rel_tol=1e-9, abs_tol=1e-12)
            for k in ("mean_at", "mean_awp")
        ):
            same.append((alpha, m))
    if not same:
        return measures, None
    left = [m for m in measures if all(m is not s for _, s in same)]
    said = (
        f"Expected absolute flatness (mean |robust loss change|) equals the expected flatness at "
        f"alpha={', '.join(a for a, _ in same)} for both methods: every noise draw raised the "
        "robust loss, so its rows are not repeated."
    )
    return left, said


def sweep_values(folder: Path, label: str) -> dict[str, float | None]:
    rows = {r["kind"]: r for r in STAGE.read_seed(folder) if r.get("label") == label}
    return {
        "expected flatness (last)": rows.get("expected", {}).get("flatness_loss"),
        "worst-case flatness (last)": rows.get("worst", {}).get("flatness_loss"),
    }


EXPECTED_COLUMNS = (
    "label",
    "noise",
    "alpha",
    "samples",
    "n",
    "base_error",
    "flatness",
    "flatness_low",
    "flatness_high",
    "flatness_loss",
    "abs_flatness",
    "abs_flatness_loss",
    "ci_note",
)
BOUND_COLUMNS = (
    "label",
    "alpha",
    "kl",
    "kl_rebuttal",
    "complexity_exact",
    "complexity_rebuttal",
    "bound_exact",
    "bound_rebuttal",
    "vacuous_exact",
    "vacuous_rebuttal",
)
WORST_COLUMNS = (
    "label",
    "gamma",
    "ascent_steps",
    "n",
    "base_error",
    "worst_error",
    "flatness",
    "flatness_loss",
)


def section(res: Results) -> Section:
    from figures.flatness import plot_flatness_curve
    from figures.html import FigureBlock, Section, Table

    s = Section("Flatness and the PAC-Bayes bound")
    exp = [r for r in res["flatness"] if r.get("kind") == "expected"]
    worst = [r for r in res["flatness"] if r.get("kind") == "worst"]
    s.paragraphs.append(
        "Expected flatness E_u[rho(w+u)] - rho(w) with rho the robust 0-1 "
        "error (and robust loss), attacks regenerated on every w+u, and the absolute "
        "flatness E_u|rho(w+u) - rho(w)| (abs_flatness, the rebuttal's reviewer 4, question "
        "1) over the same draws; worst case: max over ||v_l|| <= gamma ||w_l|| by projected "
        "ascent."
    )
    if exp:
        undefined = "undefined (ci_note)"
        s.tables.append(
            Table(
                exp,
                columns=[
                    c
                    for c in EXPECTED_COLUMNS
                    if c != "ci_note" or any(r.get("ci_note") for r in exp)
                ],
                caption="Expected flatness (flatness_low/high: t interval over noise draws)",
                missing={"flatness_low": undefined, "flatness_high": undefined, "ci_note": ""},
            )
        )
        s.tables.append(
            Table(
                exp,
                columns=BOUND_COLUMNS,
                caption="PAC-Bayes terms (exact KL vs the rebuttal's 1/(2 alpha)); "
                "vacuous = bound above 1",
            )
        )
        s.figures.append(
            FigureBlock.from_figure(
                plot_flatness_curve(exp, measure="flatness_loss"),
                "Expected flatness (robust loss increase) against alpha.",
                "flatness curve",
            )
        )
        if all(r.get("abs_flatness_loss") is not None for r in exp):
            s.figures.append(
                FigureBlock.from_figure(
                    plot_flatness_curve(exp, measure="abs_flatness_loss"),
                    "Expected absolute flatness E|rho(w+u) - rho(w)| (robust loss) against "
                    "alpha: beside the signed one, a draw that lowers the loss cannot cancel "
                    "one that raises it.",
                    "absolute flatness curve",
                )
            )
    if worst:
        s.tables.append(Table(worst, columns=WORST_COLUMNS, caption="Worst-case flatness"))
    return s


STAGE = Stage(
    name="flatness",
    heading="expected and worst-case flatness, PAC-Bayes terms",
    files=FILES,
    run=run,
    read=read,
    sections=(
        ReportSection(
            "Flatness",
            lambda r: r["flatness"],
            section,
            "analysis/flatness_final/flatness.json (awp flatness)",
        ),
    ),
    measures=measures,
    sweep_columns=(
        SweepColumn("expected flatness (last)"),
        SweepColumn("worst-case flatness (last)"),
    ),
    sweep_values=sweep_values,
)
