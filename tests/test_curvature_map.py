"""Curvature maps (``awp landscape --hessian-eigs``): the extreme eigenvalues at grid points
against the exact Hessian of a tiny float64 model, and the map in the surface file (names,
resume, refusals, figure)."""

import h5py
import numpy as np
import pytest
import torch

from awp.config import AttackConfig
from awp.hessian import loss_batches
from awp.perturb import select_params
from landscape.curvature_map import EigenMapConfig, eig_ratio, extreme_eigenvalues
from landscape.directions import random_direction
from landscape.grid import make_grid
from landscape.storage import read_surface, write_surface
from landscape.surface import grid_points
from tests.helpers import assert_same_state, snapshot, tiny_batch, tiny_model
from tests.test_hessian import exact_hessian
from tests.test_landscape_cli import (  # noqa: F401 (fixtures)
    FAST,
    _cache,  # noqa: F401
    ckpts,
    run,
)

ATTACK = AttackConfig(steps=3, step_size=2 / 255)


@pytest.mark.parametrize("attack", [None, ATTACK], ids=["clean", "adv"])
def test_extreme_eigenvalues_match_the_exact_hessian_at_grid_points(attack):
    model = tiny_model(dtype=torch.float64).eval()
    x, y = tiny_batch(10, dtype=torch.float64)
    dirs = [random_direction(model, seed=s) for s in (0, 1)]
    grid = make_grid("2d", np.linspace(-0.5, 0.5, 3), np.linspace(-0.5, 0.5, 3))
    names = list(select_params(model, "weights"))
    before = snapshot(model)
    tol = 1e-6
    with grid_points(model, dirs, grid) as goto:
        for index in (0, 4, 7):  # a corner, theta0, an edge
            goto(index)
            got = extreme_eigenvalues(model, x, y, attack=attack, tol=tol, batch_size=4, seed=index)
            # The reference: the exact Hessian at the point, on the same x_adv (crafted there).
            data = loss_batches(model, x, y, attack=attack, batch_size=4, seed=index)
            xa = torch.cat([b[0] for b in data.batches])
            ev = torch.linalg.eigvalsh(exact_hessian(model, xa, y, names)).numpy()
            scale = abs(ev).max()
            # float64 products, Lanczos to 1e-6: within tol of the spectrum's scale.
            assert got["max_eig"] == pytest.approx(ev[-1], abs=tol * scale)
            assert got["min_eig"] == pytest.approx(ev[0], abs=tol * scale)
            assert ev[0] < 0 < ev[-1]  # a real non-convex point: the map is not trivial
    assert_same_state(model, before)
    r = eig_ratio(np.array([2.0, 0.0, np.nan]), np.array([-1.0, -1.0, 1.0]))
    assert r[0] == 0.5 and np.isnan(r[1:]).all()


def test_config_refuses_bad_values():
    with pytest.raises(ValueError, match="eig_loss"):
        EigenMapConfig(eig_loss="robust")
    with pytest.raises(ValueError, match="eig_tol"):
        EigenMapConfig(eig_tol=0)


def test_landscape_hessian_eigs_end_to_end_resume_and_refusal(ckpts, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "AT.h5"
    grid = ["--kind", "2d", "--x=-1:1:3", "--y=-1:1:2", "--attack", "none"]
    eigs = ["--hessian-eigs", "--eig-examples", "8", "--eig-tol", "1e-3"]
    assert run(ckpts[0], "--out", out, *grid, *FAST) == 0  # the surface first
    assert "max_eig" not in read_surface(out).values
    # A finished surface gains the map on --resume.
    assert run(ckpts[0], "--out", out, *grid, *FAST, "--resume", *eigs) == 0
    s = read_surface(out)
    hi, lo = s.values["max_eig"].copy(), s.values["min_eig"].copy()
    assert hi.shape == (2, 3) and np.isfinite(hi).all() and np.isfinite(lo).all()
    assert (hi >= lo).all() and s.attrs["hessian_eigs"]["eig_examples"] == 8
    with h5py.File(out) as f:  # loss-landscape's names and layout (ny, nx)
        assert f["max_eig"].shape == (2, 3) and f["min_eig"].shape == (2, 3)
    # Kill mid-map: two points lost; a resume recomputes exactly those, to the same values.
    s.values["max_eig"][0, 1] = np.nan
    s.values["min_eig"][1, 2] = np.nan
    write_surface(out, s)
    capsys.readouterr()
    assert run(ckpts[0], "--out", out, *grid, *FAST, "--resume", *eigs) == 0
    assert "2 of 6 points to compute" in capsys.readouterr().out
    again = read_surface(out)
    np.testing.assert_allclose(again.values["max_eig"], hi, rtol=1e-12)
    np.testing.assert_allclose(again.values["min_eig"], lo, rtol=1e-12)
    # Other settings: refused, the file untouched.
    other = ["--hessian-eigs", "--eig-examples", "8", "--eig-tol", "1e-2"]
    assert run(ckpts[0], "--out", out, *grid, *FAST, "--resume", *other) != 0
    assert "eig_tol" in capsys.readouterr().err
    np.testing.assert_array_equal(read_surface(out).values["max_eig"], again.values["max_eig"])
    # awp plot draws the |min/max| map.
    figs = tmp_path / "figs"
    from awp_landscape.cli import main

    assert main(["plot", str(out), "--out", str(figs), "--formats", "png"]) == 0
    assert (figs / "AT_min_eig_max_eig_abs_ratio.png").is_file()
