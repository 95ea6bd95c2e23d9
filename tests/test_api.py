"""The Python API (awp_landscape.api): one call per measure on a model and data held in
Python, the same numbers as the command on the same model, and models on inputs that are not
images (attack=None)."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from awp.config import AttackConfig
from awp.sources import IMAGENET_MEAN, IMAGENET_STD
from awp_landscape import api
from awp_landscape.cli import main
from landscape.storage import read_surface
from tests.helpers import assert_same_state, snapshot, tiny_batch, tiny_model

ATTACK = AttackConfig(steps=1, step_size=4 / 255, mode="eval")


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_a_landscape_of_a_torchvision_resnet_through_the_api_equals_the_command(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=10)
    torch.save(net.state_dict(), tmp_path / "w.pt")
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (6, 3, 32, 32), generator=g, dtype=torch.uint8)
    y = torch.randint(0, 10, (6,), generator=g)
    torch.save({"x": x, "y": y, "classes": [str(i) for i in range(10)]}, tmp_path / "data.pt")

    model = api.wrapped(net, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    before = snapshot(model)
    curve = api.landscape(model, (x, y), x_range="-1:1:3", attack=ATTACK, batch_size=4)
    assert_same_state(model, before)  # theta0 restored bit for bit
    out = tmp_path / "land.h5"
    args = ["landscape", "torchvision:resnet18", "--weights", str(tmp_path / "w.pt"),
            "--dataset", str(tmp_path / "data.pt"), "--x=-1:1:3", "--n-train", "0",
            "--n-test", "6", "--attack-steps", "1", "--attack-step-size", "4/255",
            "--batch-size", "4", "--out", str(out), "--device", "cpu", "--no-progress"]  # fmt: skip
    assert main(args) == 0
    cli = read_surface(out)
    for name in ("test_loss", "test_acc", "test_adv_loss", "test_adv_acc"):
        np.testing.assert_array_equal(curve.values[name], cli.values[name], err_msg=name)


class Tabular(nn.Module):
    """(N, 8) features -> 3 classes."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(8, 6), nn.Linear(6, 3)

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(x)))


def tabular(n=32):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    return (
        Tabular().double(),
        torch.randn(n, 8, generator=g, dtype=torch.float64),
        torch.randint(0, 3, (n,), generator=g),
    )


def test_a_model_on_tabular_inputs_clean_landscape_flatness_and_curvature():
    model, x, y = tabular()
    before = snapshot(model)
    curve = api.landscape(model, (x, y), attack=None, x_range="-0.5:0.5:5", include="all")
    centre = curve.values["test_loss"][0, 2]
    with torch.no_grad():
        assert centre == pytest.approx(float(F.cross_entropy(model(x), y)), rel=1e-12)
    assert "test_adv_loss" not in curve.values
    rows = api.flatness(model, (x, y), attack=None, alphas=(0.1,), samples=3)
    (row,) = [r for r in rows if r["kind"] == "expected"]
    assert row["alpha"] == 0.1 and row["samples"] == 3 and row["n"] == len(y)
    top = api.curvature(model, (x, y), attack=None, params="all", eig_tol=1e-8)
    params = [p for p in model.parameters()]
    flat = torch.cat([p.reshape(-1) for p in params]).detach().requires_grad_()

    def loss_of(v):  # the loss as a function of the flat parameter vector, by hand
        sizes, out, i = [p.numel() for p in params], [], 0
        for p, k in zip(params, sizes):
            out.append(v[i : i + k].reshape(p.shape))
            i += k
        h = torch.tanh(x @ out[0].T + out[1])
        return F.cross_entropy(h @ out[2].T + out[3], y)

    dense = torch.autograd.functional.hessian(loss_of, flat.detach())
    want = float(torch.linalg.eigvalsh(dense).max())
    assert top["row"]["top_eigenvalue"] == pytest.approx(want, rel=1e-6)
    assert_same_state(model, before)


def test_every_call_on_a_tiny_image_model():
    model = tiny_model(3)
    x, y = tiny_batch(8, seed=2)
    before = snapshot(model)
    gap = api.robust_gap(model, (x[:4], y[:4]), (x[4:], y[4:]), attack=ATTACK)
    assert gap.n_train == gap.n_test == 4 and gap.gap == gap.train_robust_acc - gap.test_robust_acc
    rows = api.quantization(model, (x, y), bits=(8, 4), attack=ATTACK)
    assert [r["bits"] for r in rows] == [32, 8, 4]
    certified = api.certify(model, (x, y), sigmas=(0.25,), n0=10, n=20, noise_draws=0)
    assert len(certified["examples"]) == 8 and certified["summary"][0]["sigma"] == 0.25
    result = api.sharpness(model, (x, y), attack=ATTACK, m=4, steps=1, draws=1)
    assert {(e.kind, e.loss) for e in result.estimates} >= {("worst", "robust")}
    report = api.weight_statistics({"a": model, "b": tiny_model(4)})
    assert {r.label for r in report.stats} == {"a", "b"} and report.comparisons
    assert api.spectra(model)[0]["spectral_norm"] > 0
    connected = api.connectivity(model, tiny_model(4), (x, y), (x, y), points=3, curve=False,
                                 n_bn=8, attack=ATTACK)  # fmt: skip
    assert len(connected["paths"]["line"]) == 3 and connected["barriers"]
    assert_same_state(model, before)  # every call left the model as it was
    json.dumps(rows)  # rows are plain data


def test_bn_data_is_taken_as_images_uint8_or_float_and_refused_without_batchnorm():
    model = tiny_model(3)
    x, y = tiny_batch(8, seed=2)
    x = (x * 255).round() / 255  # exactly representable as uint8
    as_uint8 = (x * 255).round().to(torch.uint8)
    kw = dict(x_range="-1:1:3", attack=None, bn="recompute")
    floats = api.landscape(model, (x, y), bn_data=x, **kw)
    for given in (as_uint8, (as_uint8, y)):  # a bare tensor, and (x, y)
        got = api.landscape(model, (x, y), bn_data=given, **kw)
        assert np.isfinite(got.values["test_loss"]).all()
        np.testing.assert_allclose(got.values["test_loss"], floats.values["test_loss"], rtol=1e-5)
    # recomputed statistics differ from theta0's: the point at 0 is not the eval-mode loss
    kept = api.landscape(model, (x, y), x_range="-1:1:3", attack=None)
    assert not np.allclose(kept.values["test_loss"], floats.values["test_loss"])
    with pytest.raises(ValueError, match="bn_data"):
        api.landscape(model, (x, y), **kw)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 3))
    with pytest.raises(ValueError, match="has no BatchNorm layer.*bn='eval'"):
        api.landscape(mlp, (x, y), bn_data=x, **kw)
    with pytest.raises(ValueError, match="has no BatchNorm layer"):
        api.flatness(mlp, (x, y), alphas=(0.1,), samples=1, attack=None, bn_data=x)
