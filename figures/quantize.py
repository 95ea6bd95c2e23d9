"""Accuracy against the weights' bit width, one line per model."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from matplotlib.figure import Figure

from figures.style import color_for, new_figure


def plot_quantization(rows: Sequence[dict[str, Any]], *, float_bits: int = 32) -> Figure:
    """Natural (left) and robust (right) accuracy against bit width per ``label``; the float
    weights are drawn at the right end, marked "float".

    Args:
        rows: records with ``label``, ``bits``, ``natural_acc`` and ``robust_acc``.
        float_bits: the ``bits`` value of the float weights' row.
    """
    rows = [r for r in rows if {"label", "bits", "natural_acc", "robust_acc"} <= set(r)]
    if not rows:
        raise ValueError("no records with label, bits, natural_acc and robust_acc to plot")
    bits = sorted({int(r["bits"]) for r in rows if int(r["bits"]) != float_bits})
    ticks = [*bits, max(bits, default=0) + 2]  # the float weights after the widest
    where = {b: b for b in bits} | {float_bits: ticks[-1]}
    fig, axes = new_figure(1, 2, width=3.5, height=3.0)
    labels = list(dict.fromkeys(str(r["label"]) for r in rows))
    for ax, column, title in zip(
        axes, ("natural_acc", "robust_acc"), ("natural accuracy", "robust accuracy")
    ):
        for i, label in enumerate(labels):
            mine = sorted((r for r in rows if str(r["label"]) == label),
                          key=lambda r: where[int(r["bits"])])  # fmt: skip
            ax.plot(
                [where[int(r["bits"])] for r in mine],
                [r[column] for r in mine],
                marker="o",
                color=color_for(label, i),
                label=label,
            )
        ax.set_xticks(ticks)
        ax.set_xticklabels([*map(str, bits), "float"])
        ax.set_xlabel("weight bits (per-channel, symmetric)")
        ax.set_ylabel(title)
    axes[0].legend(frameon=False)
    return fig
