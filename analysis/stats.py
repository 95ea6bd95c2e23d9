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


MIN_INTERVAL_N = 3  # fewer samples (or checkpoints): an interval is undefined, never printed


def too_few_for_interval(n: int, what: str = "samples") -> str:
    """``"undefined (n=2 < 3 samples)"`` when ``n`` is below :data:`MIN_INTERVAL_N`, else ``""``.

    With two values a t interval has one degree of freedom (and zero width when they are equal),
    and a bootstrap over two values has three outcomes: neither says anything about the spread.
    """
    return f"undefined (n={n} < {MIN_INTERVAL_N} {what})" if n < MIN_INTERVAL_N else ""


def fisher_z_interval(r: float, se: float, confidence: float = 0.95) -> tuple[float, float]:
    """Interval of a correlation through Fisher's z = atanh(r): tanh(z -+ q se), q the normal
    quantile. ``se`` is the standard error on the z scale (1/sqrt(n-3) for Pearson's r);
    an infinite ``se`` (too few points) gives [-1, 1]; NaN r gives NaNs.

    Reference: Fisher, Metron 1921.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence={confidence} must be in (0, 1), e.g. 0.95")
    if not math.isfinite(r):
        return float("nan"), float("nan")
    if not math.isfinite(se):
        return -1.0, 1.0
    z = math.atanh(min(max(r, -1 + 1e-15), 1 - 1e-15))
    q = float(sps.norm.ppf((1 + confidence) / 2))
    return math.tanh(z - q * se), math.tanh(z + q * se)


def degenerate_resamples(
    values: Sequence[float], *, n_boot: int, min_distinct: int = 10, max_mode_share: float = 0.5
) -> str:
    """Why a bootstrap's resample distribution is too degenerate for its percentiles ("" if not).

    Degenerate: fewer than ``min_distinct`` distinct finite values, more than ``max_mode_share``
    of them equal to the most common one, or more than half of the ``n_boot`` resamples undefined.
    With three points, for instance, a resampled Pearson r takes three values (r, +1, -1).
    """
    a = np.asarray(values, dtype=np.float64)
    a = a[np.isfinite(a)]
    if n_boot == 0:
        return ""
    if a.size == 0:
        return f"degenerate bootstrap: none of {n_boot} resamples is defined"
    _, counts = np.unique(np.round(a, 12), return_counts=True)
    share = counts.max() / a.size
    reasons = []
    if counts.size < min_distinct:
        reasons.append(f"{counts.size} distinct value{'s' if counts.size > 1 else ''}")
    if share > max_mode_share:
        reasons.append(f"{share:.0%} of defined resamples equal")
    if a.size < n_boot / 2:
        reasons.append(f"{n_boot - a.size} of {n_boot} resamples undefined")
    return f"degenerate bootstrap ({', '.join(reasons)})" if reasons else ""
