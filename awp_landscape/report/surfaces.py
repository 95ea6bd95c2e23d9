"""The report's rotatable 3-D views: every 2-D landscape and training-trajectory plane.

One interactive figure per kind of plane and metric, AT and AT-AWP side by side on one z
scale (plotly, its JavaScript embedded once in the HTML), and the same panels as a static image
beside it for the markdown twin and for readers without JavaScript.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from awp.extras import MissingDependencyError
from figures.html import FigureBlock, InteractiveBlock, Section
from figures.interactive import SurfacePanel, surface_figure_json, surface_figure_static
from figures.landscape import metric_label
from landscape.grid import PLANES
from landscape.storage import Surface

METRICS = ("test_adv_loss", "test_loss")  # drawn when every surface of a kind has them
KIND_TITLES = {"2d": "2-D weight loss landscape", "trajectory": "training-trajectory plane"}


def planes(surfaces: Sequence[Surface]) -> list[Surface]:
    """The surfaces on a plane (2-D landscapes, trajectories), by kind then label."""
    return sorted((s for s in surfaces if s.kind in PLANES), key=lambda s: (s.kind, s.label))


def _panel(s: Surface, metric: str) -> SurfacePanel:
    assert s.y is not None
    path = None
    if s.kind == "trajectory":
        coords = (s.attrs.get("trajectory") or {}).get("coords", [])
        path = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
    return SurfacePanel(s.label, s.x, s.y, s.values[metric], path)


def interactive_section(surfaces: Sequence[Surface]) -> Section:
    """The section of rotatable views of every plane among ``surfaces``."""
    section = Section("Surfaces in 3-D")
    section.paragraphs.append(
        "Drag to rotate, scroll to zoom. In each figure every panel has the same z range and "
        "color scale; the static image under each is the same view. A trajectory's path (red) "
        "is drawn at the height of the surface under it."
    )
    for kind in PLANES:
        group = [s for s in planes(surfaces) if s.kind == kind]
        for metric in (m for m in METRICS if group and all(m in s.values for s in group)):
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
