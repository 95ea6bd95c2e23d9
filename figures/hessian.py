"""Curvature figures: eigenvalue densities overlaid on a log scale, the top-k eigenvalues, and
the per-layer traces (and top eigenvalues) by depth.

Functions take the per-checkpoint results of :func:`analysis.curvature_results.summarize` (as
written to ``hessian.json``) and return a matplotlib Figure; saving is
:func:`figures.style.save_figure`.
With x_adv held fixed this is the Hessian of the loss on examples adversarial at w, not the
robust loss's full Hessian (Danskin gives its gradient only): the axis labels say "loss at
fixed x_adv".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from analysis.hessian_estimators import density_grid, spectral_density
from figures.style import color_for, new_figure


def _loss_label(results: Sequence[Mapping[str, Any]]) -> str:
    kinds = {r["row"].get("loss_type") for r in results}
    return "loss at fixed $x_{adv}$" if kinds == {"adv"} else "loss"


def _colors(results: Sequence[Mapping[str, Any]]) -> list[str]:
    """Method colours (AT blue, AT-AWP red...), a fallback colour per other name."""
    names = [str(r.get("method") or r.get("label")) for r in results]
    keys = sorted(set(names))
    return [color_for(n, keys.index(n)) for n in names]


def plot_eigen_density(results: Sequence[Mapping[str, Any]], *, points: int = 2000) -> Figure:
    """SLQ eigenvalue densities of several checkpoints, overlaid, log density axis.

    Every curve uses the largest broadening among the checkpoints on one common grid, so the
    curves are smoothed alike.

    Args:
        results: per-checkpoint results with ``density`` ({"runs": [[nodes, weights], ...],
            "sigma"}) and ``label``.
        points: grid points.

    Returns:
        The figure.

    Reference: Ghorbani, Krishnan, Xiao, ICML 2019, Fig. 1 (densities on a log scale).
    """
    have = [r for r in results if r.get("density")]
    if not have:
        raise ValueError("no results with an eigenvalue density to plot")
    runs = {r["label"]: [(n, w) for n, w in r["density"]["runs"]] for r in have}
    sigma = max(r["density"]["sigma"] for r in have)
    grid = density_grid([run for rs in runs.values() for run in rs], sigma, points=points)
    fig, ax = new_figure(1, 1, width=4.6, height=3.2)
    top = 0.0
    for r, color in zip(have, _colors(have)):
        phi = spectral_density(runs[r["label"]], grid, sigma)
        top = max(top, float(phi.max()))
        ax.plot(grid, phi, color=color, label=r["label"], linewidth=1.2)
    ax.set_yscale("log")
    ax.set_ylim(top * 1e-8, top * 3)
    ax.set_xlabel(f"eigenvalue of the Hessian ({_loss_label(have)})")
    ax.set_ylabel("density (SLQ, Gaussian broadening)")
    ax.legend(frameon=False)
    return fig


def plot_top_eigenvalues(results: Sequence[Mapping[str, Any]]) -> Figure:
    """The top-k eigenvalues (Lanczos) of each checkpoint against their index."""
    have = [r for r in results if r.get("eigenvalues")]
    if not have:
        raise ValueError("no results with eigenvalues to plot")
    fig, ax = new_figure(1, 1, width=4.2, height=3.0)
    positive = True
    for r, color in zip(have, _colors(have)):
        vals = np.array([np.nan if v is None else v for v in r["eigenvalues"]], dtype=float)
        positive &= bool(np.all(vals[np.isfinite(vals)] > 0))
        ax.plot(np.arange(1, len(vals) + 1), vals, marker="o", color=color, label=r["label"])
    if positive:
        ax.set_yscale("log")
    ax.set_xlabel("index i")
    ax.set_ylabel(rf"$\lambda_i$ ({_loss_label(have)})")
    ax.set_xticks(range(1, max(len(r["eigenvalues"]) for r in have) + 1))
    ax.legend(frameon=False)
    return fig


def plot_layer_curvature(results: Sequence[Mapping[str, Any]]) -> Figure:
    """Per layer, by depth: the diagonal block's trace (Hutchinson, with its interval) and,
    when measured, its top eigenvalue."""
    have = [r for r in results if any(x.get("trace") is not None for x in r.get("layers", []))]
    eig = [
        r for r in results if any(x.get("top_eigenvalue") is not None for x in r.get("layers", []))
    ]
    if not have and not eig:
        raise ValueError("no per-layer traces or eigenvalues to plot")
    panels = [p for p in (("trace", have), ("top_eigenvalue", eig)) if p[1]]
    fig, axes = new_figure(1, len(panels), width=4.2, height=3.0, squeeze=False)
    for ax, (column, rows) in zip(axes[0], panels):
        for r, color in zip(rows, _colors(rows)):
            layers = [x for x in r["layers"] if x.get(column) is not None]
            d = np.array([x["depth"] for x in layers])
            v = np.array([x[column] for x in layers], dtype=float)
            ax.plot(d, v, marker="o", markersize=3, color=color, label=r["label"])
            if column == "trace":
                lo = np.array([x["trace_low"] for x in layers], dtype=float)
                hi = np.array([x["trace_high"] for x in layers], dtype=float)
                ax.fill_between(d, lo, hi, color=color, alpha=0.15, linewidth=0)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("layer (depth order of the conv/linear weights)")
        ax.set_ylabel(
            "trace of the layer's block" if column == "trace" else "top eigenvalue of the block"
        )
        ax.legend(frameon=False)
    return fig
