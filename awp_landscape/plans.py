"""How the demo, its replicates, ``awp reproduce`` and the gamma sweep train and measure: one
set of sizes for all of them (the training, and the measurements both make), the demo's
analysis sizes, and the configs of ``awp demo`` and ``awp reproduce``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The torch-free modules of the configs: `awp demo --help` is built from this module.
from analysis.config import (
    CertifyConfig,
    FlatnessConfig,
    GapConfig,
    HessianConfig,
    WorstCaseConfig,
)
from awp.config import AttackConfig, bounds_of, check_bounds, opt
from awp.data_config import DataConfig
from awp.eval_config import EvalConfig
from awp.model_config import ModelConfig
from awp.train_config import TENSORBOARD_IN_RUN, TrainConfig
from landscape.config import SurfaceConfig
from landscape.grid import MAX_AXIS_POINTS


@dataclass(frozen=True)
class TrainingPlan:
    """The training of every run of a demo or sweep (all but method, AWP, seed and folder).

    The defaults are the demo's: 1000 real CIFAR-10 training images without augmentation and a
    PreActResNet-18 at a quarter width, PGD-3 training for 60 epochs with the paper's piecewise
    schedule (lr 0.1, /10 at epochs 30 and 45). They come from the regime study
    (docs/demo_regime.md): at 40 epochs AT had not fitted its training set (train robust
    accuracy 0.48) and robust overfitting had hardly begun; at 60 epochs with 500 images it
    memorized, but its best test robust accuracy stayed under 0.2 in all five seeds; with 1000
    images it first reaches 0.215-0.228, then memorizes (train robust accuracy 0.92-0.985).
    Nothing was chosen for how AT-AWP, the flatness or the correlation came out.
    """

    data: DataConfig = opt(DataConfig(dataset="sample", val_size=200, train_size=1000), "dataset")
    model: ModelConfig = opt(ModelConfig(width=0.25), "architecture (small enough for a CPU)")
    epochs: int = opt(60, "epochs per run", **bounds_of(TrainConfig, "epochs"))
    batch_size: int = opt(32, "minibatch size", **bounds_of(TrainConfig, "batch_size"))
    augment: bool = opt(
        False, "random crop and flip of training images (off: memorizing shows sooner)"
    )
    attack_steps: int = opt(
        3,
        "PGD steps of the training attack (the paper: 10)",
        **bounds_of(TrainConfig, "attack_steps"),
    )
    step_size: float = opt(
        3 / 255, "step size of the training attack", **bounds_of(TrainConfig, "step_size")
    )
    train_eval_size: int = opt(
        200,
        "train subset for the per-epoch robust train accuracy",
        **bounds_of(TrainConfig, "train_eval_size"),
    )
    test_eval_size: int = opt(
        250, "test subset evaluated per epoch", **bounds_of(TrainConfig, "test_eval_size")
    )
    eval_steps: int = opt(
        5, "PGD steps of the per-epoch evaluation", **bounds_of(TrainConfig, "eval_steps")
    )
    eval_every: int = opt(
        5, "evaluate every k epochs (learning curves, best checkpoint)", bounds=(1, None)
    )
    save_every: int = opt(
        5,
        "keep a checkpoint every k epochs (gap and flatness vs gap)",
        **bounds_of(TrainConfig, "save_every"),
    )
    device: str = opt("auto", "auto | cpu | cuda")
    tensorboard: bool = opt(
        False,
        "TensorBoard scalars of every run in <run>/tensorboard (tensorboard --logdir on the "
        "output folder shows them all; needs the [tensorboard] extra)",
    )

    def __post_init__(self) -> None:
        check_bounds(self)

    def train_config(
        self, out: Path, *, seed: int, awp: bool = False, gamma: float | None = None
    ) -> TrainConfig:
        """The TrainConfig of one run: AT, or AT-AWP with ``gamma``."""
        return TrainConfig(
            out=str(out),
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
            seed=seed,
            device=self.device,
            awp=awp,
            gamma=gamma if awp else None,
            tensorboard=TENSORBOARD_IN_RUN if self.tensorboard else "",
        )


@dataclass(frozen=True)
class MeasurePlan:
    """The measurement sizes that the demo and the gamma sweep share (one default each).

    The demo's :class:`~awp_landscape.pipeline.AnalysisPlan` and the sweep's
    :class:`~awp_landscape.sweep.SweepPlan` extend it with their own stages.
    """

    eval_n: int = opt(
        0,
        "test images of the final evaluation (natural, PGD-20, ...; 0 = all, 1000 in the demo)",
        **bounds_of(EvalConfig, "n"),
    )
    gap_n: int = opt(
        200,
        "train and test images of the robust gap of each checkpoint",
        **bounds_of(GapConfig, "n_train"),
    )
    analysis_steps: int = opt(
        5,
        "PGD steps of the analysis attacks (gap, flatness, landscape)",
        **bounds_of(AttackConfig, "steps"),
    )
    flatness_n: int = opt(
        200, "train images of the flatness estimates", **bounds_of(FlatnessConfig, "n_examples")
    )
    flatness_samples: int = opt(
        4, "noise draws per alpha of the expected flatness", **bounds_of(FlatnessConfig, "samples")
    )
    worst_gamma: float = opt(
        0.01, "radius of the worst-case flatness", **bounds_of(WorstCaseConfig, "gammas")
    )
    worst_steps: int = opt(
        5, "ascent steps of the worst-case flatness", **bounds_of(WorstCaseConfig, "ascent_steps")
    )
    landscape_points: int = opt(
        11, "alphas in [-1, 1] of the 1-D landscape", bounds=(1, MAX_AXIS_POINTS)
    )
    landscape_n: int = opt(
        200, "test images per landscape point", **bounds_of(SurfaceConfig, "n_test")
    )

    def __post_init__(self) -> None:
        check_bounds(self)


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
    threads: int = opt(
        0,
        "torch threads of the training and of every analysis (0 = torch's choice for this "
        "machine, usually its cores); the results depend on it (floating-point sums in another "
        "order, amplified over 60 epochs), so the same seed repeats a demo bit for bit only with "
        "the same count: docs/demo.md's numbers are from 2",
        bounds=(0, 1024),
    )

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
    val_size: int = opt(
        1000, "training images held out to pick the best checkpoint", bounds=(0, None)
    )
    epochs: int = opt(
        0,
        "override the preset's 200 epochs (0 = the paper's)",
        bounds=(0, bounds_of(TrainConfig, "epochs")["bounds"][1]),
    )
    width: float = opt(
        1.0, "channel width multiplier (1 = the paper's model)", **bounds_of(ModelConfig, "width")
    )
    save_every: int = opt(
        10,
        "checkpoint every k epochs (for gap and flatness vs gap)",
        **bounds_of(TrainConfig, "save_every"),
    )
    seeds: tuple[int, ...] = opt(
        (0,), "seeds; each trains the method with and without AWP", bounds=(0, None)
    )
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
        check_bounds(self)
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
