"""Rotatable 3-D views of 2-D surfaces (plotly, offline), and the static image beside them.

Arrays in, figures out: a plotly figure as JSON (the report embeds plotly's JavaScript once
and draws every such figure with it) and a matplotlib figure of the same panels for places
that cannot run JavaScript (the markdown twin, print). Every panel of one figure shares one z
range and one color scale, so AT and AT-AWP are compared on one scale.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib.figure import Figure

from awp.extras import require
from figures.style import new_figure


@dataclass(frozen=True)
class SurfacePanel:
    """One surface: (ny, nx) values over x (nx,) and y (ny,), and optionally a path on it.

    Attributes:
        label: the panel's title (AT, AT-AWP).
        x, y: coordinates; z: values, row j at y[j] (NaN where not computed).
        path: (k, 2) in-plane coordinates of a training path (trajectory planes), or None.
    """

    label: str
    x: np.ndarray
    y: np.ndarray
    z: np.ndarray
    path: np.ndarray | None = None


def z_range(panels: Sequence[SurfacePanel]) -> tuple[float, float]:
    """The common (min, max) of every panel's finite values."""
    finite = np.concatenate([p.z[np.isfinite(p.z)].ravel() for p in panels])
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = float(finite.min()), float(finite.max())
    return (lo, hi) if hi > lo else (lo - 0.5, hi + 0.5)


def _on_surface(p: SurfacePanel) -> np.ndarray:
    """The path's heights: the surface interpolated (bilinear) at its points, clipped to the
    grid."""
    from scipy.interpolate import RegularGridInterpolator

    assert p.path is not None
    at = np.column_stack(
        [np.clip(p.path[:, 1], p.y[0], p.y[-1]), np.clip(p.path[:, 0], p.x[0], p.x[-1])]
    )
    return RegularGridInterpolator((p.y, p.x), p.z)(at)


def surface_figure_json(
    panels: Sequence[SurfacePanel], *, zlabel: str, title: str = "", height: int = 460
) -> str:
    """A plotly figure (as JSON) with one rotatable 3-D scene per panel, side by side, all on
    one z range and color scale.

    Raises:
        MissingDependencyError: plotly is not installed (names the extra).
    """
    go = require("plotly.graph_objects", purpose="the report's interactive surfaces")
    subplots = require("plotly.subplots", purpose="the report's interactive surfaces")
    lo, hi = z_range(panels)
    n = len(panels)
    fig = subplots.make_subplots(
        rows=1,
        cols=n,
        specs=[[{"type": "scene"}] * n],
        subplot_titles=[p.label for p in panels],
        horizontal_spacing=0.02,
    )
    for k, p in enumerate(panels, start=1):
        fig.add_trace(
            go.Surface(
                x=p.x,
                y=p.y,
                z=np.where(np.isfinite(p.z), p.z, None),
                cmin=lo,
                cmax=hi,
                colorscale="Viridis",
                showscale=k == n,
                colorbar={"title": {"text": zlabel}},
                name=p.label,
            ),
            row=1,
            col=k,
        )
        if p.path is not None and len(p.path):
            fig.add_trace(
                go.Scatter3d(
                    x=p.path[:, 0],
                    y=p.path[:, 1],
                    z=_on_surface(p),
                    mode="lines+markers",
                    line={"color": "red", "width": 5},
                    marker={"size": 3, "color": "red"},
                    name=f"{p.label} path",
                    showlegend=False,
                ),
                row=1,
                col=k,
            )
    scene = {
        "zaxis": {"range": [lo, hi], "title": {"text": zlabel}},
        "xaxis": {"title": {"text": "x"}},
        "yaxis": {"title": {"text": "y"}},
    }
    fig.update_layout(
        title={"text": title} if title else None,
        height=height,
        margin={"l": 0, "r": 0, "t": 40 if title else 30, "b": 0},
        **{("scene" if k == 1 else f"scene{k}"): scene for k in range(1, n + 1)},
    )
    return fig.to_json()


def surface_figure_static(
    panels: Sequence[SurfacePanel], *, zlabel: str, title: str = ""
) -> Figure:
    """The same panels as a matplotlib 3-D figure (one z range and color scale)."""
    lo, hi = z_range(panels)
    fig, _ = new_figure(1, 1, width=4.2 * len(panels), height=3.6)
    fig.clear()
    for k, p in enumerate(panels, start=1):
        ax = fig.add_subplot(1, len(panels), k, projection="3d")
        xx, yy = np.meshgrid(p.x, p.y)
        ax.plot_surface(xx, yy, p.z, cmap="viridis", vmin=lo, vmax=hi, linewidth=0)
        if p.path is not None and len(p.path):
            ax.plot(p.path[:, 0], p.path[:, 1], _on_surface(p), color="red", marker=".")
        ax.set_zlim(lo, hi)
        ax.set_title(p.label)
        ax.set_zlabel(zlabel)
    if title:
        fig.suptitle(title)
    return fig
