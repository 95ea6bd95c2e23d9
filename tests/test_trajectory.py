"""Training trajectories: the PCA against a direct SVD, exact projections, the surface kind
(config, grid, jobs), ``awp landscape --kind trajectory`` with resume and refusals, ``awp plot``,
and 2 gloo processes equal to one."""

import os
import subprocess
import sys
from pathlib import Path

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
from landscape.config import SurfaceConfig
from landscape.grid import make_grid
from landscape.run import plan_jobs
from landscape.storage import read_directions, read_surface, write_surface
from landscape.surface import point_seed
from landscape.trajectory import path_pca

ROOT = Path(__file__).resolve().parents[1]
SHAPES = {"conv.weight": (3, 2, 3, 3), "linear.weight": (4, 5), "linear.bias": (4,)}


def random_states(n: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [
        {k: torch.randn(s, generator=g, dtype=torch.float64) for k, s in SHAPES.items()}
        for _ in range(n)
    ]


def flat(state, names):
    return torch.cat([state[n].reshape(-1) for n in names]).numpy()


# ----------------------------------------------------------------------------- the PCA


def test_pca_matches_a_direct_svd_and_projections_are_exact():
    states, names = random_states(6), ["conv.weight", "linear.weight"]
    p = path_pca(states[-1], states, names)
    # the reference: sklearn's PCA, written out, on the stacked differences to the last
    x = np.stack([flat(s, names) - flat(states[-1], names) for s in states])  # (6, P)
    _, sv, vt = np.linalg.svd(x - x.mean(0), full_matrices=False)
    np.testing.assert_allclose(p.explained_variance_ratio, (sv**2 / (sv**2).sum())[:6], atol=1e-12)
    v = np.stack([flat(d, names) / p.scale for d in p.directions])  # (2, P) unit directions
    np.testing.assert_allclose(v @ v.T, np.eye(2), atol=1e-12)  # orthonormal
    np.testing.assert_allclose(np.abs(v @ vt[:2].T), np.eye(2), atol=1e-10)  # PCs up to sign
    np.testing.assert_allclose(p.coords * p.scale, x @ v.T, atol=1e-10)  # exact projections
    assert np.all(p.coords[0] <= 0) and np.all(p.coords[-1] == 0)  # the sign convention
    norms = np.linalg.norm(x, axis=1)
    assert p.scale == pytest.approx(norms.max()) and p.distances.max() == pytest.approx(1.0)
    np.testing.assert_allclose(p.in_plane[:-1], ((x @ v.T)[:-1] ** 2).sum(1) / norms[:-1] ** 2)
    assert "linear.bias" not in p.directions[0]  # only the tensors named


def test_a_path_in_a_plane_is_reconstructed_exactly():
    base = random_states(3, seed=1)
    theta0, e1, e2 = base  # two non-orthogonal directions through theta0
    ab = [(1.0, -0.5), (0.3, 2.0), (-1.2, 0.7), (0.5, 0.5), (0.0, 0.0)]
    path = [{k: theta0[k] + a * e1[k] + b * e2[k] for k in SHAPES} for a, b in ab]
    p = path_pca(theta0, path, list(SHAPES))
    assert p.explained_variance_ratio[:2].sum() == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(p.in_plane, 1.0, atol=1e-10)
    for state, (cx, cy) in zip(path, p.coords):
        for k in SHAPES:
            rebuilt = theta0[k] + cx * p.directions[0][k] + cy * p.directions[1][k]
            torch.testing.assert_close(rebuilt, state[k], rtol=0, atol=1e-10)


def test_pca_refusals():
    states = random_states(4)
    with pytest.raises(ValueError, match="at least 3"):
        path_pca(states[-1], states[:2], ["conv.weight"])
    line = [{k: states[0][k] * t for k in SHAPES} for t in (1.0, 2.0, 3.0)]
    with pytest.raises(ValueError, match="on a line"):
        path_pca(line[-1], line, ["conv.weight"])
    with pytest.raises(ValueError, match="lacks"):
        path_pca(states[-1], [*states[:2], {"conv.weight": states[2]["conv.weight"]}], list(SHAPES))


# ----------------------------------------------------------------------------- the kind


def test_config_grid_and_jobs_of_a_trajectory(tmp_path):
    cfg = SurfaceConfig(kind="trajectory")
    assert (cfg.x, cfg.y) == ("-1.2:0.4:17", "-0.8:0.8:17")  # resolved, so the file says so
    grid = cfg.grid()
    assert grid.shape == (17, 17) and grid.n_directions == 2
    assert grid.coefficients(17 * 3 + 2) == (grid.x[2], grid.y[3])
    assert make_grid("trajectory", np.zeros(2), np.zeros(3)).rows == 3
    with pytest.raises(ValueError, match="principal directions"):
        SurfaceConfig(kind="trajectory", direction="awp")
    with pytest.raises(ValueError, match="principal directions"):
        SurfaceConfig(kind="trajectory", orthogonalize=True)
    ckpts = [tmp_path / f"e{k}.pt" for k in range(4)]
    [job] = plan_jobs(
        ckpts, kind="trajectory", labels=None, default_labels=["AT"] * 4, out=tmp_path
    )
    assert job.checkpoint == ckpts[-1] and job.path == tuple(ckpts) and job.target is None
    assert job.out == tmp_path / "AT.h5"
    with pytest.raises(ValueError, match="at least 3"):
        plan_jobs(
            ckpts[:2], kind="trajectory", labels=None, default_labels=["AT"] * 2, out=tmp_path
        )


# ----------------------------------------------------------------------------- the command

SPEC = ModelSpec(name="smallcnn", num_classes=10, width=0.25)
FAST = ["--n-test", "24", "--n-train", "16", "--attack-steps", "2", "--batch-size", "16"]
FAST += ["--x=-1:1:3", "--y=-1:1:3", "--no-progress"]


@pytest.fixture(autouse=True, scope="module")
def _cache(tmp_path_factory):
    # A private cache for the decoded sample (conftest pins one thread, also for subprocesses).
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWP_CACHE", str(tmp_path_factory.mktemp("cache")))
        load_data(DataConfig(), progress=False)
        yield


@pytest.fixture(scope="module")
def path_ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("path")
    out = []
    for epoch in (1, 2, 3, 4):
        torch.manual_seed(epoch)
        model = build_model(SPEC)
        with torch.no_grad():  # non-trivial BatchNorm statistics
            for m in model.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.running_var.uniform_(0.5, 1.5)
        config = {"method": "at", "awp": False, "data": to_dict(DataConfig())}
        out.append(
            save_checkpoint(
                d / f"epoch_{epoch:03d}.pt",
                model=model,
                model_spec=to_dict(SPEC),
                config=config,
                epoch=epoch,
            )
        )
    return out


def landscape(*args) -> int:
    return main(["landscape", "--kind", "trajectory", *map(str, args)])


def test_trajectory_file_holds_the_path_and_the_origin_is_the_last_checkpoint(path_ckpts, tmp_path):
    out = tmp_path / "AT.h5"
    assert landscape(*path_ckpts, "--out", out, *FAST) == 0
    s = read_surface(out)
    assert s.kind == "trajectory" and s.computed.all() and s.label == "AT"
    traj = s.attrs["trajectory"]
    assert [c["sha256"] for c in traj["path"]] == [sha256_file(c) for c in path_ckpts]
    assert [c["epoch"] for c in traj["path"]] == [1, 2, 3, 4]
    assert np.shape(traj["coords"]) == (4, 2) and traj["coords"][-1] == [0.0, 0.0]
    assert sum(traj["explained_variance_ratio"]) == pytest.approx(1.0)
    assert s.attrs["checkpoint_sha256"] == sha256_file(path_ckpts[-1])
    dirs, attrs = read_directions(tmp_path / "AT.directions.h5")
    assert len(dirs) == 2 and attrs["direction_types"] == ["pca", "pca"]
    # the origin (row 1, col 1: flat index 4) is theta0 = the last checkpoint itself
    model, _ = load_model(path_ckpts[-1])
    data = load_data(DataConfig(), progress=False)
    idx = fixed_subset(len(data.test), 24, seed=0)
    x, y = to_float(data.test.x[idx]), data.test.y[idx]
    adv = evaluate_attack(
        model, x, y, AttackConfig(steps=2), batch_size=16, seed=point_seed(0, 4, "test")
    )
    assert s.values["test_adv_loss"][1, 1] == adv.loss
    # the figure with the path on it
    assert main(["plot", str(out), "--plots", "contour", "--formats", "png"]) == 0
    assert (tmp_path / "AT_test_adv_loss_trajectory.png").exists()


def test_trajectory_resumes_and_refuses_another_path(path_ckpts, tmp_path, capsys):
    out = tmp_path / "t.h5"
    assert landscape(*path_ckpts, "--out", out, *FAST) == 0
    full = read_surface(out)
    s = read_surface(out)
    s.computed[2, 0] = False  # forget point 6
    s.values["test_loss"][2, 0] = np.nan
    s.values["test_loss"][0, 0] = 123.0  # a computed point is never recomputed
    write_surface(out, s)
    assert landscape(*path_ckpts, "--out", out, *FAST, "--resume") == 0
    back = read_surface(out)
    assert back.computed.all() and back.values["test_loss"][0, 0] == 123.0
    assert back.values["test_loss"][2, 0] == full.values["test_loss"][2, 0]
    before = out.read_bytes()
    capsys.readouterr()
    reordered = [path_ckpts[1], path_ckpts[0], *path_ckpts[2:]]
    assert landscape(*reordered, "--out", out, *FAST, "--resume") == 2
    assert "not in epoch order (epochs 2, 1" in capsys.readouterr().err
    # allowed out of order, it is still another path than the file's
    assert landscape(*reordered, "--out", out, *FAST, "--resume", "--allow-mixed") == 2
    assert "trajectory's checkpoints differ" in capsys.readouterr().err
    assert landscape(*path_ckpts[:2], "--out", out, *FAST, "--resume") == 2
    assert "at least 3" in capsys.readouterr().err
    assert out.read_bytes() == before


@pytest.mark.slow  # 9 s: three processes importing torch. A trajectory's points are filled by
# landscape.run.fill_points, sharded as every surface's: tests/test_landscape_distributed.py
# checks two ranks against one process (BN recompute, every per-point path) in the default
# suite; the PCA directions are a deterministic function of the checkpoints (tested here).
@pytest.mark.distributed
def test_torchrun_two_ranks_equal_one_process(path_ckpts, tmp_path):
    # 9 points: one rank gets 5, the other 4; BN recompute exercises every per-point path.
    args = [*FAST, "--bn", "recompute", "--n-bn", "32", "--dir-include", "all"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += ["-m", "awp_landscape", "landscape", "--kind", "trajectory", *map(str, path_ckpts)]
    cmd += ["--out", str(tmp_path / "two.h5"), *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 process(es)" in proc.stdout
    assert landscape(*path_ckpts, "--out", tmp_path / "one.h5", *args) == 0
    two, one = read_surface(tmp_path / "two.h5"), read_surface(tmp_path / "one.h5")
    assert two.computed.all() and set(two.values) == set(one.values)
    assert two.attrs["trajectory"] == one.attrs["trajectory"]
    for name in one.values:
        assert np.array_equal(two.values[name], one.values[name]), name


def test_checkpoints_outside_the_grid_are_named(path_ckpts, tmp_path, capsys):
    args = ["--x=-0.1:0.1:2", "--y=-0.1:0.1:2", "--n-test", "8", "--n-train", "0"]
    assert landscape(*path_ckpts, "--out", tmp_path / "n.h5", *args, "--attack", "none") == 0
    said = capsys.readouterr().out
    assert "project outside the grid" in said and "--bn recompute" in said
    assert "explained variance PC1" in said


def test_trajectory_panel_and_levels():
    from figures.trajectory import TrajectoryPanel, contour_levels, plot_trajectories

    x, y = np.linspace(-1, 0, 3), np.linspace(-1, 1, 4)
    z = np.arange(12.0).reshape(4, 3) + 1
    path = np.array([[-1.0, -0.2], [-0.5, 0.1], [0.0, 0.0]])
    panel = TrajectoryPanel("AT", x, y, z, path, (5, 10, 15), (0.9, 0.08))
    assert np.allclose(contour_levels([panel], 4), np.geomspace(1, 12, 5))  # > 10x: log levels
    z2 = z.copy()
    z2[0, 0] = np.nan  # not computed: left out
    flat = TrajectoryPanel("AT-AWP", x, y, z2 * 0 + 2 + z2 / 100, path)
    assert np.allclose(contour_levels([flat], 2), np.linspace(2.02, 2.12, 3))
    fig = plot_trajectories([[panel, flat]], metrics=["test_loss"])
    assert len(fig.axes) == 3  # two panels and the row's colour bar
    with pytest.raises(ValueError, match=r"\(ny, nx\)"):
        TrajectoryPanel("AT", x, y, z.T, path)
