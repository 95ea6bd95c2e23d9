"""The 1-D weight loss landscapes of the final checkpoints, attacks regenerated at every point
(and the fixed mode for contrast): ``analysis/landscape/<label>.h5``."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from analysis.outcome import landscape_rise
from awp.config import PGD10_EVAL
from awp_landscape.commands.landscape import compute_landscapes
from awp_landscape.stages.base import Context, ReportSection, Stage, SweepColumn
from landscape.config import SurfaceConfig
from landscape.storage import Surface, read_surface

if TYPE_CHECKING:
    from awp_landscape.report.collect import Results
    from figures.html import Section

FOLDER = "landscape"


def config(plan: Any, device: str) -> SurfaceConfig:
    return SurfaceConfig(
        kind="1d",
        x=f"-1:1:{plan.landscape_points}",
        n_test=plan.landscape_n,
        n_train=0,
        attack=dataclasses.replace(PGD10_EVAL, steps=plan.analysis_steps),
        fixed=True,
        device=device,
    )


def run(ctx: Context) -> None:
    folder = ctx.path(STAGE)
    compute_landscapes(
        ctx.last,
        config(ctx.plan, ctx.device),
        out=folder,
        labels=ctx.labels,
        resume=any(folder.glob("*.h5")),
        progress=ctx.progress,
    )


def surfaces(folder: Path) -> list[Surface]:
    """Every surface file in ``folder`` (direction files left out)."""
    if not folder.is_dir():
        return []
    return [read_surface(h5) for h5 in sorted(folder.glob("*.h5"))
            if not h5.name.endswith(".directions.h5")]  # fmt: skip


def read(folder: Path) -> list[Surface]:
    """The landscapes of an analysis folder (trajectory planes are the trajectory stage's)."""
    return [s for s in surfaces(folder / FOLDER) if s.kind != "trajectory"]


def _sharpness(folder: Path, method: str) -> float | None:
    path = STAGE.folder(folder) / FOLDER / f"{method}.h5"
    return landscape_rise(read_surface(path)) if path.exists() else None


def measures(plan: Any) -> list[tuple[str, Any]]:
    on = f"PGD-{plan.analysis_steps}, {plan.landscape_n} test images"
    return [(f"landscape sharpness (adversarial loss rise along one direction; {on})", _sharpness)]


def sweep_values(folder: Path, label: str) -> dict[str, float | None]:
    return {"landscape sharpness (last)": _sharpness(folder, label)}


def incomplete(surfaces: Sequence[Surface]) -> list[str]:
    """A sentence for every surface file not complete (a stage stopped midway)."""
    return [
        f"{s.label}: {int(s.computed.sum())} of {s.computed.size} points computed (the stage "
        "was stopped midway; the others are missing from the figure)."
        for s in surfaces
        if not s.computed.all()
    ]


def section(res: Results) -> Section:
    from figures.html import FigureBlock, Section
    from figures.landscape import plot_attack_modes

    s = Section("Weight loss landscape")
    s.paragraphs.append(
        "theta = theta0 + alpha d along a filter-normalized Gaussian direction "
        "(same seed for every model); at every alpha PGD is run again on the "
        "perturbed model (solid). Dashed: adversarial examples crafted once at "
        "theta0 and reused, which underestimates the loss."
    )
    s.paragraphs += incomplete(res["landscape"])
    for split in ("test", "train"):
        have = [
            x
            for x in res["landscape"]
            if f"{split}_adv_loss" in x.values and np.isfinite(x.values[f"{split}_adv_loss"]).any()
        ]
        if have:
            s.figures.append(
                FigureBlock.from_figure(
                    plot_attack_modes(have, split),
                    f"{split} adversarial loss along alpha.",
                    f"landscape {split}",
                )
            )
    return s


STAGE = Stage(
    name="landscape",
    heading="weight loss landscapes (attacks regenerated, and fixed)",
    files=(FOLDER,),
    run=run,
    read=read,
    accumulate=True,
    sections=(
        ReportSection(
            "Weight loss landscape",
            lambda r: r["landscape"],
            section,
            "analysis/landscape/*.h5 (awp landscape)",
        ),
    ),
    measures=measures,
    sweep_columns=(SweepColumn("landscape sharpness (last)"),),
    sweep_values=sweep_values,
)
