"""Landscape figures: Figure 1 style curves (loss vs alpha, several checkpoints, a band over
directions), 2-D contour, filled contour, heatmap and 3-D surface.

Functions take arrays and return matplotlib Figures (Agg); they never open files or windows.
Saving is :func:`figures.style.save_figure`. Value arrays are (rows, nx): for curves a row per
direction, for surfaces ``z[i, j]`` at ``(x[j], y[i])`` (the layout ``np.meshgrid(x, y)``
gives), so non-square grids land in the right cells. NaN (not computed) is left blank.

Reference: Wu, Xia, Wang, NeurIPS 2020, Fig. 1; Li et al., NeurIPS 2018 (plot_2D.py views).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from matplotlib import cm
from matplotlib.figure import Figure

from figures.style import color_for, new_figure
from landscape.curvature_map import eig_ratio

BANDS = ("std", "minmax", "none")
SURFACE_PLOTS = ("contour", "contourf", "heatmap", "surface")

# Axis labels by metric suffix.
_LABELS = {
    "adv_fixed_loss": "adversarial loss (x_adv fixed at w0)",
    "adv_fixed_acc": "adversarial accuracy (x_adv fixed at w0)",
    "adv_loss": "adversarial loss",
    "adv_acc": "adversarial accuracy",
    "loss": "loss",
    "acc": "accuracy",
}


def metric_label(name: str) -> str:
    """``test_adv_loss`` -> ``test adversarial loss``."""
    split, _, rest = name.partition("_")
    for suffix, label in _LABELS.items():
        if rest == suffix:
            return f"{split} {label}"
    return name.replace("_", " ")


@dataclass(frozen=True, eq=False)
class Curve:
    """One checkpoint's curve(s) along alpha.

    Attributes:
        label: legend entry and colour key (``AT``, ``AT-AWP``...).
        x: (nx,) coordinates alpha.
        values: (rows, nx) values, one row per direction (NaN = not computed).
    """

    label: str
    x: np.ndarray
    values: np.ndarray

    def __post_init__(self) -> None:
        x = np.asarray(self.x, dtype=np.float64).reshape(-1)
        v = np.asarray(self.values, dtype=np.float64)
        v = v.reshape(1, -1) if v.ndim == 1 else v
        if v.ndim != 2 or v.shape[1] != len(x):
            raise ValueError(
                f"curve {self.label!r}: values of shape {np.shape(self.values)} do not fit "
                f"{len(x)} x coordinates; expected (rows, {len(x)})"
            )
        object.__setattr__(self, "x", x)
        object.__setattr__(self, "values", v)


def curve_stats(values: np.ndarray, band: str = "std") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean over directions and the band around it, ignoring NaN.

    Args:
        values: (rows, nx).
        band: "std" (mean +- one standard deviation), "minmax" or "none".

    Returns:
        (mean, low, high), each (nx,); NaN where no direction has a value.
    """
    if band not in BANDS:
        raise ValueError(f"unknown band {band!r}; choose one of {BANDS}")
    v = np.asarray(values, dtype=np.float64)
    with warnings.catch_warnings():
        # A column with no computed point gives NaN, which is what we want to draw (a gap).
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(v, axis=0)
        if band == "minmax":
            low, high = np.nanmin(v, axis=0), np.nanmax(v, axis=0)
        elif band == "std":
            std = np.nanstd(v, axis=0)
            low, high = mean - std, mean + std
        else:
            low = high = mean
    return mean, low, high


def plot_curves(
    curves: Sequence[Curve],
    *,
    ylabel: str = "adversarial loss",
    xlabel: str = r"$\alpha$",
    title: str | None = None,
    band: str = "std",
    ax=None,
) -> Figure:
    """Loss (or accuracy) against alpha for several checkpoints, AWP's Figure 1 style.

    Each curve is drawn as its mean over directions with markers; with several directions a
    shaded band shows their spread (``band``). Colours follow the method labels (AT blue,
    AT-AWP red).

    Args:
        curves: one :class:`Curve` per checkpoint.
        ylabel, xlabel, title: axis texts.
        band: "std", "minmax" or "none" (only drawn where a curve has several rows).
        ax: draw into these axes (of a figure made by the caller) instead of a new figure.

    Returns:
        The figure.
    """
    if not curves:
        raise ValueError("plot_curves needs at least one curve")
    if ax is None:
        fig, ax = new_figure(width=4.2, height=3.2)
    else:
        fig = ax.figure
    for i, c in enumerate(curves):
        color = color_for(c.label, i)
        mean, low, high = curve_stats(c.values, band)
        n = c.values.shape[0]
        label = c.label if n == 1 else f"{c.label} ({n} directions)"
        ax.plot(c.x, mean, marker="o", markersize=3, color=color, label=label)
        if n > 1 and band != "none":
            ax.fill_between(c.x, low, high, color=color, alpha=0.2, linewidth=0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.legend(frameon=False)
    return fig


def plot_attack_modes(surfaces: Sequence[Any], split: str) -> Figure:
    """1-D landscapes: adversarial loss along alpha with attacks regenerated (solid) and fixed
    at w0 (dashed), one colour per checkpoint.

    Args:
        surfaces: landscape curves with ``label``, ``x`` (nx,) and ``values`` (name -> (rows,
            nx) array, e.g. :class:`landscape.storage.Surface`).
        split: "test" or "train".
    """
    fig, ax = new_figure(width=4.4, height=3.2)
    for i, s in enumerate(surfaces):
        color = color_for(s.label, i)
        regen = np.nanmean(s.values[f"{split}_adv_loss"], axis=0)
        ax.plot(
            s.x,
            regen,
            color=color,
            marker="o",
            markersize=3,
            label=f"{s.label} (attack regenerated)",
        )
        fixed = s.values.get(f"{split}_adv_fixed_loss")
        if fixed is not None and np.isfinite(fixed).any():
            ax.plot(
                s.x,
                np.nanmean(fixed, axis=0),
                color=color,
                linestyle="--",
                label=f"{s.label} (x_adv fixed at w0)",
            )
    ax.set_xlabel(r"$\alpha$ (filter-normalized direction)")
    ax.set_ylabel(f"{split} adversarial loss")
    ax.legend(frameon=False)
    return fig


def _check_grid(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, ...]:
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    z = np.asarray(z, dtype=np.float64)
    if z.shape != (len(y), len(x)):
        hint = (
            " (it looks transposed: z[i, j] must be at (x[j], y[i]))"
            if z.shape
            == (
                len(x),
                len(y),
            )
            else ""
        )
        raise ValueError(f"z has shape {z.shape}, expected (ny, nx) = ({len(y)}, {len(x)}){hint}")
    if len(x) < 2 or len(y) < 2:
        raise ValueError(f"a surface plot needs at least 2 x 2 points, got {len(y)} x {len(x)}")
    return x, y, z


def _levels(z: np.ndarray, levels: int | Sequence[float] | None, vmin, vmax):
    if levels is not None and not isinstance(levels, int):
        return np.asarray(levels, dtype=np.float64)
    finite = z[np.isfinite(z)]
    if finite.size == 0:
        raise ValueError("no computed values to draw (every point is NaN)")
    lo = float(finite.min()) if vmin is None else float(vmin)
    hi = float(finite.max()) if vmax is None else float(vmax)
    if hi <= lo:
        hi = lo + 1e-12
    return np.linspace(lo, hi, (levels or 15) + 1)


def plot_contour(
    x: np.ndarray,
    y: np.ndarray,
    z: np.ndarray,
    *,
    filled: bool = False,
    levels: int | Sequence[float] | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
    zlabel: str = "loss",
    title: str | None = None,
) -> Figure:
    """Contour lines (or filled contours) of a 2-D landscape.

    Args:
        x: (nx,) coordinates of the first direction; y: (ny,) of the second.
        z: (ny, nx) values, NaN where not computed.
        filled: filled contours with a colour bar instead of labelled lines.
        levels: number of levels (default 15) or explicit values.
        vmin, vmax: range of the levels (default: the data's).
        zlabel: what z is; title: figure title.
    """
    x, y, z = _check_grid(x, y, z)
    fig, ax = new_figure(width=4.2, height=3.6)
    lv = _levels(z, levels, vmin, vmax)
    zm = np.ma.masked_invalid(z)
    if filled:
        cs = ax.contourf(x, y, zm, levels=lv, cmap="viridis", extend="both")
        fig.colorbar(cs, ax=ax, label=zlabel)
    else:
        cs = ax.contour(x, y, zm, levels=lv, cmap="viridis", linewidths=0.8)
        ax.clabel(cs, inline=True, fontsize=6, fmt="%.4g")
    if x.min() <= 0 <= x.max() and y.min() <= 0 <= y.max():
        ax.plot([0], [0], marker="+", color="black", markersize=8)  # theta0
    ax.set_xlabel(r"$\alpha$ (direction 1)")
    ax.set_ylabel(r"$\beta$ (direction 2)")
    ax.set_title(title or zlabel)
    ax.set_aspect("auto")
    return fig


def plot_heatmap(
    x: np.ndarray,
    y: np.ndarray,
    z: np.ndarray,
    *,
    vmin: float | None = None,
    vmax: float | None = None,
    zlabel: str = "loss",
    title: str | None = None,
) -> Figure:
    """Heatmap of a 2-D landscape on its true coordinates (cells centred on the grid points)."""
    x, y, z = _check_grid(x, y, z)
    fig, ax = new_figure(width=4.2, height=3.6)
    mesh = ax.pcolormesh(
        x, y, np.ma.masked_invalid(z), shading="nearest", cmap="viridis", vmin=vmin, vmax=vmax
    )
    fig.colorbar(mesh, ax=ax, label=zlabel)
    ax.set_xlabel(r"$\alpha$ (direction 1)")
    ax.set_ylabel(r"$\beta$ (direction 2)")
    ax.set_title(title or zlabel)
    ax.grid(False)
    return fig


def plot_eig_ratio(
    x: np.ndarray,
    y: np.ndarray,
    max_eig: np.ndarray,
    min_eig: np.ndarray,
    *,
    title: str | None = None,
) -> Figure:
    """loss-landscape's curvature map: |lambda_min / lambda_max| at every point of a surface
    (near 0: locally convex; large: strongly non-convex), NaN cells left blank.

    Args:
        x: (nx,), y: (ny,) coordinates; max_eig, min_eig: (ny, nx) extreme eigenvalues.
        title: a label (the file's).

    Reference: Li et al., NeurIPS 2018, Fig. 7 (plot_2D.plot_2d_eig_ratio).
    """
    ratio = eig_ratio(max_eig, min_eig)
    name = r"$|\lambda_{min} / \lambda_{max}|$"
    return plot_heatmap(x, y, ratio, zlabel=name, title=f"{title}: {name}" if title else name)


def plot_surface3d(
    x: np.ndarray,
    y: np.ndarray,
    z: np.ndarray,
    *,
    zlabel: str = "loss",
    title: str | None = None,
) -> Figure:
    """3-D surface of a 2-D landscape (NaN cells are left out)."""
    x, y, z = _check_grid(x, y, z)
    fig, ax = new_figure(width=4.6, height=3.8, subplot_kw={"projection": "3d"})
    X, Y = np.meshgrid(x, y)  # (ny, nx), the layout of z
    surf = ax.plot_surface(
        X, Y, np.ma.masked_invalid(z), cmap=cm.coolwarm, linewidth=0, antialiased=True
    )
    fig.colorbar(surf, ax=ax, shrink=0.6, pad=0.1, label=zlabel)
    ax.set_xlabel(r"$\alpha$")
    ax.set_ylabel(r"$\beta$")
    ax.set_zlabel(zlabel)
    ax.set_title(title or zlabel)
    return fig


def plot_surface_views(
    x: np.ndarray,
    y: np.ndarray,
    z: np.ndarray,
    *,
    zlabel: str = "loss",
    title: str | None = None,
    plots: Sequence[str] = SURFACE_PLOTS,
    vmin: float | None = None,
    vmax: float | None = None,
    levels: int | None = None,
) -> dict[str, Figure]:
    """The views of one 2-D landscape by name: contour, contourf, heatmap, surface."""
    unknown = [p for p in plots if p not in SURFACE_PLOTS]
    if unknown:
        raise ValueError(f"unknown surface plots {unknown}; choose from {SURFACE_PLOTS}")
    out: dict[str, Figure] = {}
    for p in plots:
        if p in ("contour", "contourf"):
            out[p] = plot_contour(
                x,
                y,
                z,
                filled=p == "contourf",
                levels=levels,
                vmin=vmin,
                vmax=vmax,
                zlabel=zlabel,
                title=title,
            )
        elif p == "heatmap":
            out[p] = plot_heatmap(x, y, z, vmin=vmin, vmax=vmax, zlabel=zlabel, title=title)
        else:
            out[p] = plot_surface3d(x, y, z, zlabel=zlabel, title=title)
    return out
