"""Correlation of a flatness measure with the robust generalization gap, with uncertainty.

Kendall's tau-b (ties handled), Spearman's rho and Pearson's r, each with its two-sided
p-value (scipy), pooled over all checkpoints and per method (AT, AT-AWP, ...). Pairs with a NaN
are left out; fewer than 3 pairs have no statistic and no interval.

Each interval is the union of two: a percentile bootstrap over resampled (x, y) pairs and an
analytic one on Fisher's z scale (Pearson: se 1/sqrt(n-3); Spearman: Bonett & Wright's
sqrt((1 + r^2/2)/(n-3)); Kendall: Fieller, Hartley & Pearson's sqrt(0.437/(n-4)); [-1, 1] when
n is too small for the se). A bootstrap over a handful of checkpoints is degenerate (three
points give three resampled values) and can sit on one side of the estimate; the union is never
narrower than the analytic interval, and a degenerate resample distribution is flagged in
``warning``.

Reference: Jiang et al., "Fantastic Generalization Measures and Where to Find Them", ICLR 2020
(Kendall's tau between a measure and the gap); Efron & Tibshirani 1993 (percentile bootstrap);
Fisher 1921; Fieller, Hartley, Pearson, Biometrika 1957; Bonett & Wright, Psychometrika 2000.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats as sps

from analysis.stats import degenerate_resamples, fisher_z_interval, too_few_for_interval

MEASURES = ("kendall", "spearman", "pearson")


def _clean(x: Sequence[float], y: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"x and y must be 1-D of equal length, got {a.shape} and {b.shape}")
    keep = np.isfinite(a) & np.isfinite(b)
    return a[keep], b[keep]


def correlation(x: Sequence[float], y: Sequence[float], measure: str) -> tuple[float, float]:
    """(statistic, two-sided p-value) of ``measure`` on paired data; NaN when undefined.

    Undefined means fewer than 3 pairs or a constant x or y.
    """
    if measure not in MEASURES:
        raise ValueError(f"unknown correlation {measure!r}; choose one of {MEASURES}")
    a, b = _clean(x, y)
    if a.size < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan"), float("nan")
    if measure == "kendall":
        res = sps.kendalltau(a, b, variant="b")
    elif measure == "spearman":
        res = sps.spearmanr(a, b)
    else:
        res = sps.pearsonr(a, b)
    return float(res.statistic), float(res.pvalue)


def _statistic(a: np.ndarray, b: np.ndarray, measure: str) -> float:
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    if measure == "kendall":
        return float(sps.kendalltau(a, b, variant="b").statistic)
    if measure == "spearman":
        a, b = sps.rankdata(a), sps.rankdata(b)
    return float(np.corrcoef(a, b)[0, 1])


def bootstrap_resamples(
    x: Sequence[float], y: Sequence[float], measure: str, *, n_boot: int = 1000, seed: int = 0
) -> np.ndarray:
    """The statistic on each of ``n_boot`` resamples of the (x, y) pairs (NaN where undefined).

    Resample b draws ``numpy.random.default_rng(seed).integers(0, n, (n_boot, n))[b]``; empty
    when fewer than 3 pairs or n_boot = 0.
    """
    if measure not in MEASURES:
        raise ValueError(f"unknown correlation {measure!r}; choose one of {MEASURES}")
    if n_boot < 0:
        raise ValueError(f"n_boot={n_boot}: give 0 (no bootstrap) or more resamples")
    a, b = _clean(x, y)
    if a.size < 3 or n_boot == 0:
        return np.empty(0)
    idx = np.random.default_rng(seed).integers(0, a.size, size=(n_boot, a.size))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.array([_statistic(a[i], b[i], measure) for i in idx])


def _percentiles(stats: np.ndarray, confidence: float) -> tuple[float, float]:
    stats = stats[np.isfinite(stats)]
    if stats.size == 0:
        return float("nan"), float("nan")
    tail = 100 * (1 - confidence) / 2
    lo, hi = np.percentile(stats, [tail, 100 - tail])
    return float(lo), float(hi)


def bootstrap_interval(
    x: Sequence[float],
    y: Sequence[float],
    measure: str,
    *,
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of a correlation, resampling (x, y) pairs.

    Resamples as :func:`bootstrap_resamples`; those where x or y is constant (statistic
    undefined) are left out. Alone, it can be narrower than the analytic interval on few
    points: :func:`correlate` reports the union of both.

    Returns:
        (low, high); NaN when fewer than 3 pairs, n_boot = 0, or no resample is defined.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence={confidence} must be in (0, 1), e.g. 0.95")
    stats = bootstrap_resamples(x, y, measure, n_boot=n_boot, seed=seed)
    return _percentiles(stats, confidence)


ANALYTIC_METHOD = {
    "pearson": "Fisher z, se 1/sqrt(n-3)",
    "spearman": "Fisher z, Bonett-Wright se sqrt((1+r^2/2)/(n-3))",
    "kendall": "Fisher z, Fieller-Hartley-Pearson se sqrt(0.437/(n-4))",
}


def analytic_interval(
    statistic: float, n: int, measure: str, *, confidence: float = 0.95
) -> tuple[float, float]:
    """Normal-approximation interval of a correlation on Fisher's z scale (see the module).

    Returns:
        (low, high) in [-1, 1]; [-1, 1] when n is too small for the standard error (n <= 3,
        Kendall n <= 4); NaN when the statistic is NaN.
    """
    if measure not in MEASURES:
        raise ValueError(f"unknown correlation {measure!r}; choose one of {MEASURES}")
    dof = n - (4 if measure == "kendall" else 3)
    if dof <= 0:
        se = math.inf
    elif measure == "pearson":
        se = 1 / math.sqrt(dof)
    elif measure == "spearman":
        se = math.sqrt((1 + statistic**2 / 2) / dof) if math.isfinite(statistic) else math.inf
    else:
        se = math.sqrt(0.437 / dof)
    return fisher_z_interval(statistic, se, confidence)


@dataclass(frozen=True)
class Correlation:
    """One correlation between columns ``x`` and ``y`` in one group of checkpoints.

    ``ci_low``/``ci_high`` is the reported interval: the union of the percentile bootstrap
    (``boot_low``/``boot_high``) and the analytic one (``analytic_low``/``analytic_high``),
    named in ``ci_method``. All are NaN when the statistic is undefined (``note`` says why);
    ``warning`` flags a degenerate resample distribution.
    """

    group: str
    x: str
    y: str
    measure: str
    n: int
    statistic: float
    pvalue: float
    ci_low: float
    ci_high: float
    confidence: float
    n_boot: int
    note: str = ""  # why the statistic does not exist ("undefined (n=2 < 3 checkpoints)", ...)
    boot_low: float = float("nan")
    boot_high: float = float("nan")
    analytic_low: float = float("nan")
    analytic_high: float = float("nan")
    ci_method: str = ""
    warning: str = ""


def interval_method(measure: str, n_boot: int) -> str:
    """How :func:`correlate` builds the interval of ``measure`` (for tables and captions)."""
    analytic = ANALYTIC_METHOD[measure]
    if n_boot == 0:
        return analytic
    return f"union of percentile bootstrap ({n_boot} resamples) and {analytic}"


def correlate(
    x: Sequence[float],
    y: Sequence[float],
    *,
    x_name: str = "x",
    y_name: str = "y",
    group: str = "all",
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    measures: Sequence[str] = MEASURES,
) -> list[Correlation]:
    """Kendall tau-b, Spearman and Pearson of paired data, with p-values and intervals.

    The interval is the union of the percentile bootstrap and the analytic interval (see the
    module), so never narrower than the analytic one.

    Returns:
        One :class:`Correlation` per measure.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence={confidence} must be in (0, 1), e.g. 0.95")
    a, b = _clean(x, y)
    note = undefined_because(a, b, x_name=x_name, y_name=y_name)
    out = []
    for m in measures:
        stat, p = correlation(a, b, m)
        nan = float("nan")
        boot = (nan, nan)
        ana = (nan, nan)
        warning = ""
        if not note:
            resamples = bootstrap_resamples(a, b, m, n_boot=n_boot, seed=seed)
            boot = _percentiles(resamples, confidence)
            warning = degenerate_resamples(resamples, n_boot=n_boot)
            ana = analytic_interval(stat, int(a.size), m, confidence=confidence)
        lows, highs = (
            [v for v in (boot[0], ana[0]) if math.isfinite(v)],
            [v for v in (boot[1], ana[1]) if math.isfinite(v)],
        )
        out.append(
            Correlation(
                group=group,
                x=x_name,
                y=y_name,
                measure=m,
                n=int(a.size),
                statistic=stat,
                pvalue=p,
                ci_low=min(lows, default=nan),
                ci_high=max(highs, default=nan),
                confidence=confidence,
                n_boot=n_boot,
                note=note,
                boot_low=boot[0],
                boot_high=boot[1],
                analytic_low=ana[0],
                analytic_high=ana[1],
                ci_method="" if note else interval_method(m, n_boot),
                warning=warning,
            )
        )
    return out


def undefined_because(a: np.ndarray, b: np.ndarray, *, x_name: str, y_name: str) -> str:
    """Why no correlation exists for these finite pairs ("" when it does)."""
    if a.size < 3:
        return too_few_for_interval(int(a.size), "checkpoints")
    for values, name in ((a, x_name), (b, y_name)):
        if np.ptp(values) == 0:
            return f"constant column {name}"
    return ""


def correlate_records(
    records: Sequence[Mapping[str, Any]],
    *,
    x: str,
    y: str,
    by: str | None = "method",
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> list[Correlation]:
    """Correlations of two columns of records, pooled (group ``all``) and per value of ``by``.

    Args:
        records: rows (dicts), one per checkpoint, holding columns ``x``, ``y`` and ``by``.
        x, y: column names (e.g. ``flatness`` and ``gap``).
        by: grouping column (None: pooled only).

    Raises:
        ValueError: a row lacks ``x`` or ``y`` (the message lists the available columns).
    """
    for col in (x, y):
        missing = [i for i, r in enumerate(records) if col not in r]
        if missing:
            cols = sorted(set().union(*(r.keys() for r in records)))
            raise ValueError(f"column {col!r} missing in {len(missing)} row(s); columns: {cols}")

    def num(v: Any) -> float:
        try:
            return float(v)
        except (TypeError, ValueError):
            return math.nan

    kw = dict(x_name=x, y_name=y, n_boot=n_boot, confidence=confidence, seed=seed)
    out = correlate([num(r[x]) for r in records], [num(r[y]) for r in records], **kw)
    if by is not None:
        groups = sorted({str(r.get(by, "unknown")) for r in records})
        for g in groups:
            rows = [r for r in records if str(r.get(by, "unknown")) == g]
            out += correlate([num(r[x]) for r in rows], [num(r[y]) for r in rows], group=g, **kw)
    return out


@dataclass(frozen=True)
class LineFit:
    """Least-squares line y = slope * x + intercept (NaN when x is constant)."""

    slope: float
    intercept: float


def fit_line(x: Sequence[float], y: Sequence[float]) -> LineFit:
    """Ordinary least squares of y on x over the finite pairs."""
    a, b = _clean(x, y)
    if a.size < 2 or np.ptp(a) == 0:
        return LineFit(float("nan"), float("nan"))
    xm, ym = a.mean(), b.mean()
    slope = float(np.sum((a - xm) * (b - ym)) / np.sum((a - xm) ** 2))
    return LineFit(slope, float(ym - slope * xm))
