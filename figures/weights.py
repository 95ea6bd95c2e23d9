"""Weight distributions overlaid per layer (a seaborn KDE per checkpoint over its histogram;
the rebuttal's reviewer 1, question 3) and per-layer statistics vs depth.

Functions take records (dicts as written to JSON, or the dataclasses of
:mod:`analysis.weights`) and return a matplotlib Figure; saving is
:func:`figures.style.save_figure`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from figures.style import color_for, new_figure

DEPTH_STATS = ("norm", "std", "mean_abs", "skewness", "excess_kurtosis")
STAT_LABELS = {
    "norm": "L2 norm",
    "mean": "mean",
    "std": "std",
    "mean_abs": "mean |w|",
    "skewness": "skewness",
    "excess_kurtosis": "excess kurtosis",
    "n": "weights",
}


def as_rows(records: Sequence[Any]) -> list[dict[str, Any]]:
    """Dataclass instances or mappings -> list of dicts."""
    return [
        dataclasses.asdict(r) if dataclasses.is_dataclass(r) else dict(r)  # type: ignore[arg-type]
        for r in records
    ]


def _labels(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    seen: dict[str, None] = {}
    for r in rows:
        seen.setdefault(str(r["label"]), None)
    return list(seen)


def plot_weight_histograms(
    histograms: Sequence[Any],
    *,
    layers: Sequence[str] | None = None,
    comparisons: Sequence[Any] = (),
    ncols: int = 3,
    log_density: bool = False,
) -> Figure:
    """Overlaid weight distributions, one panel per layer, one colour per checkpoint label.

    Each distribution is a seaborn KDE of the histogram (bin centres weighted by their mass,
    bandwidth one bin, clipped to the bins' range) over the histogram's light fill; a
    histogram with fewer than two non-empty bins has no KDE and is drawn as steps.

    Args:
        histograms: records with ``label``, ``layer``, ``edges`` (bins+1) and ``density`` (bins),
            the same edges for all labels of a layer (:func:`analysis.weights.shared_histograms`).
        layers: which layers to draw, in this order (default: all, in record order).
        comparisons: records with ``layer``, ``label_a``, ``label_b``, ``ks_statistic``,
            ``wasserstein``; the first pair of each layer is written in its panel.
        ncols: panels per row.
        log_density: logarithmic density axis (shows the tails).

    Returns:
        The figure (density on y, weight value on x).
    """
    rows = as_rows(histograms)
    if not rows:
        raise ValueError("no histograms to plot")
    order = list(dict.fromkeys(r["layer"] for r in rows)) if layers is None else list(layers)
    missing = [layer for layer in order if not any(r["layer"] == layer for r in rows)]
    if missing:
        raise ValueError(f"no histogram for layer(s) {missing}")
    labels = _labels(rows)
    comps = {}
    for c in as_rows(comparisons):
        comps.setdefault(c["layer"], c)
    ncols = max(1, min(ncols, len(order)))
    nrows = math.ceil(len(order) / ncols)
    fig, axes = new_figure(nrows, ncols, width=3.6, height=2.6, squeeze=False)
    flat = list(np.asarray(axes).ravel())
    for ax, layer in zip(flat, order):
        for i, label in enumerate(labels):
            for r in rows:
                if r["layer"] == layer and str(r["label"]) == label:
                    edges = np.asarray(r["edges"], dtype=float)
                    dens = np.asarray(r["density"], dtype=float)
                    color = color_for(label, i)
                    ax.stairs(dens, edges, color=color, alpha=0.12, fill=True)
                    if not _kde(ax, edges, dens, color=color, label=label):
                        ax.stairs(dens, edges, color=color, label=label, linewidth=1.2)
        ax.set_title(layer, fontsize=8)
        ax.set_xlabel("weight value")
        ax.set_ylabel("density")
        ax.axvline(0.0, color="0.5", linewidth=0.6, linestyle=":")
        if log_density:
            ax.set_yscale("log")
        if layer in comps:
            c = comps[layer]
            ax.text(
                0.02,
                0.97,
                f"KS {c['ks_statistic']:.3f}\nW1 {c['wasserstein']:.2e}",
                transform=ax.transAxes,
                va="top",
                fontsize=7,
            )
        ax.legend(loc="best", frameon=False, fontsize=7)
    for ax in flat[len(order) :]:
        ax.set_visible(False)
    return fig


def _kde(ax, edges: np.ndarray, density: np.ndarray, *, color: str, label: str) -> bool:
    """A seaborn KDE of a histogram on ``ax`` (False, nothing drawn, when it has none)."""
    import seaborn as sns  # imported when a figure is drawn, like matplotlib

    mass = density * np.diff(edges)
    if np.count_nonzero(mass > 0) < 2:
        return False
    centres = (edges[:-1] + edges[1:]) / 2
    # Bandwidth: one bin width (seaborn's Scott rule would count the bins, not the weights,
    # and smooth a 100-bin histogram of a million weights as if it were 100 samples).
    p = mass / mass.sum()
    sd = math.sqrt(float(np.sum(p * (centres - np.sum(p * centres)) ** 2)))
    scott = (1 / float(np.sum(p**2))) ** (-1 / 5)
    sns.kdeplot(
        x=centres,
        weights=mass,
        bw_adjust=float(np.mean(np.diff(edges))) / (scott * sd),
        ax=ax,
        color=color,
        label=label,
        linewidth=1.2,
        clip=(float(edges[0]), float(edges[-1])),
        warn_singular=False,
    )
    return True


def plot_layer_stats(
    stats: Sequence[Any], *, names: Sequence[str] = DEPTH_STATS, ncols: int | None = None
) -> Figure:
    """Per-layer statistics against depth, one line per checkpoint label, one panel per statistic.

    Args:
        stats: records with ``label``, ``layer``, ``depth`` and the statistics in ``names``
            (:class:`analysis.weights.WeightStats`).
        names: statistics to draw.
        ncols: panels per row (default: all in one row).

    Returns:
        The figure (x: layer index in model order, y: the statistic).
    """
    rows = as_rows(stats)
    if not rows:
        raise ValueError("no statistics to plot")
    bad = [n for n in names if n not in rows[0]]
    if bad:
        raise ValueError(f"unknown statistic(s) {bad}; records have {sorted(rows[0])}")
    ncols = ncols or len(names)
    nrows = math.ceil(len(names) / ncols)
    fig, axes = new_figure(nrows, ncols, width=3.0, height=2.5, squeeze=False)
    flat = list(np.asarray(axes).ravel())
    labels = _labels(rows)
    for ax, name in zip(flat, names):
        for i, label in enumerate(labels):
            mine = sorted((r for r in rows if str(r["label"]) == label), key=lambda r: r["depth"])
            ax.plot(
                [r["depth"] for r in mine],
                [r[name] for r in mine],
                marker="o",
                markersize=3,
                color=color_for(label, i),
                label=label,
            )
        ax.set_xlabel("layer (depth)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(STAT_LABELS.get(name, name))
        if name in ("skewness", "mean"):
            ax.axhline(0.0, color="0.5", linewidth=0.6, linestyle=":")
    flat[0].legend(frameon=False)
    for ax in flat[len(names) :]:
        ax.set_visible(False)
    return fig
