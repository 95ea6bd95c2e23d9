"""Curves of a run and its analyses: learning curves, the robust gap by epoch, the landscape.

Functions take records and arrays and return matplotlib Figures (the report embeds them).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from figures.style import color_for, new_figure


def plot_learning_curves(histories: Mapping[str, Sequence[Mapping[str, Any]]]) -> Figure:
    """Train and test robust accuracy (left, AWP Fig. 3(d) style) and robust loss (right) per
    evaluated epoch, one colour per method; train dashed, test solid.

    Args:
        histories: method label -> the run's per-epoch records (``metrics.jsonl``).
    """
    fig, (acc_ax, loss_ax) = new_figure(1, 2, width=4.2, height=3.2)
    for i, (label, history) in enumerate(histories.items()):
        color = color_for(label, i)
        for split, style in (
            ("train", dict(linestyle="--", marker=".")),
            ("test", dict(marker="o", markersize=3)),
        ):
            for ax, key in ((acc_ax, "robust_acc"), (loss_ax, "robust_loss")):
                rows = [r for r in history if f"{split}_{key}" in r]
                if not rows:
                    continue
                ax.plot(
                    [r["epoch"] for r in rows],
                    [r[f"{split}_{key}"] for r in rows],
                    color=color,
                    **style,
                    label=f"{label} {split}",
                )
    for ax, label in ((acc_ax, "robust accuracy (PGD)"), (loss_ax, "robust loss (PGD)")):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(label)
    acc_ax.legend(frameon=False)
    return fig


def plot_gap_by_epoch(rows: Sequence[Mapping[str, Any]]) -> Figure:
    """Robust generalization gap (train minus test robust accuracy) per checkpoint epoch."""
    fig, ax = new_figure(width=4.2, height=3.0)
    for i, method in enumerate(sorted({r["method"] for r in rows})):
        pts = sorted(
            (r["epoch"], r["gap"])
            for r in rows
            if r["method"] == method and r.get("epoch") is not None
        )
        if pts:
            ax.plot(*zip(*pts), marker="o", markersize=3, color=color_for(method, i), label=method)
    ax.axhline(0, color="#888", linewidth=0.8)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("robust gap (train - test acc.)")
    ax.legend(frameon=False)
    return fig


def plot_story_curves(
    histories: Mapping[int, Mapping[str, Sequence[Mapping[str, Any]]]], *, what: str = "PGD"
) -> Figure:
    """The story on one figure: robust loss (left) and robust accuracy (right) per evaluated
    epoch, test solid and train dashed, one colour per method and one line per seed.

    Robust overfitting is the test loss rising (and test accuracy falling) while the train
    curves keep improving; AWP's claim is that it keeps the two closer.

    Args:
        histories: seed -> method label -> the run's per-epoch records (``train_robust_loss``,
            ``test_robust_acc``, ...).
        what: the per-epoch evaluation, for the axis labels (e.g. "PGD-5, 250 test images").
    """
    fig, axes = new_figure(1, 2, width=4.4, height=3.3)
    markers = ("o", "s", "^", "D", "v", "P")
    for ax, key in zip(axes, ("robust_loss", "robust_acc")):
        for j, (_, runs) in enumerate(sorted(histories.items())):
            for i, (label, history) in enumerate(runs.items()):
                for split in ("test", "train"):
                    rows = [r for r in history if f"{split}_{key}" in r]
                    ax.plot(
                        [r["epoch"] for r in rows],
                        [r[f"{split}_{key}"] for r in rows],
                        color=color_for(label, i),
                        marker=markers[j % len(markers)],
                        markersize=2.5,
                        linestyle="-" if split == "test" else "--",
                        linewidth=1.0,
                        alpha=0.9 if j == 0 else 0.6,
                        label=f"{label} {split}" if j == 0 else None,
                    )
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(f"{key.replace('_', ' ').replace('acc', 'accuracy')} ({what})")
    axes[1].legend(frameon=False, fontsize=7)
    return fig
