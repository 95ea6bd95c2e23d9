"""SAM-AT, ASAM-AT and RWP-AT against their steps done by hand, the method names, the options
each method refuses, and AT / AT-AWP bit-identical to the step from before these methods."""

import copy
import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from awp.attacks import run_attack
from awp.config import AttackConfig, AWPConfig, from_dict, method_of, to_dict
from awp.method_config import (
    METHOD_NAMES,
    ASAMConfig,
    RWPConfig,
    SAMConfig,
    method_fields,
    method_name,
)
from awp.objectives import (
    at_losses,
    at_objective,
    get_attack_loss,
    get_objective,
    mart_objective,
    trades_losses,
    trades_objective,
)
from awp.perturb import select_params
from awp.step import train_step
from awp.train_config import TrainConfig
from awp.weight_methods import WEIGHT_METHODS, rwp_ascent, sam_ascent
from tests.helpers import tiny_batch, tiny_model
from tests.step_before_methods import train_step_before

ATTACK = AttackConfig(name="pgd", eps=8 / 255, step_size=4 / 255, steps=2, mode="train")
LR, MOMENTUM, WD = 0.05, 0.9, 5e-4
# float64 throughout: the step and the hand reference differ only in the order of sums (a
# global norm as a norm of per-tensor norms, an in-place add), ~1e-16 relative; 1e-10 leaves
# room for a handful of such roundings while any algorithmic difference is orders larger.
TOL = dict(rtol=0, atol=1e-10)


def _setup(seed=0):
    model = tiny_model(seed, dtype=torch.float64).train()
    x, y = tiny_batch(n=8, seed=seed, dtype=torch.float64)
    return model, x, y


def _sgd(model):
    return torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WD)


def _x_adv(model, x, y, seed=1):
    """The training attack at w, as train_step crafts it with the same generator."""
    return run_attack(
        copy.deepcopy(model), x, y, ATTACK, generator=torch.Generator().manual_seed(seed)
    )


def _grads_frozen_bn(model, loss_fn, names):
    """d loss / d params at the model's weights, train mode, BatchNorm statistics unchanged."""
    buffers = {k: b.clone() for k, b in model.named_buffers()}
    params = dict(model.named_parameters())
    grads = torch.autograd.grad(loss_fn(model), [params[n] for n in names])
    with torch.no_grad():
        for k, b in model.named_buffers():
            b.copy_(buffers[k])
    return dict(zip(names, grads))


def _update_grads(model, x_adv, y):
    """The update pass: CE at the current weights, train mode (BatchNorm statistics move)."""
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x_adv), y).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def _assert_same(model, ref):
    for (name, a), b in zip(model.state_dict().items(), ref.state_dict().values()):
        assert torch.allclose(a, b, **TOL), name


def _ours(model, x, y, perturbation, **kw):
    ours = copy.deepcopy(model)
    stats = train_step(
        ours,
        _sgd(ours),
        x,
        y,
        attack=ATTACK,
        objective=at_objective,
        perturbation=perturbation,
        generator=torch.Generator().manual_seed(1),
        **kw,
    )
    return ours, stats


# --------------------------------------------------------------------------- SAM, ASAM by hand
@pytest.mark.parametrize("adaptive", [False, True], ids=["sam", "asam"])
def test_sam_and_asam_steps_match_the_two_steps_done_by_hand(adaptive):
    rho, eta = (0.5, 0.01) if adaptive else (0.05, None)
    model, x, y = _setup()
    x_adv = _x_adv(model, x, y)
    ref = copy.deepcopy(model)
    names = [n for n, _ in ref.named_parameters()]  # SAM and ASAM perturb every parameter
    w = {n: p.detach().clone() for n, p in ref.named_parameters()}
    # 1. g at w; T = |w| + eta on tensors named weight (BatchNorm's included), 1 on biases.
    g = _grads_frozen_bn(ref, lambda m: F.cross_entropy(m(x_adv), y), names)
    t = {n: (w[n].abs() + eta) if adaptive and n.endswith("weight") else 1.0 for n in names}
    norm = math.sqrt(sum(float(((t[n] * g[n]) ** 2).sum()) for n in names))
    e = {n: rho * t[n] * t[n] * g[n] / (norm + 1e-16) for n in names}
    # 2. the gradient at w + e, then SGD's first step (momentum buffer = d) at w.
    with torch.no_grad():
        for n, p in ref.named_parameters():
            p.add_(e[n])
    g2 = _update_grads(ref, x_adv, y)
    with torch.no_grad():
        for n, p in ref.named_parameters():
            p.copy_(w[n] - LR * (g2[n] + WD * w[n]))
    cfg = ASAMConfig(rho=rho, eta=eta) if adaptive else SAMConfig(rho=rho)
    ours, stats = _ours(model, x, y, cfg)
    _assert_same(ours, ref)  # weights and the BatchNorm statistics of the update pass
    assert stats.v_norm_ratio is None
    # The radius: ||e|| = rho (SAM), ||e / T|| = rho (ASAM).
    assert math.sqrt(sum(float(((e[n] / t[n]) ** 2).sum()) for n in names)) == pytest.approx(rho)


def test_sam_perturbs_every_parameter_and_asam_is_sam_where_t_is_one():
    model, x, y = _setup()
    x_adv = _x_adv(model, x, y)
    params = select_params(model, "all")

    def objective():
        return at_objective(model, x, x_adv, y)[0]

    e = sam_ascent(objective, params, rho=0.1, model=model)
    assert set(e) == set(params) and all(float(t.abs().sum()) > 0 for t in e.values())
    assert math.sqrt(sum(float((t**2).sum()) for t in e.values())) == pytest.approx(0.1)
    # On tensors named weight only, a huge eta makes T nearly constant: ASAM's direction is
    # then SAM's (biases, with T = 1, would vanish beside the weights instead).
    weights = {n: p for n, p in params.items() if n.endswith("weight")}
    s = sam_ascent(objective, weights, rho=0.1, model=model)
    a = sam_ascent(objective, weights, rho=0.1, eta=1e6, model=model)
    cos = sum(float((a[n] * s[n]).sum()) for n in s) / (
        math.sqrt(sum(float((a[n] ** 2).sum()) for n in s)) * 0.1
    )
    assert cos == pytest.approx(1.0, abs=1e-6)


# --------------------------------------------------------------------------- RWP by hand
def _rwp_by_hand(ref, x_adv, y, *, gamma, c_min, steps):
    """Yu et al.'s ascent written out: masked mean, accumulated direction, one global scale."""
    names = [n for n, p in ref.named_parameters() if n.endswith("weight") and p.dim() > 1]
    params = dict(ref.named_parameters())
    w = {n: params[n].detach().clone() for n in names}
    w_norm = math.sqrt(sum(float((w[n] ** 2).sum()) for n in names))

    def masked(m):
        losses = F.cross_entropy(m(x_adv), y, reduction="none")
        keep = (losses < c_min).double().detach()
        return (losses * keep).sum() / len(y)  # mean over the whole batch, zeros included

    d = {n: torch.zeros_like(w[n]) for n in names}
    v = {n: torch.zeros_like(w[n]) for n in names}
    for _ in range(steps):
        with torch.no_grad():
            for n in names:
                params[n].copy_(w[n] + v[n])
        g = _grads_frozen_bn(ref, masked, names)
        with torch.no_grad():
            for n in names:
                params[n].copy_(w[n])
        d = {n: d[n] + g[n] for n in names}
        d_norm = math.sqrt(sum(float((d[n] ** 2).sum()) for n in names))
        v = {n: gamma * w_norm * d[n] / (d_norm + 1e-20) for n in names}
    return v


def test_rwp_step_matches_the_masked_ascent_and_global_rescale_done_by_hand():
    gamma, steps = 0.02, 3
    model, x, y = _setup()
    x_adv = _x_adv(model, x, y)
    with torch.no_grad():
        losses0 = F.cross_entropy(copy.deepcopy(model)(x_adv), y, reduction="none")
    c_min = float(losses0.median())  # some examples in, some out: the mask matters
    assert 0 < int((losses0 < c_min).sum()) < len(y)
    ref = copy.deepcopy(model)
    v = _rwp_by_hand(ref, x_adv, y, gamma=gamma, c_min=c_min, steps=steps)
    w = {n: p.detach().clone() for n, p in ref.named_parameters()}
    with torch.no_grad():  # the update at w + v, SGD's step there, then v subtracted (as AWP)
        for n, p in ref.named_parameters():
            p.add_(v.get(n, 0.0))
    g2 = _update_grads(ref, x_adv, y)
    with torch.no_grad():
        for n, p in ref.named_parameters():
            at = w[n] + v.get(n, 0.0)
            p.copy_(at - LR * (g2[n] + WD * at) - v.get(n, 0.0))
    cfg = RWPConfig(gamma=gamma, c_min=c_min, steps=steps)
    ours, _ = _ours(model, x, y, cfg, losses=at_losses)
    _assert_same(ours, ref)
    # One global scale: ||v|| = gamma ||w|| over all layers, not layer by layer.
    w_all = math.sqrt(sum(float((w[n] ** 2).sum()) for n in v))
    v_all = math.sqrt(sum(float((t**2).sum()) for t in v.values()))
    assert v_all == pytest.approx(gamma * w_all, rel=1e-12)
    per_layer = [float(v[n].norm() / w[n].norm()) for n in v]
    assert max(per_layer) - min(per_layer) > 1e-3 * gamma


def test_rwp_with_no_example_below_the_threshold_is_the_at_step_bit_for_bit():
    model, x, y = _setup()
    rwp, _ = _ours(model, x, y, RWPConfig(gamma=0.01, c_min=1e-12, steps=2), losses=at_losses)
    at, _ = _ours(model, x, y, None)
    for (name, a), b in zip(rwp.state_dict().items(), at.state_dict().values()):
        assert torch.equal(a, b), name


def test_rwp_ascent_raises_the_loss_of_the_kept_examples():
    model, x, y = _setup()
    x_adv = _x_adv(model, x, y)
    params = select_params(model)

    def losses():
        return at_losses(model, x, x_adv, y)[0]

    base = losses().detach()
    v = rwp_ascent(losses, params, gamma=0.05, c_min=float("inf"), steps=3, model=model)
    with torch.no_grad():
        for n, t in v.items():
            params[n].add_(t)
        assert float(losses().mean()) > float(base.mean())


def test_per_example_objectives_average_to_the_objectives():
    model, x, y = _setup()
    x_adv = x.flip(0)
    for per, mean in ((at_losses, at_objective), (trades_losses, trades_objective)):
        losses, logits = per(model, x, x_adv, y)
        loss, logits_mean = mean(model, x, x_adv, y)
        assert losses.shape == (len(y),)
        assert torch.allclose(losses.mean(), loss, rtol=1e-12)
        assert torch.equal(logits, logits_mean)


# --------------------------------------------------------------------------- AT, AWP unchanged
CASES = {
    "at": dict(),
    "at-awp": dict(awp=AWPConfig(gamma=0.01)),
    "at-awp K2=2 A=2": dict(awp=AWPConfig(gamma=0.02, steps=2, alternations=2)),
    "trades-awp": dict(method="trades", awp=AWPConfig(gamma=0.005)),
    "mart-awp noise scale": dict(method="mart", awp=AWPConfig(gamma=0.005), noise=0.1, scale=0.75),
}


@pytest.mark.parametrize("case", list(CASES))
def test_at_and_awp_steps_are_bit_identical_to_the_step_before_the_new_methods(case):
    kw = dict(CASES[case])
    method, noise_sd, scale = kw.pop("method", "at"), kw.pop("noise", 0.0), kw.pop("scale", 1.0)
    objective, attack_loss = get_objective(method), get_attack_loss(method)
    model = tiny_model(0).train()
    new, old = copy.deepcopy(model), copy.deepcopy(model)
    opt_new, opt_old = _sgd(new), _sgd(old)
    gen_new, gen_old = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    for step in range(3):
        x, y = tiny_batch(n=8, seed=step)
        noise = noise_sd * torch.randn(x.shape, generator=torch.Generator().manual_seed(step))
        common = dict(
            attack=ATTACK,
            objective=objective,
            attack_loss=attack_loss,
            loss_scale=scale,
            noise=noise if noise_sd else None,
            **kw,
        )
        s_new = train_step(new, opt_new, x, y, generator=gen_new, **common)
        s_old = train_step_before(old, opt_old, x, y, generator=gen_old, **common)
        assert (s_new.loss, s_new.correct, s_new.n, s_new.v_norm_ratio) == s_old
    for (name, a), b in zip(new.state_dict().items(), old.state_dict().values()):
        assert torch.equal(a, b), name
    for a, b in zip(opt_new.state_dict()["state"].values(), opt_old.state_dict()["state"].values()):
        assert torch.equal(a["momentum_buffer"], b["momentum_buffer"])
    assert torch.equal(gen_new.get_state(), gen_old.get_state())


def test_the_table_and_the_config_table_agree():
    from awp.method_config import WEIGHT_METHOD_SPECS

    assert set(WEIGHT_METHODS) == set(WEIGHT_METHOD_SPECS) == {"awp", "sam", "asam", "rwp"}
    for name, spec in WEIGHT_METHOD_SPECS.items():
        assert spec.config.name == name == WEIGHT_METHODS[name].name


# --------------------------------------------------------------------------- names and configs
def test_method_names_round_trip_and_label():
    assert set(METHOD_NAMES) >= {"at", "at-awp", "at-sam", "at-asam", "at-rwp", "trades-sam"}
    assert "mart-rwp" not in METHOD_NAMES  # RWP is defined with AT and TRADES
    for name in METHOD_NAMES:
        fields = method_fields(name)
        cfg = TrainConfig(**fields)
        assert method_name(cfg) == name == method_name(to_dict(cfg))
        assert TrainConfig(method=name) == cfg  # a name given as --method is split the same way
        assert method_of(to_dict(cfg)) == name.upper()
        full = TrainConfig(**fields, ema=True, swa=True, swa_start=3, epochs=5)
        assert from_dict(TrainConfig, to_dict(full)) == full  # config.json round trip
    assert method_fields("AT-SAM") == {"method": "at", "awp": False, "weight_method": "sam"}
    assert method_fields("trades-awp") == {"method": "trades", "awp": True, "weight_method": "none"}
    assert TrainConfig(weight_method="awp") == TrainConfig(awp=True)
    assert method_of({"method": "at", "weight_method": "sam"}, "ema") == "AT-SAM+EMA"
    assert method_of({"method": "at", "awp": True}, "swa") == "AT-AWP+SWA"
    # A config.json written before the new fields existed reads unchanged.
    old = {k: v for k, v in to_dict(TrainConfig(method="trades", awp=True)).items()}
    for key in (
        "weight_method",
        "rho",
        "c_min",
        "rwp_steps",
        "ema",
        "ema_decay",
        "swa",
        "swa_start",
    ):
        del old[key]
    assert from_dict(TrainConfig, old) == TrainConfig(method="trades", awp=True)
    assert method_name(old) == "trades-awp"


def test_settings_resolve_to_each_method_s_defaults():
    sam = TrainConfig(method="trades-sam").resolved()
    assert (sam.rho, sam.gamma, sam.awp_warmup) == (0.05, None, 0)
    assert TrainConfig(method="at-asam").perturbation_config == ASAMConfig(rho=0.5, eta=0.01)
    assert TrainConfig(method="at-rwp").perturbation_config == RWPConfig(
        gamma=0.01, c_min=1.7, steps=10, warmup=0
    )
    # RWP's TRADES defaults are AWP's (the RWP code's TRADES script: gamma 0.005, warm-up 10).
    assert TrainConfig(method="trades-rwp").perturbation_config == RWPConfig(
        gamma=0.005, c_min=1.7, steps=10, warmup=10
    )
    cfg = TrainConfig(method="at-sam", rho=0.1, awp_warmup=3, ema=True, swa=True, epochs=20)
    assert cfg.perturbation_config == SAMConfig(rho=0.1, warmup=3)
    assert [(a.name, getattr(a, "decay", None) or a.start) for a in cfg.averages] == [
        ("ema", 0.999),
        ("swa", 11),
    ]
    assert cfg.describe() == "AT-SAM (rho 0.1, warm-up 3, EMA decay 0.999, SWA from epoch 11)"


BAD = [
    (dict(method="at-foo"), r"unknown method 'at-foo'; choose one of at, at-awp, at-sam"),
    (dict(method="mart-rwp"), "unknown method 'mart-rwp'; choose one of"),
    (dict(method="mart", weight_method="rwp"), "RWP is defined with at and trades"),
    (dict(weight_method="sgd"), "unknown weight_method 'sgd'; choose one of none, sam"),
    (dict(method="at-sam", awp=True), "AWP and SAM are two weight perturbations"),
    (dict(method="at-sam", rho=0), r"rho=0 must be > 0 \(--rho\)"),
    (dict(method="at-asam", rho=-1), r"rho=-1 is outside \[0, inf\] \(--rho\)"),
    (dict(method="at-rwp", gamma=0), r"gamma=0 must be > 0 \(--gamma\)"),
    (dict(rho=0.05), r"rho=0.05 \(--rho\) is a setting of SAM and ASAM, which method at does"),
    (dict(method="at-sam", gamma=0.01), r"gamma=0.01 \(--gamma\) is a setting of AWP and RWP"),
    (dict(method="at-awp", c_min=1.0), r"c_min=1.0 \(--c-min\) is a setting of RWP"),
    (dict(method="at-sam", rwp_steps=3), r"rwp_steps=3 \(--rwp-steps\) is a setting of RWP"),
    (dict(method="at-asam", awp_steps=2), r"awp_steps=2 \(--awp-steps\) is a setting of AWP"),
    (dict(method="at-rwp", awp_alternations=2), r"awp_alternations=2 .* setting of AWP"),
    (dict(ema_decay=0.99), r"ema_decay=0.99 \(--ema-decay\) .* EMA average.*add --ema"),
    (dict(ema=True, ema_decay=1.0), r"ema_decay=1.0 must be in \(0, 1\)"),
    (dict(ema=True, ema_decay=0.0), r"ema_decay=0.0 must be in \(0, 1\)"),
    (dict(swa_start=3), r"swa_start=3 \(--swa-start\) .* SWA average.*add --swa"),
    (dict(swa=True, swa_start=11, epochs=10), r"swa_start=11 \(--swa-start\) is after the last"),
]


@pytest.mark.parametrize(("kwargs", "match"), BAD, ids=[str(k) for k, _ in BAD])
def test_bad_method_settings_are_one_clear_line(kwargs, match):
    with pytest.raises(ValueError, match=match) as err:
        TrainConfig(**kwargs)
    assert "\n" not in str(err.value)


def test_what_stays_accepted():
    # A config.json of a plain run that carries AWP's gamma (the command line refuses --gamma
    # without --awp; files written so still load), SWA from the last epoch, AWP at gamma 0.
    assert TrainConfig(gamma=0.01).perturbation_config is None
    assert TrainConfig(swa=True, swa_start=10, epochs=10).averages[0].start == 10
    assert not TrainConfig(awp=True, gamma=0.0).perturbation_config.active
    assert dataclasses.replace(TrainConfig(method="at-sam"), method="trades").describe() == (
        "TRADES-SAM (rho 0.05, beta 6)"
    )


def test_mart_has_no_per_example_objective_and_rwp_needs_one():
    model, x, y = _setup()
    with pytest.raises(ValueError, match="RWP needs the per-example objective"):
        _ours(model, x, y, RWPConfig())
    assert mart_objective is not None and TrainConfig(method="at-sam").per_example_objective is None
