"""A training trajectory on the loss surface of its two principal directions.

Filled contours of a metric over the PCA plane (``z[i, j]`` at ``(x[j], y[i])``), the projected
path drawn on top with each checkpoint's epoch, theta0 (the last checkpoint) at the origin;
axes in units of the farthest checkpoint's distance, the same on both, with each component's
explained variance. Several trajectories (AT and AT-AWP) side by side share each metric's
colour levels. Arrays in, a Figure out.

Reference: Li et al., NeurIPS 2018, Fig. 9 (trajectories on PCA directions).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from matplotlib.colors import BoundaryNorm
from matplotlib.figure import Figure

from figures.landscape import metric_label
from figures.style import new_figure


@dataclass(frozen=True, eq=False)
class TrajectoryPanel:
    """One trajectory surface.

    Attributes:
        label: the method (title).
        x: (nx,), y: (ny,) coordinates; z: (ny, nx) values (NaN = not computed).
        path: (T, 2) the checkpoints' coordinates in training order (the last at the origin).
        epochs: (T,) the checkpoints' epochs (annotations), or empty.
        explained: the explained variance ratio of PC1 and PC2.
    """

    label: str
    x: np.ndarray
    y: np.ndarray
    z: np.ndarray
    path: np.ndarray
    epochs: tuple[int, ...] = ()
    explained: tuple[float, float] = (float("nan"), float("nan"))

    def __post_init__(self) -> None:
        shape = (len(self.y), len(self.x))
        if np.shape(self.z) != shape or np.ndim(self.path) != 2 or np.shape(self.path)[1] != 2:
            raise ValueError(
                f"trajectory {self.label!r}: z must be (ny, nx) = {shape} and path (T, 2), got "
                f"{np.shape(self.z)} and {np.shape(self.path)}"
            )


def trajectory_panel(surface: Any, metric: str) -> TrajectoryPanel:
    """A panel from a trajectory surface (:class:`landscape.storage.Surface`) and a metric."""
    traj = surface.attrs.get("trajectory") or {}
    ratio = list(traj.get("explained_variance_ratio", [])) + [float("nan")] * 2
    return TrajectoryPanel(
        label=surface.label,
        x=np.asarray(surface.x, dtype=np.float64),
        y=np.asarray(surface.y, dtype=np.float64),
        z=np.asarray(surface.values[metric], dtype=np.float64),
        path=np.asarray(traj.get("coords", []), dtype=np.float64).reshape(-1, 2),
        epochs=tuple(int(c.get("epoch", 0)) for c in traj.get("path", [])),
        explained=(float(ratio[0]), float(ratio[1])),
    )


def draw_trajectory(ax, panel: TrajectoryPanel, levels: np.ndarray, *, zlabel: str = ""):
    """Filled contours, contour lines and the path of one panel into ``ax``; returns the
    filled-contour set (for a colour bar)."""
    z = np.ma.masked_invalid(panel.z)
    # colours by level index, so logarithmic levels get as many colours as linear ones
    norm = BoundaryNorm(levels, ncolors=256, extend="both")
    filled = ax.contourf(panel.x, panel.y, z, levels=levels, cmap="viridis", norm=norm)
    ax.contour(panel.x, panel.y, z, levels=levels, colors="white", linewidths=0.4, alpha=0.6)
    px, py = panel.path[:, 0], panel.path[:, 1]
    ax.plot(px, py, color="#d62728", marker="o", markersize=3.5, linewidth=1.4, zorder=3)
    ax.plot(px[:1], py[:1], marker="s", color="white", markeredgecolor="#d62728", zorder=4)
    ax.plot([0], [0], marker="*", markersize=11, color="#ffdd00", markeredgecolor="black", zorder=4)
    for (a, b), e in zip(panel.path, panel.epochs):
        ax.annotate(
            str(e), (a, b), textcoords="offset points", xytext=(3, 3), fontsize=6, color="white"
        )
    r1, r2 = panel.explained
    ax.set_xlabel(f"PC1 ({r1:.1%} of the variance)")
    ax.set_ylabel(f"PC2 ({r2:.1%})")
    ax.set_title(f"{panel.label}: {zlabel}" if zlabel else panel.label, fontsize=9)
    ax.set_aspect("equal", adjustable="box")
    ax.grid(False)
    return filled


def contour_levels(panels: Sequence[TrajectoryPanel], n: int) -> np.ndarray:
    """n + 1 levels over the panels' finite values: logarithmic when they are positive and span
    more than a factor 10 (a loss far from the path dwarfs the basin), else linear."""
    finite = np.concatenate([p.z[np.isfinite(p.z)] for p in panels])
    if finite.size == 0:
        raise ValueError("no computed values to draw (every point is NaN)")
    lo, hi = float(finite.min()), float(finite.max())
    if lo > 0 and hi > 10 * lo:
        return np.geomspace(lo, hi, n + 1)
    return np.linspace(lo, hi if hi > lo else lo + 1e-12, n + 1)


def plot_trajectories(
    rows: Sequence[Sequence[TrajectoryPanel]],
    *,
    metrics: Sequence[str],
    levels: int = 14,
) -> Figure:
    """Trajectories side by side: one row per metric, one column per run.

    Args:
        rows: per metric, the panels of every run (same runs in every row).
        metrics: the metric names (row labels and colour bars).
        levels: contour levels per row, shared by the row's panels.

    Returns:
        The figure (the first checkpoint a square, theta0 a star, epochs written).
    """
    if not rows or not rows[0] or len(rows) != len(metrics):
        raise ValueError("need one non-empty row of panels per metric")
    ncols = len(rows[0])
    fig, axes = new_figure(len(rows), ncols, width=3.4, height=2.6, squeeze=False)
    for r, (panels, metric) in enumerate(zip(rows, metrics)):
        lv = contour_levels(panels, levels)
        filled = None
        for c, panel in enumerate(panels):
            filled = draw_trajectory(axes[r][c], panel, lv, zlabel=metric_label(metric))
        bar = fig.colorbar(filled, ax=list(axes[r]), label=metric_label(metric), shrink=0.8)
        bar.ax.tick_params(labelsize=7)
    return fig
