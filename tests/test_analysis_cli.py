"""awp hist / flatness / gap / correlate end to end on tiny checkpoints; resume; the store."""

import json

import pytest
import torch

from analysis.flatness import FlatnessConfig
from analysis.flatness_units import compute_unit
from analysis.store import SampleStore, StoreMismatch, run_units
from analysis.tables import join_tables, read_table
from awp.checkpoint import save_checkpoint
from awp.config import AttackConfig, to_dict
from awp.data import DataConfig
from awp.io import write_csv
from awp.models import ModelSpec, build_model
from awp.train import TrainConfig
from awp_landscape.cli import build_parser, main
from awp_landscape.inputs import Inputs
from awp_landscape.measures.flatness import FlatnessRequest, flatness_for_checkpoint
from tests.helpers import make_image_folder

FAST = ["--attack-steps", "2", "--no-progress", "--device", "cpu"]


@pytest.fixture(autouse=True)
def _env(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("AWP_CACHE", str(tmp_path_factory.getbasetemp() / "awp_cache"))
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # shared cores: one thread is much faster for tiny models
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two runs (AT, AT-AWP) of SmallCNN on 8x8 images, two checkpoints each."""
    root = tmp_path_factory.mktemp("runs")
    folder = make_image_folder(root / "data", n_train=40, n_test=16)
    paths = {}
    for awp in (False, True):
        run = root / ("at_awp" if awp else "at")
        for epoch in (1, 2):
            torch.manual_seed(10 * awp + epoch)
            spec = ModelSpec(name="smallcnn", num_classes=3, mean=(0.5,) * 3, std=(0.25,) * 3)
            cfg = TrainConfig(
                out=str(run), data=DataConfig(dataset=str(folder), val_size=8), awp=awp
            )
            path = run / "checkpoints" / f"epoch_{epoch:03d}.pt"
            save_checkpoint(
                path, model=build_model(spec), model_spec=to_dict(spec), config=to_dict(cfg),
                epoch=epoch,
            )  # fmt: skip
            paths[("AT-AWP" if awp else "AT", epoch)] = path
    return paths


def test_subcommands_are_registered():
    text = build_parser().format_help()
    assert all(c in text for c in ("hist", "flatness", "gap", "correlate"))


def test_hist_writes_tables_and_figures(runs, tmp_path, capsys):
    out = tmp_path / "hist"
    a, b = str(runs[("AT", 1)]), str(runs[("AT-AWP", 1)])
    assert main(["hist", a, b, "--out", str(out), "--bins", "16"]) == 0
    text = capsys.readouterr().out
    assert "conv2.weight" in text and "ks_statistic" in text and "AT-AWP" in text
    data = json.loads((out / "weights.json").read_text())
    assert data["layers"] == ["conv1.weight", "conv2.weight", "linear.weight"]
    assert len(data["stats"]) == 6 and len(data["comparisons"]) == 3
    assert [c["label"] for c in data["checkpoints"]] == ["AT", "AT-AWP"]
    for name in (
        "weights_stats.csv",
        "weights_compare.csv",
        "weights_hist.png",
        "weights_depth.pdf",
    ):
        assert (out / name).stat().st_size > 0
    # Checkpoints of two runs and no --out: one clear line, nothing written.
    assert main(["hist", a, b]) == 2
    assert "--out" in capsys.readouterr().err
    assert main(["hist", a, "--layers", "layer9", "--out", str(out)]) == 2
    assert "matches no parameter" in capsys.readouterr().err


def _flatness_args(ckpts, *extra):
    return ["flatness", *map(str, ckpts), "--n-examples", "12", "--samples", "2", *FAST, *extra]


def test_flatness_writes_results_in_the_run_folder_and_reruns_nothing(runs, capsys):
    ckpt = runs[("AT", 2)]
    args = _flatness_args(
        [ckpt], "--alphas", "0.1", "0.3", "--worst-case", "--gammas", "0.05", "--ascent-steps", "2"
    )
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "expected flatness" in text and "worst-case flatness" in text
    out = ckpt.parent.parent / "analysis"
    rows = json.loads((out / "flatness.json").read_text())["rows"]
    expected = [r for r in rows if r["kind"] == "expected"]
    assert [r["alpha"] for r in expected] == [0.1, 0.3]
    assert expected[1]["kl"] > 0 and "bound_rebuttal" in expected[1]
    assert [r["gamma"] for r in rows if r["kind"] == "worst"] == [0.05]
    assert expected[0]["method"] == "AT" and expected[0]["sha256"]
    assert (out / "flatness.csv").exists() and (out / "flatness_curve.png").exists()
    (store,) = (out / "flatness").glob("*/samples.rank0.json")
    stamp = store.stat().st_mtime_ns
    assert main(args) == 0  # everything finished: nothing is recomputed or rewritten
    assert store.stat().st_mtime_ns == stamp
    assert json.loads((out / "flatness.json").read_text())["rows"] == rows
    # More samples (without the worst case this time) reuse the finished units.
    done = set(json.loads(store.read_text())["records"])
    assert main(_flatness_args([ckpt], "--alphas", "0.1", "0.3", "--samples", "3")) == 0
    now = set(json.loads(store.read_text())["records"])
    assert done < now and len(now - done) == 2  # one more draw per alpha
    # Other settings are refused, and nothing on disk is lost.
    before = store.read_text()
    assert main(_flatness_args([ckpt], "--alphas", "0.1", "--noise", "element")) == 2
    assert "other settings" in capsys.readouterr().err
    assert store.read_text() == before


def test_resume_after_an_interruption_skips_finished_samples(runs, tmp_path):
    ckpt = runs[("AT-AWP", 1)]
    cfg = FlatnessConfig(
        alphas=(0.2, 0.4), samples=3, n_examples=10, batch_size=4,
        attack=AttackConfig(steps=2, step_size=4 / 255),
    )  # fmt: skip

    def counting(stop_after=None):
        calls = []

        def compute(*args, **kw):
            calls.append(args[3])  # the unit key
            if stop_after is not None and len(calls) > stop_after:
                raise KeyboardInterrupt  # killed while computing this unit
            return compute_unit(*args, **kw)

        return compute, calls

    loaded = Inputs(torch.device("cpu")).load(ckpt)
    request = FlatnessRequest(flatness=cfg)
    killed, first = counting(stop_after=3)
    with pytest.raises(KeyboardInterrupt):
        flatness_for_checkpoint(loaded, request, folder=tmp_path / "a", compute=killed)
    again, calls = counting()
    resumed = flatness_for_checkpoint(loaded, request, folder=tmp_path / "a", compute=again)
    # 1 baseline + 2 alphas x 3 samples = 7 units; 3 were finished before the kill.
    assert len(first) == 4 and len(calls) == 7 - 3
    assert not set(first[:3]) & set(calls) and first[3] in calls
    fresh = flatness_for_checkpoint(loaded, request, folder=tmp_path / "b")
    # Same numbers as an uninterrupted run (as text: an undefined interval is NaN in both).
    assert json.dumps(resumed["rows"]) == json.dumps(fresh["rows"])


def test_gap_then_correlate(runs, tmp_path, capsys):
    ckpts = [str(p) for p in runs.values()]
    out = tmp_path / "res"
    gap_args = ["gap", *ckpts, "--n-train", "12", "--n-test", "12", "--out", str(out), *FAST]
    assert main(gap_args) == 0
    text = capsys.readouterr().out
    assert "train_robust_acc" in text and "AT-AWP" in text
    gap = json.loads((out / "gap.json").read_text())["rows"]
    assert [r["method"] for r in gap] == ["AT", "AT", "AT-AWP", "AT-AWP"]
    assert all(r["gap"] == pytest.approx(r["train_robust_acc"] - r["test_robust_acc"]) for r in gap)
    results = sorted((out / "gap").glob("*/result.json"))
    stamps = [p.stat().st_mtime_ns for p in results]
    assert len(results) == 4 and main(gap_args) == 0  # measured before: nothing recomputed
    assert [p.stat().st_mtime_ns for p in results] == stamps
    flat = ["--alphas", "0.2", "0.4", "--samples", "1", "--n-examples", "8", "--no-figures"]
    assert main(["flatness", *ckpts, *flat, "--out", str(out), *FAST]) == 0
    assert "undefined (n=1 < 3 noise draws)" in capsys.readouterr().out  # no [0, 0] interval
    tables = [str(out / "flatness.json"), str(out / "gap.csv")]
    # Two alphas per checkpoint: the join asks which one.
    assert main(["correlate", *tables, "--n-boot", "20"]) == 2
    assert "--where" in capsys.readouterr().err
    args = ["correlate", *tables, "--where", "alpha=0.2", "--where", "kind=expected"]
    assert main([*args, "--n-boot", "20", "--x", "flatness_loss"]) == 0
    text = capsys.readouterr().out
    assert "kendall" in text and "AT-AWP" in text
    assert "union of percentile bootstrap (20 resamples) and Fisher z" in text
    assert "undefined (n=2 < 3 checkpoints)" in text  # two checkpoints per method
    res = json.loads((out / "correlation.json").read_text())
    groups = {(c["group"], c["measure"]) for c in res["correlations"]}
    assert ("all", "kendall") in groups and ("AT-AWP", "pearson") in groups
    assert len(res["points"]) == 4 and (out / "flatness_loss_vs_gap.png").exists()
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*flatness_loss_vs_gap.*")}
    assert main([*args, "--n-boot", "20", "--x", "flatness_loss"]) == 0  # the same: reused
    assert "already correlated" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert main([*args, "--n-boot", "30", "--x", "flatness_loss"]) == 0  # another: computed
    assert "30 resamples" in capsys.readouterr().out
    assert main(["correlate", str(out / "missing.json")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_sigma_search_and_per_example_mode_from_the_cli(runs, tmp_path, capsys):
    ckpt = runs[("AT-AWP", 2)]
    out = tmp_path / "s"
    args = _flatness_args([ckpt], "--alphas", "0.5", "--per-example", "--sigma-search")
    args += ["--search-depth", "2", "--alpha-high", "2", "--target", "0.2", "--out", str(out)]
    assert main(args) == 0
    assert "sigma search" in capsys.readouterr().out
    (result,) = (out / "flatness").glob("*/result.json")
    res = json.loads(result.read_text())["result"]
    search = res["sigma_search"]
    assert search["history"][0][0] == 2.0 and 1 <= len(search["history"]) <= 3
    assert 0 <= search["alpha"] <= 2.0 and search["target"] == 0.2
    kinds = [r["kind"] for r in res["rows"]]
    assert kinds == ["expected", "sigma_search"]
    assert res["rows"][0]["ci_method"] == "clopper-pearson"


def test_csv_tables_keep_hashes_as_text(tmp_path):
    write_csv(tmp_path / "t.csv", [{"sha256": "1234", "gap": 0.5, "ok": True, "epoch": 3}])
    assert read_table(tmp_path / "t.csv") == [
        {"sha256": "1234", "gap": 0.5, "ok": True, "epoch": 3}
    ]


def test_a_file_that_is_no_table_is_named_as_such(tmp_path, capsys):
    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(b"PK\x03\x04\x80\xff binary")  # e.g. a checkpoint passed by mistake
    with pytest.raises(ValueError, match="model.pt is not a JSON or CSV result table"):
        read_table(ckpt)
    assert main(["correlate", str(ckpt)]) == 2
    assert "awp flatness / awp gap" in capsys.readouterr().err


def test_join_keeps_conflicting_columns_under_the_table_name():
    a = [{"sha256": "s1", "n": 10, "flatness": 0.1}, {"sha256": "s2", "n": 10, "flatness": 0.2}]
    b = [{"sha256": "s1", "n": 12, "gap": 0.3}, {"sha256": "s3", "n": 12, "gap": 0.4}]
    (row,) = join_tables([("flat", a), ("gap", b)], [])
    assert row == {"sha256": "s1", "n": 10, "flatness": 0.1, "gap": 0.3, "gap.n": 12}
    with pytest.raises(ValueError, match="COL=VALUE"):
        join_tables([("flat", a)], ["alpha"])


def test_store_skips_finished_units_and_refuses_other_settings(tmp_path):
    store = SampleStore(tmp_path / "s", meta={"a": 1})
    calls = []

    def compute(key):
        calls.append(key)
        return {"value": len(key)}

    assert run_units(["x", "yy"], compute, store=store) == {"x": {"value": 1}, "yy": {"value": 2}}
    again = SampleStore(tmp_path / "s", meta={"a": 1})
    assert run_units(["x", "yy", "zzz"], compute, store=again)["zzz"] == {"value": 3}
    assert calls == ["x", "yy", "zzz"]
    other = tmp_path / "s" / "samples.rank0.json"
    before = other.read_text()
    with pytest.raises(StoreMismatch, match="a: 1 on disk, 2 now"):
        SampleStore(tmp_path / "s", meta={"a": 2})
    assert other.read_text() == before
    (tmp_path / "s" / "samples.rank1.json").write_text("{not json")
    with pytest.raises(StoreMismatch, match="unreadable"):
        SampleStore(tmp_path / "s", meta={"a": 1}).load()
    with pytest.raises(ValueError, match="unique"):
        run_units(["x", "x"], compute)


def test_flatness_with_batchnorm_re_estimated_at_every_point(runs, tmp_path, capsys):
    """--bn recompute: the statistics belong to each w+u (re-estimated on --n-bn training
    images), other numbers than eval mode, kept apart: a folder measured in eval mode refuses
    it, and the eval folder's own results stay as they were."""
    ckpt = runs[("AT-AWP", 1)]
    base = _flatness_args([ckpt], "--alphas", "0.3", "--samples", "1")
    assert main([*base, "--out", str(tmp_path / "eval")]) == 0
    assert main([*base, "--out", str(tmp_path / "bn"), "--bn", "recompute", "--n-bn", "8"]) == 0
    ev = json.loads((tmp_path / "eval" / "flatness.json").read_text())["rows"][0]
    bn = json.loads((tmp_path / "bn" / "flatness.json").read_text())["rows"][0]
    assert ev["flatness_loss"] != bn["flatness_loss"]  # w's statistics vs each point's
    before = (tmp_path / "eval" / "flatness.json").read_text()
    assert main([*base, "--out", str(tmp_path / "eval"), "--bn", "recompute", "--n-bn", "8"]) == 2
    assert "other settings" in capsys.readouterr().err
    assert (tmp_path / "eval" / "flatness.json").read_text() == before
