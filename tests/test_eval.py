"""Evaluation: the cascade against every attack on every point, AutoAttack, the eval CLI."""

import json
import re
import sys

import pytest
import torch
import torch.nn.functional as F

from awp.attacks import run_attack
from awp.config import AttackConfig
from awp.evaluate import (
    AA_IMPLEMENTATIONS,
    AutoAttackConfig,
    EvalConfig,
    attack_outcomes,
    autoattack,
    evaluate_robustness,
    require_autoattack,
)
from awp.extras import MissingDependencyError
from awp_landscape.cli import main
from tests.helpers import assert_same_state, snapshot, tiny_batch, tiny_model

EPS = 3 / 255


def deterministic_attacks(norm="linf", eps=EPS):
    step = eps / 4
    return {
        "natural": None,
        "fgsm": AttackConfig(name="fgsm", norm=norm, eps=eps, step_size=eps, random_start="none"),
        "pgd20": AttackConfig(
            name="pgd", norm=norm, eps=eps, step_size=step, steps=6, random_start="none"
        ),
        "cw20": AttackConfig(
            name="cw", norm=norm, eps=eps, step_size=step, steps=6, random_start="none"
        ),
    }


def reference_masks(model, x, y, attacks):
    """Every attack on every point, one batch, then the running AND written out."""
    masks, running = [], torch.ones(len(y), dtype=torch.bool)
    for attack in attacks.values():
        xa = x if attack is None else run_attack(model, x, y, attack)
        with torch.no_grad():
            running = running & (model(xa).argmax(1) == y)
        masks.append(running.clone())
    return masks


@pytest.fixture(scope="module")
def fitted():
    """A float64 tiny model that memorized 32 random images: right on most, easily attacked."""
    model = tiny_model(dtype=torch.float64)
    x, y = tiny_batch(n=32, seed=3, dtype=torch.float64)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(40):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval(), x, y


@pytest.mark.parametrize("norm, eps", [("linf", 4 / 255), ("l2", 0.5)])
def test_cascade_equals_every_attack_on_every_point(fitted, norm, eps):
    # float64 and deterministic starts: a point's outcome does not depend on its batch-mates.
    model, x, y = fitted
    attacks = deterministic_attacks(norm, eps)
    cascade = evaluate_robustness(model, x, y, attacks, batch_size=7, cascade=True)
    full = evaluate_robustness(model, x, y, attacks, batch_size=7, cascade=False)
    ref = reference_masks(model, x, y, attacks)
    assert torch.equal(cascade.robust, full.robust) and torch.equal(cascade.robust, ref[-1])
    accs = [int(m.sum()) / len(m) for m in ref]
    assert [r.accuracy for r in cascade.rows] == [r.accuracy for r in full.rows] == accs
    # The numbers are not trivial: the attacks break some points but not all.
    assert accs[0] > accs[1] > 0 and accs[-1] > 0
    # A cascade attacks only the points still robust; the full run attacks all of them.
    assert [r.attacked for r in cascade.rows] == [32] + [round(a * 32) for a in accs[:-1]]
    assert [r.attacked for r in full.rows] == [32] * 4
    assert all(r.accuracy_alone is None for r in cascade.rows)
    alone = [r.accuracy_alone for r in full.rows]
    assert alone[0] == accs[0] and all(a >= c for a, c in zip(alone, accs))
    assert cascade.robust_accuracy == accs[-1]


def test_evaluation_leaves_model_untouched_and_reports_progress():
    model = tiny_model().train()
    snap = snapshot(model)
    x, y = tiny_batch(n=20)
    seen = []
    evaluate_robustness(
        model,
        (x * 255).round().to(torch.uint8),  # uint8 images are accepted
        y,
        deterministic_attacks(),
        batch_size=8,
        on_batch=lambda name, done, total: seen.append((name, done, total)),
    )
    assert_same_state(model, snap)
    assert model.training and all(p.grad is None for p in model.parameters())
    assert seen[0] == ("natural", 8, 20) and seen[2] == ("natural", 20, 20)
    assert {name for name, _, _ in seen} <= {"natural", "fgsm", "pgd20", "cw20"}


def test_random_start_attacks_are_seeded():
    model = tiny_model().eval()
    x, y = tiny_batch(n=16)
    pgd = {"pgd": AttackConfig(steps=3, eps=EPS, step_size=EPS / 2)}
    a = evaluate_robustness(model, x, y, pgd, seed=4)
    b = evaluate_robustness(model, x, y, pgd, seed=4)
    assert torch.equal(a.robust, b.robust)
    assert torch.equal(
        attack_outcomes(model, x, y, pgd["pgd"], seed=1).correct,
        attack_outcomes(model, x, y, pgd["pgd"], seed=1).correct,
    )


def test_eval_config_defaults_and_errors():
    cfg = EvalConfig()
    table = cfg.attack_table()
    assert list(table) == ["natural", "pgd20", "cw20"] and table["natural"] is None
    assert table["pgd20"].steps == 20 and table["pgd20"].step_size == pytest.approx(2 / 255)
    assert table["pgd20"].mode == "eval" and table["cw20"].name == "cw"
    l2 = EvalConfig(norm="l2", attacks=("fgsm", "autoattack"), restarts=3).attack_table()
    assert l2["fgsm"].eps == 0.5 and l2["autoattack"] == AutoAttackConfig(norm="l2", eps=0.5)
    assert EvalConfig(attacks=("pgd20",), restarts=3).attack_table()["pgd20"].restarts == 3
    with pytest.raises(ValueError, match="unknown attacks.*apgd"):
        EvalConfig(attacks=("apgd",))
    with pytest.raises(ValueError, match="8/255"):
        EvalConfig(eps=8)
    with pytest.raises(ValueError, match="split"):
        EvalConfig(split="holdout")


@pytest.mark.parametrize(
    "implementation, package", [("original", "pyautoattack"), ("torchattacks", "torchattacks")]
)
def test_missing_autoattack_says_how_to_install(
    monkeypatch, tmp_path, capsys, implementation, package
):
    monkeypatch.setitem(sys.modules, package, None)  # as if it were not installed
    with pytest.raises(MissingDependencyError, match=r"pip install 'awp-landscape\[autoattack\]'"):
        require_autoattack(implementation)
    model = tiny_model().eval()
    x, y = tiny_batch(n=4)
    with pytest.raises(MissingDependencyError, match=package):
        autoattack(model, x, y, implementation=implementation)
    flags = ["--attacks", "natural", "autoattack", "--aa-implementation", implementation]
    code = main(["eval", str(tmp_path / "any.pt"), *flags])
    assert code == 2
    err = capsys.readouterr().err
    assert "pip install 'awp-landscape[autoattack]'" in err and package in err
    assert not (tmp_path / "analysis" / "eval_any_test.json").exists()


def memorized_4class(n=8):
    model = tiny_model(num_classes=4)  # AutoAttack's targeted DLR loss needs 4 classes
    x, y = tiny_batch(n=n, seed=1, classes=4)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(40):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    opt.zero_grad()  # .grad back to None, so "no .grad written" is a real check
    return model, x, y


def test_autoattack_through_torchattacks():
    pytest.importorskip("torchattacks")
    model, x, y = memorized_4class()
    model.train()
    snap = snapshot(model)
    # A large radius: APGD-CE breaks every point, so the later attacks have nothing to do.
    eps = 0.25
    x_adv = autoattack(model, x, y, eps=eps, seed=0, implementation="torchattacks")
    assert (x_adv - x).abs().max() <= eps + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    assert_same_state(model, snap)
    assert model.training and all(p.grad is None for p in model.parameters())
    attacks = {
        "natural": None,
        "autoattack": AutoAttackConfig(eps=eps, implementation="torchattacks"),
    }
    report = evaluate_robustness(model, x, y, attacks, batch_size=6)
    assert report.rows[0].accuracy > 0 and report.robust_accuracy == 0
    assert report.rows[1].attacked == round(report.rows[0].accuracy * len(y))
    with pytest.raises(ValueError, match="at least 4 classes"):
        autoattack(tiny_model(num_classes=3), x, y % 3)


@pytest.mark.slow
def test_autoattack_is_at_least_as_strong_as_pgd20():
    """Minutes on a CPU: Square's 5000 queries run on every point still robust."""
    pytest.importorskip("torchattacks")
    model, x, y = memorized_4class(n=16)
    model.eval()
    eps = 8 / 255
    pgd = evaluate_robustness(model, x, y, EvalConfig(eps=eps, attacks=("pgd20",)).attack_table())
    for implementation in AA_IMPLEMENTATIONS:
        aa = AutoAttackConfig(eps=eps, implementation=implementation)
        assert evaluate_robustness(model, x, y, {"aa": aa}).robust_accuracy <= pgd.robust_accuracy


def memorized_10class(n: int, seed: int):
    """A 10-class tiny model that memorized n random images (AutoAttack's standard targets the
    top 9 other classes)."""
    model = tiny_model(seed=seed, num_classes=10, channels=8)
    x, y = tiny_batch(n=n, seed=seed + 1, classes=10)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(60):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    opt.zero_grad()
    return model.eval(), x, y


def test_original_autoattack_leaves_everything_as_it_was():
    pytest.importorskip("pyautoattack")
    model, x, y = memorized_4class()
    model.train()
    snap, rng = snapshot(model), torch.get_rng_state()
    log: list[str] = []
    eps = 0.25  # APGD-CE breaks every point
    x_adv = autoattack(model, x, y, eps=eps, seed=0, log=log)
    assert (x_adv - x).abs().max() <= eps + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    assert_same_state(model, snap)
    assert model.training and all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.get_rng_state(), rng)  # its sub-attacks reseed the global RNG
    assert any(line.startswith("robust accuracy after APGD-CE") for line in log)
    with torch.no_grad():
        assert (model.eval()(x_adv).argmax(1) != y).all()


def _percent(line: str) -> float:
    return float(re.search(r"([\d.]+)%", line).group(1))


def test_the_cascade_counts_what_autoattack_itself_reports():
    """Our cascade's AutoAttack row against AutoAttack's own log: the points it started from,
    what each sub-attack broke, and the robust accuracy it reports (one call of AutoAttack:
    Square's 5000 queries make each call cost seconds)."""
    pytest.importorskip("pyautoattack")
    model, x, y = memorized_10class(16, seed=1)
    attacks = {"pgd": AttackConfig(eps=1 / 255, step_size=0.5 / 255, steps=3), "aa": None}
    attacks["aa"] = AutoAttackConfig(eps=8 / 255)
    report = evaluate_robustness(model, x, y, attacks, batch_size=16)
    pgd_row, aa_row = report.rows
    assert aa_row.attacked == round(pgd_row.accuracy * len(y))  # the points still robust
    subs = aa_row.sub_attacks
    assert [a.name for a in subs] == ["apgd-ce", "apgd-t", "fab-t", "square"]
    # AutoAttack's clean check found right every point it was given (PGD-3 left them right)
    assert subs[0].attacked == aa_row.attacked
    for before, after in zip(subs, subs[1:]):
        assert after.attacked == before.attacked - before.broken
    broken = sum(a.broken for a in subs)
    assert broken > 0  # something to account for
    assert round(aa_row.accuracy * len(y)) == aa_row.attacked - broken
    # AutoAttack's own "robust accuracy: p%" of the points it was given
    (initial,) = [line for line in aa_row.log if line.startswith("initial accuracy")]
    assert _percent(initial) == 100.0
    (final,) = [line for line in aa_row.log if line.startswith("robust accuracy:")]
    still = round(_percent(final) * aa_row.attacked / 100)
    assert still == round(aa_row.accuracy * len(y)) == int(report.robust.sum())


@pytest.mark.slow  # 7 s: a second whole AutoAttack; torchattacks' implementation runs through
# the same cascade in test_autoattack_through_torchattacks (default suite)
def test_torchattacks_autoattack_finds_the_robust_points_the_original_does():
    """torchattacks' reimplementation finds the same robust points as the original AutoAttack
    (benchmarks/autoattack.py measured the same on 3 models at 2 radii)."""
    pytest.importorskip("pyautoattack")
    pytest.importorskip("torchattacks")
    model, x, y = memorized_10class(16, seed=1)
    pgd = AttackConfig(eps=1 / 255, step_size=0.5 / 255, steps=3)
    robust = {
        implementation: evaluate_robustness(
            model, x, y, {"pgd": pgd, "aa": AutoAttackConfig(eps=8 / 255, implementation=impl)},
            batch_size=16,
        ).robust
        for implementation, impl in (("original", "original"), ("torchattacks", "torchattacks"))
    }  # fmt: skip
    assert torch.equal(robust["torchattacks"], robust["original"])


def test_eval_cli_no_cascade_l2_and_subset(tmp_path, capsys):
    from awp.checkpoint import save_checkpoint
    from awp.config import to_dict
    from awp.models import ModelSpec, build_model
    from tests.helpers import make_image_folder

    folder = make_image_folder(tmp_path / "data", n_train=12, n_test=15)
    spec = ModelSpec(name="smallcnn", num_classes=3)
    torch.manual_seed(0)
    path = save_checkpoint(
        tmp_path / "m.pt",
        model=build_model(spec),
        model_spec=to_dict(spec),
        config={"data": {"dataset": str(folder), "val_size": 0}},
    )
    args = [
        "eval",
        str(path),
        "--device",
        "cpu",
        "--no-progress",
        "--n-examples",
        "10",
        "--seed",
        "2",
    ]
    args += ["--norm", "l2", "--attacks", "natural", "fgsm", "pgd20", "--no-cascade"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "PGD-20 l2 eps=0.5" in out and "alone" in out and "n=10" in out
    res = json.loads((tmp_path / "analysis" / "eval_m_test.json").read_text())  # <run>/analysis
    assert res["n"] == 10 and res["cascade"] is False and res["input"] == "normalized"
    assert [r["attacked"] for r in res["results"]] == [10, 10, 10]
    assert all(r["accuracy_alone"] is not None for r in res["results"])
    assert res["robust_accuracy"] == res["results"][-1]["accuracy"]
    assert res["eval_config"]["norm"] == "l2" and res["weights"]["sha256"]
    assert main(["eval", str(path), "--attacks", "bogus", "--device", "cpu"]) == 2
    assert "bogus" in capsys.readouterr().err

    # The same evaluation again may replace the file; other settings may not (without
    # --overwrite), and the earlier results stay as they were.
    results = tmp_path / "analysis" / "eval_m_test.json"
    assert main(args) == 0
    before = results.read_text()
    other = [a if a != "l2" else "linf" for a in args]
    other[other.index("--attacks") + 1 : other.index("--no-cascade")] = ["natural", "fgsm"]
    assert main(other) == 2
    err = capsys.readouterr().err
    assert "other evaluation settings" in err and "--out" in err and "--overwrite" in err
    assert results.read_text() == before
    assert main([*other, "--out", str(tmp_path / "linf.json")]) == 0
    assert json.loads((tmp_path / "linf.json").read_text())["eval_config"]["norm"] == "linf"
    assert main([*other, "--overwrite"]) == 0
    assert json.loads(results.read_text())["eval_config"]["norm"] == "linf"
    (tmp_path / "notes.json").write_text("my notes")
    assert main([*args, "--out", str(tmp_path / "notes.json")]) == 2
    assert "not an `awp eval` results file" in capsys.readouterr().err
    assert (tmp_path / "notes.json").read_text() == "my notes"


def test_attack_outcomes_is_the_plain_batch_loop():
    """The one attack-and-evaluate loop against the loop written out here: the same random
    starts batch after batch, eval-mode logits, per-example CE and the batch sums."""
    model = tiny_model()  # in train mode: the loop must evaluate in eval mode anyway
    snap = snapshot(model)
    x, y = tiny_batch(n=10)
    attack = AttackConfig(steps=3, eps=EPS, step_size=EPS / 2)
    gen = torch.Generator().manual_seed(5)
    correct, losses, advs, loss_sum = [], [], [], 0.0
    for s in range(0, 10, 4):
        xb, yb = x[s : s + 4], y[s : s + 4]
        xa = run_attack(model, xb, yb, attack, generator=gen)
        model.eval()
        with torch.no_grad():
            logits = model(xa)
        model.train()
        correct.append(logits.argmax(1) == yb)
        losses.append(F.cross_entropy(logits, yb, reduction="none").double())
        loss_sum += float(F.cross_entropy(logits, yb, reduction="sum"))
        advs.append(xa)
    out = attack_outcomes(model, x, y, attack, batch_size=4, seed=5, keep_adv=True)
    assert torch.equal(out.correct, torch.cat(correct)) and torch.equal(out.loss, torch.cat(losses))
    assert out.loss_sum == loss_sum and torch.equal(out.x_adv, torch.cat(advs))
    assert out.n == 10 and out.errors == int((~torch.cat(correct)).sum())
    assert_same_state(model, snap)
    assert model.training and all(p.grad is None for p in model.parameters())
    # uint8 images are the same images in [0, 1]
    x8 = (x * 255).round().to(torch.uint8)
    a = attack_outcomes(model, x8, y, None, batch_size=4)
    b = attack_outcomes(model, x8.float() / 255, y, None, batch_size=4)
    assert torch.equal(a.loss, b.loss)


def test_channels_last_on_the_cpu_gives_the_same_evaluation_and_restores_the_layout():
    """`awp eval` runs its own attacks in channels_last on the CPU (awp.modes.cpu_channels_last):
    the same per-example outcomes, the weights back in their layout afterwards."""
    from awp.modes import cpu_channels_last

    model = tiny_model(3).eval()
    x, y = tiny_batch(n=32)
    attacks = {"pgd": AttackConfig(steps=5, eps=EPS, step_size=EPS / 4)}
    plain = evaluate_robustness(model, x, y, attacks, seed=2)
    with cpu_channels_last(model) as m:
        assert not m.conv1.weight.is_contiguous()  # really the other layout
        fast = evaluate_robustness(m, x, y, attacks, seed=2)
    assert model.conv1.weight.is_contiguous()
    assert torch.equal(plain.robust, fast.robust)
    assert [r.accuracy for r in plain.rows] == [r.accuracy for r in fast.rows]
