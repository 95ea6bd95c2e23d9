"""Landscape files: loss-landscape's h5 layout, extended, resumable and safe against kills.

A run writes two files:

``NAME.h5`` (the surface file, small): ``xcoordinates`` (nx,), ``ycoordinates`` (ny,) for 2-D,
and one float64 dataset per metric with loss-landscape's names (``train_loss``, ``train_acc``,
``test_loss``, ``test_acc``) plus the adversarial ones (``test_adv_loss``, ``test_adv_acc``,
``test_adv_fixed_loss``, ...). Shapes: 2-D ``(ny, nx)`` (``z[i, j]`` is at ``(x[j], y[i])``,
what ``np.meshgrid(x, y)`` and matplotlib expect); 1-D and interpolation ``(nx,)`` (as
loss-landscape writes them, so its ``plot_1D.py`` reads our files); several directions
``(n_directions, nx)``. NaN marks a point not computed, and ``computed`` (uint8, same shape)
says which points were evaluated, so a legitimately NaN loss is not recomputed forever.
Accuracies are fractions in [0, 1]. Attributes: ``format``, ``schema``, ``kind``, ``label``,
``config`` (the SurfaceConfig as JSON), ``checkpoint_sha256`` (and ``target_sha256`` for an
interpolation), ``direction_seeds`` and ``direction_types`` (JSON), ``direction_file``,
``attack``, ``data``, ``model_spec``, ``versions``, ``seed_scheme`` (:mod:`awp.seeds`; none in
files of versions before the one seeding scheme, which cannot be resumed by this one).

``NAME.directions.h5`` (large, written once): group ``d0``, ``d1``, ... per direction, one
dataset per state name, so the run can be reproduced and resumed with the same directions.

Crash safety: the surface file is rewritten whole after each completed point into a temp file
in the same folder, fsync'd, then renamed over the old one (``os.replace`` is atomic). A
SIGKILL at any moment leaves either the previous or the new complete file, never a torn one;
the file is a few kB per metric, so the rewrite costs milliseconds. The directions file is
written the same way, once, before the first point.

Reading a file written by tomgoldstein/loss-landscape works too: its 2-D arrays are declared
``(nx, ny)`` but filled in ``meshgrid(x, y)`` ravel order, so they are reshaped to
``(ny, nx)`` (which fixes its non-square grids); its ``-1`` "missing" becomes NaN and its
percentages become fractions.

Reference: github.com/tomgoldstein/loss-landscape (plot_surface.py, scheduler.py, plot_2D.py).
"""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from awp.config import check_same_settings, from_dict, to_dict
from awp.io import atomic_write_with
from awp.seeds import SEED_SCHEME_KEY, with_scheme
from landscape.config import RESUME_MUTABLE, SurfaceConfig
from landscape.directions import Direction
from landscape.grid import KINDS, Grid, make_grid

log = logging.getLogger(__name__)

FORMAT = "awp-landscape/surface"
DIRECTIONS_FORMAT = "awp-landscape/directions"
SCHEMA = 1
COORDINATES = ("xcoordinates", "ycoordinates")
COMPUTED = "computed"
# Attributes stored as JSON text (h5 attributes hold strings and numbers, not nested data).
JSON_ATTRS = ("config", "direction_seeds", "direction_types", "data", "model_spec", "versions")
JSON_ATTRS += ("trajectory",)  # a trajectory's path: checkpoints, coordinates, variances
JSON_ATTRS += ("hessian_eigs",)  # the curvature map's settings (landscape.curvature_map)
# loss-landscape's datasets that are not metrics.
_FOREIGN_SKIP = (*COORDINATES, "dir_file")


class SurfaceFileError(ValueError):
    """A landscape file that cannot be read or resumed; the message names the file and the fix."""


@dataclass(eq=False)
class Surface:
    """A landscape result in memory (the contents of one surface file).

    Attributes:
        kind: "1d", "2d", "multi", "interp" or "trajectory".
        x: (nx,) coordinates; y: (ny,) coordinates for "2d", else None.
        values: metric name -> (rows, nx) float64 array, NaN where not computed.
        computed: (rows, nx) bool, True where the point was evaluated.
        attrs: decoded attributes (``config`` etc. as dicts/lists).
        path: where it was read from or last written to.
        foreign: True when read from a tomgoldstein/loss-landscape file.
    """

    kind: str
    x: np.ndarray
    y: np.ndarray | None
    values: dict[str, np.ndarray]
    computed: np.ndarray
    attrs: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    foreign: bool = False

    @property
    def rows(self) -> int:
        return int(self.computed.shape[0])

    @property
    def grid(self) -> Grid:
        return make_grid(self.kind, self.x, self.y, n_directions=self.rows)

    @property
    def label(self) -> str:
        """The curve's label (e.g. AT, AT-AWP), or the file's stem."""
        label = self.attrs.get("label")
        if label:
            return str(label)
        return self.path.stem if self.path is not None else "surface"

    @property
    def config(self) -> dict[str, Any]:
        return dict(self.attrs.get("config") or {})

    def pending(self) -> list[int]:
        """Flat indices (row * nx + col) of the points not computed yet, in order."""
        return [int(i) for i in np.flatnonzero(~self.computed.ravel())]

    def record(self, index: int, metrics: Mapping[str, float]) -> None:
        """Store one point's metrics (names must be the file's) and mark it computed."""
        self.set_values(index, metrics)
        self.computed[divmod(int(index), len(self.x))] = True

    def set_values(self, index: int, values: Mapping[str, float]) -> None:
        """Store one point's values (names must be the file's) without marking it computed:
        the datasets added to a surface later (a curvature map) say themselves, by NaN, which
        of their points are missing."""
        cell = divmod(int(index), len(self.x))
        unknown = [k for k in values if k not in self.values]
        if unknown:
            raise KeyError(f"metrics {unknown} are not in this surface ({sorted(self.values)})")
        for k, v in values.items():
            self.values[k][cell] = v


def new_surface(grid: Grid, metrics: Sequence[str], attrs: Mapping[str, Any]) -> Surface:
    """An empty surface (every value NaN, nothing computed) for ``grid``.

    Args:
        grid: the coordinates.
        metrics: value names (e.g. from :func:`landscape.surface.metric_names`).
        attrs: attributes to store (JSON-able values).
    """
    if not metrics:
        raise ValueError("a surface needs at least one metric")
    return Surface(
        kind=grid.kind,
        x=np.asarray(grid.x, dtype=np.float64),
        y=None if grid.y is None else np.asarray(grid.y, dtype=np.float64),
        values={m: np.full(grid.shape, np.nan) for m in metrics},
        computed=np.zeros(grid.shape, dtype=bool),
        attrs=dict(attrs),
    )


def _disk_shape(surface: Surface) -> tuple[int, ...]:
    # 1-D curves as (nx,), as loss-landscape writes them; everything else (rows, nx).
    if surface.kind in ("1d", "interp"):
        return (len(surface.x),)
    return surface.computed.shape


def _encode_attr(key: str, value: Any) -> Any:
    if key in JSON_ATTRS:
        return json.dumps(value, sort_keys=True)
    if value is None:
        return ""
    return value


def surface_bytes(surface: Surface) -> bytes:
    """The h5 file of a surface, in memory (what :func:`write_surface` puts on disk)."""
    buf = io.BytesIO()
    shape = _disk_shape(surface)
    with h5py.File(buf, "w") as f:
        f.attrs["format"] = FORMAT
        f.attrs["schema"] = SCHEMA
        f.attrs["kind"] = surface.kind
        for key, value in surface.attrs.items():
            if key in ("format", "schema", "kind"):
                continue
            f.attrs[key] = _encode_attr(key, value)
        f.create_dataset("xcoordinates", data=np.asarray(surface.x, dtype=np.float64))
        if surface.y is not None:
            f.create_dataset("ycoordinates", data=np.asarray(surface.y, dtype=np.float64))
        for name, arr in surface.values.items():
            f.create_dataset(name, data=np.asarray(arr, dtype=np.float64).reshape(shape))
        f.create_dataset(COMPUTED, data=surface.computed.astype(np.uint8).reshape(shape))
    return buf.getvalue()


def write_surface(path: str | os.PathLike, surface: Surface) -> Path:
    """Write a surface file atomically (temp file, fsync, rename); returns the path."""
    path = Path(path)
    data = surface_bytes(surface)

    def fill(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            fh.write(data)

    atomic_write_with(path, fill)
    surface.path = path
    return path


def _decode_attrs(attrs: h5py.AttributeManager) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in attrs.items():
        if isinstance(value, bytes):
            value = value.decode()
        if isinstance(value, np.generic):
            value = value.item()
        if key in JSON_ATTRS and isinstance(value, str):
            value = json.loads(value) if value else None
        out[key] = value
    return out


def read_surface(path: str | os.PathLike) -> Surface:
    """Read a surface file written here or by tomgoldstein/loss-landscape.

    Returns:
        :class:`Surface` whose arrays are (rows, nx) in memory whatever the file's layout.

    Raises:
        FileNotFoundError: no such file.
        SurfaceFileError: not an h5 file, no ``xcoordinates``, or arrays that do not fit the
            coordinates (naming the dataset).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"landscape file {path} does not exist")
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise SurfaceFileError(
            f"{path} is not a readable h5 file ({err}); was it written by awp landscape or "
            "loss-landscape's plot_surface.py?"
        ) from err
    with f:
        if "xcoordinates" not in f:
            raise SurfaceFileError(
                f"{path} has no 'xcoordinates' dataset: it is not a landscape surface file "
                "(a .directions.h5 file holds directions, not values)"
            )
        try:
            attrs = _decode_attrs(f.attrs)
            if attrs.get("format") == FORMAT:
                surface = _read_ours(f, attrs, path)
            else:
                surface = _read_foreign(f, attrs, path)
        except SurfaceFileError:
            raise
        except (ValueError, TypeError, KeyError, OSError) as err:  # h5py's and numpy's errors
            raise SurfaceFileError(
                f"{path} holds datasets that are not a landscape's numbers ({err}); coordinates "
                "and values must be numeric arrays: recompute it with awp landscape"
            ) from None
    surface.path = path
    return surface


def _read_ours(f: h5py.File, attrs: dict[str, Any], path: Path) -> Surface:
    if int(attrs.get("schema", 0)) > SCHEMA:
        raise SurfaceFileError(
            f"{path} has schema {attrs['schema']}, newer than this library's {SCHEMA}; "
            "upgrade awp-landscape"
        )
    kind = str(attrs.get("kind"))
    if kind not in KINDS:
        raise SurfaceFileError(f"{path}: unknown kind {kind!r}")
    x = np.asarray(f["xcoordinates"], dtype=np.float64)
    y = np.asarray(f["ycoordinates"], dtype=np.float64) if "ycoordinates" in f else None
    computed = np.asarray(f[COMPUTED]).astype(bool)
    computed = computed.reshape(-1, len(x))
    values = {}
    for name in f:
        if name in (*COORDINATES, COMPUTED) or not isinstance(f[name], h5py.Dataset):
            continue
        arr = np.asarray(f[name], dtype=np.float64)
        if arr.size != computed.size:
            raise SurfaceFileError(
                f"{path}: dataset {name} has {arr.size} values for {computed.size} points"
            )
        values[name] = arr.reshape(computed.shape)
    return Surface(kind, x, y, values, computed, attrs)


def _read_foreign(f: h5py.File, attrs: dict[str, Any], path: Path) -> Surface:
    """loss-landscape's layout: (nx,) or (nx, ny) in meshgrid ravel order, -1 = missing, %."""
    x = np.asarray(f["xcoordinates"], dtype=np.float64).reshape(-1)
    y = np.asarray(f["ycoordinates"], dtype=np.float64).reshape(-1) if "ycoordinates" in f else None
    shape = (len(x),) if y is None else (len(y), len(x))
    rows_shape = (1, len(x)) if y is None else shape
    values = {}
    for name in f:
        obj = f[name]
        if name in _FOREIGN_SKIP or not isinstance(obj, h5py.Dataset):
            continue
        if not np.issubdtype(obj.dtype, np.number):
            continue
        arr = np.asarray(obj, dtype=np.float64)
        if arr.size != int(np.prod(shape)):
            log.warning("%s: skipping dataset %s of shape %s", path, name, arr.shape)
            continue
        # Their fill writes losses.ravel()[ind] with ind running over meshgrid(x, y).ravel(),
        # x fastest: the ravel order is (y, x) whatever shape the dataset was declared with.
        arr = arr.ravel().reshape(rows_shape).copy()
        arr[arr == -1] = np.nan
        if name.endswith("_acc"):
            arr = arr / 100.0
        values[name] = arr
    if not values:
        raise SurfaceFileError(f"{path}: no metric datasets fit the coordinates")
    computed = np.logical_and.reduce([np.isfinite(v) for v in values.values()])
    attrs = {**attrs, "source": "loss-landscape", "accuracy_units": "fraction (from percent)"}
    return Surface("2d" if y is not None else "1d", x, y, values, computed, attrs, foreign=True)


def check_resumable(
    surface: Surface,
    *,
    config: Mapping[str, Any],
    checkpoint_sha256: str,
    target_sha256: str | None = None,
) -> None:
    """Refuse to resume a file made with another configuration or checkpoint.

    Raises:
        SurfaceFileError: naming every difference and the fix.
    """
    where = surface.path or "the file"
    if surface.foreign:
        raise SurfaceFileError(
            f"{where} was written by loss-landscape; it can be read and plotted, not resumed"
        )
    problems = []
    if surface.attrs.get("checkpoint_sha256") != checkpoint_sha256:
        problems.append(
            f"checkpoint sha256 {str(surface.attrs.get('checkpoint_sha256'))[:12]}... in the "
            f"file, {checkpoint_sha256[:12]}... now (the checkpoint changed)"
        )
    if (surface.attrs.get("target_sha256") or None) != (target_sha256 or None):
        problems.append("the interpolation target checkpoint differs")
    check_same_settings(
        {**_current_layout(surface.config), SEED_SCHEME_KEY: surface.attrs.get(SEED_SCHEME_KEY)},
        with_scheme(dict(config)),
        where=f"cannot resume {where}: it was made with other settings",
        fix="Resume with the same checkpoint and settings, or write to another --out.",
        ignore=RESUME_MUTABLE,
        saved_as="in the file",
        problems=problems,
        error=SurfaceFileError,
    )


def _current_layout(config: Mapping[str, Any]) -> dict[str, Any]:
    """A stored SurfaceConfig in today's layout (files of older versions are migrated), or as
    stored when it cannot be read (the diff then names what differs)."""
    try:
        return to_dict(from_dict(SurfaceConfig, config))
    except (ValueError, TypeError):
        return dict(config)


# ----------------------------------------------------------------------------- directions


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    t = t.detach().cpu()
    if t.dtype in (torch.bfloat16, torch.float16):
        t = t.float()  # h5py has no bfloat16; the evaluator casts back to the model's dtype
    return t.numpy()


def write_directions(
    path: str | os.PathLike,
    directions: Sequence[Mapping[str, torch.Tensor]],
    *,
    types: Sequence[str],
    seeds: Sequence[int | None],
    attrs: Mapping[str, Any] | None = None,
) -> Path:
    """Write directions atomically: group ``d{k}`` per direction, one dataset per state name.

    Args:
        path: the ``.directions.h5`` file.
        directions: name -> tensor per direction.
        types: "random" | "awp" | "hessian" | "target" per direction.
        seeds: the seed of each random direction (None for the others).
        attrs: more attributes (e.g. ``checkpoint_sha256``).
    """
    if not len(directions) == len(types) == len(seeds):
        raise ValueError("need one type and one seed (or None) per direction")

    def fill(f: h5py.File) -> None:
        f.attrs["format"] = DIRECTIONS_FORMAT
        f.attrs["schema"] = SCHEMA
        f.attrs["direction_types"] = json.dumps(list(types))
        f.attrs["direction_seeds"] = json.dumps(list(seeds))
        for key, value in (attrs or {}).items():
            f.attrs[key] = _encode_attr(key, value)
        for k, d in enumerate(directions):
            g = f.create_group(f"d{k}")
            g.attrs["type"] = types[k]
            g.attrs["seed"] = -1 if seeds[k] is None else int(seeds[k])
            for name, t in d.items():
                g.create_dataset(name, data=_to_numpy(t))

    def fill_file(tmp: str) -> None:
        with h5py.File(tmp, "w") as f:
            fill(f)

    return atomic_write_with(Path(path), fill_file)


def read_directions(
    path: str | os.PathLike, *, device: str | torch.device = "cpu"
) -> tuple[list[Direction], dict[str, Any]]:
    """Read a directions file.

    Returns:
        (one name -> tensor mapping per direction, on ``device``; the decoded attributes).

    Raises:
        FileNotFoundError: no such file (naming how to start over).
        SurfaceFileError: not a directions file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"directions file {path} is missing; a landscape cannot be resumed without its "
            "directions: start a new run with another --out"
        )
    with h5py.File(path, "r") as f:
        attrs = _decode_attrs(f.attrs)
        if attrs.get("format") != DIRECTIONS_FORMAT:
            raise SurfaceFileError(f"{path} is not an awp-landscape directions file")
        count = len([k for k in f if k.startswith("d") and k[1:].isdigit()])
        directions = []
        for k in range(count):
            g = f[f"d{k}"]
            directions.append(
                {name: torch.from_numpy(np.asarray(g[name])).to(device) for name in g}
            )
    return directions, attrs


def directions_path(surface_path: str | os.PathLike) -> Path:
    """``NAME.h5`` -> ``NAME.directions.h5``, beside it."""
    p = Path(surface_path)
    return p.with_name(p.stem + ".directions.h5")
