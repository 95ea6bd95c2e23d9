"""Robustness to post-training weight quantization: every conv and linear weight quantized
symmetrically per output channel (8, 6 and 4 bits by default), natural and robust accuracy with
the attack regenerated on every quantized model.

    awp quantize runs/at/checkpoints/last.pt runs/at_awp/checkpoints/last.pt --bits 8 4

The demo measures the final checkpoints (``analysis/quantize.json``) on the gap's test subset
size (``--gap-n``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from analysis.config import FLOAT_BITS, QuantizeConfig
from awp_landscape.measures.base import CheckpointMeasure, Context, FigureSpec, ReportSection

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from awp_landscape.inputs import Loaded
    from awp_landscape.measures.runner import Entry
    from awp_landscape.results import Results
    from figures.html import Section

COLUMNS = ("label", "bits", "natural_acc", "robust_acc", "robust_loss", "weight_error")


def _plot(q: dict[str, Any]) -> Figure | None:
    from figures.quantize import plot_quantization

    rows = q.get("rows") or []
    return plot_quantization(rows, float_bits=FLOAT_BITS) if rows else None


class Quantize(CheckpointMeasure):
    name = "quantize"
    heading = "robustness to weight quantization (8, 6, 4 bits)"
    command = "quantize"
    summary = "natural and robust accuracy of the checkpoints with quantized weights"
    description = (
        "Every conv and linear weight quantized after training, symmetrically per output "
        "channel to each bit width (step max|w_c| / (2^(b-1) - 1)); natural and robust accuracy "
        "of each quantized model with the attack regenerated on it, beside the float weights' "
        "(bits 32). Finished checkpoints are kept in <out>/quantize/ and skipped when run "
        "again; under torchrun checkpoints are split across ranks."
    )
    files = ("quantize.json",)
    config_type = QuantizeConfig
    units = "quantize"
    table_files = ("quantize.json", "quantize.csv")
    figure_specs = (
        FigureSpec(
            "quantization",
            _plot,
            "Natural (left) and robust (right) accuracy against the weights' bit width.",
        ),
    )

    def compute(
        self, loaded: Loaded, cfg: QuantizeConfig, *, label: str, folder: Path, progress: bool
    ) -> dict[str, Any]:
        from analysis.quantize import quantized_accuracy
        from awp.data import capped_notice, fixed_subset

        test = loaded.data.test
        n = capped_notice(cfg.n_test, len(test), flag="--n-test")
        idx = fixed_subset(len(test), n, seed=cfg.seed).to(test.x.device)
        rows = quantized_accuracy(loaded.model, test.x[idx], test.y[idx], cfg)
        return {"rows": [{"attack": cfg.attack.describe(), **r} for r in rows]}

    def legacy(self, out: Path, sha256: str, settings: dict[str, Any]) -> dict[str, Any] | None:
        """A checkpoint an earlier version measured: its rows of ``<out>/quantize.json``, of the
        same settings."""
        from awp.io import read_json

        path = out / "quantize.json"
        if not path.exists():
            return None
        saved = read_json(path)
        if saved.get("settings") != settings["quantize"] or settings.get("dataset"):
            return None
        rows = [r for r in saved.get("rows", []) if r.get("sha256") == sha256]
        drop = ("label", "sha256", "epoch")
        return (
            {"rows": [{k: v for k, v in r.items() if k not in drop} for r in rows]}
            if rows
            else None
        )

    def rows(self, entries: Sequence[Entry]) -> list[dict[str, Any]]:
        return [
            {"label": e.label, "sha256": e.sha256, "epoch": e.identity.get("epoch"), **r}
            for e in entries
            for r in e.result["rows"]
        ]

    def tables(self, entries: Sequence[Entry], cfg: QuantizeConfig, out: Path) -> dict[str, str]:
        from awp.config import to_dict
        from awp.io import csv_text, json_text

        rows = self.rows(entries)
        return {
            "quantize.json": json_text({"settings": to_dict(cfg), "rows": rows}),
            "quantize.csv": csv_text(rows),
        }

    def show(self, entries: Sequence[Entry], cfg: QuantizeConfig) -> None:
        from awp_landscape.console import format_table, say

        say(f"weight quantization ({cfg.attack.describe()} regenerated on each quantized model)")
        say(format_table(self.rows(entries), COLUMNS))

    # -- the pipeline ---------------------------------------------------------------------
    def run(self, ctx: Context) -> None:

        # PGD-20 as the final evaluation (not the analyses' shorter attack), on the gap's size
        cfg = QuantizeConfig(n_test=ctx.plan.gap_n)
        self.run_on(ctx, cfg)

    def read(self, folder: Path) -> dict[str, Any]:
        from awp_landscape.measures.base import json_table

        return json_table(folder, self.files)

    def _row(self, folder: Path, method: str, bits: int) -> dict[str, Any] | None:
        rows = [r for r in self.read_seed(folder).get("rows", [])
                if r["label"] == method and r["bits"] == bits]  # fmt: skip
        return rows[0] if rows else None

    def over_seeds(self, plan: Any) -> list[tuple[str, Any]]:
        low = min(QuantizeConfig().bits)

        def robust_at(folder: Path, method: str) -> float | None:
            r = self._row(folder, method, low)
            return None if r is None else float(r["robust_acc"])

        def robust_drop(folder: Path, method: str) -> float | None:
            full, q = self._row(folder, method, FLOAT_BITS), self._row(folder, method, low)
            return None if full is None or q is None else full["robust_acc"] - q["robust_acc"]

        return [
            (f"robust accuracy with {low}-bit weights (PGD-20, attack on the quantized model)",
             robust_at),
            (f"robust accuracy lost by {low}-bit weights (float minus quantized)", robust_drop),
        ]  # fmt: skip

    # -- the report -----------------------------------------------------------------------
    def section(self, res: Results) -> Section:
        from figures.html import Section, Table

        q = res[self.name]
        rows = q["rows"]
        cfg = q.get("settings", {})
        s = Section("Weight quantization")
        s.paragraphs.append(
            "Every conv and linear weight quantized after training, symmetrically per output "
            f"channel to {', '.join(map(str, cfg.get('bits', [])))} bits (step max|w_c| / "
            "(2^(b-1) - 1)); natural and robust accuracy of each quantized model on "
            f"{rows[0]['n']} test images, the attack ({rows[0]['attack']}) regenerated on the "
            "quantized model. bits 32: the float weights. One run per method and one subset: "
            "no interval."
        )
        s.tables.append(Table(rows, columns=COLUMNS, caption="Accuracy of the quantized models"))
        s.figures += self.figure_blocks(res)
        return s

    def sections(self) -> tuple[ReportSection, ...]:
        return (
            ReportSection(
                "Weight quantization",
                lambda r: r[self.name].get("rows"),
                self.section,
                "analysis/quantize.json (awp quantize)",
            ),
        )


MEASURE = Quantize()
