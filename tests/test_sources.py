"""Model sources: each builds the same model, bit for bit, as constructing it directly; the
input wrapper holds the model (no copy); every bad input is one clear line."""

import importlib.util
import json
import sys
import textwrap
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from awp.checkpoint import CheckpointError
from awp.sources import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    InputConvention,
    SourceError,
    check_bn_mode,
    check_fits,
    file_kind,
    is_source,
    load_source,
    parse_kwargs,
    resize_and_crop,
)
from landscape.directions import random_direction
from landscape.grid import make_grid
from landscape.surface import EvalSet, compute_surface

X = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def same_state(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


def normalized(x, mean, std):
    return (x - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)


@pytest.fixture
def factories(tmp_path, monkeypatch):
    """A module of factories importable as ``userfactories`` (py: sources)."""
    (tmp_path / "userfactories.py").write_text(
        textwrap.dedent(
            """
            import torch
            from torch import nn

            class Small(nn.Module):
                def __init__(self, num_classes=10, width=4):
                    super().__init__()
                    self.conv = nn.Conv2d(3, width, 3, padding=1)
                    self.bn = nn.BatchNorm2d(width)
                    self.fc = nn.Linear(width, num_classes)

                def forward(self, x):
                    return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))

            def small(num_classes=10, width=4):
                return Small(num_classes, width)

            def flat(num_classes=10):  # takes 8x8 images only
                return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, num_classes))

            def broken(**kw):
                raise RuntimeError("the factory is broken")

            def not_a_model():
                return 42

            def diverged():
                m = Small()
                with torch.no_grad():
                    m.fc.weight[0, 0] = float("nan")
                return m
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    sys.modules.pop("userfactories", None)


def test_torchvision_source_is_the_model_built_directly_normalized_inside():
    torch.manual_seed(123)
    rng = torch.get_rng_state()
    src = load_source("torchvision:resnet18", num_classes=10, seed=3)
    assert torch.equal(torch.get_rng_state(), rng)  # the caller's generator is left alone
    torch.manual_seed(3)
    ref = torchvision.models.resnet18(num_classes=10).eval()
    assert same_state(src.model.model, ref)
    assert src.kind == "torchvision" and src.num_classes == 10 and src.input.mean == IMAGENET_MEAN
    with torch.no_grad():
        assert torch.equal(src.model(X), ref(normalized(X, IMAGENET_MEAN, IMAGENET_STD)))
    # the same string gives the same model (and sha), another seed another one
    again = load_source("torchvision:resnet18", num_classes=10, seed=3)
    assert again.sha256 == src.sha256 and same_state(again.model, src.model)
    assert load_source("torchvision:resnet18", num_classes=10, seed=4).sha256 != src.sha256


def test_the_wrapper_holds_the_model_itself_under_the_prefix_model(factories):
    src = load_source("py:userfactories:small", kwargs={"num_classes": 3})
    params = dict(src.model.named_parameters())
    assert list(params) == [f"model.{n}" for n, _ in src.model.model.named_parameters()]
    assert params["model.fc.weight"] is src.model.model.fc.weight  # no copy
    assert list(src.model.state_dict()) == [f"model.{k}" for k in src.model.model.state_dict()]
    before = src.model(X).detach()
    with torch.no_grad():
        params["model.conv.weight"].add_(0.5)
    assert not torch.equal(src.model.model(X), before)


def test_py_factory_with_kwargs_is_the_model_built_directly(factories):
    import userfactories

    src = load_source("py:userfactories:small", kwargs={"num_classes": 5, "width": 6}, seed=1)
    torch.manual_seed(1)
    ref = userfactories.small(num_classes=5, width=6).eval()
    assert same_state(src.model.model, ref) and src.input.mean is None
    with torch.no_grad():
        assert torch.equal(src.model(X), ref(X))
    tv = load_source("py:torchvision.models:resnet18", kwargs={"num_classes": 10}, seed=0)
    assert same_state(
        tv.model.model, load_source("torchvision:resnet18", num_classes=10).model.model
    )


def test_weights_from_a_state_dict_file_with_prefixes(tmp_path, factories):
    torch.manual_seed(9)
    import userfactories

    trained = userfactories.small(num_classes=3)
    state = OrderedDict(("module." + k, v) for k, v in trained.state_dict().items())
    torch.save({"state_dict": state, "epoch": 7}, tmp_path / "w.pt")
    src = load_source(
        "py:userfactories:small", kwargs={"num_classes": 3}, weights=tmp_path / "w.pt"
    )
    assert same_state(src.model.model, trained)
    assert src.weights["stripped"] == ["module."] and len(src.weights["sha256"]) == 64
    # a state dict of another architecture: the keys are listed
    torch.save(torchvision.models.resnet18(num_classes=3).state_dict(), tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="missing keys: conv.weight.*unexpected keys: conv1"):
        load_source(
            "py:userfactories:small", kwargs={"num_classes": 3}, weights=tmp_path / "other.pt"
        )


def test_weights_from_safetensors(tmp_path, factories):
    st = pytest.importorskip("safetensors.torch")
    import userfactories

    torch.manual_seed(2)
    trained = userfactories.small(num_classes=3)
    # a whole-model wrapper prefix, as some codebases save
    st.save_file(
        {"model." + k: v for k, v in trained.state_dict().items()}, tmp_path / "w.safetensors"
    )
    src = load_source(
        "py:userfactories:small", kwargs={"num_classes": 3}, weights=tmp_path / "w.safetensors"
    )
    assert same_state(src.model.model, trained) and src.weights["layout"] == "safetensors"


def test_timm_source_is_the_model_built_directly():
    timm = pytest.importorskip("timm")
    kwargs = {"img_size": 32, "patch_size": 8, "depth": 1, "embed_dim": 48, "num_heads": 2}
    src = load_source("timm:vit_tiny_patch16_224", num_classes=10, kwargs=kwargs, seed=5)
    torch.manual_seed(5)
    ref = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10, **kwargs)
    ref.eval()
    assert same_state(src.model.model, ref)
    mean, std = ref.pretrained_cfg["mean"], ref.pretrained_cfg["std"]
    assert src.input.mean == tuple(mean)
    with torch.no_grad():
        assert torch.equal(src.model(X), ref(normalized(X, mean, std)))


def test_torchscript_and_export_programs_keep_their_parameters(tmp_path, factories):
    import userfactories

    torch.manual_seed(0)
    eager = userfactories.small(num_classes=4).eval()
    torch.jit.save(torch.jit.script(eager), tmp_path / "m.pt")  # a .pt that is TorchScript
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.export.export(eager, (X[:2],), dynamic_shapes={"x": {0: batch}})
    torch.export.save(program, tmp_path / "m.pt2")
    with torch.no_grad():
        want = eager(X)
    for path, kind in ((tmp_path / "m.pt", "torchscript"), (tmp_path / "m.pt2", "export")):
        assert file_kind(path) == kind and is_source(path)
        src = load_source(path)
        assert src.kind == kind and len(src.sha256) == 64
        with torch.no_grad():
            assert torch.allclose(src.model(X), want, atol=1e-6)
        names = [n for n, _ in src.model.named_parameters()]
        assert "model.conv.weight" in names
        # its parameters are the ones perturbed: moving them moves the outputs
        w = dict(src.model.named_parameters())["model.conv.weight"]
        with torch.no_grad():
            w.add_(0.3)
            assert not torch.allclose(src.model(X), want, atol=1e-3)
        check_fits(src, X, num_classes=4, data="x")
        with pytest.raises(SourceError, match="BatchNorm statistics cannot be re-estimated"):
            check_bn_mode(src, "recompute")
        check_bn_mode(src, "eval")
    torch.save(eager.state_dict(), tmp_path / "sd.pt")
    assert file_kind(tmp_path / "sd.pt") == "checkpoint" and not is_source(tmp_path / "sd.pt")
    # exported with a fixed batch of one: it takes one image but no batch, refused at once
    torch.export.save(torch.export.export(eager, (X[:1],)), tmp_path / "one.pt2")
    fixed = load_source(tmp_path / "one.pt2")
    with pytest.raises(SourceError, match="Guard failed.*dynamic batch dimension"):
        check_fits(fixed, X, num_classes=4, data="x")


def test_landscape_through_a_source_equals_the_model_built_directly():
    src = load_source("torchvision:resnet18", num_classes=10, input=InputConvention())
    torch.manual_seed(0)
    ref = torchvision.models.resnet18(num_classes=10).eval()
    y = torch.tensor([1, 2, 3])
    grid = make_grid("1d", np.array([-0.5, 0.0, 0.5]))
    a = compute_surface(
        src.model, [random_direction(src.model, seed=1)], grid, [EvalSet("test", X, y)]
    )
    b = compute_surface(ref, [random_direction(ref, seed=1)], grid, [EvalSet("test", X, y)])
    assert np.array_equal(a.values["test_loss"], b.values["test_loss"])


def test_input_size_resizes_and_centre_crops_inside(factories):
    x = torch.rand(2, 3, 10, 14, generator=torch.Generator().manual_seed(1))
    out = resize_and_crop(x, size=6, resize=8)
    f = torchvision.transforms.functional
    ref = f.center_crop(f.resize(x, 8, antialias=True), [6, 6])
    assert out.shape == (2, 3, 6, 6) and torch.allclose(out, ref, atol=1e-6)
    conv = InputConvention(size=8)
    assert conv.resize_to == 9  # round(8 / 0.875)
    src = load_source("py:userfactories:flat", kwargs={"num_classes": 3}, input=conv)
    check_fits(src, X, num_classes=3, data="32x32 images")  # 32x32 -> 9 -> 8x8 inside


def test_hf_classifier_from_a_local_folder(tmp_path):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.ViTConfig(
        image_size=32, patch_size=8, num_hidden_layers=1, hidden_size=16,
        num_attention_heads=2, intermediate_size=32, num_labels=10,
    )  # fmt: skip
    torch.manual_seed(0)
    ref = transformers.ViTForImageClassification(cfg).eval()
    ref.save_pretrained(tmp_path / "vit")
    (tmp_path / "vit" / "preprocessor_config.json").write_text(
        json.dumps({"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]})
    )
    src = load_source(f"hf:{tmp_path / 'vit'}", num_classes=10)
    assert same_state(src.model.model, ref) and src.input.mean == (0.5, 0.5, 0.5)
    with torch.no_grad():
        assert torch.allclose(src.model(X), ref(normalized(X, [0.5] * 3, [0.5] * 3)).logits)
    with pytest.raises(SourceError, match="10-class model, but the data has 3"):
        load_source(f"hf:{tmp_path / 'vit'}", num_classes=3)
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match=r"hf:.*empty has no config\.json: pass a folder"):
        load_source(f"hf:{tmp_path / 'empty'}")


HAS_ROBUSTBENCH = importlib.util.find_spec("robustbench") is not None


@pytest.mark.skipif(not HAS_ROBUSTBENCH, reason="the robustbench package is not installed")
def test_zoo_architecture_other_than_wideresnet_loads_by_name(tmp_path):
    """Rebuffi2021Fixing_R18_ddpm: RobustBench's DMPreActResNet, from a file the test saves in
    the zoo's layout (``{'state_dict': ...}`` with DataParallel's ``module.``)."""
    from awp.zoo import robustbench_zoo

    name = "Rebuffi2021Fixing_R18_ddpm"
    entry = robustbench_zoo()[("cifar10", "Linf")][name]
    torch.manual_seed(0)
    ref = entry["model"]().eval()
    assert type(ref).__name__ == "DMPreActResNet"
    with torch.no_grad():  # weights unlike a fresh initialization's, so a wrong load shows
        for p in ref.parameters():
            p.add_(0.01 * torch.randn_like(p))
    folder = tmp_path / "models" / "cifar10" / "Linf"
    folder.mkdir(parents=True)
    state = OrderedDict(("module." + k, v) for k, v in ref.state_dict().items())
    torch.save({"state_dict": state}, folder / f"{name}.pt")
    src = load_source(f"robustbench:{name}", model_dir=tmp_path / "models", num_classes=10)
    assert src.kind == "robustbench" and src.weights["architecture"] == "DMPreActResNet"
    assert same_state(src.model.model, ref)
    with torch.no_grad():
        assert torch.equal(src.model(X), ref(X))  # [0, 1] inputs: the class normalizes inside
    assert not any(k.startswith("robustbench") for k in sys.modules)  # nothing left behind
    other = "Rebuffi2021Fixing_R18_cutmix_ddpm"  # in the zoo, not in the folder
    with pytest.raises(FileNotFoundError, match=r"expected .*cifar10/L2/" + other + r"\.pt"):
        load_source(f"robustbench:{other}", model_dir=tmp_path / "models", threat_model="L2")
    with pytest.raises(ValueError, match="nearest: Rebuffi2021Fixing_R18_ddpm"):
        load_source("robustbench:Rebuffi2021Fixing_R18_dpm", model_dir=tmp_path / "models")


def test_zoo_names_of_our_architectures_still_load(tmp_path):
    from awp.models import build_model
    from awp.zoo import find_zoo_model

    zoo = find_zoo_model("Standard", dataset="cifar10", threat_model="L2")
    small = zoo.spec.__class__(**{**zoo.spec.__dict__, "depth": 10, "widen_factor": 1})
    # the file's architecture must be the zoo's; a tiny stand-in checks the path and loading
    folder = tmp_path / "cifar10" / "L2"
    folder.mkdir(parents=True)
    torch.save({"state_dict": build_model(small).state_dict()}, folder / "Standard.pt")
    with pytest.raises(CheckpointError, match="shape mismatches|missing keys"):
        load_source("robustbench:Standard", model_dir=tmp_path, threat_model="L2")
    with pytest.raises(FileNotFoundError, match="expected .*cifar10/Linf/Standard.pt"):
        load_source("robustbench:Standard", model_dir=tmp_path)


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "spec, kwargs, message",
    [
        ("py:userfactories:broken", {}, r"py:userfactories:broken failed: RuntimeError: the "
         r"factory is broken; fix the factory"),
        ("py:userfactories:small", {"depth": 3}, r"failed with --model-kwargs \{\"depth\": 3\}: "
         r"TypeError: .*unexpected keyword argument 'depth'"),
        ("py:nowhere.models:net", {}, r"module nowhere.models does not import "
         r"\(ModuleNotFoundError: No module named 'nowhere'\); check the module path"),
        ("py:userfactories:smal", {}, r"userfactories has no 'smal'; the nearest: small"),
        ("py:userfactories", {}, r"write py:package.module:factory"),
        ("py:userfactories:not_a_model", {}, r"returned a int, not a torch.nn.Module"),
        ("py:userfactories:diverged", {}, r"non-finite values \(NaN or infinity\) in fc.weight"),
        ("torchvision:resnet181", {}, r"torchvision has no model 'resnet181'; the nearest: "
         r"resnet18"),
        ("torchvision:resnet18", {"weights": "DEFAULT"}, r"never downloaded here"),
    ],
)  # fmt: skip
def test_bad_sources_are_one_clear_line(factories, spec, kwargs, message):
    with pytest.raises(SourceError, match=message) as info:
        load_source(spec, kwargs=kwargs)
    assert "\n" not in str(info.value)


def test_unknown_timm_name_lists_the_nearest():
    pytest.importorskip("timm")
    with pytest.raises(SourceError, match=r"timm has no model 'resnet181'; the nearest: resnet18"):
        load_source("timm:resnet181")


def test_a_model_that_does_not_fit_the_data(factories):
    src = load_source("py:userfactories:flat", kwargs={"num_classes": 3})  # 8x8 inputs only
    with pytest.raises(SourceError, match=r"cannot take the inputs of cifar \(3x32x32\).*"
                       r"--input-size N resizes"):  # fmt: skip
        check_fits(src, X, num_classes=3, data="cifar")
    src = load_source("py:userfactories:small", kwargs={"num_classes": 5})
    with pytest.raises(SourceError, match=r"shape \(1, 5\).*has 10 classes.*num_classes\": 10"):
        check_fits(src, X, num_classes=10, data="cifar")


def test_files_without_parameters_and_weights_with_nan(tmp_path, factories):
    class NoWeights(nn.Module):
        def forward(self, x):
            return x.flatten(1)[:, :10]

    torch.jit.save(torch.jit.script(NoWeights()), tmp_path / "none.pt")
    with pytest.raises(SourceError, match=r"TorchScript file .*none.pt has no parameters, so "
                       r"there are no weights to perturb"):  # fmt: skip
        load_source(tmp_path / "none.pt")
    import userfactories

    bad = userfactories.small().state_dict()
    bad["conv.weight"][0, 0, 0, 0] = float("inf")
    torch.save(bad, tmp_path / "inf.pt")
    with pytest.raises(CheckpointError, match=r"non-finite values .* in conv.weight"):
        load_source("py:userfactories:small", weights=tmp_path / "inf.pt")
    with pytest.raises(SourceError, match="carries its own weights"):
        load_source(tmp_path / "none.pt", weights=tmp_path / "inf.pt")


def test_model_kwargs_json():
    assert parse_kwargs('{"num_classes": 10, "depth": 2}') == {"num_classes": 10, "depth": 2}
    assert parse_kwargs(None) == {}
    with pytest.raises(SourceError, match="is not JSON"):
        parse_kwargs("{num_classes: 10}")
    with pytest.raises(SourceError, match="is a list; write a JSON object"):
        parse_kwargs("[1, 2]")
