"""Randomized smoothing against an analytic oracle, Clopper-Pearson against scipy, the noise's
seeds, summaries, and Gaussian data augmentation in training."""

import math

import pytest
import torch
from scipy import stats as sps
from torch import nn

from analysis.certify import (
    ABSTAIN,
    NOISE_CHUNK,
    certify,
    certify_from_counts,
    noise_accuracy,
    noise_batches,
    predict,
    predict_from_counts,
    sample_counts,
)
from analysis.certify_units import (
    CertifyConfig,
    accuracy_curve,
    certified_accuracy,
    summary_rows,
)
from analysis.stats import binomial_pvalue, clopper_pearson_lower
from tests.helpers import tiny_model


class LinearBinary(nn.Module):
    """f(x) = sign(w.x + b) as two logits (0, w.x + b): class 1 where w.x + b > 0."""

    def __init__(self, w: torch.Tensor, b: float) -> None:
        super().__init__()
        self.w, self.b = w, b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x @ self.w + self.b  # (B,)
        return torch.stack([torch.zeros_like(s), s], 1)


W = torch.tensor([0.6, -0.3, 0.2, 0.5, -0.4, 0.1], dtype=torch.float64)


def point_at(margin: float) -> torch.Tensor:
    """A point x with w.x + b = margin * ||w|| (b = 0.1): true L2 radius |margin|."""
    base = torch.full((6,), 0.5, dtype=torch.float64)
    s0 = float(base @ W) + 0.1
    return base + (margin * W.norm() - s0) * W / W.norm() ** 2


def oracle(x: torch.Tensor, sigma: float) -> tuple[float, float]:
    """(pA, true radius) of the smoothed linear classifier at x."""
    s = abs(float(x @ W) + 0.1)
    return float(sps.norm.cdf(s / (sigma * float(W.norm())))), s / float(W.norm())


MODEL = LinearBinary(W, 0.1)


# ------------------------------------------------------------------ Clopper-Pearson, tests
@pytest.mark.parametrize(
    "k,n,alpha",
    [(0, 10, 0.05), (1, 10, 0.05), (7, 10, 0.001), (10, 10, 0.001), (9990, 10**4, 1e-3)],
)
def test_one_sided_clopper_pearson_is_scipys_exact_interval(k, n, alpha):
    low = clopper_pearson_lower(k, n, alpha)
    # the lower end of scipy's exact two-sided interval at confidence 1 - 2 alpha
    ref = sps.binomtest(k, n).proportion_ci(confidence_level=1 - 2 * alpha, method="exact").low
    assert low == pytest.approx(ref, rel=1e-10, abs=1e-15)
    if k:  # and it solves the tail equation P(Binom(n, low) >= k) = alpha
        assert sps.binom.sf(k - 1, n, low) == pytest.approx(alpha, rel=1e-6)
    with pytest.raises(ValueError):
        clopper_pearson_lower(k, n, 0.0)


def test_binomial_pvalue_is_the_two_sided_tail_sum():
    for k, n in [(7, 10), (50, 100), (60, 100), (100, 100), (0, 5)]:
        # p = 1/2 is symmetric: twice the smaller tail, capped at 1
        tail = sum(math.comb(n, i) for i in range(0, min(k, n - k) + 1)) / 2**n
        assert binomial_pvalue(k, n) == pytest.approx(min(1.0, 2 * tail), rel=1e-9)


# ------------------------------------------------------------------ the analytic oracle
def test_counts_follow_the_gaussian_probability():
    sigma, n = 0.5, 40_000
    for margin in (0.1, 0.5, -0.3):
        x = point_at(margin)
        p_a, _ = oracle(x, sigma)
        counts = sample_counts(MODEL, x, sigma=sigma, num=n, seed=3, batch_size=4096)
        top = 1 if margin > 0 else 0
        # 5 standard deviations of a binomial proportion: fails with probability ~6e-7
        assert abs(counts[top] / n - p_a) < 5 * math.sqrt(p_a * (1 - p_a) / n)
        assert int(counts.sum()) == n


def test_certified_radius_is_below_the_true_one_with_probability_one_minus_alpha():
    sigma, alpha, trials = 0.4, 0.05, 200
    bad = total = 0
    for ratio in (0.5, 1.0, 2.0):  # R / sigma: pA = Phi(ratio)
        x = point_at(ratio * sigma)
        _, true_r = oracle(x, sigma)
        for seed in range(trials):
            cert, _, _ = certify(MODEL, x, sigma=sigma, n0=20, n=200, alpha=alpha, seed=seed)
            bad += cert.radius > true_r + 1e-12
            total += 1
    # Each certificate is wrong with probability <= alpha; the 99.99% quantile of the count:
    assert bad <= sps.binom.ppf(0.9999, total, alpha)


def test_certified_radius_approaches_the_true_radius_as_n_grows():
    sigma, alpha = 0.5, 0.001
    x = point_at(0.5)  # R = 0.5 = sigma: pA = Phi(1)
    p_a, true_r = oracle(x, sigma)
    gaps = []
    for n in (10**3, 10**4, 10**5, 10**6):
        cert, _, _ = certify(MODEL, x, sigma=sigma, n=n, alpha=alpha, seed=1, batch_size=20_000)
        gap = true_r - cert.radius
        # pA_lower ~ pA - z_{1-alpha} sqrt(pA (1 - pA) / n), and d radius / d pA = sigma / phi:
        expected = sigma * sps.norm.ppf(1 - alpha) * math.sqrt(p_a * (1 - p_a) / n)
        expected /= sps.norm.pdf(sps.norm.ppf(p_a))
        assert 0 < gap < 3 * expected, (n, gap, expected)
        assert cert.prediction == 1
        gaps.append(gap)
    assert gaps == sorted(gaps, reverse=True) and gaps[-1] < 0.005


def test_a_tie_between_the_top_two_classes_abstains():
    assert predict_from_counts([40, 40, 20], alpha=0.05) == ABSTAIN
    assert predict_from_counts([60, 20, 20], alpha=0.05) == 0
    tie = certify_from_counts([5, 5], [50, 50], sigma=0.25, alpha=0.001)
    assert tie.abstained and tie.radius == 0.0 and tie.p_lower < 0.5
    assert tie.selected == 0  # argmax picks the lowest class on a tie, as Cohen et al.'s
    # on the decision boundary pA = 1/2 exactly: CERTIFY and PREDICT abstain (each fails with
    # probability <= alpha = 0.001; these seeds are fixed)
    x = point_at(0.0)
    for seed in range(10):
        cert, _, _ = certify(MODEL, x, sigma=0.25, n0=50, n=2000, seed=seed)
        assert cert.abstained
        assert predict(MODEL, x, sigma=0.25, n=2000, seed=seed)[0] == ABSTAIN


def test_noise_accuracy_curve_matches_the_gaussian_probability():
    points = [point_at(m) for m in (0.05, 0.2, -0.1, 0.6)]
    x = torch.stack(points)
    y = torch.tensor([1, 1, 0, 1])
    levels = (0.0, 0.1, 0.5)
    rows = noise_accuracy(MODEL, x, y, levels=levels, draws=4000, seed=0)
    assert rows[0].accuracy == 1.0  # no noise: the classifier is right on every point
    for row in rows[1:]:
        expected = sum(oracle(p, row.level)[0] for p in points) / len(points)
        # 4 x 4000 draws: sd of the mean <= 0.5 / sqrt(16000) = 0.004
        assert row.accuracy == pytest.approx(expected, abs=0.02)
        assert row.n == 4 and row.draws == 4000 and row.low <= row.accuracy <= row.high


# ------------------------------------------------------------------ seeds
def test_noise_does_not_depend_on_the_batch_size_workers_or_n():
    shape = (3, 4, 4)
    whole = torch.cat(list(noise_batches(shape, 250, seed=7, batch_size=250)))
    assert whole.shape == (250, *shape)
    for b in (1, 33, NOISE_CHUNK, 101, 1000):
        for workers in (0, 2):
            parts = list(noise_batches(shape, 250, seed=7, batch_size=b, workers=workers))
            assert all(len(p) == b for p in parts[:-1])
            assert torch.equal(torch.cat(parts), whole)
    # the first m samples of a longer run are a shorter run's samples
    assert torch.equal(
        torch.cat(list(noise_batches(shape, 130, seed=7, batch_size=64))), whole[:130]
    )
    other = torch.cat(list(noise_batches(shape, 250, seed=8, batch_size=250)))
    assert not torch.equal(other, whole)
    assert abs(float(whole.mean())) < 0.05 and float(whole.std()) == pytest.approx(1, abs=0.05)


def test_counts_are_the_same_for_any_batch_size():
    model = tiny_model(dtype=torch.float64).eval()  # float64: no near-ties flip an argmax
    x = torch.rand(3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ref = sample_counts(model, x, sigma=0.5, num=333, seed=11, batch_size=333)
    for b in (1, 50, 100, 128):
        assert torch.equal(sample_counts(model, x, sigma=0.5, num=333, seed=11, batch_size=b), ref)
    assert torch.equal(sample_counts(model, x, sigma=0.5, num=333, seed=11, workers=2), ref)
    assert int(ref.sum()) == 333 and len(ref) == 3
    assert not model.training  # the mode is restored (eval during the passes)
    model.train()
    sample_counts(model, x, sigma=0.5, num=10, seed=0)
    assert model.training


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_counts_are_the_same_on_cuda():
    model = tiny_model(dtype=torch.float64).eval()
    x = torch.rand(3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    cpu = sample_counts(model, x, sigma=0.5, num=1000, seed=11)
    gpu = sample_counts(model.cuda(), x.cuda(), sigma=0.5, num=1000, seed=11, workers=2)
    assert torch.equal(cpu, gpu)


# ------------------------------------------------------------------ summaries, config
def test_certified_accuracy_and_summary_by_hand():
    rows = [
        {"sigma": 0.25, "radius": 0.3, "correct": True, "prediction": 1, "abstained": False,
         "label": 1, "counts": [10, 90], "n": 100},
        {"sigma": 0.25, "radius": 0.1, "correct": True, "prediction": 0, "abstained": False,
         "label": 0, "counts": [70, 30], "n": 100},
        {"sigma": 0.25, "radius": 0.5, "correct": False, "prediction": 1, "abstained": False,
         "label": 0, "counts": [20, 80], "n": 100},
        {"sigma": 0.25, "radius": 0.0, "correct": False, "prediction": -1, "abstained": True,
         "label": 1, "counts": [50, 50], "n": 100},
    ]  # fmt: skip
    assert certified_accuracy(rows, [0.0, 0.1, 0.2, 0.3, 0.31]) == [0.5, 0.5, 0.25, 0.25, 0.0]
    assert accuracy_curve(rows) == [(0.0, 0.5), (0.1, 0.5), (0.3, 0.25)]
    cfg = CertifyConfig(sigmas=(0.25,), n=100, radii=(0.0, 0.2))
    (s,) = summary_rows(rows, cfg)
    assert s["accuracy"] == 0.5 and s["abstained"] == 0.25
    assert s["acr"] == pytest.approx((0.3 + 0.1) / 4)  # wrong and abstained count as 0
    assert s["noise_acc"] == pytest.approx((0.9 + 0.7 + 0.2 + 0.5) / 4)
    assert (s["acc@0"], s["acc@0.2"]) == (0.5, 0.25)
    assert s["max_radius"] == pytest.approx(0.25 * sps.norm.ppf(0.001 ** (1 / 100)))


def test_config_refuses_nonsense():
    with pytest.raises(ValueError, match="25/255"):
        CertifyConfig(sigmas=(25,))
    with pytest.raises(ValueError, match="> 0"):
        CertifyConfig(sigmas=(0.0,))
    with pytest.raises(ValueError, match="n >= 10"):
        CertifyConfig(n=5)
    with pytest.raises(ValueError, match="alpha"):
        CertifyConfig(alpha=0.5)
    with pytest.raises(ValueError, match="repeats"):
        CertifyConfig(sigmas=(0.25, 0.25))
    assert CertifyConfig(n=10).n == 10  # 0.001^(1/10) = 0.501: the smallest n that can certify


# ------------------------------------------------------------------ training with noise
def test_zero_noise_is_no_noise_and_the_objective_sees_x_plus_noise():
    from awp.config import PGD10_TRAIN, AWPConfig
    from awp.objectives import at_objective
    from awp.train import train_step
    from tests.helpers import tiny_batch

    x, y = tiny_batch(dtype=torch.float64)
    states = []
    for noise in (None, torch.zeros_like(x)):
        model = tiny_model(dtype=torch.float64)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        g = torch.Generator().manual_seed(0)
        kw = dict(attack=PGD10_TRAIN, objective=at_objective, awp=AWPConfig(gamma=0.01))
        train_step(model, opt, x, y, generator=g, noise=noise, **kw)
        states.append(model.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])

    seen = []

    def objective(model, x_nat, x_adv, y):
        seen.append((x_nat.clone(), x_adv.clone()))
        return at_objective(model, x_nat, x_adv, y)

    model = tiny_model(dtype=torch.float64)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    noise = 0.25 * torch.randn(x.shape, dtype=torch.float64)
    no_attack = PGD10_TRAIN.updated(eps=0.0)  # --eps 0: the attack returns x itself
    train_step(model, opt, x, y, attack=no_attack, objective=objective, noise=noise)
    ((x_nat, x_adv),) = seen
    assert torch.equal(x_nat, x + noise) and torch.equal(x_adv, x + noise)


def test_a_zero_radius_attack_returns_x_without_a_forward_pass():
    from awp.attacks import pgd

    class Refuses(nn.Module):
        def forward(self, x):
            raise AssertionError("no pass needed")

    x = torch.rand(2, 3, 4, 4)
    g = torch.Generator().manual_seed(0)
    out = pgd(Refuses(), x, torch.zeros(2, dtype=torch.long), eps=0.0, step_size=0.01, steps=5,
              generator=g)  # fmt: skip
    assert torch.equal(out, x) and torch.equal(
        g.get_state(), torch.Generator().manual_seed(0).get_state()
    )


def test_method_labels_name_gaussian_augmentation():
    from awp.config import method_of

    assert method_of({"method": "at", "awp": True, "eps": 8 / 255}) == "AT-AWP"
    assert method_of({"method": "at", "awp": False, "eps": 0.0, "noise_sd": 0.25}) == "Gaussian"
    assert method_of({"method": "at", "awp": True, "eps": 0.0, "noise_sd": 0.25}) == "Gaussian-AWP"
    assert method_of({"method": "at", "awp": True, "eps": 8 / 255, "noise_sd": 0.1}) == (
        "AT-AWP+Gaussian"
    )
    assert method_of({"method": "at", "noise_sd": 0.0, "eps": 0.0}) == "AT"  # as before


def test_outcome_statements_follow_the_paired_numbers():
    from analysis.outcome import certification_statements

    def tables(awp_radius: float, awp_correct: int) -> dict:
        ex, noise = [], []
        for model, radius, right in (("AT", 0.2, 2), ("AT-AWP", awp_radius, awp_correct)):
            for i in range(8):
                r = radius + 0.01 * i  # the same images: a paired difference of exactly 0.05
                ex.append({"model": model, "sigma": 0.25, "index": i, "radius": r,
                           "correct": True, "label": 1})  # fmt: skip
                noise.append({"model": model, "index": i, "levels": [0.0, 0.25], "draws": 4,
                              "correct": [4, min(4, right + i % 2)]})  # fmt: skip
        summary = [{"label": "AT", "n0": 10, "n": 100, "alpha": 0.001, "examples": 8}]
        return {"examples": ex, "noise_examples": noise, "summary": summary}

    said = " ".join(certification_statements(tables(0.25, 3)))
    assert "sigma 0.25: AT 0.235, AT-AWP 0.285, difference +0.050" in said
    assert "AT-AWP larger" in said and "s = 0.25 (AT-AWP higher)" in said
    said = " ".join(certification_statements(tables(0.15, 1)))
    assert "AT-AWP SMALLER" in said and "s = 0.25 (AT-AWP LOWER)" in said
    said = " ".join(certification_statements(tables(0.2, 2)))  # identical: nothing resolved
    assert "not resolved" in said and "Resolved (interval excludes 0) at no level" in said


def test_the_default_batch_follows_the_device_and_an_explicit_one_is_kept():
    from analysis.certify_units import CertifyConfig

    assert CertifyConfig().batch(torch.device("cpu")) == 100
    assert CertifyConfig().batch(torch.device("cuda", 0)) == 1000
    assert CertifyConfig(batch_size=128).batch(torch.device("cpu")) == 128
    with pytest.raises(ValueError, match=r"batch_size=-1 is outside \[0, "):
        CertifyConfig(batch_size=-1)
