"""Source strings in place of checkpoints on the command line: the same numbers as the model
measured directly, and one clear line (exit 2, nothing written) for a source that cannot be
used."""

import json
import sys
import textwrap

import numpy as np
import pytest
import torch

from awp.data import DataConfig, load_data
from awp.sources import IMAGENET_MEAN, IMAGENET_STD
from awp_landscape.cli import main
from landscape.storage import read_surface
from tests.helpers import make_image_folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("d") / "tiny", n_train=8, n_test=6, size=16)


@pytest.fixture
def factories(tmp_path, monkeypatch):
    (tmp_path / "clifactories.py").write_text(
        textwrap.dedent(
            """
            import torch
            from torch import nn

            def small(num_classes=10):
                return nn.Sequential(
                    nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                    nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes),
                )

            def nobn(num_classes=10):
                return nn.Sequential(
                    nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(),
                    nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes),
                )

            def broken(num_classes=10):
                raise ValueError("no such width")
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    sys.modules.pop("clifactories", None)


BASE = ["--device", "cpu", "--no-progress"]


def test_eval_of_a_py_source_with_weights_equals_the_model_measured_directly(
    tmp_path, folder, factories
):
    import clifactories

    torch.manual_seed(4)
    model = clifactories.small(num_classes=3).eval()
    torch.save({"state_dict": {"module." + k: v for k, v in model.state_dict().items()}},
               tmp_path / "w.pt")  # fmt: skip
    out = tmp_path / "e.json"
    args = ["eval", "py:clifactories:small", "--model-kwargs", '{"num_classes": 3}']
    args += ["--weights", str(tmp_path / "w.pt"), "--dataset", str(folder), "--input", "raw"]
    assert main([*args, *BASE, "--attacks", "natural", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    data = load_data(DataConfig(dataset=str(folder), val_size=0), "cpu", progress=False)
    with torch.no_grad():
        acc = float((model(data.test.x.float() / 255).argmax(1) == data.test.y).float().mean())
    assert res["results"][0]["accuracy"] == pytest.approx(acc)
    assert res["weights"]["stripped"] == ["module."] and res["model_spec"]["kind"] == "py"


def test_landscape_of_a_torchvision_name(tmp_path, folder):
    out = tmp_path / "land"
    args = ["landscape", "torchvision:resnet18", "--dataset", str(folder), "--out", str(out)]
    args += ["--n-train", "0", "--n-test", "4", "--x=-1:1:3", "--attack", "none", *BASE]
    assert main(args) == 0
    surface = read_surface(out / "torchvision_resnet18.h5")
    loss = surface.values["test_loss"]
    assert np.isfinite(loss).all() and loss.shape == (1, 3)
    spec = surface.attrs["model_spec"]
    assert tuple(spec["mean"]) == IMAGENET_MEAN and tuple(spec["std"]) == IMAGENET_STD
    assert spec["kind"] == "torchvision" and len(surface.attrs["checkpoint_sha256"]) == 64


@pytest.mark.parametrize(
    "argv, message",
    [
        (["py:clifactories:broken"], r"py:clifactories:broken failed: ValueError: no such width"),
        (["py:nowhere:net"], r"module nowhere does not import"),
        (["torchvision:resnet181"], r"torchvision has no model 'resnet181'; the nearest: resnet18"),
        (["py:clifactories:small", "--model-kwargs", '{"num_classes": 5}'],
         r"outputs of shape \(1, 5\) .* tiny has 3 classes"),
        (["py:clifactories:small", "--model-kwargs", "{num_classes: 3}"], r"is not JSON"),
        (["torchvision:resnet18", "--weights", "{missing}"], r"weights file .*missing.pt does "
         r"not exist"),
        (["--robustbench", "Rebuffi2021Fixing_R18_ddpm", "--model-dir", "{tmp}"],
         r"expected .*cifar10/Linf/Rebuffi2021Fixing_R18_ddpm.pt|needs the optional package"),
    ],
)  # fmt: skip
def test_bad_sources_exit_2_with_one_line_and_write_nothing(
    tmp_path, folder, factories, capsys, argv, message
):
    argv = [
        a.replace("{missing}", str(tmp_path / "missing.pt")).replace("{tmp}", str(tmp_path))
        for a in argv
    ]
    out = tmp_path / "e.json"
    assert main(["eval", *argv, "--dataset", str(folder), *BASE, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    import re

    assert re.search(message, err), err
    assert not out.exists()


def test_sources_have_an_identity_before_and_after_loading(tmp_path, folder, factories):
    from pathlib import Path

    from awp.io import sha256_file
    from awp_landscape.checkpoint_flags import ForeignOptions
    from awp_landscape.inputs import Inputs, checkpoint_sha256, identity_of

    kwargs = ForeignOptions(model_kwargs='{"num_classes": 3}')
    inputs = Inputs(torch.device("cpu"), dataset=str(folder), foreign=kwargs)
    name = Path("py:clifactories:small")
    assert identity_of(name)["checkpoint"] == "py:clifactories:small"
    loaded = inputs.load(name)
    assert checkpoint_sha256(name, inputs) == loaded.sha256 == loaded.identity()["sha256"]
    assert len(loaded.sha256) == 64
    torch.save({"w": torch.zeros(1)}, tmp_path / "f.pt")
    assert checkpoint_sha256(tmp_path / "f.pt", inputs) == sha256_file(tmp_path / "f.pt")


SMALL = ["py:clifactories:small", "--model-kwargs", '{"num_classes": 3}']
LAND = ["--n-train", "0", "--n-test", "4", "--x=-1:1:3", "--attack", "none"]


def test_results_of_another_input_convention_are_refused_never_reused(
    tmp_path, folder, factories, capsys
):
    data = ["--dataset", str(folder), *BASE]
    out = tmp_path / "e.json"
    ev = ["eval", *SMALL, *data, "--attacks", "natural", "--out", str(out)]
    assert main(ev) == 0
    first = out.read_bytes()
    capsys.readouterr()
    assert main(ev) == 0  # its own file, same model and settings: read back
    assert "already measured" in capsys.readouterr().out
    for other in (["--input-size", "24"], ["--input", "normalized"]):
        assert main([*ev, *other]) == 2
        err = capsys.readouterr().err
        assert "other evaluation settings" in err and other[0][2:].replace("-", "_") in err, err
        assert out.read_bytes() == first
    land = tmp_path / "land"
    la = ["landscape", *SMALL, *data, *LAND, "--out", str(land)]
    assert main(la) == 0
    h5 = land / "py_clifactories_small.h5"
    first = h5.read_bytes()
    assert main([*la, "--resume", "--input-size", "24"]) == 2
    assert "input convention" in capsys.readouterr().err
    assert h5.read_bytes() == first
    assert main([*la, "--resume"]) == 0


def test_bn_recompute_is_refused_where_it_would_recompute_nothing(
    tmp_path, folder, factories, capsys
):
    import clifactories

    script = tmp_path / "small.ts"
    torch.jit.save(torch.jit.script(clifactories.small(num_classes=3).eval()), script)
    cases = [
        (["landscape", str(script), *LAND], "compiled into a TorchScript"),
        (["flatness", str(script), "--n-examples", "4", "--samples", "1", "--attack", "none"],
         "compiled into a TorchScript"),
        (["landscape", "py:clifactories:nobn", "--model-kwargs", '{"num_classes": 3}', *LAND],
         "has no BatchNorm layer"),
    ]  # fmt: skip
    for argv, why in cases:
        out = tmp_path / "out"
        args = [*argv, "--bn", "recompute", "--dataset", str(folder), *BASE, "--out", str(out)]
        assert main(args) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and why in err and "--bn eval" in err, err
        assert not out.exists()


def test_center_crop_lets_a_measuring_command_read_images_of_several_sizes(
    tmp_path, factories, capsys
):
    from PIL import Image

    from tests.helpers import make_image_folder

    mixed = make_image_folder(tmp_path / "mixed", n_train=6, n_test=6, size=16)
    first = sorted((mixed / "test").rglob("*.png"))[0]
    Image.open(first).resize((20, 24)).save(first)  # one test image of another size
    out = tmp_path / "e.json"
    ev = ["eval", *SMALL, "--dataset", str(mixed), *BASE, "--attacks", "natural", "--out", str(out)]
    assert main(ev) == 2
    assert "--center-crop N" in capsys.readouterr().err and not out.exists()
    assert main([*ev, "--center-crop", "12"]) == 0
    res = json.loads(out.read_text())
    assert res["n"] == 6 and res["settings"]["center_crop"] == 12
    land = tmp_path / "land"
    la = ["landscape", *SMALL, "--dataset", str(mixed), *BASE, *LAND, "--out", str(land)]
    assert main([*la, "--center-crop", "12"]) == 0
    assert read_surface(land / "py_clifactories_small.h5").attrs["data"]["center_crop"] == 12
    assert main([*la, "--center-crop", "10", "--resume"]) == 2  # other data: not resumed
    assert "another input convention or data" in capsys.readouterr().err


def test_two_compiled_files_of_one_architecture_interpolate_and_connect(
    tmp_path, folder, factories, capsys
):
    import clifactories

    files = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        files.append(tmp_path / f"net{seed}.ts")
        torch.jit.save(torch.jit.script(clifactories.small(num_classes=3).eval()), files[-1])
    data = ["--dataset", str(folder), *BASE]
    out = tmp_path / "interp"
    args = ["landscape", *map(str, files), "--kind", "interp", *LAND, *data, "--out", str(out)]
    assert main(args) == 0
    surface = read_surface(next(out.glob("*.h5")))
    loss = surface.values["test_loss"]
    assert np.isfinite(loss).all() and loss[0, 0] != loss[0, -1]
    conn = tmp_path / "conn"
    args = ["connect", *map(str, files), "--no-curve", "--points", "3", "--n-train", "4"]
    assert main([*args, "--n-test", "4", "--n-bn", "4", "--attack-steps", "1", *data,
                 "--out", str(conn)]) == 0  # fmt: skip
    # their BatchNorm is compiled: the points keep the first model's statistics, and say so
    assert f"every point uses {files[0]}'s" in capsys.readouterr().out
    torch.manual_seed(3)
    other = tmp_path / "nobn.ts"
    torch.jit.save(torch.jit.script(clifactories.nobn(num_classes=3).eval()), other)
    args = ["landscape", str(files[0]), str(other), "--kind", "interp", *LAND, *data]
    assert main([*args, "--out", str(tmp_path / "bad")]) == 2
    assert "different models" in capsys.readouterr().err


def test_our_checkpoint_beside_a_source_takes_the_sources_flags(
    tmp_path, folder, factories, capsys
):
    from awp.checkpoint import save_checkpoint
    from awp.config import to_dict
    from awp.data import DataConfig
    from awp.models import ModelSpec, build_model
    from awp.train_config import TrainConfig

    spec = ModelSpec(name="smallcnn", num_classes=3, mean=None, std=None)
    ours = tmp_path / "run" / "checkpoints" / "last.pt"
    cfg = TrainConfig(out=str(tmp_path / "run"), data=DataConfig(dataset=str(folder), val_size=2))
    save_checkpoint(ours, model=build_model(spec), model_spec=to_dict(spec), config=to_dict(cfg),
                    epoch=1)  # fmt: skip
    out = tmp_path / "land"
    args = ["landscape", str(ours), *SMALL, "--labels", "ours", "small", *LAND, *BASE]
    assert main([*args, "--dataset", str(folder), "--out", str(out)]) == 0
    assert {p.name for p in out.glob("*.h5")} >= {"ours.h5", "small.h5"}
    alone = ["landscape", str(ours), *LAND, *BASE, "--model-kwargs", '{"num_classes": 3}']
    assert main([*alone, "--out", str(tmp_path / "alone")]) == 2
    assert "--model-kwargs would be ignored" in capsys.readouterr().err
