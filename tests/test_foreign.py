"""Checkpoints from elsewhere, written here in each layout, loaded into our models and evaluated."""

import json
from collections import OrderedDict

import pytest
import torch

from awp.checkpoint import CheckpointError, load_weights, read_state_dict
from awp.models import ModelSpec, build_model
from awp_landscape.cli import main
from tests.helpers import make_image_folder

# Small versions of the official architectures: the key layout is what matters here.
PRN = ModelSpec(name="preactresnet18", num_classes=3, width=0.125)
WRN = ModelSpec(name="wideresnet", num_classes=3, depth=10, widen_factor=1, mean=None, std=None)


def source(spec, seed=0):
    torch.manual_seed(seed)
    model = build_model(spec).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so a wrong load shows
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return model


def with_prefix(state, prefix):
    return OrderedDict((prefix + k, v) for k, v in state.items())


def trades_wrn_state(model):
    """TRADES' WideResNet also has an unused `sub_block1` (same shapes as block1)."""
    state = OrderedDict(model.state_dict())
    for k, v in list(state.items()):
        if k.startswith("block1."):
            state["sub_block1." + k[len("block1.") :]] = v.clone() + 1
    return state


def layouts():
    prn, wrn = source(PRN), source(WRN)
    sd_prn = prn.state_dict()
    no_counter = OrderedDict((k, v) for k, v in sd_prn.items() if "num_batches" not in k)
    return {
        # official AT-AWP: nn.DataParallel(model), torch.save({'state_dict': ...})
        "awp_at": (PRN, prn, {"state_dict": with_prefix(sd_prn, "module."), "epoch": 199}),
        # Rice et al. (robust_overfitting): torch.save(model.state_dict())
        "rice_raw": (PRN, prn, OrderedDict(sd_prn)),
        # TRADES-AWP: DataParallel WRN with sub_block1, raw state dict
        "trades_awp": (WRN, wrn, with_prefix(trades_wrn_state(wrn), "module.")),
        # RobustBench WideResNet(sub_block1=True) checkpoints: {'state_dict': ...}
        "robustbench": (WRN, wrn, {"state_dict": trades_wrn_state(wrn)}),
        # a whole-model wrapper and a checkpoint from before BatchNorm counters existed
        "wrapped": (PRN, prn, {"model_state_dict": with_prefix(sd_prn, "model.")}),
        "no_counters": (PRN, prn, no_counter),
    }


@pytest.mark.parametrize("layout", list(layouts()))
def test_each_layout_loads_into_our_model(tmp_path, layout):
    spec, src, obj = layouts()[layout]
    path = tmp_path / f"{layout}.pt"
    torch.save(obj, path)
    model = build_model(spec).eval()
    info = load_weights(model, path)
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(model(x), src(x))
    assert len(info["sha256"]) == 64 and "checkpoint" not in info
    if layout in ("trades_awp", "robustbench"):
        assert info["dropped"] and all(k.startswith("sub_block1.") for k in info["dropped"])
    if layout == "no_counters":
        assert all(k.endswith("num_batches_tracked") for k in info["filled"]) and info["filled"]
    if layout == "awp_at":
        assert info["stripped"] == ["module."] and "state_dict" in info["layout"]


def test_mismatches_name_the_keys(tmp_path):
    torch.save(source(WRN).state_dict(), tmp_path / "wrn.pt")
    with pytest.raises(CheckpointError, match="missing keys.*layer1.*unexpected keys.*block1"):
        load_weights(build_model(PRN), tmp_path / "wrn.pt")
    wider = ModelSpec(name="wideresnet", num_classes=3, depth=10, widen_factor=2)
    with pytest.raises(CheckpointError, match="shape mismatches"):
        load_weights(build_model(wider), tmp_path / "wrn.pt")
    torch.save({"epoch": 3, "acc": 0.5}, tmp_path / "nothing.pt")
    with pytest.raises(CheckpointError, match="no state dict.*'state_dict'"):
        read_state_dict(tmp_path / "nothing.pt")
    torch.save(
        {"state_dict": {"w": torch.zeros(1)}, "args": object.__new__(Evil)}, tmp_path / "e.pt"
    )
    with pytest.raises(CheckpointError, match="never unpickled"):
        read_state_dict(tmp_path / "e.pt")


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_input_convention_decides_the_normalization(tmp_path):
    src = source(WRN)  # raw [0, 1] input, as TRADES-AWP's
    torch.save({"state_dict": with_prefix(src.state_dict(), "module.")}, tmp_path / "t.pt")
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    raw = build_model(WRN).eval()
    load_weights(raw, tmp_path / "t.pt")
    normalized = build_model(
        ModelSpec(name="wideresnet", num_classes=3, depth=10, widen_factor=1)
    ).eval()
    load_weights(normalized, tmp_path / "t.pt")
    with torch.no_grad():
        assert torch.equal(raw(x), src(x)) and not torch.allclose(normalized(x), src(x))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("data") / "tiny", n_train=9, n_test=9, size=32)


def test_eval_cli_with_foreign_checkpoints(tmp_path, folder, capsys):
    spec, src, obj = layouts()["trades_awp"]
    path = tmp_path / "TRADES-AWP_wrn.pt"
    torch.save(obj, path)
    base = ["eval", str(path), "--dataset", str(folder), "--device", "cpu", "--no-progress"]
    base += ["--attacks", "natural", "fgsm"]
    assert main(base) == 2  # what it is must be said
    err = capsys.readouterr().err
    assert "--model and --input" in err and "not an awp-landscape checkpoint" in err
    arch = ["--model", "wideresnet", "--depth", "10", "--widen-factor", "1"]
    assert main([*base, *arch, "--input", "raw", "--out", str(tmp_path / "r.json")]) == 0
    res = json.loads((tmp_path / "r.json").read_text())
    assert res["input"] == "raw" and res["model_spec"]["mean"] is None
    assert res["weights"]["dropped"] and res["n"] == 9
    # the same numbers as the source model, evaluated directly
    from awp.data import DataConfig, load_data

    data = load_data(DataConfig(dataset=str(folder), val_size=0), "cpu", progress=False)
    with torch.no_grad():
        acc = float((src(data.test.x.float() / 255).argmax(1) == data.test.y).float().mean())
    assert res["results"][0]["accuracy"] == pytest.approx(acc)
    # a wrong architecture is one clear line listing the keys
    assert main([*base, "--model", "preactresnet18", "--input", "raw"]) == 2
    assert "missing keys" in capsys.readouterr().err
    # normalized input for an AT checkpoint: the model normalizes with the dataset's statistics
    spec, src, obj = layouts()["awp_at"]
    torch.save(obj, tmp_path / "awp_at.pt")
    args = ["eval", str(tmp_path / "awp_at.pt"), "--dataset", str(folder), "--device", "cpu"]
    args += ["--model", "preactresnet18", "--width", "0.125", "--input", "normalized"]
    args += ["--attacks", "natural", "--no-progress", "--out", str(tmp_path / "a.json")]
    assert main(args) == 0
    res = json.loads((tmp_path / "a.json").read_text())
    assert res["input"] == "normalized" and res["model_spec"]["mean"] == list(data.mean)


def test_eval_cli_refuses_contradicting_our_own_checkpoint(tmp_path, folder, capsys):
    from awp.checkpoint import save_checkpoint
    from awp.config import to_dict

    spec = ModelSpec(name="smallcnn", num_classes=3)
    path = save_checkpoint(
        tmp_path / "ours.pt",
        model=build_model(spec),
        model_spec=to_dict(spec),
        config={"data": {"dataset": str(folder), "val_size": 0}},
    )
    assert main(["eval", str(path), "--input", "raw", "--device", "cpu"]) == 2
    assert "records its input convention (normalized)" in capsys.readouterr().err
    assert main(["eval", str(path), "--model", "wideresnet", "--device", "cpu"]) == 2
    assert "drop --model" in capsys.readouterr().err
