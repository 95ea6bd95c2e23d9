"""Adaptive sharpness of every checkpoint given (Andriushchenko et al., ICML 2023): with
T_w = |w| elementwise, the worst case E_B[max_{||T_w^-1 d||_p <= rho} L_B(w + d) - L_B(w)] by
projected ascent and the average case E_B E_{d ~ N(0, rho^2 T_w^2)}[L_B(w + d) - L_B(w)], over
batches B of m examples (m-sharpness), on the robust loss (the attack regenerated at every
w + d) and on the clean loss.

    awp sharpness runs/at/checkpoints/last.pt runs/at_awp/checkpoints/last.pt --out results

Finished units (each batch's base loss, ascent and draws) of every checkpoint live in
``<out>/sharpness/<stem>-<sha8>/`` and are skipped when run again; under torchrun they are split
across ranks. The computation is :mod:`analysis.adaptive_sharpness`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from analysis.config import SHARPNESS_MUTABLE, AdaptiveSharpnessConfig
from awp_landscape.measures.base import (
    CheckpointMeasure,
    Context,
    FigureSpec,
    ReportSection,
    Size,
    SweepColumn,
    analysis_attack,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from awp_landscape.inputs import Loaded
    from awp_landscape.measures.runner import Entry
    from awp_landscape.results import Results
    from figures.html import Section

COLUMNS = ("label", "kind", "loss", "rho", "p", "m", "batches", "base_loss", "perturbed_loss",
           "sharpness", "ci_low", "ci_high", "d_ratio")  # fmt: skip

log = logging.getLogger(__name__)


def _plot(rows: list[dict[str, Any]]) -> Figure | None:
    from figures.flatness import plot_sharpness

    return plot_sharpness(rows) if rows else None


class Sharpness(CheckpointMeasure):
    name = "sharpness"
    heading = "adaptive sharpness, worst and average case"
    command = "sharpness"
    summary = "adaptive sharpness (Andriushchenko et al. 2023): worst and average case"
    description = __doc__.split("\n\n")[0].replace("\n", " ")
    files = ("sharpness/sharpness.json", "sharpness.json")
    config_type = AdaptiveSharpnessConfig
    units = "sharpness"
    table_files = ("sharpness.json", "sharpness.csv")
    shard = "units"
    labelled = True
    resume_mutable = tuple(f"sharpness.{name}" for name in SHARPNESS_MUTABLE)
    sizes = (
        Size("sharpness_n", 256, "train images of the adaptive sharpness", AdaptiveSharpnessConfig,
             "n_examples", plans=("demo", "sweep"), reproduce=1024),
        Size("sharpness_m", 128, "batch size m of the m-sharpness", AdaptiveSharpnessConfig, "m",
             plans=("demo", "sweep")),
        Size("sharpness_steps", 5, "ascent steps of the worst-case adaptive sharpness",
             AdaptiveSharpnessConfig, "steps", plans=("demo", "sweep"), reproduce=20),
        Size("sharpness_draws", 4, "noise draws per batch of the average-case sharpness",
             AdaptiveSharpnessConfig, "draws", plans=("demo", "sweep"), reproduce=20),
    )  # fmt: skip
    figure_specs = (
        FigureSpec(
            "sharpness",
            _plot,
            "Adaptive sharpness (loss increase) of each checkpoint, worst case (left) and average "
            "case (right), with its t interval over batches.",
        ),
    )
    pipelines = ("demo", "sweep")
    sweep_columns = (
        SweepColumn("adaptive worst-case sharpness (last)", reported=True),
        SweepColumn("adaptive average sharpness (last)"),
    )

    def settings(self, cfg: AdaptiveSharpnessConfig, sources: Any) -> dict[str, Any]:
        """As every measure's, without ``fit_m``: what it changes (the m of a split smaller
        than m) is recorded in the rows, and a result computed without it is the same."""
        settings = super().settings(cfg, sources)
        settings[self.name].pop("fit_m", None)
        return settings

    def add_flags(self, p: Any) -> None:
        from awp_landscape.flags import add_dataclass_arguments, explain_default

        add_dataclass_arguments(p, self.config_type)
        explain_default(
            p,
            "--attack-steps",
            "PGD-10, not the PGD-20 of eval and the analyses, as the attack is crafted anew at "
            "every ascent step and every noise draw of every batch; write --attack-steps 20 to "
            "match them",
        )

    def compute(
        self, loaded: Loaded, cfg: AdaptiveSharpnessConfig, *, label: str, folder: Path | None,
        progress: bool, loss: Any = None,
    ) -> dict[str, Any]:  # fmt: skip
        from analysis.adaptive_sharpness import adaptive_sharpness, result_rows
        from analysis.gap import subset
        from analysis.store import SampleStore
        from awp import distributed
        from awp.config import to_dict

        split = loaded.data.train if cfg.split == "train" else loaded.data.test
        x, y = subset(split, cfg.n_examples, seed=cfg.subset_seed, flag="--n-examples")
        if cfg.fit_m and len(y) < cfg.m:
            log.warning("the %s split has %d examples, fewer than the batch size m=%d of the "
                        "adaptive sharpness: one batch of all %d", cfg.split, len(y), cfg.m,
                        len(y))  # fmt: skip
            cfg = dataclasses.replace(cfg, m=len(y), n_examples=len(y))
        meta = {**cfg.store_settings(), "checkpoint_sha256": loaded.sha256,
                "data": to_dict(loaded.data_cfg), "split_size": len(split)}  # fmt: skip
        rank = distributed.current().rank
        store = None if folder is None else SampleStore(folder, meta=meta, name="sharpness",
                                                        rank=rank)  # fmt: skip
        result = adaptive_sharpness(
            loaded.model, x, y, cfg, loss=loss, store=store, progress=progress
        )
        ident = {**loaded.identity(), "label": label}
        return {"rows": result_rows(result.estimates, cfg=cfg, ident=ident),
                "n_used": result.n_used, "n_left_out": result.n_left_out}  # fmt: skip

    def tables(
        self, entries: Sequence[Entry], cfg: AdaptiveSharpnessConfig, out: Path
    ) -> dict[str, str]:
        from awp.io import csv_text, json_text

        rows = [r for e in entries for r in e.result["rows"]]
        return {"sharpness.json": json_text({"rows": rows}), "sharpness.csv": csv_text(rows)}

    def show(self, entries: Sequence[Entry], cfg: AdaptiveSharpnessConfig) -> None:
        from awp_landscape.console import format_table, say

        attack = cfg.attack.describe() if cfg.attack is not None else "no attack"
        say(f"adaptive sharpness ({'T_w = |w|' if cfg.adaptive else 'not adaptive'}, "
            f"m={cfg.m}, robust loss: {attack} regenerated at every w + d)")  # fmt: skip
        shown = ("label", "kind", "loss", "rho", "sharpness", "ci_low", "ci_high")
        say(format_table([r for e in entries for r in e.result["rows"]], shown))

    def read(self, folder: Path) -> list[dict[str, Any]]:
        from awp_landscape.measures.base import json_table

        return json_table(folder, self.files, "rows")

    # -- the pipeline ---------------------------------------------------------------------
    def plan_config(self, plan: Any) -> AdaptiveSharpnessConfig:
        return AdaptiveSharpnessConfig(
            n_examples=plan.sharpness_n, m=plan.sharpness_m, steps=plan.sharpness_steps,
            draws=plan.sharpness_draws, attack=analysis_attack(plan), fit_m=True,
        )  # fmt: skip

    def run(self, ctx: Context) -> None:

        self.run_on(ctx, self.plan_config(ctx.plan))

    def value(self, kind: str) -> Any:
        """A method's final-checkpoint adaptive sharpness of ``kind`` on the robust loss."""

        def get(folder: Path, method: str) -> float | None:
            rows = [
                r
                for r in self.read_seed(folder)
                if (r.get("label"), r.get("kind"), r.get("loss")) == (method, kind, "robust")
            ]
            return float(rows[0]["sharpness"]) if rows else None  # fmt: skip

        return get

    def over_seeds(self, plan: Any) -> list[tuple[str, Any]]:
        on = f"robust loss, PGD-{plan.analysis_steps}, {plan.sharpness_n} train images"
        return [
            (f"adaptive worst-case sharpness ({on})", self.value("worst")),
            (f"adaptive average sharpness ({on})", self.value("average")),
        ]

    def sweep_values(self, folder: Path, label: str) -> dict[str, float | None]:
        return {
            "adaptive worst-case sharpness (last)": self.value("worst")(folder, label),
            "adaptive average sharpness (last)": self.value("average")(folder, label),
        }

    # -- the report -----------------------------------------------------------------------
    def section(self, res: Results) -> Section:
        from figures.html import Section, Table

        rows = res[self.name]
        s = Section("Adaptive sharpness")
        s.paragraphs.append(
            "Andriushchenko et al.'s adaptive sharpness (invariant to rescaling the weights: "
            "T_w = |w| elementwise, every parameter), averaged over batches of m training "
            f"images (m = {rows[0]['m']}): the worst case by projected ascent inside "
            "||T_w^-1 d||_p <= rho, the average case over Gaussian d ~ N(0, rho^2 T_w^2); on "
            f"the robust loss ({rows[0].get('attack')}, regenerated at every w + d) and on the "
            "clean loss. Few batches make a wide or undefined interval."
        )
        s.tables.append(Table(rows, columns=COLUMNS, caption="Adaptive sharpness per checkpoint"))
        s.figures += self.figure_blocks(res)
        return s

    def sections(self) -> tuple[ReportSection, ...]:
        return (
            ReportSection(
                "Adaptive sharpness",
                lambda r: r[self.name],
                self.section,
                "analysis/sharpness/sharpness.json (awp sharpness)",
            ),
        )


MEASURE = Sharpness()
