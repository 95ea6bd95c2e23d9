"""2-D surfaces as VTK XML PolyData (``.vtp``), the files ParaView renders.

loss-landscape's ``h52vtp.py`` does this for its h5 files, but its interpolation calls
``scipy.interpolate.interp2d``, which SciPy removed (1.14). Here a surface becomes a quad mesh
whose points are ``(x, y, z)`` with z the chosen metric, every metric of the file as a point
array (ParaView colors by any of them), optionally resampled onto a finer regular grid by
``scipy.interpolate.RegularGridInterpolator``. The file is written by pyevtk (pure Python,
numpy only: the optional extra ``[viz]``), raw binary appended data, readable by VTK 6+.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.interpolate import RegularGridInterpolator
from scipy.sparse.linalg import spsolve

from awp.extras import require
from awp.io import atomic_write_with
from landscape.config import VTP_METHODS as METHODS


@dataclass(frozen=True)
class Mesh:
    """A surface on a regular grid as a quad mesh.

    Attributes:
        points: (ny * nx, 3) float64 ``(x, y, z)``, point ``j * nx + i`` at ``(x[i], y[j])``.
        quads: (ny - 1) * (nx - 1), 4) int64 point indices, counter-clockwise.
        arrays: metric -> (ny * nx,) float64, the values at the points.
    """

    points: np.ndarray
    quads: np.ndarray
    arrays: dict[str, np.ndarray]


def surface_mesh(
    x: np.ndarray,
    y: np.ndarray,
    values: Mapping[str, np.ndarray],
    *,
    z: str,
    points: int = 0,
    method: str = "cubic",
) -> Mesh:
    """The quad mesh of a 2-D surface, on its own grid or resampled.

    Args:
        x: (nx,) increasing coordinates; y: (ny,) increasing coordinates.
        values: metric -> (ny, nx) values (row j is y[j], as in the h5 files).
        z: the metric that gives the points' height.
        points: resample onto ``points`` x ``points`` coordinates spanning the same ranges
            (0: keep the file's grid).
        method: RegularGridInterpolator's method (linear, cubic, quintic, pchip).

    Raises:
        ValueError: unknown metric or method, too few points for the method, or missing
            (NaN) values where an interpolation needs every point.
    """
    if z not in values:
        raise ValueError(f"no metric {z!r} in the surface; it has {', '.join(sorted(values))}")
    if points:
        if method not in METHODS:
            raise ValueError(f"unknown interpolation {method!r}; choose one of {list(METHODS)}")
        need = METHODS[method]
        if min(len(x), len(y)) < need or points < 2:
            raise ValueError(
                f"{method} interpolation needs at least {need} points per axis, the surface "
                f"has {len(x)} x {len(y)} (and --vtp-points at least 2); use --vtp-method linear"
            )
        missing = {k: int(np.isnan(v).sum()) for k, v in values.items() if np.isnan(v).any()}
        if missing:
            raise ValueError(
                f"cannot interpolate a surface with missing points ({missing}); finish it "
                "(awp landscape --resume) or write it without --vtp-points"
            )
        fine_x = np.linspace(x[0], x[-1], points)
        fine_y = np.linspace(y[0], y[-1], points)
        yy, xx = np.meshgrid(fine_y, fine_x, indexing="ij")  # (points, points)
        at = np.column_stack([yy.ravel(), xx.ravel()])
        # The spline methods solve for their coefficients with an iterative solver by default
        # (tolerance ~1e-6: the curve then misses the file's own values by that much); a
        # direct sparse solve makes it pass through them.
        spline = {"solver": spsolve} if method in ("cubic", "quintic") else {}
        values = {
            k: RegularGridInterpolator((y, x), np.asarray(v, np.float64), method=method, **spline)(
                at
            ).reshape(points, points)
            for k, v in values.items()
        }
        x, y = fine_x, fine_y
    ny, nx = len(y), len(x)
    yy, xx = np.meshgrid(y, x, indexing="ij")  # (ny, nx)
    arrays = {k: np.ascontiguousarray(np.asarray(v, np.float64).ravel()) for k, v in values.items()}
    pts = np.column_stack([xx.ravel(), yy.ravel(), arrays[z]]).astype(np.float64)
    index = np.arange(ny * nx).reshape(ny, nx)
    quads = np.column_stack(
        [
            index[:-1, :-1].ravel(),
            index[:-1, 1:].ravel(),
            index[1:, 1:].ravel(),
            index[1:, :-1].ravel(),
        ]
    ).astype(np.int64)
    return Mesh(points=pts, quads=quads, arrays=arrays)


def write_vtp(path: str | os.PathLike, mesh: Mesh, *, scalars: str | None = None) -> Path:
    """Write ``mesh`` as VTK XML PolyData (atomically).

    Args:
        path: the ``.vtp`` file.
        mesh: points, quads and point arrays.
        scalars: the point array ParaView colors by first (default: the first array).

    Raises:
        MissingDependencyError: pyevtk is not installed (names the extra).
    """
    evtk = require("pyevtk.vtk", purpose="awp plot --vtp")
    names = list(mesh.arrays)
    coords = tuple(np.ascontiguousarray(mesh.points[:, k]) for k in range(3))
    connectivity = np.ascontiguousarray(mesh.quads.ravel())
    offsets = np.arange(4, 4 * len(mesh.quads) + 1, 4, dtype=np.int64)

    def fill(tmp: str) -> None:
        # pyevtk names its file itself (base + ".vtp"): write beside the temp file, then move.
        f = evtk.VtkFile(tmp + "_pyevtk", evtk.VtkPolyData)
        f.openElement("PolyData")
        f.openPiece(npoints=len(mesh.points), npolys=len(mesh.quads))
        f.openElement("Points")
        f.addData("points", coords)
        f.closeElement("Points")
        f.openElement("Polys")
        f.addData("connectivity", connectivity)
        f.addData("offsets", offsets)
        f.closeElement("Polys")
        f.openData("Point", scalars=scalars or names[0])
        for name in names:
            f.addData(name, mesh.arrays[name])
        f.closeData("Point")
        f.closePiece()
        f.closeElement("PolyData")
        f.appendData(coords).appendData(connectivity).appendData(offsets)
        for name in names:
            f.appendData(mesh.arrays[name])
        f.save()
        os.replace(tmp + "_pyevtk.vtp", tmp)

    try:
        return atomic_write_with(path, fill)
    finally:
        for left in Path(path).parent.glob(f".{Path(path).name}.*_pyevtk.vtp"):
            left.unlink(missing_ok=True)
