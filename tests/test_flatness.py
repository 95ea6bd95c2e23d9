"""Flatness: noise scales, alpha = 0, Clopper-Pearson coverage, worst case vs expected, AWP oracle,
sigma search, seeds independent of order and rank (a 2-process gloo run)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats as sps

from analysis import flatness as flat
from analysis import worst_case as wc
from analysis.flatness import FlatnessConfig
from analysis.flatness_units import compute_unit, flatness_keys, summarize
from analysis.noise import draw_noise, noise_scales
from analysis.sigma import SigmaSearchConfig, bisect_alpha
from analysis.stats import clopper_pearson
from analysis.store import run_units
from analysis.worst_case import WorstCaseConfig, worst_case_perturbation
from awp import seeds
from awp.attacks import run_attack
from awp.config import AttackConfig
from awp.modes import model_mode
from awp.objectives import at_objective
from awp.perturb import select_params, weight_ascent
from awp.train import train_step
from tests.helpers import assert_same_state, snapshot, synthetic_images, tiny_batch, tiny_model

ATTACK = AttackConfig(steps=2, step_size=4 / 255, eps=8 / 255)


@pytest.fixture(autouse=True)
def _one_thread():
    # Two cores shared by several jobs: one intra-op thread is 10-50x faster for tiny models.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def trained():
    """TinyNet adversarially trained for 24 steps on learnable 8x8 images (~0.3 s)."""
    torch.set_num_threads(1)
    x, y = synthetic_images(320, 3, 8, 0)
    x = x.float() / 255
    model = tiny_model(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    attack = AttackConfig(steps=2, step_size=8 / 255, eps=16 / 255)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        perm = torch.randperm(256, generator=g)
        for i in range(0, 256, 32):
            idx = perm[i : i + 32]
            train_step(
                model, opt, x[idx], y[idx], attack=attack, objective=at_objective, generator=g
            )
    model.eval()
    return model, x[256:], y[256:]


# --------------------------------------------------------------------------- noise scales
def _params():
    g = torch.Generator().manual_seed(0)
    return {
        "conv.weight": torch.randn(64, 32, 3, 3, generator=g, dtype=torch.float64),
        "fc.weight": 3 * torch.randn(100, 50, generator=g, dtype=torch.float64),
        "bn.weight": 1 + 0.1 * torch.randn(64, generator=g, dtype=torch.float64),
    }


def _u(params, alpha, mode, seed=0):
    scales = noise_scales(params, alpha=alpha, mode=mode)
    return draw_noise(params, scales, generator=torch.Generator().manual_seed(seed))


def test_layer_noise_has_norm_alpha_times_layer_norm():
    params, alpha = _params(), 0.05
    u = _u(params, alpha, "layer")
    for n, w in params.items():
        # ||u_l||^2 / sigma_l^2 is chi-square with d_l dof: relative sd 1/sqrt(2 d_l) <= 9%.
        tol = 4 / math.sqrt(2 * w.numel())
        assert float(u[n].norm()) == pytest.approx(alpha * float(w.norm()), rel=tol), n


def test_global_noise_is_the_rebuttals_sigma_alpha_times_total_norm():
    params, alpha = _params(), 1e-3
    total = math.sqrt(sum(float(w.pow(2).sum()) for w in params.values()))
    scales = noise_scales(params, alpha=alpha, mode="global")
    assert all(float(s) == pytest.approx(alpha * total, rel=1e-12) for s in scales.values())
    u = torch.cat([t.ravel() for t in _u(params, alpha, "global").values()])
    assert float(u.std()) == pytest.approx(alpha * total, rel=0.02)  # ~23k draws


def test_filter_noise_scale_by_hand_loop_and_norms():
    params, alpha = _params(), 0.1
    scales = noise_scales(params, alpha=alpha, mode="filter")
    w = params["conv.weight"]
    for f in range(w.shape[0]):  # the reference: one filter at a time
        expected = alpha * float(w[f].norm()) / math.sqrt(w[f].numel())
        assert float(scales["conv.weight"][f].squeeze()) == pytest.approx(expected, rel=1e-12)
    assert torch.allclose(scales["bn.weight"], alpha * params["bn.weight"].abs())
    u = _u(params, alpha, "filter")["conv.weight"]
    ratios = u.flatten(1).norm(dim=1) / (alpha * w.flatten(1).norm(dim=1))
    assert float(ratios.mean()) == pytest.approx(1.0, rel=0.02)


def test_element_noise_is_relative_to_each_weight_and_zero_on_zero_weights():
    params, alpha = _params(), 0.2
    params["fc.weight"][0, :10] = 0
    u = _u(params, alpha, "element")
    z = (u["conv.weight"] / (alpha * params["conv.weight"].abs())).ravel()
    assert float(z.std()) == pytest.approx(1.0, rel=0.02) and abs(float(z.mean())) < 0.02
    assert torch.equal(u["fc.weight"][0, :10], torch.zeros(10, dtype=torch.float64))


def test_noise_depends_only_on_the_seed_and_is_common_across_alphas():
    params = _params()
    a, b = _u(params, 0.1, "layer", seed=3), _u(params, 0.1, "layer", seed=3)
    assert all(torch.equal(a[n], b[n]) for n in a)
    c = _u(params, 0.2, "layer", seed=3)  # u = sigma(alpha) z with the same z
    assert all(torch.allclose(c[n], 2 * a[n]) for n in a)
    assert (
        seeds.derive_seed(0, "noise", 1)
        == seeds.derive_seed(0, "noise", 1)
        != seeds.derive_seed(0, "noise", 2)
    )
    with pytest.raises(ValueError, match="noise mode"):
        noise_scales(params, alpha=0.1, mode="spherical")


# --------------------------------------------------------------------------- alpha = 0
@pytest.mark.parametrize("per_example", [False, True])
def test_flatness_at_alpha_zero_is_exactly_zero_and_the_model_is_untouched(per_example):
    model = tiny_model(1)
    model.train()  # the caller's mode must survive
    x, y = tiny_batch(12, seed=1)
    snap = snapshot(model)
    cfg = FlatnessConfig(
        alphas=(0.5,),
        samples=2,
        n_examples=0,
        attack=ATTACK,
        batch_size=5,
        per_example=per_example,
    )
    worst = WorstCaseConfig(gammas=(0.01,), ascent_steps=2)
    records = run_units(flatness_keys(cfg, worst), lambda k: compute_unit(model, x, y, k, cfg=cfg))
    expected, _ = summarize(records, cfg=cfg, worst=worst)
    # alpha = 0 and gamma = 0 mean nothing as settings (the configs refuse them), but a unit
    # computed there must reproduce rho(w) exactly: the same attack seeds as the baseline.
    draws = [flat.expected_unit(model, x, y, cfg=cfg, alpha=0.0, k=k) for k in range(2)]
    zero = flat.summarize_expected(records["base"], draws, alpha=0.0, noise=cfg.noise)
    assert zero.flatness == 0.0 and zero.flatness_loss == 0.0 and zero.noise_ratio == 0.0
    still = wc.worst_unit(model, x, y, cfg=cfg, worst=worst, gamma=0.0, restart=0)
    zero_worst = wc.summarize_worst(records["base"], [still], gamma=0.0, per_batch=False)
    assert zero_worst.flatness == 0.0 and zero_worst.flatness_loss == 0.0
    with pytest.raises(ValueError, match="alpha = 0 is no noise"):
        FlatnessConfig(alphas=(0.0, 0.1))
    with pytest.raises(ValueError, match="gamma = 0 is no perturbation"):
        WorstCaseConfig(gammas=(0.0,))
    expected = [zero, *expected]
    assert expected[1].noise_ratio == pytest.approx(0.5, rel=0.3)
    assert expected[1].flatness_loss != 0.0  # the noise did reach the model
    assert_same_state(model, snap)
    assert model.training and all(m.training for m in model.modules())
    assert all(p.grad is None for p in model.parameters())


# --------------------------------------------------------------------------- Clopper-Pearson
def test_clopper_pearson_endpoints_solve_the_binomial_tail_equations():
    n, k, c = 40, 13, 0.9
    lo, hi = clopper_pearson(k, n, c)
    assert sps.binom.sf(k - 1, n, lo) == pytest.approx((1 - c) / 2, rel=1e-8)  # P(X >= k)
    assert sps.binom.cdf(k, n, hi) == pytest.approx((1 - c) / 2, rel=1e-8)  # P(X <= k)
    assert clopper_pearson(0, n)[0] == 0.0 and clopper_pearson(n, n)[1] == 1.0
    with pytest.raises(ValueError):
        clopper_pearson(5, 3)


@pytest.mark.parametrize("p", [0.03, 0.3, 0.5])
def test_clopper_pearson_covers_a_simulated_bernoulli(p):
    rng = np.random.default_rng(int(p * 100))
    n, reps, c = 50, 2000, 0.95
    outcomes = rng.random((reps, n)) < p  # i.i.d. Bernoulli(p) 0-1 outcomes
    covered = 0
    for row in outcomes:
        lo, hi = clopper_pearson(int(row.sum()), n, c)
        covered += lo <= p <= hi
    # Exact intervals are conservative: coverage >= 95% (minus 3 MC standard errors).
    assert covered / reps >= c - 3 * math.sqrt(c * (1 - c) / reps)
    # The exact coverage, summed over the binomial distribution, is >= 95% too.
    exact = sum(
        sps.binom.pmf(k, n, p)
        for k in range(n + 1)
        if clopper_pearson(k, n, c)[0] <= p and p <= clopper_pearson(k, n, c)[1]
    )
    assert exact >= c


def test_per_example_summary_pools_all_trials_for_the_interval():
    base = {"errors": 3, "loss_sum": 3.0, "n": 10}
    samples = [
        {"errors": 4, "loss_sum": 4.0, "n": 10, "noise_ratio": 0.1},
        {"errors": 6, "loss_sum": 5.0, "n": 10, "noise_ratio": 0.1},
    ]
    est = flat.summarize_expected(base, samples, alpha=0.1, noise="layer", per_example=True)
    assert est.ci_method == "clopper-pearson"
    assert (est.ci_low, est.ci_high) == clopper_pearson(10, 20, 0.95)
    assert est.flatness == pytest.approx(0.5 - 0.3)
    assert est.flatness_low == pytest.approx(est.ci_low - 0.3)
    # Two draws: no t interval (one degree of freedom), said in the note, never [x, x].
    t = flat.summarize_expected(base, samples, alpha=0.1, noise="layer")
    assert t.ci_method == "t" and math.isnan(t.ci_low) and math.isnan(t.flatness_high)
    assert t.ci_note == "undefined (n=2 < 3 noise draws)"
    three = [*samples, {"errors": 5, "loss_sum": 4.0, "n": 10, "noise_ratio": 0.1}]
    t = flat.summarize_expected(base, three, alpha=0.1, noise="layer")
    half = sps.t.ppf(0.975, 2) * np.std([0.4, 0.6, 0.5], ddof=1) / math.sqrt(3)
    assert t.ci_high == pytest.approx(0.5 + half) and t.ci_note == ""
    same = [{**samples[0]} for _ in range(4)]  # every draw the same error: width 0 refused
    t = flat.summarize_expected(base, same, alpha=0.1, noise="layer")
    assert math.isnan(t.ci_low) and "all 4 noise draws give the same error" in t.ci_note


# --------------------------------------------------------------------------- worst case
def test_one_ascent_step_from_zero_is_the_awp_direction():
    model = tiny_model(2, dtype=torch.float64)
    x, y = tiny_batch(16, seed=2, dtype=torch.float64)
    params = select_params(model)
    gamma = 0.02
    v = worst_case_perturbation(
        model,
        [(x, y)],
        params,
        gamma=gamma,
        steps=1,
        step_fraction=1.0,
        attack=ATTACK,
        seed_parts=(7,),
    )
    # Oracle: the same attack, then awp.perturb's v_l = gamma ||w_l|| g_l / ||g_l||, eval mode.
    x_adv = run_attack(model, x, y, ATTACK, generator=seeds.generator_for(7, "step", 0))
    with model_mode(model, "eval"):
        ref = weight_ascent(lambda: F.cross_entropy(model(x_adv), y), params, gamma=gamma)
    for n in ref:
        assert torch.allclose(v[n], ref[n], rtol=1e-9, atol=1e-15), n


def test_projected_ascent_stays_in_the_ball_and_raises_the_robust_loss(trained):
    model, x, y = trained
    params = select_params(model)
    snap = snapshot(model)
    gamma = 0.05
    v = worst_case_perturbation(
        model,
        [(x[:32], y[:32]), (x[32:], y[32:])],
        params,
        gamma=gamma,
        steps=4,
        step_fraction=0.5,
        attack=ATTACK,
    )
    for n, p in params.items():
        assert float(v[n].norm()) <= gamma * float(p.detach().norm()) * (1 + 1e-6)
    assert_same_state(model, snap)
    cfg = FlatnessConfig(alphas=(gamma,), samples=1, n_examples=0, attack=ATTACK)
    worst = WorstCaseConfig(gammas=(gamma,), ascent_steps=4)
    base = compute_unit(model, x, y, "base", cfg=cfg)
    w = compute_unit(model, x, y, wc.worst_key(gamma, 0, worst), cfg=cfg)
    assert sum(w["batch_loss_sums"]) > base["loss_sum"]


def test_worst_case_flatness_is_at_least_the_expected_one_on_a_trained_model(trained):
    model, x, y = trained
    attack = AttackConfig(steps=3, step_size=8 / 255, eps=24 / 255)
    cfg = FlatnessConfig(alphas=(0.1,), samples=4, n_examples=0, attack=attack, batch_size=64)
    for per_batch in (False, True):
        worst = WorstCaseConfig(
            gammas=(0.1,), ascent_steps=3, ascent_restarts=2, per_batch=per_batch
        )
        records = run_units(
            flatness_keys(cfg, worst),
            lambda k: compute_unit(model, x, y, k, cfg=cfg),
        )
        (expected,), (w,) = summarize(records, cfg=cfg, worst=worst)
        assert w.worst_error >= expected.mean_error
        assert w.flatness >= expected.flatness and w.flatness_loss > expected.flatness_loss
        assert w.flatness > 0  # the ascent finds directions random noise misses
        assert w.v_ratio <= 0.1 + 1e-6


def test_worst_summary_keeps_the_worst_restart_per_batch():
    base = {"errors": 2, "loss_sum": 2.0, "n": 8}
    r0 = {"batch_errors": [3, 0], "batch_loss_sums": [3.0, 1.0], "batch_n": [4, 4], "v_ratio": 0.1}
    r1 = {"batch_errors": [1, 2], "batch_loss_sums": [2.0, 1.5], "batch_n": [4, 4], "v_ratio": 0.1}
    # Shared v: both restarts misclassify 3 of 8; r0 wins on the loss (4.0 > 3.5).
    shared = wc.summarize_worst(base, [r0, r1], gamma=0.1, per_batch=False)
    assert shared.worst_error == 3 / 8 and shared.worst_loss == 4.0 / 8
    # One v per batch: batch 0 from r0 (3 errors), batch 1 from r1 (2 errors).
    per = wc.summarize_worst(base, [r0, r1], gamma=0.1, per_batch=True)
    assert per.worst_error == 5 / 8 and per.worst_loss == (3.0 + 1.5) / 8
    assert per.flatness == pytest.approx(5 / 8 - 2 / 8)


# --------------------------------------------------------------------------- sigma search
def _reference_bisection(f, target, lo, hi, depth, tol):
    for _ in range(depth):
        mid = (lo + hi) / 2
        d = f(mid)
        if abs(d - target) <= tol:
            return mid
        lo, hi = (mid, hi) if d <= target else (lo, mid)
    return lo


def test_sigma_search_bisects_to_the_target():
    def drop(a):
        return a**2

    r = bisect_alpha(drop, target=0.25, low=0.0, high=2.0, depth=30, tolerance=1e-6)
    assert r.converged and r.alpha == pytest.approx(0.5, rel=1e-5)
    assert r.alpha == _reference_bisection(drop, 0.25, 0.0, 2.0, 30, 1e-6)
    assert r.history[0] == (2.0, 4.0) and r.history[1] == (1.0, 1.0)
    short = bisect_alpha(drop, target=0.3, low=0.0, high=1.0, depth=3, tolerance=0.0)
    assert not short.converged and short.alpha == _reference_bisection(drop, 0.3, 0, 1, 3, 0)
    assert short.drop <= 0.3
    wide = bisect_alpha(drop, target=0.5, low=0.0, high=0.5, depth=5, tolerance=0.01)
    assert not wide.converged and wide.alpha == 0.5  # the bracket never reaches the target
    with pytest.raises(ValueError, match="alpha_low"):
        bisect_alpha(drop, target=0.01, low=0.5, high=1.0, depth=5, tolerance=0.0)
    with pytest.raises(ValueError):
        SigmaSearchConfig(alpha_low=1.0, alpha_high=0.5)


def test_sigma_search_on_a_model_finds_a_drop_near_the_target(trained):
    model, x, y = trained
    cfg = FlatnessConfig(samples=2, n_examples=0, attack=ATTACK, batch_size=64, noise="layer")

    def drop(alpha):
        keys = flatness_keys(cfg, alphas=[alpha])
        recs = run_units(keys, lambda k: compute_unit(model, x, y, k, cfg=cfg))
        return summarize(recs, cfg=cfg, alphas=[alpha])[0][0].flatness

    r = bisect_alpha(drop, target=0.1, low=0.0, high=3.0, depth=6, tolerance=0.05)
    assert r.history[0][0] == 3.0 and r.history[0][1] > 0.1  # the bracket holds the target
    assert 0 < r.alpha < 3.0 and r.drop <= 0.1 + 0.05
    assert r.converged == (abs(r.drop - 0.1) <= 0.05)


# --------------------------------------------------------------------------- configs, seeds
def test_configs_reject_bad_values():
    with pytest.raises(ValueError, match="noise mode"):
        FlatnessConfig(noise="gaussian")
    with pytest.raises(ValueError, match="alphas"):
        FlatnessConfig(alphas=(-0.1,))
    with pytest.raises(ValueError, match="repeated"):
        FlatnessConfig(alphas=(0.1, 0.1))
    with pytest.raises(ValueError, match="Did you mean 0.05"):
        FlatnessConfig(alphas=(5,))  # 5% written as 5
    with pytest.raises(ValueError, match="confidence"):
        FlatnessConfig(confidence=95)
    with pytest.raises(ValueError, match="gammas"):
        WorstCaseConfig(gammas=(1.5,))
    assert FlatnessConfig(alphas=[0.1, 1]).alphas == (0.1, 1.0)


def test_units_do_not_depend_on_order_or_on_other_units():
    model = tiny_model(3)
    x, y = tiny_batch(10, seed=3)
    cfg = FlatnessConfig(alphas=(0.3,), samples=3, n_examples=0, attack=ATTACK, batch_size=4)
    keys = flatness_keys(cfg)
    forward = {k: compute_unit(model, x, y, k, cfg=cfg) for k in keys}
    backward = {k: compute_unit(model, x, y, k, cfg=cfg) for k in reversed(keys)}
    assert forward == backward
    # A shard of rank 1 of 2 alone computes the same records as the full run.
    assert {k: compute_unit(model, x, y, k, cfg=cfg) for k in keys[1::2]} == {
        k: forward[k] for k in keys[1::2]
    }


def _dist_worker(rank, world, folder, out):
    import json

    import torch.distributed as dist

    from analysis.store import SampleStore
    from awp.distributed import current

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=world
    )
    try:
        model = tiny_model(3)
        x, y = tiny_batch(10, seed=3)
        cfg = FlatnessConfig(
            alphas=(0.3, 0.6), samples=3, n_examples=0, attack=ATTACK, batch_size=4
        )
        store = SampleStore(folder / "store", meta={"t": 1}, rank=rank)
        records = run_units(
            flatness_keys(cfg),
            lambda k: compute_unit(model, x, y, k, cfg=cfg),
            store=store,
            info=current(),
        )
        (out / f"rank{rank}.json").write_text(json.dumps(records))
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
def test_two_gloo_ranks_split_the_units_and_agree_with_one_process(tmp_path):
    import json

    import torch.multiprocessing as mp

    mp.spawn(_dist_worker, args=(2, tmp_path, tmp_path), nprocs=2, join=True)
    model = tiny_model(3)
    x, y = tiny_batch(10, seed=3)
    cfg = FlatnessConfig(alphas=(0.3, 0.6), samples=3, n_examples=0, attack=ATTACK, batch_size=4)
    keys = flatness_keys(cfg)
    single = json.loads(
        json.dumps(run_units(keys, lambda k: compute_unit(model, x, y, k, cfg=cfg)))
    )
    for rank in (0, 1):
        assert json.loads((tmp_path / f"rank{rank}.json").read_text()) == single
    # Each rank kept its own round-robin share on disk, together every unit once.
    own = [
        set(json.loads((tmp_path / "store" / f"samples.rank{r}.json").read_text())["records"])
        for r in (0, 1)
    ]
    assert own[0] == set(keys[0::2]) and own[1] == set(keys[1::2])


def test_absolute_flatness_does_not_let_draws_cancel():
    """|rho(w+u) - rho(w)| averaged over draws (the rebuttal's R#4 Q1): two draws, one raising
    the error by 0.2 and one lowering it by 0.1, average +0.05 signed but 0.15 absolute."""
    base = {"errors": 5, "loss_sum": 10.0, "n": 10}
    samples = [
        {"errors": 7, "loss_sum": 13.0, "n": 10, "noise_ratio": 0.1},
        {"errors": 4, "loss_sum": 9.0, "n": 10, "noise_ratio": 0.1},
    ]
    est = flat.summarize_expected(base, samples, alpha=0.1, noise="layer")
    assert est.flatness == pytest.approx(0.05) and est.abs_flatness == pytest.approx(0.15)
    assert est.flatness_loss == pytest.approx(0.1) and est.abs_flatness_loss == pytest.approx(0.2)
    # when every draw raises it, the two agree (as the rebuttal says of AWP's ascent)
    up = [dict(s, errors=s["errors"] + 3, loss_sum=s["loss_sum"] + 5) for s in samples]
    both = flat.summarize_expected(base, up, alpha=0.1, noise="layer")
    assert both.abs_flatness == pytest.approx(both.flatness)


def test_the_flatness_stage_reads_the_absolute_flatness_as_a_measure(tmp_path):
    from awp.io import write_json
    from awp_landscape.measures.flatness import MEASURE
    from awp_landscape.plans import AnalysisPlan

    rows = [
        {"label": m, "kind": "expected", "alpha": 0.1, "flatness_loss": v, "abs_flatness_loss": a}
        for m, v, a in (("AT", 0.01, 0.03), ("AT-AWP", 0.02, 0.025))
    ]
    write_json(tmp_path / "analysis" / "flatness_final" / "flatness.json", {"rows": rows})
    found = dict(MEASURE.over_seeds(AnalysisPlan(flatness_alphas=(0.1,))))
    (get,) = [f for name, f in found.items() if name.startswith("expected absolute flatness")]
    assert get(tmp_path, "AT") == 0.03 and get(tmp_path, "AT-AWP") == 0.025
    older = [{k: v for k, v in r.items() if k != "abs_flatness_loss"} for r in rows]
    write_json(tmp_path / "analysis" / "flatness_final" / "flatness.json", {"rows": older})
    assert get(tmp_path, "AT") is None  # a file written before the measure existed
