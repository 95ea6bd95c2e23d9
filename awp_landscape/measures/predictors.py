"""The flatness measures of every saved checkpoint beside its robust gap: the data of "which
flatness measure predicts the robust gap" across the methods of a sweep.

With ``awp sweep --predictors``, every epoch checkpoint of every run is measured by the other
measures, each through its own computation (:func:`awp_landscape.measures.runner.run_measure`,
resumable): the robust gap, expected and worst-case flatness, adaptive sharpness (worst and
average case, robust and clean loss) and the top Hessian eigenvalue at fixed x_adv. One row per
checkpoint joins them (``analysis/predictors/predictors.json``); the sweep ranks each measure
against the gap over every (method, seed, checkpoint) (:func:`analysis.predictors.rank_measures`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from awp_landscape.measures.base import Context, Measure, Size

FOLDER = "predictors"
#: The columns of a row: the checkpoint, the robust gap, and each measure (robust loss unless
#: the name says clean), larger meaning sharper.
MEASURES = (
    "expected flatness",
    "worst-case flatness",
    "adaptive worst-case sharpness",
    "adaptive average sharpness",
    "adaptive worst-case sharpness (clean)",
    "adaptive average sharpness (clean)",
    "top Hessian eigenvalue",
)


class Predictors(Measure):
    name = "predictors"
    heading = "every checkpoint's flatness measures and robust gap"
    files = (f"{FOLDER}/predictors.json",)
    pipelines = ("sweep",)
    sizes = (
        Size(
            "predictors",
            False,
            "also measure every saved checkpoint's robust gap, expected and worst-case "
            "flatness, adaptive sharpness and top Hessian eigenvalue, and rank the measures "
            "against the gap, over the checkpoints of a seed and over the methods at equal "
            "epochs (which flatness predicts robust generalization)",
            plans=("sweep",),
        ),
    )

    def configs(self, ctx: Context) -> list[tuple[Any, Any]]:
        """(measure, its config) of every column, at the plan's sizes."""
        from analysis.config import WorstCaseConfig
        from awp_landscape.measures import curvature, flatness, gap, sharpness

        p = ctx.plan
        expected = flatness.MEASURE.plan_config(p, (p.flatness_alpha,), p.flatness_samples)
        worst = WorstCaseConfig(gammas=(p.worst_gamma,), ascent_steps=p.worst_steps)
        # the top eigenvalue alone (no trace, no density)
        top = dataclasses.replace(curvature.MEASURE.plan_config(p), trace=False, density=False)
        return [
            (gap.MEASURE, gap.MEASURE.plan_config(p)),
            (flatness.MEASURE, flatness.FlatnessRequest(flatness=expected, worst=worst)),
            (sharpness.MEASURE, sharpness.MEASURE.plan_config(p)),
            (curvature.MEASURE, top),
        ]

    def run(self, ctx: Context) -> None:
        from awp.io import atomic_write_text, json_text
        from awp_landscape.measures.runner import run_measure

        if not ctx.plan.predictors:
            return
        checkpoints = ctx.epoch_ckpts()
        if not checkpoints:
            ctx.log("skipped: no epoch checkpoints (train with --save-every)")
            return
        folder = self.path(ctx).parent
        tables = {}
        for measure, cfg in self.configs(ctx):
            out = folder / measure.name
            run_measure(measure, checkpoints, cfg, out=out, sources=ctx.sources(), figures=False)
            tables[measure.name] = measure.read(out)
        rows = joined(tables)
        atomic_write_text(folder / "predictors.json", json_text({"rows": rows}))
        ctx.log(f"{len(rows)} checkpoints measured: {folder / 'predictors.json'}")

    def read(self, folder: Path) -> list[dict[str, Any]]:
        from awp_landscape.measures.base import json_table

        return json_table(folder, self.files, "rows")


def joined(tables: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per checkpoint (by sha256): its identity, the robust gap and every measure.

    Args:
        tables: measure name -> what its reader returns (gap, flatness, sharpness and curvature
            rows of every checkpoint measured).
    """
    rows: dict[str, dict[str, Any]] = {}
    for r in tables["gap"]:
        rows[r["sha256"]] = {k: r.get(k) for k in ("checkpoint", "sha256", "run", "method",
                                                    "epoch", "gap")}  # fmt: skip

    def put(sha: str, column: str, value: Any) -> None:
        if sha in rows:
            rows[sha][column] = value

    for r in tables["flatness"]:
        name = {"expected": "expected flatness", "worst": "worst-case flatness"}.get(r["kind"])
        if name is not None:
            put(r["sha256"], name, r.get("flatness_loss"))
    for r in tables["sharpness"]:
        name = f"adaptive {'worst-case' if r['kind'] == 'worst' else 'average'} sharpness"
        put(r["sha256"], name + (" (clean)" if r["loss"] == "clean" else ""), r["sharpness"])
    for r in tables["curvature"]:
        row = r["row"]
        put(row["sha256"], "top Hessian eigenvalue", row.get("top_eigenvalue"))
    return sorted(rows.values(), key=lambda r: (str(r["run"]), int(r["epoch"] or 0)))


MEASURE = Predictors()
