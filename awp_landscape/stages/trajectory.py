"""The training trajectory of each run on the plane of its two principal directions, with the
loss of that plane (PGD regenerated at every point): ``analysis/trajectory/<label>.h5``; and the
report's rotatable 3-D views of every plane (2-D landscapes and trajectories)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from awp.config import PGD10_EVAL
from awp_landscape.commands.landscape import compute_landscapes
from awp_landscape.stages import landscape
from awp_landscape.stages.base import Context, ReportSection, Stage
from landscape.config import SurfaceConfig
from landscape.run import safe_name
from landscape.storage import Surface

if TYPE_CHECKING:
    from awp_landscape.report.collect import Results
    from figures.html import Section

FOLDER = "trajectory"


def config(plan: Any, device: str) -> SurfaceConfig:
    # PCA over every parameter and BatchNorm re-estimated at every point: with theta0's
    # statistics the early checkpoints' region of the plane has losses in the hundreds.
    p = plan.trajectory_points
    return SurfaceConfig(
        kind="trajectory",
        x=f"-1.2:0.3:{p}",
        y=f"-0.5:0.5:{p}",
        dir_include="all",
        n_test=plan.trajectory_n,
        n_train=0,
        attack=dataclasses.replace(PGD10_EVAL, steps=plan.analysis_steps),
        bn="recompute",
        n_bn=plan.trajectory_bn,
        device=device,
    )


def run(ctx: Context) -> None:
    cfg = config(ctx.plan, ctx.device)
    for label, run_ in ctx.runs.items():
        path = run_.epoch_ckpts()
        if len(path) < 3:
            ctx.log(f"[{label}] skipped: a trajectory needs 3 epoch checkpoints, found {len(path)}")
            continue
        out = ctx.path(STAGE) / f"{safe_name(label)}.h5"
        compute_landscapes(
            path, cfg, out=out, labels=[label], resume=out.exists(), progress=ctx.progress
        )


def read(folder: Path) -> list[Surface]:
    """``trajectory/*.h5``, and a trajectory file among the landscapes."""
    own = landscape.surfaces(folder / FOLDER)
    return own + [
        s for s in landscape.surfaces(folder / landscape.FOLDER) if s.kind == "trajectory"
    ]


def section(res: Results) -> Section:
    from figures.html import FigureBlock, Section, Table
    from figures.trajectory import plot_trajectories, trajectory_panel

    s = Section("Training trajectory")
    trajs = sorted(res["trajectory"], key=lambda t: t.label)
    cfg = trajs[0].config
    attack = trajs[0].attrs.get("attack", "none")
    bn = (
        f"BatchNorm statistics re-estimated on {cfg.get('n_bn')} training images at every point"
        if cfg.get("bn") == "recompute"
        else "BatchNorm with the last checkpoint's statistics (far from it they do not fit)"
    )
    s.paragraphs.append(
        "PCA of the epoch checkpoints' weights relative to the last one (theta0; loss-"
        "landscape's centered PCA over "
        f"{'every parameter' if cfg.get('dir_include') == 'all' else 'conv and linear weights'}"
        "), the path projected on the first two principal directions, and the loss on that "
        "plane with PGD regenerated at every point (the evaluator of the other surfaces). "
        "Coordinates are in units of the farthest checkpoint's distance from theta0. A point "
        "of the plane is not a checkpoint: a checkpoint lies in it only to its in-plane "
        f"fraction. Sizes: {len(trajs[0].x)} x {trajs[0].rows} points, "
        f"{cfg.get('n_test')} test images, {attack}; {bn}."
    )
    s.paragraphs += landscape.incomplete(trajs)
    rows = []
    for t in trajs:
        tr = t.attrs.get("trajectory") or {}
        ratio = list(tr.get("explained_variance_ratio", [])) + [float("nan")] * 2
        epochs = [c.get("epoch") for c in tr.get("path", [])]
        rows.append(
            {
                "method": t.label,
                "checkpoints": len(epochs),
                "epochs": f"{epochs[0]}-{epochs[-1]}" if epochs else "",
                "PC1": ratio[0],
                "PC2": ratio[1],
                "other PCs": 1.0 - ratio[0] - ratio[1],
                "unit (weight distance)": tr.get("scale"),
                "in-plane (min)": float(np.min(tr.get("in_plane", [np.nan]))),
            }
        )
    s.tables.append(Table(rows, caption="Explained variance of the principal directions"))
    metrics = [m for m in ("test_loss", "test_adv_loss") if all(m in t.values for t in trajs)]
    if metrics:
        panels = [[trajectory_panel(t, m) for t in trajs] for m in metrics]
        s.figures.append(
            FigureBlock.from_figure(
                plot_trajectories(panels, metrics=metrics),
                "The path (square: first checkpoint, star: theta0, epochs written) on the clean "
                "(top) and adversarial (bottom) test loss of its plane.",
                "training trajectory",
            )
        )
    return s


def _planes(res: Results) -> list[Surface]:
    from awp_landscape.report.surfaces import planes

    return planes([*res["landscape"], *res["trajectory"]])


def surfaces_section(res: Results) -> Section:
    """Rotatable 3-D views of every 2-D landscape and trajectory plane."""
    from awp_landscape.report.surfaces import interactive_section

    return interactive_section([*res["landscape"], *res["trajectory"]])


STAGE = Stage(
    name="trajectory",
    heading="training trajectories on their PCA planes",
    files=(FOLDER,),
    run=run,
    read=read,
    accumulate=True,
    sections=(
        ReportSection(
            "Training trajectory",
            lambda r: r["trajectory"],
            section,
            "analysis/trajectory/*.h5 (awp landscape --kind trajectory)",
        ),
        ReportSection(
            "3-D views of the planes",
            _planes,
            surfaces_section,
            "analysis/landscape/*.h5 and analysis/trajectory/*.h5 (2-D)",
        ),
    ),
)
