"""How the demo, its replicates, ``awp reproduce`` and the gamma sweep train and measure: one
set of sizes for all of them (the training, and the measurements both make), the demo's
analysis sizes, and the configs of ``awp demo`` and ``awp reproduce``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The torch-free modules of the configs: `awp demo --help` is built from this module.
from awp.config import AttackConfig, bounds_of, check_bounds, flag_of, opt
from awp.data_config import DataConfig
from awp.method_config import split_average
from awp.model_config import ModelConfig
from awp.train_config import TENSORBOARD_IN_RUN, TrainConfig
from awp_landscape.measures.base import Size


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

    method: str = opt(
        "at",
        "training method of the runs: at, trades, mart, or one with a weight perturbation "
        "(at-awp, at-sam, at-asam, at-rwp, trades-sam...), optionally +ema or +swa: trained with "
        "that weight average at its defaults and measured by it (at+ema); the sweep's gammas "
        "above 0 add AWP to it (a method that perturbs the weights itself takes --gammas 0)",
    )
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
        3 / 255, "step size of the training attack", **flag_of(TrainConfig, "step_size")
    )
    train_eval_size: int = opt(
        200,
        "train subset for the per-epoch robust train accuracy",
        **flag_of(TrainConfig, "train_eval_size"),
    )
    test_eval_size: int = opt(
        250, "test subset evaluated per epoch", **flag_of(TrainConfig, "test_eval_size")
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
        split_average(self.method)  # an unknown name: one line listing the known ones

    def train_config(
        self, out: Path, *, seed: int, awp: bool = False, gamma: float | None = None
    ) -> TrainConfig:
        """The TrainConfig of one run: the plan's method (AT by default), with AWP of radius
        ``gamma`` added when ``awp``; a ``+ema``/``+swa`` method keeps that weight average."""
        method, average = split_average(self.method)
        return TrainConfig(
            out=str(out),
            method=method,
            ema=average == "ema",
            swa=average == "swa",
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


# ----------------------------------------------------------------------------- measurement plans
#: The sizes several measures share (the others are declared by their measure's module).
COMMON_SIZES = (
    Size(
        "analysis_steps",
        5,
        "PGD steps of the analysis attacks (gap, flatness, landscape, curvature, quantization)",
        AttackConfig,
        "steps",
        plans=("demo", "sweep"),
        reproduce=20,
    ),
)


def plan_sizes(plan: str) -> list[Size]:
    """The sizes of one plan (``demo`` or ``sweep``): the shared ones, then every measure's in
    the registry's order."""
    from awp_landscape.measures import MEASURES  # the registry imports no torch either

    every = [*COMMON_SIZES, *(size for m in MEASURES for size in m.sizes)]
    names = [s.name for s in every]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise RuntimeError(f"sizes declared twice: {repeated}")
    return [size for size in every if plan in size.plans]


def _make_plan(name: str, plan: str, doc: str) -> type:
    """A frozen, range-checked dataclass of one plan's sizes (:func:`plan_sizes`)."""
    return dataclasses.make_dataclass(
        name,
        [size.dataclass_field() for size in plan_sizes(plan)],
        frozen=True,
        namespace={"__doc__": doc, "__module__": __name__, "__post_init__": check_bounds},
    )


AnalysisPlan = _make_plan(
    "AnalysisPlan",
    "demo",
    """Sizes of the measurements after training in ``awp demo`` and ``awp reproduce`` (subsets,
    attacks, samples), one field per size a measure declares (:class:`Size`).""",
)
SweepPlan = _make_plan(
    "SweepPlan",
    "sweep",
    """Sizes of the measurements of every run of ``awp sweep``: the sizes the sweep's measures
    declare for it (:class:`Size`).""",
)


def reproduce_plan() -> Any:
    """``awp reproduce``'s sizes: the published protocols' where a size states one."""
    return AnalysisPlan(
        **{s.name: s.reproduce for s in plan_sizes("demo") if s.reproduce is not None}
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
        if self.training.method != "at":
            raise ValueError(
                f"--method {self.training.method}: awp demo compares AT with AT-AWP; compare "
                "other methods with awp sweep --grid method=at,...,"
                f"{self.training.method} --gammas 0"
            )

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
    plan: AnalysisPlan = opt(reproduce_plan(), "analysis sizes")

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
