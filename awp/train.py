"""Adversarial training (AT) with optional Adversarial Weight Perturbation (AT-AWP).

The functional core is :func:`train_step` (one minibatch) and :func:`lr_at` (the schedule);
:func:`train` is the stateful shell: run folder, metrics.jsonl, checkpoints, exact resume and a
progress bar.

Reference: Wu, Xia, Wang, NeurIPS 2020 (AWP); Rice, Wong, Kolter, ICML 2020 (the PGD-AT
protocol the official AWP code builds on).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from awp.attacks import run_attack
from awp.checkpoint import (
    atomic_write_text,
    load_checkpoint,
    save_checkpoint,
)
from awp.config import AttackConfig, AWPConfig, check_eps, opt, to_dict
from awp.data import DataBundle, DataConfig, augment, fixed_subset, iterate_batches, load_data
from awp.evaluate import evaluate_attack
from awp.models import ModelSpec, build_model
from awp.objectives import ObjectiveFn, get_objective
from awp.perturb import perturbed, select_params, weight_perturbation

log = logging.getLogger(__name__)

SCHEDULES = ("piecewise", "cosine", "constant")
# Keys that may differ between a run and its resumption without changing the result's meaning.
RESUME_MUTABLE = ("device", "out")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run; saved as ``config.json`` in the run folder.

    Defaults are the paper's CIFAR-10 AT protocol (PreActResNet-18, 200 epochs, PGD-10 at
    8/255 with step 2/255, SGD 0.1 momentum 0.9 wd 5e-4, lr /10 at 50% and 75%, batch 128).
    """

    out: str = opt("runs/at", "run folder (config.json, metrics.jsonl, checkpoints/)")
    data: DataConfig = opt(DataConfig(), "dataset")
    model: str = opt(
        "preactresnet18", "architecture: preactresnet18 | wideresnet | vgg19 | smallcnn"
    )
    width: float = opt(1.0, "channel width multiplier (1.0 = the paper's model)")
    depth: int = opt(34, "WideResNet depth")
    widen_factor: int = opt(10, "WideResNet widen factor")
    normalize: bool = opt(True, "the model normalizes inputs with the dataset's mean/std")
    method: str = opt("at", "training objective: at")
    awp: bool = opt(False, "use Adversarial Weight Perturbation")
    gamma: float = opt(0.01, "AWP relative radius gamma (0.01 for AT)")
    awp_warmup: int = opt(0, "epochs without AWP at the start")
    awp_steps: int = opt(1, "K2: AWP weight ascent steps")
    epochs: int = opt(200, "training epochs")
    batch_size: int = opt(128, "minibatch size")
    lr: float = opt(0.1, "peak learning rate")
    momentum: float = opt(0.9, "SGD momentum")
    weight_decay: float = opt(5e-4, "SGD weight decay")
    schedule: str = opt(
        "piecewise", "lr schedule: piecewise (/10 at 50% and 75%) | cosine | constant"
    )
    norm: str = opt("linf", "threat model: linf | l2")
    eps: float = opt(8 / 255, "attack radius in [0,1] pixel units (8/255 linf, 0.5 l2)")
    step_size: float = opt(2 / 255, "training attack step size")
    attack_steps: int = opt(10, "K1: training attack (PGD) steps")
    attack_mode: str = opt("train", "model mode during the training attack: train | eval")
    eval_steps: int = opt(20, "PGD steps of the per-epoch robust evaluation")
    eval_step_size: float = opt(2 / 255, "step size of the per-epoch robust evaluation")
    train_eval_size: int = opt(1000, "fixed train subset for the train robust accuracy (0 = none)")
    test_eval_size: int = opt(0, "test subset evaluated per epoch (0 = the whole test split)")
    eval_batch_size: int = opt(256, "batch size of evaluations")
    save_every: int = opt(0, "also keep a checkpoint every k epochs (0 = only last and best)")
    seed: int = opt(0, "seed of weights, shuffling, augmentation and attacks")
    device: str = opt("auto", "auto | cpu | cuda | cuda:N")

    def __post_init__(self) -> None:
        check_eps(self.eps, self.norm)
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; choose one of {SCHEDULES}")
        get_objective(self.method)
        for name in ("epochs", "batch_size", "eval_batch_size", "attack_steps", "eval_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        for name in ("train_eval_size", "test_eval_size", "save_every", "awp_warmup"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 0")
        if self.lr <= 0 or self.weight_decay < 0 or not 0 <= self.momentum < 1:
            raise ValueError("need lr > 0, weight_decay >= 0 and 0 <= momentum < 1")
        # Build the derived configs once so their validation runs now, not mid-training.
        _ = self.train_attack, self.eval_attack, self.awp_config

    @property
    def train_attack(self) -> AttackConfig:
        """PGD-K1 used to craft the training examples."""
        return AttackConfig(
            name="pgd",
            norm=self.norm,
            eps=self.eps,
            step_size=self.step_size,
            steps=self.attack_steps,
            mode=self.attack_mode,
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
        """The AWP settings, or None for plain AT."""
        if not self.awp:
            return None
        return AWPConfig(gamma=self.gamma, warmup=self.awp_warmup, steps=self.awp_steps)

    def model_spec(self, data: DataBundle) -> ModelSpec:
        """The architecture for ``data`` (classes and normalization come from the dataset)."""
        return ModelSpec(
            name=self.model,
            num_classes=data.num_classes,
            width=self.width,
            depth=self.depth,
            widen_factor=self.widen_factor,
            mean=tuple(data.mean) if self.normalize else None,
            std=tuple(data.std) if self.normalize else None,
        )


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
    """Loss and accuracy of one minibatch at the weights the optimizer saw (w + v with AWP)."""

    loss: float
    correct: int
    n: int


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
) -> StepStats:
    """One AT or AT-AWP minibatch step.

    1. x_adv = PGD-K1 at the current weights w (mode from ``attack``).
    2. With AWP: v = the AWP ascent of ``objective`` at (x_adv, y), BatchNorm stats frozen.
    3. Add v, objective at w + v, backward, optimizer step, subtract the same v.

    Args:
        model: the network (left in train mode: this is the training loop's model).
        optimizer: its optimizer; the learning rate is set by the caller.
        x: augmented images (N, C, H, W) float in [0, 1]; y: labels (N,).
        attack: the training attack (PGD-10, 8/255, 2/255 in the paper).
        objective: ``(model, x, x_adv, y) -> (loss, logits)``.
        awp: AWP settings, or None for plain AT (also during the warm-up).
        params: the perturbed parameters (default :func:`select_params` of ``model``).
        generator: CPU generator of the attack's random start.
        grad_hook: forwarded to :func:`weight_perturbation` (distributed all-reduce).

    Returns:
        :class:`StepStats` of the objective's forward pass.
    """
    x_adv = run_attack(model, x, y, attack, generator=generator)
    model.train()
    if awp is not None and awp.gamma > 0:
        params = params if params is not None else select_params(model)
        v = weight_perturbation(
            lambda: objective(model, x, x_adv, y)[0],
            params,
            gamma=awp.gamma,
            steps=awp.steps,
            model=model,
            grad_hook=grad_hook,
        )
        with perturbed(params, v, restore="subtract"):
            loss, logits = objective(model, x, x_adv, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    else:
        loss, logits = objective(model, x, x_adv, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return StepStats(float(loss.detach()), int((logits.detach().argmax(1) == y).sum()), len(y))


def pick_device(name: str) -> torch.device:
    """``auto`` -> CUDA when present, else CPU; otherwise the named device (checked)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but CUDA is not available; use --device cpu")
    return dev


@dataclass
class TrainResult:
    """What :func:`train` returns: the final model, the run folder and the per-epoch records."""

    model: nn.Module
    out: Path
    history: list[dict[str, Any]] = field(default_factory=list)


class RunFolder:
    """Paths of a run folder: config.json, metrics.jsonl, checkpoints/{last,best,epoch_NNN}.pt."""

    def __init__(self, out: str | Path) -> None:
        self.root = Path(out)
        self.config = self.root / "config.json"
        self.metrics = self.root / "metrics.jsonl"
        self.ckpt_dir = self.root / "checkpoints"
        self.last = self.ckpt_dir / "last.pt"
        self.best = self.ckpt_dir / "best.pt"

    def epoch_ckpt(self, epoch: int) -> Path:
        return self.ckpt_dir / f"epoch_{epoch:03d}.pt"

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics.exists():
            return []
        return [json.loads(line) for line in self.metrics.read_text().splitlines() if line.strip()]


def _config_diff(saved: dict[str, Any], current: dict[str, Any], prefix: str = "") -> list[str]:
    diffs = []
    for key in sorted(set(saved) | set(current)):
        if key in RESUME_MUTABLE:
            continue
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += _config_diff(a, b, prefix + key + ".")
        elif a != b:
            diffs.append(f"{prefix}{key}: {a!r} in the run, {b!r} now")
    return diffs


def _rng_state(generators: dict[str, torch.Generator]) -> dict[str, torch.Tensor]:
    state = {f"rng_{k}": g.get_state() for k, g in generators.items()}
    state["rng_torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        state["rng_cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(ckpt: dict[str, Any], generators: dict[str, torch.Generator]) -> None:
    for k, g in generators.items():
        g.set_state(ckpt[f"rng_{k}"])
    torch.set_rng_state(ckpt["rng_torch"])
    if "rng_cuda" in ckpt and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(ckpt["rng_cuda"])


def prepare_run(cfg: TrainConfig, *, resume: bool) -> RunFolder:
    """Check the run folder: a new run never overwrites one; a resumed run must match it.

    Raises:
        FileExistsError: a new run into a folder that already holds one.
        ValueError: resuming with a configuration that differs (names each difference).
        FileNotFoundError: resuming a folder without ``checkpoints/last.pt``.
    """
    run = RunFolder(cfg.out)
    if not resume:
        existing = [p for p in (run.last, run.metrics) if p.exists()]
        if existing:
            raise FileExistsError(
                f"run folder {run.root} already holds a run ({existing[0]}); "
                f"pass --resume to continue it, or choose another --out"
            )
        return run
    if not run.last.exists():
        raise FileNotFoundError(
            f"cannot resume: {run.last} does not exist; start the run without --resume"
        )
    saved = json.loads(run.config.read_text()) if run.config.exists() else None
    if saved is not None:
        diffs = _config_diff(saved, to_dict(cfg))
        if diffs:
            raise ValueError(
                f"cannot resume {run.root}: the configuration differs: "
                + "; ".join(diffs)
                + ". Resume with the run's own settings."
            )
    return run


def train(
    cfg: TrainConfig,
    *,
    resume: bool = False,
    progress: bool = True,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    data: DataBundle | None = None,
) -> TrainResult:
    """Train a model as ``cfg`` says, writing everything into the run folder ``cfg.out``.

    Per epoch a record is appended to ``metrics.jsonl`` (train loss/acc as optimized, train
    natural and robust accuracy on a fixed train subset at the unperturbed weights in eval mode,
    validation and test natural and PGD-20 accuracy, learning rate, seconds) and checkpoints
    ``last.pt`` (with optimizer and RNG states), ``best.pt`` (best validation robust accuracy)
    and, with ``save_every``, ``epoch_NNN.pt`` are written atomically.

    Args:
        cfg: the run's configuration.
        resume: continue from ``checkpoints/last.pt``; the result equals an uninterrupted run.
        progress: show a tqdm bar per epoch.
        on_epoch: called with each epoch's record (the CLI prints it).
        data: an already loaded dataset (else loaded from ``cfg.data``).

    Returns:
        :class:`TrainResult` with the final model (train mode), run folder and history.
    """
    from tqdm.auto import tqdm

    run = prepare_run(cfg, resume=resume)
    device = pick_device(cfg.device)
    data = data if data is not None else load_data(cfg.data, device, progress=progress)
    data = _on_device(data, device)
    spec = cfg.model_spec(data)

    torch.manual_seed(cfg.seed)
    model = build_model(spec).to(device)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )
    gens = {
        "data": torch.Generator().manual_seed(cfg.seed + 1),
        "attack": torch.Generator().manual_seed(cfg.seed + 2),
    }
    objective = get_objective(cfg.method)
    params = select_params(model)
    start_epoch, best_val = 0, -1.0
    history: list[dict[str, Any]] = []

    if resume:
        ckpt = load_checkpoint(run.last)
        model.load_state_dict(ckpt["state_dict"])
        optimizer.load_state_dict(ckpt["optimizer"])
        _set_rng_state(ckpt, gens)
        start_epoch, best_val = int(ckpt["epoch"]), float(ckpt.get("best_val", -1.0))
        # Drop records of epochs after the checkpoint (killed between metrics and checkpoint).
        history = [r for r in run.read_metrics() if r["epoch"] <= start_epoch]
        atomic_write_text(run.metrics, "".join(json.dumps(r) + "\n" for r in history))
        log.info("resuming %s at epoch %d", run.root, start_epoch)
    else:
        run.root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run.config, json.dumps(to_dict(cfg), indent=2) + "\n")

    train_sub = fixed_subset(len(data.train), cfg.train_eval_size, seed=cfg.seed + 3)
    test_sub = (
        fixed_subset(len(data.test), cfg.test_eval_size, seed=cfg.seed + 4)
        if cfg.test_eval_size
        else torch.arange(len(data.test))
    )
    n_train = len(data.train)
    steps_per_epoch = max(1, math.ceil(n_train / cfg.batch_size))
    awp_cfg = cfg.awp_config

    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        awp_on = awp_cfg is not None and epoch >= awp_cfg.warmup
        t0 = time.perf_counter()
        loss_sum, correct, seen = 0.0, 0, 0
        batches = iterate_batches(n_train, cfg.batch_size, shuffle=True, generator=gens["data"])
        bar = tqdm(
            batches,
            total=steps_per_epoch,
            desc=f"epoch {epoch + 1}/{cfg.epochs}",
            disable=not progress,
            leave=False,
            dynamic_ncols=True,
        )
        lr = cfg.lr
        for i, idx in enumerate(bar):
            if len(idx) < 2:  # BatchNorm cannot train on a single example
                continue
            lr = lr_at(
                epoch + (i + 1) / steps_per_epoch,
                lr=cfg.lr,
                epochs=cfg.epochs,
                schedule=cfg.schedule,
            )
            for group in optimizer.param_groups:
                group["lr"] = lr
            idx_dev = idx.to(device)
            x = augment(data.train.x[idx_dev], generator=gens["data"])
            y = data.train.y[idx_dev]
            stats = train_step(
                model,
                optimizer,
                x,
                y,
                attack=cfg.train_attack,
                objective=objective,
                awp=awp_cfg if awp_on else None,
                params=params,
                generator=gens["attack"],
            )
            if not math.isfinite(stats.loss):
                raise FloatingPointError(
                    f"training loss is {stats.loss} at epoch {epoch + 1}, "
                    f"step {i + 1}; lower --lr or --gamma"
                )
            loss_sum += stats.loss * stats.n
            correct += stats.correct
            seen += stats.n
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}")
        train_seconds = time.perf_counter() - t0

        t1 = time.perf_counter()
        record: dict[str, Any] = {
            "epoch": epoch + 1,
            "lr": lr,
            "awp": awp_on,
            "train_loss": loss_sum / max(seen, 1),
            "train_acc": correct / max(seen, 1),
        }
        record.update(_epoch_eval(model, data, cfg, train_sub, test_sub))
        record["seconds"] = train_seconds
        record["eval_seconds"] = time.perf_counter() - t1
        model.train()

        improved = record.get("val_robust_acc", -1.0) > best_val
        if improved:
            best_val = record["val_robust_acc"]
        history.append(record)
        with run.metrics.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
        common = dict(
            model=model,
            model_spec=to_dict(spec),
            config=to_dict(cfg),
            epoch=epoch + 1,
            metrics=record,
        )
        if improved and len(data.val):
            save_checkpoint(run.best, **common)
        if cfg.save_every and (epoch + 1) % cfg.save_every == 0:
            save_checkpoint(run.epoch_ckpt(epoch + 1), **common)
        # last.pt is written last: once it exists, every file of this epoch is on disk.
        save_checkpoint(
            run.last,
            **common,
            extra={"optimizer": optimizer.state_dict(), "best_val": best_val, **_rng_state(gens)},
        )
        if on_epoch is not None:
            on_epoch(record)
    return TrainResult(model=model, out=run.root, history=history)


def _on_device(data: DataBundle, device: torch.device) -> DataBundle:
    for split in (data.train, data.val, data.test):
        split.x, split.y = split.x.to(device), split.y.to(device)
    return data


def _epoch_eval(
    model: nn.Module,
    data: DataBundle,
    cfg: TrainConfig,
    train_sub: torch.Tensor,
    test_sub: torch.Tensor,
) -> dict[str, float]:
    """Natural and PGD-20 accuracy at the unperturbed weights, eval mode, fixed seeds."""
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
        nat = evaluate_attack(model, x, y, None, batch_size=cfg.eval_batch_size)
        rob = evaluate_attack(
            model, x, y, cfg.eval_attack, batch_size=cfg.eval_batch_size, seed=cfg.seed + 5
        )
        out[f"{name}_nat_acc"] = nat.accuracy
        out[f"{name}_robust_acc"] = rob.accuracy
        out[f"{name}_robust_loss"] = rob.loss
    return out
