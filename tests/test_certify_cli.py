"""``awp certify`` end to end on tiny checkpoints: files, resume, refusals, torchrun sharding."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from analysis.certify_units import CertifyConfig, compute_unit
from awp.checkpoint import save_checkpoint
from awp.config import to_dict
from awp.data import DataConfig
from awp.models import ModelSpec, build_model
from awp.train import TrainConfig
from awp_landscape.cli import main
from awp_landscape.inputs import Inputs
from awp_landscape.measures.certify import certify_checkpoint
from tests.helpers import make_image_folder

ROOT = Path(__file__).resolve().parents[1]
SMALL = [
    "--sigma",
    "0.12",
    "0.5",
    "--n0",
    "8",
    "--samples",
    "40",
    "--alpha",
    "0.01",
    "--n-test",
    "5",
]
SMALL += ["--noise-levels", "0", "0.25", "--noise-draws", "3", "--batch-size", "16"]
SMALL += ["--no-progress", "--device", "cpu"]


@pytest.fixture(autouse=True)
def _env(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("AWP_CACHE", str(tmp_path_factory.getbasetemp() / "awp_cache"))
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """AT and AT-AWP SmallCNN checkpoints on 8x8 images (3 classes), seeded weights."""
    root = tmp_path_factory.mktemp("certify")
    folder = make_image_folder(root / "data", n_train=12, n_test=9)
    paths = []
    for awp in (False, True):
        torch.manual_seed(awp)
        spec = ModelSpec(name="smallcnn", num_classes=3, mean=(0.5,) * 3, std=(0.25,) * 3)
        cfg = TrainConfig(out=str(root), data=DataConfig(dataset=str(folder), val_size=0), awp=awp)
        path = root / ("at_awp" if awp else "at") / "checkpoints" / "last.pt"
        save_checkpoint(
            path, model=build_model(spec), model_spec=to_dict(spec), config=to_dict(cfg), epoch=3
        )
        paths.append(path)
    return paths


def strip(rows):
    """Rows without the timing, which is the only thing allowed to differ between runs."""
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def test_certify_writes_tables_and_figures_and_reruns_nothing(ckpts, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["certify", *map(str, ckpts), "--labels", "AT", "AT-AWP", "--out", str(out), *SMALL]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "certified accuracy" in text and "acc@0.25" in text and "noise_acc" in text
    for name in (
        "certify.json",
        "certify.csv",
        "certify_examples.csv",
        "noise_accuracy.csv",
        "certified_accuracy.png",
        "certified_accuracy.pdf",
        "noise_accuracy.png",
    ):
        assert (out / name).exists(), name  # fmt: skip
    tables = json.loads((out / "certify.json").read_text())
    assert {(r["label"], r["sigma"]) for r in tables["summary"]} == {
        (lab, s) for lab in ("AT", "AT-AWP") for s in (0.12, 0.5)
    }
    ex = tables["examples"]
    assert len(ex) == 2 * 2 * 5
    for r in ex:  # per-example records: label, prediction, radius, correct, abstained, counts
        assert r["n0"] == 8 and r["n"] == 40 and sum(r["counts"]) == 40
        assert r["abstained"] == (r["prediction"] == -1) and r["correct"] == (
            r["prediction"] == r["label"]
        )
        assert (r["radius"] > 0) or r["abstained"] or r["p_lower"] == 0.5
    # the same images and the same noise for both checkpoints (a paired comparison)
    idx = {lab: sorted(r["index"] for r in ex if r["model"] == lab) for lab in ("AT", "AT-AWP")}
    assert idx["AT"] == idx["AT-AWP"]
    assert len(tables["noise_accuracy"]) == 2 * 2
    stores = sorted(p.name for p in (out / "certify").glob("*/*.json"))
    assert stores.count("certify.rank0.json") == 2 and stores.count("noise.rank0.json") == 2
    before = {p: p.stat().st_mtime_ns for p in (out / "certify").glob("*/*.rank0.json")}
    assert main(args) == 0  # everything finished: no unit is computed again
    assert {p: p.stat().st_mtime_ns for p in before} == before
    again = json.loads((out / "certify.json").read_text())
    assert again == tables


def test_interrupted_certification_resumes_to_the_uninterrupted_result(ckpts, tmp_path):
    cfg = CertifyConfig(
        sigmas=(0.25,), n0=8, n=30, alpha=0.05, n_test=4, noise_levels=(0.0, 0.5), noise_draws=2,
        batch_size=7, predict=True,
    )  # fmt: skip
    loaded = Inputs(torch.device("cpu")).load(ckpts[1])

    def counting(stop_after=None):
        calls = []

        def compute(*args, **kw):
            calls.append(args[3])  # the unit key
            if stop_after is not None and len(calls) > stop_after:
                raise KeyboardInterrupt  # killed while computing this unit
            return compute_unit(*args, **kw)

        return compute, calls

    killed, first = counting(stop_after=3)
    with pytest.raises(KeyboardInterrupt):
        certify_checkpoint(loaded, cfg, folder=tmp_path / "a", label="AT-AWP", compute=killed)
    again, calls = counting()
    resumed = certify_checkpoint(loaded, cfg, folder=tmp_path / "a", label="AT-AWP", compute=again)
    # 4 certify + 4 predict + 4 noise units; 3 were finished before the kill
    assert len(first) == 4 and len(calls) == 12 - 3 and not set(first[:3]) & set(calls)
    fresh = certify_checkpoint(loaded, cfg, folder=tmp_path / "b", label="AT-AWP")
    for table in ("summary", "noise_accuracy"):
        assert resumed[table] == fresh[table]
    assert strip(resumed["examples"]) == strip(fresh["examples"])
    assert "predict" in fresh["examples"][0] and "predict_accuracy" in fresh["summary"][0]
    # another batch size gives the same result; another n is refused with the reason
    other = certify_checkpoint(
        loaded, dataclasses.replace(cfg, batch_size=64), folder=tmp_path / "c", label="x"
    )
    assert strip(other["examples"]) == strip([{**r, "model": "x"} for r in fresh["examples"]])
    with pytest.raises(ValueError, match="other settings"):
        certify_checkpoint(loaded, dataclasses.replace(cfg, n=31), folder=tmp_path / "a",
                           label="AT-AWP")  # fmt: skip


def test_bad_input_is_a_one_line_error(ckpts, tmp_path, capsys):
    base = ["certify", str(ckpts[0]), "--out", str(tmp_path), "--device", "cpu", "--no-progress"]
    assert main([*base, "--sigma", "25"]) == 2
    assert "25/255" in capsys.readouterr().err
    assert main([*base, "--samples", "4"]) == 2
    assert "n >= 10" in capsys.readouterr().err
    assert main(["certify", str(tmp_path / "nope.pt"), "--out", str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.json"))


@pytest.mark.slow  # 10 s: three processes importing torch. Certify's units are sharded by
# analysis.store.run_units, whose two-rank split and agreement with one process
# tests/test_flatness.py checks in the default suite.
@pytest.mark.distributed
def test_torchrun_two_ranks_equal_one_process(ckpts, tmp_path):
    args = [*map(str, ckpts), "--labels", "AT", "AT-AWP", *SMALL, "--no-figures"]
    # torchrun takes --n for an abbreviation of its own --nnodes/--nproc-per-node: the alias
    spelled = ["--n-samples" if a == "--n" else a for a in args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += ["-m", "awp_landscape", "certify", "--out", str(tmp_path / "two"), *spelled]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert main(["certify", "--out", str(tmp_path / "one"), *args]) == 0
    two = json.loads((tmp_path / "two" / "certify.json").read_text())
    one = json.loads((tmp_path / "one" / "certify.json").read_text())
    assert two["summary"] == one["summary"] and two["noise_accuracy"] == one["noise_accuracy"]
    assert strip(two["examples"]) == strip(one["examples"])
    # each rank certified its share of the examples, together every one once
    for folder in (tmp_path / "two" / "certify").iterdir():
        shares = [
            set(json.loads((folder / f"certify.rank{r}.json").read_text())["records"])
            for r in (0, 1)
        ]
        assert shares[0] and shares[1] and not shares[0] & shares[1]
        assert len(shares[0] | shares[1]) == 2 * 5
