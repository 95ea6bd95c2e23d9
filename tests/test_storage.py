"""Landscape h5 files: round trips, cell layout, loss-landscape's own files, atomic writes."""

import json
import os

import h5py
import numpy as np
import pytest
import torch

from awp.io import remove_stale_temps
from awp.seeds import SEED_SCHEME, SEED_SCHEME_KEY
from landscape import storage
from landscape.config import SurfaceConfig
from landscape.grid import make_grid
from landscape.surface import metric_names
from tests.helpers import tiny_model


def make_surface(kind="2d", nx=4, ny=3):
    y = np.linspace(0, 1, ny) if kind == "2d" else None
    grid = make_grid(kind, np.linspace(-1, 1, nx), y, n_directions=ny)
    names = metric_names(["train", "test"], attack=True, fixed=True)
    attrs = {
        "label": "AT-AWP",
        "config": {"kind": kind, "eps": 8 / 255},
        "checkpoint_sha256": "ab" * 32,
        "direction_seeds": [0, 1],
        "direction_types": ["random", "random"],
        "target_sha256": "",
    }
    return storage.new_surface(grid, names, attrs)


def test_round_trip_all_kinds(tmp_path):
    for kind in ("1d", "2d", "multi", "interp"):
        s = make_surface(kind)
        rng = np.random.default_rng(0)
        recorded = (0, 2, s.computed.size - 1)
        for index in recorded:
            s.record(index, {m: float(rng.random()) for m in s.values})
        path = storage.write_surface(tmp_path / f"{kind}.h5", s)
        back = storage.read_surface(path)
        assert back.kind == kind and back.label == "AT-AWP" and not back.foreign
        assert np.array_equal(back.x, s.x)
        assert (back.y is None) == (kind != "2d")
        assert set(back.values) == set(s.values)
        for m in s.values:
            assert np.array_equal(back.values[m], s.values[m], equal_nan=True), m
        assert np.array_equal(back.computed, s.computed)
        assert back.pending() == [i for i in range(s.computed.size) if i not in recorded]
        assert back.attrs["config"] == {"kind": kind, "eps": 8 / 255}
        assert back.attrs["direction_seeds"] == [0, 1]
        assert back.attrs["schema"] == storage.SCHEMA
        with h5py.File(path) as f:
            # 1-D curves are (nx,) as loss-landscape writes them; the rest (rows, nx).
            want = (4,) if kind in ("1d", "interp") else (3, 4)
            assert f["test_adv_loss"].shape == want
            assert np.isnan(f["test_loss"][()]).sum() == s.computed.size - 3


def test_non_square_points_land_in_their_cells(tmp_path):
    s = make_surface("2d", nx=5, ny=2)
    # Value = the point's own coordinates, so a misplaced cell is visible.
    for index in range(10):
        row, col = divmod(index, 5)
        s.record(index, {m: 100 * s.y[row] + s.x[col] for m in s.values})
    path = storage.write_surface(tmp_path / "s.h5", s)
    with h5py.File(path) as f:
        z, x, y = f["test_loss"][()], f["xcoordinates"][()], f["ycoordinates"][()]
    X, Y = np.meshgrid(x, y)  # what loss-landscape's plot_2D and matplotlib use
    assert z.shape == (2, 5)
    assert np.allclose(z, 100 * Y + X)


def loss_landscape_file(path, x, y, losses, accs):
    """A surface file written the way loss-landscape's plot_surface.py writes it.

    Arrays of shape (len(x), len(y)) filled with -1, then ``arr.ravel()[ind] = value`` where
    ``ind`` runs over ``np.meshgrid(x, y)`` raveled (scheduler.get_job_indices); accuracies in
    percent. ``losses``/``accs``: callables of the coordinates, or None to leave a point at -1.
    """
    with h5py.File(path, "w") as f:
        f["dir_file"] = "model.t7_weights.h5"
        f["xcoordinates"] = x
        shape = x.shape if y is None else (len(x), len(y))
        loss, acc = -np.ones(shape), -np.ones(shape)
        if y is None:
            coords = x.ravel()[:, None]
        else:
            f["ycoordinates"] = y
            xm, ym = np.meshgrid(x, y)
            coords = np.c_[xm.ravel(), ym.ravel()]
        for ind, c in enumerate(coords):
            value = losses(*c)
            if value is not None:
                loss.ravel()[ind] = value
                acc.ravel()[ind] = accs(*c)
        f["train_loss"] = loss
        f["train_acc"] = acc


def test_reads_loss_landscape_files_including_non_square_ones(tmp_path):
    x, y = np.linspace(-1, 1, 5), np.linspace(-1, 1, 3)
    path = tmp_path / "ll2d.h5"

    def missing_corner(a, b):
        return None if (a, b) == (1.0, 1.0) else 2.0 + a + 10 * b

    loss_landscape_file(path, x, y, missing_corner, lambda a, b: 50.0 + a)
    s = storage.read_surface(path)
    assert s.foreign and s.kind == "2d" and s.values["train_loss"].shape == (3, 5)
    X, Y = np.meshgrid(x, y)
    want = 2.0 + X + 10 * Y
    want[2, 4] = np.nan  # -1 means "missing" there; NaN here
    assert np.allclose(s.values["train_loss"], want, equal_nan=True)
    acc_want = (50.0 + X) / 100
    acc_want[2, 4] = np.nan
    assert np.allclose(s.values["train_acc"], acc_want, equal_nan=True)  # percent -> fraction
    assert s.pending() == [14]
    one = tmp_path / "ll1d.h5"
    loss_landscape_file(one, x, None, lambda a: 1.0 + a * a, lambda a: 100.0)
    s1 = storage.read_surface(one)
    assert s1.kind == "1d" and s1.values["train_loss"].shape == (1, 5)
    assert np.allclose(s1.values["train_loss"][0], 1.0 + x * x)
    assert np.allclose(s1.values["train_acc"], 1.0)
    with pytest.raises(storage.SurfaceFileError, match="loss-landscape"):
        storage.check_resumable(s1, config={}, checkpoint_sha256="x")


def test_a_failed_write_leaves_the_previous_file_intact(tmp_path, monkeypatch):
    s = make_surface("1d")
    s.record(0, {m: 1.0 for m in s.values})
    path = storage.write_surface(tmp_path / "s.h5", s)
    before = path.read_bytes()
    s.record(1, {m: 2.0 for m in s.values})

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed before the rename")

    monkeypatch.setattr(storage.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        storage.write_surface(path, s)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert not list(tmp_path.glob(".*.tmp"))  # the temp file was cleaned up
    assert storage.read_surface(path).pending() == [1, 2, 3]
    # A temp left by a SIGKILL (no cleanup possible) is removed on resume.
    stray = tmp_path / ".s.h5.abc123.tmp"
    stray.write_bytes(b"partial")
    assert remove_stale_temps(path) == [stray] and not stray.exists()
    # Results are shared like other files (mkstemp's private 0600 is not kept).
    mask = os.umask(0)
    os.umask(mask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~mask


def test_directions_round_trip(tmp_path):
    model = tiny_model()
    dirs = [
        {n: torch.randn(p.shape) for n, p in model.named_parameters() if p.dim() > 1},
        {"bn1.running_mean": torch.randn(4), "linear.bias": torch.randn(3)},
    ]
    path = storage.write_directions(
        tmp_path / "s.directions.h5",
        dirs,
        types=["random", "target"],
        seeds=[4, None],
        attrs={"checkpoint_sha256": "cd" * 32},
    )
    back, attrs = storage.read_directions(path)
    assert len(back) == 2
    for d, b in zip(dirs, back):
        assert set(d) == set(b)
        assert all(torch.equal(d[n], b[n]) for n in d)
    assert attrs["direction_types"] == ["random", "target"]
    assert attrs["direction_seeds"] == [4, None]
    assert attrs["checkpoint_sha256"] == "cd" * 32
    assert storage.directions_path(tmp_path / "AT.h5").name == "AT.directions.h5"
    with pytest.raises(storage.SurfaceFileError, match="no 'xcoordinates'"):
        storage.read_surface(path)
    with pytest.raises(FileNotFoundError, match="directions"):
        storage.read_directions(tmp_path / "missing.h5")


def test_resume_checks_config_and_checkpoint(tmp_path):
    cfg = json.loads(SurfaceConfig().to_json())
    s = make_surface("1d")
    s.attrs["config"] = cfg
    old = storage.read_surface(storage.write_surface(tmp_path / "old.h5", s))
    s.attrs[SEED_SCHEME_KEY] = SEED_SCHEME
    s = storage.read_surface(storage.write_surface(tmp_path / "s.h5", s))
    storage.check_resumable(s, config=cfg, checkpoint_sha256="ab" * 32)
    # a file of a version before the one seeding scheme is read, never continued
    assert old.attrs.get(SEED_SCHEME_KEY) is None and old.values.keys() == s.values.keys()
    with pytest.raises(storage.SurfaceFileError, match="seed_scheme: None in the file.*derive"):
        storage.check_resumable(old, config=cfg, checkpoint_sha256="ab" * 32)
    storage.check_resumable(s, config={**cfg, "device": "cuda"}, checkpoint_sha256="ab" * 32)
    now = {**cfg, "attack": {**cfg["attack"], "steps": 20}}
    with pytest.raises(storage.SurfaceFileError, match="attack.steps: 10 in the file, 20 now"):
        storage.check_resumable(s, config=now, checkpoint_sha256="ab" * 32)
    with pytest.raises(storage.SurfaceFileError, match="checkpoint changed"):
        storage.check_resumable(s, config=cfg, checkpoint_sha256="ef" * 32)
    with pytest.raises(storage.SurfaceFileError, match="target"):
        storage.check_resumable(s, config=cfg, checkpoint_sha256="ab" * 32, target_sha256="1")


def test_read_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        storage.read_surface(tmp_path / "none.h5")
    bad = tmp_path / "bad.h5"
    bad.write_text("not hdf5")
    with pytest.raises(storage.SurfaceFileError, match="not a readable h5"):
        storage.read_surface(bad)
    s = make_surface("1d")
    with pytest.raises(KeyError, match="not in this surface"):
        s.record(0, {"val_loss": 1.0})
