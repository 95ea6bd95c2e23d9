"""The training trajectory of each run on the plane of its two principal directions, with the
loss of that plane (PGD regenerated at every point): ``analysis/trajectory/<label>.h5`` (its
command is ``awp landscape --kind trajectory``); and the report's rotatable 3-D views of every
plane (2-D landscapes and trajectories)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from awp_landscape.measures.base import Context, Measure, ReportSection, Size
from landscape.config import SurfaceConfig

if TYPE_CHECKING:
    from awp_landscape.results import Results
    from figures.html import Section
    from figures.interactive import SurfacePanel
    from landscape.storage import Surface

FOLDER = "trajectory"
PLANE_METRICS = ("test_adv_loss", "test_loss")  # drawn when every surface of a kind has them
KIND_TITLES = {"2d": "2-D weight loss landscape", "trajectory": "training-trajectory plane"}


def _panel(s: Surface, metric: str) -> SurfacePanel:
    import numpy as np

    from figures.interactive import SurfacePanel

    assert s.y is not None
    path = None
    if s.kind == "trajectory":
        coords = (s.attrs.get("trajectory") or {}).get("coords", [])
        path = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
    return SurfacePanel(s.label, s.x, s.y, s.values[metric], path)


class Trajectory(Measure):
    name = "trajectory"
    heading = "training trajectories on their PCA planes"
    files = (FOLDER,)
    accumulate = True
    sizes = (
        Size("trajectory_points", 7, "grid points per axis of the training-trajectory plane",
             bounds=(1, 1001), reproduce=21),
        Size("trajectory_n", 50, "test images per point of the training-trajectory plane",
             SurfaceConfig, "n_test", reproduce=1000),
        Size("trajectory_bn", 128, "training images re-estimating BatchNorm at each such point",
             SurfaceConfig, "n_bn", reproduce=1000),
    )  # fmt: skip

    def plan_config(self, plan: Any, device: str) -> SurfaceConfig:
        from awp_landscape.measures.base import analysis_attack

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
            attack=analysis_attack(plan),
            bn="recompute",
            n_bn=plan.trajectory_bn,
            device=device,
        )

    def run(self, ctx: Context) -> None:
        from awp_landscape.measures.landscape import compute_landscapes
        from landscape.run import safe_name

        cfg = self.plan_config(ctx.plan, ctx.device)
        for label, run_ in ctx.runs.items():
            path = run_.epoch_ckpts()
            if len(path) < 3:
                ctx.log(
                    f"[{label}] skipped: a trajectory needs 3 epoch checkpoints, found {len(path)}"
                )
                continue
            out = self.path(ctx) / f"{safe_name(label)}.h5"
            compute_landscapes(
                path, cfg, out=out, labels=[label], resume=out.exists(), progress=ctx.progress
            )

    def read(self, folder: Path) -> list[Surface]:
        """``trajectory/*.h5``, and a trajectory file among the landscapes."""
        from awp_landscape.measures import landscape

        own = landscape.surfaces(folder / FOLDER)
        return own + [s for s in landscape.surfaces(folder / landscape.FOLDER)
                      if s.kind == "trajectory"]  # fmt: skip

    def section(self, res: Results) -> Section:
        import numpy as np

        from awp_landscape.measures.landscape import incomplete
        from figures.html import FigureBlock, Section, Table
        from figures.trajectory import plot_trajectories, trajectory_panel

        s = Section("Training trajectory")
        trajs = sorted(res[self.name], key=lambda t: t.label)
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
        s.paragraphs += incomplete(trajs)
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
                    "The path (square: first checkpoint, star: theta0, epochs written) on the "
                    "clean (top) and adversarial (bottom) test loss of its plane.",
                    "training trajectory",
                )
            )
        return s

    def planes(self, res: Results) -> list[Surface]:
        """The surfaces on a plane (2-D landscapes, trajectories), by kind then label."""
        from landscape.grid import PLANES

        every = [*res["landscape"], *res[self.name]]
        return sorted((s for s in every if s.kind in PLANES), key=lambda s: (s.kind, s.label))

    def surfaces_section(self, res: Results) -> Section:
        """Rotatable 3-D views of every 2-D landscape and trajectory plane: one interactive
        figure per kind of plane and metric, AT and AT-AWP side by side on one z scale (plotly,
        its JavaScript embedded once in the HTML), and the same panels as a static image beside
        it for the markdown twin and for readers without JavaScript."""
        from awp.extras import MissingDependencyError
        from figures.html import FigureBlock, InteractiveBlock, Section
        from figures.interactive import surface_figure_json, surface_figure_static
        from figures.landscape import metric_label
        from landscape.grid import PLANES

        section = Section("Surfaces in 3-D")
        section.paragraphs.append(
            "Drag to rotate, scroll to zoom. In each figure every panel has the same z range "
            "and color scale; the static image under each is the same view. A trajectory's path "
            "(red) is drawn at the height of the surface under it."
        )
        for kind in PLANES:
            group = [s for s in self.planes(res) if s.kind == kind]
            for metric in (m for m in PLANE_METRICS if group and all(m in s.values for s in group)):
                panels = [_panel(s, metric) for s in group]
                what = f"{KIND_TITLES[kind]}: {metric_label(metric)}"
                caption = f"{what}, {' and '.join(p.label for p in panels)} on one z scale."
                try:
                    spec = surface_figure_json(panels, zlabel=metric_label(metric))
                except MissingDependencyError as err:
                    section.paragraphs.append(f"NOTE: no rotatable views: {err}")
                    return section
                static = surface_figure_static(panels, zlabel=metric_label(metric))
                png = FigureBlock.from_figure(static, caption, alt=f"{what} (static)")
                section.interactive.append(InteractiveBlock(spec, png, caption, alt=what))
        return section

    def sections(self) -> tuple[ReportSection, ...]:
        return (
            ReportSection(
                "Training trajectory",
                lambda r: r[self.name],
                self.section,
                "analysis/trajectory/*.h5 (awp landscape --kind trajectory)",
            ),
            ReportSection(
                "3-D views of the planes",
                self.planes,
                self.surfaces_section,
                "analysis/landscape/*.h5 and analysis/trajectory/*.h5 (2-D)",
            ),
        )


MEASURE = Trajectory()
