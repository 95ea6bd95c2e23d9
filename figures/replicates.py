"""Per-seed paired differences AT-AWP - AT, one panel per measure: the seeds as points, the mean
with its Student-t interval, and zero.

Takes the ``measures`` list of ``replicates.json`` (records of
:class:`analysis.replicates.PairedDifference`, as dicts or dataclasses) and returns a matplotlib
Figure; saving is :func:`figures.style.save_figure`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from figures.style import color_for, new_figure
from figures.weights import as_rows

REQUIRED = ("measure", "seeds", "at", "awp", "mean_diff", "t_low", "t_high")


def plot_paired_differences(measures: Sequence[Any], *, width: float = 4.5) -> Figure:
    """The per-seed differences AT-AWP - AT of each measure, with their mean and t interval.

    Each panel (one per measure, its own x scale) shows the seeds' differences as points
    (a seaborn strip, jittered vertically), the mean as a diamond, the t interval as a
    horizontal line from ``t_low`` to ``t_high`` and zero as a dotted line. A measure with
    fewer than three seeds has no interval (``t_low`` None): the panel says so.

    Args:
        measures: records with ``measure``, ``seeds``, ``at``, ``awp``, ``mean_diff``,
            ``t_low``, ``t_high`` (and ``confidence``, ``note``).
        width: figure width in inches.

    Returns:
        The figure.

    Raises:
        ValueError: no measures, a record without a required field, or seeds and values
            of different lengths.
    """
    import seaborn as sns  # imported when a figure is drawn, like matplotlib

    rows = as_rows(measures)
    if not rows:
        raise ValueError("no measures to plot: pass replicates.json's 'measures' list")
    for r in rows:
        missing = [k for k in REQUIRED if k not in r]
        if missing:
            raise ValueError(
                f"measure {r.get('measure', '?')!r} lacks {missing}: pass the records of "
                "replicates.json's 'measures' list (analysis.replicates.PairedDifference)"
            )
        if not len(r["seeds"]) == len(r["at"]) == len(r["awp"]):
            raise ValueError(
                f"measure {r['measure']!r}: {len(r['seeds'])} seeds but {len(r['at'])} AT "
                f"and {len(r['awp'])} AT-AWP values"
            )
    fig, axes = new_figure(len(rows), 1, width=width, height=1.2, squeeze=False)
    color = color_for("AT-AWP")
    for ax, r in zip(np.asarray(axes).ravel(), rows):
        d = np.asarray(r["awp"], dtype=float) - np.asarray(r["at"], dtype=float)
        sns.stripplot(x=d, ax=ax, color=color, size=5, jitter=0.15, orient="h", alpha=0.8)
        ax.axvline(0.0, color="0.4", linewidth=0.8, linestyle=":")
        level = f"{r.get('confidence', 0.95):.0%}"
        if r["t_low"] is not None and r["t_high"] is not None:
            ax.plot([r["t_low"], r["t_high"]], [0, 0], color="k", linewidth=2, zorder=4)
            ax.plot([r["t_low"], r["t_high"]], [0, 0], "|", color="k", markersize=10, zorder=4)
            label = f"{level} t interval"
        else:
            label = r.get("note") or f"no interval with {len(d)} seed(s)"
        ax.plot([r["mean_diff"]], [0], "D", color="k", markersize=6, zorder=5)
        ax.set_yticks([])
        ax.set_ylim(-0.5, 0.5)
        n = len(d)
        ax.set_title(
            f"{r['measure']}: AT-AWP - AT over {n} seed{'s' if n != 1 else ''} "
            f"(mean {r['mean_diff']:+.3g}; {label})",
            fontsize=8,
            loc="left",
        )
    return fig
