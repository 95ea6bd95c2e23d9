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


def clopper_pearson_lower(k: int, n: int, alpha: float) -> float:
    """One-sided (1 - alpha) lower confidence bound of a success probability from k of n.

    The largest p with P(Binom(n, p) >= k) <= alpha, i.e. the lower end of the two-sided
    interval of confidence 1 - 2 alpha (0 when k = 0). Randomized smoothing's pA_lower.

    Reference: Clopper & Pearson, Biometrika 1934; Cohen, Rosenfeld, Kolter, ICML 2019
    (``_lower_confidence_bound``: ``proportion_confint(k, n, alpha=2 * alpha, method="beta")``).
    """
    if n < 1 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n and n >= 1, got k={k}, n={n}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha={alpha} must be in (0, 1)")
    return 0.0 if k == 0 else float(sps.beta.ppf(alpha, k, n - k + 1))


def binomial_pvalue(k: int, n: int, p: float = 0.5) -> float:
    """Two-sided exact binomial test of H0: success probability p, from k successes in n."""
    if n < 1 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n and n >= 1, got k={k}, n={n}")
    return float(sps.binomtest(k, n, p).pvalue)


def t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """Student-t interval of a mean from i.i.d. values (NaN for fewer than two values)."""
    a = np.asarray(values, dtype=np.float64)
    if a.size < 2:
        return float("nan"), float("nan")
    half = float(sps.t.ppf((1 + confidence) / 2, a.size - 1)) * a.std(ddof=1) / math.sqrt(a.size)
    return float(a.mean() - half), float(a.mean() + half)
