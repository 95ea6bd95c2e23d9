"""Flatness curves against alpha, and flatness against the robust gap across checkpoints.

Functions take records (dicts as written to JSON, or the dataclasses of
:mod:`analysis.flatness` / :mod:`analysis.correlate`) and return a matplotlib Figure; saving
is :func:`figures.style.save_figure`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from analysis.correlate import fit_line
from figures.style import color_for, new_figure
from figures.weights import as_rows


def plot_flatness_curve(
    estimates: Sequence[Any],
    *,
    by: str = "label",
    color_by: str | None = "method",
    measure: str = "flatness",
    log_x: bool = False,
) -> Figure:
    """Expected flatness against alpha, one line (with its interval) per group.

    Args:
        estimates: records with ``alpha``, ``measure`` and, when present,
            ``<measure>_low``/``<measure>_high`` (the interval), plus the ``by`` column.
        by: grouping column (``label``, ``method``...); records without it form one group.
        color_by: column giving each curve's colour (method colours of the house style);
            curves of the same colour get different line styles. None: colour by ``by``.
        measure: ``flatness`` (robust 0-1 error) or ``flatness_loss`` (robust cross-entropy).
        log_x: logarithmic alpha axis.

    Returns:
        The figure.
    """
    rows = [r for r in as_rows(estimates) if "alpha" in r and measure in r]
    if not rows:
        raise ValueError(f"no records with 'alpha' and {measure!r} to plot")
    fig, ax = new_figure(1, 1, width=4.2, height=3.0)
    groups = list(dict.fromkeys(str(r.get(by, "")) for r in rows))
    styles = ("-", "--", ":", "-.")
    seen: dict[str, int] = {}  # curves drawn so far per colour group
    for i, g in enumerate(groups):
        mine = sorted((r for r in rows if str(r.get(by, "")) == g), key=lambda r: r["alpha"])
        a = np.array([r["alpha"] for r in mine], dtype=float)
        f = np.array([r[measure] for r in mine], dtype=float)
        # Colour by method (AT blue, AT-AWP red...), line style tells checkpoints apart.
        key = str(mine[0].get(color_by, g)) if color_by else g
        color = color_for(key, i)
        style = styles[seen.get(key, 0) % len(styles)]
        seen[key] = seen.get(key, 0) + 1
        ax.plot(a, f, marker="o", markersize=3, color=color, linestyle=style, label=g or None)
        lo = np.array([r.get(f"{measure}_low", np.nan) for r in mine], dtype=float)
        hi = np.array([r.get(f"{measure}_high", np.nan) for r in mine], dtype=float)
        if np.isfinite(lo).any():
            ax.fill_between(a, lo, hi, color=color, alpha=0.15, linewidth=0)
    ax.axhline(0.0, color="0.5", linewidth=0.6, linestyle=":")
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel(r"relative noise scale $\alpha$")
    ylabel = "robust error" if measure == "flatness" else "robust loss"
    ax.set_ylabel(rf"$E_u[\rho(w+u)] - \rho(w)$ ({ylabel})")
    if any(groups):
        ax.legend(frameon=False)
    return fig


def plot_flatness_vs_gap(
    records: Sequence[Any],
    *,
    x: str = "flatness",
    y: str = "gap",
    by: str = "method",
    correlations: Sequence[Any] = (),
    pooled_fit: bool = True,
) -> Figure:
    """Scatter of a flatness measure against the robust gap, coloured by method, fitted lines.

    Args:
        records: one row per checkpoint with columns ``x``, ``y`` and ``by``.
        x, y: columns on the axes.
        by: colouring column (one least-squares line per group).
        correlations: records with ``group``, ``measure`` and ``statistic``
            (:class:`analysis.correlate.Correlation`); Kendall's tau is shown in the legend.
        pooled_fit: also draw the line fitted to all points (dashed grey).

    Returns:
        The figure.
    """
    rows = as_rows(records)
    if not rows:
        raise ValueError("no records to plot")
    taus = {
        c["group"]: c["statistic"] for c in as_rows(correlations) if c.get("measure") == "kendall"
    }
    fig, ax = new_figure(1, 1, width=4.2, height=3.2)
    groups = sorted({str(r.get(by, "")) for r in rows})  # AT before AT-AWP in every figure
    for i, g in enumerate(groups):
        mine = [r for r in rows if str(r.get(by, "")) == g]
        xs = np.array([float(r[x]) for r in mine])
        ys = np.array([float(r[y]) for r in mine])
        color = color_for(g, i)
        label = g + (f" (tau {taus[g]:.2f})" if g in taus and np.isfinite(taus[g]) else "")
        ax.scatter(xs, ys, s=16, color=color, label=label, zorder=3)
        fit = fit_line(xs, ys)
        if np.isfinite(fit.slope):
            t = np.linspace(np.nanmin(xs), np.nanmax(xs), 2)
            ax.plot(t, fit.slope * t + fit.intercept, color=color, linewidth=1.0)
    if pooled_fit and len(groups) > 1:
        xs = np.array([float(r[x]) for r in rows])
        ys = np.array([float(r[y]) for r in rows])
        fit = fit_line(xs, ys)
        if np.isfinite(fit.slope):
            t = np.linspace(np.nanmin(xs), np.nanmax(xs), 2)
            tau = taus.get("all")
            name = "all" + (f" (tau {tau:.2f})" if tau is not None and np.isfinite(tau) else "")
            ax.plot(t, fit.slope * t + fit.intercept, color="0.4", linestyle="--", label=name)
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.legend(frameon=False)
    return fig
