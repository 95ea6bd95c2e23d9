"""Tests for awp.models: official key names/shapes, normalization, width, ModelSpec."""

from __future__ import annotations

import json
import math
from dataclasses import asdict

import pytest
import torch
import torch.nn.functional as F

from awp.models import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    MODEL_NAMES,
    VGG19,
    ModelSpec,
    PreActResNet18,
    SmallCNN,
    WideResNet,
    build_model,
)

# Full parameter-name list of the official PreActResNet18 (csdongxian/AWP, AT_AWP/preactresnet.py),
# written out so that a renamed module shows up as a diff.
PREACT18_PARAM_NAMES = sorted(
    """
    conv1.weight
    layer1.0.bn1.weight layer1.0.bn1.bias layer1.0.conv1.weight
    layer1.0.bn2.weight layer1.0.bn2.bias layer1.0.conv2.weight
    layer1.1.bn1.weight layer1.1.bn1.bias layer1.1.conv1.weight
    layer1.1.bn2.weight layer1.1.bn2.bias layer1.1.conv2.weight
    layer2.0.bn1.weight layer2.0.bn1.bias layer2.0.conv1.weight
    layer2.0.bn2.weight layer2.0.bn2.bias layer2.0.conv2.weight layer2.0.shortcut.0.weight
    layer2.1.bn1.weight layer2.1.bn1.bias layer2.1.conv1.weight
    layer2.1.bn2.weight layer2.1.bn2.bias layer2.1.conv2.weight
    layer3.0.bn1.weight layer3.0.bn1.bias layer3.0.conv1.weight
    layer3.0.bn2.weight layer3.0.bn2.bias layer3.0.conv2.weight layer3.0.shortcut.0.weight
    layer3.1.bn1.weight layer3.1.bn1.bias layer3.1.conv1.weight
    layer3.1.bn2.weight layer3.1.bn2.bias layer3.1.conv2.weight
    layer4.0.bn1.weight layer4.0.bn1.bias layer4.0.conv1.weight
    layer4.0.bn2.weight layer4.0.bn2.bias layer4.0.conv2.weight layer4.0.shortcut.0.weight
    layer4.1.bn1.weight layer4.1.bn1.bias layer4.1.conv1.weight
    layer4.1.bn2.weight layer4.1.bn2.bias layer4.1.conv2.weight
    bn.weight bn.bias
    linear.weight linear.bias
    """.split()
)


@pytest.fixture(scope="module")
def wrn34_10() -> WideResNet:
    # 46M parameters: built once, on the meta device (names and shapes without memory or init).
    with torch.device("meta"):
        return WideResNet(depth=34, num_classes=10, widen_factor=10)


def _num_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_preactresnet18_official_names_and_shapes() -> None:
    model = PreActResNet18(num_classes=10)
    params = dict(model.named_parameters())
    assert sorted(params) == PREACT18_PARAM_NAMES
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes["conv1.weight"] == (64, 3, 3, 3)
    assert shapes["layer1.0.conv1.weight"] == (64, 64, 3, 3)
    assert shapes["layer2.0.conv1.weight"] == (128, 64, 3, 3)
    assert shapes["layer2.0.shortcut.0.weight"] == (128, 64, 1, 1)
    assert shapes["layer3.0.shortcut.0.weight"] == (256, 128, 1, 1)
    assert shapes["layer4.1.conv2.weight"] == (512, 512, 3, 3)
    assert shapes["bn.weight"] == (512,)
    assert shapes["linear.weight"] == (10, 512)
    assert shapes["linear.bias"] == (10,)
    # 56 parameters + 17 BatchNorms x (running_mean, running_var, num_batches_tracked).
    assert len(shapes) == 56 + 17 * 3
    assert "layer2.0.bn1.running_var" in shapes
    # Hand count (conv, BN, linear) of the AWP PreActResNet18, which adds a final BN to the
    # original pre-activation ResNet: 11,172,170.
    assert _num_params(model) == 11_172_170
    # Convs have no bias, the head has one.
    assert not any(k.endswith("bias") and "conv" in k for k in shapes)


def test_wrn34_10_official_names_and_shapes(wrn34_10: WideResNet) -> None:
    shapes = {k: tuple(v.shape) for k, v in wrn34_10.state_dict().items()}
    assert shapes["conv1.weight"] == (16, 3, 3, 3)
    assert shapes["block1.layer.0.convShortcut.weight"] == (160, 16, 1, 1)
    assert shapes["block1.layer.0.conv1.weight"] == (160, 16, 3, 3)
    assert shapes["block2.layer.0.convShortcut.weight"] == (320, 160, 1, 1)
    assert shapes["block3.layer.0.convShortcut.weight"] == (640, 320, 1, 1)
    assert shapes["block3.layer.4.conv2.weight"] == (640, 640, 3, 3)
    assert shapes["bn1.weight"] == (640,)
    assert shapes["fc.weight"] == (10, 640)
    assert shapes["fc.bias"] == (10,)
    for b in (1, 2, 3):
        layers = {k.split(".")[2] for k in shapes if k.startswith(f"block{b}.layer.")}
        assert layers == {"0", "1", "2", "3", "4"}  # (34 - 4) / 6 = 5 layers per block
        shortcuts = [k for k in shapes if k.startswith(f"block{b}.") and "convShortcut" in k]
        assert shortcuts == [f"block{b}.layer.0.convShortcut.weight"]
    block_keys = {k.split(".", 3)[3] for k in shapes if k.startswith("block2.layer.1.")}
    expected_block = {
        f"{bn}.{s}"
        for bn in ("bn1", "bn2")
        for s in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    } | {"conv1.weight", "conv2.weight"}
    assert block_keys == expected_block
    # 98 parameters + 31 BatchNorms x 3 buffers; 46,160,474 is the known WRN-34-10 size.
    assert len(list(wrn34_10.parameters())) == 98
    assert len(shapes) == 98 + 31 * 3
    assert _num_params(wrn34_10) == 46_160_474


def test_vgg19_names_and_shapes() -> None:
    model = VGG19(num_classes=10)
    shapes = {k: tuple(v.shape) for k, v in model.named_parameters()}
    conv_idx = [0, 3, 7, 10, 14, 17, 20, 23, 27, 30, 33, 36, 40, 43, 46, 49]
    conv_keys = sorted(
        (k for k, v in shapes.items() if len(v) == 4), key=lambda k: int(k.split(".")[1])
    )
    assert conv_keys == [f"features.{i}.weight" for i in conv_idx]
    assert shapes["features.0.weight"] == (64, 3, 3, 3)
    assert shapes["features.0.bias"] == (64,)  # CIFAR VGG convs keep their bias
    assert shapes["features.1.weight"] == (64,)  # BatchNorm right after each conv
    assert shapes["features.49.weight"] == (512, 512, 3, 3)
    assert shapes["classifier.weight"] == (10, 512)
    assert len(shapes) == 16 * 4 + 2


def test_wrn_init_follows_official() -> None:
    torch.manual_seed(0)
    model = WideResNet(depth=10, widen_factor=4, width=1.0)
    assert torch.equal(model.fc.bias, torch.zeros(10))
    assert torch.equal(model.bn1.weight, torch.ones(256))
    w = model.block3.layer[0].conv2.weight  # (256, 256, 3, 3): 590k draws
    expected = math.sqrt(2.0 / (3 * 3 * 256))  # Kaiming normal, fan_out = k*k*out_channels
    assert abs(w.std().item() / expected - 1) < 0.01  # std of the estimate is ~0.1%
    assert abs(w.mean().item()) < 0.01 * expected


def _randomize_batchnorm(model: torch.nn.Module, gen: torch.Generator) -> None:
    # Non-trivial eval-mode BatchNorm, so that a misplaced BN or shortcut changes the output.
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(0.1 * torch.randn(c, generator=gen, dtype=torch.float64))
            m.running_var.copy_(0.5 + torch.rand(c, generator=gen, dtype=torch.float64))
            m.weight.data.copy_(0.5 + torch.rand(c, generator=gen, dtype=torch.float64))
            m.bias.data.copy_(0.1 * torch.randn(c, generator=gen, dtype=torch.float64))


def _bn(p: dict[str, torch.Tensor], name: str, x: torch.Tensor) -> torch.Tensor:
    return F.batch_norm(
        x,
        p[f"{name}.running_mean"],
        p[f"{name}.running_var"],
        p[f"{name}.weight"],
        p[f"{name}.bias"],
        training=False,
    )


def test_preactresnet18_forward_matches_official_oracle() -> None:
    # Oracle: the official forward (AT_AWP/preactresnet.py) written out functionally over
    # the state_dict, with the official fixed 4x4 average pool of a 32x32 input.
    gen = torch.Generator().manual_seed(0)
    model = PreActResNet18(width=0.125, mean=None, std=None).double().eval()
    _randomize_batchnorm(model, gen)
    p = model.state_dict()
    x = torch.rand(2, 3, 32, 32, generator=gen, dtype=torch.float64)

    out = F.conv2d(x, p["conv1.weight"], padding=1)
    for layer, stride in zip((1, 2, 3, 4), (1, 2, 2, 2), strict=True):
        for i in (0, 1):
            name = f"layer{layer}.{i}"
            s = stride if i == 0 else 1
            pre = F.relu(_bn(p, f"{name}.bn1", out))
            key = f"{name}.shortcut.0.weight"
            shortcut = F.conv2d(pre, p[key], stride=s) if key in p else out
            h = F.conv2d(pre, p[f"{name}.conv1.weight"], stride=s, padding=1)
            h = F.conv2d(F.relu(_bn(p, f"{name}.bn2", h)), p[f"{name}.conv2.weight"], padding=1)
            out = h + shortcut
    out = F.avg_pool2d(F.relu(_bn(p, "bn", out)), 4).view(2, -1)
    expected = F.linear(out, p["linear.weight"], p["linear.bias"])

    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, rtol=1e-10, atol=1e-10)


def test_wideresnet_forward_matches_official_oracle() -> None:
    # Oracle: the official WRN BasicBlock (TRADES / AWP wideresnet.py): where in != out the
    # activated input feeds both conv1 and convShortcut, otherwise the raw input is added.
    gen = torch.Generator().manual_seed(1)
    model = WideResNet(depth=16, widen_factor=2, width=0.5, mean=None, std=None)
    model = model.double().eval()
    _randomize_batchnorm(model, gen)
    p = model.state_dict()
    x = torch.rand(2, 3, 32, 32, generator=gen, dtype=torch.float64)

    out = F.conv2d(x, p["conv1.weight"], padding=1)
    for block, stride in zip((1, 2, 3), (1, 2, 2), strict=True):
        for i in (0, 1):  # (16 - 4) / 6 = 2 layers per block
            name = f"block{block}.layer.{i}"
            s = stride if i == 0 else 1
            key = f"{name}.convShortcut.weight"
            if key in p:  # not equalInOut
                out = F.relu(_bn(p, f"{name}.bn1", out))
                h = out
            else:
                h = F.relu(_bn(p, f"{name}.bn1", out))
            h = F.relu(
                _bn(p, f"{name}.bn2", F.conv2d(h, p[f"{name}.conv1.weight"], stride=s, padding=1))
            )
            h = F.conv2d(h, p[f"{name}.conv2.weight"], padding=1)
            out = (F.conv2d(out, p[key], stride=s) if key in p else out) + h
    out = F.avg_pool2d(F.relu(_bn(p, "bn1", out)), 8).view(2, -1)
    expected = F.linear(out, p["fc.weight"], p["fc.bias"])

    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_output_shapes_small_width(name: str) -> None:
    torch.manual_seed(0)
    spec = ModelSpec(name=name, width=0.125, num_classes=7, depth=16, widen_factor=2)
    model = build_model(spec)
    assert model.spec is spec
    assert model.training  # building leaves the default mode alone
    for mode in ("train", "eval"):
        model.train(mode == "train")
        y = model(torch.rand(2, 3, 32, 32))
        assert y.shape == (2, 7)
        assert torch.isfinite(y).all()
    assert not model.training  # forward did not change the mode the caller set


@pytest.mark.parametrize("name", ["preactresnet18", "wideresnet", "smallcnn"])
def test_other_input_sizes(name: str) -> None:
    model = build_model(ModelSpec(name=name, width=0.125, depth=10, widen_factor=1)).eval()
    assert model(torch.rand(1, 3, 24, 40)).shape == (1, 10)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_normalization_buffers_not_in_state_dict_and_applied(name: str) -> None:
    torch.manual_seed(0)
    kwargs = {"name": name, "width": 0.125, "depth": 10, "widen_factor": 1}
    with_norm = build_model(ModelSpec(**kwargs)).double()
    raw = build_model(ModelSpec(**kwargs, mean=None, std=None)).double().eval()
    # Fresh BatchNorm statistics (mean 0, var 1) let a deep thin net in eval mode collapse to a
    # constant output; one train-mode pass with momentum=None stores this batch's statistics.
    for m in with_norm.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None
    with torch.no_grad():
        with_norm(torch.rand(16, 3, 32, 32, dtype=torch.float64))
    with_norm.eval()
    # Same keys with and without normalization: the statistics never enter checkpoints.
    assert with_norm.state_dict().keys() == raw.state_dict().keys()
    assert not any(k in ("mean", "std") for k in with_norm.state_dict())
    assert with_norm.mean.shape == (1, 3, 1, 1) and with_norm.std.shape == (1, 3, 1, 1)
    assert raw.mean is None and raw.std is None
    raw.load_state_dict(with_norm.state_dict())  # strict: keys match exactly

    # The buffers hold the CIFAR-10 statistics, rounded to float32 when the model was built
    # (model.double() converts those float32 values), so compare against the buffers' values.
    mean, std = with_norm.mean, with_norm.std
    torch.testing.assert_close(mean.flatten(), torch.tensor(CIFAR10_MEAN, dtype=torch.float64))
    torch.testing.assert_close(std.flatten(), torch.tensor(CIFAR10_STD, dtype=torch.float64))
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        y_norm = with_norm(x)
        y_raw = raw((x - mean) / std)
        y_unnormalized = raw(x)
    # float64 and identical arithmetic: equal up to rounding.
    torch.testing.assert_close(y_norm, y_raw, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(y_norm[0], y_norm[1])  # the output depends on the input
    assert not torch.allclose(y_norm, y_unnormalized)  # the normalization did something


def test_buffers_follow_dtype() -> None:
    model = SmallCNN().double()
    assert model.mean.dtype == torch.float64 and model.std.dtype == torch.float64


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_width_shrinks_parameter_count(name: str) -> None:
    counts = [
        _num_params(build_model(ModelSpec(name=name, width=w, depth=10, widen_factor=2)))
        for w in (0.25, 0.5)
    ]
    assert counts[0] < counts[1]


def test_width_rounds_and_stays_positive() -> None:
    model = PreActResNet18(width=0.001)
    assert model.conv1.weight.shape == (1, 3, 3, 3)
    assert model.linear.weight.shape == (10, 1)
    assert PreActResNet18(width=0.3).conv1.weight.shape[0] == round(64 * 0.3)
    # Rounding can make in == out at a stride-2 block; it still runs.
    wrn = WideResNet(depth=10, widen_factor=1, width=0.01).eval()
    assert wrn(torch.rand(1, 3, 32, 32)).shape == (1, 10)


def test_width_one_exact_shapes_smallcnn() -> None:
    model = SmallCNN()
    assert model.conv1.weight.shape == (16, 3, 3, 3)
    assert model.conv2.weight.shape == (32, 16, 3, 3)
    assert 1_000 < _num_params(model) < 10_000


def test_model_spec_json_round_trip() -> None:
    specs = [
        ModelSpec(),
        ModelSpec(name="wideresnet", depth=28, widen_factor=10, width=0.5, num_classes=100),
        ModelSpec(name="smallcnn", mean=None, std=None),
        ModelSpec(name="vgg19", mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25]),
    ]
    for spec in specs:
        data = json.loads(json.dumps(asdict(spec)))
        assert isinstance(data["mean"], list | type(None))
        again = ModelSpec(**data)
        assert again == spec
        assert hash(again) == hash(spec)
    assert ModelSpec(mean=[0.5, 0.5, 0.5], std=[1, 1, 1]).mean == (0.5, 0.5, 0.5)
    assert isinstance(ModelSpec(width=1).width, float)


def test_model_spec_errors_are_clear() -> None:
    with pytest.raises(ValueError, match="unknown model name 'resnet50'.*preactresnet18"):
        ModelSpec(name="resnet50")
    with pytest.raises(ValueError, match=r"\(depth - 4\) % 6 == 0"):
        ModelSpec(name="wideresnet", depth=33)
    with pytest.raises(ValueError, match="num_classes"):
        ModelSpec(num_classes=1)
    with pytest.raises(ValueError, match="width"):
        ModelSpec(width=0.0)
    with pytest.raises(ValueError, match="width"):
        ModelSpec(width=float("nan"))
    with pytest.raises(ValueError, match="both given or both None"):
        ModelSpec(mean=None)
    with pytest.raises(ValueError, match="length 3"):
        ModelSpec(mean=(0.5,), std=(0.5,))
    with pytest.raises(ValueError, match="std must be finite and > 0"):
        ModelSpec(std=(0.2, 0.0, 0.2))
    # The depth rule only concerns WideResNet.
    assert ModelSpec(name="smallcnn", depth=33).depth == 33


def test_model_errors_are_clear() -> None:
    with pytest.raises(ValueError, match=r"\(depth - 4\) % 6 == 0"):
        WideResNet(depth=20)
    with pytest.raises(ValueError, match="ModelSpec"):
        build_model("preactresnet18")  # type: ignore[arg-type]
    model = SmallCNN()
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        model(torch.rand(3, 32, 32))
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        model(torch.rand(2, 1, 32, 32))
    with pytest.raises(ValueError, match="H, W >= 32"):
        VGG19(width=0.125)(torch.rand(1, 3, 16, 16))
