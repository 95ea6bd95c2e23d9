"""Where a landscape is evaluated: coordinates from ``min:max:num`` and the grid of points.

A grid has ``rows x nx`` points with flat index ``row * nx + col``: one row for a curve or an
interpolation, a row per y coordinate for a 2-D surface, a row per direction for several
random directions. Every point's coefficients (theta = theta0 + sum_i c_i d_i) are a pure
function of its index, so points can be split across processes and resumed in any order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from awp.config import check_choice

KINDS = ("1d", "2d", "multi", "interp", "trajectory")
# Kinds on a plane of two directions (x and y coordinates): a 2-D surface, a training path's.
PLANES = ("2d", "trajectory")
DEFAULT_RANGE = "-1:1:21"
DEFAULT_INTERP_RANGE = "-0.5:1.5:21"
MAX_AXIS_POINTS = 10_001  # a typo guard (-1:1:210000); no figure resolves more
MAX_GRID_POINTS = 1001 * 1001


def parse_range(text: str) -> np.ndarray:
    """Coordinates from loss-landscape's ``min:max:num`` notation (``-1:1:21``).

    Values are rounded to 12 decimals so that e.g. 0 and 1 are hit exactly when the grid
    contains them (linspace alone gives 1.0000000000000002 for ``-0.5:1.5:21``).

    Returns:
        float64 array of ``num`` increasing coordinates (``num == 1`` gives ``[min]``).

    Raises:
        ValueError: not three fields, num < 1, max < min, min == max with num > 1, more than
            :data:`MAX_AXIS_POINTS`, or non-finite values.
    """
    parts = str(text).split(":")
    try:
        if len(parts) != 3:
            raise ValueError
        lo, hi, num = float(parts[0]), float(parts[1]), int(parts[2])
    except ValueError:
        raise ValueError(
            f"cannot read coordinates {text!r}: write min:max:num, e.g. --x=-1:1:21 "
            "(with '=' so the leading minus is not read as a flag)"
        ) from None
    if not (np.isfinite(lo) and np.isfinite(hi)) or num < 1 or hi < lo:
        raise ValueError(f"coordinates {text!r}: need finite min <= max and num >= 1")
    if hi == lo and num > 1:
        raise ValueError(
            f"coordinates {text!r}: min == max gives {num} copies of one point; "
            f"write {parts[0]}:{parts[1]}:1, or widen the range"
        )
    if num > MAX_AXIS_POINTS:
        raise ValueError(
            f"coordinates {text!r}: {num} points on one axis (at most {MAX_AXIS_POINTS}); a "
            f"figure shows 21-101, e.g. {parts[0]}:{parts[1]}:51"
        )
    if num == 1:
        return np.array([lo])
    return np.round(np.linspace(lo, hi, num), 12) + 0.0  # + 0.0 turns -0.0 into 0.0


@dataclass(frozen=True, eq=False)
class Grid:
    """Where a landscape is evaluated: ``rows x nx`` points, flat index ``row * nx + col``.

    Attributes:
        kind: "1d" / "interp" (one row, one direction), "2d" / "trajectory" (row = y index;
            directions x, y) or "multi" (row = direction index; each its own direction).
        x: (nx,) coordinates along the x direction(s).
        y: (ny,) coordinates along y for the planes (:data:`PLANES`), else None.
        rows: ny for a plane, the number of directions for "multi", 1 otherwise.
    """

    kind: str
    x: np.ndarray
    y: np.ndarray | None
    rows: int

    @property
    def nx(self) -> int:
        return len(self.x)

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, nx): the in-memory shape of every value array."""
        return self.rows, self.nx

    @property
    def n_points(self) -> int:
        return self.rows * self.nx

    @property
    def n_directions(self) -> int:
        return 2 if self.kind in PLANES else {"multi": self.rows}.get(self.kind, 1)

    def cell(self, index: int) -> tuple[int, int]:
        """(row, col) of a flat point index."""
        if not 0 <= index < self.n_points:
            raise IndexError(f"point {index} outside a grid of {self.n_points} points")
        return divmod(index, self.nx)

    def coefficients(self, index: int) -> tuple[float, ...]:
        """c_i of every direction at a point: theta = theta0 + sum_i c_i d_i."""
        row, col = self.cell(index)
        if self.kind in PLANES:
            assert self.y is not None
            return float(self.x[col]), float(self.y[row])
        if self.kind == "multi":
            c = [0.0] * self.rows
            c[row] = float(self.x[col])
            return tuple(c)
        return (float(self.x[col]),)


def make_grid(
    kind: str, x: np.ndarray, y: np.ndarray | None = None, *, n_directions: int = 1
) -> Grid:
    """Build a :class:`Grid` (1d/interp: one row; 2d/trajectory: ny rows; multi: one row per
    direction).

    Args:
        kind: one of :data:`KINDS`.
        x: (nx,) coordinates; y: (ny,) coordinates for the planes (:data:`PLANES`) only.
        n_directions: number of directions for "multi" (>= 1).
    """
    check_choice(kind, KINDS, "kind")
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    if kind in PLANES:
        if y is None:
            raise ValueError(f"a {kind} grid needs y coordinates")
        y = np.asarray(y, dtype=np.float64).reshape(-1)
        if len(x) * len(y) > MAX_GRID_POINTS:
            raise ValueError(
                f"a {len(y)} x {len(x)} surface has {len(x) * len(y)} points, more than "
                f"{MAX_GRID_POINTS} (1001 x 1001); use fewer coordinates, e.g. 51 x 51"
            )
        return Grid(kind, x, y, len(y))
    if y is not None:
        raise ValueError(f"only a 2d or trajectory grid has y coordinates (kind {kind!r})")
    return Grid(kind, x, None, n_directions if kind == "multi" else 1)
