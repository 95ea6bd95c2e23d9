import pytest
import torch
import torch.nn.functional as F

from awp.attacks import cw_margin_per_example, fgsm, pgd, run_attack
from awp.config import AttackConfig, parse_number
from awp.modes import frozen_bn_stats
from tests.helpers import assert_same_state, snapshot, tiny_batch, tiny_model

EPS = 8 / 255


@pytest.mark.parametrize("norm,eps", [("linf", EPS), ("l2", 0.5)])
@pytest.mark.parametrize("start", ["uniform", "gaussian", "none"])
def test_pgd_stays_in_ball_and_box(norm, eps, start):
    model = tiny_model()
    x, y = tiny_batch()
    x_adv = pgd(
        model,
        x,
        y,
        eps=eps,
        step_size=eps / 4,
        steps=5,
        norm=norm,
        random_start=start,
        generator=torch.Generator().manual_seed(0),
    )
    assert x_adv.shape == x.shape and not x_adv.requires_grad
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    delta = (x_adv - x).flatten(1)
    if norm == "linf":
        assert delta.abs().max() <= eps + 1e-6
    else:
        assert (delta.norm(dim=1) <= eps + 1e-5).all()
    # Something moved (the attack is not a no-op).
    assert delta.abs().max() > eps / 8


@pytest.mark.parametrize("norm,eps", [("linf", EPS), ("l2", 0.5)])
def test_pgd_raises_the_loss(norm, eps):
    model = tiny_model().eval()
    x, y = tiny_batch(n=32)
    x_adv = pgd(
        model,
        x,
        y,
        eps=eps,
        step_size=eps / 4,
        steps=10,
        norm=norm,
        generator=torch.Generator().manual_seed(0),
    )
    with torch.no_grad():
        clean = F.cross_entropy(model(x), y, reduction="none")
        adv = F.cross_entropy(model(x_adv), y, reduction="none")
    assert adv.mean() > clean.mean()
    assert (adv >= clean - 1e-4).float().mean() > 0.9


def test_no_parameter_gradient_is_computed_or_left():
    model = tiny_model()
    x, y = tiny_batch()
    fired = []
    handles = [p.register_hook(lambda g, n=n: fired.append(n)) for n, p in model.named_parameters()]
    pgd(model, x, y, eps=EPS, step_size=EPS / 4, steps=3)
    for h in handles:
        h.remove()
    assert fired == []  # no parameter gradient was even computed
    assert all(p.grad is None for p in model.parameters())
    # Gradients that exist before an attack are left exactly as they were.
    F.cross_entropy(model(x), y).backward()
    grads = [p.grad.clone() for p in model.parameters()]
    pgd(model, x, y, eps=EPS, step_size=EPS / 4, steps=3)
    assert all(torch.equal(g, p.grad) for g, p in zip(grads, model.parameters()))


@pytest.mark.parametrize("caller_mode", [True, False])
@pytest.mark.parametrize("attack_mode", ["train", "eval"])
def test_mode_and_buffers_restored(caller_mode, attack_mode):
    model = tiny_model()
    model.train(caller_mode)
    model.bn2.eval()  # a mixed-mode model comes back mixed
    modes = [m.training for m in model.modules()]
    snap = snapshot(model)
    x, y = tiny_batch()
    pgd(model, x, y, eps=EPS, step_size=EPS / 4, steps=3, mode=attack_mode)
    assert [m.training for m in model.modules()] == modes
    assert_same_state(model, snap)  # BatchNorm running stats did not move, even in train mode


def test_attack_mode_changes_the_result():
    model = tiny_model()
    x, y = tiny_batch()
    a = pgd(model, x, y, eps=EPS, step_size=EPS / 4, steps=3, mode="train", random_start="none")
    b = pgd(model, x, y, eps=EPS, step_size=EPS / 4, steps=3, mode="eval", random_start="none")
    assert not torch.equal(a, b)


def test_frozen_bn_uses_batch_stats_in_train_mode():
    model = tiny_model().train()
    x, _ = tiny_batch()
    with torch.no_grad():
        expected = model(x)  # updates stats, but uses batch statistics for the output
    model2 = tiny_model().train()
    snap = snapshot(model2)
    with torch.no_grad(), frozen_bn_stats(model2):
        got = model2(x)
    assert torch.allclose(expected, got)
    assert_same_state(model2, snap)


def test_seeded_attack_is_reproducible():
    model = tiny_model()
    x, y = tiny_batch()
    kw = dict(eps=EPS, step_size=EPS / 4, steps=3)
    a = pgd(model, x, y, generator=torch.Generator().manual_seed(3), **kw)
    b = pgd(model, x, y, generator=torch.Generator().manual_seed(3), **kw)
    c = pgd(model, x, y, generator=torch.Generator().manual_seed(4), **kw)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_restarts_keep_the_worst_case():
    model = tiny_model().eval()
    x, y = tiny_batch(n=32)
    kw = dict(eps=EPS, step_size=EPS / 4, steps=2)
    one = pgd(model, x, y, restarts=1, generator=torch.Generator().manual_seed(0), **kw)
    many = pgd(model, x, y, restarts=4, generator=torch.Generator().manual_seed(0), **kw)
    with torch.no_grad():
        wrong_one = model(one).argmax(1) != y
        wrong_many = model(many).argmax(1) != y
    # every example fooled by the first restart is still fooled
    assert (wrong_many | ~wrong_one).all()


def test_fgsm_is_one_signed_step():
    model = tiny_model().eval()
    x, y = tiny_batch()
    x_adv = fgsm(model, x, y, eps=EPS)
    x_ref = x.clone().requires_grad_(True)
    F.cross_entropy(model(x_ref), y, reduction="sum").backward()
    expected = (x + EPS * x_ref.grad.sign()).clamp(0, 1)
    assert torch.allclose(x_adv, expected)


def test_cw_margin_against_loop():
    logits = torch.tensor([[2.0, 1.0, 0.5], [0.1, 3.0, -1.0]])
    y = torch.tensor([0, 2])
    got = cw_margin_per_example(logits, y, kappa=50)
    assert torch.allclose(got, torch.tensor([1.0 - 2.0, 3.0 - (-1.0)]))
    assert torch.allclose(cw_margin_per_example(logits, y, kappa=0.5)[1], torch.tensor(0.5))


def test_run_attack_dispatch_and_config_validation():
    model = tiny_model().eval()
    x, y = tiny_batch()
    cfg = AttackConfig(name="cw", steps=3)
    x_adv = run_attack(model, x, y, cfg, generator=torch.Generator().manual_seed(0))
    assert (x_adv - x).abs().max() <= cfg.eps + 1e-6
    with pytest.raises(ValueError, match="8/255"):
        AttackConfig(eps=8)
    with pytest.raises(ValueError, match="unknown attack"):
        AttackConfig(name="pgdx")
    assert AttackConfig(eps=parse_number("8/255")).eps == pytest.approx(8 / 255)
    with pytest.raises(ValueError, match="cannot read"):
        parse_number("8/x")
