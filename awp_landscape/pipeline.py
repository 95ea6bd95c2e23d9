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

Every stage is a Python call into the libraries (no command lines), writes files into the
output folder, and is skipped or resumed when rerun.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from analysis.certify_units import CertifyConfig
from analysis.connect import ConnectConfig
from analysis.curvature import HessianConfig
from analysis.flatness import FlatnessConfig
from analysis.gap import GapConfig
from analysis.weight_spectra import SpectraConfig
from analysis.worst_case import WorstCaseConfig
from awp import distributed
from awp.config import (
    PGD10_EVAL,
    PGD20_EVAL,
    bounds_of,
    check_bounds,
    check_same_settings,
    from_dict,
    opt,
    to_dict,
)
from awp.data import DataConfig, load_data
from awp.evaluate import EvalConfig
from awp.io import atomic_write_text, exclusive_output, read_json, sha256_file, write_json
from awp.models import ModelConfig
from awp.runs import RunFolder
from awp.train import TrainConfig, train
from awp_landscape.commands.certify import measure_certify
from awp_landscape.commands.connect import connect
from awp_landscape.commands.correlate import correlate_tables
from awp_landscape.commands.evaluate import evaluate_checkpoint
from awp_landscape.commands.flatness import measure_flatness
from awp_landscape.commands.gap import measure_gap
from awp_landscape.commands.hessian import measure_hessian
from awp_landscape.commands.hist import weight_histograms
from awp_landscape.commands.landscape import compute_landscapes
from awp_landscape.commands.spectra import measure_spectra
from awp_landscape.console import epoch_line, say
from awp_landscape.inputs import Inputs, Sources
from awp_landscape.plans import MeasurePlan, TrainingPlan
from awp_landscape.replicate import write_replicates
from landscape.config import SurfaceConfig
from landscape.run import safe_name

Log = Callable[[str], None]


@dataclass(frozen=True)
class AnalysisPlan(MeasurePlan):
    """Sizes of the measurements after training (subsets, attacks, samples); the shared ones
    (evaluation, gap, flatness, worst case) come from :class:`MeasurePlan`."""

    flatness_alphas: tuple[float, ...] = opt(
        (0.05, 0.1, 0.2),
        "noise scales of the flatness curve (layer mode)",
        **bounds_of(FlatnessConfig, "alphas"),
    )
    correlate_alpha: float = opt(
        0.1, "alpha of the per-checkpoint flatness (vs gap)", **bounds_of(FlatnessConfig, "alphas")
    )
    correlate_samples: int = opt(
        2, "noise draws per checkpoint for flatness vs gap", **bounds_of(FlatnessConfig, "samples")
    )
    trajectory_points: int = opt(
        7, "grid points per axis of the training-trajectory plane", bounds=(1, 1001)
    )
    trajectory_n: int = opt(
        50,
        "test images per point of the training-trajectory plane",
        **bounds_of(SurfaceConfig, "n_test"),
    )
    trajectory_bn: int = opt(
        128,
        "training images re-estimating BatchNorm at each such point",
        **bounds_of(SurfaceConfig, "n_bn"),
    )
    certify_n: int = opt(
        40,
        "test images certified by randomized smoothing (0 = all)",
        **bounds_of(CertifyConfig, "n_test"),
    )
    certify_sigmas: tuple[float, ...] = opt(
        (0.12, 0.25), "sigmas of the smoothed classifiers", **bounds_of(CertifyConfig, "sigmas")
    )
    certify_n0: int = opt(
        10,
        "CERTIFY's selection samples per image (the paper: 100)",
        **bounds_of(CertifyConfig, "n0"),
    )
    certify_samples: int = opt(
        100,
        "CERTIFY's estimation samples n per image (the paper: 100,000)",
        **bounds_of(CertifyConfig, "n"),
    )
    certify_noise_levels: tuple[float, ...] = opt(
        (0.0, 0.06, 0.12, 0.25, 0.5),
        "noise levels s of the base classifier's accuracy curve",
        **bounds_of(CertifyConfig, "noise_levels"),
    )
    certify_noise_draws: int = opt(
        4,
        "noisy copies per image and level of that curve",
        **bounds_of(CertifyConfig, "noise_draws"),
    )
    hessian_n: int = opt(
        128,
        "train images of the curvature stage (Hessian at fixed x_adv)",
        **bounds_of(HessianConfig, "n_examples"),
    )
    hessian_probes: int = opt(
        4, "Hutchinson probes of the curvature stage", **bounds_of(HessianConfig, "probes_min")
    )


_TRAINING_KEYS = tuple(f.name for f in dataclasses.fields(TrainingPlan))


def _migrate_demo(data: dict[str, Any]) -> dict[str, Any]:
    """A demo_config.json written before the training sizes were nested (and before seeds)."""
    if isinstance(data.get("model"), str) or "width" in data:
        model = {"name": data.pop("model")} if isinstance(data.get("model"), str) else {}
        if "width" in data:
            model["width"] = data.pop("width")
        data["model"] = model
    flat = {k: data.pop(k) for k in _TRAINING_KEYS if k in data}
    if flat:
        data["training"] = {**flat, **data.get("training", {})}
    if "seed" in data:
        data["seeds"] = [data.pop("seed")]
    return data


def seed_folder(out: str | Path, seed: int) -> Path:
    """``<out>/seed<k>``: a complete single-seed demo (runs, eval/, analysis/)."""
    return Path(out) / f"seed{seed}"


@dataclass(frozen=True)
class DemoConfig:
    """What ``awp demo`` runs: AT and AT-AWP trained once per seed (the same seed for both, so
    every comparison is paired), each pair measured, then compared over the seeds.

    The training plan (:class:`~awp_landscape.plans.TrainingPlan`) is chosen so that AT shows
    robust overfitting on a 2-core CPU; the analysis sizes were cut for time only; nothing was
    chosen for how AT-AWP, the flatness or the correlation came out.
    """

    out: str = opt(
        "runs/demo", "demo folder: seed<k>/ per seed (runs, eval/, analysis/), report.html"
    )
    training: TrainingPlan = opt(TrainingPlan(), "training of every run")
    gamma: float = opt(0.01, "AWP gamma of the AT-AWP runs", bounds=(0, 1))
    seeds: tuple[int, ...] = opt(
        (0,),
        "seeds; AT and AT-AWP are trained once per seed (rerun with more to add seeds)",
        bounds=(0, None),
    )
    plan: AnalysisPlan = opt(AnalysisPlan(), "analysis sizes")

    migrate = staticmethod(_migrate_demo)

    def __post_init__(self) -> None:
        check_bounds(self)
        _check_seeds(self.seeds)
        object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))

    @property
    def device(self) -> str:
        return self.training.device

    def train_configs(self, seed: int) -> dict[str, TrainConfig]:
        """The AT and AT-AWP training configs of one seed, identical but for AWP."""
        folder = seed_folder(self.out, seed)
        return {
            "AT": self.training.train_config(folder / "at", seed=seed),
            "AT-AWP": self.training.train_config(
                folder / "at_awp", seed=seed, awp=True, gamma=self.gamma
            ),
        }


def _check_seeds(seeds: tuple[int, ...]) -> None:
    if not seeds or any(int(s) < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds={seeds}: give one or more distinct seeds >= 0")


# ----------------------------------------------------------------------------- presets
@dataclass(frozen=True)
class Preset:
    """A paper protocol: dataset, architecture and method, trained with and without AWP."""

    dataset: str
    model: str
    method: str
    depth: int = 34
    widen_factor: int = 10
    lr: float = 0.1
    epochs: int = 200


def _presets() -> dict[str, Preset]:
    out = {}
    for ds in ("cifar10", "cifar100", "svhn"):
        for arch, model in (("prn18", "preactresnet18"), ("wrn34-10", "wideresnet")):
            for method in ("at", "trades", "mart"):
                # SVHN: lr 0.01 as in Rice et al.'s and the official AWP SVHN scripts.
                out[f"{ds}-{arch}-{method}"] = Preset(
                    ds, model, method, lr=0.01 if ds == "svhn" else 0.1
                )
    return out


PRESETS: dict[str, Preset] = _presets()


@dataclass(frozen=True)
class ReproduceConfig:
    """``awp reproduce``: a preset trained with and without AWP, then every analysis."""

    preset: str = opt("cifar10-prn18-at", "dataset-architecture-method; see --list")
    out: str = opt("runs/reproduce", "output folder")
    dataset: str = opt("", "override the preset's dataset (a name or an ImageFolder path)")
    data_root: str = opt("data", "where torchvision datasets live")
    download: bool = opt(False, "let torchvision download the dataset")
    val_size: int = opt(1000, "training images held out to pick the best checkpoint")
    epochs: int = opt(0, "override the preset's 200 epochs (0 = the paper's)")
    width: float = opt(1.0, "channel width multiplier (1 = the paper's model)")
    save_every: int = opt(10, "checkpoint every k epochs (for gap and flatness vs gap)")
    seeds: tuple[int, ...] = opt((0,), "seeds; each trains the method with and without AWP")
    device: str = opt("auto", "auto | cuda | cpu")
    plan: AnalysisPlan = opt(
        AnalysisPlan(
            eval_n=0,
            gap_n=1000,
            analysis_steps=20,
            landscape_points=21,
            landscape_n=1000,
            flatness_n=1000,
            flatness_samples=10,
            correlate_samples=5,
            trajectory_points=21,
            trajectory_n=1000,
            trajectory_bn=1000,
            certify_n=500,  # Cohen et al.'s protocol: 500 images, n0 100, n 100,000, 4 sigmas
            certify_sigmas=(0.12, 0.25, 0.5, 1.0),
            certify_n0=100,
            certify_samples=100_000,
            certify_noise_levels=(0.0, 0.06, 0.12, 0.18, 0.25, 0.37, 0.5, 0.75, 1.0),
            certify_noise_draws=10,
            hessian_n=1000,
            hessian_probes=30,
        ),
        "analysis sizes",
    )

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ValueError(
                f"unknown preset {self.preset!r}; choose one of {', '.join(sorted(PRESETS))}"
            )
        _check_seeds(self.seeds)
        object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))

    @staticmethod
    def migrate(data: dict[str, Any]) -> dict[str, Any]:
        """A reproduce_config.json written before seeds."""
        if "seed" in data:
            data["seeds"] = [data.pop("seed")]
        return data

    def train_configs(self, seed: int) -> dict[str, TrainConfig]:
        """The method's training config without and with AWP (the paper's protocol), one seed."""
        p = PRESETS[self.preset]
        folder = seed_folder(self.out, seed)
        base = TrainConfig(
            out=str(folder / p.method),
            model=ModelConfig(p.model, self.width, p.depth, p.widen_factor),
            method=p.method,
            lr=p.lr,
            epochs=self.epochs or p.epochs,
            save_every=self.save_every,
            seed=seed,
            device=self.device,
            data=DataConfig(
                dataset=self.dataset or p.dataset,
                data_root=self.data_root,
                download=self.download,
                val_size=self.val_size,
            ),
        )
        awp = dataclasses.replace(base, out=str(folder / f"{p.method}_awp"), awp=True)
        label = p.method.upper()
        return {label: base, f"{label}-AWP": awp}


# ----------------------------------------------------------------------------- stages
def train_all(configs: Mapping[str, TrainConfig], *, progress: bool, log: Log) -> None:
    """Train (or resume, or reuse) every run; one dataset load shared by all."""
    data = None
    for label, tcfg in configs.items():
        run = RunFolder(tcfg.out)
        if run.finished(tcfg.epochs):
            log(f"[{label}] reusing the finished run in {run.root}")
            continue
        if data is None:
            data = load_data(tcfg.data, distributed.pick_device(tcfg.device), progress=progress)
        log(
            f"[{label}] training {tcfg.model.name} (width {tcfg.model.width}) for {tcfg.epochs} "
            f"epochs on {data.name}: {len(data.train)} train / {len(data.val)} val / "
            f"{len(data.test)} test"
        )
        train(
            tcfg,
            resume=run.last.exists(),
            progress=progress,
            data=data,
            on_epoch=lambda r, label=label: log(f"[{label}] {epoch_line(r)}"),
        )
        log(f"[{label}] checkpoints in {run.ckpt_dir}")


def evaluate_runs(
    runs: Mapping[str, RunFolder], out: Path, *, cfg: EvalConfig, inputs: Inputs, progress: bool
) -> None:
    """The evaluation ``cfg`` of every run's best and last checkpoint, into ``out/eval``; a file
    of the same checkpoint's bytes is kept."""
    for label, run in runs.items():
        for which, ckpt in (("best", run.best), ("last", run.last)):
            dest = out / "eval" / f"{label}_{which}.json"
            if not ckpt.exists() or _fresh(dest, ckpt):
                continue
            with exclusive_output(dest):
                _, result = evaluate_checkpoint(inputs.load(ckpt), cfg, progress=progress)
                write_json(dest, result)
            log_accuracies(label, which, result)


def final_landscapes(
    checkpoints: list[Path],
    labels: list[str],
    *,
    folder: Path,
    plan: MeasurePlan,
    device: str,
    progress: bool,
) -> None:
    """The 1-D landscapes of the final checkpoints (attacks regenerated, and the fixed mode for
    contrast) into ``folder/<label>.h5``, resumed when the files exist: the demo's and the
    sweep's one landscape."""
    cfg = SurfaceConfig(
        kind="1d",
        x=f"-1:1:{plan.landscape_points}",
        n_test=plan.landscape_n,
        n_train=0,
        attack=dataclasses.replace(PGD10_EVAL, steps=plan.analysis_steps),
        fixed=True,
        device=device,
    )
    compute_landscapes(
        checkpoints,
        cfg,
        out=folder,
        labels=labels,
        resume=any(folder.glob("*.h5")),
        progress=progress,
    )


def log_accuracies(label: str, which: str, result: Mapping[str, Any]) -> None:
    """One line with the accuracies of an evaluation."""
    accs = ", ".join(f"{r['attack']} {r['accuracy']:.4f}" for r in result["results"])
    say(f"[{label}] {which} (epoch {result['epoch']}): {accs}")


def _fresh(dest: Path, ckpt: Path) -> bool:
    """An evaluation file exists for exactly this checkpoint's bytes."""
    if not dest.exists():
        return False
    try:
        return json.loads(dest.read_text())["weights"]["sha256"] == sha256_file(ckpt)
    except (json.JSONDecodeError, KeyError, TypeError):
        return False


@dataclass
class Pipeline:
    """The stages after training, with the plan's sizes, into ``out/analysis``."""

    runs: dict[str, RunFolder]
    plan: AnalysisPlan
    out: Path
    device: str
    progress: bool
    log: Log

    @property
    def analysis(self) -> Path:
        return self.out / "analysis"

    @property
    def last(self) -> list[Path]:
        return [run.last for run in self.runs.values()]

    @property
    def labels(self) -> list[str]:
        return list(self.runs)

    def epoch_ckpts(self) -> list[Path]:
        """Every run's epoch checkpoints (they exist only after training)."""
        return [p for run in self.runs.values() for p in run.epoch_ckpts()]

    def evaluate(self) -> None:
        inputs = Inputs(distributed.pick_device(self.device), progress=self.progress)
        cfg = EvalConfig(attacks=("natural", "pgd20", "cw20"), n=self.plan.eval_n, cascade=False)
        evaluate_runs(self.runs, self.out, cfg=cfg, inputs=inputs, progress=self.progress)

    def gap(self) -> None:
        cfg = GapConfig(
            n_train=self.plan.gap_n,
            n_test=self.plan.gap_n,
            attack=dataclasses.replace(PGD20_EVAL, steps=self.plan.analysis_steps),
        )
        measure_gap(
            self.epoch_ckpts(),
            cfg,
            out=self.analysis,
            sources=Sources(device=self.device, progress=self.progress),
        )

    def landscape(self) -> None:
        final_landscapes(
            self.last,
            self.labels,
            folder=self.analysis / "landscape",
            plan=self.plan,
            device=self.device,
            progress=self.progress,
        )

    def hist(self) -> None:
        weight_histograms(self.last, out=self.analysis, labels=self.labels)

    def spectra(self) -> None:
        measure_spectra(
            self.epoch_ckpts() or self.last,
            SpectraConfig(),
            out=self.analysis / "spectra",
            sources=Sources(device=self.device, progress=self.progress),
        )

    def trajectory(self) -> None:
        # PCA over every parameter and BatchNorm re-estimated at every point: with theta0's
        # statistics the early checkpoints' region of the plane has losses in the hundreds.
        p = self.plan.trajectory_points
        cfg = SurfaceConfig(
            kind="trajectory",
            x=f"-1.2:0.3:{p}",
            y=f"-0.5:0.5:{p}",
            dir_include="all",
            n_test=self.plan.trajectory_n,
            n_train=0,
            attack=dataclasses.replace(PGD10_EVAL, steps=self.plan.analysis_steps),
            bn="recompute",
            n_bn=self.plan.trajectory_bn,
            device=self.device,
        )
        for label, run in self.runs.items():
            path = run.epoch_ckpts()
            if len(path) < 3:
                self.log(
                    f"[{label}] skipped: a trajectory needs 3 epoch checkpoints, found {len(path)}"
                )
                continue
            out = self.analysis / "trajectory" / f"{safe_name(label)}.h5"
            compute_landscapes(
                path, cfg, out=out, labels=[label], resume=out.exists(), progress=self.progress
            )

    def _flatness_cfg(self, alphas: tuple[float, ...], samples: int) -> FlatnessConfig:
        return FlatnessConfig(
            alphas=alphas,
            samples=samples,
            n_examples=self.plan.flatness_n,
            attack=dataclasses.replace(PGD20_EVAL, steps=self.plan.analysis_steps),
        )

    def flatness(self) -> None:
        measure_flatness(
            self.last,
            self._flatness_cfg(self.plan.flatness_alphas, self.plan.flatness_samples),
            out=self.analysis / "flatness_final",
            labels=self.labels,
            worst=WorstCaseConfig(
                gammas=(self.plan.worst_gamma,), ascent_steps=self.plan.worst_steps
            ),
            sources=Sources(device=self.device, progress=self.progress),
        )

    def curvature(self) -> None:
        # Sized for ~25 s on 2 cores at the demo's size (two checkpoints): the top eigenvalue
        # (Lanczos with 8 vectors to 1e-2, which ARPACK usually meets in its first 8
        # products), a few Hutchinson probes, one SLQ run of 10 steps.
        cfg = HessianConfig(
            n_examples=self.plan.hessian_n,
            top_k=1,
            eig_tol=1e-2,
            lanczos_vectors=8,
            trace=True,
            probes_min=self.plan.hessian_probes,
            probes_max=self.plan.hessian_probes,
            density=True,
            slq_runs=1,
            slq_steps=10,
            attack=dataclasses.replace(PGD20_EVAL, steps=self.plan.analysis_steps),
        )
        measure_hessian(
            self.last,
            cfg,
            out=self.analysis / "curvature",
            labels=self.labels,
            sources=Sources(device=self.device, progress=self.progress),
        )

    def flatness_epochs(self) -> None:
        measure_flatness(
            self.epoch_ckpts(),
            self._flatness_cfg((self.plan.correlate_alpha,), self.plan.correlate_samples),
            out=self.analysis / "flatness_epochs",
            sources=Sources(device=self.device, progress=self.progress),
            figures=False,
        )

    def correlate(self) -> None:
        n = len(self.epoch_ckpts())
        if n < 3:
            self.log(f"skipped: a correlation needs at least 3 checkpoints, these runs have {n}")
            return
        correlate_tables(
            [self.analysis / "flatness_epochs" / "flatness.json", self.analysis / "gap.json"],
            x="flatness_loss",
            where=[f"alpha={self.plan.correlate_alpha}", "kind=expected"],
            out=self.analysis,
        )

    def certify(self) -> None:
        p = self.plan
        cfg = CertifyConfig(
            sigmas=p.certify_sigmas,
            n0=p.certify_n0,
            n=p.certify_samples,
            n_test=p.certify_n,
            noise_levels=p.certify_noise_levels,
            noise_draws=p.certify_noise_draws,
        )
        measure_certify(
            self.last,
            cfg,
            out=self.analysis,
            labels=self.labels,
            sources=Sources(device=self.device, progress=self.progress),
        )

    def connect(self) -> None:
        # Small on purpose (no plan field yet): 5 points per path, the curve trained for 2
        # epochs on 512 training images with the analysis attack's PGD, evaluated on the
        # landscape's test subset.
        if len(self.last) != 2:
            self.log(f"skipped: connectivity joins two runs, these are {len(self.last)}")
            return
        steps = self.plan.analysis_steps
        cfg = ConnectConfig(
            points=5,
            epochs=2,
            batch_size=32,
            n_fit=512,
            train_steps=steps,
            n_test=self.plan.landscape_n,
            n_bn=self.plan.trajectory_bn,
            attack=dataclasses.replace(PGD20_EVAL, steps=steps),
        )
        connect(
            self.last,
            cfg,
            out=self.analysis / "connect",
            labels=self.labels,
            sources=Sources(device=self.device, progress=self.progress),
        )

    def stages(self) -> list[tuple[str, Callable[[], None]]]:
        """The analyses in order, each with its heading."""
        return [
            ("evaluation (PGD-20, CW-20; best and last)", self.evaluate),
            ("robust generalization gap of every checkpoint", self.gap),
            ("weight loss landscapes (attacks regenerated, and fixed)", self.landscape),
            ("training trajectories on their PCA planes", self.trajectory),
            ("weight histograms", self.hist),
            ("weight spectra", self.spectra),
            ("expected and worst-case flatness, PAC-Bayes terms", self.flatness),
            ("curvature: Hessian eigenvalues, trace and density", self.curvature),
            ("flatness of every checkpoint", self.flatness_epochs),
            ("flatness versus gap", self.correlate),
            ("randomized smoothing: certified radius, accuracy under noise", self.certify),
            ("mode connectivity: the line and a trained curve from AT to AT-AWP", self.connect),
        ]


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
    """Train the runs of one seed (or reuse them) and run every analysis into ``out``.

    Args:
        configs: method label (AT, AT-AWP, ...) -> TrainConfig whose ``out`` is inside ``out``.
        plan: sizes of the analyses.
        out: the seed's folder: the runs, ``eval/`` and ``analysis/``.
    """
    runs = {label: RunFolder(c.out) for label, c in configs.items()}
    _stage("training", lambda: train_all(configs, progress=progress, log=log), log)
    pipe = Pipeline(runs, plan, out, device, progress, log)
    for name, fn in pipe.stages():
        _stage(name, fn, log)


def record_config(out: Path, name: str, cfg: Any, *, growable: tuple[str, ...] = ()) -> None:
    """Record ``cfg`` in ``out/name``, refusing a folder that holds other settings (nothing on
    disk is touched then); the fields in ``growable`` (seeds, gammas) may change: a rerun with
    more of them adds runs beside the ones it reuses."""
    if distributed.env_world() > 1:
        raise ValueError(
            "demo/reproduce run their stages in one process; on several GPUs run the stages "
            "under torchrun instead (awp train, awp landscape, awp flatness, awp gap), then "
            "awp report; see the README"
        )
    path = out / name
    current = to_dict(cfg)
    if path.exists():
        saved = read_json(path, what="settings file")
        try:
            saved = to_dict(from_dict(type(cfg), saved))
        except (ValueError, TypeError):
            pass  # compare as written; the diff names the problem
        # TensorBoard files change no result: a rerun may add or drop them.
        check_same_settings(
            saved,
            current,
            where=f"{out} holds results made with other settings, recorded in {path}",
            fix="Pass another --out, or the same settings to reuse them.",
            ignore=(*growable, "tensorboard"),
            saved_as="in the folder",
            shown=4,
        )
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(current, indent=2) + "\n")


def run_configured(cfg: DemoConfig | ReproduceConfig, name: str, *, progress: bool) -> Path:
    """Record ``cfg`` in its folder, run every seed (reusing finished ones), compare the seeds
    and write the report; returns the report's path."""
    # The report draws its figures with matplotlib, imported only when it is written.
    from awp_landscape.report import write_report

    out = Path(cfg.out)
    with exclusive_output(out, folder_lock="demo"):
        record_config(out, name, cfg, growable=("seeds",))
        t0 = time.perf_counter()
        for i, seed in enumerate(cfg.seeds):
            say(f"\n######## seed {seed} ({i + 1} of {len(cfg.seeds)})")
            folder = seed_folder(out, seed)
            run_seed(
                cfg.train_configs(seed), cfg.plan, folder, device=cfg.device, progress=progress
            )
        p = cfg.plan
        write_replicates(
            out, alphas=p.flatness_alphas, gamma=p.worst_gamma, alpha=p.correlate_alpha
        )
        html, md = write_report([out], out / "report.html")
    say(f"\nreport: {html}\nsummary: {md}")
    say(f"finished in {(time.perf_counter() - t0) / 60:.1f} min")
    return html
