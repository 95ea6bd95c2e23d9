"""Conclusions over seeds: paired differences with intervals, and stratified correlations.

Every AT vs AT-AWP claim of a replicated run is a paired difference: seed s trains both methods
from the same initialization and data order, so d_s = (AT-AWP) - (AT) removes what the seed does
to both. Over the seeds, the mean of d has a Student-t interval (the verdict) and a percentile
bootstrap interval (shown beside it). With fewer than three seeds no interval is given: with
two, the t interval has one degree of freedom and is too wide to mean anything, and a bootstrap
over two values has three outcomes.

The correlation of flatness with the gap pools the checkpoints of all seeds with the seed as a
stratum: Kendall's tau-b counted over pairs of checkpoints of the same seed only (a seed's level
shift cannot create or hide an association), with a two-sided permutation p-value that permutes
the gap within each seed, and on request a percentile interval from a stratified bootstrap
(checkpoints resampled with replacement within each seed, each seed keeping its count).

Reference: Student (1908); Efron & Tibshirani 1993 (percentile bootstrap; Sec. 8.4, the
stratified bootstrap); Kendall 1945 (tau-b with ties); Good 2005 (stratified permutation
tests).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from analysis.stats import degenerate_resamples, t_interval

MIN_SEEDS = 3  # fewer seeds: no interval


@dataclass(frozen=True)
class PairedDifference:
    """A measure of AT and AT-AWP over paired seeds, and the mean difference AT-AWP - AT.

    ``t_low``/``t_high`` (the verdict) and ``boot_low``/``boot_high`` are None when there are
    fewer than :data:`MIN_SEEDS` seeds; ``note`` then says so.
    """

    measure: str
    seeds: tuple[int, ...]
    at: tuple[float, ...]
    awp: tuple[float, ...]
    mean_at: float
    mean_awp: float
    mean_diff: float
    t_low: float | None
    t_high: float | None
    boot_low: float | None
    boot_high: float | None
    confidence: float
    note: str

    @property
    def n(self) -> int:
        return len(self.seeds)

    @property
    def resolved(self) -> bool:
        """The t interval excludes zero."""
        return self.t_low is not None and (self.t_low > 0 or self.t_high < 0)


def bootstrap_mean_interval(
    values: Sequence[float], *, confidence: float = 0.95, n_boot: int = 10_000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of a mean, resampling the values with replacement."""
    a = np.asarray(values, dtype=np.float64)
    if a.size < 1:
        raise ValueError("no values to resample")
    idx = np.random.default_rng(seed).integers(0, a.size, size=(n_boot, a.size))
    means = a[idx].mean(axis=1)
    tail = 100 * (1 - confidence) / 2
    lo, hi = np.percentile(means, [tail, 100 - tail])
    return float(lo), float(hi)


def paired_difference(
    measure: str,
    seeds: Sequence[int],
    at: Sequence[float],
    awp: Sequence[float],
    *,
    confidence: float = 0.95,
    n_boot: int = 10_000,
    seed: int = 0,
) -> PairedDifference:
    """The paired difference AT-AWP - AT of a measure over seeds, with its intervals.

    Args:
        measure: the measure's name (for tables and sentences).
        seeds: the seeds, one per pair.
        at, awp: the measure of each method, in the order of ``seeds``.
        confidence: level of both intervals.
        n_boot: bootstrap resamples; seed: the bootstrap's seed.

    Raises:
        ValueError: lengths differ, no seed, or a value that is not finite.
    """
    if not (len(seeds) == len(at) == len(awp)) or not seeds:
        raise ValueError(
            f"{measure}: need one AT and one AT-AWP value per seed, got {len(seeds)} seeds, "
            f"{len(at)} and {len(awp)} values"
        )
    a, b = np.asarray(at, dtype=np.float64), np.asarray(awp, dtype=np.float64)
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError(f"{measure}: a value is not finite ({list(at)}, {list(awp)})")
    d = b - a
    n = len(seeds)
    t_lo = t_hi = b_lo = b_hi = None
    note = ""
    if n < MIN_SEEDS:
        note = f"no interval possible with {n} seed{'s' if n > 1 else ''}"
    else:
        t_lo, t_hi = t_interval(d, confidence)
        b_lo, b_hi = bootstrap_mean_interval(d, confidence=confidence, n_boot=n_boot, seed=seed)
    return PairedDifference(
        measure=measure,
        seeds=tuple(int(s) for s in seeds),
        at=tuple(float(v) for v in a),
        awp=tuple(float(v) for v in b),
        mean_at=float(a.mean()),
        mean_awp=float(b.mean()),
        mean_diff=float(d.mean()),
        t_low=t_lo,
        t_high=t_hi,
        boot_low=b_lo,
        boot_high=b_hi,
        confidence=confidence,
        note=note,
    )


def verdict(
    pd: PairedDifference, *, digits: int = 3, names: tuple[str, str] = ("AT", "AT-AWP")
) -> str:
    """The sentence a paired difference supports, and no more.

    "AT-AWP lower/higher ..., interval excludes zero" only when the t interval excludes zero;
    otherwise "not resolved at N seeds". ``names`` are the two sides, (the ``at`` side, the
    ``awp`` side): another method against a reference reads ("AT", "AT-SAM").
    """
    ref, new = names
    f = f"{{:.{digits}f}}"
    means = f"{ref} {f.format(pd.mean_at)}, {new} {f.format(pd.mean_awp)}"
    diff = f"{pd.mean_diff:+.{digits}f}"
    if pd.t_low is None or pd.t_high is None:
        return (
            f"{pd.measure}: not resolved at {pd.n} seed{'s' if pd.n > 1 else ''} ({means}; "
            f"{new} minus {ref} {diff}; {pd.note})."
        )
    ci = f"{pd.confidence:.0%} t interval [{f.format(pd.t_low)}, {f.format(pd.t_high)}]"
    if pd.resolved:
        side = "higher" if pd.mean_diff > 0 else "lower"
        return (
            f"{pd.measure}: {new} {side}, interval excludes zero ({means}; {new} minus {ref} "
            f"{diff}, {ci}, {pd.n} seeds)."
        )
    return (
        f"{pd.measure}: not resolved at {pd.n} seeds ({means}; {new} minus {ref} {diff}, {ci} "
        "includes zero)."
    )


# --------------------------------------------------------------------------- stratified tau
@dataclass(frozen=True)
class StratifiedKendall:
    """Kendall's tau-b over pairs within strata, with a within-stratum permutation p-value and,
    when asked for (``n_boot`` > 0), a stratified bootstrap interval [``low``, ``high``] (NaN
    otherwise, or when tau is undefined; ``interval_note`` flags a degenerate resample
    distribution)."""

    tau: float
    pvalue: float
    n: int  # observations
    strata: int
    pairs: int  # within-stratum pairs
    n_perm: int
    method: str = (
        "Kendall tau-b over pairs of checkpoints of the same seed; two-sided p-value from "
        "permutations of y within each seed"
    )
    low: float = float("nan")
    high: float = float("nan")
    n_boot: int = 0
    confidence: float = 0.95
    interval_note: str = ""

    @property
    def resolved(self) -> bool:
        """The bootstrap interval excludes zero."""
        return bool(self.low > 0 or self.high < 0)


def _pairs(strata: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index arrays (i, j), i < j, of every pair of observations in the same stratum."""
    same = strata[:, None] == strata[None, :]
    i, j = np.nonzero(np.triu(same, k=1))
    return i, j


#: elements of the (samples x pairs) sign matrices :func:`_taus` builds at once
_CHUNK = 2_000_000


def _taus(x: np.ndarray, y: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Kendall tau-b over the pairs (i, j) of each row of ``x`` and ``y`` (samples x
    observations; a 1-D pair is one sample): (concordant - discordant) over
    sqrt((pairs - tied in x) (pairs - tied in y)), NaN where a side is all ties."""
    x, y = np.atleast_2d(x), np.atleast_2d(y)
    x = np.broadcast_to(x, (max(len(x), len(y)), x.shape[1]))
    y = np.broadcast_to(y, (len(x), y.shape[1]))
    out = np.empty(len(x))
    step = max(1, _CHUNK // max(1, i.size))
    for k in range(0, len(x), step):
        dx = np.sign(x[k : k + step, i] - x[k : k + step, j])
        dy = np.sign(y[k : k + step, i] - y[k : k + step, j])
        s = (dx * dy).sum(axis=1)
        tx, ty = (dx == 0).sum(axis=1), (dy == 0).sum(axis=1)
        denom = np.sqrt(((i.size - tx) * (i.size - ty)).astype(np.float64))
        with np.errstate(divide="ignore", invalid="ignore"):
            out[k : k + step] = np.where(denom > 0, s / denom, np.nan)
    return out


def stratified_kendall(
    x: Sequence[float],
    y: Sequence[float],
    strata: Sequence[object],
    *,
    n_perm: int = 5000,
    seed: int = 0,
    n_boot: int = 0,
    confidence: float = 0.95,
) -> StratifiedKendall:
    """Kendall's tau-b counting only pairs within the same stratum (e.g. seed).

    tau = sum_s (C_s - D_s) / sqrt((P - T_x)(P - T_y)) with P the within-stratum pairs and T the
    pairs tied in x or y; with one stratum it is scipy's tau-b, and without ties it is the mean
    of the strata's taus weighted by their pairs. The p-value is the share of permutations (y
    shuffled within each stratum) with |tau| at least the observed one. With ``n_boot`` > 0
    the interval is the percentile interval of tau over stratified bootstrap resamples (the
    observations of each stratum drawn with replacement, as many as it has); resamples where
    tau is undefined are left out.

    Raises:
        ValueError: lengths differ, or confidence outside (0, 1).
    """
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    g = np.asarray([str(s) for s in strata])
    if not (a.shape == b.shape == g.shape) or a.ndim != 1:
        raise ValueError(f"x, y and strata must have equal lengths: {a.shape} {b.shape} {g.shape}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence={confidence} must be in (0, 1), e.g. 0.95")
    keep = np.isfinite(a) & np.isfinite(b)
    a, b, g = a[keep], b[keep], g[keep]
    i, j = _pairs(g)
    tau = float(_taus(a, b, i, j)[0])
    pairs = int(i.size)
    groups = [np.flatnonzero(g == s) for s in np.unique(g)]
    if not math.isfinite(tau):
        return StratifiedKendall(
            float("nan"), float("nan"), int(a.size), len(groups), pairs, 0, confidence=confidence
        )
    rng = np.random.default_rng(seed)
    perms = np.tile(b, (n_perm, 1))
    for row in perms:  # the draws in the order of one permutation after another
        for idx in groups:
            row[idx] = b[rng.permutation(idx)]
    hits = int((np.abs(_taus(a, perms, i, j)) >= abs(tau) - 1e-12).sum()) if n_perm else 0
    pvalue = (hits + 1) / (n_perm + 1)
    low = high = float("nan")
    note = ""
    if n_boot > 0:
        boot = np.random.default_rng([seed, 1])
        draws = np.stack(
            [
                np.concatenate([boot.choice(ix, size=ix.size) for ix in groups])
                for _ in range(n_boot)
            ]
        )
        # every resample lays its strata out alike (each stratum's draws, in turn): one set of
        # pairs serves them all
        bi, bj = _pairs(np.concatenate([g[ix] for ix in groups]))
        taus = _taus(a[draws], b[draws], bi, bj)
        note = degenerate_resamples(taus, n_boot=n_boot)
        finite = taus[np.isfinite(taus)]
        if finite.size:
            tail = 100 * (1 - confidence) / 2
            low, high = (float(v) for v in np.percentile(finite, [tail, 100 - tail]))
    return StratifiedKendall(
        float(tau),
        float(pvalue),
        int(a.size),
        len(groups),
        pairs,
        n_perm,
        low=low,
        high=high,
        n_boot=n_boot,
        confidence=confidence,
        interval_note=note,
    )
