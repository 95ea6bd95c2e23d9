"""``awp landscape``: weight loss curves and surfaces of checkpoints, attacks regenerated.

Loads checkpoints and data, plans one h5 file per checkpoint (or one for an interpolation),
then :mod:`landscape.run` creates or resumes each file and fills its missing points, sharded
across the ranks of a torchrun job:

    awp landscape runs/at/checkpoints/best.pt runs/awp/checkpoints/best.pt --out land
    awp landscape A.pt --kind 2d --x=-1:1:21 --y=-1:1:11 --attack none
    awp landscape A.pt B.pt --kind interp
    awp landscape runs/at/checkpoints/epoch_*.pt --kind trajectory --out land/AT.h5
    awp landscape A.pt --kind 2d --x=-1:1:11 --y=-1:1:11 --hessian-eigs --eig-loss adv
    torchrun --nproc_per_node 4 -m awp_landscape landscape A.pt --kind 2d --out land

Its flags are in :mod:`awp_landscape.commands.landscape_parser` (no torch: ``--help`` is fast).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import numpy as np

from awp import distributed
from awp.checkpoint import strip_prefixes
from awp.config import to_dict
from awp.io import exclusive_output
from awp.models import ModelConfig
from awp.perturb import select_params
from awp.progress import progress_bar
from awp_landscape.commands.common import out_folder
from awp_landscape.console import format_table, say
from awp_landscape.flags import dataclass_from_arguments
from awp_landscape.inputs import (
    Inputs,
    Loaded,
    check_files,
    default_label,
    foreign_from,
    run_folder_of,
)
from landscape.config import SurfaceConfig
from landscape.curvature_map import EIG_NAMES, EigenMapConfig, eig_ratio
from landscape.run import (
    Job,
    JobInputs,
    eigen_data,
    eigen_pending,
    fill_eigen_map,
    fill_job,
    open_eigen_map,
    open_job,
    plan_jobs,
    summary_rows,
)
from landscape.storage import Surface, directions_path
from landscape.surface import bn_images, make_evalsets

log = logging.getLogger(__name__)


def compute_landscapes(
    checkpoints: list[Path],
    cfg: SurfaceConfig,
    *,
    out: Path,
    labels: list[str] | None = None,
    resume: bool = False,
    progress: bool = True,
    foreign: tuple[ModelConfig | None, str | None] = (None, None),
    eig: EigenMapConfig | None = None,
    allow_mixed: bool = False,
) -> list[Surface]:
    """Every result file of a call, in turn, each sharded across the torchrun ranks.

    Args:
        checkpoints: one per result (interp: the two ends).
        cfg: what to compute (its ``dataset``/``data_root`` override the checkpoints').
        out: folder of the LABEL.h5 files, or one .h5 file.
        labels: one per result (default: the methods).
        resume: compute only the missing points of existing files.
        progress: show a bar (rank 0).
        foreign: architecture and input convention of checkpoints from elsewhere.
        eig: with ``hessian_eigs`` on, also the curvature map of every file (its missing
            points; a finished surface only gains the map).
        allow_mixed: a trajectory's checkpoints may be out of epoch order or from several runs
            (with a warning); else that is refused.

    Returns:
        The surfaces (complete on rank 0).
    """
    check_files(checkpoints)
    if eig is not None:
        eig.check_surface(cfg)  # the map comes after the whole surface: refuse it first
    with distributed.joined(cfg.device) as ctx:
        device = distributed.pick_device(cfg.device, ctx)
        inputs = Inputs(
            device,
            dataset=cfg.dataset or None,
            data_root=cfg.data_root or None,
            foreign=foreign,
            progress=progress and ctx.is_main,
        )
        jobs = plan_jobs(
            checkpoints,
            kind=cfg.kind,
            labels=labels,
            default_labels=[default_label(p) for p in checkpoints],
            out=out,
        )
        claims = [
            exclusive_output(job.out, cleans=[job.out, directions_path(job.out)]) for job in jobs
        ]
        with distributed.main_holds(ctx, *claims):
            return [
                _run_job(
                    job, cfg, inputs, resume=resume, progress=progress, eig=eig, mixed=allow_mixed
                )
                for job in jobs
            ]


def _path_inputs(
    job: Job, cfg: SurfaceConfig, loaded: Loaded, inputs: Inputs, *, mixed: bool
) -> dict[str, Any]:
    """A trajectory's tensors (those ``dir_include`` names, kept on the CPU: one model at a time
    on the device) and identities (checkpoint, sha256, epoch), in training order."""
    states, idents, runs = [], [], []
    for p in job.path:
        other = loaded if p == job.checkpoint else inputs.load(p, with_data=False)
        if other.spec != loaded.spec:
            raise ValueError(
                f"a trajectory is one model's training path: {p} is a different model "
                f"({other.spec} vs {loaded.spec})"
            )
        chosen = select_params(other.model, cfg.dir_include)
        states.append({k: v.detach().cpu() for k, v in chosen.items()})
        idents.append({k: other.identity()[k] for k in ("checkpoint", "sha256", "epoch")})
        runs.append(str(other.config.get("out") or run_folder_of(p)))
    check_path(idents, runs, mixed=mixed)
    return {"path_states": states, "path_identity": idents}


def check_path(idents: list[dict[str, Any]], runs: list[str], *, mixed: bool) -> None:
    """Refuse a trajectory whose checkpoints are not one run's, in epoch order (theta0 is the
    last one given, the PCA is over the path as given); with ``mixed`` only warn.

    Raises:
        ValueError: naming the epochs or the runs, and --allow-mixed.
    """
    epochs = [int(i["epoch"]) for i in idents]
    problems = []
    if any(b <= a for a, b in zip(epochs, epochs[1:])) and any(epochs):
        problems.append(
            f"its checkpoints are not in epoch order (epochs {', '.join(map(str, epochs))}; "
            f"theta0 would be epoch {epochs[-1]}, not the last epoch)"
        )
    if len(set(runs)) > 1:
        names = ", ".join(dict.fromkeys(runs))
        problems.append(f"its checkpoints come from {len(set(runs))} runs ({names})")
    if not problems:
        return
    text = "a trajectory is one run's training path, but " + " and ".join(problems)
    if not mixed:
        raise ValueError(
            f"{text}: give one run's epoch checkpoints in order (e.g. runs/at/checkpoints/"
            "epoch_*.pt), or pass --allow-mixed"
        )
    log.warning("%s (--allow-mixed: computed as given)", text)


def _job_inputs(job: Job, cfg: SurfaceConfig, inputs: Inputs, *, mixed: bool) -> JobInputs:
    loaded = inputs.load(job.checkpoint)
    target_state, target_sha = None, None
    if job.target is not None:
        target = inputs.load(job.target)
        if target.spec != loaded.spec:
            raise ValueError(
                f"cannot interpolate: {job.checkpoint} and {job.target} are different models "
                f"({loaded.spec} vs {target.spec})"
            )
        target_state = {
            k: v.to(inputs.device) for k, v in strip_prefixes(target.model.state_dict()).items()
        }
        target_sha = target.sha256
    evalsets = make_evalsets(
        loaded.data, n_train=cfg.n_train, n_test=cfg.n_test, seed=cfg.subset_seed
    )
    bn_x = (
        bn_images(loaded.data, n=cfg.n_bn, seed=cfg.subset_seed) if cfg.bn == "recompute" else None
    )
    return JobInputs(
        model=loaded.model,
        sha256=loaded.sha256,
        model_spec=to_dict(loaded.spec),
        evalsets=evalsets,
        data={**to_dict(loaded.data_cfg), "n": {e.name: len(e.y) for e in evalsets}},
        bn_x=bn_x,
        target_state=target_state,
        target_sha256=target_sha,
        **(_path_inputs(job, cfg, loaded, inputs, mixed=mixed) if job.path else {}),
    )


def _run_job(
    job: Job,
    cfg: SurfaceConfig,
    inputs: Inputs,
    *,
    resume: bool,
    progress: bool,
    eig: EigenMapConfig | None = None,
    mixed: bool = False,
) -> Surface:
    ctx = distributed.current()
    job_inputs = _job_inputs(job, cfg, inputs, mixed=mixed)
    surface = open_job(job, cfg, job_inputs, resume=resume)
    pending = len(surface.pending())
    if ctx.is_main:
        sets = " + ".join(f"{len(e.y)} {e.name}" for e in job_inputs.evalsets)
        path = f"a path of {len(job.path)} checkpoints ending at " if job.path else ""
        say(
            f"{job.label}: {cfg.kind} landscape of {path}{job.checkpoint}"
            f"{f' -> {job.target}' if job.target else ''}, {surface.computed.size} points "
            f"({surface.computed.size - pending} already computed), {sets} images, attack "
            f"{cfg.attack.describe() if cfg.attack else 'none'}, BN {cfg.bn}, "
            f"{ctx.world} process(es) on {inputs.device} -> {job.out}"
        )
    bar = progress_bar(total=pending, desc=job.label, enabled=progress and ctx.is_main)
    with bar:
        surface = fill_job(
            job, cfg, job_inputs, surface, device=inputs.device, on_points=bar.update
        )
    if eig is not None and eig.hessian_eigs:
        surface = _curvature_map(job, cfg, eig, job_inputs, inputs, progress=progress)
    if ctx.is_main:
        if job.path:
            say(trajectory_lines(surface))
        say(format_table(summary_rows(surface)))
        say(f"saved {job.out} (directions: {directions_path(job.out).name})")
    return surface


def _curvature_map(
    job: Job,
    cfg: SurfaceConfig,
    eig: EigenMapConfig,
    job_inputs: JobInputs,
    inputs: Inputs,
    *,
    progress: bool,
) -> Surface:
    """The curvature map's missing points of one file, with its own bar and summary line."""
    ctx = distributed.current()
    data = eigen_data(cfg, eig, job_inputs)
    surface = open_eigen_map(job, eig)
    pending = eigen_pending(surface)
    if ctx.is_main:
        say(
            f"{job.label}: curvature map (lambda_max, lambda_min of the {eig.eig_loss} loss on "
            f"{len(data[1])} {eig.eig_split} images, tol {eig.eig_tol:g}), "
            f"{len(pending)} of {surface.computed.size} points to compute"
        )
    bar = progress_bar(
        total=len(pending), desc=f"{job.label} eigs", enabled=progress and ctx.is_main
    )
    with bar:
        surface = fill_eigen_map(
            job,
            cfg,
            eig,
            job_inputs,
            surface,
            device=inputs.device,
            on_points=bar.update,
            data=data,
        )
    if ctx.is_main:
        hi, lo = (surface.values[n] for n in EIG_NAMES)
        ratio = eig_ratio(hi, lo)
        say(
            f"lambda_max in [{np.nanmin(hi):.4g}, {np.nanmax(hi):.4g}], lambda_min in "
            f"[{np.nanmin(lo):.4g}, {np.nanmax(lo):.4g}], |lambda_min/lambda_max| median "
            f"{np.nanmedian(ratio):.3g}, max {np.nanmax(ratio):.3g} ('awp plot' draws the map)"
        )
    return surface


def trajectory_lines(surface: Surface) -> str:
    """The explained variances, and a warning for checkpoints outside the grid."""
    traj = surface.attrs.get("trajectory") or {}
    ratio = traj.get("explained_variance_ratio", [])
    xy = np.asarray(traj.get("coords", []), dtype=np.float64).reshape(-1, 2)
    text = (
        f"PCA of {len(xy)} checkpoints: explained variance "
        + ", ".join(f"PC{k + 1} {r:.1%}" for k, r in enumerate(ratio[:4]))
        + f"; unit = {traj.get('scale', float('nan')):.4g} (the farthest checkpoint's distance)"
    )
    assert surface.y is not None
    outside = (xy[:, 0] < surface.x.min()) | (xy[:, 0] > surface.x.max())
    outside |= (xy[:, 1] < surface.y.min()) | (xy[:, 1] > surface.y.max())
    if surface.config.get("bn") == "eval":
        text += (
            "\nnote: BatchNorm keeps theta0's statistics at every point; far from theta0 they do "
            "not fit the weights (the demo's AT path reached losses in the hundreds): "
            "--bn recompute re-estimates them at every point"
        )
    if outside.any():
        text += (
            f"\nwarning: {int(outside.sum())} checkpoint(s) project outside the grid (path x in "
            f"[{xy[:, 0].min():.2f}, {xy[:, 0].max():.2f}], y in [{xy[:, 1].min():.2f}, "
            f"{xy[:, 1].max():.2f}]); widen --x/--y to see the whole path"
        )
    return text


def run(args: argparse.Namespace) -> int:
    """``awp landscape``: compute (or complete) every result file."""
    compute_landscapes(
        list(args.checkpoints),
        dataclass_from_arguments(SurfaceConfig, args),
        out=out_folder(args.out, args.checkpoints, under="landscape"),
        labels=args.labels,
        resume=args.resume,
        progress=not args.no_progress,
        foreign=foreign_from(args),
        eig=dataclass_from_arguments(EigenMapConfig, args),
        allow_mixed=args.allow_mixed,
    )
    return 0
