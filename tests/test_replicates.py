"""Paired intervals over seeds, the verdicts they allow, and the stratified Kendall tau."""

import math

import numpy as np
import pytest
from scipy import stats as sps

from analysis.replicates import (
    bootstrap_mean_interval,
    paired_difference,
    stratified_kendall,
    verdict,
)


def test_the_paired_interval_is_scipys_t_interval_of_the_differences():
    at, awp = [0.20, 0.22, 0.19, 0.25], [0.24, 0.27, 0.21, 0.26]
    d = np.subtract(awp, at)
    pd = paired_difference("last robust accuracy", [0, 1, 2, 3], at, awp)
    lo, hi = sps.t.interval(0.95, len(d) - 1, loc=d.mean(), scale=sps.sem(d))
    assert pd.mean_diff == pytest.approx(d.mean()) and (pd.t_low, pd.t_high) == pytest.approx(
        (lo, hi), rel=1e-12
    )
    # the same as scipy's paired t-test: the interval excludes zero iff p < 0.05
    p = sps.ttest_rel(awp, at).pvalue
    assert pd.resolved == (p < 0.05)
    assert pd.boot_low <= d.mean() <= pd.boot_high


def test_the_bootstrap_interval_covers_the_mean_at_its_level():
    rng = np.random.default_rng(0)
    hits = 0
    for r in range(200):
        x = rng.normal(1.0, 1.0, size=20)
        lo, hi = bootstrap_mean_interval(x, n_boot=2000, seed=r)
        hits += lo <= 1.0 <= hi
    assert 0.88 <= hits / 200 <= 0.99  # percentile bootstrap: near 95% at n = 20


def test_the_sentence_follows_the_interval():
    resolved = paired_difference("gap", [0, 1, 2], [0.30, 0.32, 0.31], [0.20, 0.21, 0.22])
    assert resolved.t_high < 0
    assert "AT-AWP lower, interval excludes zero" in verdict(resolved)
    # move one seed so that the interval crosses zero: the claim goes away
    crossing = paired_difference("gap", [0, 1, 2], [0.30, 0.32, 0.10], [0.20, 0.21, 0.22])
    assert crossing.t_low < 0 < crossing.t_high
    assert "not resolved at 3 seeds" in verdict(crossing) and "includes zero" in verdict(crossing)
    higher = paired_difference("acc", [0, 1, 2], [0.1, 0.1, 0.1], [0.2, 0.21, 0.2])
    assert "AT-AWP higher, interval excludes zero" in verdict(higher)


def test_two_seeds_give_no_interval():
    pd = paired_difference("gap", [0, 1], [0.3, 0.32], [0.2, 0.21])
    assert pd.t_low is None and pd.boot_low is None and not pd.resolved
    assert "no interval possible with 2 seeds" in verdict(pd) and "not resolved at 2" in verdict(pd)
    with pytest.raises(ValueError, match="one AT and one AT-AWP value per seed"):
        paired_difference("gap", [0, 1], [0.3], [0.2, 0.1])
    with pytest.raises(ValueError, match="not finite"):
        paired_difference("gap", [0, 1, 2], [0.3, math.nan, 0.1], [0.2, 0.1, 0.1])


def test_one_stratum_is_scipys_tau_b_and_strata_only_compare_within():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 5, 12).astype(float)  # ties included
    y = x + rng.integers(0, 3, 12)
    one = stratified_kendall(x, y, [0] * 12, n_perm=200)
    assert one.tau == pytest.approx(sps.kendalltau(x, y, variant="b").statistic, rel=1e-12)
    # Two seeds with a level shift: pooled tau sees a spurious association, strata do not.
    xs = np.r_[np.arange(6.0), np.arange(6.0) + 100]
    ys = np.r_[rng.permutation(np.arange(6.0)), rng.permutation(np.arange(6.0)) + 100]
    pooled = sps.kendalltau(xs, ys).statistic
    strat = stratified_kendall(xs, ys, [0] * 6 + [1] * 6, n_perm=500)
    assert pooled > 0.4 and abs(strat.tau) < pooled and strat.pairs == 2 * 15
    assert strat.pvalue > 0.05


def test_the_permutation_p_value_finds_a_real_within_seed_association():
    rng = np.random.default_rng(2)
    x = rng.normal(size=30)
    y = x + 0.3 * rng.normal(size=30)
    seeds = np.repeat([0, 1, 2], 10)
    r = stratified_kendall(x, y + seeds * 5.0, seeds, n_perm=999)
    assert r.tau > 0.6 and r.pvalue <= 0.002 and r.strata == 3
