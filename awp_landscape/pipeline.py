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
from analysis.flatness import FlatnessConfig
from analysis.gap import GapConfig
from analysis.hessian import HessianConfig
from analysis.spectra import SpectraConfig
from analysis.worst_case import WorstCaseConfig
from awp import distributed
from awp.config import PGD10_EVAL, PGD20_EVAL, config_diff, from_dict, opt, to_dict
from awp.data import DataConfig, load_data
from awp.evaluate import EvalConfig
from awp.io import atomic_write_text, exclusive_output, read_json, sha256_file, write_json
from awp.models import ModelConfig
from awp.runs import RunFolder
from awp.train import TrainConfig, train
from awp_landscape.commands.certify import measure_certify
from awp_landscape.commands.correlate import correlate_tables
from awp_landscape.commands.evaluate import evaluate_checkpoint
from awp_landscape.commands.flatness import measure_flatness
from awp_landscape.commands.gap import measure_gap
from awp_landscape.commands.hessian import measure_hessian
from awp_landscape.commands.hist import weight_histograms
from awp_landscape.commands.landscape import compute_landscapes
from awp_landscape.commands.spectra import measure_spectra
from awp_landscape.console import epoch_line, say
from awp_landscape.inputs import Inputs
from landscape.config import SurfaceConfig
from landscape.run import safe_name

Log = Callable[[str], None]


@dataclass(frozen=True)
class AnalysisPlan:
    """Sizes of the measurements after training (subsets, attacks, samples)."""

    eval_n: int = opt(500, "test images for the final PGD-20 / CW-20 evaluation (0 = all)")
    gap_n: int = opt(200, "train and test images for the robust gap of each checkpoint")
    analysis_steps: int = opt(5, "PGD steps of gap, landscape and flatness attacks")
    landscape_points: int = opt(11, "alphas in [-1, 1] of the 1-D landscape")
    landscape_n: int = opt(200, "test images per landscape point")
    flatness_n: int = opt(200, "train images of the flatness estimates")
    flatness_alphas: tuple[float, ...] = opt(
        (0.05, 0.1, 0.2), "noise scales of the flatness curve (layer mode)"
    )
    flatness_samples: int = opt(4, "noise draws per alpha (final checkpoints)")
    correlate_alpha: float = opt(0.1, "alpha of the per-checkpoint flatness (vs gap)")
    correlate_samples: int = opt(2, "noise draws per checkpoint for flatness vs gap")
    worst_gamma: float = opt(0.01, "radius of the worst-case flatness")
    worst_steps: int = opt(5, "ascent steps of the worst-case flatness")
    trajectory_points: int = opt(7, "grid points per axis of the training-trajectory plane")
    trajectory_n: int = opt(50, "test images per point of the training-trajectory plane")
    trajectory_bn: int = opt(128, "training images re-estimating BatchNorm at each such point")
    certify_n: int = opt(40, "test images certified by randomized smoothing (0 = all)")
    certify_sigmas: tuple[float, ...] = opt((0.12, 0.25), "sigmas of the smoothed classifiers")
    certify_n0: int = opt(10, "CERTIFY's selection samples per image (the paper: 100)")
    certify_samples: int = opt(100, "CERTIFY's estimation samples n per image (the paper: 100,000)")
    certify_noise_levels: tuple[float, ...] = opt(
        (0.0, 0.06, 0.12, 0.25, 0.5), "noise levels s of the base classifier's accuracy curve"
    )
    certify_noise_draws: int = opt(4, "noisy copies per image and level of that curve")
    hessian_n: int = opt(128, "train images of the curvature stage (Hessian at fixed x_adv)")
    hessian_probes: int = opt(4, "Hutchinson probes of the curvature stage")


def _migrate_flat_model(data: dict[str, Any]) -> dict[str, Any]:
    """A demo/reproduce config written before the architecture was nested."""
    if isinstance(data.get("model"), str) or "width" in data:
        model = {"name": data.pop("model")} if isinstance(data.get("model"), str) else {}
        if "width" in data:
            model["width"] = data.pop("width")
        data["model"] = model
    return data


@dataclass(frozen=True)
class DemoConfig:
    """What ``awp demo`` runs; sized for about a quarter of an hour on a 2-core CPU.

    The defaults are chosen so that AT shows robust overfitting within that budget: 500 real
    CIFAR-10 training images without augmentation and a PreActResNet-18 at a quarter width
    (about 0.7M parameters), PGD-3 training for 40 epochs with the paper's piecewise schedule
    (lr / 10 at 50% and 75%). They were chosen so that AT's test robust loss rises after the
    first decay and the whole demo fits the time budget (the analysis sizes were cut for time
    only); nothing was chosen for how AT-AWP, the flatness or the correlation came out.
    """

    out: str = opt("runs/demo", "demo folder: one run folder per method, analysis/, report.html")
    data: DataConfig = opt(DataConfig(dataset="sample", val_size=200, train_size=500), "dataset")
    model: ModelConfig = opt(ModelConfig(width=0.25), "architecture (small enough for a CPU)")
    epochs: int = opt(40, "epochs per method")
    batch_size: int = opt(32, "minibatch size")
    augment: bool = opt(
        False, "random crop and flip of training images (off: memorizing shows sooner)"
    )
    attack_steps: int = opt(3, "PGD steps of the training attack (the paper: 10)")
    step_size: float = opt(3 / 255, "step size of the training attack")
    gamma: float = opt(0.01, "AWP gamma of the AT-AWP run")
    train_eval_size: int = opt(200, "train subset for the per-epoch robust train accuracy")
    test_eval_size: int = opt(250, "test subset evaluated per epoch")
    eval_steps: int = opt(5, "PGD steps of the per-epoch evaluation")
    eval_every: int = opt(3, "evaluate every k epochs (learning curves, best checkpoint)")
    save_every: int = opt(5, "keep a checkpoint every k epochs (gap and flatness vs gap)")
    seed: int = opt(0, "seed shared by both methods")
    device: str = opt("auto", "auto | cpu | cuda")
    plan: AnalysisPlan = opt(AnalysisPlan(), "analysis sizes")

    migrate = staticmethod(_migrate_flat_model)

    def train_configs(self) -> dict[str, TrainConfig]:
        """The AT and AT-AWP training configs, identical but for AWP."""
        base = TrainConfig(
            out=str(Path(self.out) / "at"),
            data=self.data,
            model=self.model,
            epochs=self.epochs,
            batch_size=self.batch_size,
            augment=self.augment,
            attack_steps=self.attack_steps,
            step_size=self.step_size,
            save_every=self.save_every,
            train_eval_size=self.train_eval_size,
            test_eval_size=self.test_eval_size,
            eval_steps=self.eval_steps,
            eval_every=self.eval_every,
            seed=self.seed,
            device=self.device,
        )
        awp = dataclasses.replace(
            base, out=str(Path(self.out) / "at_awp"), awp=True, gamma=self.gamma
        )
        return {"AT": base, "AT-AWP": awp}


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
    seed: int = opt(0, "seed")
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

    def train_configs(self) -> dict[str, TrainConfig]:
        """The method's training config without and with AWP, the paper's protocol."""
        p = PRESETS[self.preset]
        base = TrainConfig(
            out=str(Path(self.out) / p.method),
            model=ModelConfig(p.model, self.width, p.depth, p.widen_factor),
            method=p.method,
            lr=p.lr,
            epochs=self.epochs or p.epochs,
            save_every=self.save_every,
            seed=self.seed,
            device=self.device,
            data=DataConfig(
                dataset=self.dataset or p.dataset,
                data_root=self.data_root,
                download=self.download,
                val_size=self.val_size,
            ),
        )
        awp = dataclasses.replace(base, out=str(Path(self.out) / f"{p.method}_awp"), awp=True)
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
            device_name=self.device,
            progress=self.progress,
        )

    def landscape(self) -> None:
        folder = self.analysis / "landscape"
        cfg = SurfaceConfig(
            kind="1d",
            x=f"-1:1:{self.plan.landscape_points}",
            n_test=self.plan.landscape_n,
            n_train=0,
            attack=dataclasses.replace(PGD10_EVAL, steps=self.plan.analysis_steps),
            fixed=True,
            device=self.device,
        )
        compute_landscapes(
            self.last,
            cfg,
            out=folder,
            labels=self.labels,
            resume=any(folder.glob("*.h5")),
            progress=self.progress,
        )

    def hist(self) -> None:
        weight_histograms(self.last, out=self.analysis, labels=self.labels)

    def spectra(self) -> None:
        measure_spectra(
            self.epoch_ckpts() or self.last,
            SpectraConfig(),
            out=self.analysis / "spectra",
            device_name=self.device,
            progress=self.progress,
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
            device_name=self.device,
            progress=self.progress,
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
            device_name=self.device,
            progress=self.progress,
        )

    def flatness_epochs(self) -> None:
        measure_flatness(
            self.epoch_ckpts(),
            self._flatness_cfg((self.plan.correlate_alpha,), self.plan.correlate_samples),
            out=self.analysis / "flatness_epochs",
            device_name=self.device,
            progress=self.progress,
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
            device_name=self.device,
            progress=self.progress,
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
        ]


def _stage(name: str, fn: Callable[[], None], log: Log) -> None:
    log(f"\n== {name}")
    t0 = time.perf_counter()
    fn()
    log(f"== {name}: done in {time.perf_counter() - t0:.0f}s")


def run_pipeline(
    configs: Mapping[str, TrainConfig],
    plan: AnalysisPlan,
    out: Path,
    *,
    device: str = "auto",
    progress: bool = True,
    log: Log = say,
) -> Path:
    """Train every config, run every analysis, write the report; returns the report's path.

    Args:
        configs: method label (AT, AT-AWP, ...) -> TrainConfig whose ``out`` is inside ``out``.
        plan: sizes of the analyses.
        out: the folder holding the runs, ``eval/``, ``analysis/`` and ``report.html``.
    """
    # The report draws its figures with matplotlib, imported only when it is written.
    from awp_landscape.report import write_report

    runs = {label: RunFolder(c.out) for label, c in configs.items()}
    _stage("training", lambda: train_all(configs, progress=progress, log=log), log)
    pipe = Pipeline(runs, plan, out, device, progress, log)
    for name, fn in pipe.stages():
        _stage(name, fn, log)
    html, md = write_report([out], out / "report.html")
    log(f"\nreport: {html}\nsummary: {md}")
    return html


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
        diffs = config_diff(saved, current, ignore=growable, saved_as="in the folder")
        if diffs:
            raise ValueError(
                f"{out} holds results made with other settings ({path}: {'; '.join(diffs[:4])}); "
                f"pass another --out, or the same settings to reuse them"
            )
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(current, indent=2) + "\n")


def run_configured(cfg: DemoConfig | ReproduceConfig, name: str, *, progress: bool) -> Path:
    """Record ``cfg`` in its folder, then run the whole pipeline; returns the report's path."""
    out = Path(cfg.out)
    with exclusive_output(out, folder_lock="demo"):
        record_config(out, name, cfg)
        t0 = time.perf_counter()
        html = run_pipeline(
            cfg.train_configs(), cfg.plan, out, device=cfg.device, progress=progress, log=say
        )
    say(f"finished in {(time.perf_counter() - t0) / 60:.1f} min")
    return html
