"""One consistent look for every figure, and the one function that saves figures to disk."""

from __future__ import annotations

import io
import os
from collections.abc import Iterable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # figures are files; never open a window

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from awp.io import atomic_write_bytes  # noqa: E402

# Colours by method, so AT and AT-AWP look the same in every figure of a report.
METHOD_COLORS = {
    "AT": "#1f77b4",
    "AT-AWP": "#d62728",
    "TRADES": "#2ca02c",
    "TRADES-AWP": "#ff7f0e",
    "MART": "#9467bd",
    "MART-AWP": "#8c564b",
    "GAUSSIAN": "#17becf",
    "GAUSSIAN-AWP": "#e377c2",
}
FALLBACK_COLORS = ("#17becf", "#bcbd22", "#7f7f7f", "#e377c2")

RC = {
    "figure.dpi": 110,
    "savefig.dpi": 150,
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
}


def color_for(label: str, index: int = 0) -> str:
    """The colour of a method label (``AT``, ``AT-AWP``...), or a fallback by index."""
    key = label.upper().replace("_", "-")
    return METHOD_COLORS.get(key, FALLBACK_COLORS[index % len(FALLBACK_COLORS)])


def new_figure(
    nrows: int = 1, ncols: int = 1, *, width: float = 4.0, height: float = 3.0, **kwargs
) -> tuple[Figure, object]:
    """A figure in the house style; ``width``/``height`` are per panel, in inches."""
    with plt.rc_context(RC):
        fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
        axes = fig.subplots(nrows, ncols, **kwargs)
    for ax in fig.axes:
        _apply(ax)
    return fig, axes


def _apply(ax) -> None:
    ax.grid(True, alpha=RC["grid.alpha"])
    ax.spines["top"].set_visible(False)
    ax.spines["right"].set_visible(False)


def save_figure(
    fig: Figure, stem: str | os.PathLike, formats: Iterable[str] = ("png", "pdf")
) -> list[Path]:
    """Write ``fig`` as ``stem.png`` / ``stem.pdf`` atomically; returns the paths written."""

    stem = Path(stem)
    paths = []
    for fmt in formats:
        buf = io.BytesIO()
        with plt.rc_context(RC):
            fig.savefig(buf, format=fmt, bbox_inches="tight")
        paths.append(atomic_write_bytes(stem.with_suffix(f".{fmt}"), buf.getvalue()))
    return paths
