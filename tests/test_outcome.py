"""The single-run statements: each names its evaluation, states its interval or that it has
none, and says "flatter" only where both versions of a flatness agree."""

from __future__ import annotations

from analysis.outcome import Measurements, outcome


def _flat(label, loss, err, low=None, high=None, kind="expected", **kw):
    row = {"label": label, "kind": kind, "flatness_loss": loss, "flatness": err, **kw}
    if low is not None:
        row.update(flatness_low=low, flatness_high=high)
    return row


def _said(**kw) -> str:
    return " ".join(outcome(Measurements(**kw)))


def test_flatter_only_where_loss_and_01_agree_and_intervals_separate():
    same_01 = [_flat("AT", 0.009, 0.00625, 0.0, 0.0125, alpha=0.1),
               _flat("AT-AWP", 0.008, 0.00625, 0.0, 0.0125, alpha=0.1)]  # fmt: skip
    said = _said(flatness=same_01)
    assert "disagree" in said and "flatter" not in said.replace("called flatter", "")
    overlap = [_flat("AT", 0.009, 0.02, 0.01, 0.03, alpha=0.1),
               _flat("AT-AWP", 0.008, 0.01, 0.0, 0.02, alpha=0.1)]  # fmt: skip
    said = _said(flatness=overlap)
    assert "not resolved" in said and "is flatter" not in said
    apart = [_flat("AT", 0.009, 0.05, 0.04, 0.06, alpha=0.1),
             _flat("AT-AWP", 0.008, 0.01, 0.0, 0.02, alpha=0.1)]  # fmt: skip
    assert "AT-AWP is flatter in both versions." in _said(flatness=apart)
    worst = [_flat("AT", 2.1, 0.3, kind="worst", gamma=0.01),
             _flat("AT-AWP", 1.2, 0.4, kind="worst", gamma=0.01)]  # fmt: skip
    said = _said(flatness=worst)
    assert "Worst-case" in said and "disagree" in said


def test_the_accuracy_statement_uses_the_final_evaluation_and_names_it():
    evals = [
        {"file": f"{m}_last.json", "n": 1000, "epoch": 60,
         "results": [{"attack": "pgd20", "accuracy": acc, "accuracy_alone": acc}]}
        for m, acc in (("AT", 0.13), ("AT-AWP", 0.113))
    ]  # fmt: skip
    history = [{"epoch": 60, "test_robust_loss": 2.0, "test_robust_acc": 0.164}]
    said = _said(evals=evals, histories={"AT": history, "AT-AWP": history},
                 per_epoch="PGD-5 per evaluated epoch; 250 test images")  # fmt: skip
    assert "(PGD-20 run alone, 1000 test images): AT 13.0%, AT-AWP 11.3%" in said
    assert "no interval" in said
    assert "AT (PGD-5 per evaluated epoch; 250 test images)" in said  # the curves, labelled


def test_the_deep_layer_statement_counts_every_layer():
    stats = [
        {"label": m, "layer": f"conv{d}", "kind": "conv", "depth": d, "mean_abs": v}
        for d, (a, b) in enumerate([(1.0, 0.9), (1.0, 1.1), (1.0, 1.2)])
        for m, v in (("AT", a), ("AT-AWP", b))
    ]
    said = _said(weights={"stats": stats})
    assert "AT-AWP smaller in 1 of 3 layers, larger in 2" in said
    assert "the deepest (conv2): AT 1, AT-AWP 1.2" in said


def _measure(name, at, awp, seeds=(0,), low=None, high=None):
    return {"measure": name, "mean_at": at, "mean_awp": awp, "mean_diff": awp - at,
            "t_low": low, "t_high": high, "confidence": 0.95, "seeds": list(seeds)}  # fmt: skip


def test_the_one_seed_outcome_table_says_no_interval_once_at_one_precision_per_row():
    from analysis.outcome import outcome_rows

    rows, intervals = outcome_rows([_measure("PGD-20 accuracy", 0.09647, 0.9907),
                                    _measure("loss", 2.0, 1.5)])  # fmt: skip
    assert not intervals  # one seed: no interval or verdict column, said once by the caller
    assert rows[0] == {"measure": "PGD-20 accuracy", "AT": "0.0965", "AT-AWP": "0.9907",
                       "AT-AWP minus AT": "+0.8942"}  # fmt: skip
    assert rows[1]["AT"] == "2.000" and rows[1]["AT-AWP minus AT"] == "-0.500"
    three = [_measure("gap", 0.6, 0.0, (0, 1, 2), -0.75, -0.44), _measure("x", 1.0, 1.0)]
    rows, intervals = outcome_rows(three)
    assert intervals and rows[0]["95% t interval over seeds"] == "[-0.7500, -0.4400]"
    assert rows[0]["verdict"] == "AT-AWP lower" and rows[1]["verdict"] == "1 seed, no interval"


def test_absolute_flatness_equal_to_the_signed_one_is_said_once_not_repeated():
    from awp_landscape.measures.flatness import MEASURE

    fold = MEASURE.fold_over_seeds

    on = " (robust loss increase; PGD-20, 500 train images)"
    absolute = " (mean |robust loss change|; PGD-20, 500 train images)"
    measures = [_measure(f"expected flatness at alpha={a}{on}", 0.01 * a, 0.005 * a)
                for a in (0.05, 0.1, 0.2)]  # fmt: skip
    measures += [_measure(f"expected absolute flatness at alpha={a}{absolute}", 0.01 * a,
                          0.005 * a if a != 0.2 else 0.004) for a in (0.05, 0.1, 0.2)]  # fmt: skip
    kept, (said,) = fold(measures)
    assert [m["measure"].split(" (")[0] for m in kept] == [
        "expected flatness at alpha=0.05", "expected flatness at alpha=0.1",
        "expected flatness at alpha=0.2", "expected absolute flatness at alpha=0.2",
    ]  # fmt: skip
    assert said.startswith(
        "Expected absolute flatness (mean |robust loss change|) equals the "
        "expected flatness at alpha=0.05, 0.1 for both methods: every noise"
    )
    assert fold(kept[3:]) == (kept[3:], [])  # nothing to fold
