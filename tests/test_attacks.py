import json

import pytest
import torch
import torch.nn.functional as F

from awp.attacks import (
    ATTACKS,
    attack_label,
    attack_spec,
    cw_margin_per_example,
    fgsm,
    pgd,
    run_attack,
)
from awp.autoattack import AutoAttackConfig, require_autoattack
from awp.config import FGSM_EVAL, PGD20_EVAL, AttackConfig, parse_number
from awp.extras import MissingDependencyError
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


def test_every_entry_of_the_attack_table_runs_on_a_tiny_model():
    """Each named attack runs through run_attack: in the ball and the box, state untouched,
    FGSM equal to attacks.fgsm, PGD/CW equal to attacks.pgd with the preset's settings."""
    model = tiny_model(num_classes=4)
    x, y = tiny_batch(classes=4)
    snap = snapshot(model)
    for name, spec in ATTACKS.items():
        assert spec.name == name and attack_label(name) == spec.label
        cfg = spec.configured(norm="l2", eps=0.5, step_size=0.2, restarts=2)
        if spec.preset is None:
            assert cfg is None and run_attack(model, x, y, cfg) is x
            continue
        assert cfg.norm == "l2" and cfg.eps == 0.5 and getattr(cfg, "mode", "eval") == "eval"
        if isinstance(cfg, AutoAttackConfig):
            try:
                require_autoattack(cfg.implementation)
            except MissingDependencyError as err:
                with pytest.raises(MissingDependencyError, match="pip install"):
                    run_attack(model, x, y, cfg)
                assert "autoattack" in str(err)
                continue
        x_adv = run_attack(model, x, y, cfg, generator=torch.Generator().manual_seed(0))
        assert x_adv.shape == x.shape and x_adv.min() >= 0 and x_adv.max() <= 1
        assert (x_adv - x).flatten(1).norm(dim=1).max() <= 0.5 + 1e-5
        assert_same_state(model, snap)
        if name == "fgsm":
            assert torch.equal(x_adv, fgsm(model, x, y, eps=0.5, norm="l2"))
        elif name != "autoattack":
            assert cfg.steps == spec.preset.steps and cfg.restarts == 2
            assert cfg.step_size == 0.2
            ref = pgd(
                model,
                x,
                y,
                eps=0.5,
                step_size=0.2,
                steps=cfg.steps,
                norm="l2",
                loss="cw" if name == "cw20" else "ce",
                restarts=2,
                generator=torch.Generator().manual_seed(0),
            )
            assert torch.equal(x_adv, ref)
    assert [attack_label(a) for a in ("natural", "pgd20", "cw20", "autoattack")] == [
        "natural",
        "PGD-20",
        "CW-20",
        "AutoAttack",
    ]
    assert ATTACKS["pgd20"].preset is PGD20_EVAL and ATTACKS["fgsm"].preset is FGSM_EVAL


def test_an_unknown_attack_name_is_a_clear_error_listing_the_known_ones():
    with pytest.raises(ValueError, match="unknown attack 'pgd30'; choose one of natural, fgsm"):
        attack_label("pgd30")
    with pytest.raises(ValueError, match="autoattack"):
        attack_spec("PGD-20")

    class Foreign:
        name = "deepfool"

    with pytest.raises(ValueError, match="no runner for attack 'deepfool'.*pgd, cw"):
        run_attack(tiny_model(), *tiny_batch(), Foreign())


def test_fgsm_attacks_a_loss_it_is_given():
    """run_attack passes TRADES-style losses to FGSM too: minimizing the CE (its negative)
    steps the other way from the default."""
    model = tiny_model().eval()
    x, y = tiny_batch()
    cfg = AttackConfig(name="fgsm", eps=EPS)
    up = run_attack(model, x, y, cfg)
    down = run_attack(
        model, x, y, cfg, loss=lambda logits, t: -F.cross_entropy(logits, t, reduction="none")
    )
    inside = (x > EPS) & (x < 1 - EPS)
    step_up, step_down = (up - x)[inside].sign(), (down - x)[inside].sign()
    assert step_up.abs().sum() > 0 and torch.equal(step_up, -step_down)


def test_the_reports_accuracy_columns_are_the_tables_display_names(tmp_path):
    """The evaluation stage's accuracy_rows names its attack columns with attack_label and
    reads each attack's accuracy from an evaluation file's rows by the table's name."""
    from awp_landscape.measures.evaluate import accuracy_rows
    from awp_landscape.report import Results

    rows = [
        {"attack": "natural", "accuracy": 0.9},
        {"attack": "pgd20", "accuracy": 0.5},
        {"attack": "cw20", "accuracy": 0.45},
    ]
    res = Results(
        root=tmp_path,
        measures={"evaluate": [{"file": "AT-AWP_best.json", "n": 10, "results": rows}]},
    )
    (row,) = accuracy_rows(res)
    assert row["method"] == "AT-AWP" and row["checkpoint"] == "best"
    assert (row["natural"], row["PGD-20"], row["CW-20"]) == (0.9, 0.5, 0.45)
    assert "AutoAttack" in row and row["AutoAttack"] is None


def test_the_accuracy_table_and_the_outcome_give_an_attack_alone(tmp_path):
    """Without a cascade an evaluation file's pgd20 row has "accuracy" (right under natural and
    PGD-20: 0.17) and "accuracy_alone" (0.182, as in a demo of this session): the table and the
    outcome measure both give the attack alone."""
    from awp_landscape.measures.evaluate import MEASURE, accuracy_rows
    from awp_landscape.report import Results

    rows = [
        {"attack": "natural", "accuracy": 0.219, "accuracy_alone": 0.219},
        {"attack": "pgd20", "accuracy": 0.17, "accuracy_alone": 0.182},
    ]
    data = {"file": "AT_best.json", "n": 1000, "results": rows}
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "AT_best.json").write_text(json.dumps(data))
    (row,) = accuracy_rows(Results(root=tmp_path, measures={"evaluate": [data]}))
    assert row["PGD-20"] == 0.182 == MEASURE.pgd20("best")(tmp_path, "AT")
