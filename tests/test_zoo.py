"""RobustBench's zoo by name: files in its folder layout, loaded and measured by every command."""

import json

import pytest
import torch

import awp.zoo
from awp.data import DataConfig, load_data
from awp.models import ModelConfig, build_model
from awp.zoo import ZOO, ZooModel, find_zoo_model, zoo_model_at
from awp_landscape.cli import main
from tests.test_foreign import trades_wrn_state

TINY = ZooModel(
    "Tiny2020Test", "cifar10", "Linf", ModelConfig("wideresnet", depth=10, widen_factor=1)
)


def write_zoo_file(model_dir, entry: ZooModel, seed: int = 0) -> torch.nn.Module:
    """A checkpoint as RobustBench keeps it: {'state_dict': ...} of a TRADES-style WideResNet
    (with its unused sub_block1), at <dir>/<dataset>/<threat model>/<name>.pt."""
    torch.manual_seed(seed)
    src = build_model(entry.spec).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so a wrong load shows
        for m in src.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    path = entry.path(model_dir)
    path.parent.mkdir(parents=True)
    torch.save({"state_dict": trades_wrn_state(src)}, path)
    return src


def sample_accuracy(model, n):
    data = load_data(DataConfig(val_size=0), "cpu", progress=False)
    from awp.data import fixed_subset

    idx = fixed_subset(len(data.test), n, seed=0)
    with torch.no_grad():
        pred = model(data.test.x[idx].float() / 255).argmax(1)
    return float((pred == data.test.y[idx]).float().mean())


def test_the_awp_models_are_listed_by_their_zoo_names():
    awp_models = {(m.dataset, m.threat_model, m.name) for m in ZOO if m.name.startswith("Wu2020")}
    assert awp_models == {
        ("cifar10", "Linf", "Wu2020Adversarial_extra"),
        ("cifar10", "Linf", "Wu2020Adversarial"),
        ("cifar10", "L2", "Wu2020Adversarial"),
        ("cifar100", "Linf", "Wu2020Adversarial"),
    }
    assert find_zoo_model("Wu2020Adversarial_extra").spec.depth == 28
    assert find_zoo_model("Wu2020Adversarial", dataset="cifar100").spec.num_classes == 100
    assert zoo_model_at("m/cifar10/L2/Wu2020Adversarial.pt").threat_model == "L2"
    assert zoo_model_at("m/cifar10/L2/Other.pt") is None


def test_a_zoo_model_loads_by_name_and_evaluates(tmp_path, monkeypatch):
    monkeypatch.setattr(awp.zoo, "ZOO", (*ZOO, TINY))
    src = write_zoo_file(tmp_path / "models", TINY)
    out = tmp_path / "e.json"
    args = ["eval", "--robustbench", "Tiny2020Test", "--model-dir", str(tmp_path / "models")]
    args += [
        "--n-examples",
        "20",
        "--attacks",
        "natural",
        "fgsm",
        "--device",
        "cpu",
        "--no-progress",
    ]
    assert main([*args, "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["checkpoint"] == str(tmp_path / "models/cifar10/Linf/Tiny2020Test.pt")
    assert res["input"] == "raw" and res["dataset"] == "sample"
    assert res["weights"]["dropped"]  # the unused sub_block1
    assert res["results"][0]["accuracy"] == pytest.approx(sample_accuracy(src, 20))
    # a path in the zoo's layout is the same model, also next to a checkpoint of ours
    args = ["hist", str(TINY.path(tmp_path / "models")), "--out", str(tmp_path / "h")]
    assert (
        main([*args, "--robustbench", "Tiny2020Test", "--model-dir", str(tmp_path / "models")]) == 0
    )


def test_unknown_names_and_missing_files_are_one_line(tmp_path, capsys):
    base = ["eval", "--model-dir", str(tmp_path), "--device", "cpu"]
    assert main([*base, "--robustbench", "Nobody2099"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    # names beyond ours are looked up in robustbench's zoo (or need the robustbench extra)
    assert "'Nobody2099'" in err and "(cifar10, Linf)" in err
    assert "not in the zoo of the installed robustbench" in err or (
        "Wu2020Adversarial_extra" in err and "pip install 'awp-landscape[robustbench]'" in err
    )
    assert main([*base, "--robustbench", "Wu2020Adversarial", "--threat-model", "L2"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"expected {tmp_path / 'cifar10' / 'L2' / 'Wu2020Adversarial.pt'}" in err
    assert main(["gap", "--out", str(tmp_path / "g")]) == 2
    assert "give a checkpoint file (.pt) or a zoo model" in capsys.readouterr().err
    assert main([*base, str(tmp_path / "a.pt"), "--robustbench", "Standard"]) == 2


@pytest.mark.slow
def test_the_awp_authors_wideresnet_by_name(tmp_path):
    """Full size: RST-AWP's WRN-28-10 (36.5M parameters, a 146 MB file), written in the zoo's
    layout with fresh weights, loaded by name and evaluated."""
    entry = find_zoo_model("Wu2020Adversarial_extra")
    src = write_zoo_file(tmp_path / "models", entry)
    out = tmp_path / "e.json"
    args = ["eval", "--robustbench", entry.name, "--model-dir", str(tmp_path / "models")]
    args += ["--n", "8", "--attacks", "natural", "--device", "cpu", "--no-progress"]
    assert main([*args, "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["model_spec"]["depth"] == 28 and res["model_spec"]["widen_factor"] == 10
    assert res["results"][0]["accuracy"] == pytest.approx(sample_accuracy(src, 8))


def test_train_starts_from_a_zoo_model_by_name(tmp_path, monkeypatch, capsys):
    """awp train --robustbench NAME is --init with the zoo file; a missing file or --init
    given too is one line, and nothing is trained."""
    monkeypatch.setattr(awp.zoo, "ZOO", (*ZOO, TINY))
    models = tmp_path / "models"
    base = ["train", "--model", "wideresnet", "--depth", "10", "--widen-factor", "1"]
    base += ["--epochs", "1", "--val-size", "8", "--train-size", "16", "--batch-size", "8"]
    base += ["--eval-n-train", "8", "--eval-n-test", "8", "--attack-steps", "1", "--lr", "1e-9"]
    base += ["--schedule", "constant", "--device", "cpu", "--no-progress"]
    zoo = ["--robustbench", "Tiny2020Test", "--model-dir", str(models)]
    assert main([*base, *zoo, "--out", str(tmp_path / "missing")]) == 2
    assert "expected" in capsys.readouterr().err and not (tmp_path / "missing").exists()
    src = write_zoo_file(models, TINY)
    assert main([*base, *zoo, "--init", "x.pt", "--out", str(tmp_path / "both")]) == 2
    assert "not both" in capsys.readouterr().err
    assert main([*base, *zoo, "--out", str(tmp_path / "run")]) == 0
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["inputs"]["init"]["path"] == str(TINY.path(models))
    start = src.state_dict()["block1.layer.0.conv1.weight"]
    assert torch.allclose(ckpt["state_dict"]["block1.layer.0.conv1.weight"], start, atol=1e-6)
