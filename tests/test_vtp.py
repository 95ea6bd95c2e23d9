"""``awp plot --vtp``: ParaView files read back by VTK's own reader (what ParaView runs)."""

import h5py
import numpy as np
import pytest

from awp_landscape.cli import main
from landscape.grid import make_grid
from landscape.storage import new_surface, write_surface
from landscape.vtp import surface_mesh

X = np.linspace(-1.0, 1.0, 5)
Y = np.linspace(-0.5, 0.5, 4)


def read_vtp(path):
    """(points (n, 3), {array name: (n,)}, quads (m, 4)) as VTK reads the file."""
    pytest.importorskip("pyevtk", reason="pip install -e '.[viz]' brings pyevtk")
    pytest.importorskip("vtkmodules", reason="pip install -e '.[dev]' brings vtk (the reader)")
    from vtkmodules.util.numpy_support import vtk_to_numpy
    from vtkmodules.vtkIOXML import vtkXMLPolyDataReader

    reader = vtkXMLPolyDataReader()
    reader.SetFileName(str(path))
    reader.Update()
    assert reader.GetErrorCode() == 0
    data = reader.GetOutput()
    pd = data.GetPointData()
    arrays = {
        pd.GetArrayName(k): vtk_to_numpy(pd.GetArray(k)) for k in range(pd.GetNumberOfArrays())
    }
    polys = data.GetPolys()
    conn = vtk_to_numpy(polys.GetConnectivityArray()).reshape(-1, 4)
    return vtk_to_numpy(data.GetPoints().GetData()), arrays, conn


def write_h5(path, values):
    surface = new_surface(make_grid("2d", X, Y), list(values), {"label": "AT"})
    for name, v in values.items():
        surface.values[name][...] = v
    surface.computed[...] = True
    return write_surface(path, surface)


def test_points_and_values_equal_the_h5_files(tmp_path):
    rng = np.random.default_rng(0)
    h5 = write_h5(
        tmp_path / "AT.h5",
        {"test_adv_loss": rng.uniform(1, 3, (4, 5)), "test_adv_acc": rng.uniform(0, 1, (4, 5))},
    )
    assert main(["plot", str(h5), "--plots", "heatmap", "--vtp", "--out", str(tmp_path)]) == 0
    points, arrays, quads = read_vtp(tmp_path / "AT_test_adv_loss.vtp")
    with h5py.File(h5) as f:  # the file's own numbers, (ny, nx): row j is y[j]
        x, y = f["xcoordinates"][:], f["ycoordinates"][:]
        loss, acc = f["test_adv_loss"][:], f["test_adv_acc"][:]
    xx, yy = np.meshgrid(x, y)  # (ny, nx)
    np.testing.assert_array_equal(points, np.column_stack([xx.ravel(), yy.ravel(), loss.ravel()]))
    np.testing.assert_array_equal(arrays["test_adv_loss"], loss.ravel())
    np.testing.assert_array_equal(arrays["test_adv_acc"], acc.ravel())
    assert quads.shape == (3 * 4, 4)
    # every quad is a unit cell of the grid, counter-clockwise seen from +z
    corners = points[quads][:, :, :2]  # (cells, 4, 2)
    area = 0.5 * np.sum(
        corners[:, :, 0] * np.roll(corners[:, :, 1], -1, 1)
        - np.roll(corners[:, :, 0], -1, 1) * corners[:, :, 1],
        axis=1,
    )
    np.testing.assert_allclose(area, (X[1] - X[0]) * (Y[1] - Y[0]))


def test_loss_landscape_files_keep_their_orientation(tmp_path):
    """loss-landscape's plot_surface.py stores an (nx, ny) array filled in meshgrid ravel order:
    element k is the point (x[k % nx], y[k // nx])."""
    ll = tmp_path / "ll.h5"
    k = np.arange(len(X) * len(Y))
    raveled = 10 * X[k % len(X)] + Y[k // len(X)]
    with h5py.File(ll, "w") as f:
        f["xcoordinates"], f["ycoordinates"] = X, Y
        f["train_loss"] = raveled.reshape(len(X), len(Y))
    assert main(["plot", str(ll), "--plots", "heatmap", "--vtp", "--out", str(tmp_path)]) == 0
    points, arrays, _ = read_vtp(tmp_path / "ll_train_loss.vtp")
    np.testing.assert_allclose(points[:, 2], 10 * points[:, 0] + points[:, 1])
    np.testing.assert_array_equal(arrays["train_loss"], raveled)


def test_interpolation_onto_a_finer_grid(tmp_path):
    rng = np.random.default_rng(1)
    xx, yy = np.meshgrid(X, Y)
    plane = 2 * xx - 3 * yy + 1  # cubic splines reproduce a plane exactly
    h5 = write_h5(tmp_path / "AT.h5", {"test_loss": plane, "test_acc": rng.uniform(0, 1, (4, 5))})
    args = ["--vtp", "--vtp-points", "13", "--vtp-method", "cubic", "--metrics", "test_loss"]
    assert main(["plot", str(h5), "--plots", "heatmap", *args, "--out", str(tmp_path)]) == 0
    points, arrays, quads = read_vtp(tmp_path / "AT_test_loss.vtp")
    assert len(points) == 13 * 13 and len(quads) == 12 * 12
    fine_x, fine_y = np.linspace(-1, 1, 13), np.linspace(-0.5, 0.5, 13)
    np.testing.assert_allclose(np.unique(points[:, 0]), fine_x)
    np.testing.assert_allclose(np.unique(points[:, 1]), fine_y)
    np.testing.assert_allclose(points[:, 2], 2 * points[:, 0] - 3 * points[:, 1] + 1, atol=1e-12)
    # at the file's own coordinates every interpolant passes through the file's values
    acc = arrays["test_acc"].reshape(13, 13)[::4, ::3]  # y every 4th of 13, x every 3rd
    with h5py.File(h5) as f:
        np.testing.assert_allclose(acc, f["test_acc"][:], atol=1e-12)


def test_interpolation_refusals():
    values = {"loss": np.ones((4, 5))}
    with pytest.raises(ValueError, match="quintic interpolation needs at least 6 points"):
        surface_mesh(X, Y, values, z="loss", points=9, method="quintic")
    holes = {"loss": np.where(np.eye(4, 5) > 0, np.nan, 1.0)}
    with pytest.raises(ValueError, match="missing points"):
        surface_mesh(X, Y, holes, z="loss", points=9, method="linear")
    assert len(surface_mesh(X, Y, holes, z="loss").points) == 20  # its own grid: NaN kept
    with pytest.raises(ValueError, match="no metric 'acc'"):
        surface_mesh(X, Y, values, z="acc")
