"""The expected flatness of every epoch checkpoint at one alpha (for flatness versus the gap):
``analysis/flatness_epochs/flatness.json``."""

from __future__ import annotations

from awp_landscape.commands.flatness import measure_flatness
from awp_landscape.stages import flatness
from awp_landscape.stages.base import Context, Stage, json_reader

FILES = ("flatness_epochs/flatness.json",)


def run(ctx: Context) -> None:
    p = ctx.plan
    measure_flatness(
        ctx.epoch_ckpts(),
        flatness.config(p, (p.correlate_alpha,), p.correlate_samples),
        out=ctx.path(STAGE).parent,
        sources=ctx.sources(),
        figures=False,
    )


read = json_reader(FILES, "rows")


STAGE = Stage(
    name="flatness_epochs",
    heading="flatness of every checkpoint",
    files=FILES,
    run=run,
    read=read,
)
