"""Adaptive sharpness: closed forms on linear and quadratic models, an exhaustive search on a
2-parameter model, the first-order robust case, invariance to rescaling, restored state,
resume, bad input, and any module on any input shape without an attack."""

import dataclasses
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from analysis.adaptive_sharpness import (
    AdaptiveSharpnessConfig,
    adaptive_ascent,
    adaptive_sharpness,
    compute_unit,
    result_rows,
    scales_of,
    sharpness_keys,
    summarize,
)
from analysis.store import SampleStore, checkpoint_units, run_units
from awp.config import AttackConfig
from tests.helpers import assert_same_state, snapshot, tiny_batch, tiny_model

ATTACK = AttackConfig(steps=2, step_size=4 / 255, eps=8 / 255)


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def mean_output(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """A loss that is the model's mean output: with a linear model, L(w) = a.w + bias."""
    return outputs.mean()


def linear_problem(n: int = 6, seed: int = 0):
    """nn.Linear(n, 1) in float64 whose loss on rows equal to a is L(w, bias) = a.w + bias."""
    torch.manual_seed(seed)
    model = nn.Linear(n, 1).double()
    a = torch.randn(n, dtype=torch.float64)
    x = a.repeat(8, 1)  # (8, n): every example is a, so every batch has the same loss
    return model, x, torch.zeros(8, dtype=torch.float64), a


def clean(**kw) -> AdaptiveSharpnessConfig:
    base = dict(m=4, n_examples=8, steps=5, attack=None)
    return AdaptiveSharpnessConfig(**{**base, **kw})


# --------------------------------------------------------------------------- closed forms
@pytest.mark.parametrize("p", ["2", "inf"])
def test_worst_case_of_a_linear_loss_is_the_dual_norm_of_the_scaled_gradient(p):
    # L(w) = a.w + bias: max over ||d / |w| ||_p <= rho of a.d is rho || |w| * a ||_q, q the
    # dual norm (2 for p = 2, 1 for p = inf); the bias is a parameter with gradient 1.
    model, x, y, a = linear_problem()
    rho = 0.1
    res = adaptive_sharpness(
        model, x, y, clean(kinds=("worst",), rho_worst=(rho,), p=p), loss=mean_output
    )
    w = torch.cat([model.weight.detach().flatten(), model.bias.detach()])
    grad = torch.cat([a, torch.ones(1, dtype=torch.float64)])
    scaled = w.abs() * grad
    expected = rho * (scaled.norm() if p == "2" else scaled.abs().sum())
    (est,) = res.estimates
    assert est.sharpness == pytest.approx(float(expected), rel=1e-12)
    assert est.batches == 2 and est.p == p and est.kind == "worst"
    # Plain sharpness (T = 1) of the same loss: rho ||a||_q instead.
    plain = adaptive_sharpness(
        model, x, y, clean(kinds=("worst",), rho_worst=(rho,), p=p, adaptive=False),
        loss=mean_output,
    )  # fmt: skip
    expected_plain = rho * (grad.norm() if p == "2" else grad.abs().sum())
    assert plain.estimates[0].sharpness == pytest.approx(float(expected_plain), rel=1e-12)


class Quadratic(nn.Module):
    """L(w) = 1/2 sum_i c_i w_i^2 + sum_i a_i w_i through the inputs x = [c / 2, a]."""

    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.w = nn.Parameter(w.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.w.numel()
        return x[:, :n] @ self.w**2 + x[:, n:] @ self.w


def test_average_case_of_a_quadratic_loss_matches_its_closed_form():
    # E_z[L(w + rho |w| z)] - L(w) = rho^2 / 2 * sum_i c_i w_i^2 for z ~ N(0, I): the linear
    # terms vanish in expectation. With c_i w_i^2 = 2 for all 50 coordinates it is 50 rho^2,
    # and one draw's spread is about a fifth of it (a chi-square with 50 degrees of freedom,
    # plus a small linear term), so 20 batches x 20 draws give a 99.9% t interval over the
    # batches narrower than 10% of the value: it must hold the exact value, and a wrong scale
    # of d (rho instead of rho^2, or T = 1, which gives rho^2 sum_i 1 / w_i^2) falls outside.
    gen = torch.Generator().manual_seed(0)
    n = 50
    w = (0.5 + 1.5 * torch.rand(n, generator=gen, dtype=torch.float64)) * torch.sign(
        torch.randn(n, generator=gen, dtype=torch.float64)
    )
    c = 2 / w**2
    a = -c * w + 0.02  # near a minimum, but not at one
    model = Quadratic(w)
    x = torch.cat([c / 2, a]).repeat(20, 1)
    rho = 0.1
    cfg = clean(
        kinds=("average",), rho_average=(rho,), m=1, n_examples=20, draws=20, confidence=0.999
    )
    (est,) = adaptive_sharpness(model, x, torch.zeros(20), cfg, loss=mean_output).estimates
    exact = float(rho**2 / 2 * (c * w**2).sum())
    assert exact == pytest.approx(50 * rho**2)
    assert est.ci_low <= exact <= est.ci_high
    assert est.ci_high - est.ci_low < 0.1 * exact
    assert est.batches == 20 and est.draws == 20
    assert est.d_ratio == pytest.approx(rho, rel=0.2)  # ||rho |w| z|| / ||w|| ~ rho


# --------------------------------------------------------------------------- exhaustive search
class TwoParams(nn.Module):
    """f(x) = b tanh(a x): two parameters, a non-concave loss in (a, b)."""

    def __init__(self, a: float, b: float) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.tensor([a], dtype=torch.float64))
        self.b = nn.Parameter(torch.tensor([b], dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b * torch.tanh(self.a * x)


X2 = torch.tensor([-2.0, -0.5, 0.3, 1.0, 2.5], dtype=torch.float64)
T2 = torch.tensor([-1.2, -0.4, 0.5, 0.9, 1.1], dtype=torch.float64)


@pytest.mark.parametrize("p", ["2", "inf"])
@pytest.mark.parametrize("a,b,rho", [(0.8, 1.3, 0.2), (0.8, 1.3, 0.5), (1.5, -0.7, 1.0)])
def test_ascent_reaches_the_maximum_found_by_an_exhaustive_grid(p, a, b, rho):
    model = TwoParams(a, b)
    params = dict(model.named_parameters())
    asc = adaptive_ascent(
        lambda t: ((model(X2) - T2) ** 2).mean(),
        params,
        scales_of(params, adaptive=True),
        rho=rho,
        p=p,
        steps=20,
    )
    # The grid: u on a 1601 x 1601 lattice of [-rho, rho]^2 (the disk's points for p = 2),
    # w + |w| u evaluated directly.
    g = torch.linspace(-rho, rho, 1601, dtype=torch.float64)
    u1, u2 = torch.meshgrid(g, g, indexing="ij")
    pa, pb = a + abs(a) * u1, b + abs(b) * u2
    values = ((pb[..., None] * torch.tanh(pa[..., None] * X2) - T2) ** 2).mean(-1)
    if p == "2":
        values = torch.where(u1**2 + u2**2 <= rho**2, values, -math.inf)
    grid_max = float(values.max())
    # The grid's own error: every point of the ball is within h / sqrt(2) of a grid point
    # (h = 2 rho / 1600), and the loss's slope in u is below 7 on these balls (6.7 at most,
    # measured), so the grid's maximum is within 7 h / sqrt(2) < 7e-3 rho of the true one.
    assert asc.value == pytest.approx(grid_max, abs=7e-3 * rho)
    # For p = inf these maxima lie at corners of the box: on the grid, and reached exactly by
    # the sign steps.
    assert asc.value >= grid_max - 1e-12 or p == "2"
    # The point is feasible and its value is the loss there.
    u = torch.cat([asc.d["a"] / abs(a), asc.d["b"] / abs(b)])
    assert float(u.norm() if p == "2" else u.abs().max()) <= rho * (1 + 1e-12)
    with torch.no_grad():
        at_d = TwoParams(a + float(asc.d["a"]), b + float(asc.d["b"]))
        assert float(((at_d(X2) - T2) ** 2).mean()) == pytest.approx(asc.value, rel=1e-12)
    with torch.no_grad():
        assert asc.values[0] == pytest.approx(float(((model(X2) - T2) ** 2).mean()))


# --------------------------------------------------------------------------- robust loss
@pytest.mark.parametrize("p", ["2", "inf"])
def test_robust_worst_case_at_small_rho_is_first_order_in_the_gradient_at_x_adv(p):
    # With FGSM (deterministic), x_adv(w + d) keeps the sign pattern of x_adv(w) for a tiny d,
    # so L_rob(w + d) - L_rob(w) = g_adv . d + O(rho^2), g_adv the weight gradient of the loss
    # at x_adv (written by hand here). The maximum over the ball is then rho || |w| g_adv ||_q;
    # at rho = 2e-5 the second-order rest is about 1e-5 relative (measured), while the clean
    # gradient's value differs by more than 0.2% (so a loss without the regenerated attack fails).
    model = tiny_model(0, dtype=torch.float64).eval()
    x, y = tiny_batch(8, dtype=torch.float64)
    eps, rho = 8 / 255, 2e-5
    xr = x.clone().requires_grad_(True)
    (gx,) = torch.autograd.grad(F.cross_entropy(model(xr), y), xr)
    x_adv = (x + eps * gx.sign()).clamp(0, 1)

    def expected(inputs: torch.Tensor) -> float:
        params = list(model.parameters())
        grads = torch.autograd.grad(F.cross_entropy(model(inputs), y), params)
        tg = torch.cat([(w.detach().abs() * g).flatten() for w, g in zip(params, grads)])
        return float(rho * (tg.norm() if p == "2" else tg.abs().sum()))

    cfg = AdaptiveSharpnessConfig(
        kinds=("worst",), rho_worst=(rho,), p=p, m=8, n_examples=8, steps=3,
        attack=AttackConfig(name="fgsm", eps=eps),
    )  # fmt: skip
    est = {e.loss: e for e in adaptive_sharpness(model, x, y, cfg).estimates}
    assert est["robust"].sharpness == pytest.approx(expected(x_adv), rel=1e-4)
    assert est["clean"].sharpness == pytest.approx(expected(x), rel=1e-4)
    assert abs(expected(x_adv) / expected(x) - 1) > 2e-3


def test_the_perturbed_and_unperturbed_losses_see_the_same_random_starts():
    # PGD from a uniform random start: at a vanishing rho both sides of the difference must be
    # attacked from the same starts (the batch's evaluation seed), so the sharpness is ~0;
    # attacks from other starts differ by ~1e-3 in the loss.
    model = tiny_model(0, dtype=torch.float64).eval()
    x, y = tiny_batch(8, dtype=torch.float64)
    cfg = AdaptiveSharpnessConfig(
        rho_worst=(1e-9,), rho_average=(1e-9,), m=4, n_examples=8, steps=2, draws=2,
        attack=ATTACK, losses=("robust",),
    )  # fmt: skip
    for est in adaptive_sharpness(model, x, y, cfg).estimates:
        assert abs(est.sharpness) < 1e-7, est
        assert est.base_loss > 0


def test_every_unit_leaves_weights_buffers_modes_and_grads_as_they_were():
    model = tiny_model(1)
    model.train()
    model.bn1.eval()  # a mixed mode must come back mixed
    x, y = tiny_batch(8)
    before = snapshot(model)
    cfg = AdaptiveSharpnessConfig(
        rho_worst=(0.01,), rho_average=(0.05,), m=4, n_examples=8, steps=2, draws=2,
        attack=ATTACK, bn="train",
    )  # fmt: skip
    for key in sharpness_keys(cfg, 2):
        compute_unit(model, x, y, key, cfg=cfg)
    assert_same_state(model, before)
    assert model.training and not model.bn1.training and model.bn2.training
    assert all(p.grad is None for p in model.parameters())


# --------------------------------------------------------------------------- invariance
class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(5, 7)
        self.fc2 = nn.Linear(7, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


@pytest.mark.parametrize("kind", ["worst", "average"])
@pytest.mark.parametrize("p", ["2", "inf"])
def test_adaptive_sharpness_is_invariant_to_rescaling_layers_and_plain_is_not(kind, p):
    # relu(c z) = c relu(z): scaling fc1 (weight and bias) by c and fc2's weight by 1/c leaves
    # the function unchanged; T_w = |w| scales with the weights, so every perturbed network
    # (and the ascent's path) is the same function too. Plain sharpness (T = 1) is not.
    torch.manual_seed(3)
    model = MLP().double()
    x = torch.randn(16, 5, dtype=torch.float64)
    y = torch.randint(0, 3, (16,))
    c = 4.0
    scaled = MLP().double()
    scaled.load_state_dict(model.state_dict())
    with torch.no_grad():
        scaled.fc1.weight.mul_(c)
        scaled.fc1.bias.mul_(c)
        scaled.fc2.weight.div_(c)
    assert torch.allclose(model(x), scaled(x), atol=1e-12)
    rho = {"worst": 0.05 if p == "2" else 0.02, "average": 0.1}[kind]

    def value(net: nn.Module, adaptive: bool) -> float:
        cfg = clean(
            kinds=(kind,), rho_worst=(rho,), rho_average=(rho,), p=p, m=8, n_examples=16,
            draws=4, adaptive=adaptive,
        )  # fmt: skip
        return adaptive_sharpness(net, x, y, cfg).estimates[0].sharpness

    assert value(scaled, True) == pytest.approx(value(model, True), rel=1e-9)
    plain, plain_scaled = value(model, False), value(scaled, False)
    assert abs(plain_scaled - plain) > 0.1 * abs(plain)


def test_any_module_on_tabular_inputs_with_a_custom_loss():
    # A regression MLP on (N, 2, 3) inputs, mean squared error, no attack.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, 4), nn.Tanh(), nn.Linear(4, 1))
    x = torch.randn(12, 2, 3)
    y = torch.randn(12, 1)
    cfg = clean(rho_worst=(0.05,), rho_average=(0.05,), m=4, n_examples=12, draws=3, p="2")
    res = adaptive_sharpness(model, x, y, cfg, loss=F.mse_loss)
    assert res.n_batches == 3 and res.n_left_out == 0
    worst, avg = res.estimates
    assert (worst.kind, worst.loss, avg.kind) == ("worst", "clean", "average")
    with torch.no_grad():
        base = [float(F.mse_loss(model(x[i : i + 4]), y[i : i + 4])) for i in (0, 4, 8)]
    assert worst.base_loss == pytest.approx(sum(base) / 3, rel=1e-6)
    assert worst.sharpness > 0 and math.isfinite(worst.ci_low) and worst.ci_low <= worst.ci_high
    assert avg.batches == 3 and avg.draws == 3


# --------------------------------------------------------------------------- units and resume
def test_units_resume_skip_finished_work_and_give_the_same_numbers(tmp_path):
    model = tiny_model(2)
    x, y = tiny_batch(12, seed=1)
    cfg = AdaptiveSharpnessConfig(
        rho_worst=(0.01,), rho_average=(0.05,), m=4, n_examples=12, steps=2, draws=2,
        attack=ATTACK,
    )  # fmt: skip
    keys = sharpness_keys(cfg, 3)
    assert len(keys) == 2 * 3 + 2 * 3 + 2 * 3 * 2  # base, worst, average (x2 losses)
    meta = cfg.store_settings()
    done: list[str] = []

    def compute(key: str) -> dict:
        if len(done) == 7:
            raise KeyboardInterrupt  # killed after 7 units
        done.append(key)
        return compute_unit(model, x, y, key, cfg=cfg)

    with pytest.raises(KeyboardInterrupt):
        run_units(keys, compute, store=SampleStore(tmp_path, meta=meta))
    assert len(done) == 7
    rest = []

    def counted(key: str) -> dict:
        rest.append(key)
        return compute_unit(model, x, y, key, cfg=cfg)

    resumed = run_units(keys, counted, store=SampleStore(tmp_path, meta=meta))
    assert sorted(rest) == sorted(set(keys) - set(done))  # only the missing units
    fresh = run_units(keys, lambda k: compute_unit(model, x, y, k, cfg=cfg))
    assert resumed == fresh  # a unit depends only on its key
    calls = []

    def loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return F.cross_entropy(outputs, targets)

    again = adaptive_sharpness(model, x, y, cfg, store=SampleStore(tmp_path, meta=meta), loss=loss)
    assert not calls  # every unit is on disk: nothing is computed again
    assert again.estimates == summarize(fresh, cfg=cfg, n_batches=3)
    # A wider run adds only its new units (a second rho).
    wider = dataclasses.replace(cfg, rho_worst=(0.01, 0.02))
    new = [k for k in sharpness_keys(wider, 3) if k not in fresh]
    assert len(new) == 2 * 3 and all("rho=0.02" in k for k in new)


def test_a_checkpoint_runs_through_checkpoint_units_and_resumes(tmp_path):
    model = tiny_model(3)
    x, y = tiny_batch(8, seed=2)
    cfg = AdaptiveSharpnessConfig(
        rho_worst=(0.01,), rho_average=(0.05,), m=4, n_examples=8, steps=2, draws=2,
        attack=ATTACK,
    )  # fmt: skip
    calls: list[str] = []

    def compute(key: str) -> dict:
        calls.append(key)
        return compute_unit(model, x, y, key, cfg=cfg)

    def measure(run_keys) -> dict:
        records = run_keys(sharpness_keys(cfg, 2), "sharpness")
        estimates = summarize(records, cfg=cfg, n_batches=2)
        return {"rows": result_rows(estimates, cfg=cfg, ident={"checkpoint": "last.pt"})}

    stores = {"sharpness": cfg.store_settings()}
    first = checkpoint_units(tmp_path, stores=stores, compute=compute, measure=measure)
    assert len(calls) == len(sharpness_keys(cfg, 2))
    calls.clear()
    again = checkpoint_units(tmp_path, stores=stores, compute=compute, measure=measure)
    assert not calls and again == first
    rows = first["rows"]
    assert [(r["kind"], r["loss"]) for r in rows] == [
        ("worst", "robust"), ("worst", "clean"), ("average", "robust"), ("average", "clean"),
    ]  # fmt: skip
    assert rows[0]["checkpoint"] == "last.pt" and rows[0]["attack"] == ATTACK.describe()


def test_other_settings_are_refused_by_the_store(tmp_path):
    model = tiny_model(2)
    x, y = tiny_batch(4, seed=1)
    cfg = clean(kinds=("average",), m=4, n_examples=4, draws=1)
    adaptive_sharpness(model, x, y, cfg, store=SampleStore(tmp_path, meta=cfg.store_settings()))
    other = dataclasses.replace(cfg, adaptive=False)
    with pytest.raises(ValueError, match="adaptive"):
        SampleStore(tmp_path, meta=other.store_settings()).load()


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "kw,message",
    [
        (dict(rho_worst=(0.0,)), r"rho_worst=\(0.0,\): give radii > 0 \(--rho-worst\)"),
        (dict(rho_average=(-0.1,)), r"give radii > 0 \(--rho-average\)"),
        (dict(p="1"), r"norm p of the worst case \(--p\) '1'; choose one of 2, inf"),
        (dict(m=2048), r"m=2048 is larger than n_examples \(1024 examples\).*--m 1024"),
        (dict(n_examples=1000), r"not a multiple of m=128.*--n-examples 896 or 1024"),
        (dict(attack=None, losses=("robust",)), r"robust loss needs an attack"),
        (dict(kinds=("max",)), r"unknown sharpness kind"),
        (dict(steps=0), r"steps=0 is outside \[1, 10000\] \(--steps\)"),
    ],
)
def test_bad_settings_are_one_clear_error(kw, message):
    with pytest.raises(ValueError, match=message):
        AdaptiveSharpnessConfig(**kw)


def test_norms_are_normalized_and_the_losses_follow_the_attack():
    assert AdaptiveSharpnessConfig(p=2).p == "2"
    assert AdaptiveSharpnessConfig(p=float("inf")).p == "inf"
    assert AdaptiveSharpnessConfig().resolved_losses == ("robust", "clean")
    assert AdaptiveSharpnessConfig(attack=None).resolved_losses == ("clean",)
    # `--attack none` on top of the defaults (how the command line builds it) is the clean loss.
    assert dataclasses.replace(AdaptiveSharpnessConfig(), attack=None).resolved_losses == ("clean",)
    assert AdaptiveSharpnessConfig(losses=["clean"]).losses == ("clean",)


def test_m_larger_than_the_data_names_the_flag():
    model = tiny_model(0)
    x, y = tiny_batch(6)
    with pytest.raises(ValueError, match=r"m=8 is larger than the data given \(6 examples\).*--m"):
        adaptive_sharpness(model, x, y, clean(m=8, n_examples=8))
    res = adaptive_sharpness(model, x, y, clean(kinds=("average",), m=4, n_examples=8, draws=1))
    assert (res.n_batches, res.n_used, res.n_left_out) == (1, 4, 2)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_the_same_numbers_on_cuda_as_on_the_cpu():
    # float64, and the attacks' starts and the noise drawn on CPU generators: every unit is the
    # same on both devices up to the order of floating-point sums (a sign step of a gradient
    # that is ~1e-17 may differ, and moves the loss by as little), so within 1e-6 relative.
    model = tiny_model(4, dtype=torch.float64).eval()
    x, y = tiny_batch(8, seed=3, dtype=torch.float64)
    cfg = AdaptiveSharpnessConfig(
        rho_worst=(0.01,), rho_average=(0.05,), m=4, n_examples=8, steps=3, draws=2,
        attack=ATTACK,
    )  # fmt: skip
    cpu = adaptive_sharpness(model, x, y, cfg).estimates
    gpu_model = model.cuda()
    before = snapshot(gpu_model)
    gpu = adaptive_sharpness(gpu_model, x.cuda(), y.cuda(), cfg).estimates
    assert_same_state(gpu_model, before)
    for c, g in zip(cpu, gpu):
        assert g.sharpness == pytest.approx(c.sharpness, rel=1e-6, abs=1e-9)
        assert g.base_loss == pytest.approx(c.base_loss, rel=1e-9)


# --------------------------------------------------------------------------- awp sharpness
def test_the_command_measures_checkpoints_reruns_nothing_and_refuses_other_settings(
    tmp_path, capsys
):
    """``awp sharpness``: a row per kind and loss of each checkpoint, the figure, a rerun that
    computes nothing (its units are on disk), other settings refused with nothing lost."""
    from awp.checkpoint import save_checkpoint
    from awp.config import to_dict
    from awp.data import DataConfig
    from awp.models import ModelSpec, build_model
    from awp_landscape.cli import main

    spec = ModelSpec(name="smallcnn", num_classes=10, width=0.25)
    ckpts = []
    for seed, awp in ((0, False), (1, True)):
        torch.manual_seed(seed)
        config = {"method": "at", "awp": awp, "data": to_dict(DataConfig())}
        ckpts.append(save_checkpoint(tmp_path / f"{seed}.pt", model=build_model(spec),
                                     model_spec=to_dict(spec), config=config))  # fmt: skip
    out = tmp_path / "s"
    args = ["sharpness", *map(str, ckpts), "--n-examples", "8", "--m", "4", "--steps", "2",
            "--draws", "2", "--attack-steps", "1", "--out", str(out), "--no-progress",
            "--device", "cpu"]  # fmt: skip
    assert main(args) == 0
    rows = json.loads((out / "sharpness.json").read_text())["rows"]
    assert {(r["label"], r["kind"], r["loss"]) for r in rows} == {
        (m, k, loss) for m in ("AT", "AT-AWP") for k in ("worst", "average")
        for loss in ("robust", "clean")
    }  # fmt: skip
    assert all(r["batches"] == 2 and r["sharpness"] >= 0 for r in rows if r["kind"] == "worst")
    assert (out / "sharpness.png").exists()
    stores = sorted((out / "sharpness").glob("*/sharpness.rank0.json"))
    stamps = [p.stat().st_mtime_ns for p in stores]
    assert len(stores) == 2 and main(args) == 0
    assert "2 of 2 checkpoint(s) already measured" in capsys.readouterr().out
    assert [p.stat().st_mtime_ns for p in stores] == stamps
    before = (out / "sharpness.json").read_text()
    assert main([*args, "--m", "8"]) == 2  # another batch size changes every unit
    assert "other settings" in capsys.readouterr().err
    assert (out / "sharpness.json").read_text() == before


def test_the_demo_measures_a_split_smaller_than_m_as_one_batch_of_all_of_it(tmp_path):
    """The demo's and the sweep's sharpness (``plan_config``: fit_m) on a dataset with fewer
    training images than m: one batch of all of them, m recorded as used; the command's
    config (fit_m off) refuses the same call and names --m."""
    from types import SimpleNamespace

    from awp.checkpoint import save_checkpoint
    from awp.config import to_dict
    from awp.data import DataConfig
    from awp.models import ModelSpec, build_model
    from awp_landscape.inputs import Sources
    from awp_landscape.measures.runner import run_measure
    from awp_landscape.measures.sharpness import MEASURE
    from tests.helpers import make_image_folder

    data = make_image_folder(tmp_path / "data", classes=2, n_train=6, n_test=2, size=32)
    spec = ModelSpec(name="smallcnn", num_classes=2, width=0.25)
    config = {"method": "at", "awp": False,
              "data": to_dict(DataConfig(dataset=str(data), val_size=0))}  # fmt: skip
    ckpt = save_checkpoint(tmp_path / "last.pt", model=build_model(spec),
                           model_spec=to_dict(spec), config=config)  # fmt: skip
    plan = SimpleNamespace(sharpness_n=256, sharpness_m=128, sharpness_steps=1,
                           sharpness_draws=1, analysis_steps=1)  # fmt: skip
    cfg = MEASURE.plan_config(plan)
    sources = Sources(device="cpu", progress=False)
    run_measure(MEASURE, [ckpt], cfg, out=tmp_path / "s", sources=sources, figures=False)
    rows = json.loads((tmp_path / "s" / "sharpness.json").read_text())["rows"]
    assert rows and all(r["m"] == 6 and r["batches"] == 1 for r in rows)
    with pytest.raises(ValueError, match=r"m=128 is larger than the data given \(6 examples\)"):
        run_measure(MEASURE, [ckpt], dataclasses.replace(cfg, fit_m=False),
                    out=tmp_path / "t", sources=sources, figures=False)  # fmt: skip
