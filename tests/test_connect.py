"""Mode connectivity (``awp connect``): exact ends, a trained curve that lowers a straight-line
barrier on a tiny model, resume after a kill equal to an uninterrupted training, barriers, and
the command end to end."""

import json

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from analysis.connect import (
    ConnectConfig,
    CurveState,
    barriers,
    coefficients,
    point_metrics,
    train_curve,
    write_point,
)
from awp.augment import as_float
from awp_landscape.cli import main
from landscape.surface import EvalSet
from tests.helpers import assert_same_state, snapshot, synthetic_images, tiny_model
from tests.test_landscape_cli import _cache, ckpts  # noqa: F401 (fixtures)

CLEAN = dict(objective="clean", batch_size=32, lr=0.1, augment=False, n_test=32, n_bn=32)


def params_of(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.fixture(scope="module")
def pair():
    """A tiny model A fitted to synthetic data, and B: A with its hidden channels permuted.

    A and B compute the same function (same loss), but the straight line between them mixes
    unrelated filters: a barrier a curve can go around.
    """
    x, y = synthetic_images(128, seed=0)
    model = tiny_model(seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model.train()
    for _ in range(150):
        opt.zero_grad()
        F.cross_entropy(model(as_float(x)), y).backward()
        opt.step()
    model.eval()
    a = params_of(model)
    perm = torch.tensor([2, 0, 3, 1])
    b = dict(a)
    b["conv1.weight"] = a["conv1.weight"][perm]
    b["bn1.weight"], b["bn1.bias"] = a["bn1.weight"][perm], a["bn1.bias"][perm]
    b["conv2.weight"] = a["conv2.weight"][perm][:, perm]
    b["conv2.bias"] = a["conv2.bias"][perm]
    b["bn2.weight"], b["bn2.bias"] = a["bn2.weight"][perm], a["bn2.bias"][perm]
    b["linear.weight"] = a["linear.weight"][:, perm]
    return model, a, b, x, y


def loss_at(model, ends, path, t, x, y):
    es = EvalSet("test", as_float(x), y)
    return point_metrics(
        model, ends, path, t, [es], bn_x=as_float(x), attack=None, seed=0, batch_size=128
    )["test_loss"]


def test_ends_of_the_curve_are_exactly_a_and_b(pair):
    model, a, b, *_ = pair
    theta = {n: torch.randn_like(v) for n, v in a.items()}
    tensors = {n: torch.empty_like(v) for n, v in a.items()}
    for path in ("line", "curve"):
        write_point(tensors, (a, theta, b), coefficients(path, 0.0))
        assert all(torch.equal(tensors[n], a[n]) for n in a)
        write_point(tensors, (a, theta, b), coefficients(path, 1.0))
        assert all(torch.equal(tensors[n], b[n]) for n in a)
    write_point(tensors, (a, theta, b), coefficients("curve", 0.5))
    torch.testing.assert_close(
        tensors["conv1.weight"],
        (a["conv1.weight"] + b["conv1.weight"]) / 4 + theta["conv1.weight"] / 2,
    )


def test_training_the_curve_lowers_the_midpoint_loss(pair):
    model, a, b, x, y = pair
    before = snapshot(model)
    ends_loss = loss_at(model, (a, None, b), "line", 0.0, x, y)
    line_mid = loss_at(model, (a, None, b), "line", 0.5, x, y)
    assert line_mid > ends_loss + 0.1  # the straight path crosses a barrier
    state = train_curve(model, a, b, x, y, ConnectConfig(epochs=20, **CLEAN))
    assert_same_state(model, before)  # weights, buffers restored
    curve_mid = loss_at(model, (a, state.theta, b), "curve", 0.5, x, y)
    assert curve_mid < line_mid - 0.5 * (line_mid - ends_loss)  # at least half the barrier gone
    # The curve's ends did not move: same loss as A.
    assert loss_at(model, (a, state.theta, b), "curve", 0.0, x, y) == pytest.approx(ends_loss)


def test_killed_and_resumed_curve_training_equals_an_uninterrupted_one(pair):
    model, a, b, x, y = pair
    cfg = ConnectConfig(
        epochs=2, batch_size=32, augment=True, train_steps=2, n_test=8, n_bn=8, objective="robust"
    )
    xs, ys = x[:64], y[:64]
    whole = train_curve(model, a, b, xs, ys, cfg)
    saved = []

    def kill_after_first(state: CurveState) -> None:
        saved.append(state)
        raise KeyboardInterrupt  # a kill right after the state of epoch 1 was saved

    with pytest.raises(KeyboardInterrupt):
        train_curve(model, a, b, xs, ys, cfg, on_epoch=kill_after_first)
    assert saved[0].epoch == 1
    resumed = train_curve(model, a, b, xs, ys, cfg, start=saved[0])
    assert resumed.epoch == whole.epoch == 2
    for n in whole.theta:
        assert torch.equal(resumed.theta[n], whole.theta[n]), n
    assert not torch.equal(whole.theta["conv1.weight"], (a["conv1.weight"] + b["conv1.weight"]) / 2)


def test_barriers_and_config_errors():
    rows = [
        {"t": 0.0, "test_loss": 1.0, "test_acc": 0.9},
        {"t": 0.5, "test_loss": 3.0, "test_acc": 0.2},
        {"t": 1.0, "test_loss": 2.0, "test_acc": 0.8},
    ]
    by = {r.metric: r for r in barriers("line", rows)}
    assert by["test_loss"].barrier == pytest.approx(1.5) and by["test_loss"].t == 0.5
    assert by["test_acc"].barrier == pytest.approx(0.65) and by["test_acc"].t == 0.5
    with pytest.raises(ValueError, match="two ends"):
        barriers("line", rows[:2])
    with pytest.raises(ValueError, match="objective"):
        ConnectConfig(objective="trades")
    with pytest.raises(ValueError, match="points"):
        ConnectConfig(points=1)


def test_connect_command_end_to_end_and_resume(ckpts, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "conn"
    args = ["connect", *map(str, ckpts), "--out", str(out), "--points", "3", "--epochs", "1"]
    args += ["--n-fit", "64", "--batch-size", "32", "--n-test", "16", "--n-bn", "16"]
    args += ["--attack-steps", "1", "--train-steps", "1", "--no-progress", "--formats", "png"]
    assert main([*args, "--no-curve"]) == 0  # the line alone first: its points are reused
    with h5py.File(out / "connect.h5") as f:
        assert set(f) == {"line"}
        line_first = f["line/test_adv_loss"][:]
    units = out / "units" / "line.rank0.json"
    line_mtime = units.stat().st_mtime_ns
    assert main(args) == 0
    assert units.stat().st_mtime_ns == line_mtime
    text = capsys.readouterr().out
    assert "barrier" in text and (out / "connect.png").is_file()
    with h5py.File(out / "connect.h5") as f:
        assert set(f) == {"line", "curve"}
        np.testing.assert_array_equal(f["curve/t"][:], [0.0, 0.5, 1.0])
        line_adv = f["line/test_adv_loss"][:]
        np.testing.assert_array_equal(line_adv, line_first)
        assert np.isfinite(line_adv).all() and np.isfinite(f["curve/test_adv_acc"][:]).all()
        bars = json.loads(f.attrs["barriers"])
    # The ends of both paths are the same models: the same numbers at t = 0 and t = 1.
    with h5py.File(out / "connect.h5") as f:
        for end in (0, 2):
            assert f["line/test_loss"][end] == pytest.approx(f["curve/test_loss"][end], abs=1e-6)
    mine = next(r for r in bars if r["path"] == "line" and r["metric"] == "test_adv_loss")
    assert mine["barrier"] == pytest.approx(line_adv.max() - (line_adv[0] + line_adv[-1]) / 2)
    # A rerun resumes: nothing trained or evaluated again, the same results.
    before = (out / "curve.pt").stat().st_mtime_ns
    assert main(args) == 0
    assert (out / "curve.pt").stat().st_mtime_ns == before
    assert json.loads((out / "connect.json").read_text())["barriers"] == bars
    # Other training settings: refused with the difference named.
    assert main([*args[:-2], "--lr", "0.2", "--formats", "png"]) != 0
    assert "lr" in capsys.readouterr().err
