"""The measures-vs-robust-gap table (stratified Kendall tau-b with its interval) and the methods
against AT (paired differences), checked on small examples computed by hand."""

import math

import numpy as np
import pytest
from scipy import stats as sps

from analysis.predictors import compare_methods, measure_columns, rank_measures
from analysis.replicates import stratified_kendall

# Two seeds, each with two methods' checkpoints at epochs 10 and 20.
GAP = {0: [0.30, 0.45, 0.20, 0.25], 1: [0.35, 0.50, 0.15, 0.30]}
A = {0: [1.0, 2.0, 0.5, 0.7], 1: [1.1, 1.9, 0.6, 1.2]}  # no ties
C = {0: [1.0, 1.0, 0.0, 2.0], 1: [0.0, 1.0, 0.0, 1.0]}  # ties in the measure
IDS = [("AT", 10), ("AT", 20), ("AT-AWP", 10), ("AT-AWP", 20)]


def rows() -> list[dict]:
    return [
        {"method": m, "seed": s, "checkpoint": e, "gap": GAP[s][i], "A": A[s][i], "C": C[s][i]}
        for s in (0, 1)
        for i, (m, e) in enumerate(IDS)
    ]


def test_tau_without_ties_is_the_pair_weighted_mean_of_scipys_taus_per_seed():
    (a,) = rank_measures(rows(), measures=["A"], n_perm=200, n_boot=200)
    per_seed = [sps.kendalltau(A[s], GAP[s], variant="b").statistic for s in (0, 1)]
    assert per_seed == pytest.approx([1.0, 4 / 6])  # seed 1: one discordant pair of six
    assert a.tau == pytest.approx((6 * per_seed[0] + 6 * per_seed[1]) / 12, rel=1e-12)
    assert (a.n, a.strata, a.pairs) == (8, 2, 12)
    assert 0 < a.pvalue <= 1 and a.low <= a.tau <= a.high


def test_tau_b_with_ties_matches_the_counts_done_by_hand():
    # Seed 0, pairs (i, j) of checkpoints: (0,1) tied in C; (0,2) +; (0,3) -; (1,2) +;
    # (1,3) -; (2,3) + -> S = 1, one tie in C. Seed 1: (0,1) +; (0,2) tied; (0,3) -; (1,2) +;
    # (1,3) tied; (2,3) + -> S = 2, two ties in C. No ties in the gap.
    # tau-b = (1 + 2) / sqrt((12 - 3) * (12 - 0)).
    (c,) = rank_measures(rows(), measures=["C"], n_perm=200, n_boot=200)
    assert c.tau == pytest.approx(3 / math.sqrt(9 * 12), rel=1e-12)
    # Pooling the seeds without strata would count cross-seed pairs too.
    pooled = sps.kendalltau(C[0] + C[1], GAP[0] + GAP[1], variant="b").statistic
    assert abs(pooled - c.tau) > 0.05


def test_pairing_within_an_epoch_compares_the_methods_and_not_the_runs_drift():
    # T grows with the epoch (as the gap does along each run) but is higher for AT-AWP, whose
    # gap is the smaller at both epochs of both seeds.
    r = rows()
    for row in r:
        row["T"] = row["checkpoint"] / 10 + (0.5 if row["method"] == "AT-AWP" else 0.0)
    (by_seed,) = rank_measures(r, measures=["T"], n_perm=50, n_boot=50)
    (by_epoch,) = rank_measures(
        r, measures=["T"], n_perm=50, n_boot=50, within=("seed", "checkpoint")
    )
    # Within a seed: 3 concordant and 3 discordant pairs of six in both seeds (the drift
    # cancels the methods' order); within a seed and epoch: the single pair of each of the four
    # groups is discordant.
    per_seed = [sps.kendalltau([1, 2, 1.5, 2.5], GAP[s], variant="b").statistic for s in (0, 1)]
    assert per_seed == pytest.approx([0.0, 0.0], abs=1e-12) and by_seed.tau == pytest.approx(0)
    assert by_epoch.tau == -1.0 and (by_epoch.strata, by_epoch.pairs) == (4, 4)
    assert by_seed.within == "seed" and by_epoch.within == "seed and checkpoint"
    assert "same seed and checkpoint" in by_epoch.method
    with pytest.raises(ValueError, match=r"within=\('method',\) is not one of"):
        rank_measures(r, measures=["T"], within=("method",))


def test_measures_default_to_the_numeric_columns_and_bad_rows_are_refused():
    assert measure_columns(rows()) == ["A", "C"]
    assert [r.measure for r in rank_measures(rows(), n_perm=10, n_boot=10)] == ["A", "C"]
    bad = rows()
    del bad[3]["gap"]
    with pytest.raises(ValueError, match=r"row 3 lacks \['gap'\]"):
        rank_measures(bad)
    twice = rows() + [rows()[0]]
    with pytest.raises(ValueError, match="rows 0 and 8 are the same method=AT, seed=0"):
        rank_measures(twice)
    with pytest.raises(ValueError, match=r"measures \['Z'\] are in no row"):
        rank_measures(rows(), measures=["Z"])


def test_a_measure_that_only_shifts_between_seeds_is_undefined_not_perfect():
    r = rows()
    for row in r:
        row["level"] = float(row["seed"])  # constant within every seed
    (level,) = rank_measures(r, measures=["level"], n_perm=10, n_boot=10)
    assert math.isnan(level.tau) and "undefined" in level.note and not level.ranks


def test_the_interval_finds_a_real_association_and_not_noise():
    rng = np.random.default_rng(0)
    r = []
    for s in range(3):
        for i in range(10):
            gap = rng.normal()
            r.append({"method": f"m{i % 5}", "seed": s, "checkpoint": i, "gap": gap + s,
                      "good": gap + 0.3 * rng.normal(), "noise": rng.normal()})  # fmt: skip
    good, noise = rank_measures(r, measures=["good", "noise"], n_perm=500, n_boot=1000)
    assert good.ranks and good.tau > 0.5 and good.pvalue < 0.01
    assert not noise.ranks and noise.low < 0 < noise.high and noise.pvalue > 0.05


def test_asking_for_the_interval_changes_neither_tau_nor_the_p_value():
    # Seeds of 5 and 8 checkpoints: 10 + 28 within-seed pairs.
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=13), rng.normal(size=13)
    strata = [0] * 5 + [1] * 8
    with_ci = stratified_kendall(x, y, strata, n_perm=50, n_boot=300, seed=1)
    plain = stratified_kendall(x, y, strata, n_perm=50, seed=1)
    assert with_ci.tau == plain.tau and with_ci.pvalue == plain.pvalue  # the p-value is as before
    assert math.isnan(plain.low) and plain.n_boot == 0
    assert -1 <= with_ci.low < with_ci.tau < with_ci.high <= 1 and with_ci.pairs == 38


# --------------------------------------------------------------------------- methods against AT
RUNS = [
    {"method": "AT", "seed": 0, "best": 0.40, "last": 0.30, "gap": 0.50, "loss_rise": 0.9},
    {"method": "AT", "seed": 1, "best": 0.42, "last": 0.33, "gap": 0.45, "loss_rise": 1.1},
    {"method": "AT", "seed": 2, "best": 0.41, "last": 0.31, "gap": 0.48, "loss_rise": 1.0},
    {"method": "AT-AWP", "seed": 0, "best": 0.45, "last": 0.44, "gap": 0.20, "loss_rise": 0.1},
    {"method": "AT-AWP", "seed": 1, "best": 0.46, "last": 0.45, "gap": 0.22, "loss_rise": 0.05},
    {"method": "AT-AWP", "seed": 2, "best": 0.44, "last": 0.43, "gap": 0.21, "loss_rise": 0.0},
    {"method": "AT-SAM", "seed": 1, "best": 0.43, "last": 0.35, "gap": 0.40, "loss_rise": 0.8},
    {"method": "AT-SAM", "seed": 0, "best": 0.41, "last": 0.32, "gap": 0.41, "loss_rise": None},
]


def test_each_method_against_at_is_a_paired_difference_with_a_t_interval():
    table = compare_methods(RUNS, reference="AT")
    assert [(o.method, o.outcome) for o in table[:4]] == [
        ("AT-AWP", "best"), ("AT-AWP", "last"), ("AT-AWP", "gap"), ("AT-AWP", "loss_rise"),
    ]  # fmt: skip
    last = table[1]
    d = np.array([0.44 - 0.30, 0.45 - 0.33, 0.43 - 0.31])  # by hand, seed by seed
    half = sps.t.ppf(0.975, 2) * d.std(ddof=1) / math.sqrt(3)
    assert last.mean_diff == pytest.approx(d.mean())
    assert (last.t_low, last.t_high) == pytest.approx((d.mean() - half, d.mean() + half))
    assert last.seeds == (0, 1, 2) and last.reference_values == (0.30, 0.33, 0.31)
    assert last.resolved and "AT-AWP higher, interval excludes zero" in last.sentence
    assert "AT-AWP minus AT +0.127" in last.sentence
    gap = table[2]
    assert gap.resolved and gap.mean_diff < 0 and "AT-AWP lower" in gap.sentence


def test_missing_seeds_and_values_leave_pairs_out_and_say_so():
    table = {(o.method, o.outcome): o for o in compare_methods(RUNS)}
    best = table["AT-SAM", "best"]
    assert best.seeds == (0, 1) and best.t_low is None and not best.resolved
    assert "no interval possible with 2 seeds" in best.note
    assert "not resolved at 2 seeds" in best.sentence and "AT-SAM minus AT" in best.sentence
    rise = table["AT-SAM", "loss_rise"]  # seed 0's value is missing
    assert rise.seeds == (1,) and rise.mean_diff == pytest.approx(0.8 - 1.1)
    none = compare_methods([*RUNS, {"method": "EMA", "seed": 7, "best": 0.5}], outcomes=["best"])
    assert none[-1].method == "EMA" and "no seed has both AT and EMA" in none[-1].note


def test_an_absent_reference_or_a_repeated_run_is_refused():
    with pytest.raises(ValueError, match=r"reference method 'AT' has no run; methods: \['X'\]"):
        compare_methods([{"method": "X", "seed": 0, "best": 1.0}])
    with pytest.raises(ValueError, match="rows 0 and 8 are the same method=AT, seed=0"):
        compare_methods([*RUNS, RUNS[0]])
