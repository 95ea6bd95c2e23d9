"""Certified accuracy against radius, and the base classifier's accuracy under Gaussian noise.

Records in (the rows of :mod:`analysis.certify_units`, as written to JSON), a matplotlib Figure
out; saving is :func:`figures.style.save_figure`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from analysis.certify_units import certified_accuracy
from figures.style import color_for, new_figure
from figures.weights import as_rows


def plot_certified_accuracy(
    examples: Sequence[Any],
    *,
    by: str = "model",
    summary: Sequence[Any] = (),
) -> Figure:
    """Certified accuracy against L2 radius, one panel per sigma, one curve per ``by`` group.

    Args:
        examples: per-example rows with ``sigma``, ``radius``, ``correct``, ``prediction`` and
            the ``by`` column (:func:`analysis.certify_units.example_rows` plus labels).
        by: the column naming a curve (``model``: AT, AT-AWP...; ``label`` is the true class).
        summary: the per-sigma rows (:func:`analysis.certify_units.summary_rows`); their
            ``max_radius``, the largest radius n samples can certify, is drawn dotted.

    Returns:
        The figure (Cohen et al. 2019, Figure 6 style: the fraction of test images certified
        correct with a radius of at least r; the dotted line is the largest certifiable radius).
    """
    rows = as_rows(examples)
    if not rows:
        raise ValueError("no certification records to plot")
    sigmas = sorted({float(r["sigma"]) for r in rows})
    groups = sorted({str(r.get(by, "")) for r in rows})  # AT before AT-AWP in every figure
    fig, axes = new_figure(1, len(sigmas), width=3.0, height=2.6, sharey=True, squeeze=False)
    top = max([float(r["radius"]) for r in rows] + [s * 0.5 for s in sigmas])
    grid = np.linspace(0.0, top * 1.05, 400)
    limits = {float(r["sigma"]): float(r["max_radius"]) for r in as_rows(summary)}
    for ax, sigma in zip(axes[0], sigmas):
        for i, g in enumerate(groups):
            mine = [r for r in rows if float(r["sigma"]) == sigma and str(r.get(by, "")) == g]
            if mine:
                acc = certified_accuracy(mine, grid)
                ax.plot(grid, acc, color=color_for(g, i), label=g or None, linewidth=1.3)
        if sigma in limits:
            ax.axvline(limits[sigma], color="0.5", linewidth=0.8, linestyle=":")
        ax.set_title(rf"$\sigma$ = {sigma:g}")
        ax.set_xlabel(r"L2 radius (pixel units)")
        ax.set_ylim(0.0, 1.0)
    axes[0][0].set_ylabel("certified accuracy")
    if any(groups):
        axes[0][-1].legend(frameon=False)
    return fig


def plot_noise_accuracy(rows: Sequence[Any], *, by: str = "label") -> Figure:
    """Accuracy of the base classifier on x + N(0, s^2 I) against s, one curve per group, with
    the interval over examples shaded.

    Args:
        rows: records with ``level``, ``accuracy``, ``low``, ``high`` and the ``by`` column.
        by: the column naming a curve.

    Returns:
        The figure.
    """
    rows = as_rows(rows)
    if not rows:
        raise ValueError("no noise-accuracy rows to plot")
    fig, ax = new_figure(1, 1, width=4.2, height=3.0)
    groups = sorted({str(r.get(by, "")) for r in rows})
    for i, g in enumerate(groups):
        mine = sorted((r for r in rows if str(r.get(by, "")) == g), key=lambda r: r["level"])
        s = np.array([r["level"] for r in mine], dtype=float)
        acc = np.array([r["accuracy"] for r in mine], dtype=float)
        lo = np.array([r.get("low", np.nan) for r in mine], dtype=float)
        hi = np.array([r.get("high", np.nan) for r in mine], dtype=float)
        color = color_for(g, i)
        ax.plot(s, acc, marker="o", markersize=3, color=color, label=g or None)
        if np.isfinite(lo).any():
            ax.fill_between(s, lo, hi, color=color, alpha=0.12, linewidth=0)
    ax.set_xlabel(r"Gaussian noise standard deviation $s$ (pixel units)")
    ax.set_ylabel("accuracy of the base classifier")
    ax.set_ylim(0.0, 1.0)
    if any(groups):
        ax.legend(frameon=False)
    return fig
