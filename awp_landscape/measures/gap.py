"""The robust generalization gap of every checkpoint given: robust accuracy on a fixed seeded
train subset minus robust accuracy on a test subset (same attack, eval mode, no augmentation,
unperturbed weights), and the robust loss gap.

    awp gap runs/*/checkpoints/epoch_*.pt --out runs/analysis

The demo measures every epoch checkpoint (``analysis/gap.json``), the sweep the last ones.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from analysis.config import GapConfig
from awp_landscape.measures.base import (
    CheckpointMeasure,
    Context,
    FigureSpec,
    ReportSection,
    Size,
    SweepColumn,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from awp_landscape.inputs import Loaded
    from awp_landscape.measures.runner import Entry
    from awp_landscape.results import Results
    from figures.html import Section

COLUMNS = ("method", "epoch", "train_robust_acc", "test_robust_acc", "gap", "loss_gap")


def _plot(rows: list[dict[str, Any]]) -> Figure | None:
    from figures.curves import plot_gap_by_epoch

    return plot_gap_by_epoch(rows) if rows else None


class Gap(CheckpointMeasure):
    name = "gap"
    heading = "robust generalization gap of every checkpoint"
    command = "gap"
    summary = "robust generalization gap of many checkpoints"
    description = (
        "Robust accuracy on a fixed seeded train subset minus robust accuracy on a test subset "
        "(same attack, eval mode, no augmentation), and the robust loss gap, for every "
        "checkpoint given. Finished checkpoints are kept in <out>/gap/ and skipped when run "
        "again; under torchrun checkpoints are split across ranks."
    )
    dataset_help = "dataset (default: each checkpoint's)"
    takes_labels = False
    files = ("gap.json",)
    accumulate = True
    config_type = GapConfig
    units = "gap"
    table_files = ("gap.json", "gap.csv")
    sizes = (
        Size(
            "gap_n",
            200,
            "train and test images of the robust gap of each checkpoint (and of quantization)",
            GapConfig,
            "n_train",
            plans=("demo", "sweep"),
            reproduce=1000,
        ),
    )
    figure_specs = (FigureSpec("gap_by_epoch", _plot, "Robust gap per epoch."),)
    pipelines = ("demo", "sweep")
    sweep_columns = (SweepColumn("robust gap (last)", reported=True),)

    def compute(
        self, loaded: Loaded, cfg: GapConfig, *, label: str, folder: Path, progress: bool
    ) -> dict[str, Any]:
        from analysis.gap import robust_gap, subset

        xtr, ytr = subset(loaded.data.train, cfg.n_train, seed=cfg.subset_seed, flag="--n-train")
        xte, yte = subset(loaded.data.test, cfg.n_test, seed=cfg.subset_seed, flag="--n-test")
        rec = robust_gap(
            loaded.model, xtr, ytr, xte, yte, attack=cfg.attack, batch_size=cfg.batch_size,
            seed=cfg.seed,
        )  # fmt: skip
        return {
            "dataset": loaded.data_cfg.dataset,
            "attack": cfg.attack.describe(),
            **dataclasses.asdict(rec),
        }

    def legacy(self, out: Path, sha256: str, settings: dict[str, Any]) -> dict[str, Any] | None:
        """A checkpoint measured by an earlier version: a record of ``<out>/gap/gap.rank*.json``
        with the same settings."""
        from analysis.store import SampleStore, StoreMismatch

        try:
            record = SampleStore(out / self.units, meta=settings, name="gap").load().get(sha256)
        except StoreMismatch:
            return None
        if record is None:
            return None
        return {k: v for k, v in record.items() if k not in ("checkpoint", "sha256", "run")}

    def rows(self, entries: Sequence[Entry]) -> list[dict[str, Any]]:
        """One row per checkpoint: its identity, then the gap."""
        return [{**e.identity, **e.result} for e in entries]

    def tables(self, entries: Sequence[Entry], cfg: GapConfig, out: Path) -> dict[str, str]:
        from awp.io import csv_text, json_text

        rows = self.rows(entries)
        settings = entries[0].settings if entries else {}
        return {"gap.json": json_text({"settings": settings, "rows": rows}),
                "gap.csv": csv_text(rows)}  # fmt: skip

    def show(self, entries: Sequence[Entry], cfg: GapConfig) -> None:
        from awp_landscape.console import format_table, say

        say(f"robust generalization gap ({cfg.attack.describe()}, eval mode, seed {cfg.seed})")
        cols = ("run", *COLUMNS)
        say(format_table([{c: r[c] for c in cols} for r in self.rows(entries)]))

    def read(self, folder: Path) -> list[dict[str, Any]]:
        from awp_landscape.measures.base import json_table

        return json_table(folder, self.files, "rows")

    # -- the pipeline ---------------------------------------------------------------------
    def plan_config(self, plan: Any) -> GapConfig:
        from awp_landscape.measures.base import analysis_attack

        return GapConfig(n_train=plan.gap_n, n_test=plan.gap_n, attack=analysis_attack(plan))

    def run(self, ctx: Context) -> None:

        checkpoints = ctx.last if ctx.sweep else ctx.epoch_ckpts()
        self.run_on(ctx, self.plan_config(ctx.plan), checkpoints, labelled=False)

    def last_gap(self, folder: Path, method: str) -> float | None:
        rows = [r for r in self.read_seed(folder) if r.get("method") == method]
        return float(max(rows, key=lambda r: r["epoch"])["gap"]) if rows else None

    def over_seeds(self, plan: Any) -> list[tuple[str, Any]]:
        sizes = f"PGD-{plan.analysis_steps}, {plan.gap_n} train and {plan.gap_n} test images"
        return [
            (f"robust gap at the last checkpoint (train - test robust accuracy; {sizes})",
             self.last_gap)
        ]  # fmt: skip

    def sweep_values(self, folder: Path, label: str) -> dict[str, float | None]:
        rows = [r for r in self.read_seed(folder) if r.get("run") == label]
        last = max(rows, key=lambda r: r["epoch"]) if rows else None
        return {"robust gap (last)": None if last is None else float(last["gap"])}

    # -- the report -----------------------------------------------------------------------
    def section(self, res: Results) -> Section:
        from figures.html import Section, Table

        rows = res[self.name]
        s = Section("Robust generalization gap")
        s.paragraphs.append(
            f"Robust accuracy on a fixed train subset minus robust accuracy on a "
            f"test subset, same attack ({rows[0].get('attack')}), eval mode, "
            f"unperturbed weights."
        )
        s.tables.append(
            Table(
                sorted(rows, key=lambda r: (r["method"], r.get("epoch") or 0)),
                columns=list(COLUMNS),
                caption="Gap per checkpoint",
            )
        )
        s.figures += self.figure_blocks(res)
        return s

    def sections(self) -> tuple[ReportSection, ...]:
        return (
            ReportSection(
                "Robust generalization gap",
                lambda r: r[self.name],
                self.section,
                "analysis/gap.json (awp gap)",
            ),
        )


MEASURE = Gap()
