"""Intervals for means and proportions (scipy's distributions behind plain functions)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats as sps


def clopper_pearson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact two-sided binomial interval for a success probability from k successes in n.

    Returns:
        (low, high) with P(Binom(n, low) >= k) = (1-c)/2 and P(Binom(n, high) <= k) = (1-c)/2
        (low = 0 when k = 0, high = 1 when k = n).

    Reference: Clopper & Pearson, Biometrika 1934 (beta-quantile form).
    """
    if n < 1 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n and n >= 1, got k={k}, n={n}")
    a = 1 - confidence
    low = 0.0 if k == 0 else float(sps.beta.ppf(a / 2, k, n - k + 1))
    high = 1.0 if k == n else float(sps.beta.ppf(1 - a / 2, k + 1, n - k))
    return low, high


def t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """Student-t interval of a mean from i.i.d. values (NaN for fewer than two values)."""
    a = np.asarray(values, dtype=np.float64)
    if a.size < 2:
        return float("nan"), float("nan")
    half = float(sps.t.ppf((1 + confidence) / 2, a.size - 1)) * a.std(ddof=1) / math.sqrt(a.size)
    return float(a.mean() - half), float(a.mean() + half)
