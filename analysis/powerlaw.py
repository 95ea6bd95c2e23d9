"""A continuous power-law fit of a sample's tail: maximum likelihood, x_min by the KS rule.

For a tail ``x >= x_min`` with density p(x) = (alpha - 1) / x_min (x / x_min)^-alpha the maximum
likelihood estimate is alpha = 1 + n / sum_i ln(x_i / x_min), with standard error
(alpha - 1) / sqrt(n). x_min is the candidate (a sample value leaving at least ``min_tail``
values above it) whose fitted CDF is closest to the tail's empirical CDF in Kolmogorov-Smirnov
distance. WeightWatcher fits the eigenvalues of W^T W this way (its alpha).

Reference: Clauset, Shalizi, Newman, "Power-law distributions in empirical data", SIAM Review
2009, Eqs. (3.1), (3.2) and Sec. 3.3; Martin & Mahoney, JMLR 2021 (heavy-tailed
self-regularization, the ESD's alpha).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NAN = float("nan")


@dataclass(frozen=True)
class PowerLawFit:
    """A power-law fit of a tail.

    Attributes:
        alpha: the exponent of the density p(x) ~ x^-alpha (NaN when no fit was possible).
        alpha_se: its standard error (alpha - 1) / sqrt(n_tail).
        xmin: where the tail starts.
        n_tail: values >= xmin used by the fit; n: positive values in the sample.
        ks_distance: sup |F_tail - F_fit| at the chosen xmin.
    """

    alpha: float
    alpha_se: float
    xmin: float
    n_tail: int
    n: int
    ks_distance: float


def power_law_alpha(tail: np.ndarray, xmin: float) -> float:
    """The maximum likelihood exponent of a continuous power law on ``tail >= xmin``.

    Returns:
        1 + n / sum ln(x / xmin), or NaN when every value equals xmin.
    """
    logs = float(np.sum(np.log(tail / xmin)))
    return 1.0 + len(tail) / logs if logs > 0 else NAN


def ks_distance(tail: np.ndarray, xmin: float, alpha: float) -> float:
    """sup_x |F_n(x) - F(x)| between the sorted ``tail``'s empirical CDF and the power law's,
    F(x) = 1 - (x / xmin)^(1 - alpha); both sides of each jump of F_n are compared."""
    n = len(tail)
    cdf = 1.0 - (tail / xmin) ** (1.0 - alpha)
    above = np.arange(1, n + 1) / n - cdf
    below = cdf - np.arange(n) / n
    return float(max(above.max(), below.max()))


def fit_power_law(
    values: np.ndarray, *, min_tail: int = 10, xmin: float | None = None
) -> PowerLawFit:
    """Fit a continuous power law to the tail of ``values`` (maximum likelihood + KS rule).

    Args:
        values: the sample (e.g. the eigenvalues of W^T W); values <= 0 or non-finite are
            dropped (zero eigenvalues of a rank-deficient layer carry no tail).
        min_tail: the fewest values a candidate x_min must leave in the tail (>= 2).
        xmin: a fixed x_min instead of the KS search.

    Returns:
        :class:`PowerLawFit`; alpha is NaN when fewer than ``min_tail`` positive values exist
        (or the tail is one repeated value).

    Reference: Clauset, Shalizi, Newman 2009, Eq. (3.1) (alpha), (3.2) (its error), Sec. 3.3
    (x_min minimizing the KS distance).
    """
    if min_tail < 2:
        raise ValueError(f"min_tail={min_tail} must be >= 2")
    x = np.sort(np.asarray(values, dtype=np.float64).ravel())
    x = x[np.isfinite(x) & (x > 0)]
    n = len(x)
    best = PowerLawFit(NAN, NAN, NAN, 0, n, NAN)
    if xmin is not None:
        candidates = [int(np.searchsorted(x, xmin, side="left"))]
        if n - candidates[0] < 1:
            return best
    else:
        # each distinct value leaving >= min_tail values at or above it
        starts = np.flatnonzero(np.r_[True, x[1:] > x[:-1]])
        candidates = [int(j) for j in starts if n - j >= min_tail]
    for j in candidates:
        tail, lo = x[j:], float(xmin) if xmin is not None else float(x[j])
        alpha = power_law_alpha(tail, lo)
        if not np.isfinite(alpha):
            continue
        d = ks_distance(tail, lo, alpha)
        if np.isnan(best.ks_distance) or d < best.ks_distance:  # ties keep the longer tail
            best = PowerLawFit(alpha, (alpha - 1) / np.sqrt(len(tail)), lo, len(tail), n, d)
    return best
