"""The main job end to end on tiny settings, the report in a real browser, and reproduce."""

import json
import re

import pytest

from analysis.outcome import outcome
from awp_landscape.cli import main
from awp_landscape.pipeline import PRESETS, ReproduceConfig
from awp_landscape.report import collect, measurements
from tests.browser import first_section, open_in_chromium, require_browser
from tests.helpers import make_image_folder

TINY = [
    "--model",
    "smallcnn",
    "--width",
    "0.25",
    "--epochs",
    "3",
    "--batch-size",
    "16",
    "--val-size",
    "8",
    "--train-size",
    "0",
    "--eval-n-train",
    "16",
    "--eval-n-test",
    "16",
    "--eval-steps",
    "2",
    "--eval-every",
    "1",
    "--save-every",
    "1",
    "--eval-n",
    "16",
    "--gap-n",
    "16",
    "--analysis-steps",
    "2",
    "--landscape-points",
    "5",
    "--landscape-n",
    "8",
    "--flatness-n",
    "8",
    "--flatness-alphas",
    "0.05",
    "0.1",
    "--flatness-samples",
    "2",
    "--correlate-samples",
    "2",
    "--worst-steps",
    "2",
    "--trajectory-points",
    "3",
    "--trajectory-n",
    "8",
    "--trajectory-bn",
    "16",
    "--certify-n",
    "4",
    "--certify-samples",
    "20",
    "--certify-noise-draws",
    "2",
    "--hessian-n",
    "8",
    "--hessian-probes",
    "2",
    "--sharpness-n",
    "8",
    "--sharpness-m",
    "4",
    "--sharpness-steps",
    "1",
    "--sharpness-draws",
    "1",
    "--no-progress",
    "--device",
    "cpu",
]


@pytest.fixture(scope="module")
def demo(tiny_demo_folder):
    """The tiny demo of the session (conftest.tiny_demo_folder): (folder, dataset)."""
    return tiny_demo_folder


def test_demo_writes_every_stage_and_the_report(demo):
    out, _ = demo
    seed0 = out / "seed0"
    for rel in (
        "at/checkpoints/epoch_003.pt",
        "at_awp/checkpoints/epoch_003.pt",
        "eval/AT_best.json",
        "eval/AT-AWP_last.json",
        "analysis/gap.json",
        "analysis/landscape/AT.h5",
        "analysis/landscape/AT-AWP.h5",
        "analysis/weights.json",
        "analysis/flatness_final/flatness.json",
        "analysis/flatness_epochs/flatness.json",
        "analysis/correlation.json",
        "analysis/spectra/spectra.json",
        "analysis/trajectory/AT.h5",
        "analysis/trajectory/AT-AWP.h5",
        "analysis/certify.json",
        "analysis/curvature/curvature.json",
        "analysis/connect/connect.json",
        "analysis/connect/connect.h5",
        "analysis/quantize.json",
    ):
        assert (seed0 / rel).exists(), rel
    assert (out / "report.html").exists() and (out / "report.md").exists()
    replicates = json.loads((out / "replicates.json").read_text())
    assert replicates["seeds"] == [0] and replicates["measures"]
    assert all("not resolved at 1 seed" in m["verdict"] for m in replicates["measures"])
    html = (out / "report.html").read_text()
    assert html.index("<h2>") == html.index("<h2>AT against AT-AWP: learning curves and outcome")
    # one seed: said once, no box per measure, no replicate table of one seed
    assert html.count("A claim over seeds needs 3 seeds") == 1
    assert "not resolved at 1 seed" not in html and "Replicates:" not in html
    for title in (
        "Seed 0 in detail",
        "Accuracy and learning curves",
        "Robust generalization gap",
        "Weight loss landscape",
        "Weight histograms",
        "Flatness and the PAC-Bayes bound",
        "Curvature: the Hessian of the loss at fixed x_adv",
        "Flatness versus the robust gap",
        "Training trajectory",
        "Weight spectra",
        "Certified robustness (randomized smoothing)",
        "Accuracy under Gaussian input noise",
        "Mode connectivity: AT to AT-AWP",
        "Weight quantization",
    ):
        assert title in html
    # nothing fetched to view it: no element loads from the network (the embedded plotly.js
    # names URLs in strings only; tests/test_html.py watches the browser fetch nothing)
    assert not re.search(r"<(?:script|link|img|iframe)[^>]*(?:src|href)=[\"']?https?:", html)
    assert "Surfaces in 3-D" in html  # the trajectory planes, rotatable
    md = (out / "report.md").read_text()
    assert "| method | checkpoint |" in md and "vacuous_exact" in md


def test_one_number_per_quantity_across_the_html_and_the_markdown(demo):
    """The last checkpoint's robust accuracy is one number (the final evaluation's PGD-20 run
    alone) in the statement and in the table, in the markdown and the HTML; every markdown
    table keeps its columns; every figure link resolves."""
    from tests.test_html import _md_rows

    out, _ = demo
    md = (out / "report.md").read_text()
    html = (out / "report.html").read_text()
    for table in _md_rows(md):
        assert len({len(r) for r in table}) == 1, table[0]
    links = [line.split("](")[1].rstrip(")") for line in md.splitlines() if line.startswith("![")]
    assert links and all((out / link).is_file() for link in links)
    last = {m: json.loads((out / "seed0" / "eval" / f"{m}_last.json").read_text())
            for m in ("AT", "AT-AWP")}  # fmt: skip
    pgd = {m: next(r for r in e["results"] if r["attack"] == "pgd20") for m, e in last.items()}
    said = re.search(
        r"Test robust accuracy at the last checkpoint \(PGD-20 run alone, (\d+) test images\): "
        r"AT ([\d.]+)%, AT-AWP ([\d.]+)%",
        md,
    )
    assert said, "the statement names its evaluation"
    assert int(said.group(1)) == last["AT"]["n"]
    for m, value in (("AT", said.group(2)), ("AT-AWP", said.group(3))):
        acc = pgd[m].get("accuracy_alone", pgd[m]["accuracy"])
        assert float(value) == round(100 * acc, 1)
        row = next(r for t in _md_rows(md) for r in t if r[:2] == [f" {m} ", " last "])
        assert f" {acc:.4g} " in row or f" {acc:g} " in row, row  # the table: the same number
    assert said.group(0) in html  # the HTML says the same


def test_report_opens_in_chromium_with_every_image_decoded(demo):
    require_browser()
    out, _ = demo
    check = open_in_chromium(out / "report.html")
    assert check.images >= 7
    assert check.broken == [] and check.console_errors == []
    first = first_section(out / "report.html")
    assert first["title"] == "AT against AT-AWP: learning curves and outcome"
    assert first["images"] == 1  # the learning curves of both methods
    # one seed: no interval or verdict column (the caption says once that single runs have none)
    assert ["measure", "AT", "AT-AWP", "AT-AWP minus AT"] in first["tables"]


def _copy_of(demo, tmp_path):
    import shutil

    out = tmp_path / "demo"
    shutil.copytree(demo[0], out)  # a copy: the shared demo keeps its one seed
    return out, demo[1]


def test_rerun_reuses_finished_stages_touches_nothing_and_refuses_other_settings(
    demo, capsys, tmp_path
):
    """A rerun of a finished demo trains and computes nothing and rewrites no file; other
    settings are refused. On a copy (other test processes read the shared demo), whose first
    rerun records the results' new paths and computes nothing either."""
    out, data = _copy_of(demo, tmp_path)
    seed0 = out / "seed0"
    args = ["demo", "--out", str(out), "--dataset", str(data), *TINY]

    def files(*suffixes: str) -> dict:
        return {p: p.stat().st_mtime_ns for p in seed0.rglob("*") if p.suffix in suffixes}

    weights = files(".pt")
    for _ in range(2):  # the copy's first rerun, then a rerun in place
        before = files(".json", ".pt")
        assert main(args) == 0
        text = capsys.readouterr().out
        assert "[AT] reusing the finished run" in text and "[AT-AWP] reusing" in text
        assert "evaluate: 4 of 4 checkpoint(s) already measured" in text
        assert files(".pt") == weights  # nothing trained
    assert files(".json", ".pt") == before  # nothing trained, computed or rewritten
    # other settings in the same folder are refused, and nothing is touched
    other = list(TINY)
    other[other.index("--epochs") + 1] = "4"
    assert main(["demo", "--out", str(out), "--dataset", str(data), *other]) == 2
    assert "other settings" in capsys.readouterr().err
    assert files(".json", ".pt") == before


def test_more_seeds_are_added_to_a_demo_folder_beside_the_finished_ones(demo, tmp_path):
    """What a second seed adds, without training it: the folder accepts more --seeds (its
    record grows), and the jobs of a rerun train only the new seed's runs (the full run of a
    second seed: test_rerun_adds_only_new_seeds, -m slow)."""
    import dataclasses

    from awp.config import from_dict
    from awp_landscape.pipeline import DemoConfig, record_config, seed_units

    out, _ = _copy_of(demo, tmp_path)
    saved = from_dict(DemoConfig, json.loads((out / "demo_config.json").read_text()))
    cfg = dataclasses.replace(saved, out=str(out), seeds=(0, 1))
    record_config(out, "demo_config.json", cfg, growable=("seeds",))
    assert json.loads((out / "demo_config.json").read_text())["seeds"] == [0, 1]
    trainings, analyses = seed_units(cfg)
    assert [u.name for u in trainings] == ["seed1 AT: training", "seed1 AT-AWP: training"]
    assert [u.name for u in analyses] == ["seed0: analyses", "seed1: analyses"]


@pytest.mark.slow  # 25 s: a whole second seed of the tiny demo, trained and measured; what it
# adds (a growing record, jobs for the new seed only) is checked without training by
# test_more_seeds_are_added_to_a_demo_folder_beside_the_finished_ones
def test_rerun_adds_only_new_seeds(demo, capsys, tmp_path):
    out, data = _copy_of(demo, tmp_path)
    seed0 = out / "seed0"
    last = (seed0 / "at" / "checkpoints" / "last.pt").stat().st_mtime_ns
    # One more seed trains only that seed; the comparison now pairs two seeds.
    assert (
        main(["demo", "--out", str(out), "--dataset", str(data), *TINY, "--seeds", "0", "1"]) == 0
    )
    text = capsys.readouterr().out
    assert text.count("reusing the finished run") == 2 and text.count("] training ") == 2
    assert (seed0 / "at" / "checkpoints" / "last.pt").stat().st_mtime_ns == last
    assert (out / "seed1" / "at_awp" / "checkpoints" / "last.pt").exists()
    replicates = json.loads((out / "replicates.json").read_text())
    assert replicates["seeds"] == [0, 1]
    assert all("no interval possible with 2 seeds" in m["verdict"] for m in replicates["measures"])
    pooled = replicates["pooled_correlation"]
    assert pooled is None or pooled["all"]["n"] == 12  # 2 seeds x 2 methods x 3 checkpoints
    assert "This is 2 seeds of each method" in (out / "report.html").read_text()


def test_outcome_is_computed_from_the_numbers(demo):
    out, _ = demo
    out = out / "seed0"  # one seed's single-run statements
    res = collect([out])
    said = " ".join(outcome(measurements(res)))
    gap = {r["method"]: r["gap"] for r in res["gap"] if r["epoch"] == 3}
    expected = "has the smaller gap" if gap["AT-AWP"] < gap["AT"] else "does NOT have"
    assert expected in said
    # flip the measured gaps: the statement must follow
    for r in res["gap"]:
        if r["epoch"] == 3:
            r["gap"] = 0.5 if r["method"] == "AT-AWP" else -0.5
    assert "does NOT have the smaller gap" in " ".join(outcome(measurements(res)))
    for r in res["gap"]:
        if r["epoch"] == 3:
            r["gap"] = -0.5 if r["method"] == "AT-AWP" else 0.5
    assert "AT-AWP has the smaller gap" in " ".join(outcome(measurements(res)))
    cor = json.loads((out / "analysis" / "correlation.json").read_text())
    (tau,) = [c for c in cor["correlations"] if c["group"] == "all" and c["measure"] == "kendall"]
    if tau["statistic"] is None:  # no tau on these tiny runs (ties, a constant column)
        assert tau["note"] and f"Kendall tau {tau['note']}" in said
    else:
        m = re.search(r"Kendall tau = (\S+) ", said)
        assert m and float(m.group(1)) == pytest.approx(tau["statistic"], abs=1e-3)


def test_report_errors_are_clear(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nothing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "nothing to report" in capsys.readouterr().err


def test_reproduce_presets_plumbing(capsys):
    cfg = ReproduceConfig(preset="cifar100-wrn34-10-trades")
    runs = cfg.train_configs(0)
    assert list(runs) == ["TRADES", "TRADES-AWP"]
    base, awp = runs["TRADES"], runs["TRADES-AWP"]
    assert base.epochs == 200 and base.model.name == "wideresnet" and base.model.depth == 34
    assert base.model.widen_factor == 10 and base.data.dataset == "cifar100" and not base.awp
    assert awp.awp and awp.resolved().gamma == 0.005 and awp.resolved().awp_warmup == 10
    assert ReproduceConfig(preset="svhn-prn18-at").train_configs(0)["AT"].lr == 0.01
    assert len(PRESETS) == 18
    with pytest.raises(ValueError, match="unknown preset"):
        ReproduceConfig(preset="imagenet-vit-at")
    assert main(["reproduce", "--list"]) == 0
    assert "cifar10-prn18-at" in capsys.readouterr().out


@pytest.mark.slow  # 24 s: the pipeline of the demo's tests with a paper preset's model; the
# presets' plumbing (test_reproduce_presets_plumbing) stays in the default suite
def test_reproduce_one_epoch_tiny_run(tmp_path):
    data = make_image_folder(tmp_path / "data", classes=4, n_train=40, n_test=12)
    out = tmp_path / "repro"
    assert (
        main(
            [
                "reproduce",
                "--preset",
                "cifar10-prn18-at",
                "--dataset",
                str(data),
                "--epochs",
                "1",
                "--width",
                # not 0.0625: PreActResNet-18 with 4 channels in channels_last corrupts the heap
                # in torch 2.14.1 on the CPU ("corrupted double-linked list", then an abort)
                "0.125",
                "--val-size",
                "8",
                "--save-every",
                "1",
                "--out",
                str(out),
                "--eval-n",
                "8",
                "--gap-n",
                "8",
                "--analysis-steps",
                "1",
                "--landscape-points",
                "3",
                "--landscape-n",
                "4",
                "--flatness-n",
                "4",
                "--flatness-alphas",
                "0.1",
                "--flatness-samples",
                "1",
                "--correlate-samples",
                "1",
                "--worst-steps",
                "1",
                "--certify-n",
                "2",
                "--certify-samples",
                "20",
                "--certify-noise-draws",
                "1",
                "--hessian-n",
                "4",
                "--hessian-probes",
                "2",
                "--no-progress",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    cfg = json.loads((out / "seed0" / "at_awp" / "config.json").read_text())
    assert cfg["model"]["name"] == "preactresnet18" and cfg["awp"] is True and cfg["epochs"] == 1
    assert (out / "report.html").exists()


def _history(test_loss, train_loss, test_acc, every=1):
    rows = []
    for i, (te, tr, acc) in enumerate(zip(test_loss, train_loss, test_acc)):
        rows.append({"epoch": (i + 1) * every, "train_loss": 2.0})  # an epoch not evaluated
        rows.append(
            {
                "epoch": (i + 1) * every,
                "test_robust_loss": te,
                "train_robust_loss": tr,
                "test_robust_acc": acc,
            }
        )
    return rows


def test_robust_overfitting_is_read_from_the_test_robust_loss():
    from analysis.outcome import robust_overfitting

    # U-shaped test loss, falling train loss: overfitting, lowest at epoch 4 (every 2nd epoch)
    ro = robust_overfitting(
        _history([2.3, 2.2, 2.45, 2.55], [2.2, 2.0, 1.6, 1.2], [0.2, 0.25, 0.24, 0.22], every=2)
    )
    assert ro.clear and (ro.min_epoch, ro.last_epoch, ro.peak_epoch) == (4, 8, 4)
    assert ro.loss_rise == pytest.approx(0.35)
    assert "robust overfitting is visible" in ro.statement() and "rose by 0.350" in ro.statement()
    # a rise under CLEAR_OVERFIT_LOSS_RISE (AT-AWP's 0.04 in the demo) is called slight
    ro = robust_overfitting(_history([2.0, 2.04], [1.6, 1.4], [0.25, 0.22]))
    assert ro.visible and not ro.clear
    assert ro.statement().startswith("slight robust overfitting (a rise under 0.2): ")
    assert "robust overfitting is visible" not in ro.statement()
    # still improving: not overfitting
    ro = robust_overfitting(_history([2.3, 2.2, 2.1], [2.2, 2.0, 1.9], [0.2, 0.22, 0.24]))
    assert not ro.visible and ro.min_epoch == 3
    assert "no robust overfitting visible" in ro.statement()
    # the test loss rose, but so did the train loss: not overfitting
    assert not robust_overfitting(_history([2.1, 2.3], [1.9, 2.1], [0.2, 0.2])).visible
    # a rise within OVERFIT_LOSS_RISE does not count
    assert not robust_overfitting(_history([2.1, 2.11], [1.9, 1.5], [0.2, 0.2])).visible
    assert robust_overfitting([{"epoch": 1, "train_loss": 2.0}]) is None


def test_demo_configs_of_older_versions_read_in_the_nested_layout():
    from awp.config import from_dict, to_dict
    from awp_landscape.pipeline import DemoConfig

    new = DemoConfig()
    old = {k: v for k, v in to_dict(new).items() if k not in ("training", "seeds")}
    old.update(to_dict(new.training), seed=0)
    old["model"], old["width"] = "preactresnet18", 0.25  # flat, as before the nesting
    del old["model"]
    old["model"] = "preactresnet18"
    assert from_dict(DemoConfig, old) == new


def test_loose_run_folders_of_three_seeds_keep_one_curve_per_seed(tmp_path, monkeypatch):
    # awp report on the six run folders of a 3-seed sweep: the story figure drew only the last
    # seed's AT and AT-AWP (one dict keyed by label) while its caption says one line per seed
    import awp_landscape.report.sections as sections
    from awp_landscape.results import Results, Run

    def history(level):
        return [{"epoch": e, "test_robust_loss": level + e, "test_robust_acc": 0.2}
                for e in (5, 10)]  # fmt: skip

    runs = [
        Run(label, tmp_path / f"seed{seed}" / label, {"seed": seed}, history(seed))
        for seed in (0, 1, 2)
        for label in ("AT", "AT-AWP")
    ]
    from matplotlib.figure import Figure

    drawn = {}

    def plot(histories, what):
        drawn.update(histories)
        return Figure()

    monkeypatch.setattr(sections, "plot_story_curves", plot)
    section = sections.story_section(Results(root=tmp_path, runs=runs))
    assert sorted(drawn) == [0, 1, 2]
    assert all(list(v) == ["AT", "AT-AWP"] for v in drawn.values())
    assert drawn[2]["AT"][0]["test_robust_loss"] == 7
    text = " ".join(section.paragraphs)
    assert "3 seeds (seeds 0, 1, 2)" in text and "one run" not in text
    # two runs of one label and seed are both kept, the second named by its folder
    twice = sections.runs_by_seed([runs[0], Run("AT", tmp_path / "other", {"seed": 0}, [])])
    assert list(twice[0]) == ["AT", "AT (other)"]


def test_a_moved_demo_folder_is_reused_and_other_settings_are_refused(tmp_path):
    import dataclasses

    from awp_landscape.pipeline import DemoConfig, record_config
    from awp_landscape.plans import TrainingPlan

    first = tmp_path / "runs" / "demo"
    record_config(first, "demo_config.json", DemoConfig(out=str(first)))
    moved = tmp_path / "elsewhere"
    first.rename(moved)
    # The folder's own path is no setting of its results: the moved folder is reused, and its
    # record now names where it lies.
    record_config(moved, "demo_config.json", DemoConfig(out=str(moved)))
    recorded = moved / "demo_config.json"
    assert json.loads(recorded.read_text())["out"] == str(moved)
    # A folder of the former 500-image default is refused with the difference and the fix, and
    # its record is left as it was.
    before = recorded.read_bytes()
    plan = TrainingPlan()
    old = dataclasses.replace(plan, data=dataclasses.replace(plan.data, train_size=500))
    with pytest.raises(
        ValueError, match=r"training\.data\.train_size: 1000 in the folder, 500 now.*another --out"
    ):
        record_config(moved, "demo_config.json", DemoConfig(out=str(moved), training=old))
    assert recorded.read_bytes() == before


def test_the_demo_thread_count_is_a_recorded_setting_applied_to_every_job(tmp_path):
    """Results depend on torch's thread count: --threads fixes it for the training and every
    analysis (serially and in each launched job), is recorded in demo_config.json and, like
    every setting, a folder made with another count is refused; 0 leaves torch's choice."""
    import torch

    from awp_landscape.cli import build_parser
    from awp_landscape.flags import dataclass_from_arguments
    from awp_landscape.pipeline import DemoConfig, record_config, seed_units, thread_count

    args = build_parser("demo").parse_args(["demo", "--threads", "2", "--out", str(tmp_path)])
    cfg = dataclass_from_arguments(DemoConfig, args)
    assert cfg.threads == 2
    before = torch.get_num_threads()
    with thread_count(cfg.threads):
        assert torch.get_num_threads() == 2
    assert torch.get_num_threads() == before
    with thread_count(0):
        assert torch.get_num_threads() == before
    assert {u.threads for phase in seed_units(cfg) for u in phase} == {2}
    record_config(tmp_path, "demo_config.json", cfg)
    assert json.loads((tmp_path / "demo_config.json").read_text())["threads"] == 2
    with pytest.raises(ValueError, match=r"threads: 2 in the folder, 3 now"):
        record_config(tmp_path, "demo_config.json", DemoConfig(out=str(tmp_path), threads=3))
