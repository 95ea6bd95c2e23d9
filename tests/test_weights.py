"""Weight statistics against scipy and hand references; layer selection; histograms; figures."""

import itertools
import math

import numpy as np
import pytest
import torch
from scipy import stats as sps

from analysis.weights import (
    compare_weights,
    layer_kind,
    model_layers,
    select_layers,
    shared_histograms,
    weight_report,
    weight_stats,
)
from awp.models import ModelSpec, build_model
from awp.perturb import select_params
from tests.helpers import tiny_model


def _known_arrays():
    rng = np.random.default_rng(0)
    return [
        np.array([1.0, 2.0, 2.0, 3.0, 10.0]),  # skewed by hand
        rng.exponential(size=500),  # right-skewed, heavy tail
        rng.standard_t(4, size=(8, 4, 3, 3)),  # a conv-shaped heavy-tailed tensor
    ]


@pytest.mark.parametrize("a", _known_arrays())
def test_statistics_equal_scipy_and_numpy(a):
    s = weight_stats(torch.from_numpy(a))
    flat = a.ravel()
    assert s.n == flat.size
    assert s.mean == pytest.approx(np.mean(flat), rel=1e-12)
    assert s.std == pytest.approx(np.std(flat), rel=1e-12)  # population std, ddof=0
    assert s.norm == pytest.approx(np.linalg.norm(flat), rel=1e-12)
    assert s.mean_abs == pytest.approx(np.mean(np.abs(flat)), rel=1e-12)
    assert s.skewness == pytest.approx(sps.skew(flat), rel=1e-10)
    assert s.excess_kurtosis == pytest.approx(sps.kurtosis(flat, fisher=True), rel=1e-10)


def test_symmetric_weights_have_zero_skewness_and_constant_ones_nan():
    s = weight_stats(np.array([-3.0, -1.0, 0.0, 1.0, 3.0]))
    assert s.skewness == pytest.approx(0.0, abs=1e-15) and s.mean == 0.0
    c = weight_stats(np.full(7, 0.5))
    assert c.std == 0 and np.isnan(c.skewness) and np.isnan(c.excess_kurtosis)
    with pytest.raises(ValueError, match="no weights"):
        weight_stats(np.zeros(0), layer="x")


def _ks_by_hand(a, b):
    """sup |F_a - F_b| over the pooled sample points (empirical CDFs, right-continuous)."""
    pts = np.concatenate([a, b])
    fa = np.array([np.mean(a <= t) for t in pts])
    fb = np.array([np.mean(b <= t) for t in pts])
    return np.max(np.abs(fa - fb))


def _w1_by_hand(a, b):
    """Integral of |F_a - F_b| between consecutive pooled points."""
    pts = np.sort(np.concatenate([a, b]))
    total = 0.0
    for lo, hi in zip(pts[:-1], pts[1:]):
        total += abs(np.mean(a <= lo) - np.mean(b <= lo)) * (hi - lo)
    return total


def test_ks_and_wasserstein_against_hand_references():
    rng = np.random.default_rng(1)
    a, b = rng.normal(0, 1, 60), rng.normal(0.5, 1.5, 45)
    c = compare_weights(torch.from_numpy(a), b, layer="l", label_a="AT", label_b="AT-AWP")
    assert c.ks_statistic == pytest.approx(_ks_by_hand(a, b), abs=1e-12)
    assert c.wasserstein == pytest.approx(_w1_by_hand(a, b), rel=1e-10)
    assert c.norm_ratio == pytest.approx(np.linalg.norm(b) / np.linalg.norm(a))
    assert c.mean_abs_ratio == pytest.approx(np.mean(np.abs(b)) / np.mean(np.abs(a)))
    # Equal sizes: W1 is the mean distance between sorted samples.
    x, y = rng.normal(size=50), rng.normal(size=50) * 2
    assert compare_weights(x, y).wasserstein == pytest.approx(
        np.mean(np.abs(np.sort(x) - np.sort(y))), rel=1e-10
    )
    # Same sample: no difference; very different samples: tiny p-value.
    same = compare_weights(a, a.copy())
    assert same.ks_statistic == 0 and same.wasserstein == 0 and same.ks_pvalue == 1
    far = compare_weights(rng.normal(0, 1, 400), rng.normal(3, 1, 400))
    assert far.ks_pvalue < 1e-10 and far.ks_statistic > 0.8


def test_layer_selection_follows_the_awp_rule_and_kinds():
    model = tiny_model()
    params = dict(model.named_parameters())
    assert select_layers(params, ["weights"]) == list(select_params(model))
    assert select_layers(params, ["all"]) == list(params)
    assert select_layers(params, ["last-conv"]) == ["conv2.weight"]
    assert select_layers(params, ["first-conv", "linear"]) == ["conv1.weight", "linear.weight"]
    assert select_layers(params, ["norm"]) == ["bn1.weight", "bn2.weight"]
    assert select_layers(params, ["bias"]) == ["bn1.bias", "conv2.bias", "bn2.bias", "linear.bias"]
    assert select_layers(params, ["bn*.bias"]) == ["bn1.bias", "bn2.bias"]
    assert layer_kind("linear.weight", params["linear.weight"]) == "linear"
    with pytest.raises(ValueError, match="matches no parameter"):
        select_layers(params, ["layer9.conv"])
    with pytest.raises(ValueError, match="no layer selector"):
        select_layers(params, [])


def test_last_conv_of_preactresnet18_is_the_rebuttals_layer():
    model = build_model(ModelSpec(name="preactresnet18", width=0.125))
    layers = model_layers(model, ["last-conv"])
    assert list(layers) == ["layer4.1.conv2.weight"]
    assert not layers["layer4.1.conv2.weight"].requires_grad  # detached copies


def test_report_matches_layers_by_name_with_shared_bins():
    a, b, c = tiny_model(0), tiny_model(1), tiny_model(2)
    weights = {k: dict(m.named_parameters()) for k, m in (("AT", a), ("AT-AWP", b), ("X", c))}
    rep = weight_report(weights, layers=["weights"], bins=20)
    assert rep.layers == ("conv1.weight", "conv2.weight", "linear.weight")
    assert len(rep.stats) == 9 and len(rep.comparisons) == 9  # 3 layers x 3 pairs
    assert {(r.label_a, r.label_b) for r in rep.comparisons} == set(
        itertools.combinations(["AT", "AT-AWP", "X"], 2)
    )
    by = {(s.label, s.layer): s for s in rep.stats}
    assert by[("AT-AWP", "conv2.weight")].depth == 1
    assert by[("AT", "linear.weight")].norm == pytest.approx(float(a.linear.weight.detach().norm()))
    for layer in rep.layers:
        hs = [h for h in rep.histograms if h.layer == layer]
        assert len({h.edges for h in hs}) == 1  # one set of bins per layer
        for h in hs:
            widths = np.diff(h.edges)
            assert np.sum(np.array(h.density) * widths) == pytest.approx(1.0)
            assert h.outside == 0 and h.edges[0] == -h.edges[-1]
    del weights["X"]["linear.weight"]
    with pytest.raises(ValueError, match="has no layer"):
        weight_report(weights, layers=["weights"])


def test_histogram_clipping_counts_weights_outside():
    h = shared_histograms({"a": np.r_[np.zeros(98), 5.0, -5.0]}, bins=4, clip_quantile=0.5)["a"]
    assert h.outside == 2 and h.n == 100
    with pytest.raises(ValueError, match="clip_quantile"):
        shared_histograms({"a": np.ones(3)}, clip_quantile=0)


def test_figures_draw_each_layer_and_statistic(tmp_path):
    from figures.style import save_figure
    from figures.weights import plot_layer_stats, plot_weight_histograms

    weights = {k: dict(tiny_model(s).named_parameters()) for k, s in (("AT", 0), ("AT-AWP", 1))}
    rep = weight_report(weights, bins=10)
    fig = plot_weight_histograms(rep.histograms, comparisons=rep.comparisons, ncols=2)
    assert sum(ax.get_visible() for ax in fig.axes) == 3
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert legend == ["AT", "AT-AWP"]
    fig2 = plot_layer_stats(rep.stats, names=("norm", "skewness"))
    assert len(fig2.axes) == 2 and len(fig2.axes[0].lines) == 2
    paths = save_figure(fig, tmp_path / "h", formats=("png",))
    assert paths[0].stat().st_size > 0
    with pytest.raises(ValueError, match="no histogram"):
        plot_weight_histograms(rep.histograms, layers=["nope"])
    with pytest.raises(ValueError, match="unknown statistic"):
        plot_layer_stats(rep.stats, names=("height",))


def test_weight_kdes_are_densities_with_the_histograms_spread():
    from figures.weights import plot_weight_histograms

    rng = np.random.default_rng(0)
    edges = np.linspace(-4, 4, 81)
    records = []
    for label, sd in (("AT", 1.0), ("AT-AWP", 0.5)):
        density, _ = np.histogram(rng.normal(0, sd, 20_000), bins=edges, density=True)
        records.append({"label": label, "layer": "conv", "edges": edges, "density": density})
    for label, k in (("AT", 40), ("AT-AWP", 41)):  # one non-empty bin: no KDE, steps instead
        spike = np.eye(80)[k] * 10
        records.append({"label": label, "layer": "bias", "edges": edges, "density": spike})
    fig = plot_weight_histograms(records)
    conv, bias = fig.axes[:2]
    kdes = [line for line in conv.lines if line.get_label() in ("AT", "AT-AWP")]
    assert [k.get_label() for k in kdes] == ["AT", "AT-AWP"]
    for line, sd in zip(kdes, (1.0, 0.5)):
        x, y = line.get_xdata(), line.get_ydata()
        assert x.min() >= -4 and x.max() <= 4  # clipped to the bins
        assert np.trapezoid(y, x) == pytest.approx(1.0, abs=0.01)
        mean = np.trapezoid(x * y, x)
        assert math.sqrt(np.trapezoid((x - mean) ** 2 * y, x)) == pytest.approx(sd, rel=0.06)
    assert [t.get_text() for t in bias.get_legend().get_texts()] == ["AT", "AT-AWP"]
