import json
import re

import pytest

from awp_landscape.cli import main
from tests.helpers import make_image_folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("data") / "tiny", n_train=30, n_test=12)


def test_train_then_eval(tmp_path, folder, capsys):
    out = tmp_path / "run"
    code = main(
        [
            "train",
            "--dataset",
            str(folder),
            "--val-size",
            "6",
            "--model",
            "smallcnn",
            "--epochs",
            "1",
            "--batch-size",
            "12",
            "--attack-steps",
            "2",
            "--eps",
            "8/255",
            "--eval-steps",
            "2",
            "--eval-n-train",
            "8",
            "--awp",
            "--gamma",
            "0.005",
            "--out",
            str(out),
            "--no-progress",
            "--device",
            "cpu",
        ]
    )
    assert code == 0
    text = capsys.readouterr().out
    assert "AT-AWP" in text and "epoch   1" in text and "checkpoints" in text
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["awp"] is True and cfg["gamma"] == 0.005 and cfg["eps"] == pytest.approx(8 / 255)
    code = main(
        [
            "eval",
            str(out / "checkpoints" / "last.pt"),
            "--attacks",
            "natural",
            "fgsm",
            "pgd20",
            "cw20",
            "--device",
            "cpu",
            "--out",
            str(tmp_path / "e.json"),
        ]
    )
    assert code == 0
    table = capsys.readouterr().out
    assert "PGD-20 linf eps=8/255" in table and "CW-20" in table
    res = json.loads((tmp_path / "e.json").read_text())
    accs = {r["attack"]: r["accuracy"] for r in res["results"]}
    assert res["n"] == 12 and set(accs) == {"natural", "fgsm", "pgd20", "cw20"}
    assert accs["pgd20"] <= accs["natural"]


def test_bad_input_is_one_clear_line(tmp_path, folder, capsys):
    assert main(["train", "--eps", "8", "--out", str(tmp_path / "r")]) == 2
    assert "8/255" in capsys.readouterr().err
    assert (
        main(
            [
                "train",
                "--model",
                "resnet999",
                "--dataset",
                str(folder),
                "--val-size",
                "0",
                "--epochs",
                "1",
                "--out",
                str(tmp_path / "r2"),
                "--no-progress",
            ]
        )
        == 2
    )
    assert "resnet999" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "missing.pt")]) == 2
    assert "missing.pt" in capsys.readouterr().err
    # AWP's settings without --awp would silently train plain AT
    assert main(["train", "--gamma", "0.01", "--out", str(tmp_path / "r4")]) == 2
    err = capsys.readouterr().err
    assert "--gamma" in err and "add --awp" in err
    assert not (tmp_path / "r4").exists()
    assert (
        main(["train", "--dataset", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r3")]) == 2
    )
    assert "nowhere" in capsys.readouterr().err
    assert not (tmp_path / "r3").exists()


def test_help_lists_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: 8/255)" in text
    assert "--gamma" in text and "default: 0.01" in text and "--awp-warmup" in text
    assert re.search(r"--val-size VAL_SIZE [^-]*validation split[^-]*\(default: 1000\)", text)


def test_help_of_a_nested_config_shows_the_enclosing_default(capsys):
    # awp demo's data field defaults to DataConfig(val_size=200, train_size=1000): its help must
    # show those, not DataConfig's own defaults (1000, 0)
    from awp_landscape.pipeline import DemoConfig

    data = DemoConfig().training.data
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"(0 = none); range [0, inf] (default: {data.val_size})" in text
    assert f"(0 = all); range [0, inf] (default: {data.train_size})" in text
    assert data.val_size != 1000 and data.train_size != 0


def test_sigkill_and_resume_equals_uninterrupted(tmp_path, folder):
    """A real `awp train` process killed with SIGKILL after epoch 2 resumes to the same weights."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import torch

    args = [
        "--dataset",
        str(folder),
        "--val-size",
        "6",
        "--model",
        "smallcnn",
        "--epochs",
        "5",
        "--batch-size",
        "8",
        "--attack-steps",
        "2",
        "--eval-steps",
        "2",
        "--eval-n-train",
        "8",
        "--awp",
        "--awp-warmup",
        "1",
        "--no-progress",
        "--device",
        "cpu",
    ]
    assert main(["train", *args, "--out", str(tmp_path / "full")]) == 0

    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "awp_landscape", "train", *args, "--out", str(out)]
    env = dict(os.environ)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 120
    metrics = out / "metrics.jsonl"
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 2:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert main(["train", *args, "--out", str(out), "--resume"]) == 0
    a = torch.load(tmp_path / "full" / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 5
    for k, t in a["state_dict"].items():
        assert torch.equal(t, b["state_dict"][k]), k
    assert [json.loads(x)["epoch"] for x in metrics.read_text().splitlines()] == [1, 2, 3, 4, 5]


def test_method_defaults_on_the_command_line(tmp_path, folder, capsys):
    """--method trades --awp takes TRADES-AWP's gamma, warm-up and beta unless given."""
    out = tmp_path / "trades"
    args = ["train", "--dataset", str(folder), "--val-size", "6", "--model", "smallcnn"]
    args += ["--epochs", "1", "--batch-size", "12", "--attack-steps", "2", "--eval-steps", "2"]
    args += ["--eval-n-train", "8", "--no-progress", "--device", "cpu"]
    assert main([*args, "--method", "trades", "--awp", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "TRADES-AWP (gamma 0.005, warm-up 10, beta 6, A=1 K1=2 K2=1)" in text
    assert "[AWP]" not in text  # epoch 1 is inside the 10 warm-up epochs
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["gamma"] is None and cfg["awp_warmup"] is None and cfg["method"] == "trades"
    mart = ["--method", "mart", "--awp", "--gamma", "0.002", "--beta", "3", "--awp-alternations"]
    assert main([*args, *mart, "2", "--out", str(tmp_path / "mart")]) == 0
    text = capsys.readouterr().out
    assert "MART-AWP (gamma 0.002, warm-up 0, beta 3, A=2 K1=2 K2=1)" in text and "[AWP]" in text
    assert main([*args, "--beta", "6", "--out", str(tmp_path / "at")]) == 2
    assert "has no beta" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    for shown in (
        "(default: 0.01 for at, 0.005 for trades and mart)",
        "(default: 10 for trades-awp and trades-rwp, else 0)",
        "--extra-data",
        "--init",
        "--awp-alternations",
        "--attack-start",
    ):
        assert shown in help_text


def test_help_states_each_default_once(capsys):
    # a field whose help text already explains its default ("" = derived from the checkpoint)
    # must not also print an empty "(default: )": an empty default reads "none", in every command
    from awp_landscape.cli import command_names

    for name in command_names():
        with pytest.raises(SystemExit):
            main([name, "--help"])
        assert "(default: )" not in capsys.readouterr().out, name
    with pytest.raises(SystemExit):
        main(["landscape", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--model-kwargs MODEL_KWARGS" in text and "(default: none)" in text
    assert "(default: the one the checkpoint was trained on)" in text
    assert "--x X x coordinates min:max:num" in text and "(default: 1d)" in text
