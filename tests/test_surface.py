"""Surface evaluation: theta0 + sum c_i d_i against models built by hand, exact restore, BN
recomputation against batch statistics, regenerated vs fixed attacks, configs and grids."""

import argparse
import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from awp.config import PGD10_EVAL, AttackConfig, from_dict, to_dict
from awp.evaluate import evaluate_attack
from awp_landscape.flags import add_dataclass_arguments, dataclass_from_arguments
from landscape.config import SurfaceConfig
from landscape.directions import random_direction, target_direction
from landscape.grid import make_grid, parse_range
from landscape.surface import (
    EvalSet,
    compute_surface,
    metric_names,
    point_seed,
    recompute_bn_stats,
    surface_evaluator,
)
from tests.helpers import assert_same_state, snapshot, tiny_batch, tiny_model

ATTACK = AttackConfig(steps=3, eps=8 / 255, step_size=3 / 255)


def evalset(name="test", n=12, seed=0, dtype=torch.float64):
    x, y = tiny_batch(n, seed=seed, dtype=dtype)
    return EvalSet(name, x, y)


def model_at(model, theta0, directions, coeffs):
    """Reference: a separate copy of the model with theta0 + sum c_i d_i loaded into it."""
    ref = copy.deepcopy(model)
    state = {k: v.clone() for k, v in theta0.items()}
    for d, c in zip(directions, coeffs):
        for n, t in d.items():
            state[n] = state[n] + c * t
    ref.load_state_dict(state)
    return ref.eval()


def test_parse_range():
    assert parse_range("-1:1:5").tolist() == [-1.0, -0.5, 0.0, 0.5, 1.0]
    interp = parse_range("-0.5:1.5:21")
    assert 0.0 in interp.tolist() and 1.0 in interp.tolist()  # hit exactly
    assert parse_range("0.3:0.3:1").tolist() == [0.3]
    for bad in ("-1:1", "a:b:c", "1:-1:3", "0:1:0"):
        with pytest.raises(ValueError, match="coordinates"):
            parse_range(bad)
    with pytest.raises(ValueError, match="copies of one point"):
        parse_range("0.5:0.5:3")
    assert len(parse_range("-1:1:10001")) == 10001
    with pytest.raises(ValueError, match="10002 points on one axis"):
        parse_range("-1:1:10002")  # a typo for -1:1:101, not a landscape


def test_a_surface_of_more_than_a_million_points_is_refused():
    x = parse_range("-1:1:1001")
    assert make_grid("2d", x, x).n_points == 1001 * 1001
    with pytest.raises(ValueError, match="1002 x 1001 surface"):
        make_grid("2d", x, parse_range("-1:1:1002"))


def test_grid_cells_and_coefficients_for_a_non_square_grid():
    grid = make_grid("2d", np.array([-1.0, 0.0, 1.0]), np.array([10.0, 20.0]))
    assert grid.shape == (2, 3) and grid.n_points == 6
    # Flat index row * nx + col: row follows y, column follows x.
    assert [grid.cell(i) for i in range(6)] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    assert grid.coefficients(4) == (0.0, 20.0)
    multi = make_grid("multi", np.array([-1.0, 1.0]), n_directions=3)
    assert multi.shape == (3, 2)
    assert multi.coefficients(5) == (0.0, 0.0, 1.0)
    with pytest.raises(IndexError):
        grid.cell(6)


def test_alpha_zero_gives_exactly_the_unperturbed_losses():
    model = tiny_model()
    es = evalset(n=10, dtype=torch.float32)
    d = random_direction(model, seed=0)
    grid = make_grid("1d", np.array([-0.5, 0.0, 0.5]))
    out = compute_surface(model, [d], grid, [es], attack=ATTACK, attack_seed=7, batch_size=4)
    clean = evaluate_attack(model, es.x, es.y, None, batch_size=4)
    adv = evaluate_attack(model, es.x, es.y, ATTACK, batch_size=4, seed=point_seed(7, 1, "test"))
    assert out.values["test_loss"][0, 1] == clean.loss
    assert out.values["test_acc"][0, 1] == clean.accuracy
    assert out.values["test_adv_loss"][0, 1] == adv.loss
    assert out.values["test_adv_acc"][0, 1] == adv.accuracy
    assert out.values["test_loss"][0, 0] != clean.loss  # the other points did move


def test_non_square_surface_matches_models_built_by_hand():
    model = tiny_model(dtype=torch.float64)
    es = evalset()
    theta0 = snapshot(model)
    dirs = [random_direction(model, seed=0), random_direction(model, seed=1, include="all")]
    x, y = np.array([-0.4, 0.0, 0.3, 0.6]), np.array([-0.2, 0.5])
    grid = make_grid("2d", x, y)
    out = compute_surface(model, dirs, grid, [es], attack=ATTACK, attack_seed=3, batch_size=5)
    for i in range(len(y)):
        for j in range(len(x)):
            ref = model_at(model, theta0, dirs, (x[j], y[i]))
            clean = evaluate_attack(ref, es.x, es.y, None, batch_size=5)
            adv = evaluate_attack(
                ref, es.x, es.y, ATTACK, batch_size=5, seed=point_seed(3, i * 4 + j, "test")
            )
            assert out.values["test_loss"][i, j] == pytest.approx(clean.loss, rel=1e-12)
            assert out.values["test_adv_loss"][i, j] == pytest.approx(adv.loss, rel=1e-10)
    assert out.computed.all()
    assert_same_state(model, theta0)


def test_multi_rows_are_the_single_direction_curves():
    model = tiny_model(dtype=torch.float64)
    es = evalset()
    dirs = [random_direction(model, seed=k) for k in range(3)]
    x = np.array([-1.0, 0.5])
    multi = compute_surface(model, dirs, make_grid("multi", x, n_directions=3), [es])
    for k in range(3):
        one = compute_surface(model, [dirs[k]], make_grid("1d", x), [es])
        assert np.array_equal(multi.values["test_loss"][k], one.values["test_loss"][0])


def test_theta0_restored_bit_for_bit_also_after_an_exception():
    model = tiny_model()
    model.train()
    before = snapshot(model)
    es = evalset(dtype=torch.float32)
    d = random_direction(model, seed=0, include="all")
    bn_x = tiny_batch(16, seed=5)[0]
    grid = make_grid("1d", np.array([0.7, -0.3]))
    compute_surface(model, [d], grid, [es], attack=ATTACK, fixed=True, bn="recompute", bn_x=bn_x)
    assert_same_state(model, before)
    assert model.training and all(p.grad is None for p in model.parameters())
    with pytest.raises(RuntimeError, match="boom"):
        with surface_evaluator(model, [d], grid, [es], bn="recompute", bn_x=bn_x) as evaluate:
            evaluate(0)
            raise RuntimeError("boom")
    assert_same_state(model, before)


def test_points_do_not_depend_on_order_or_on_other_points():
    """What sharding and resume rely on: a point's value is a function of its index only."""
    model = tiny_model()
    es = evalset(dtype=torch.float32)
    d = random_direction(model, seed=2)
    grid = make_grid("1d", np.linspace(-1, 1, 5))
    args = dict(attack=ATTACK, attack_seed=1, fixed=True, batch_size=4)
    full = compute_surface(model, [d], grid, [es], **args)
    part = compute_surface(model, [d], grid, [es], indices=[4, 1], **args)
    for name in full.values:
        assert np.array_equal(full.values[name][0, [1, 4]], part.values[name][0, [1, 4]])
        assert np.isnan(part.values[name][0, [0, 2, 3]]).all()


def test_interpolation_moves_batchnorm_buffers_from_a_to_b():
    a, b = tiny_model(seed=0, dtype=torch.float64), tiny_model(seed=1, dtype=torch.float64)
    es = evalset()
    d = target_direction(a.state_dict(), b.state_dict())
    out = compute_surface(a, [d], make_grid("interp", np.array([0.0, 1.0])), [es])
    loss_a = evaluate_attack(a, es.x, es.y, None).loss
    loss_b = evaluate_attack(b, es.x, es.y, None).loss
    assert out.values["test_loss"][0, 0] == loss_a
    assert out.values["test_loss"][0, 1] == pytest.approx(loss_b, rel=1e-12)


def test_extrapolated_negative_variances_are_named_and_recompute_avoids_them(caplog):
    a, b = tiny_model(seed=0, dtype=torch.float64), tiny_model(seed=1, dtype=torch.float64)
    with torch.no_grad():  # B's variances far below A's: 1.5 steps past B is below zero
        a.bn1.running_var.fill_(1.0)
        b.bn1.running_var.fill_(0.2)
    es = evalset()
    d = target_direction(a.state_dict(), b.state_dict())
    grid = make_grid("interp", np.array([1.0, 2.0]))
    with caplog.at_level("WARNING", logger="landscape.surface"):
        out = compute_surface(a, [d], grid, [es])
    assert np.isfinite(out.values["test_loss"][0, 0])
    assert np.isnan(out.values["test_loss"][0, 1]) and out.computed.all()
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 1 and "at alpha=2 " in warned[0] and "--bn recompute" in warned[0]
    caplog.clear()
    bn_x = tiny_batch(16, seed=9, dtype=torch.float64)[0]
    with caplog.at_level("WARNING", logger="landscape.surface"):
        again = compute_surface(a, [d], grid, [es], bn="recompute", bn_x=bn_x, batch_size=8)
    assert np.isfinite(again.values["test_loss"]).all() and not caplog.records


def test_recomputed_batchnorm_statistics_are_the_batch_averages():
    model = tiny_model(dtype=torch.float64)
    x = tiny_batch(16, seed=4, dtype=torch.float64)[0]
    model.eval()
    recompute_bn_stats(model, x, batch_size=8)
    assert not model.training and model.bn1.momentum == 0.1
    # Reference: conv1 outputs of each half batch; the cumulative average of the two
    # per-batch means and unbiased variances.
    with torch.no_grad():
        h = model.conv1(x)  # (16, C, 8, 8)
    means = [h[s : s + 8].mean((0, 2, 3)) for s in (0, 8)]
    vars_ = [h[s : s + 8].var((0, 2, 3), unbiased=True) for s in (0, 8)]
    assert torch.allclose(model.bn1.running_mean, (means[0] + means[1]) / 2, atol=1e-12)
    assert torch.allclose(model.bn1.running_var, (vars_[0] + vars_[1]) / 2, atol=1e-12)


def test_bn_recompute_changes_values_and_eval_mode_keeps_theta0_stats():
    model = tiny_model(dtype=torch.float64)
    es = evalset()
    d = random_direction(model, seed=0)
    bn_x = tiny_batch(16, seed=9, dtype=torch.float64)[0]
    grid = make_grid("1d", np.array([0.5]))
    kept = compute_surface(model, [d], grid, [es])
    recomputed = compute_surface(model, [d], grid, [es], bn="recompute", bn_x=bn_x, batch_size=8)
    ref = model_at(model, snapshot(model), [d], (0.5,))
    ref_loss = evaluate_attack(ref, es.x, es.y, None).loss  # theta0's statistics
    assert kept.values["test_loss"][0, 0] == pytest.approx(ref_loss, rel=1e-12)
    recompute_bn_stats(ref, bn_x, batch_size=8)
    want = evaluate_attack(ref, es.x, es.y, None).loss
    assert recomputed.values["test_loss"][0, 0] == pytest.approx(want, rel=1e-12)
    assert want != pytest.approx(ref_loss)


@pytest.fixture(scope="module")
def trained_tiny():
    """TinyNet trained (clean) on a learnable 3-class task: the class is the brightest channel."""
    torch.manual_seed(0)
    model = tiny_model(seed=0)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(512, 3, 8, 8, generator=g) * 0.5
    y = torch.randint(0, 3, (512,), generator=g)
    x[torch.arange(512), y] += 0.4
    opt = torch.optim.Adam(model.parameters(), lr=0.03)
    model.train()
    for _ in range(150):
        idx = torch.randint(0, 512, (64,), generator=g)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return model, EvalSet("test", x[:64].clone(), y[:64].clone())


def test_regenerated_attack_loss_is_at_least_the_fixed_one_on_average(trained_tiny):
    model, es = trained_tiny
    assert evaluate_attack(model, es.x, es.y, None).accuracy > 0.8  # it did learn
    d = random_direction(model, seed=0)
    grid = make_grid("1d", np.array([-0.6, -0.3, 0.3, 0.6]))
    # without a random start both attacks are deterministic: the comparison is of where they
    # were crafted (at each point, or once at theta0), not of their seeds' luck
    attack = AttackConfig(steps=5, eps=8 / 255, step_size=2 / 255, random_start="none")
    out = compute_surface(model, [d], grid, [es], attack=attack, fixed=True)
    regen, fixed = out.values["test_adv_loss"], out.values["test_adv_fixed_loss"]
    clean = out.values["test_loss"]
    assert regen.mean() >= fixed.mean()
    assert (regen >= clean).all() and (fixed >= clean - 1e-6).mean() > 0.5
    assert (regen > fixed).sum() >= 3  # regeneration finds more loss at most points


def test_metric_names_and_errors():
    assert metric_names(["train", "test"], attack=True, fixed=True)[:6] == (
        "train_loss",
        "train_acc",
        "train_adv_loss",
        "train_adv_acc",
        "train_adv_fixed_loss",
        "train_adv_fixed_acc",
    )
    model = tiny_model()
    d = random_direction(model, seed=0)
    es = evalset(dtype=torch.float32)
    with pytest.raises(ValueError, match="needs 2 directions"):
        compute_surface(model, [d], make_grid("2d", np.zeros(2), np.zeros(2)), [es])
    with pytest.raises(ValueError, match="needs an attack"):
        compute_surface(model, [d], make_grid("1d", np.zeros(1)), [es], fixed=True)
    with pytest.raises(ValueError, match="bn_x"):
        compute_surface(model, [d], make_grid("1d", np.zeros(1)), [es], bn="recompute")


def test_surface_config_validation_defaults_and_round_trips():
    cfg = SurfaceConfig()
    assert cfg.x == "-1:1:21" and cfg.grid().shape == (1, 21)
    assert SurfaceConfig(kind="interp").x == "-0.5:1.5:21"
    assert SurfaceConfig(kind="2d", x="-1:1:3").grid().shape == (21, 3)
    assert SurfaceConfig(kind="multi", n_directions=4).grid().shape == (4, 21)
    assert cfg.attack == PGD10_EVAL and cfg.attack.steps == 10 and cfg.attack.mode == "eval"
    assert SurfaceConfig(attack=None).attack is None
    assert SurfaceConfig(n_train=0).splits == ("test",)
    for bad, match in (
        (dict(kind="3d"), "kind"),
        (dict(kind="multi", n_directions=1), "n_directions"),
        (dict(kind="multi", direction="awp"), "awp"),
        (dict(direction="awp", n_train=0), "n-train"),
        (dict(y="-1:1:3"), "only for kind 2d"),
        (dict(x="-1:1"), "min:max:num"),
        (dict(attack=None, fixed=True), "needs an --attack"),
        (dict(n_test=0, n_train=0), "nothing to evaluate"),
    ):
        with pytest.raises(ValueError, match=match):
            SurfaceConfig(**bad)
    with pytest.raises(ValueError, match="8/255"):
        AttackConfig(eps=8)
    # JSON and CLI round trips give the same object.
    attack = PGD10_EVAL.updated(eps=4 / 255)  # step eps/4
    custom = SurfaceConfig(kind="2d", x="-0.5:0.5:3", y="0:1:2", fixed=True, attack=attack)
    assert from_dict(SurfaceConfig, to_dict(custom)) == custom
    parser = argparse.ArgumentParser()
    add_dataclass_arguments(parser, SurfaceConfig)
    ns = parser.parse_args(["--kind", "2d", "--x=-0.5:0.5:3", "--y", "0:1:2", "--fixed"])
    assert dataclass_from_arguments(SurfaceConfig, ns, SurfaceConfig(attack=attack)) == custom
    ns = parser.parse_args(["--kind", "2d", "--x=-0.5:0.5:3", "--y", "0:1:2", "--fixed"])
    ns.eps = 4 / 255
    assert dataclass_from_arguments(SurfaceConfig, ns) == custom
    # The flags of the nested attack, by the names the command always had.
    ns = parser.parse_args(["--eps", "4/255", "--attack-steps", "3", "--restarts", "2"])
    got = dataclass_from_arguments(SurfaceConfig, ns).attack
    assert (got.eps, got.step_size, got.steps, got.restarts) == (4 / 255, 1 / 255, 3, 2)
    assert (
        dataclass_from_arguments(SurfaceConfig, parser.parse_args(["--attack", "none"])).attack
        is None
    )
    l2 = dataclass_from_arguments(SurfaceConfig, parser.parse_args(["--norm", "l2"])).attack
    assert (l2.norm, l2.eps, l2.step_size) == ("l2", 0.5, 0.125)  # the threat model's radius


def test_surface_configs_of_older_files_read_in_the_nested_layout():
    """Files written before the attack was nested store it flat; they read (and resume) the same."""
    old = {**to_dict(SurfaceConfig()), "attack": "pgd", "norm": "linf", "eps": 8 / 255}
    old.update(step_size=2 / 255, attack_steps=10, restarts=1, attack_mode="eval")
    assert from_dict(SurfaceConfig, old) == SurfaceConfig()
    none = {**to_dict(SurfaceConfig()), "attack": "none", "norm": "linf", "eps": 8 / 255}
    assert from_dict(SurfaceConfig, none).attack is None
    fgsm = {**old, "attack": "fgsm"}
    assert from_dict(SurfaceConfig, fgsm).attack == AttackConfig(name="fgsm")
