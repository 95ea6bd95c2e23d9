"""PAC-Bayes terms against values worked out by hand in the comments."""

import math

import pytest
import torch

from analysis.pacbayes import (
    PacBayesConfig,
    complexity_term,
    kl_gaussian,
    pac_bayes_bound,
    rebuttal_complexity,
)


def _params():
    # ||a||^2 = 9 + 16 = 25, ||b||^2 = 144, ||w||^2 = 169, ||w|| = 13.
    return {
        "a.weight": torch.tensor([[3.0, 4.0]], dtype=torch.float64),
        "b.weight": torch.tensor([[12.0]], dtype=torch.float64),
    }


def test_kl_global_is_one_over_two_alpha_squared():
    # sigma = 0.1 * 13 = 1.3; KL = 169 / (2 * 1.69) = 50 = 1 / (2 * 0.1^2).
    assert kl_gaussian(_params(), alpha=0.1, mode="global") == pytest.approx(50.0, rel=1e-12)
    # alpha = 0.5: sigma = 6.5; 169 / (2 * 42.25) = 2.
    assert kl_gaussian(_params(), alpha=0.5, mode="global") == pytest.approx(2.0, rel=1e-12)


def test_kl_layer_is_d_over_two_alpha_squared():
    # a: d = 2, sigma^2 = (0.1 * 5)^2 / 2 = 0.125, KL = 25 / 0.25 = 100.
    # b: d = 1, sigma^2 = (0.1 * 12)^2 = 1.44, KL = 144 / 2.88 = 50.  Total 150 = 3 / 0.02.
    assert kl_gaussian(_params(), alpha=0.1, mode="layer") == pytest.approx(150.0, rel=1e-12)


def test_kl_element_and_filter_skip_zero_weights():
    # element: each nonzero weight gives w^2 / (2 alpha^2 w^2) = 1 / (2 * 0.01) = 50; zeros give 0.
    p = {"w": torch.tensor([[3.0, 0.0, -2.0]], dtype=torch.float64)}
    assert kl_gaussian(p, alpha=0.1, mode="element") == pytest.approx(100.0, rel=1e-12)
    # filter: filter 0 = [3, 4] (norm 5, d_f = 2): sigma^2 = 0.125, KL = 25 / 0.25 = 100;
    # filter 1 = [0, 0] has sigma = 0 and no weight: nothing.
    conv = {"c": torch.tensor([[[3.0, 4.0]], [[0.0, 0.0]]], dtype=torch.float64)}
    assert kl_gaussian(conv, alpha=0.1, mode="filter") == pytest.approx(100.0, rel=1e-12)
    assert kl_gaussian(conv, alpha=0.0, mode="filter") == math.inf


def test_rebuttal_constant_exactly_as_written():
    # 4 sqrt((1/n)(1/(2 alpha) + ln(2n/delta))), n = 50000, delta = 0.05, alpha = 0.01:
    # 1/(2 alpha) = 50, ln(2e6) = 14.508658, (64.508658 / 50000) = 0.00129017,
    # sqrt = 0.0359190, times 4 = 0.1436759.
    assert rebuttal_complexity(0.01, n=50000, delta=0.05) == pytest.approx(0.1436759, abs=1e-6)
    # With the exact global KL, 1/(2 alpha^2) = 5000: (5014.508658 / 50000) = 0.10029017,
    # sqrt = 0.3166862, times 4 = 1.2667449.
    assert complexity_term(5000.0, n=50000, delta=0.05) == pytest.approx(1.2667449, abs=1e-6)
    with pytest.raises(ValueError):
        complexity_term(1.0, n=0, delta=0.05)


def test_full_bound_and_vacuity():
    # Global mode with ||w|| arbitrary: KL = 1/(2 * 0.01^2) = 5000 exactly as above.
    b = pac_bayes_bound(
        _params(), alpha=0.01, mode="global", n=50000, delta=0.05, base_error=0.4, flatness=0.05
    )
    assert b.kl == pytest.approx(5000.0, rel=1e-10) and b.kl_rebuttal == pytest.approx(50.0)
    assert b.bound_rebuttal == pytest.approx(0.4 + 0.05 + 0.1436759, abs=1e-6)
    assert b.bound_exact == pytest.approx(0.4 + 0.05 + 1.2667449, abs=1e-6)
    assert not b.vacuous_rebuttal and b.vacuous_exact
    assert b.d == 3 and b.noise == "global"
    zero = pac_bayes_bound(
        _params(), alpha=0.0, mode="layer", n=10, delta=0.1, base_error=0.0, flatness=0.0
    )
    assert zero.kl == math.inf and zero.bound_exact == math.inf and zero.vacuous_exact


def test_config_validation():
    assert PacBayesConfig().delta == 0.05
    with pytest.raises(ValueError, match="delta"):
        PacBayesConfig(delta=1.5)
    with pytest.raises(ValueError, match="n_bound"):
        PacBayesConfig(n_bound=-1)
