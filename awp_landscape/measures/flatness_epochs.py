"""The expected flatness of every epoch checkpoint at one alpha, for flatness against the robust
gap (:mod:`awp_landscape.measures.correlate`): ``analysis/flatness_epochs/flatness.json``."""

from __future__ import annotations

from typing import Any

from analysis.config import FlatnessConfig
from awp_landscape.measures.base import Context, Size
from awp_landscape.measures.flatness import Flatness, FlatnessRequest


class FlatnessEpochs(Flatness):
    """:class:`~awp_landscape.measures.flatness.Flatness` of every epoch checkpoint, one alpha,
    few draws, no figures: the points of the correlation with the gap."""

    name = "flatness_epochs"
    heading = "flatness of every checkpoint"
    command = None
    files = ("flatness_epochs/flatness.json",)
    sizes = (
        Size("correlate_alpha", 0.1, "alpha of the per-checkpoint flatness (vs gap)",
             FlatnessConfig, "alphas"),
        Size("correlate_samples", 2, "noise draws per checkpoint for flatness vs gap",
             FlatnessConfig, "samples", reproduce=5),
    )  # fmt: skip
    figure_specs = ()
    pipelines = ("demo",)
    sweep_columns = ()

    def run(self, ctx: Context) -> None:

        p = ctx.plan
        cfg = FlatnessRequest(
            flatness=self.plan_config(p, (p.correlate_alpha,), p.correlate_samples)
        )
        self.run_on(ctx, cfg, ctx.epoch_ckpts(), labelled=False)

    def over_seeds(self, plan: Any) -> list[tuple[str, Any]]:
        return []

    def sections(self) -> tuple:
        return ()


MEASURE = FlatnessEpochs()
