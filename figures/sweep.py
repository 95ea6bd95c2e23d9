"""The gamma sweep: natural against robust accuracy, and gap and flatness against gamma.

Functions take the summary records of a sweep (one per gamma and measure: ``gamma``,
``measure``, ``mean``, ``low``, ``high``, ``n``) and return matplotlib Figures. Intervals are
drawn where they exist (three seeds or more); gamma 0 is plain AT.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

from figures.style import new_figure

_TRADEOFFS = (("best", "o"), ("last", "s"))


def _by(summary: Sequence[Mapping[str, Any]], measure: str) -> dict[float, Mapping[str, Any]]:
    return {float(r["gamma"]): r for r in summary if r["measure"] == measure}


def _err(rows: Sequence[Mapping[str, Any]]) -> np.ndarray | None:
    """Asymmetric error bars (2, n) from the intervals, or None when no row has one."""
    if not any(r.get("low") is not None for r in rows):
        return None
    lo = [r["mean"] - r["low"] if r.get("low") is not None else 0.0 for r in rows]
    hi = [r["high"] - r["mean"] if r.get("high") is not None else 0.0 for r in rows]
    return np.array([lo, hi])


def plot_tradeoff(summary: Sequence[Mapping[str, Any]]) -> Figure:
    """Natural (x) against PGD-20 robust (y) test accuracy per gamma, best and last checkpoint.

    Each gamma is labelled; with several seeds the points are means with t intervals.
    """
    fig, ax = new_figure(width=4.6, height=3.4)
    gammas = sorted(_by(summary, "natural accuracy (best)"))
    for which, marker in _TRADEOFFS:
        nat, rob = (
            _by(summary, f"natural accuracy ({which})"),
            _by(summary, f"robust accuracy ({which})"),
        )
        keep = [g for g in gammas if g in nat and g in rob]
        if not keep:
            continue
        xs = [nat[g]["mean"] for g in keep]
        ys = [rob[g]["mean"] for g in keep]
        ax.errorbar(
            xs,
            ys,
            xerr=_err([nat[g] for g in keep]),
            yerr=_err([rob[g] for g in keep]),
            fmt=f"{marker}-" if which == "last" else f"{marker}--",
            color="0.35",
            markersize=4,
            linewidth=0.8,
            label=f"{which} checkpoint",
            zorder=2,
        )
        for i, g in enumerate(keep):
            color = _color(i, len(keep))
            ax.scatter([xs[i]], [ys[i]], marker=marker, color=color, s=28, zorder=3)
            if which == "last":
                ax.annotate(f"{g:g}", (xs[i], ys[i]), textcoords="offset points", xytext=(4, 3))
    ax.set_xlabel("natural test accuracy")
    ax.set_ylabel("PGD-20 test accuracy")
    ax.set_title(r"AWP's $\gamma$ trade-off (labels: $\gamma$; 0 = AT)")
    ax.legend(frameon=False)
    return fig


def _color(i: int, n: int) -> tuple[float, float, float, float]:
    return colormaps["viridis"](i / max(n - 1, 1))


def plot_vs_gamma(summary: Sequence[Mapping[str, Any]], measures: Sequence[str]) -> Figure:
    """One panel per measure against gamma (symmetric-log axis, so that gamma 0 shows)."""
    fig, axes = new_figure(1, len(measures), width=3.4, height=3.0, squeeze=False)
    for ax, measure in zip(axes[0], measures):
        rows = sorted(_by(summary, measure).items())
        if not rows:
            ax.set_visible(False)
            continue
        gs = [g for g, _ in rows]
        ax.errorbar(
            gs,
            [r["mean"] for _, r in rows],
            yerr=_err([r for _, r in rows]),
            fmt="o-",
            markersize=4,
            color="#d62728",
        )
        positive = [g for g in gs if g > 0]
        ax.set_xscale("symlog", linthresh=min(positive) if positive else 1e-3)
        ax.set_xlabel(r"$\gamma$")
        ax.set_title(measure, fontsize=8)
    return fig
