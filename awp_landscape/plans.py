"""How the demo, its replicates and the gamma sweep train and measure: one set of sizes for all
of them (the training, and the measurements both make)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from analysis.flatness import FlatnessConfig
from analysis.gap import GapConfig
from analysis.worst_case import WorstCaseConfig
from awp.config import AttackConfig, bounds_of, check_bounds, opt
from awp.data import DataConfig
from awp.evaluate import EvalConfig
from awp.models import ModelConfig
from awp.train import TENSORBOARD_IN_RUN, TrainConfig
from landscape.config import SurfaceConfig
from landscape.grid import MAX_AXIS_POINTS


@dataclass(frozen=True)
class TrainingPlan:
    """The training of every run of a demo or sweep (all but method, AWP, seed and folder).

    The defaults are the demo's: 500 real CIFAR-10 training images without augmentation and a
    PreActResNet-18 at a quarter width, PGD-3 training for 60 epochs with the paper's piecewise
    schedule (lr 0.1, /10 at epochs 30 and 45). They come from the regime study
    (docs/demo_regime.md): at 40 epochs AT had not fitted its training set (train robust
    accuracy 0.48) and robust overfitting had hardly begun; at 60 it reaches about 0.8 and its
    test robust loss rises well above its minimum. Nothing was chosen for how AT-AWP, the
    flatness or the correlation came out.
    """

    data: DataConfig = opt(DataConfig(dataset="sample", val_size=200, train_size=500), "dataset")
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
