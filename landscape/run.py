"""A landscape result file from start to finish: plan, create or resume, fill point by point.

The shell of :mod:`landscape.surface`: :func:`plan_jobs` decides the result files of a call,
:func:`open_job` creates a file with its directions (or checks that an existing one can be
resumed), and :func:`fill_job` evaluates the missing points, sharded round robin across the
ranks of a torchrun job (rank 0 writes the file after every round; a point's value depends only
on its index, so the result equals a 1-process run). The caller loads the model and the data.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from awp import distributed
from awp.config import check_same_settings, to_dict
from awp.data import capped_notice
from awp.io import library_versions
from awp.modes import unwrap
from awp.perturb import select_params
from awp.seeds import SEED_SCHEME, SEED_SCHEME_KEY, with_scheme
from landscape import storage
from landscape.config import SurfaceConfig
from landscape.curvature_map import EIG_ATTR, EIG_NAMES, EigenMapConfig, extreme_eigenvalues
from landscape.grid import PLANES
from landscape.surface import (
    EvalSet,
    grid_points,
    make_directions,
    metric_names,
    point_seed,
    surface_evaluator,
)
from landscape.trajectory import PathPCA, path_pca

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Job:
    """One result file: a checkpoint (and an interpolation target, or the training path that
    ends at it) and where to write."""

    label: str
    checkpoint: Path
    target: Path | None
    out: Path
    path: tuple[Path, ...] = ()


def safe_name(label: str) -> str:
    """A label as a file name (AT-AWP -> AT-AWP, "AT ep 5" -> AT_ep_5)."""
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", label).strip("._") or "surface"


def plan_jobs(
    checkpoints: Sequence[Path],
    *,
    kind: str,
    labels: Sequence[str] | None,
    default_labels: Sequence[str],
    out: Path,
) -> list[Job]:
    """The result files of a call: one per checkpoint, one A->B file for an interpolation, or
    one file for a trajectory (its checkpoints in training order; theta0 = the last).

    Raises:
        ValueError: wrong number of checkpoints or labels, or clashing file names.
    """
    if kind == "trajectory":
        if len(checkpoints) < 3:
            raise ValueError(
                f"kind trajectory takes a training path: give at least 3 checkpoints in training "
                f"order (e.g. runs/at/checkpoints/epoch_*.pt), got {len(checkpoints)}"
            )
        path = tuple(checkpoints)
        [job] = plan_jobs(
            path[-1:], kind="1d", labels=labels, default_labels=default_labels[-1:], out=out
        )
        return [Job(job.label, job.checkpoint, None, job.out, path)]
    if kind == "interp":
        if len(checkpoints) != 2:
            raise ValueError(
                f"kind interp goes from one checkpoint to another: give exactly 2, "
                f"got {len(checkpoints)}"
            )
        pairs = [(checkpoints[0], checkpoints[1])]
        auto = [f"{default_labels[0]}_to_{default_labels[1]}"]
    else:
        pairs = [(c, None) for c in checkpoints]
        auto = list(default_labels)
        # The same method twice (two AT runs): number them so the files do not clash.
        for name in {a for a in auto if auto.count(a) > 1}:
            k = 0
            for i, a in enumerate(auto):
                if a == name:
                    k += 1
                    auto[i] = f"{a}-{k}"
    if labels is not None and len(labels) != len(pairs):
        raise ValueError(f"got {len(labels)} labels for {len(pairs)} results; give one each")
    names = list(labels) if labels is not None else auto
    if out.suffix == ".h5":
        if len(pairs) != 1:
            raise ValueError(
                f"--out {out} is one file but this call writes {len(pairs)} results: give a folder"
            )
        paths = [out]
    else:
        paths = [out / f"{safe_name(n)}.h5" for n in names]
    if len(set(paths)) != len(paths):
        raise ValueError(f"two results would share a file name ({paths}); pass --labels")
    return [Job(n, c, t, p) for n, (c, t), p in zip(names, pairs, paths)]


@dataclass(frozen=True)
class JobInputs:
    """What a job evaluates: the model at theta0 and its identity, the data, the target."""

    model: nn.Module
    sha256: str
    model_spec: Mapping[str, Any]
    evalsets: Sequence[EvalSet]
    data: Mapping[str, Any]  # the data config and subset sizes, stored in the file
    bn_x: torch.Tensor | None = None
    target_state: Mapping[str, torch.Tensor] | None = None
    target_sha256: str | None = None
    # a trajectory: every checkpoint's tensors (name -> tensor) and identity (checkpoint,
    # sha256, epoch), in training order, the last being theta0's
    path_states: Sequence[Mapping[str, torch.Tensor]] = ()
    path_identity: Sequence[Mapping[str, Any]] = ()


def open_job(job: Job, cfg: SurfaceConfig, inputs: JobInputs, *, resume: bool) -> storage.Surface:
    """Create the job's files (rank 0), or check that existing ones can be resumed.

    Every rank returns the surface as it is on disk, once rank 0 has written it.

    Raises:
        FileExistsError: the file exists and ``resume`` is off.
        storage.SurfaceFileError: the file was made with other settings or another checkpoint.
    """
    error: BaseException | None = None
    if distributed.current().is_main:
        try:
            _prepare_files(job, cfg, inputs, resume=resume)
        except BaseException as err:  # reported on every rank by agree()
            error = err
    distributed.agree(error)
    distributed.barrier()
    return storage.read_surface(job.out)


def _attrs(job: Job, cfg: SurfaceConfig, inputs: JobInputs) -> dict[str, Any]:
    return {
        "label": job.label,
        "config": to_dict(cfg),
        "checkpoint": str(job.checkpoint),
        "checkpoint_sha256": inputs.sha256,
        "target_checkpoint": str(job.target) if job.target else "",
        "target_sha256": inputs.target_sha256 or "",
        "direction_file": storage.directions_path(job.out).name,
        "attack": cfg.attack.describe() if cfg.attack else "none",
        "data": dict(inputs.data),
        "model_spec": dict(inputs.model_spec),
        "versions": library_versions(),
        "accuracy_units": "fraction",
        SEED_SCHEME_KEY: SEED_SCHEME,
    }


def _as_json(obj: Any) -> Any:
    """``obj`` as it reads back from a result file (tuples as lists)."""
    return json.loads(json.dumps(obj, default=str))


def _path_shas(surface: storage.Surface) -> list[str]:
    return [str(c.get("sha256")) for c in (surface.attrs.get("trajectory") or {}).get("path", [])]


def _prepare_files(job: Job, cfg: SurfaceConfig, inputs: JobInputs, *, resume: bool) -> None:
    dir_path = storage.directions_path(job.out)
    if job.out.exists():
        if not resume:
            raise FileExistsError(
                f"{job.out} already holds a landscape; pass --resume to compute its missing "
                "points, or choose another --out"
            )
        surface = storage.read_surface(job.out)
        storage.check_resumable(
            surface,
            config=to_dict(cfg),
            checkpoint_sha256=inputs.sha256,
            target_sha256=inputs.target_sha256,
        )
        for key, what in (("model_spec", "the model as"), ("data", "the data")):
            stored, now = surface.attrs.get(key), _as_json(getattr(inputs, key))
            if stored is not None and _as_json(stored) != now:
                raise storage.SurfaceFileError(
                    f"cannot resume {job.out}: it was computed for {what} "
                    f"{_as_json(stored)}, not {now} (another input convention or data: "
                    "--input, --input-size, --dataset, --center-crop); resume with the same, "
                    "or write to another --out"
                )
        if _path_shas(surface) != [str(c["sha256"]) for c in inputs.path_identity]:
            raise storage.SurfaceFileError(
                f"cannot resume {job.out}: the trajectory's checkpoints differ (other files, "
                "order or contents); resume with the same path, or write to another --out"
            )
        _, dir_attrs = storage.read_directions(dir_path)
        if dir_attrs.get("checkpoint_sha256") != inputs.sha256:
            raise storage.SurfaceFileError(
                f"{dir_path} was made for another checkpoint; start a new run with another --out"
            )
        return
    if resume:
        log.info("%s does not exist yet: starting it", job.out)
    train = next((es for es in inputs.evalsets if es.name == "train"), None)
    path = _path_pca(cfg, inputs) if cfg.kind == "trajectory" else None
    directions, types, seeds = make_directions(
        inputs.model, cfg, train=train, target_state=inputs.target_state, path=path
    )
    attrs = _attrs(job, cfg, inputs)
    if path is not None:
        attrs["trajectory"] = {"path": [dict(c) for c in inputs.path_identity], **path.summary()}
    storage.write_directions(
        dir_path,
        directions,
        types=types,
        seeds=seeds,
        attrs={
            "checkpoint_sha256": inputs.sha256,
            "target_sha256": inputs.target_sha256 or "",
            "config": attrs["config"],
        },
    )
    metrics = metric_names(
        [es.name for es in inputs.evalsets], attack=cfg.attack is not None, fixed=cfg.fixed
    )
    surface = storage.new_surface(
        cfg.grid(), metrics, {**attrs, "direction_seeds": seeds, "direction_types": types}
    )
    storage.write_surface(job.out, surface)


def _path_pca(cfg: SurfaceConfig, inputs: JobInputs) -> PathPCA:
    """The PCA of a trajectory job's path over the tensors ``dir_include`` names."""
    if len(inputs.path_states) != len(inputs.path_identity) or not inputs.path_states:
        raise ValueError("kind trajectory needs the path's states and identities (JobInputs)")
    names = list(select_params(inputs.model, cfg.dir_include))
    theta0 = dict(unwrap(inputs.model).state_dict())
    return path_pca(theta0, inputs.path_states, names)


def fill_job(
    job: Job,
    cfg: SurfaceConfig,
    inputs: JobInputs,
    surface: storage.Surface,
    *,
    device: torch.device,
    on_points: Callable[[int], None] | None = None,
) -> storage.Surface:
    """Evaluate the surface's missing points, sharded across ranks; rank 0 writes after every
    round of points, so a kill loses at most the points in flight.

    Args:
        job, cfg, inputs: as for :func:`open_job`.
        surface: the file's contents (from :func:`open_job`).
        device: where the directions go (the model's device).
        on_points: called on rank 0 with the number of points finished in each round.

    Returns:
        The surface (complete on rank 0).
    """
    directions, _ = storage.read_directions(storage.directions_path(job.out), device=device)
    with surface_evaluator(
        inputs.model,
        directions,
        cfg.grid(),
        inputs.evalsets,
        attack=cfg.attack,
        attack_seed=cfg.attack_seed,
        fixed=cfg.fixed,
        bn=cfg.bn,
        bn_x=inputs.bn_x,
        batch_size=cfg.batch_size,
    ) as evaluate:
        fill_points(job.out, surface, surface.pending(), evaluate, surface.record, on_points)
    return surface


def fill_points(
    out: Path,
    surface: storage.Surface,
    pending: Sequence[int],
    evaluate: Callable[[int], Mapping[str, float]],
    record: Callable[[int, Mapping[str, float]], None],
    on_points: Callable[[int], None] | None = None,
) -> None:
    """Evaluate ``pending`` points round robin across the ranks; after every round rank 0
    records them (``record(index, values)``) and rewrites ``out`` atomically.

    A point's value depends only on its index, so the result equals a 1-process run, and a
    kill loses at most the points in flight.
    """
    ctx = distributed.current()
    mine = distributed.shard(list(pending), ctx.rank, ctx.world)
    rounds = math.ceil(len(pending) / ctx.world)
    for r in range(rounds):
        result = (mine[r], dict(evaluate(mine[r]))) if r < len(mine) else None
        gathered = distributed.gather_to_main(result)
        if gathered is None:
            continue
        finished = [g for g in gathered if g is not None]
        for index, values in finished:
            record(index, values)
        storage.write_surface(out, surface)  # every finished point is on disk now
        if on_points is not None:
            on_points(len(finished))


def open_eigen_map(job: Job, eig: EigenMapConfig) -> storage.Surface:
    """Add the curvature map's datasets (NaN) and settings to a surface file (rank 0), or check
    that those already there were made with the same settings; every rank returns the file. A
    map that holds no value yet takes the current settings.

    Raises:
        storage.SurfaceFileError: the file holds a map made with other settings, or is
            loss-landscape's.
    """
    error: BaseException | None = None
    if distributed.current().is_main:
        try:
            surface = storage.read_surface(job.out)
            saved = surface.attrs.get(EIG_ATTR)
            if surface.foreign:
                raise storage.SurfaceFileError(
                    f"{job.out} was written by loss-landscape; it can be read, not extended"
                )
            if saved and eigen_pending(surface) != list(range(surface.computed.size)):
                check_same_settings(
                    saved,
                    with_scheme(to_dict(eig)),
                    where=f"cannot resume the curvature map of {job.out}: other settings",
                    fix="Use the same --eig-* settings, or write the surface to another --out.",
                    saved_as="in the file",
                    error=storage.SurfaceFileError,
                )
            elif saved != with_scheme(to_dict(eig)):  # new, or a map without a value yet
                surface.attrs[EIG_ATTR] = with_scheme(to_dict(eig))
                for name in EIG_NAMES:
                    surface.values[name] = np.full(surface.computed.shape, np.nan)
                storage.write_surface(job.out, surface)
        except BaseException as err:  # reported on every rank by agree()
            error = err
    distributed.agree(error)
    distributed.barrier()
    return storage.read_surface(job.out)


def eigen_pending(surface: storage.Surface) -> list[int]:
    """Flat indices of the points whose curvature-map values are missing (NaN), in order."""
    missing = np.zeros(surface.computed.shape, dtype=bool)
    for name in EIG_NAMES:
        if name in surface.values:
            missing |= np.isnan(surface.values[name])
        else:
            missing[...] = True
    return [int(i) for i in np.flatnonzero(missing.ravel())]


def eigen_data(
    cfg: SurfaceConfig, eig: EigenMapConfig, inputs: JobInputs
) -> tuple[torch.Tensor, torch.Tensor]:
    """The images of the curvature map: the first ``eig_examples`` of the ``eig_split``
    subset, capped to it with a notice naming ``--eig-examples``.

    Raises:
        ValueError: settings the surface cannot serve (:meth:`EigenMapConfig.check_surface`).
    """
    eig.check_surface(cfg)
    evalset = next(es for es in inputs.evalsets if es.name == eig.eig_split)
    n = capped_notice(eig.eig_examples, len(evalset.y), flag="--eig-examples")
    return evalset.x[:n], evalset.y[:n]


def fill_eigen_map(
    job: Job,
    cfg: SurfaceConfig,
    eig: EigenMapConfig,
    inputs: JobInputs,
    surface: storage.Surface,
    *,
    device: torch.device,
    on_points: Callable[[int], None] | None = None,
    data: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> storage.Surface:
    """Compute the curvature map's missing points (:func:`open_eigen_map` first), sharded
    across ranks like the surface; each point's eigenvalues are computed by one rank.

    The model is moved to each point as the surface's metrics were (the same directions and
    BatchNorm mode); x_adv of ``--eig-loss adv`` is crafted there by the surface's attack with
    the point's seed. ``data`` is :func:`eigen_data`'s (x, y), when the caller has it already.
    """
    x, y = data if data is not None else eigen_data(cfg, eig, inputs)
    directions, _ = storage.read_directions(storage.directions_path(job.out), device=device)
    with grid_points(
        inputs.model, directions, cfg.grid(), bn=cfg.bn, bn_x=inputs.bn_x, batch_size=cfg.batch_size
    ) as goto:

        def evaluate(index: int) -> dict[str, float]:
            goto(index)
            return extreme_eigenvalues(
                inputs.model,
                x,
                y,
                attack=cfg.attack if eig.eig_loss == "adv" else None,
                params=eig.eig_params,
                tol=eig.eig_tol,
                batch_size=cfg.batch_size,
                seed=point_seed(cfg.attack_seed, index, eig.eig_split),
            )

        fill_points(
            job.out, surface, eigen_pending(surface), evaluate, surface.set_values, on_points
        )
    return surface


def ordered_metrics(names: Sequence[str]) -> list[str]:
    """Metric names in reading order: train before test, loss before accuracy."""
    canonical = metric_names(("train", "test"), attack=True, fixed=True)
    rank = {n: i for i, n in enumerate(canonical)}
    return sorted(names, key=lambda n: (rank.get(n, len(rank)), n))


def summary_rows(surface: storage.Surface) -> list[dict[str, Any]]:
    """Table rows: per x (mean over directions for multi), or the extremes of a 2-D surface."""
    keys = ordered_metrics(list(surface.values))
    if surface.kind in PLANES:
        rows = []
        for k in keys:
            v = surface.values[k]
            finite = v[np.isfinite(v)]
            rows.append(
                {
                    "metric": k,
                    "min": float(finite.min()) if finite.size else float("nan"),
                    "max": float(finite.max()) if finite.size else float("nan"),
                    "computed": f"{int(surface.computed.sum())}/{surface.computed.size}",
                }
            )
        return rows
    rows = []
    for j, alpha in enumerate(surface.x):
        row: dict[str, Any] = {"alpha": f"{alpha:g}"}
        for k in keys:
            col = surface.values[k][:, j]
            col = col[np.isfinite(col)]
            row[k] = float(col.mean()) if col.size else float("nan")
        rows.append(row)
    return rows
