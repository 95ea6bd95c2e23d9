"""The configuration of a training run: :class:`TrainConfig`, its method defaults and the
learning-rate schedule :func:`lr_at`.

Method defaults: the fields ``gamma``, ``awp_warmup``, ``beta``, ``attack_mode`` and
``attack_start`` of :class:`TrainConfig` default to None, which means "the method's default"
from the one table :data:`awp.config.METHOD_DEFAULTS` (AT-AWP: gamma 0.01, no warm-up, PGD in
train mode from a uniform start; TRADES-AWP: gamma 0.005, 10 warm-up epochs, beta 6, the KL
attack in eval mode from x + 0.001 N(0,1); MART-AWP: gamma 0.005, beta 6, eval mode, gaussian
start). A value given explicitly always wins; ``config.json`` keeps what was given (None
included) and :meth:`TrainConfig.resolved` gives the values used, which checkpoints record.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from awp.config import (
    MODES,
    PGD10_TRAIN,
    PGD20_EVAL,
    RANDOM_STARTS,
    SCHEDULES,
    AttackConfig,
    AWPConfig,
    check_beta,
    check_bounds,
    check_choice,
    check_eps,
    method_defaults,
    method_of,
    opt,
)
from awp.data_config import DataConfig
from awp.method_config import (
    METHOD_NAMES,
    WEIGHT_METHOD_NAMES,
    WEIGHT_METHOD_SPECS,
    AverageConfig,
    EMAConfig,
    PerturbationConfig,
    SWAConfig,
    canonical_method,
    check_method_settings,
    swa_default_start,
)
from awp.model_config import ModelConfig
from awp.seeds import SEED_SCHEME_KEY

if TYPE_CHECKING:  # this module imports no torch: `awp train --help` is built from it
    from awp.data import DataBundle
    from awp.models import ModelSpec
    from awp.objectives import AttackLossFactory, ObjectiveFn

# Fields whose None means "the method's default" (awp.config.METHOD_DEFAULTS).
METHOD_DEFAULT_FIELDS = ("gamma", "awp_warmup", "beta", "attack_mode", "attack_start")
# The network's memory layouts (TrainConfig.memory_format).
MEMORY_FORMATS = ("auto", "contiguous", "channels_last")
# `--tensorboard` without a folder: the run folder's tensorboard/ (``<out>`` stands for it).
TENSORBOARD_IN_RUN = "<out>/tensorboard"
# The architecture's keys of config.json files written before it was nested.
_FLAT_MODEL_KEYS = ("width", "depth", "widen_factor")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run; saved as ``config.json`` in the run folder.

    Defaults are the paper's CIFAR-10 AT protocol (PreActResNet-18, 200 epochs, PGD-10 at
    8/255 with step 2/255, SGD 0.1 momentum 0.9 wd 5e-4, lr /10 at 50% and 75%, batch 128).
    ``gamma``, ``awp_warmup``, ``beta``, ``attack_mode`` and ``attack_start`` left at None take
    the method's default (:data:`awp.config.METHOD_DEFAULTS`); see :meth:`resolved`.
    Under torchrun, ``batch_size`` is the global batch: each of N processes trains on a slice.
    """

    out: str = opt("runs/at", "run folder (config.json, metrics.jsonl, checkpoints/)")
    data: DataConfig = opt(DataConfig(), "dataset")
    model: ModelConfig = opt(ModelConfig(), "architecture")
    normalize: bool = opt(True, "the model normalizes inputs with the dataset's mean/std")
    method: str = opt(
        "at",
        "training method: an objective (at | trades | mart), alone or with a weight "
        f"perturbation: {', '.join(n for n in METHOD_NAMES if '-' in n)} (the name sets --awp or "
        "--weight-method; config.json keeps the objective here)",
    )
    beta: float | None = opt(
        None,
        "weight of the KL term of trades and mart",
        shown="6 for trades and mart",
        bounds=(0, None),
    )
    awp: bool = opt(False, "use Adversarial Weight Perturbation (ascends the method's objective)")
    weight_method: str = opt(
        "none",
        f"another weight perturbation of the update: {' | '.join(WEIGHT_METHOD_NAMES)} (SAM, "
        "adaptive SAM, robust weight perturbation; ascend the method's objective)",
    )
    gamma: float | None = opt(
        None,
        "relative radius gamma of AWP (||v_l|| <= gamma ||w_l|| per layer) and RWP "
        "(||v|| = gamma ||w|| over all layers)",
        shown="0.01 for at, 0.005 for trades and mart",
        bounds=(0, 1),
    )
    rho: float | None = opt(
        None,
        "radius of SAM (||e||_2 = rho) and ASAM (||e / (|w| + 0.01)||_2 = rho), over all "
        "parameters together",
        shown="0.05 for sam, 0.5 for asam",
        bounds=(0, None),
    )
    c_min: float | None = opt(
        None,
        "RWP: only the examples whose adversarial loss is below c_min enter the weight ascent",
        shown="1.7 for rwp",
        bounds=(0, None),
    )
    rwp_steps: int | None = opt(
        None,
        "RWP: weight ascent steps (v rescaled to gamma ||w|| after each)",
        shown="10 for rwp",
        bounds=(1, 1000),
        why="every one adds a forward and a backward pass to every training step",
    )
    awp_warmup: int | None = opt(
        None,
        "epochs without the weight perturbation (AWP, SAM, ASAM, RWP) at the start",
        shown="10 for trades-awp and trades-rwp, else 0",
        bounds=(0, None),
    )
    awp_steps: int = opt(
        1,
        "K2: AWP weight ascent steps (projected for K2 > 1)",
        bounds=(1, 1000),
        why="every one adds a forward and a backward pass to every training step",
    )
    awp_alternations: int = opt(
        1,
        "A: AWP alternations; A > 1 regenerates x_adv on w+v before the next weight ascent",
        bounds=(1, 1000),
        why="every one adds a forward and a backward pass to every training step",
    )
    epochs: int = opt(200, "training epochs", bounds=(1, 100_000))
    batch_size: int = opt(128, "minibatch size", bounds=(1, None))
    lr: float = opt(0.1, "peak learning rate", bounds=(0, None))
    momentum: float = opt(0.9, "SGD momentum", bounds=(0, 1))
    weight_decay: float = opt(5e-4, "SGD weight decay", bounds=(0, None))
    schedule: str = opt(
        "piecewise", "lr schedule: piecewise (/10 at 50% and 75%) | cosine | constant"
    )
    norm: str = opt(PGD10_TRAIN.norm, "threat model: linf | l2")
    eps: float = opt(
        PGD10_TRAIN.eps, "attack radius in [0,1] pixel units (8/255 linf, 0.5 l2)", bounds=(0, None)
    )
    step_size: float = opt(
        PGD10_TRAIN.step_size,
        "training attack step size",
        bounds=(0, None),
        flag="attack_step_size",
        old=("step_size",),
    )
    attack_steps: int = opt(
        PGD10_TRAIN.steps,
        "K1: training attack (PGD) steps",
        bounds=(1, 10_000),
        why="every step is a forward and a backward pass of every example",
    )
    attack_mode: str | None = opt(
        None,
        "model mode during the training attack: train | eval",
        shown="train for at, eval for trades and mart",
    )
    attack_start: str | None = opt(
        None,
        "training attack start: uniform | gaussian (x + 0.001*N(0,1)) | none",
        shown="uniform for at, gaussian for trades and mart",
    )
    extra_data: str = opt(
        "", "extra images and (pseudo-)labels, .npz or .pt, mixed into every batch (RST)"
    )
    extra_fraction: float = opt(0.5, "share of every batch drawn from --extra-data", bounds=(0, 1))
    init: str = opt(
        "",
        "start from these weights (a checkpoint of ours, official AWP, Rice et al. or "
        "RobustBench; a .safetensors file; or a model named by a source, e.g. "
        "robustbench:NAME or a TorchScript file, of this run's architecture); fresh optimizer "
        "and schedule",
    )
    eval_steps: int = opt(
        PGD20_EVAL.steps,
        "PGD steps of the per-epoch robust evaluation",
        bounds=(1, 10_000),
        why="every step is a forward and a backward pass of every example",
    )
    eval_step_size: float = opt(
        PGD20_EVAL.step_size, "step size of the per-epoch robust evaluation", bounds=(0, None)
    )
    train_eval_size: int = opt(
        1000,
        "fixed train subset for the train robust accuracy (0 = none)",
        bounds=(0, None),
        flag="eval_n_train",
        old=("train_eval_size",),
    )
    test_eval_size: int = opt(
        0,
        "test subset evaluated per epoch (0 = the whole test split)",
        bounds=(0, None),
        flag="eval_n_test",
        old=("test_eval_size",),
    )
    eval_batch_size: int = opt(256, "batch size of evaluations", bounds=(1, None))
    eval_every: int = opt(
        1,
        "evaluate every k epochs and at the last (best.pt is chosen among evaluated epochs)",
        bounds=(0, None),
    )
    save_every: int = opt(
        0, "also keep a checkpoint every k epochs (0 = only last and best)", bounds=(0, None)
    )
    ema: bool = opt(
        False,
        "also keep an exponential moving average of the weights (updated after every step), "
        "evaluated every epoch and saved as checkpoints/ema/*.pt",
    )
    ema_decay: float | None = opt(
        None, "decay d of --ema: w_ema <- d w_ema + (1 - d) w", shown="0.999", bounds=(0, 1)
    )
    swa: bool = opt(
        False,
        "also keep the stochastic weight average (the mean of the weights at the end of every "
        "epoch from --swa-start on, BatchNorm statistics re-estimated on the training images), "
        "evaluated every epoch and saved as checkpoints/swa/*.pt",
    )
    swa_start: int | None = opt(
        None,
        "the first epoch (1-based) whose weights enter --swa's average",
        shown="the first epoch after half of them",
        bounds=(1, None),
    )
    augment: bool = opt(True, "random crop (4 px reflect pad) and flip of training images")
    noise_sd: float = opt(
        0.0,
        "Gaussian data augmentation: N(0, noise_sd^2) noise (pixel units) added to the inputs the "
        "objective sees, after the attack (with --eps 0: the base classifier of randomized "
        "smoothing, Cohen et al. 2019); 0 = none",
        bounds=(0, 4),
        why="a standard deviation in [0,1] pixel units (Cohen et al. use 0.12, 0.25, 0.5, 1.0; "
        "25 pixel levels are 25/255)",
    )
    seed: int = opt(0, "seed of weights, shuffling, augmentation and attacks", bounds=(0, None))
    device: str = opt("auto", "auto | cpu | cuda | cuda:N")
    memory_format: str = opt(
        "auto",
        "layout of the network's weights and activations: contiguous | channels_last | auto "
        "(channels_last on the CPU, where it measured 0.78x the training step's time, "
        "benchmarks/cpu_levers.py; contiguous elsewhere). Same arithmetic in another order: "
        "one step's loss agrees to float32 rounding",
    )
    tensorboard: str = opt(
        "",
        "also write each epoch's numbers as TensorBoard scalars into DIR (needs the "
        f"[tensorboard] extra; given without DIR: {TENSORBOARD_IN_RUN}) (default: none)",
        const=TENSORBOARD_IN_RUN,
        metavar="DIR",
    )

    def __post_init__(self) -> None:
        check_bounds(self)
        check_eps(self.eps, self.norm)
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; choose one of {SCHEDULES}")
        # A method name (at-sam) in its fields: the objective, awp, weight_method.
        method, awp, weights = canonical_method(self.method, self.awp, self.weight_method)
        object.__setattr__(self, "method", method)
        object.__setattr__(self, "awp", awp)
        object.__setattr__(self, "weight_method", weights)
        check_choice(self.memory_format, MEMORY_FORMATS, "memory_format")
        check_beta(self.method, self.beta)  # refuses a beta for AT
        if self.attack_mode is not None and self.attack_mode not in MODES:
            raise ValueError(f"attack_mode={self.attack_mode!r}; choose one of {MODES}")
        if self.attack_start is not None and self.attack_start not in RANDOM_STARTS:
            raise ValueError(f"attack_start={self.attack_start!r}; choose one of {RANDOM_STARTS}")
        for name in (
            "epochs",
            "batch_size",
            "eval_batch_size",
            "attack_steps",
            "eval_steps",
            "awp_steps",
            "awp_alternations",
            "eval_every",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        for name in ("train_eval_size", "test_eval_size", "save_every", "awp_warmup"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name}={value} must be >= 0")
        if self.extra_data and not 0 < self.extra_fraction < 1:
            raise ValueError(
                f"extra_fraction={self.extra_fraction} must be in (0, 1): the share of every batch "
                "drawn from --extra-data (Carmon et al. use 0.5)"
            )
        if self.extra_data and round(self.batch_size * (1 - self.extra_fraction)) < 1:
            raise ValueError(
                f"batch_size={self.batch_size} with extra_fraction={self.extra_fraction} leaves no "
                "training images in a batch; raise --batch-size or lower --extra-fraction"
            )
        if self.lr <= 0 or self.weight_decay < 0 or not 0 <= self.momentum < 1:
            raise ValueError("need lr > 0, weight_decay >= 0 and 0 <= momentum < 1")
        if not isinstance(self.model, ModelConfig):
            raise ValueError(
                f"model must be a ModelConfig (e.g. ModelConfig('preactresnet18', width=0.5)), "
                f"got {self.model!r}"
            )
        check_method_settings(self)  # refuses e.g. --rho without SAM, --gamma with SAM
        # Build the derived configs once so their validation runs now, not mid-training (nor
        # after minutes of loading data).
        _ = self.train_attack, self.eval_attack, self.perturbation_config, self.averages

    @staticmethod
    def migrate(data: dict[str, Any]) -> dict[str, Any]:
        """A config.json written before the architecture was nested (``"model": "name"``,
        ``width``, ``depth``, ``widen_factor`` at the top) in the current layout; the seed
        scheme written beside the settings (:data:`awp.seeds.SEED_SCHEME_KEY`) dropped."""
        data.pop(SEED_SCHEME_KEY, None)
        if isinstance(data.get("model"), str) or any(k in data for k in _FLAT_MODEL_KEYS):
            model = {"name": data.pop("model")} if isinstance(data.get("model"), str) else {}
            model.update({k: data.pop(k) for k in _FLAT_MODEL_KEYS if k in data})
            data["model"] = model
        return data

    def channels_last(self, device: Any) -> bool:
        """Whether the run's network is kept in channels_last on ``device``."""
        if self.memory_format == "auto":
            return str(device).split(":")[0] == "cpu"  # a torch.device or its name
        return self.memory_format == "channels_last"

    def resolved(self) -> TrainConfig:
        """This config with every None of :data:`METHOD_DEFAULT_FIELDS` replaced by the
        method's default (beta stays None for AT, which has none), and the weight
        perturbation's and the averages' settings by theirs: SAM and ASAM take no gamma and no
        warm-up, RWP AWP's gamma and warm-up (as the RWP code does), rho, c_min, rwp_steps,
        ema_decay and swa_start their dataclasses' defaults when the run uses them."""
        defaults = dataclasses.asdict(method_defaults(self.method))
        sharpness = self.weight_method in ("sam", "asam")
        if sharpness:
            defaults.update(gamma=None, awp_warmup=0)
        spec = WEIGHT_METHOD_SPECS.get(self.weight_method)
        if sharpness:
            defaults["rho"] = spec.config().rho
        if self.weight_method == "rwp":
            defaults.update(c_min=spec.config().c_min, rwp_steps=spec.config().steps)
        if self.ema:
            defaults["ema_decay"] = EMAConfig().decay
        if self.swa:
            defaults["swa_start"] = swa_default_start(self.epochs)
        changes = {
            name: value
            for name, value in defaults.items()
            if getattr(self, name) is None and value is not None
        }
        return dataclasses.replace(self, **changes) if changes else self

    @property
    def tensorboard_dir(self) -> Path | None:
        """Where the TensorBoard event files go, or None (``<out>`` is the run folder)."""
        if not self.tensorboard:
            return None
        if self.tensorboard.startswith("<out>"):
            return Path(self.out) / self.tensorboard[len("<out>") :].lstrip("/\\")
        return Path(self.tensorboard)

    @property
    def train_attack(self) -> AttackConfig:
        """PGD-K1 used to craft the training examples (mode and start from the method)."""
        r = self.resolved()
        return dataclasses.replace(
            PGD10_TRAIN,
            norm=self.norm,
            eps=self.eps,
            step_size=self.step_size,
            steps=self.attack_steps,
            mode=r.attack_mode,
            random_start=r.attack_start,
        )

    @property
    def eval_attack(self) -> AttackConfig:
        """PGD-20 (eval mode) used for the per-epoch robust accuracies."""
        from awp.attacks import attack_spec  # here: the attack table imports torch

        return dataclasses.replace(
            attack_spec("pgd20").preset,
            norm=self.norm,
            eps=self.eps,
            step_size=self.eval_step_size,
            steps=self.eval_steps,
        )

    @property
    def awp_config(self) -> AWPConfig | None:
        """The AWP settings (gamma and warm-up from the method unless given), or None."""
        if not self.awp:
            return None
        r = self.resolved()
        return AWPConfig(
            gamma=r.gamma,
            warmup=r.awp_warmup,
            steps=self.awp_steps,
            alternations=self.awp_alternations,
        )

    @property
    def perturbation_name(self) -> str | None:
        """The run's weight perturbation: "awp", "sam", "asam", "rwp", or None."""
        if self.awp:
            return "awp"
        return None if self.weight_method == "none" else self.weight_method

    @property
    def perturbation_config(self) -> PerturbationConfig | None:
        """The weight perturbation's settings (method defaults unless given), or None."""
        name = self.perturbation_name
        if name is None:
            return None
        if name == "awp":
            return self.awp_config
        r = self.resolved()
        if name == "rwp":
            return WEIGHT_METHOD_SPECS[name].config(
                gamma=r.gamma, c_min=r.c_min, steps=r.rwp_steps, warmup=r.awp_warmup
            )
        return WEIGHT_METHOD_SPECS[name].config(rho=r.rho, warmup=r.awp_warmup)

    @property
    def averages(self) -> tuple[AverageConfig, ...]:
        """The weight averages the run keeps besides its weights (EMA, SWA), in that order."""
        r = self.resolved()
        out: list[AverageConfig] = []
        if self.ema:
            out.append(EMAConfig(decay=r.ema_decay))
        if self.swa:
            out.append(SWAConfig(start=r.swa_start))
        return tuple(out)

    @property
    def per_example_objective(self) -> ObjectiveFn | None:
        """The per-example training objective ``(model, x, x_adv, y) -> ((N,), logits)`` that
        RWP thresholds, or None for the other methods."""
        if self.weight_method != "rwp":
            return None
        from awp.objectives import get_per_example  # here: it imports torch

        return get_per_example(self.method, beta=self.beta)

    @property
    def objective(self) -> ObjectiveFn:
        """The training objective of ``method`` with its beta."""
        from awp.objectives import get_objective  # here: it imports torch

        return get_objective(self.method, beta=self.beta)

    @property
    def attack_loss(self) -> AttackLossFactory | None:
        """The factory of the training attack's loss (TRADES: its KL term), or None for CE."""
        from awp.objectives import get_attack_loss  # here: it imports torch

        return get_attack_loss(self.method)

    def model_spec(self, data: DataBundle) -> ModelSpec:
        """The architecture for ``data`` (classes and normalization come from the dataset)."""
        return self.model.spec(
            data.num_classes,
            mean=tuple(data.mean) if self.normalize else None,
            std=tuple(data.std) if self.normalize else None,
        )

    def describe(self) -> str:
        """E.g. ``TRADES-AWP (gamma 0.005, warm-up 10, beta 6, A=1 K1=10 K2=1)``,
        ``AT-SAM (rho 0.05, EMA decay 0.999)``."""
        r = self.resolved()
        label = method_of(
            {
                "method": self.method,
                "awp": self.awp,
                "weight_method": self.weight_method,
                "eps": self.eps,
                "noise_sd": self.noise_sd,
            }
        )
        parts = []
        if self.awp:
            parts += [f"gamma {r.gamma:g}", f"warm-up {r.awp_warmup}"]
        if self.weight_method in ("sam", "asam"):
            parts.append(f"rho {r.rho:g}")
        if self.weight_method == "rwp":
            parts += [f"gamma {r.gamma:g}", f"c_min {r.c_min:g}", f"{r.rwp_steps} steps"]
        if self.weight_method != "none" and r.awp_warmup:
            parts.append(f"warm-up {r.awp_warmup}")
        if r.beta is not None:
            parts.append(f"beta {r.beta:g}")
        if self.noise_sd:
            parts.append(f"noise sd {self.noise_sd:g}")
        if self.awp:
            parts.append(f"A={self.awp_alternations} K1={self.attack_steps} K2={self.awp_steps}")
        for average in self.averages:
            parts.append(
                f"EMA decay {average.decay:g}"
                if isinstance(average, EMAConfig)
                else f"SWA from epoch {average.start}"
            )
        return label + (f" ({', '.join(parts)})" if parts else "")


def lr_at(t: float, *, lr: float, epochs: int, schedule: str = "piecewise") -> float:
    """Learning rate at training time ``t`` in epochs (fractional, updated per iteration).

    piecewise: ``lr`` until 50% of the epochs, ``lr/10`` until 75%, then ``lr/100``
    (Rice et al.'s schedule, used by the official AWP code); cosine: half a cosine to 0.
    """
    frac = t / epochs
    if schedule == "piecewise":
        return lr if frac < 0.5 else lr / 10 if frac < 0.75 else lr / 100
    if schedule == "cosine":
        return 0.5 * lr * (1 + math.cos(math.pi * min(frac, 1.0)))
    if schedule == "constant":
        return lr
    raise ValueError(f"unknown schedule {schedule!r}; choose one of {SCHEDULES}")
