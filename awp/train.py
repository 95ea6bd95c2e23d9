"""Adversarial training (AT, TRADES, MART), each with or without Adversarial Weight Perturbation.

The functional core is :func:`train_step` (one minibatch: attack, the general AWP schedule
A/K1/K2, the update) and :func:`lr_at` (the schedule); :func:`train` is the stateful shell: run
folder (:mod:`awp.runs`), metrics.jsonl, checkpoints, exact resume, a progress bar, extra data
(RST), ``init`` weights (pre-training) and multi-process training under torchrun
(:mod:`awp.distributed`).

Method defaults: the fields ``gamma``, ``awp_warmup``, ``beta``, ``attack_mode`` and
``attack_start`` of :class:`TrainConfig` default to None, which means "the method's default"
from the one table :data:`awp.config.METHOD_DEFAULTS` (AT-AWP: gamma 0.01, no warm-up, PGD in
train mode from a uniform start; TRADES-AWP: gamma 0.005, 10 warm-up epochs, beta 6, the KL
attack in eval mode from x + 0.001 N(0,1); MART-AWP: gamma 0.005, beta 6, eval mode, gaussian
start). A value given explicitly always wins; ``config.json`` keeps what was given (None
included) and :meth:`TrainConfig.resolved` gives the values used, which checkpoints record.

Reference: Wu, Xia, Wang, NeurIPS 2020 (AWP); Rice, Wong, Kolter, ICML 2020 (the PGD-AT
protocol the official AWP code builds on); Zhang et al., ICML 2019 (TRADES); Wang et al., ICLR
2020 (MART); Carmon et al., NeurIPS 2019 (RST).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from awp import distributed
from awp.attacks import LossFn, run_attack
from awp.augment import augment, to_float
from awp.checkpoint import (
    CheckpointError,
    first_nonfinite,
    load_checkpoint,
    load_weights,
    save_checkpoint,
)
from awp.config import (
    METHODS,
    MODES,
    PGD10_TRAIN,
    PGD20_EVAL,
    RANDOM_STARTS,
    AttackConfig,
    AWPConfig,
    check_bounds,
    check_eps,
    method_defaults,
    method_of,
    opt,
    to_dict,
)
from awp.data import DataBundle, DataConfig, Split, fixed_subset, iterate_batches, load_data
from awp.distributed import DistContext
from awp.evaluate import evaluate_attack
from awp.extra_data import batches_per_epoch, load_extra_data, mixed_batches
from awp.io import atomic_write_bytes, atomic_write_text, exclusive_output, sha256_file
from awp.models import ModelConfig, ModelSpec, build_model
from awp.objectives import AttackLossFactory, ObjectiveFn, get_attack_loss, get_objective
from awp.perturb import perturbed, select_params, weight_ascent
from awp.progress import progress_bar
from awp.runs import RunFolder, prepare_run, rng_state, set_rng_state
from awp.scalars import open_writer, write_epoch

log = logging.getLogger(__name__)

SCHEDULES = ("piecewise", "cosine", "constant")
# Fields whose None means "the method's default" (awp.config.METHOD_DEFAULTS).
METHOD_DEFAULT_FIELDS = ("gamma", "awp_warmup", "beta", "attack_mode", "attack_start")
# Rank r > 0 of a distributed run seeds its attack generator with seed + 2 + r * this.
RANK_SEED_STRIDE = 1_000_003
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
    method: str = opt("at", "training objective: at | trades | mart")
    beta: float | None = opt(
        None,
        "weight of the KL term of trades and mart",
        shown="6 for trades and mart",
        bounds=(0, None),
    )
    awp: bool = opt(False, "use Adversarial Weight Perturbation (ascends the method's objective)")
    gamma: float | None = opt(
        None,
        "AWP relative radius gamma",
        shown="0.01 for at, 0.005 for trades and mart",
        bounds=(0, 1),
    )
    awp_warmup: int | None = opt(
        None,
        "epochs without AWP at the start",
        shown="0 for at and mart, 10 for trades",
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
    step_size: float = opt(PGD10_TRAIN.step_size, "training attack step size", bounds=(0, None))
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
        "RobustBench); fresh optimizer and schedule",
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
        1000, "fixed train subset for the train robust accuracy (0 = none)", bounds=(0, None)
    )
    test_eval_size: int = opt(
        0, "test subset evaluated per epoch (0 = the whole test split)", bounds=(0, None)
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
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        get_objective(self.method, beta=self.beta)  # refuses a beta for AT
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
        # Build the derived configs once so their validation runs now, not mid-training (nor
        # after minutes of loading data).
        _ = self.train_attack, self.eval_attack, self.awp_config

    @staticmethod
    def migrate(data: dict[str, Any]) -> dict[str, Any]:
        """A config.json written before the architecture was nested (``"model": "name"``,
        ``width``, ``depth``, ``widen_factor`` at the top) in the current layout."""
        if isinstance(data.get("model"), str) or any(k in data for k in _FLAT_MODEL_KEYS):
            model = {"name": data.pop("model")} if isinstance(data.get("model"), str) else {}
            model.update({k: data.pop(k) for k in _FLAT_MODEL_KEYS if k in data})
            data["model"] = model
        return data

    def resolved(self) -> TrainConfig:
        """This config with every None of :data:`METHOD_DEFAULT_FIELDS` replaced by the
        method's default (beta stays None for AT, which has none)."""
        defaults = method_defaults(self.method)
        changes = {
            name: getattr(defaults, name)
            for name in METHOD_DEFAULT_FIELDS
            if getattr(self, name) is None and getattr(defaults, name) is not None
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
        return AttackConfig(
            name="pgd",
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
        return AttackConfig(
            name="pgd",
            norm=self.norm,
            eps=self.eps,
            step_size=self.eval_step_size,
            steps=self.eval_steps,
            mode="eval",
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
    def objective(self) -> ObjectiveFn:
        """The training objective of ``method`` with its beta."""
        return get_objective(self.method, beta=self.beta)

    @property
    def attack_loss(self) -> AttackLossFactory | None:
        """The factory of the training attack's loss (TRADES: its KL term), or None for CE."""
        return get_attack_loss(self.method)

    def model_spec(self, data: DataBundle) -> ModelSpec:
        """The architecture for ``data`` (classes and normalization come from the dataset)."""
        return self.model.spec(
            data.num_classes,
            mean=tuple(data.mean) if self.normalize else None,
            std=tuple(data.std) if self.normalize else None,
        )

    def describe(self) -> str:
        """E.g. ``TRADES-AWP (gamma 0.005, warm-up 10, beta 6, A=1 K1=10 K2=1)``."""
        r = self.resolved()
        label = method_of(
            {"method": self.method, "awp": self.awp, "eps": self.eps, "noise_sd": self.noise_sd}
        )
        parts = []
        if self.awp:
            parts += [f"gamma {r.gamma:g}", f"warm-up {r.awp_warmup}"]
        if r.beta is not None:
            parts.append(f"beta {r.beta:g}")
        if self.noise_sd:
            parts.append(f"noise sd {self.noise_sd:g}")
        if self.awp:
            parts.append(f"A={self.awp_alternations} K1={self.attack_steps} K2={self.awp_steps}")
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


@dataclass(frozen=True)
class StepStats:
    """Loss and accuracy of one minibatch at the weights the optimizer saw (w + v with AWP),
    and with AWP the size of the perturbation, ||v|| / ||w|| over every perturbed tensor."""

    loss: float
    correct: int
    n: int
    v_norm_ratio: float | None = None


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    attack: AttackConfig,
    objective: ObjectiveFn,
    awp: AWPConfig | None = None,
    params: dict[str, nn.Parameter] | None = None,
    generator: torch.Generator | None = None,
    grad_hook: Callable[[list[torch.Tensor]], None] | None = None,
    attack_loss: AttackLossFactory | None = None,
    loss_scale: float = 1.0,
    noise: torch.Tensor | None = None,
) -> StepStats:
    """One minibatch step of AT, TRADES or MART, with or without AWP (general A/K1/K2 schedule).

    1. x_adv = PGD-K1 at the current weights w (mode and start from ``attack``; the loss from
       ``attack_loss``, e.g. TRADES' KL term, else the attack's own).
    2. With AWP: v = the AWP ascent of ``objective`` at (x, x_adv, y), K2 steps, BatchNorm
       statistics frozen. For A > 1, A - 1 more times: regenerate x_adv on w + v, then continue
       the projected ascent of v from there (:func:`awp.perturb.weight_ascent` from v0).
    3. Add v, objective at w + v, backward, optimizer step, subtract the same v.

    With ``noise`` (Gaussian data augmentation) the objective, and so the AWP ascent, sees
    x + noise and x_adv + noise; the attack is crafted at the clean x, as without noise.

    The attack and the AWP ascent run on the plain module (inside a DDP wrapper when ``model``
    is one): they take gradients with ``torch.autograd.grad``, which DDP's reducer never sees,
    so a distributed caller averages the AWP gradient through ``grad_hook``. Only the update's
    forward/backward goes through ``model`` (and so through DDP's gradient all-reduce).

    Args:
        model: the network, or a DistributedDataParallel around it (left in train mode).
        optimizer: its optimizer; the learning rate is set by the caller.
        x: augmented images (N, C, H, W) float in [0, 1]; y: labels (N,).
        attack: the training attack (PGD-10, 8/255, 2/255 in the paper).
        objective: ``(model, x, x_adv, y) -> (loss, logits)``.
        awp: AWP settings, or None for no AWP (also during the warm-up).
        params: the perturbed parameters (default :func:`select_params` of ``model``).
        generator: CPU generator of the attack's random start.
        grad_hook: forwarded to the AWP ascent (distributed all-reduce of the weight gradient).
        attack_loss: ``(model, x, mode) -> loss_fn`` for the attack, or None for its own loss.
        loss_scale: multiplies the objective in the backward pass and the AWP ascent; a rank of
            a distributed run whose slice is not 1/N of the global batch passes
            N * slice / global so that averaged gradients are those of the global mean.
        noise: (N, C, H, W) added to x and x_adv where the objective reads them, or None.

    Returns:
        :class:`StepStats` of the objective's forward pass (the loss unscaled).
    """
    net = distributed.plain(model)

    def craft() -> torch.Tensor:
        # At the current weights (w, or w + v inside `perturbed`): TRADES' KL target p(x) too.
        loss: LossFn | None = attack_loss(net, x, attack.mode) if attack_loss else None
        return run_attack(net, x, y, attack, generator=generator, loss=loss)

    def noisy(t: torch.Tensor) -> torch.Tensor:
        return t if noise is None else t + noise

    x_adv = craft()
    model.train()
    if awp is not None and awp.gamma > 0:
        params = params if params is not None else select_params(net)

        def awp_objective() -> torch.Tensor:
            # Reads x_adv when called, so alternations ascend on the regenerated examples.
            loss = objective(net, noisy(x), noisy(x_adv), y)[0]
            return loss * loss_scale if loss_scale != 1.0 else loss

        ascent = dict(gamma=awp.gamma, steps=awp.steps, model=net, grad_hook=grad_hook)
        v = weight_ascent(awp_objective, params, **ascent)
        for _ in range(awp.alternations - 1):
            with perturbed(params, v):
                x_adv = craft()
            v = weight_ascent(awp_objective, params, v0=v, **ascent)
        ratio = _norm_ratio(v, params)
        with perturbed(params, v, restore="subtract"):
            loss, logits = objective(model, noisy(x), noisy(x_adv), y)
            _minimize(optimizer, loss, loss_scale)
    else:
        ratio = None
        loss, logits = objective(model, noisy(x), noisy(x_adv), y)
        _minimize(optimizer, loss, loss_scale)
    correct = int((logits.detach().argmax(1) == y).sum())
    return StepStats(float(loss.detach()), correct, len(y), ratio)


def _norm_ratio(v: dict[str, torch.Tensor], params: dict[str, nn.Parameter]) -> float:
    """||v|| / ||w|| over all perturbed tensors together (gamma for one ascent step from 0,
    where every layer's ||v_l|| is gamma ||w_l||; at most gamma with K2 > 1)."""
    v_sq = sum(float(t.double().pow(2).sum()) for t in v.values())
    w_sq = sum(float(params[n].detach().double().pow(2).sum()) for n in v)
    return math.sqrt(v_sq / w_sq) if w_sq > 0 else 0.0


def _minimize(optimizer: torch.optim.Optimizer, loss: torch.Tensor, scale: float) -> None:
    optimizer.zero_grad(set_to_none=True)
    (loss * scale if scale != 1.0 else loss).backward()
    optimizer.step()


# --------------------------------------------------------------------------- the shell
@dataclass
class TrainResult:
    """What :func:`train` returns: the final model, the run folder and the per-epoch records."""

    model: nn.Module
    out: Path
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class _Session:
    """What one training process holds between epochs."""

    cfg: TrainConfig
    ctx: DistContext
    run: RunFolder
    device: torch.device
    data: DataBundle
    net: nn.Module
    spec_record: dict[str, Any]
    optimizer: torch.optim.Optimizer
    gens: dict[str, torch.Generator]
    extra: Split | None
    inputs: dict[str, Any]
    start_epoch: int = 0
    best_val: float = -1.0
    history: list[dict[str, Any]] = field(default_factory=list)
    train_sub: torch.Tensor | None = None
    test_sub: torch.Tensor | None = None
    wrapped: nn.Module | None = None
    board: Any = None  # the TensorBoard writer (rank 0, with cfg.tensorboard)


def train(
    cfg: TrainConfig,
    *,
    resume: bool = False,
    progress: bool = True,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    data: DataBundle | None = None,
    model: nn.Module | None = None,
    resume_from: str | Path | None = None,
) -> TrainResult:
    """Train a model as ``cfg`` says, writing everything into the run folder ``cfg.out``.

    Per epoch a record is appended to ``metrics.jsonl`` (train loss/acc as optimized, train
    natural and robust accuracy on a fixed train subset at the unperturbed weights in eval mode,
    validation and test natural and PGD-20 accuracy, learning rate, seconds; the evaluations
    only every ``eval_every`` epochs and at the last) and checkpoints
    ``last.pt`` (with optimizer and RNG states), ``best.pt`` (best validation robust accuracy)
    and, with ``save_every``, ``epoch_NNN.pt`` are written atomically.

    Under ``torchrun --nproc_per_node N`` (WORLD_SIZE > 1) every process runs this function:
    they draw the same global batch (same data generator), each trains on its slice inside DDP
    (gloo on CPU, nccl on GPU), the AWP weight gradient is averaged before it is normalized,
    BatchNorm buffers follow rank 0, evaluations are sharded and summed, and only rank 0 writes.
    With BatchNorm each rank normalizes its slice with the slice's statistics (standard DDP), so
    N processes equal one process on the global batch exactly only for BatchNorm-free models.

    Args:
        cfg: the run's configuration.
        resume: continue from ``checkpoints/last.pt``; the result equals an uninterrupted run
            (also distributed, with the same number of processes).
        progress: show a progress bar per epoch (rank 0 only).
        on_epoch: called with each epoch's record on every rank (the CLI prints on rank 0).
        data: an already loaded dataset (else loaded from ``cfg.data``).
        model: a model to train instead of building ``cfg.model`` (a custom architecture
            taking [0, 1] images); its checkpoints record ``model.spec`` when it has a
            :class:`~awp.models.ModelSpec`, else ``{"name": "custom", "class": ...}``.
        resume_from: continue from this checkpoint of the run (an ``epoch_NNN.pt``, which
            holds the same state as ``last.pt`` had then) instead of ``last.pt``; metrics
            after its epoch are dropped. Implies ``resume``.

    Returns:
        :class:`TrainResult` with the final model (train mode, unwrapped), run folder and history.
    """
    with (
        distributed.joined(cfg.device) as ctx,
        # Rank 0 holds the run folder (writable, locked, temps of a killed run cleared).
        distributed.main_holds(ctx, exclusive_output(cfg.out, folder_lock="run", cleans=[cfg.out])),
    ):
        progress = progress and ctx.is_main
        s = _open(
            cfg,
            ctx,
            resume=resume or resume_from is not None,
            resume_from=Path(resume_from) if resume_from is not None else None,
            progress=progress,
            data=data,
            model=model,
        )
        try:
            for epoch in range(s.start_epoch, cfg.epochs):
                record = _train_epoch(s, epoch, progress=progress)
                _end_epoch(s, record)
                if on_epoch is not None:
                    on_epoch(record)
        finally:
            if s.board is not None:
                s.board.close()
        distributed.barrier()  # every rank returns once rank 0's files are on disk
        return TrainResult(model=s.net, out=s.run.root, history=s.history)


def _open(
    cfg: TrainConfig,
    ctx: DistContext,
    *,
    resume: bool,
    resume_from: Path | None,
    progress: bool,
    data: DataBundle | None,
    model: nn.Module | None,
) -> _Session:
    """Check the run folder, load data and model, and restore the state of a resumed run."""
    if cfg.batch_size < 2 * ctx.world:
        raise ValueError(
            f"batch_size={cfg.batch_size} is the global batch of {ctx.world} processes: each "
            f"needs at least 2 examples (BatchNorm); use --batch-size {2 * ctx.world} or more"
        )
    run = prepare_run(cfg, resume=resume, resume_from=resume_from)  # every rank checks first
    distributed.barrier()
    device = distributed.pick_device(cfg.device, ctx)
    data = data if data is not None else load_data(cfg.data, device, progress=progress)
    _move(data, device)
    spec = cfg.model_spec(data)
    torch.manual_seed(cfg.seed)
    net = (model if model is not None else build_model(spec)).to(device)
    inputs: dict[str, Any] = {}  # provenance of --init and --extra-data, kept in checkpoints
    if cfg.init and not resume:
        inputs["init"] = _load_init(net, cfg.init, spec if model is None else None)
    extra = _load_extra(cfg, data) if cfg.extra_data else None
    if extra is not None:
        inputs["extra_data"] = {
            "path": cfg.extra_data,
            "sha256": sha256_file(cfg.extra_data),
            "n": len(extra),
        }
    s = _Session(
        cfg=cfg,
        ctx=ctx,
        run=run,
        device=device,
        data=data,
        net=net,
        spec_record=_spec_record(spec, model),
        optimizer=torch.optim.SGD(
            net.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        ),
        gens={
            "data": torch.Generator().manual_seed(cfg.seed + 1),  # the same on every rank
            "attack": torch.Generator().manual_seed(cfg.seed + 2 + RANK_SEED_STRIDE * ctx.rank),
            # Gaussian augmentation only: without it nothing is drawn and last.pt is unchanged.
            **({"noise": torch.Generator().manual_seed(cfg.seed + 6)} if cfg.noise_sd else {}),
        },
        extra=extra,
        inputs=inputs,
    )
    if resume:
        _restore(s, resume_from or run.last)
    elif ctx.is_main:
        run.root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run.config, json.dumps(to_dict(cfg), indent=2) + "\n")
    s.train_sub = fixed_subset(len(data.train), cfg.train_eval_size, seed=cfg.seed + 3)
    s.test_sub = (
        fixed_subset(len(data.test), cfg.test_eval_size, seed=cfg.seed + 4)
        if cfg.test_eval_size
        else torch.arange(len(data.test))
    )
    s.wrapped = distributed.wrap(net, ctx, device)
    if ctx.is_main and cfg.tensorboard_dir is not None and s.start_epoch < cfg.epochs:
        s.board = open_writer(cfg.tensorboard_dir, purge_step=s.start_epoch + 1)
    return s


def _spec_record(spec: ModelSpec, model: nn.Module | None) -> dict[str, Any]:
    """How a checkpoint records the architecture (a custom model names its class)."""
    if model is None:
        return to_dict(spec)
    if isinstance(getattr(model, "spec", None), ModelSpec):
        return to_dict(model.spec)
    return {"name": "custom", "class": type(model).__qualname__}


def _restore(s: _Session, source: Path) -> None:
    """Load ``last.pt`` (or an epoch checkpoint) into a session: weights, optimizer, RNG
    states, history."""
    ckpt = load_checkpoint(source)
    saved_world = int(ckpt.get("world", 1))
    if saved_world != s.ctx.world:
        raise ValueError(
            f"cannot resume {s.run.root}: it was trained by {saved_world} process(es), this is "
            f"{s.ctx.world}; resume with torchrun --nproc_per_node {saved_world}"
            + (" (or without torchrun)" if saved_world == 1 else "")
        )
    s.net.load_state_dict(ckpt["state_dict"])
    s.optimizer.load_state_dict(ckpt["optimizer"])
    set_rng_state(ckpt, s.gens)
    if s.ctx.active:
        s.gens["attack"].set_state(ckpt["rng_attack_ranks"][s.ctx.rank])
    s.start_epoch, s.best_val = int(ckpt["epoch"]), float(ckpt.get("best_val", -1.0))
    s.inputs = ckpt.get("inputs", s.inputs)
    # Drop records of epochs after the checkpoint (killed between metrics and checkpoint).
    s.history = [r for r in s.run.read_metrics() if r["epoch"] <= s.start_epoch]
    if s.ctx.is_main:
        s.run.rewrite_metrics(s.history)
    if s.ctx.is_main and source.resolve() != s.run.last.resolve():
        # An epoch checkpoint holds last.pt's state of its epoch: it becomes last.pt now, so a
        # corrupt or missing last.pt is repaired even when no epoch is left to train, and
        # --resume continues from here.
        atomic_write_bytes(s.run.last, source.read_bytes())
        log.info("%s rewritten from %s", s.run.last, source.name)
    log.info("resuming %s at epoch %d from %s", s.run.root, s.start_epoch, source.name)


def _batches(s: _Session) -> Iterator[tuple[torch.Tensor, torch.Tensor | None, Any]]:
    """One epoch of (train indices, extra indices or None, mixing order or None)."""
    n_train = len(s.data.train)
    if s.extra is None:
        for idx in iterate_batches(
            n_train, s.cfg.batch_size, shuffle=True, generator=s.gens["data"]
        ):
            yield idx, None, None
        return
    yield from mixed_batches(
        n_train, len(s.extra), s.cfg.batch_size, s.cfg.extra_fraction, generator=s.gens["data"]
    )


def _global_batch(
    s: _Session, idx: torch.Tensor, extra_idx: torch.Tensor | None, order: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """The augmented global batch (every rank builds the whole of it), on the device."""
    data, device = s.data, s.device
    idx_dev = idx.to(device)
    x_u8, y = data.train.x[idx_dev], data.train.y[idx_dev]
    if extra_idx is not None:
        assert s.extra is not None
        # The extra set stays on the CPU; only this batch's images move.
        order_dev = order.to(device)
        x_u8 = torch.cat([x_u8, s.extra.x[extra_idx].to(device)])[order_dev]
        y = torch.cat([y, s.extra.y[extra_idx].to(device)])[order_dev]
    x = augment(x_u8, generator=s.gens["data"]) if s.cfg.augment else to_float(x_u8)
    return x, y


def _batch_noise(s: _Session, x: torch.Tensor) -> torch.Tensor | None:
    """noise_sd * N(0, I) for the global batch (every rank draws the same), or None without
    Gaussian augmentation. Drawn on the CPU generator, so a seed means the same noise on any
    device, and saved with the run's other generators, so a resumed run draws what an
    uninterrupted one would."""
    if not s.cfg.noise_sd:
        return None
    z = torch.randn(x.shape, generator=s.gens["noise"], dtype=x.dtype)
    return z.to(x.device).mul_(s.cfg.noise_sd)


def _train_epoch(s: _Session, epoch: int, *, progress: bool) -> dict[str, Any]:
    """Train one epoch (the optimizer's view: loss and accuracy at w + v) and return its record
    before the evaluation."""
    cfg, ctx = s.cfg, s.ctx
    s.net.train()
    awp_cfg = cfg.awp_config
    awp_on = awp_cfg is not None and epoch >= awp_cfg.warmup
    train_attack, objective, attack_loss = cfg.train_attack, cfg.objective, cfg.attack_loss
    params = select_params(s.net)
    grad_hook = distributed.all_reduce_mean_ if ctx.active else None
    steps = batches_per_epoch(
        len(s.data.train), cfg.batch_size, cfg.extra_fraction if s.extra is not None else None
    )
    t0 = time.perf_counter()
    loss_sum, correct, seen = 0.0, 0, 0
    ratios: list[float] = []
    bar = progress_bar(
        _batches(s), total=steps, desc=f"epoch {epoch + 1}/{cfg.epochs}", enabled=progress
    )
    lr = cfg.lr
    for i, (idx, extra_idx, order) in enumerate(bar):
        total = len(idx) + (len(extra_idx) if extra_idx is not None else 0)
        if total < 2 * ctx.world:  # BatchNorm cannot train on one example (per rank)
            continue
        lr = lr_at(epoch + (i + 1) / steps, lr=cfg.lr, epochs=cfg.epochs, schedule=cfg.schedule)
        for group in s.optimizer.param_groups:
            group["lr"] = lr
        x, y = _global_batch(s, idx, extra_idx, order)
        noise = _batch_noise(s, x)
        scale = 1.0
        if ctx.active:
            part = distributed.rank_slice(total, ctx.rank, ctx.world)
            x, y = x[part], y[part]
            noise = noise[part] if noise is not None else None
            scale = ctx.world * len(y) / total
            distributed.broadcast_buffers_(s.net)  # rank 0's BatchNorm statistics for the attack
        stats = train_step(
            s.wrapped,
            s.optimizer,
            x,
            y,
            attack=train_attack,
            objective=objective,
            awp=awp_cfg if awp_on else None,
            params=params,
            generator=s.gens["attack"],
            grad_hook=grad_hook,
            attack_loss=attack_loss,
            loss_scale=scale,
            noise=noise,
        )
        if not math.isfinite(stats.loss):
            raise DivergedError(
                f"the training loss is {stats.loss} at epoch {epoch + 1}, step {i + 1}; "
                f"{_last_saved(s)}; lower --lr (or --gamma)"
            )
        loss_sum += stats.loss * stats.n
        correct += stats.correct
        seen += stats.n
        if stats.v_norm_ratio is not None:
            ratios.append(stats.v_norm_ratio)
        bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}")
    seconds = time.perf_counter() - t0
    if ctx.active:
        loss_sum, correct, seen = distributed.all_reduce_sums([loss_sum, correct, seen], s.device)
        correct, seen = int(round(correct)), int(round(seen))
        distributed.broadcast_buffers_(s.net)  # evaluate and save rank 0's BatchNorm statistics
    record = {
        "epoch": epoch + 1,
        "lr": lr,
        "awp": awp_on,
        "train_loss": loss_sum / max(seen, 1),
        "train_acc": correct / max(seen, 1),
        "seconds": seconds,
    }
    if ratios:  # the same on every rank: v is computed from all-reduced gradients
        record["awp_v_norm_ratio"] = sum(ratios) / len(ratios)
    return record


class DivergedError(ValueError):
    """Training produced non-finite losses or weights; nothing non-finite was saved."""


def _last_saved(s: _Session) -> str:
    """Where the last finite weights of a run are, for the message of a divergence."""
    if s.run.last.exists():
        epoch = s.history[-1]["epoch"] if s.history else s.start_epoch
        return f"the last finite checkpoint is {s.run.last} (epoch {epoch})"
    return "no checkpoint was saved"


def _end_epoch(s: _Session, record: dict[str, Any]) -> None:
    """Evaluate (when due), keep the record and write the epoch's checkpoints (rank 0).

    Raises:
        DivergedError: the weights or BatchNorm statistics are no longer finite (nothing of
            this epoch is saved, nor picked as best).
    """
    cfg, ctx = s.cfg, s.ctx
    bad = first_nonfinite(s.net.state_dict())
    if bad is not None:
        raise DivergedError(
            f"after epoch {record['epoch']} {bad} holds NaN or infinity, so nothing of this "
            f"epoch was saved; {_last_saved(s)}; lower --lr (or --gamma)"
        )
    seconds = record.pop("seconds")
    t1 = time.perf_counter()
    if evaluated_at(record["epoch"], cfg):
        assert s.train_sub is not None and s.test_sub is not None
        record.update(_epoch_eval(s.net, s.data, cfg, s.train_sub, s.test_sub, ctx))
    record["seconds"] = seconds
    record["eval_seconds"] = time.perf_counter() - t1
    s.net.train()
    improved = record.get("val_robust_acc", -1.0) > s.best_val
    if improved:
        s.best_val = record["val_robust_acc"]
    s.history.append(record)
    # Every rank takes part in the gather; only rank 0 writes.
    attack_states = (
        distributed.all_gather_objects(s.gens["attack"].get_state()) if ctx.active else None
    )
    if ctx.is_main:
        s.run.append_metrics(record)
        if s.board is not None:
            write_epoch(s.board, record)
        _save(s, record, improved=improved, attack_states=attack_states)


def _save(
    s: _Session, record: dict[str, Any], *, improved: bool, attack_states: list[Any] | None
) -> None:
    """best.pt (when improved), epoch_NNN.pt (when due), then last.pt with the resume state."""
    cfg, epoch = s.cfg, record["epoch"]
    common = dict(
        model=s.net,
        model_spec=s.spec_record,
        config=to_dict(cfg),
        epoch=epoch,
        metrics=record,
        extra={
            "resolved_config": to_dict(cfg.resolved()),
            "inputs": s.inputs,
            "world": s.ctx.world,
        },
    )
    if improved and len(s.data.val):
        save_checkpoint(s.run.best, **common)
    # The state to continue from, in last.pt and in the epoch checkpoints (--resume-from).
    state = {"optimizer": s.optimizer.state_dict(), "best_val": s.best_val, **rng_state(s.gens)}
    if attack_states is not None:
        state["rng_attack_ranks"] = attack_states
    full = {**common, "extra": {**common["extra"], **state}}
    if cfg.save_every and epoch % cfg.save_every == 0:
        save_checkpoint(s.run.epoch_ckpt(epoch), **full)
    # last.pt is written last: once it exists, every file of this epoch is on disk.
    save_checkpoint(s.run.last, **full)


def _load_init(net: nn.Module, path: str, spec: ModelSpec | None) -> dict[str, Any]:
    """Load ``--init`` weights into ``net``; refuse a checkpoint of ours with another input
    convention (normalized vs raw [0, 1]), which would load but compute something else."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"--init {path} does not exist (or is not a file)")
    info = load_weights(net, path, source=f"--init {path}")
    ckpt = info.pop("checkpoint", None)
    if ckpt is not None and spec is not None:
        theirs = ckpt.get("model_spec", {})
        their_norm = theirs.get("mean") is not None
        our_norm = spec.mean is not None
        if their_norm != our_norm:
            raise CheckpointError(
                f"--init {path} was trained on "
                f"{'normalized' if their_norm else 'raw [0, 1]'} input, this run's model takes "
                f"{'normalized' if our_norm else 'raw [0, 1]'} input; pass "
                f"{'--normalize' if their_norm else '--no-normalize'} to match it"
            )
    elif ckpt is None:
        log.info(
            "--init %s (%s) has no record of its input convention; this run feeds the model "
            "%s input (--normalize / --no-normalize)",
            path,
            info["layout"],
            "normalized" if spec is None or spec.mean is not None else "raw [0, 1]",
        )
    log.info("initialized from %s (sha256 %s)", path, info["sha256"][:12])
    return dict(info)


def _load_extra(cfg: TrainConfig, data: DataBundle) -> Split:
    shape = tuple(int(s) for s in data.train.x.shape[1:])
    return load_extra_data(cfg.extra_data, image_shape=shape, num_classes=data.num_classes)


def _move(data: DataBundle, device: torch.device) -> None:
    for split in (data.train, data.val, data.test):
        split.x, split.y = split.x.to(device), split.y.to(device)


def evaluated_at(epoch: int, cfg: TrainConfig) -> bool:
    """Whether 1-based ``epoch`` gets the per-epoch evaluation: every ``eval_every``-th and the
    last."""
    return epoch % cfg.eval_every == 0 or epoch == cfg.epochs


def _epoch_eval(
    model: nn.Module,
    data: DataBundle,
    cfg: TrainConfig,
    train_sub: torch.Tensor,
    test_sub: torch.Tensor,
    ctx: DistContext | None = None,
) -> dict[str, float]:
    """Natural and PGD-20 accuracy at the unperturbed weights, eval mode, fixed seeds.

    Distributed, every rank evaluates every N-th point and the counts are summed.
    """
    ctx = ctx or DistContext()
    out: dict[str, float] = {}
    splits = {
        "train": (
            data.train.x[train_sub.to(data.train.x.device)],
            data.train.y[train_sub.to(data.train.y.device)],
        ),
        "val": (data.val.x, data.val.y),
        "test": (
            data.test.x[test_sub.to(data.test.x.device)],
            data.test.y[test_sub.to(data.test.y.device)],
        ),
    }
    for name, (x, y) in splits.items():
        if len(x) == 0:
            continue
        seed = cfg.seed + 5
        if ctx.active:
            x, y = x[ctx.rank :: ctx.world], y[ctx.rank :: ctx.world]
            seed += RANK_SEED_STRIDE * ctx.rank
        nat = evaluate_attack(model, x, y, None, batch_size=cfg.eval_batch_size)
        rob = evaluate_attack(
            model, x, y, cfg.eval_attack, batch_size=cfg.eval_batch_size, seed=seed
        )
        if ctx.active:
            n = len(y)
            sums = [
                round(nat.accuracy * n) if n else 0,
                round(rob.accuracy * n) if n else 0,
                rob.loss * n if n else 0.0,
                n,
            ]
            nat_c, rob_c, loss_s, total = distributed.all_reduce_sums(sums, x.device)
            out[f"{name}_nat_acc"] = nat_c / total
            out[f"{name}_robust_acc"] = rob_c / total
            out[f"{name}_robust_loss"] = loss_s / total
            continue
        out[f"{name}_nat_acc"] = nat.accuracy
        out[f"{name}_robust_acc"] = rob.accuracy
        out[f"{name}_robust_loss"] = rob.loss
    return out
