"""The pipeline behind ``awp demo`` and ``awp reproduce``: train, measure, report.

``awp demo`` (what ``make demo`` runs) trains AT and AT-AWP with the same seed on the bundled
real CIFAR-10 sample with a model small enough for a CPU, long enough for AT to overfit,
keeping a checkpoint every few epochs, then measures for both: PGD-20 and CW-20 test accuracy
(best and last), the robust generalization gap of every checkpoint, 1-D weight loss landscapes
with attacks regenerated (and the fixed mode for contrast), the training trajectory on the plane
of its two principal directions, weight histograms and per-layer statistics, weight spectra,
expected and worst-case flatness with the PAC-Bayes terms, the curvature of the loss at fixed
x_adv (top Hessian eigenvalue, trace, eigenvalue density), and flatness against the gap across
checkpoints; then writes the report.

``awp reproduce --preset NAME`` runs the paper's full protocol (200 epochs, GPU) for a method
with and without AWP, then the same analyses at full size.

Every measure (:data:`awp_landscape.measures.MEASURES`) is a Python call into the libraries (no
command lines), writes files into the output folder, and is skipped or resumed when rerun.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

from awp import distributed
from awp.config import check_same_settings, from_dict, to_dict
from awp.io import atomic_write_text, exclusive_output, read_json
from awp.method_config import measured_average
from awp.runs import RunFolder
from awp.train import TrainConfig
from awp_landscape.console import say
from awp_landscape.launch import LaunchConfig, Unit, run_phases
from awp_landscape.measures import MEASURES, Context
from awp_landscape.measures.training import train_all
from awp_landscape.over_seeds import write_replicates
from awp_landscape.plans import (  # noqa: F401  (the configs of awp demo and awp reproduce)
    PRESETS,
    AnalysisPlan,
    DemoConfig,
    Preset,
    ReproduceConfig,
    seed_folder,
)

Log = Callable[[str], None]


def _stage(name: str, fn: Callable[[], None], log: Log) -> None:
    log(f"\n== {name}")
    t0 = time.perf_counter()
    fn()
    log(f"== {name}: done in {time.perf_counter() - t0:.0f}s")


def run_seed(
    configs: Mapping[str, TrainConfig],
    plan: AnalysisPlan,
    out: Path,
    *,
    device: str = "auto",
    progress: bool = True,
    log: Log = say,
) -> None:
    """Train the runs of one seed (or reuse them) and run every measure of the registry into
    ``out``, in order (:data:`awp_landscape.measures.MEASURES`).

    Args:
        configs: method label (AT, AT-AWP, ...) -> TrainConfig whose ``out`` is inside ``out``.
        plan: sizes of the analyses.
        out: the seed's folder: the runs, ``eval/`` and ``analysis/``.
    """
    ctx = Context(
        runs={label: RunFolder(c.out, measured_average(c)) for label, c in configs.items()},
        plan=plan,
        out=out,
        device=device,
        progress=progress,
        log=log,
        configs=dict(configs),
    )
    for measure in MEASURES:
        if "demo" in measure.pipelines:
            _stage(measure.heading, lambda measure=measure: measure.run(ctx), log)


@contextmanager
def thread_count(threads: int) -> Iterator[None]:
    """torch's intra-op thread count set to ``threads`` for the body (0: left as it is, torch's
    choice for this machine), and restored afterwards."""
    if not threads:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def seed_units(cfg: DemoConfig | ReproduceConfig) -> list[list[Unit]]:
    """The jobs of ``cfg``'s seeds: first every training run not finished yet, then every
    seed's analyses (:func:`run_seed`, which reuses the trained runs); each job with the
    demo's ``threads`` when it sets them."""
    threads = getattr(cfg, "threads", 0) or None
    trainings = [
        Unit(
            f"seed{seed} {label}: training",
            partial(train_all, {label: tcfg}, progress=False, log=say),
            group=f"seed{seed}",
            threads=threads,
        )
        for seed in cfg.seeds
        for label, tcfg in cfg.train_configs(seed).items()
        if not RunFolder(tcfg.out, measured_average(tcfg)).finished(tcfg.epochs)
    ]
    analyses = [
        Unit(
            f"seed{seed}: analyses",
            partial(
                run_seed,
                cfg.train_configs(seed),
                cfg.plan,
                seed_folder(cfg.out, seed),
                device=cfg.device,
                progress=False,
            ),
            group=f"seed{seed}",
            threads=threads,
        )
        for seed in cfg.seeds
    ]
    return [trainings, analyses]


def record_config(out: Path, name: str, cfg: Any, *, growable: tuple[str, ...] = ()) -> None:
    """Record ``cfg`` in ``out/name``, refusing a folder that holds other settings (nothing on
    disk is touched then); the fields in ``growable`` (seeds, gammas) may change: a rerun with
    more of them adds runs beside the ones it reuses."""
    if distributed.env_world() > 1:
        raise ValueError(
            "demo/reproduce run their stages in one process; on several GPUs run the stages "
            "under torchrun instead (awp train, awp landscape, awp flatness, awp gap), then "
            "awp report; see docs/usage.md, Reproducing the paper on GPUs"
        )
    path = out / name
    current = to_dict(cfg)
    if path.exists():
        saved = read_json(path, what="settings file")
        try:
            saved = to_dict(from_dict(type(cfg), saved))
        except (ValueError, TypeError):
            pass  # compare as written; the diff names the problem
        # TensorBoard files change no result: a rerun may add or drop them. Nor does the
        # folder's own path: a moved or renamed folder holds the same results (its paths inside
        # are relative), and the file is rewritten with the new one below.
        check_same_settings(
            saved,
            current,
            where=f"{out} holds results made with other settings, recorded in {path}",
            fix="Pass another --out, or the same settings to reuse them.",
            ignore=(*growable, "tensorboard", "out"),
            saved_as="in the folder",
            shown=4,
        )
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(current, indent=2) + "\n")


def run_configured(
    cfg: DemoConfig | ReproduceConfig,
    name: str,
    *,
    progress: bool,
    launch: LaunchConfig | None = None,
) -> Path:
    """Record ``cfg`` in its folder, run every seed (reusing finished ones), compare the seeds
    and write the report; returns the report's path.

    ``launch`` runs the seeds as jobs (:mod:`awp_landscape.launch`): every training run one
    job, then every seed's analyses one job; by default they run here, one after another.
    """
    # The report draws its figures with matplotlib, imported only when it is written.
    from awp_landscape.report import write_report

    launch = launch or LaunchConfig()
    launch.check()
    out = Path(cfg.out)
    with exclusive_output(out, folder_lock="demo"), thread_count(getattr(cfg, "threads", 0)):
        record_config(out, name, cfg, growable=("seeds",))
        t0 = time.perf_counter()
        if launch.serial:
            for i, seed in enumerate(cfg.seeds):
                say(f"\n######## seed {seed} ({i + 1} of {len(cfg.seeds)})")
                folder = seed_folder(out, seed)
                run_seed(
                    cfg.train_configs(seed), cfg.plan, folder, device=cfg.device, progress=progress
                )
        else:
            run_phases(seed_units(cfg), launch, out=out)
        write_replicates(out, cfg.plan)
        html, md = write_report([out], out / "report.html")
    say(f"\nreport: {html}\nsummary: {md}")
    say(f"finished in {(time.perf_counter() - t0) / 60:.1f} min")
    return html
