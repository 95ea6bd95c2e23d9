"""Weight loss curves and surfaces of checkpoints, the attack regenerated on every perturbed
model: ``awp landscape``, and the demo's 1-D landscapes of the final checkpoints (with the fixed
mode for contrast, ``analysis/landscape/<label>.h5``).

theta = theta0 + sum c_i d_i along filter-normalized directions, from the stored theta0 at every
point; one h5 file per checkpoint (loss-landscape's names), written point by point, completed by
``--resume``; the points sharded across the ranks of a torchrun job:

    awp landscape runs/at/checkpoints/best.pt runs/awp/checkpoints/best.pt --out land
    awp landscape A.pt --kind 2d --x=-1:1:21 --y=-1:1:11 --attack none
    awp landscape A.pt B.pt --kind interp
    awp landscape runs/at/checkpoints/epoch_*.pt --kind trajectory --out land/AT.h5
    awp landscape A.pt --kind 2d --x=-1:1:11 --y=-1:1:11 --hessian-eigs --eig-loss adv
    torchrun --nproc_per_node 4 -m awp_landscape landscape A.pt --kind 2d --out land
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from awp_landscape.checkpoint_flags import ForeignOptions
from awp_landscape.flags import RENAMED_IN, NotedFlag
from awp_landscape.measures.base import Context, Measure, ReportSection, Size, SweepColumn
from landscape.config import EigenMapConfig, SurfaceConfig
from landscape.grid import MAX_AXIS_POINTS

if TYPE_CHECKING:
    from awp_landscape.inputs import Inputs, Loaded
    from awp_landscape.results import Results
    from figures.html import Section
    from landscape.run import Job, JobInputs
    from landscape.storage import Surface

log = logging.getLogger(__name__)

FOLDER = "landscape"


class Landscape(Measure):
    name = "landscape"
    heading = "weight loss landscapes (attacks regenerated, and fixed)"
    command = "landscape"
    summary = "weight loss curves/surfaces with attacks regenerated on the perturbed model"
    files = (FOLDER,)
    accumulate = True
    sizes = (
        Size("landscape_points", 11, "alphas in [-1, 1] of the 1-D landscape",
             bounds=(1, MAX_AXIS_POINTS), plans=("demo", "sweep"), reproduce=21),
        Size("landscape_n", 200, "test images per landscape point", SurfaceConfig, "n_test",
             plans=("demo", "sweep"), reproduce=1000),
    )  # fmt: skip
    pipelines = ("demo", "sweep")
    sweep_columns = (SweepColumn("landscape sharpness (last)"),)

    # -- the command line ---------------------------------------------------------------
    def register(self, sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
        from awp_landscape.checkpoint_flags import add_checkpoint_arguments
        from awp_landscape.flags import add_dataclass_arguments, add_run_arguments, explain_default

        p = self.parser(
            sub,
            "Perturb the trained weights along filter-normalized directions (theta0 + sum c_i "
            "d_i) and measure clean and adversarial loss and accuracy, crafting the attack on "
            "every perturbed model. One h5 file per checkpoint (loss-landscape's names), "
            "written point by point; --resume fills the missing points. Runs under torchrun "
            "(points sharded across ranks).",
        )
        p.add_argument(
            "checkpoints",
            nargs="*",
            type=Path,
            help="checkpoint .pt files (interp: exactly two, from the first to the second; "
            "trajectory: a training path in order, at least three, the last is theta0; or "
            "--robustbench NAME)",
        )
        p.add_argument(
            "--labels",
            nargs="+",
            default=None,
            help="one label per result (default: AT, AT-AWP...)",
        )
        p.add_argument(
            "--resume",
            action="store_true",
            help="compute only the missing points of existing files (same checkpoint and settings)",
        )
        p.add_argument(
            "--allow-mixed",
            action="store_true",
            help="trajectory: accept checkpoints out of epoch order or from several runs (a "
            "warning says which); without it they are refused, as theta0 is the last one given",
        )
        add_run_arguments(
            p,
            out_help="folder of the LABEL.h5 files, or a .h5 file for a single result (default: "
            "<run>/analysis/landscape when the checkpoints come from one run folder)",
            device=False,
        )
        add_dataclass_arguments(p, SurfaceConfig, skip=("dataset", "data_root"))
        explain_default(
            p,
            "--attack-steps",
            "PGD-10, not the PGD-20 of eval and the analyses, as the attack is crafted anew at "
            "every point of the grid (441 of a 21x21 surface, per direction and split), and the "
            "landscape compares shapes, not accuracies; write --attack-steps 20 to match them",
        )
        note_seed_meaning(p)
        add_dataclass_arguments(p.add_argument_group("curvature map"), EigenMapConfig)
        add_checkpoint_arguments(
            p, dataset_help="dataset (default: the one the checkpoint was trained on)"
        )
        return p

    def run_command(self, args: argparse.Namespace) -> int:
        from awp_landscape.checkpoint_flags import foreign_from
        from awp_landscape.flags import dataclass_from_arguments
        from awp_landscape.inputs import out_folder

        compute_landscapes(
            list(args.checkpoints),
            dataclass_from_arguments(SurfaceConfig, args),
            out=out_folder(args.out, args.checkpoints, under="landscape"),
            labels=args.labels,
            resume=args.resume,
            progress=not args.no_progress,
            foreign=foreign_from(args),
            center_crop=args.center_crop,
            eig=dataclass_from_arguments(EigenMapConfig, args),
            allow_mixed=args.allow_mixed,
        )
        return 0

    # -- the pipeline ---------------------------------------------------------------------
    def plan_config(self, plan: Any, device: str) -> SurfaceConfig:
        from awp_landscape.measures.base import analysis_attack

        return SurfaceConfig(
            kind="1d",
            x=f"-1:1:{plan.landscape_points}",
            n_test=plan.landscape_n,
            n_train=0,
            attack=analysis_attack(plan),
            fixed=True,
            device=device,
        )

    def run(self, ctx: Context) -> None:
        folder = self.path(ctx)
        compute_landscapes(
            ctx.last,
            self.plan_config(ctx.plan, ctx.device),
            out=folder,
            labels=ctx.labels,
            resume=any(folder.glob("*.h5")),
            progress=ctx.progress,
        )

    def read(self, folder: Path) -> list[Surface]:
        """The landscapes of an analysis folder (trajectory planes are the trajectory's)."""
        return [s for s in surfaces(folder / FOLDER) if s.kind != "trajectory"]

    def sharpness(self, folder: Path, method: str) -> float | None:
        from analysis.outcome import landscape_rise
        from landscape.storage import read_surface

        path = self.folder(folder) / FOLDER / f"{method}.h5"
        return landscape_rise(read_surface(path)) if path.exists() else None

    def over_seeds(self, plan: Any) -> list[tuple[str, Any]]:
        on = f"PGD-{plan.analysis_steps}, {plan.landscape_n} test images"
        return [
            (f"landscape sharpness (adversarial loss rise along one direction; {on})",
             self.sharpness)
        ]  # fmt: skip

    def sweep_values(self, folder: Path, label: str) -> dict[str, float | None]:
        return {"landscape sharpness (last)": self.sharpness(folder, label)}

    # -- the report -----------------------------------------------------------------------
    def section(self, res: Results) -> Section:
        import numpy as np

        from figures.html import FigureBlock, Section
        from figures.landscape import plot_attack_modes

        s = Section("Weight loss landscape")
        s.paragraphs.append(
            "theta = theta0 + alpha d along a filter-normalized Gaussian direction "
            "(same seed for every model); at every alpha PGD is run again on the "
            "perturbed model (solid). Dashed: adversarial examples crafted once at "
            "theta0 and reused, which underestimates the loss."
        )
        s.paragraphs += incomplete(res[self.name])
        for split in ("test", "train"):
            have = [
                x
                for x in res[self.name]
                if f"{split}_adv_loss" in x.values
                and np.isfinite(x.values[f"{split}_adv_loss"]).any()
            ]
            if have:
                s.figures.append(
                    FigureBlock.from_figure(
                        plot_attack_modes(have, split),
                        f"{split} adversarial loss along alpha.",
                        f"landscape {split}",
                    )
                )
        return s

    def sections(self) -> tuple[ReportSection, ...]:
        return (
            ReportSection(
                "Weight loss landscape",
                lambda r: r[self.name],
                self.section,
                "analysis/landscape/*.h5 (awp landscape)",
            ),
        )


def surfaces(folder: Path) -> list[Surface]:
    """Every surface file in ``folder`` (direction files left out)."""
    from landscape.storage import read_surface

    if not folder.is_dir():
        return []
    return [read_surface(h5) for h5 in sorted(folder.glob("*.h5"))
            if not h5.name.endswith(".directions.h5")]  # fmt: skip


def incomplete(found: Sequence[Surface]) -> list[str]:
    """A sentence for every surface file not complete (a run stopped midway)."""
    return [
        f"{s.label}: {int(s.computed.sum())} of {s.computed.size} points computed (the run "
        "was stopped midway; the others are missing from the figure)."
        for s in found
        if not s.computed.all()
    ]


# The release that gave landscape's --seed to the attacks (docs/cli.md); before it, --seed
# seeded the directions, which are now --direction-seed's.
SEED_MEANING_SINCE = RENAMED_IN


class _SeedNote(NotedFlag):
    """``--seed`` of ``awp landscape``: stores the attacks' seed and says, on stderr, that it
    no longer seeds the directions (a user of the old meaning would get other surfaces)."""

    def note(self, option_string: str | None) -> str:
        return (
            f"--seed seeds the attack's random starts since {SEED_MEANING_SINCE}; the "
            "direction's seed is --direction-seed"
        )


def note_seed_meaning(p: argparse.ArgumentParser) -> None:
    """Make ``--seed`` (already added, a plain stored value) print :class:`_SeedNote`'s note
    when it is given."""
    action = next(a for a in p._actions if "--seed" in a.option_strings)
    if type(action) is not argparse._StoreAction:
        raise TypeError(
            f"--seed is a {type(action).__name__}, not a stored value: update _SeedNote"
        )
    action.__class__ = _SeedNote


def compute_landscapes(
    checkpoints: list[Path],
    cfg: SurfaceConfig,
    *,
    out: Path,
    labels: list[str] | None = None,
    resume: bool = False,
    progress: bool = True,
    foreign: ForeignOptions = ForeignOptions(),
    center_crop: int | None = None,
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
        foreign: the options of models from elsewhere (architecture, input convention,
            source kwargs).
        center_crop: images of a folder resized and centre-cropped to this size (None: as
            the checkpoint's data, else as stored).
        eig: with ``hessian_eigs`` on, also the curvature map of every file (its missing
            points; a finished surface only gains the map).
        allow_mixed: a trajectory's checkpoints may be out of epoch order or from several runs
            (with a warning); else that is refused.

    Returns:
        The surfaces (complete on rank 0).
    """
    from awp import distributed
    from awp.io import exclusive_output
    from awp_landscape.inputs import Inputs, check_files, default_label
    from landscape.run import plan_jobs
    from landscape.storage import directions_path

    check_files(checkpoints, foreign)
    if eig is not None:
        eig.check_surface(cfg)  # the map comes after the whole surface: refuse it first
    with distributed.joined(cfg.device) as ctx:
        device = distributed.pick_device(cfg.device, ctx)
        inputs = Inputs(
            device,
            dataset=cfg.dataset or None,
            data_root=cfg.data_root or None,
            center_crop=center_crop,
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
    from awp.perturb import select_params
    from awp_landscape.inputs import run_folder_of, same_model

    states, idents, runs = [], [], []
    for p in job.path:
        other = loaded if p == job.checkpoint else inputs.load(p, with_data=False)
        if not same_model(other, loaded):
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
    from awp.checkpoint import strip_prefixes
    from awp.config import to_dict
    from awp_landscape.inputs import same_model
    from landscape.run import JobInputs
    from landscape.surface import bn_images, make_evalsets

    loaded = inputs.load(job.checkpoint)
    target_state, target_sha = None, None
    if job.target is not None:
        target = inputs.load(job.target)
        if not same_model(target, loaded):
            raise ValueError(
                f"cannot interpolate: {job.checkpoint} and {job.target} are different models "
                f"({loaded.spec} vs {target.spec})"
            )
        target_state = {
            k: v.to(inputs.device) for k, v in strip_prefixes(target.model.state_dict()).items()
        }
        target_sha = target.sha256
    if cfg.bn == "recompute":
        from awp.modes import check_bn_recomputable

        check_bn_recomputable(loaded.model, str(job.checkpoint))
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
    from awp import distributed
    from awp.progress import progress_bar
    from awp_landscape.console import format_table, say
    from landscape.run import fill_job, open_job, summary_rows
    from landscape.storage import directions_path

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
    import numpy as np

    from awp import distributed
    from awp.progress import progress_bar
    from awp_landscape.console import say
    from landscape.curvature_map import EIG_NAMES, eig_ratio
    from landscape.run import eigen_data, eigen_pending, fill_eigen_map, open_eigen_map

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
            job, cfg, eig, job_inputs, surface, device=inputs.device, on_points=bar.update,
            data=data,
        )  # fmt: skip
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
    import numpy as np

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


MEASURE = Landscape()
