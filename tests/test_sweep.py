"""The gamma sweep on a tiny model: one run per gamma, its measures, figures, and reuse."""

import json

import pytest

from awp_landscape.cli import main
from awp_landscape.sweep import summarize
from tests.browser import open_in_chromium, require_browser
from tests.helpers import make_image_folder

TINY = ["--model", "smallcnn", "--width", "1", "--epochs", "2", "--batch-size", "16",
        "--val-size", "8", "--train-size", "0", "--eval-n-train", "8", "--eval-n-test", "8",
        "--eval-steps", "1", "--eval-every", "1", "--save-every", "2", "--eval-n", "8",
        "--gap-n", "8", "--analysis-steps", "1", "--flatness-n", "8", "--flatness-samples", "1",
        "--worst-steps", "1", "--sharpness-n", "8", "--sharpness-m", "4",
        "--sharpness-steps", "1", "--sharpness-draws", "1", "--no-progress",
        "--device", "cpu"]  # fmt: skip


def test_a_sweep_writes_one_run_per_gamma_its_table_and_figures(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("AWP_CACHE", str(tmp_path / "cache"))
    data = make_image_folder(tmp_path / "data", n_train=40, n_test=16)
    out = tmp_path / "sweep"
    args = ["sweep", "--out", str(out), "--dataset", str(data), *TINY]
    assert main([*args, "--gammas", "0", "0.01"]) == 0
    for g in ("gamma_0", "gamma_0.01"):
        assert (out / "seed0" / g / "checkpoints" / "last.pt").exists()
        assert (out / "seed0" / "eval" / f"{g}_last.json").exists()
    cfg0 = json.loads((out / "seed0" / "gamma_0" / "config.json").read_text())
    cfg1 = json.loads((out / "seed0" / "gamma_0.01" / "config.json").read_text())
    assert not cfg0["awp"] and cfg1["awp"] and cfg1["gamma"] == 0.01
    result = json.loads((out / "sweep.json").read_text())
    assert [r["gamma"] for r in result["rows"]] == [0.0, 0.01]
    assert all(r["note"] == "no interval with 1 seed(s)" for r in result["summary"])
    for fig in ("sweep_tradeoff.png", "sweep_gap_flatness.png"):
        assert (out / fig).read_bytes()[:4] == b"\x89PNG"
    # One more gamma reuses the two finished runs (their checkpoints are not rewritten).
    stamp = (out / "seed0" / "gamma_0" / "checkpoints" / "last.pt").stat().st_mtime_ns
    assert main([*args, "--gammas", "0", "0.01", "0.02"]) == 0
    assert (out / "seed0" / "gamma_0" / "checkpoints" / "last.pt").stat().st_mtime_ns == stamp
    assert len(json.loads((out / "sweep.json").read_text())["rows"]) == 3
    # the report of the sweep folder: its section, both figures decoded in a real browser
    assert main(["report", str(out)]) == 0
    html = (out / "report.html").read_text()
    assert "gamma trade-off (sweep over 3 gammas)" in html
    require_browser()
    check = open_in_chromium(out / "report.html")
    assert check.images == 2 and check.broken == [] and check.console_errors == []
    # other training settings in the same folder are refused
    other = [a if a != "2" else "3" for a in args]
    assert main([*other, "--gammas", "0"]) == 2
    assert "other settings" in capsys.readouterr().err


def test_the_summary_gives_intervals_from_three_seeds():
    rows = [
        {"gamma": 0.0, "seed": s, "robust accuracy (last)": v}
        for s, v in enumerate([0.2, 0.22, 0.21])
    ] + [{"gamma": 0.01, "seed": 0, "robust accuracy (last)": 0.25}]
    summary = {(r["gamma"], r["measure"]): r for r in summarize(rows)}
    three = summary[(0.0, "robust accuracy (last)")]
    assert three["n"] == 3 and three["mean"] == pytest.approx(0.21)
    assert three["low"] < 0.21 < three["high"]
    assert summary[(0.01, "robust accuracy (last)")]["low"] is None


def test_a_grid_trains_one_folder_per_point_and_reuses_them_when_it_grows(
    tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("AWP_CACHE", str(tmp_path / "cache"))
    data = make_image_folder(tmp_path / "data", n_train=40, n_test=16)
    out = tmp_path / "sweep"
    tiny = [*TINY, "--landscape-points", "3", "--landscape-n", "8"]
    args = ["sweep", "--out", str(out), "--dataset", str(data), *tiny, "--gammas", "0", "0.01"]
    # epochs=2 is the flags' own value: that point is the sweep folder itself
    assert main([*args, "--grid", "epochs=2,1"]) == 0
    for point in (out, out / "epochs=1"):
        for g in ("gamma_0", "gamma_0.01"):
            assert (point / "seed0" / g / "checkpoints" / "last.pt").exists()
    assert (
        json.loads((out / "epochs=1" / "seed0" / "gamma_0" / "config.json").read_text())["epochs"]
        == 1
    )
    result = json.loads((out / "sweep.json").read_text())
    assert result["points"] == ["", "epochs=1"]
    assert sorted((r["point"], r["epochs"], r["gamma"]) for r in result["rows"]) == [
        ("", 2, 0.0), ("", 2, 0.01), ("epochs=1", 1, 0.0), ("epochs=1", 1, 0.01)
    ]  # fmt: skip
    row = result["rows"][0]
    for m in ("landscape sharpness (last)", "deepest conv mean |w| (last)",
              "train robust accuracy (last epoch)", "seconds per run"):  # fmt: skip
        assert isinstance(row[m], float), m
    # AT-AWP minus AT, seed by seed, per point (one seed: no interval)
    pairs = {(p["point"], p["measure"]): p for p in result["paired"]}
    gap = pairs[("epochs=1", "robust gap (last)")]
    rows = {(r["point"], r["gamma"]): r for r in result["rows"]}
    expect = (
        rows[("epochs=1", 0.01)]["robust gap (last)"] - rows[("epochs=1", 0.0)]["robust gap (last)"]
    )
    assert gap["mean_diff"] == pytest.approx(expect) and gap["t_low"] is None
    # A grown grid (a new field whose values include the flags' own) reuses every finished run.
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("last.pt")}
    assert main([*args, "--grid", "epochs=2,1", "batch_size=16,8"]) == 0
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())
    assert (
        out / "batch_size=8,epochs=1" / "seed0" / "gamma_0" / "checkpoints" / "last.pt"
    ).exists()
    # A call with a smaller grid keeps the rows of the earlier ones (the summary never shrinks).
    assert main([*args, "--grid", "epochs=1"]) == 0
    result = json.loads((out / "sweep.json").read_text())
    assert len(result["rows"]) == 8 and len(result["points"]) == 4
    assert "kept 6 row(s) of earlier calls" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("grid", "message"),
    [
        ("widht=0.5", "unknown field 'widht'"),
        ("epochs=ten", "invalid integer value: 'ten'"),
        ("width=0.5,big", "--width: not a number: 'big'"),
        ("augment=maybe", "expected true or false"),
        ("gamma=0.01", "vary gamma with --gammas"),
        ("epochs", "write NAME=V1,V2"),
        ("epochs=0", "epochs=0 is outside [1, 100000] (--epochs)"),
    ],
)
def test_the_grid_refuses_unknown_fields_and_wrong_values_in_one_line(
    tmp_path, capsys, grid, message
):
    out = tmp_path / "sweep"
    assert main(["sweep", "--out", str(out), "--grid", grid]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not out.exists()


def test_the_regime_table_reports_at_overfitting_and_paired_differences():
    from awp_landscape.sweep import paired, regime_table

    rows = []
    for s, (gap_at, gap_awp) in enumerate([(0.5, 0.2), (0.6, 0.25), (0.55, 0.3)]):
        base = {"point": "epochs=60", "seed": s, "seconds per run": 100.0}
        at = {"train robust accuracy (last epoch)": 0.9, "robust accuracy (best)": 0.22}
        rows.append({**base, **at, "gamma": 0.0, "robust gap (last)": gap_at})
        rows.append({**base, "gamma": 0.02, "robust gap (last)": gap_awp})
    table = regime_table(rows, paired(rows))
    header, rule, row = table.strip().splitlines()
    assert header.count("|") == row.count("|") == rule.count("|")
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[:3] == ["epochs=60", "0.02", "3"]
    assert cells[3] == "0.9 (0.9, 0.9, 0.9)" and cells[5].startswith("0.22")
    assert cells[7].startswith("**-0.3 [") and cells[7].endswith("]**")  # resolved: bold
    assert cells[-1] == "200"  # AT and AT-AWP of a seed


def test_a_grid_of_methods_compares_each_with_at_and_ranks_the_measures(
    tmp_path, capsys, monkeypatch
):
    """--grid method=at,at-sam,at+ema --gammas 0: each method trained by name (at+ema: AT with
    an EMA of its weights, measured by the EMA's checkpoints); per method its outcomes against
    AT paired by seed, and (--predictors) every checkpoint's flatness measures ranked against
    the robust gap, stratified by seed, in sweep.json and sweep_regime.md."""
    monkeypatch.setenv("AWP_CACHE", str(tmp_path / "cache"))
    data = make_image_folder(tmp_path / "data", n_train=40, n_test=16)
    out = tmp_path / "sweep"
    tiny = [a if a != "2" else "1" for a in TINY]  # one epoch, a checkpoint after it
    args = ["sweep", "--out", str(out), "--dataset", str(data), *tiny, "--gammas", "0",
            "--grid", "method=at,at-sam,at+ema", "--seeds", "0", "1", "2", "--predictors",
            "--hessian-n", "8", "--hessian-probes", "2", "--save-every", "1"]  # fmt: skip
    assert main(args) == 0
    sam = json.loads((out / "method=at-sam" / "seed1" / "gamma_0" / "config.json").read_text())
    assert sam["weight_method"] == "sam" and not sam["awp"]
    ema_run = out / "method=at+ema" / "seed1" / "gamma_0"
    ema = json.loads((ema_run / "config.json").read_text())
    assert ema["method"] == "at" and ema["ema"] and not ema["swa"]
    evaluated = json.loads((ema_run.parent / "eval" / "gamma_0_last.json").read_text())
    assert evaluated["identity"]["checkpoint"] == str(ema_run / "checkpoints/ema/last.pt")
    result = json.loads((out / "sweep.json").read_text())
    methods = {(m["method"], m["outcome"]): m for m in result["methods"]}
    assert set(methods) == {
        (m, o) for m in ("AT-SAM", "AT+EMA") for o in ("best", "last", "gap", "loss_rise")
    }
    last = methods["AT-SAM", "last"]
    rows = {(r["method"], r["seed"]): r for r in result["rows"]}
    assert last["seeds"] == [0, 1, 2] and last["t_low"] is not None
    assert last["mean_diff"] == pytest.approx(
        sum(rows["at-sam", s]["robust accuracy (last)"] - rows["at", s]["robust accuracy (last)"]
            for s in (0, 1, 2)) / 3
    )  # fmt: skip
    for within in ("seed", "seed and checkpoint"):
        ranked = {r["measure"]: r for r in result["rankings"] if r["within"] == within}
        assert {"expected flatness", "worst-case flatness", "adaptive worst-case sharpness",
                "adaptive average sharpness", "top Hessian eigenvalue"} <= set(ranked)  # fmt: skip
        # 3 methods x 3 seeds, one checkpoint each: 3 groups of 3 (one seed, or one seed at
        # epoch 1)
        assert all(r["n"] == 9 and r["strata"] == 3 for r in ranked.values())
    regime = (out / "sweep_regime.md").read_text()
    assert "Each method against AT" in regime
    assert "ranks the robust gap (every method, seed and checkpoint" in regime
    assert "ranks the robust gap (the methods at equal epochs" in regime
