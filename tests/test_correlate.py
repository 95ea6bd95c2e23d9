"""Correlations against hand-written references; bootstrap; grouping; line fit; figures."""

import math

import numpy as np
import pytest
from scipy import stats as sps

from analysis.correlate import (
    analytic_interval,
    bootstrap_interval,
    correlate,
    correlate_records,
    correlation,
    fit_line,
)


def _kendall_tau_b_by_hand(x, y):
    """O(n^2) tau-b: (concordant - discordant) / sqrt((n0 - ties_x)(n0 - ties_y))."""
    n = len(x)
    conc = disc = tx = ty = 0
    for i in range(n):
        for j in range(i + 1, n):
            dx, dy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
            if dx == 0 and dy == 0:
                tx += 1
                ty += 1
            elif dx == 0:
                tx += 1
            elif dy == 0:
                ty += 1
            else:
                conc += dx == dy
                disc += dx != dy
    n0 = n * (n - 1) / 2
    return (conc - disc) / math.sqrt((n0 - tx) * (n0 - ty))


def _average_ranks(a):
    order = np.argsort(a, kind="stable")
    ranks = np.empty(len(a))
    i = 0
    while i < len(a):
        j = i
        while j + 1 < len(a) and a[order[j + 1]] == a[order[i]]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def _pearson_by_hand(x, y):
    xm, ym = x - x.mean(), y - y.mean()
    r = np.sum(xm * ym) / math.sqrt(np.sum(xm**2) * np.sum(ym**2))
    t = r * math.sqrt((len(x) - 2) / (1 - r**2))
    return r, 2 * sps.t.sf(abs(t), len(x) - 2)


def test_monotone_data_give_one_and_linear_data_a_pearson_of_one():
    x = np.arange(20.0)
    for m in ("kendall", "spearman"):
        stat, p = correlation(x, np.exp(x / 4), m)
        assert stat == pytest.approx(1.0) and p < 1e-6
    assert correlation(x, np.exp(x / 4), "pearson")[0] < 0.99  # not linear
    assert correlation(x, 2 * x + 1, "pearson")[0] == pytest.approx(1.0, abs=1e-12)
    assert correlation(x, -(x**3), "kendall")[0] == pytest.approx(-1.0)


def test_shuffled_data_correlate_near_zero():
    rng = np.random.default_rng(0)
    x = rng.normal(size=2000)
    y = rng.permutation(2 * x + 1)  # same values, pairing destroyed
    for m in ("kendall", "spearman", "pearson"):
        stat, p = correlation(x, y, m)
        assert abs(stat) < 0.06 and p > 1e-3, m


def test_statistics_and_p_values_against_hand_references_with_ties():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 5, 30).astype(float)  # many ties
    y = x + rng.integers(0, 3, 30)
    assert correlation(x, y, "kendall")[0] == pytest.approx(_kendall_tau_b_by_hand(x, y), rel=1e-12)
    rs = np.corrcoef(_average_ranks(x), _average_ranks(y))[0, 1]
    assert correlation(x, y, "spearman")[0] == pytest.approx(rs, rel=1e-12)
    r, p = _pearson_by_hand(x, y)
    got = correlation(x, y, "pearson")
    assert got[0] == pytest.approx(r, rel=1e-12) and got[1] == pytest.approx(p, rel=1e-8)


def test_undefined_cases_are_nan_and_nans_are_dropped():
    assert all(math.isnan(v) for v in correlation([1, 2], [3, 4], "kendall"))
    assert all(math.isnan(v) for v in correlation([1, 1, 1, 1], [1, 2, 3, 4], "pearson"))
    x = [1.0, 2.0, float("nan"), 3.0, 4.0]
    y = [1.0, 3.0, 100.0, 2.0, 5.0]
    assert correlation(x, y, "kendall")[0] == pytest.approx(
        _kendall_tau_b_by_hand([1, 2, 3, 4], [1, 3, 2, 5])
    )
    with pytest.raises(ValueError, match="unknown correlation"):
        correlation(x, y, "distance")
    with pytest.raises(ValueError, match="equal length"):
        correlation([1, 2, 3], [1, 2], "pearson")


def test_bootstrap_follows_its_documented_draws():
    rng = np.random.default_rng(2)
    x = rng.normal(size=25)
    y = x + rng.normal(size=25)
    lo, hi = bootstrap_interval(x, y, "pearson", n_boot=300, confidence=0.9, seed=7)
    # Reference: the same index draws, statistic per resample, percentiles.
    idx = np.random.default_rng(7).integers(0, 25, size=(300, 25))
    ref = np.array([np.corrcoef(x[i], y[i])[0, 1] for i in idx])
    assert (lo, hi) == pytest.approx(tuple(np.percentile(ref, [5, 95])), rel=1e-12)
    r = correlation(x, y, "pearson")[0]
    assert lo < r < hi
    assert bootstrap_interval(x, y, "pearson", n_boot=300, confidence=0.9, seed=7) == (lo, hi)
    assert all(math.isnan(v) for v in bootstrap_interval(x, y, "kendall", n_boot=0))


def test_two_checkpoints_get_no_statistic_and_no_interval():
    for c in correlate([0.1, 0.2], [0.3, 0.1], n_boot=100):
        assert c.note == "undefined (n=2 < 3 checkpoints)" and c.ci_method == ""
        assert all(math.isnan(v) for v in (c.statistic, c.ci_low, c.ci_high, c.boot_low))


def test_three_checkpoints_warn_of_a_degenerate_bootstrap_and_keep_zero_inside():
    # The case: Pearson 0.50, p = 0.67 on 3 checkpoints; its bootstrap alone sits on
    # the estimate's side. The reported interval must contain 0 like the p-value says.
    cors = {c.measure: c for c in correlate([1.0, 2.0, 3.0], [1.0, 3.0, 2.0], n_boot=2000)}
    p = cors["pearson"]
    assert p.statistic == pytest.approx(0.5) and p.pvalue == pytest.approx(2 / 3)
    assert p.ci_low < 0 < p.ci_high and (p.analytic_low, p.analytic_high) == (-1.0, 1.0)
    for c in cors.values():
        assert c.warning.startswith("degenerate bootstrap (3 distinct values"), c.warning
        assert c.ci_method.startswith("union of percentile bootstrap (2000 resamples)")
    rng = np.random.default_rng(8)
    x = rng.normal(size=40)
    assert correlate(x, x + rng.normal(size=40), n_boot=500)[2].warning == ""


@pytest.mark.parametrize("n", [3, 4, 5, 8, 30])
def test_the_interval_is_never_narrower_than_the_analytic_one(n):
    rng = np.random.default_rng(n)
    for rep in range(5):
        x = rng.normal(size=n)
        y = 0.5 * x + rng.normal(size=n)
        for c in correlate(x, y, n_boot=200, seed=rep):
            assert c.ci_low <= c.analytic_low and c.ci_high >= c.analytic_high, c
            assert c.ci_low <= c.boot_low and c.ci_high >= c.boot_high, c
            assert -1 <= c.ci_low <= c.statistic <= c.ci_high <= 1, c


def test_analytic_intervals_are_fisher_z_with_each_measures_se():
    q = sps.norm.ppf(0.975)
    r, n = 0.6, 28
    z = math.atanh(r)
    for measure, se in (
        ("pearson", 1 / math.sqrt(n - 3)),
        ("spearman", math.sqrt((1 + r**2 / 2) / (n - 3))),
        ("kendall", math.sqrt(0.437 / (n - 4))),
    ):
        ref = (math.tanh(z - q * se), math.tanh(z + q * se))
        assert analytic_interval(r, n, measure) == pytest.approx(ref, rel=1e-12), measure
    assert analytic_interval(0.3, 4, "kendall") == (-1.0, 1.0)  # n - 4 = 0: no se
    # A 95% Fisher-z interval of Pearson's r covers the true rho about 95% of the time.
    rng = np.random.default_rng(9)
    rho, hits = 0.5, 0
    cov = [[1, rho], [rho, 1]]
    for _ in range(400):
        xy = rng.multivariate_normal([0, 0], cov, size=20)
        lo, hi = analytic_interval(np.corrcoef(xy.T)[0, 1], 20, "pearson")
        hits += lo <= rho <= hi
    assert 0.92 <= hits / 400 <= 0.98


def test_records_are_correlated_pooled_and_per_method():
    rng = np.random.default_rng(3)
    rows = []
    for method, slope in (("AT", 1.0), ("AT-AWP", -1.0)):
        for _ in range(12):
            f = float(rng.normal())
            rows.append({"method": method, "flatness": f, "gap": slope * f})
    cors = correlate_records(rows, x="flatness", y="gap", by="method", n_boot=50)
    by = {(c.group, c.measure): c for c in cors}
    assert set(by) == {
        (g, m) for g in ("all", "AT", "AT-AWP") for m in ("kendall", "spearman", "pearson")
    }
    assert by[("AT", "kendall")].statistic == pytest.approx(1.0)
    assert by[("AT-AWP", "pearson")].statistic == pytest.approx(-1.0)
    assert by[("all", "kendall")].n == 24 and by[("AT", "spearman")].n == 12
    assert by[("AT", "kendall")].x == "flatness" and by[("AT", "kendall")].n_boot == 50
    with pytest.raises(ValueError, match="column 'sharpness' missing"):
        correlate_records(rows, x="sharpness", y="gap")
    assert len(correlate([1, 2, 3, 4], [2, 1, 4, 3], n_boot=10)) == 3


def test_fit_line_matches_polyfit():
    rng = np.random.default_rng(4)
    x = rng.normal(size=40)
    y = 0.7 * x - 0.2 + 0.1 * rng.normal(size=40)
    fit = fit_line(x, y)
    slope, intercept = np.polyfit(x, y, 1)
    assert fit.slope == pytest.approx(slope, rel=1e-10)
    assert fit.intercept == pytest.approx(intercept, rel=1e-10)
    assert math.isnan(fit_line([1, 1, 1], [1, 2, 3]).slope)


def _scatters(ax):
    from matplotlib.collections import PathCollection

    return [c for c in ax.collections if isinstance(c, PathCollection) and len(c.get_offsets())]


def _bands(ax):
    from matplotlib.collections import PolyCollection

    return [c for c in ax.collections if isinstance(c, PolyCollection)]


def test_flatness_vs_gap_draws_a_regression_band_per_method_and_a_marker_per_seed():
    from figures.flatness import plot_flatness_vs_gap

    rng = np.random.default_rng(5)
    rows = [
        {"method": m, "seed": seed, "flatness": f, "gap": slope * f + 0.05 * rng.normal()}
        for m, slope in (("AT", 1.0), ("AT-AWP", -0.5))
        for seed in (0, 1, 2)
        for f in rng.uniform(0, 1, size=4)
    ]
    rows += [{"method": "TRADES", "seed": 0, "flatness": f, "gap": f} for f in (0.2, 0.4)]
    fig = plot_flatness_vs_gap(rows, pooled_fit=False)
    ax = fig.axes[0]
    scatters = _scatters(ax)
    assert len(scatters) == 3 * 3 - 2  # AT and AT-AWP by seed (3 each), TRADES's one seed
    assert sum(len(c.get_offsets()) for c in scatters) == len(rows)
    assert len({c.get_paths()[0].vertices.tobytes() for c in scatters[:3]}) == 3  # 3 markers
    assert len(_bands(ax)) == 2  # two points (TRADES) get a line and no band
    for line, method in zip(ax.lines, ("AT", "AT-AWP", "TRADES")):
        mine = [r for r in rows if r["method"] == method]
        fit = fit_line([r["flatness"] for r in mine], [r["gap"] for r in mine])
        xs, ys = line.get_xdata(), line.get_ydata()
        assert xs[0] == pytest.approx(min(r["flatness"] for r in mine))
        assert ys == pytest.approx(fit.slope * xs + fit.intercept, abs=1e-9)
    band = _bands(ax)[0].get_paths()[0].vertices  # AT's band holds AT's line at its middle
    mid = len(ax.lines[0].get_xdata()) // 2
    x0, y0 = ax.lines[0].get_xdata()[mid], ax.lines[0].get_ydata()[mid]
    near = band[np.argsort(np.abs(band[:, 0] - x0))[:2], 1]
    assert near.min() < y0 < near.max()
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["AT", "AT-AWP", "TRADES", "seed 0", "seed 1", "seed 2"]


def test_figures():
    from figures.flatness import plot_flatness_curve, plot_flatness_vs_gap
    from figures.style import color_for

    rows = [
        {"method": m, "label": f"{m} {e}", "flatness": e * s, "gap": e * s + 0.1, "alpha": a,
         "flatness_low": e * s - 0.1, "flatness_high": e * s + 0.1}
        for m, s in (("AT", 1.0), ("AT-AWP", 0.5))
        for e in (1, 2, 3)
        for a in (0.1,)
    ]  # fmt: skip
    cors = correlate_records(rows, x="flatness", y="gap", n_boot=0)
    fig = plot_flatness_vs_gap(rows, correlations=cors)
    ax = fig.axes[0]
    assert len(_scatters(ax)) == 2 and len(_bands(ax)) == 2  # a scatter and a band per method
    assert len(ax.lines) == 3  # a fit per method and the pooled one
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels[0].startswith("AT (tau 1.00)")
    curve = plot_flatness_curve(rows)
    assert len(curve.axes[0].lines) == 6 + 1  # six checkpoints and the zero line
    assert len(curve.axes[0].collections) == 0  # six bands would hide each other
    assert len(plot_flatness_curve(rows, bands=True).axes[0].collections) == 6
    colours = {line.get_color() for line in curve.axes[0].lines[:3]}
    assert colours == {color_for("AT")}  # AT's checkpoints share AT's colour
    with pytest.raises(ValueError):
        plot_flatness_curve([{"x": 1}])
