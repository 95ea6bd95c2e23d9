"""Correlation of a flatness measure with the robust generalization gap, with uncertainty.

Kendall's tau-b (ties handled), Spearman's rho and Pearson's r, each with its two-sided
p-value (scipy) and a percentile bootstrap interval over resampled (x, y) pairs, pooled over
all checkpoints and per method (AT, AT-AWP, ...). Pairs with a NaN are left out.

Reference: Jiang et al., "Fantastic Generalization Measures and Where to Find Them", ICLR 2020
(Kendall's tau between a measure and the gap); Efron & Tibshirani 1993 (percentile bootstrap).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats as sps

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

    Resample b draws ``numpy.random.default_rng(seed).integers(0, n, (n_boot, n))[b]``;
    resamples where x or y is constant (statistic undefined) are left out.

    Returns:
        (low, high); NaN when fewer than 3 pairs, n_boot = 0, or no resample is defined.
    """
    if measure not in MEASURES:
        raise ValueError(f"unknown correlation {measure!r}; choose one of {MEASURES}")
    if not 0 < confidence < 1 or n_boot < 0:
        raise ValueError(f"need 0 < confidence < 1 and n_boot >= 0, got {confidence}, {n_boot}")
    a, b = _clean(x, y)
    if a.size < 3 or n_boot == 0:
        return float("nan"), float("nan")
    idx = np.random.default_rng(seed).integers(0, a.size, size=(n_boot, a.size))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stats = np.array([_statistic(a[i], b[i], measure) for i in idx])
    stats = stats[np.isfinite(stats)]
    if stats.size == 0:
        return float("nan"), float("nan")
    tail = 100 * (1 - confidence) / 2
    lo, hi = np.percentile(stats, [tail, 100 - tail])
    return float(lo), float(hi)


@dataclass(frozen=True)
class Correlation:
    """One correlation between columns ``x`` and ``y`` in one group of checkpoints."""

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
    note: str = ""  # why the statistic does not exist ("undefined (n=2)", "constant column gap")


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
    """Kendall tau-b, Spearman and Pearson of paired data, with p-values and bootstrap intervals.

    Returns:
        One :class:`Correlation` per measure.
    """
    a, b = _clean(x, y)
    note = undefined_because(a, b, x_name=x_name, y_name=y_name)
    out = []
    for m in measures:
        stat, p = correlation(a, b, m)
        lo, hi = bootstrap_interval(a, b, m, n_boot=n_boot, confidence=confidence, seed=seed)
        out.append(
            Correlation(
                group, x_name, y_name, m, int(a.size), stat, p, lo, hi, confidence, n_boot, note
            )
        )
    return out


def undefined_because(a: np.ndarray, b: np.ndarray, *, x_name: str, y_name: str) -> str:
    """Why no correlation exists for these finite pairs ("" when it does)."""
    if a.size < 3:
        return f"undefined (n={a.size})"
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
