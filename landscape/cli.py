"""``awp landscape``: compute weight loss curves and surfaces of one or several checkpoints.

The shell around :mod:`landscape.surface`: loads checkpoints and data, makes or reloads the
directions, writes the h5 files point by point (:mod:`landscape.storage`), resumes, shows a
progress bar, and under torchrun shards the points across ranks with
:func:`landscape.distributed.shard` (rank 0 writes the files; the result equals a 1-process
run because each point's value depends only on its index).

    awp landscape runs/at/checkpoints/best.pt runs/awp/checkpoints/best.pt --out land
    awp landscape A.pt --kind 2d --x=-1:1:21 --y=-1:1:11 --attack none
    awp landscape A.pt B.pt --kind interp
    torchrun --nproc_per_node 4 -m awp.cli landscape A.pt --kind 2d --out land
"""

from __future__ import annotations

import argparse
import logging
import math
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from awp.config import add_dataclass_arguments, to_dict
from landscape.surface import SurfaceConfig

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``awp landscape`` to the ``awp`` command."""
    p = subparsers.add_parser(
        "landscape",
        help="weight loss curves/surfaces with attacks regenerated on the perturbed model",
        description=(
            "Perturb the trained weights along filter-normalized directions "
            "(theta0 + sum c_i d_i) and measure clean and adversarial loss and accuracy, "
            "crafting the attack on every perturbed model. One h5 file per checkpoint "
            "(loss-landscape's names), written point by point; --resume fills the missing "
            "points. Runs under torchrun (points sharded across ranks)."
        ),
    )
    p.add_argument(
        "checkpoints",
        nargs="+",
        type=Path,
        help="checkpoint .pt files (interp: exactly two, from the first to the second)",
    )
    p.add_argument(
        "--labels", nargs="+", default=None, help="one label per result (default: AT, AT-AWP...)"
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path("landscape"),
        help="folder of the LABEL.h5 files, or a .h5 file for a single result "
        "(default: ./landscape)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="compute only the missing points of existing files (same checkpoint and settings)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_dataclass_arguments(p, SurfaceConfig)
    p.set_defaults(func=run_landscape)


# ----------------------------------------------------------------------------- planning


@dataclass(frozen=True)
class Job:
    """One result file: a checkpoint (and an interpolation target) and where to write."""

    label: str
    checkpoint: Path
    target: Path | None
    out: Path


def default_label(ckpt: dict[str, Any], path: Path) -> str:
    """AT / AT-AWP / TRADES-AWP... from the checkpoint's training config, else the file stem."""
    cfg = ckpt.get("config") or {}
    method = cfg.get("method")
    if not method:
        return path.stem
    return f"{str(method).upper()}{'-AWP' if cfg.get('awp') else ''}"


def _safe(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", label).strip("._") or "surface"


def plan_jobs(
    checkpoints: Sequence[Path],
    *,
    kind: str,
    labels: Sequence[str] | None,
    default_labels: Sequence[str],
    out: Path,
) -> list[Job]:
    """The result files of a call: one per checkpoint, or one A->B file for an interpolation.

    Raises:
        ValueError: wrong number of checkpoints or labels, or clashing file names.
    """
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
        paths = [out / f"{_safe(n)}.h5" for n in names]
    if len(set(paths)) != len(paths):
        raise ValueError(f"two results would share a file name ({paths}); pass --labels")
    return [Job(n, c, t, p) for n, (c, t), p in zip(names, pairs, paths)]


# ----------------------------------------------------------------------------- distributed


def _device(name: str, local_rank: int, world: int) -> torch.device:
    from awp.train import pick_device

    dev = pick_device(name)
    if world > 1 and dev.type == "cuda" and dev.index is None:
        return torch.device("cuda", local_rank)  # one GPU per rank
    return dev


def _agree(error: BaseException | None) -> None:
    """Raise on every rank when the main rank failed its setup (so no rank waits forever)."""
    from landscape.distributed import current

    info = current()
    if not info.active:
        if error is not None:
            raise error
        return
    import torch.distributed as dist

    box = [None if error is None else f"{type(error).__name__}: {error}"]
    dist.broadcast_object_list(box, src=0)
    if error is not None:
        raise error
    if box[0] is not None:
        from awp.cli import CLIError

        raise CLIError(f"rank 0 failed: {box[0]}")


# ----------------------------------------------------------------------------- running


def run_landscape(args: argparse.Namespace) -> int:
    """``awp landscape``: every job in turn, each sharded across the torchrun ranks."""
    import torch.distributed as dist

    from awp.checkpoint import load_checkpoint
    from awp.config import dataclass_from_arguments
    from landscape.distributed import init_from_env

    was_initialized = dist.is_available() and dist.is_initialized()
    info = init_from_env()
    try:
        cfg = dataclass_from_arguments(SurfaceConfig, args)
        for path in args.checkpoints:
            if not path.is_file():
                raise FileNotFoundError(f"checkpoint {path} does not exist")
        defaults = [default_label(load_checkpoint(p), p) for p in args.checkpoints]
        jobs = plan_jobs(
            args.checkpoints,
            kind=cfg.kind,
            labels=args.labels,
            default_labels=defaults,
            out=args.out,
        )
        device = _device(cfg.device, info.local_rank, info.world)
        data_cache: dict[Any, Any] = {}
        for job in jobs:
            run_job(
                job,
                cfg,
                device=device,
                resume=args.resume,
                progress=not args.no_progress,
                data_cache=data_cache,
            )
    finally:
        if info.active and not was_initialized and dist.is_initialized():
            dist.destroy_process_group()
    return 0


def _load_data(ckpt: dict, cfg: SurfaceConfig, device: torch.device, cache: dict, progress: bool):
    from awp.config import from_dict
    from awp.data import DataConfig, load_data

    recorded = (ckpt.get("config") or {}).get("data")
    if not recorded and not cfg.dataset:
        raise ValueError(
            "the checkpoint does not record the dataset it was trained on; pass --dataset "
            "(e.g. --dataset cifar10 or a path to an ImageFolder .tar.gz)"
        )
    data_cfg = from_dict(DataConfig, dict(recorded or {}))
    changes = {k: v for k, v in (("dataset", cfg.dataset), ("data_root", cfg.data_root)) if v}
    data_cfg = replace(data_cfg, **changes)
    if data_cfg not in cache:
        cache[data_cfg] = load_data(data_cfg, device, progress=progress)
    return data_cfg, cache[data_cfg]


def run_job(
    job: Job,
    cfg: SurfaceConfig,
    *,
    device: torch.device,
    resume: bool,
    progress: bool,
    data_cache: dict,
) -> None:
    """Compute (or complete) one result file; rank 0 writes, every rank evaluates its shard."""
    from tqdm.auto import tqdm

    from awp.checkpoint import library_versions, load_checkpoint, load_model, sha256_file
    from awp.cli import format_table
    from landscape import storage
    from landscape.distributed import barrier, current, gather_to_main, shard
    from landscape.surface import (
        bn_images,
        make_evalsets,
        metric_names,
        surface_evaluator,
    )

    info = current()
    model, ckpt = load_model(job.checkpoint, device=device)
    sha = sha256_file(job.checkpoint)
    target_state, target_sha = None, None
    if job.target is not None:
        target_ckpt = load_checkpoint(job.target)
        if target_ckpt["model_spec"] != ckpt["model_spec"]:
            raise ValueError(
                f"cannot interpolate: {job.checkpoint} and {job.target} are different models "
                f"({ckpt['model_spec']} vs {target_ckpt['model_spec']})"
            )
        from awp.checkpoint import strip_prefixes

        target_state = {
            k: v.to(device) for k, v in strip_prefixes(target_ckpt["state_dict"]).items()
        }
        target_sha = sha256_file(job.target)
    data_cfg, data = _load_data(ckpt, cfg, device, data_cache, progress and info.is_main)
    evalsets = make_evalsets(data, n_train=cfg.n_train, n_test=cfg.n_test, seed=cfg.subset_seed)
    bn_x = bn_images(data, n=cfg.n_bn, seed=cfg.subset_seed) if cfg.bn == "recompute" else None
    grid = cfg.grid()
    attack = cfg.attack_config
    metrics = metric_names([es.name for es in evalsets], attack=attack is not None, fixed=cfg.fixed)
    dir_path = storage.directions_path(job.out)
    config = to_dict(cfg)

    error: BaseException | None = None
    if info.is_main:
        try:
            _prepare_files(
                job,
                cfg,
                model=model,
                resume=resume,
                sha=sha,
                target_sha=target_sha,
                target_state=target_state,
                evalsets=evalsets,
                grid=grid,
                metrics=metrics,
                attrs={
                    "label": job.label,
                    "config": config,
                    "checkpoint": str(job.checkpoint),
                    "checkpoint_sha256": sha,
                    "target_checkpoint": str(job.target) if job.target else "",
                    "target_sha256": target_sha or "",
                    "direction_file": dir_path.name,
                    "attack": attack.describe() if attack else "none",
                    "data": {
                        **to_dict(data_cfg),
                        "n": {e.name: len(e.y) for e in evalsets},
                    },
                    "model_spec": ckpt["model_spec"],
                    "versions": library_versions(),
                    "accuracy_units": "fraction",
                },
            )
        except BaseException as err:  # reported on every rank by _agree
            error = err
    _agree(error)
    barrier()

    surface = storage.read_surface(job.out)
    directions, _ = storage.read_directions(dir_path, device=device)
    pending = surface.pending()
    mine = shard(pending, info.rank, info.world)
    rounds = math.ceil(len(pending) / info.world)
    if info.is_main:
        done = grid.n_points - len(pending)
        print(
            f"{job.label}: {cfg.kind} landscape of {job.checkpoint}"
            f"{f' -> {job.target}' if job.target else ''}, {grid.n_points} points "
            f"({done} already computed), {' + '.join(f'{len(e.y)} {e.name}' for e in evalsets)} "
            f"images, attack {attack.describe() if attack else 'none'}, BN {cfg.bn}, "
            f"{info.world} process(es) on {device} -> {job.out}",
            flush=True,
        )
    bar = tqdm(
        total=len(pending),
        desc=job.label,
        disable=not (progress and info.is_main),
        leave=False,
        dynamic_ncols=True,
    )
    with surface_evaluator(
        model,
        directions,
        grid,
        evalsets,
        attack=attack,
        attack_seed=cfg.attack_seed,
        fixed=cfg.fixed,
        bn=cfg.bn,
        bn_x=bn_x,
        batch_size=cfg.batch_size,
    ) as evaluate:
        for r in range(rounds):
            result = (mine[r], evaluate(mine[r])) if r < len(mine) else None
            gathered = gather_to_main(result)
            if gathered is None:
                continue
            finished = [g for g in gathered if g is not None]
            for index, values in finished:
                surface.record(index, values)
            storage.write_surface(job.out, surface)  # every finished point is on disk now
            bar.update(len(finished))
    bar.close()
    if info.is_main:
        print(format_table(summary_rows(surface)))
        print(f"saved {job.out} (directions: {dir_path.name})", flush=True)


def _prepare_files(
    job: Job,
    cfg: SurfaceConfig,
    *,
    model: torch.nn.Module,
    resume: bool,
    sha: str,
    target_sha: str | None,
    target_state: dict[str, torch.Tensor] | None,
    evalsets: Sequence[Any],
    grid: Any,
    metrics: Sequence[str],
    attrs: dict[str, Any],
) -> None:
    """Create the directions and surface files, or check that existing ones can be resumed."""
    from landscape import storage
    from landscape.surface import make_directions

    dir_path = storage.directions_path(job.out)
    if job.out.exists():
        if not resume:
            raise FileExistsError(
                f"{job.out} already holds a landscape; pass --resume to compute its missing "
                "points, or choose another --out"
            )
        surface = storage.read_surface(job.out)
        storage.check_resumable(
            surface, config=to_dict(cfg), checkpoint_sha256=sha, target_sha256=target_sha
        )
        _, dir_attrs = storage.read_directions(dir_path)
        if dir_attrs.get("checkpoint_sha256") != sha:
            raise storage.SurfaceFileError(
                f"{dir_path} was made for another checkpoint; start a new run with another --out"
            )
        for tmp in storage.remove_stale_temps(job.out) + storage.remove_stale_temps(dir_path):
            log.info("removed %s left by an interrupted run", tmp)
        return
    if resume:
        log.info("%s does not exist yet: starting it", job.out)
    train = next((es for es in evalsets if es.name == "train"), None)
    directions, types, seeds = make_directions(model, cfg, train=train, target_state=target_state)
    storage.write_directions(
        dir_path,
        directions,
        types=types,
        seeds=seeds,
        attrs={
            "checkpoint_sha256": sha,
            "target_sha256": target_sha or "",
            "config": attrs["config"],
        },
    )
    surface = storage.new_surface(
        grid, metrics, {**attrs, "direction_seeds": seeds, "direction_types": types}
    )
    storage.write_surface(job.out, surface)


def ordered_metrics(names: Sequence[str]) -> list[str]:
    """Metric names in reading order: train before test, loss before accuracy."""
    from landscape.surface import metric_names

    canonical = metric_names(("train", "test"), attack=True, fixed=True)
    rank = {n: i for i, n in enumerate(canonical)}
    return sorted(names, key=lambda n: (rank.get(n, len(rank)), n))


def summary_rows(surface: Any) -> list[dict[str, Any]]:
    """Table rows for the terminal: per x (mean over directions for multi), or 2-D extremes."""
    keys = ordered_metrics(surface.values)
    if surface.kind == "2d":
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


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m landscape.cli ...`` is ``awp landscape ...``."""
    from awp.cli import main as awp_main

    return awp_main(["landscape", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
