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
    bands: bool | None = None,
) -> Figure:
    """Expected flatness against alpha, one line (with its interval) per group.

    Args:
        estimates: records with ``alpha``, ``measure`` and, when present,
            ``<measure>_low``/``<measure>_high`` (the interval), plus the ``by`` column.
        by: grouping column (``label``, ``method``...); records without it form one group.
        color_by: column giving each curve's colour (method colours of the house style);
            curves of the same colour get different line styles. None: colour by ``by``.
        measure: ``flatness`` (robust 0-1 error) or ``flatness_loss`` (robust cross-entropy),
            or their absolute versions ``abs_flatness`` / ``abs_flatness_loss``.
        log_x: logarithmic alpha axis.
        bands: shade each curve's interval (default: only with at most four curves, where
            the bands stay readable).

    Returns:
        The figure.
    """
    rows = [r for r in as_rows(estimates) if "alpha" in r and measure in r]
    if not rows:
        raise ValueError(f"no records with 'alpha' and {measure!r} to plot")
    fig, ax = new_figure(1, 1, width=4.2, height=3.0)
    firsts: dict[str, dict[str, Any]] = {}
    for r in rows:
        firsts.setdefault(str(r.get(by, "")), r)

    def colour_key(g: str) -> str:
        return str(firsts[g].get(color_by, g)) if color_by else g

    # Methods together (AT before AT-AWP), input order (e.g. epochs) within a method.
    groups = sorted(firsts, key=colour_key)
    bands = len(groups) <= 4 if bands is None else bands
    styles, markers = ("-", "--", ":", "-."), ("o", "s", "^", "D", "v")
    keys = sorted({colour_key(g) for g in groups})
    seen: dict[str, int] = {}  # curves drawn so far per colour
    for g in groups:
        mine = sorted((r for r in rows if str(r.get(by, "")) == g), key=lambda r: r["alpha"])
        a = np.array([r["alpha"] for r in mine], dtype=float)
        f = np.array([r[measure] for r in mine], dtype=float)
        # Colour by method (AT blue, AT-AWP red...); line style and marker tell checkpoints apart.
        key = colour_key(g)
        color = color_for(key, keys.index(key))
        j = seen.get(key, 0)
        seen[key] = j + 1
        ax.plot(
            a,
            f,
            marker=markers[j % len(markers)],
            markersize=3,
            color=color,
            linestyle=styles[j % len(styles)],
            label=g or None,
        )
        lo = np.array([r.get(f"{measure}_low", np.nan) for r in mine], dtype=float)
        hi = np.array([r.get(f"{measure}_high", np.nan) for r in mine], dtype=float)
        if bands and np.isfinite(lo).any():
            ax.fill_between(a, lo, hi, color=color, alpha=0.12, linewidth=0)
    ax.axhline(0.0, color="0.5", linewidth=0.6, linestyle=":")
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel(r"relative noise scale $\alpha$")
    ylabel = "robust error" if measure in ("flatness", "abs_flatness") else "robust loss"
    if measure.startswith("abs_"):  # the absolute flatness (the rebuttal's R#4 Q1)
        ax.set_ylabel(rf"$E_u|\rho(w+u) - \rho(w)|$ ({ylabel})")
    else:
        ax.set_ylabel(rf"$E_u[\rho(w+u)] - \rho(w)$ ({ylabel})")
    if any(groups):
        if len(groups) > 4:  # a long legend goes beside the axes, not over the curves
            ax.legend(frameon=False, loc="center left", bbox_to_anchor=(1.02, 0.5))
        else:
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
    """Scatter of a flatness measure against the robust gap, coloured by method, with a
    seaborn regression line and its 95% band per method (one marker per seed when the
    records carry several ``seed`` values).

    Args:
        records: one row per checkpoint with columns ``x``, ``y``, ``by`` (and ``seed``).
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
    # A tau that does not exist (NaN here, null in JSON) is left out of the legend.
    taus = {
        c["group"]: float(c["statistic"])
        for c in as_rows(correlations)
        if c.get("measure") == "kendall"
        and c.get("statistic") is not None
        and np.isfinite(c["statistic"])
    }
    import seaborn as sns  # imported when a figure is drawn, like matplotlib

    fig, ax = new_figure(1, 1, width=4.2, height=3.2)
    groups = sorted({str(r.get(by, "")) for r in rows})  # AT before AT-AWP in every figure
    seeds = sorted({r["seed"] for r in rows if r.get("seed") is not None}, key=str)
    markers = ("o", "s", "^", "D", "v", "P", "X", "*")
    for i, g in enumerate(groups):
        mine = [r for r in rows if str(r.get(by, "")) == g]
        xs = np.array([float(r[x]) for r in mine])
        ys = np.array([float(r[y]) for r in mine])
        color = color_for(g, i)
        label = g + (f" (tau {taus[g]:.2f})" if g in taus else "")
        if len(seeds) > 1:  # one marker per seed, the method's colour
            for j, s in enumerate(seeds):
                m = np.array([r.get("seed") == s for r in mine])
                if m.any():
                    ax.scatter(
                        xs[m], ys[m], s=16, color=color, marker=markers[j % len(markers)], zorder=3
                    )
            ax.scatter([], [], s=16, color=color, label=label)  # the method's legend entry
        else:
            ax.scatter(xs, ys, s=16, color=color, label=label, zorder=3)
        keep = np.isfinite(xs) & np.isfinite(ys)
        if keep.sum() >= 2 and np.ptp(xs[keep]) > 0:
            # Least squares with its 95% band (bootstrap over the points, seeded); no band
            # from fewer than 3 points, where it would claim a spread it cannot know.
            sns.regplot(
                x=xs[keep],
                y=ys[keep],
                ax=ax,
                scatter=False,
                ci=95 if keep.sum() >= 3 else None,
                n_boot=1000,
                seed=0,
                color=color,
                line_kws={"linewidth": 1.0},
            )
    for j, s in enumerate(seeds if len(seeds) > 1 else ()):
        ax.scatter([], [], s=16, color="0.4", marker=markers[j % len(markers)], label=f"seed {s}")
    if pooled_fit and len(groups) > 1:
        xs = np.array([float(r[x]) for r in rows])
        ys = np.array([float(r[y]) for r in rows])
        fit = fit_line(xs, ys)
        if np.isfinite(fit.slope):
            t = np.linspace(np.nanmin(xs), np.nanmax(xs), 2)
            tau = taus.get("all")
            name = "all" + (f" (tau {tau:.2f})" if tau is not None else "")
            ax.plot(t, fit.slope * t + fit.intercept, color="0.4", linestyle="--", label=name)
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.legend(frameon=False)
    return fig


def plot_sharpness(rows: Sequence[Any]) -> Figure:
    """Adaptive sharpness per checkpoint: one panel per kind (worst, average case), one group of
    bars per label, a bar per loss (robust, clean) and radius, with its interval over batches.

    Args:
        rows: records of :func:`analysis.adaptive_sharpness.result_rows` (``label``, ``kind``,
            ``loss``, ``rho``, ``sharpness``, ``ci_low``, ``ci_high``).

    Returns:
        The figure.
    """
    rows = [r for r in as_rows(rows) if "kind" in r and "sharpness" in r]
    if not rows:
        raise ValueError("no sharpness records to plot")
    kinds = list(dict.fromkeys(r["kind"] for r in rows))
    labels = list(dict.fromkeys(str(r.get("label", "")) for r in rows))
    fig, axes = new_figure(1, len(kinds), width=3.4 * len(kinds), height=3.0)
    axes = np.atleast_1d(axes)
    titles = {"worst": "worst case S_max", "average": "average case S_avg"}
    for ax, kind in zip(axes, kinds):
        mine = [r for r in rows if r["kind"] == kind]
        bars = list(dict.fromkeys((r["loss"], r["rho"]) for r in mine))
        width = 0.8 / len(bars)
        for j, (loss, rho) in enumerate(bars):
            for i, label in enumerate(labels):
                found = [r for r in mine if (r["loss"], r["rho"], str(r.get("label", ""))) ==
                         (loss, rho, label)]  # fmt: skip
                if not found:
                    continue
                r = found[0]
                low, high = r.get("ci_low"), r.get("ci_high")
                err = None
                if low is not None and high is not None and np.isfinite([low, high]).all():
                    err = [[r["sharpness"] - low], [high - r["sharpness"]]]
                ax.bar(i + (j - (len(bars) - 1) / 2) * width, r["sharpness"], width, yerr=err,
                       color=color_for(f"{loss}", j), alpha=0.85, capsize=2,
                       label=f"{loss} loss, rho={rho:g}" if i == 0 else None)  # fmt: skip
        ax.set_xticks(range(len(labels)), labels, rotation=20)
        ax.set_title(titles.get(kind, kind))
        ax.set_ylabel("loss increase (nats)")
        ax.legend(fontsize=7)
    return fig
