"""Weight spectra figures: a layer's eigenvalue density with its power-law fit (log-log), the
per-layer statistics against depth, and the checkpoint averages against epoch.

Functions take records (dicts as written to ``spectra.json``, or the dataclasses of
:mod:`analysis.weight_spectra`) and return a matplotlib Figure; saving is
:func:`figures.style.save_figure`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, NullFormatter

from figures.style import color_for, new_figure
from figures.weights import as_rows

DEPTH_SPECTRA = ("alpha", "stable_rank", "spectral_norm", "op_norm_circular")
EPOCH_SPECTRA = ("alpha_mean", "stable_rank_mean", "log10_op_norm_mean")
SPECTRA_LABELS = {
    "alpha": r"ESD power-law $\alpha$",
    "stable_rank": "stable rank",
    "spectral_norm": r"$\|W\|_2$ (reshaped)",
    "frobenius_norm": r"$\|W\|_F$",
    "op_norm_circular": "operator norm (FFT)",
    "alpha_mean": r"mean $\alpha$ over layers",
    "stable_rank_mean": "mean stable rank",
    "log10_op_norm_mean": r"mean $\log_{10}$ operator norm",
    "log10_spectral_norm_mean": r"mean $\log_{10}\|W\|_2$",
}


def _color(row: Mapping[str, Any], index: int) -> str:
    return color_for(str(row.get("method") or row["label"]), index)


def _number(value: Any) -> float:
    """A record's number, NaN where it is missing (``null`` in JSON: e.g. no power-law fit)."""
    return np.nan if value is None else float(value)


def plot_esd(esds: Sequence[Any], *, bins: int = 30) -> Figure:
    """Eigenvalue densities of one layer (log-log) with each fitted power law.

    Args:
        esds: records with ``label``, ``layer``, ``eigenvalues`` (the ESD), ``alpha``,
            ``alpha_se``, ``xmin`` and ``n_tail`` (and optionally ``method`` for the colour).
        bins: logarithmically spaced bins shared by all records.

    Returns:
        The figure: density per unit eigenvalue; the fit p(x) = (n_tail / n) (alpha - 1) /
        xmin (x / xmin)^-alpha drawn over the tail, dashed, from a dotted x_min line.
    """
    rows = as_rows(esds)
    if not rows:
        raise ValueError("no eigenvalue densities to plot")
    eigs = [np.asarray(r["eigenvalues"], dtype=np.float64) for r in rows]
    positive = np.concatenate([e[e > 0] for e in eigs])
    if positive.size == 0:
        raise ValueError("no positive eigenvalues to plot")
    edges = np.geomspace(positive.min(), positive.max() * (1 + 1e-9), bins + 1)
    fig, ax = new_figure(width=4.4, height=3.4)
    for i, (r, e) in enumerate(zip(rows, eigs)):
        e = e[e > 0]
        color = _color(r, i)
        counts, _ = np.histogram(e, bins=edges)
        density = counts / (e.size * np.diff(edges))
        ax.stairs(np.where(density > 0, density, np.nan), edges, color=color, linewidth=1.2)
        alpha, xmin, se = (_number(r.get(k)) for k in ("alpha", "xmin", "alpha_se"))
        if np.isfinite(alpha) and np.isfinite(xmin) and r.get("n_tail"):
            x = np.geomspace(xmin, e.max(), 50)
            scale = int(r["n_tail"]) / e.size * (alpha - 1) / xmin
            ax.plot(x, scale * (x / xmin) ** -alpha, color=color, linestyle="--", linewidth=1.0)
            ax.axvline(xmin, color=color, linestyle=":", linewidth=0.8)
            label = f"{r['label']}: $\\alpha$ = {alpha:.2f} $\\pm$ {se:.2f}"
        else:
            label = f"{r['label']}: no fit"
        ax.plot([], [], color=color, label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels collide on a short decade
    ax.set_xlabel(r"eigenvalue $\lambda$ of $W^\top W$")
    ax.set_ylabel("density")
    ax.set_title(str(rows[0]["layer"]), fontsize=8)
    ax.legend(frameon=False, fontsize=7)
    return fig


def plot_spectra_depth(
    stats: Sequence[Any], *, names: Sequence[str] = DEPTH_SPECTRA, ncols: int | None = None
) -> Figure:
    """Per-layer spectral statistics against depth, one line per checkpoint label.

    Args:
        stats: :class:`analysis.weight_spectra.LayerSpectrum` records (or their dicts); alpha gets
            error bars of one standard error; the operator-norm panel also shows the zero-padding
            upper bound (dotted).
        names: statistics to draw, one panel each.
        ncols: panels per row (default: all in one row).
    """
    rows = as_rows(stats)
    if not rows:
        raise ValueError("no spectra to plot")
    bad = [n for n in names if n not in rows[0]]
    if bad:
        raise ValueError(f"unknown statistic(s) {bad}; records have {sorted(rows[0])}")
    ncols = ncols or len(names)
    fig, axes = new_figure(
        math.ceil(len(names) / ncols), ncols, width=3.0, height=2.5, squeeze=False
    )
    flat = list(np.asarray(axes).ravel())
    labels = list(dict.fromkeys(str(r["label"]) for r in rows))
    for ax, name in zip(flat, names):
        for i, label in enumerate(labels):
            mine = sorted((r for r in rows if str(r["label"]) == label), key=lambda r: r["depth"])
            depth = [r["depth"] for r in mine]
            y = np.array([_number(r.get(name)) for r in mine], dtype=np.float64)
            color = _color(mine[0], i)
            if name == "alpha":
                err = np.array([_number(r.get("alpha_se")) for r in mine], dtype=np.float64)
                ax.errorbar(
                    depth,
                    y,
                    yerr=err,
                    marker="o",
                    markersize=3,
                    color=color,
                    capsize=2,
                    label=label,
                )
            else:
                ax.plot(depth, y, marker="o", markersize=3, color=color, label=label)
            if name == "op_norm_circular":
                bound = [_number(r.get("op_norm_zero_bound")) for r in mine]
                ax.plot(depth, bound, linestyle=":", color=color, linewidth=1.0)
        ax.set_xlabel("layer (depth)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(SPECTRA_LABELS.get(name, name))
    flat[0].legend(frameon=False, fontsize=7)
    for ax in flat[len(names) :]:
        ax.set_visible(False)
    return fig


def plot_spectra_epochs(
    summaries: Sequence[Any], *, names: Sequence[str] = EPOCH_SPECTRA
) -> Figure:
    """Checkpoint averages of the spectra against epoch, one line per training run.

    Args:
        summaries: records with ``epoch``, ``run`` (a line each), ``method`` (colour, legend)
            and the statistics in ``names`` (:class:`analysis.weight_spectra.SpectraSummary`
            plus the checkpoint's identity).
        names: one panel each.
    """
    rows = as_rows(summaries)
    if not rows:
        raise ValueError("no spectra summaries to plot")
    runs = list(
        dict.fromkeys((str(r.get("run", "")), str(r.get("method") or r["label"])) for r in rows)
    )
    methods = [m for _, m in runs]
    fig, axes = new_figure(1, len(names), width=3.0, height=2.5, squeeze=False)
    for ax, name in zip(axes[0], names):
        for i, (run, method) in enumerate(runs):
            mine = sorted(
                (
                    r
                    for r in rows
                    if (str(r.get("run", "")), str(r.get("method") or r["label"])) == (run, method)
                ),
                key=lambda r: r["epoch"],
            )
            label = method if methods.count(method) == 1 else f"{method} ({run})"
            ax.plot(
                [r["epoch"] for r in mine],
                [_number(r.get(name)) for r in mine],
                marker="o",
                markersize=3,
                color=color_for(method, i),
                label=label,
            )
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(SPECTRA_LABELS.get(name, name))
    axes[0][0].legend(frameon=False, fontsize=7)
    return fig
