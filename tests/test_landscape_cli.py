"""``awp landscape`` and ``awp plot`` end to end: several checkpoints, kinds, resume after
SIGKILL, refusals that leave results untouched, figures."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from awp.augment import to_float
from awp.checkpoint import load_model, save_checkpoint, sha256_file
from awp.config import AttackConfig, to_dict
from awp.data import DataConfig, fixed_subset, load_data
from awp.evaluate import evaluate_attack
from awp.models import ModelSpec, build_model
from awp_landscape.cli import main
from landscape.directions import awp_direction
from landscape.storage import read_directions, read_surface, write_surface
from landscape.surface import awp_seed, direction_seed, point_seed

ROOT = Path(__file__).resolve().parents[1]
SPEC = ModelSpec(name="smallcnn", num_classes=10, width=0.25)
FAST = ["--n-test", "24", "--n-train", "16", "--attack-steps", "2", "--batch-size", "16"]
FAST += ["--no-progress"]


@pytest.fixture(autouse=True, scope="module")
def _cache(tmp_path_factory):
    # A private cache for the decoded sample (conftest pins one thread, also for subprocesses).
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWP_CACHE", str(tmp_path_factory.mktemp("cache")))
        load_data(DataConfig(), progress=False)  # decode once; subprocesses read the cache
        yield


def make_checkpoint(path: Path, *, seed: int, awp: bool) -> Path:
    torch.manual_seed(seed)
    model = build_model(SPEC)
    with torch.no_grad():  # non-trivial BatchNorm statistics
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    config = {"method": "at", "awp": awp, "data": to_dict(DataConfig())}
    return save_checkpoint(path, model=model, model_spec=to_dict(SPEC), config=config)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpts")
    return make_checkpoint(d / "at.pt", seed=0, awp=False), make_checkpoint(
        d / "awp.pt", seed=1, awp=True
    )


def run(*args) -> int:
    return main(["landscape", *map(str, args)])


def test_two_checkpoints_on_the_same_direction_seeds(ckpts, tmp_path):
    out = tmp_path / "land"
    assert run(*ckpts, "--out", out, "--x=-1:1:3", "--fixed", *FAST) == 0
    at, awp = read_surface(out / "AT.h5"), read_surface(out / "AT-AWP.h5")
    assert (at.label, awp.label) == ("AT", "AT-AWP")
    assert at.computed.all() and awp.computed.all()
    assert at.attrs["checkpoint_sha256"] == sha256_file(ckpts[0])
    assert at.attrs["direction_seeds"] == awp.attrs["direction_seeds"] == [direction_seed(0, 0)]
    assert at.attrs["attack"] == "PGD-2 linf eps=8/255"
    assert "test_adv_fixed_loss" in at.values and "train_adv_loss" in at.values
    # Same Gaussian draw, normalized to each model's own filters.
    (da,), _ = read_directions(out / "AT.directions.h5")
    (db,), _ = read_directions(out / "AT-AWP.directions.h5")
    for n in da:
        ua = da[n].flatten(1) / da[n].flatten(1).norm(dim=1, keepdim=True)
        ub = db[n].flatten(1) / db[n].flatten(1).norm(dim=1, keepdim=True)
        assert torch.allclose(ua, ub, atol=1e-6), n
    # alpha = 0 is the checkpoint itself on the fixed seeded subset.
    model, _ = load_model(ckpts[0])
    data = load_data(DataConfig(), progress=False)
    idx = fixed_subset(len(data.test), 24, seed=0)
    x, y = to_float(data.test.x[idx]), data.test.y[idx]
    attack = AttackConfig(steps=2)
    clean = evaluate_attack(model, x, y, None, batch_size=16)
    adv = evaluate_attack(model, x, y, attack, batch_size=16, seed=point_seed(0, 1, "test"))
    assert at.values["test_loss"][0, 1] == clean.loss
    assert at.values["test_adv_loss"][0, 1] == adv.loss


def test_resume_computes_only_missing_points_and_refusals_keep_files(ckpts, tmp_path, capsys):
    out = tmp_path / "one.h5"
    args = [ckpts[0], "--out", out, "--x=-1:1:4", *FAST]
    assert run(*args) == 0
    full = read_surface(out)
    s = read_surface(out)
    s.computed[0, 2] = False  # forget point 2
    s.values["test_adv_loss"][0, 2] = np.nan
    s.values["test_loss"][0, 0] = 123.0  # a computed point must never be recomputed
    write_surface(out, s)
    assert run(*args, "--resume") == 0
    back = read_surface(out)
    assert back.computed.all()
    assert back.values["test_adv_loss"][0, 2] == full.values["test_adv_loss"][0, 2]
    assert back.values["test_loss"][0, 0] == 123.0
    before = out.read_bytes()
    capsys.readouterr()
    assert run(*args) == 2  # exists, no --resume
    assert "--resume" in capsys.readouterr().err
    assert run(*args, "--resume", "--attack-steps", "3") == 2
    assert "attack.steps: 2 in the file, 3 now" in capsys.readouterr().err
    changed = make_checkpoint(tmp_path / "at.pt", seed=5, awp=False)
    assert run(changed, *args[1:], "--resume") == 2
    assert "checkpoint changed" in capsys.readouterr().err
    assert out.read_bytes() == before


def test_sigkill_then_resume_equals_an_uninterrupted_run(ckpts, tmp_path):
    out = tmp_path / "killed.h5"
    args = [str(ckpts[0]), "--out", str(out), "--x=-1:1:12", "--n-test", "32", "--n-train", "0"]
    args += ["--attack-steps", "3", "--batch-size", "32", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "awp_landscape", "landscape", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    done = 0
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                done = int(read_surface(out).computed.sum())
            except (FileNotFoundError, OSError, ValueError):
                done = 0
            if done >= 2:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.01)
    finally:
        proc.kill()
        proc.wait()
    partial = read_surface(out)
    assert 2 <= partial.computed.sum() < 12, "the run was not interrupted mid-way"
    assert main(["landscape", *args, "--resume"]) == 0
    resumed = read_surface(out)
    assert main(["landscape", *args[:2], str(tmp_path / "ref.h5"), *args[3:]]) == 0
    ref = read_surface(tmp_path / "ref.h5")
    assert resumed.computed.all()
    for name in ref.values:
        assert np.array_equal(resumed.values[name], ref.values[name]), name


def test_2d_multi_and_interp_kinds(ckpts, tmp_path):
    surface_2d = ["--kind", "2d", "--x=-1:1:3", "--y=0:1:2", "--attack", "none"]
    assert run(ckpts[0], "--out", tmp_path / "s.h5", *surface_2d, "--orthogonalize", *FAST) == 0
    s = read_surface(tmp_path / "s.h5")
    assert s.values["test_loss"].shape == (2, 3) and s.computed.all()
    with h5py.File(tmp_path / "s.h5") as f:
        assert f["test_loss"].shape == (2, 3)  # (ny, nx)
    dirs, attrs = read_directions(tmp_path / "s.directions.h5")
    assert attrs["direction_seeds"] == [direction_seed(0, 0), direction_seed(0, 1)]
    assert len(dirs) == 2
    dot = sum(float((dirs[0][n] * dirs[1][n]).sum()) for n in dirs[0])
    assert abs(dot) < 1e-3  # orthogonalized

    multi = ["--kind", "multi", "--n-directions", "3", "--x=-0.5:0.5:3", "--attack", "none"]
    assert run(ckpts[0], "--out", tmp_path / "m.h5", *multi, *FAST) == 0
    m = read_surface(tmp_path / "m.h5")
    assert m.values["test_loss"].shape == (3, 3)
    assert m.attrs["direction_seeds"] == [direction_seed(0, k) for k in range(3)]
    # Every direction passes through theta0 at alpha = 0.
    assert np.ptp(m.values["test_loss"][:, 1]) == 0

    interp = ["--kind", "interp", "--x=0:1:2", "--attack", "none"]
    assert run(*ckpts, "--out", tmp_path / "i.h5", *interp, *FAST) == 0
    i = read_surface(tmp_path / "i.h5")
    assert i.attrs["target_sha256"] == sha256_file(ckpts[1])
    data = load_data(DataConfig(), progress=False)
    idx = fixed_subset(len(data.test), 24, seed=0)
    x, y = to_float(data.test.x[idx]), data.test.y[idx]
    for col, path in ((0, ckpts[0]), (1, ckpts[1])):
        model, _ = load_model(path)
        want = evaluate_attack(model, x, y, None, batch_size=16).loss
        assert i.values["test_loss"][0, col] == pytest.approx(want, rel=1e-5)


def test_awp_direction_is_stored_and_reproducible(ckpts, tmp_path):
    out = tmp_path / "awp.h5"
    assert run(ckpts[1], "--out", out, "--direction", "awp", "--x=-0.02:0.02:3", *FAST) == 0
    s = read_surface(out)
    assert s.attrs["direction_types"] == ["awp"] and s.attrs["direction_seeds"] == [None]
    (stored,), _ = read_directions(tmp_path / "awp.directions.h5")
    # The same direction from the library: AWP's ascent on the fixed training subset.
    model, _ = load_model(ckpts[1])
    data = load_data(DataConfig(), progress=False)
    idx = fixed_subset(len(data.train), 16, seed=0)
    x, y = to_float(data.train.x[idx]), data.train.y[idx]
    gen = torch.Generator().manual_seed(awp_seed(0))
    want = awp_direction(model, x, y, attack=AttackConfig(steps=2), batch_size=16, generator=gen)
    assert set(stored) == set(want)
    for n in want:
        assert torch.equal(stored[n], want[n]), n
    # Along the worst-case direction the adversarial loss rises on the training subset.
    assert s.values["train_adv_loss"][0, 2] > s.values["train_adv_loss"][0, 1]


def test_cli_errors(ckpts, tmp_path, capsys):
    assert run(ckpts[0], "--kind", "interp", "--out", tmp_path, *FAST) == 2
    assert "exactly 2" in capsys.readouterr().err
    assert run(ckpts[0], "--x=-1:1", "--out", tmp_path, *FAST) == 2
    assert "min:max:num" in capsys.readouterr().err
    assert run(*ckpts, "--labels", "A", "--out", tmp_path, *FAST) == 2
    assert "labels" in capsys.readouterr().err
    assert run(*ckpts, "--out", tmp_path / "x.h5", *FAST) == 2
    assert "give a folder" in capsys.readouterr().err
    assert run(tmp_path / "missing.pt", "--out", tmp_path, *FAST) == 2
    bare = tmp_path / "bare.pt"
    save_checkpoint(bare, model=build_model(SPEC), model_spec=to_dict(SPEC))
    capsys.readouterr()
    assert run(bare, "--out", tmp_path, *FAST) == 2
    assert "--dataset" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.h5"))


def test_plot_command_draws_curves_surfaces_and_loss_landscape_files(ckpts, tmp_path, capsys):
    run(*ckpts, "--out", tmp_path, "--x=-1:1:3", "--fixed", *FAST)
    surface_2d = ["--kind", "2d", "--x=-1:1:3", "--y=-1:1:2", "--attack", "none"]
    run(ckpts[0], "--out", tmp_path / "s2d.h5", *surface_2d, *FAST)
    capsys.readouterr()
    figs = tmp_path / "figs"
    files = [str(tmp_path / "AT.h5"), str(tmp_path / "AT-AWP.h5")]
    metrics = ["--metrics", "test_adv_loss", "test_adv_fixed_loss"]
    assert main(["plot", *files, *metrics, "--out", str(figs)]) == 0
    assert (figs / "AT_AT-AWP_test_adv_loss_test_adv_fixed_loss.png").stat().st_size > 1000
    assert (figs / "AT_AT-AWP_test_adv_loss_test_adv_fixed_loss.pdf").exists()
    # a shell glob (*.h5) also matches the .directions.h5 companions, which are skipped
    globbed = sorted(str(p) for p in tmp_path.glob("AT*.h5"))
    assert any(g.endswith(".directions.h5") for g in globbed)
    assert main(["plot", *globbed, "--out", str(figs / "glob")]) == 0
    assert (figs / "glob" / "AT-AWP_AT_test_adv_loss.png").exists()  # sorted: AT-AWP first
    assert main(["plot", str(tmp_path / "s2d.h5"), "--out", str(figs)]) == 0
    for view in ("contour", "contourf", "heatmap", "surface"):
        assert (figs / f"AT_test_loss_{view}.png").exists(), view
        assert (figs / f"AT_test_loss_{view}.pdf").exists(), view
    # A file as loss-landscape writes it: (nx, ny) in meshgrid ravel order, percentages.
    ll = tmp_path / "ll.h5"
    with h5py.File(ll, "w") as f:
        f["xcoordinates"], f["ycoordinates"] = np.linspace(-1, 1, 3), np.linspace(-1, 1, 4)
        f["train_loss"] = np.arange(12.0).reshape(3, 4) + 1
        f["train_acc"] = np.full((3, 4), 50.0)
    assert main(["plot", str(ll), "--plots", "heatmap", "--out", str(figs)]) == 0
    assert (figs / "ll_train_loss_heatmap.png").exists()
    assert main(["plot", str(ll), "--metrics", "nope", "--out", str(figs)]) == 2
    assert "has no nope" in capsys.readouterr().err


def test_figure_functions():
    from matplotlib.figure import Figure

    from figures.landscape import Curve, curve_stats, plot_contour, plot_curves, plot_surface3d

    v = np.array([[1.0, 2.0, np.nan], [3.0, 4.0, np.nan]])
    mean, low, high = curve_stats(v, "std")
    assert np.allclose(mean[:2], [2.0, 3.0]) and np.isnan(mean[2])
    assert np.allclose(high[:2] - low[:2], [2.0, 2.0])  # population std of (1, 3) is 1
    lo, hi = curve_stats(v, "minmax")[1:]
    assert np.allclose(lo[:2], [1, 2]) and np.allclose(hi[:2], [3, 4])
    fig = plot_curves([Curve("AT", np.arange(3.0), v), Curve("AT-AWP", np.arange(3.0), v[0])])
    assert isinstance(fig, Figure)
    with pytest.raises(ValueError, match="do not fit"):
        Curve("AT", np.arange(2.0), v)
    x, y = np.linspace(-1, 1, 4), np.linspace(0, 1, 3)
    z = np.add.outer(y, x)  # (ny, nx)
    assert isinstance(plot_contour(x, y, z, filled=True), Figure)
    assert isinstance(plot_surface3d(x, y, z), Figure)
    with pytest.raises(ValueError, match="transposed"):
        plot_contour(x, y, z.T)
