"""The training loop of adversarial training (AT, TRADES, MART), with or without AWP.

Three files: :mod:`awp.train_config` (:class:`TrainConfig`, the method defaults, the schedule
:func:`lr_at`), :mod:`awp.step` (:func:`train_step`: one minibatch: attack, the general AWP
schedule A/K1/K2, the update) and this one, the stateful shell :func:`train`: run folder
(:mod:`awp.runs`), epochs, metrics.jsonl, per-epoch evaluation, checkpoints, exact resume, a
progress bar, extra data (RST), ``init`` weights (pre-training) and multi-process training
under torchrun (:mod:`awp.distributed`). ``from awp.train import TrainConfig, train_step, ...``
keeps working: the names callers import are re-exported here.

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

import contextlib
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
from awp.augment import augment, to_float
from awp.averaging import averaged_copy, ema_update_, swa_update_
from awp.checkpoint import (
    CheckpointError,
    adapt_state_dict,
    first_nonfinite,
    load_checkpoint,
    load_state_dict_checked,
    load_weights,
    save_checkpoint,
)
from awp.config import to_dict
from awp.data import DataBundle, Split, fixed_subset, iterate_batches, load_data
from awp.distributed import DistContext
from awp.evaluate import evaluate_attack
from awp.extra_data import batches_per_epoch, load_extra_data, mixed_batches
from awp.io import (
    atomic_write_bytes,
    atomic_write_text,
    check_writable,
    exclusive_output,
    sha256_file,
)
from awp.method_config import AverageConfig, EMAConfig, SWAConfig
from awp.models import ModelSpec, build_model
from awp.modes import channels_last_safe, recompute_bn_stats
from awp.perturb import select_params
from awp.progress import progress_bar
from awp.runs import RunFolder, continue_hint, prepare_run, rng_state, set_rng_state
from awp.scalars import open_writer, write_epoch
from awp.seeds import derive_seed, generator_for, with_scheme
from awp.sources import InputWrapper, is_source, load_source, load_weights_file
from awp.step import StepStats, train_step
from awp.train_config import (
    METHOD_DEFAULT_FIELDS,
    SCHEDULES,
    TENSORBOARD_IN_RUN,
    TrainConfig,
    lr_at,
)
from awp.weight_methods import weight_method

# Re-exported: callers import these from awp.train, where they lived before the split.
__all__ = [
    "METHOD_DEFAULT_FIELDS",
    "SCHEDULES",
    "TENSORBOARD_IN_RUN",
    "DivergedError",
    "StepStats",
    "TrainConfig",
    "TrainResult",
    "evaluated_at",
    "lr_at",
    "train",
    "train_step",
]

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- the shell
@dataclass
class TrainResult:
    """What :func:`train` returns: the final model, the run folder and the per-epoch records."""

    model: nn.Module
    out: Path
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class _Average:
    """One weight average of the run (EMA or SWA): its settings, its model and its state."""

    config: AverageConfig
    model: nn.Module
    n: int = 0  # SWA: how many epochs' weights the mean holds
    best_val: float = -1.0

    @property
    def kind(self) -> str:
        """Its name, "ema" or "swa": its checkpoint folder and its metrics columns' prefix."""
        return self.config.name

    def ready(self) -> bool:
        """Whether it holds an average to evaluate and save (SWA: from its start epoch on)."""
        return not isinstance(self.config, SWAConfig) or self.n > 0

    def state(self) -> dict[str, Any]:
        """What the resume state keeps of it."""
        return {
            "state_dict": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "n": self.n,
            "best_val": self.best_val,
        }


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
    channels_last: bool = False  # the network's and its batches' memory layout
    averages: list[_Average] = field(default_factory=list)  # EMA, SWA (cfg.ema, cfg.swa)


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
        resume = resume or resume_from is not None
        found = _run_files(RunFolder(cfg.out))
        try:
            s = _open(
                cfg,
                ctx,
                resume=resume,
                resume_from=Path(resume_from) if resume_from is not None else None,
                progress=progress,
                data=data,
                model=model,
            )
            try:
                for epoch in range(s.start_epoch, cfg.epochs):
                    record = _train_epoch(s, epoch, progress=progress)
                    _average_epoch(s, record["epoch"])
                    _end_epoch(s, record)
                    if on_epoch is not None:
                        on_epoch(record)
            finally:
                if s.board is not None:
                    s.board.close()
        except BaseException:
            if ctx.is_main and not resume:
                _discard_unfinished(RunFolder(cfg.out), cfg.tensorboard_dir, keep=found)
            raise
        distributed.barrier()  # every rank returns once rank 0's files are on disk
        return TrainResult(model=s.net, out=s.run.root, history=s.history)


def _run_files(run: RunFolder) -> set[Path]:
    """The files of a run folder that a new run writes before its first ``last.pt``."""
    return {p for p in (run.config, run.best, *run.epoch_ckpts()) if p.exists()}


def _discard_unfinished(run: RunFolder, board: Path | None, *, keep: set[Path]) -> None:
    """Remove what a new run wrote when it failed before its first ``last.pt`` (its
    config.json, the checkpoints of its first epoch, its folders while empty; files that were
    there before it started, ``keep``, stay), so the folder is as it was and the same command
    starts it again. Once ``last.pt`` exists the run is kept: ``--resume`` continues it."""
    if run.last.exists():
        return
    for path in _run_files(run) - keep:
        path.unlink(missing_ok=True)
    for folder in (board, run.ckpt_dir):
        if folder is not None:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when empty


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
    if ctx.is_main and cfg.tensorboard_dir is not None:
        check_writable(cfg.tensorboard_dir, flag="--tensorboard")
    distributed.barrier()
    device = distributed.pick_device(cfg.device, ctx)
    data = data if data is not None else load_data(cfg.data, device, progress=progress)
    _move(data, device)
    spec = cfg.model_spec(data)
    torch.manual_seed(derive_seed(cfg.seed, "train", "init"))  # the weights' initialization
    net = (model if model is not None else build_model(spec)).to(device)
    channels_last = cfg.channels_last(device) and channels_last_safe(net)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)  # the weights; activations follow
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
            "data": generator_for(cfg.seed, "train", "order"),  # the same on every rank
            "attack": generator_for(cfg.seed, "train", "attack", ctx.rank),
            # Gaussian augmentation only: without it nothing is drawn and last.pt is unchanged.
            **({"noise": generator_for(cfg.seed, "train", "noise")} if cfg.noise_sd else {}),
        },
        extra=extra,
        inputs=inputs,
        channels_last=channels_last,
        # The averages start from the initial weights (after --init), before the first step.
        averages=[_Average(a, averaged_copy(net)) for a in cfg.averages],
    )
    if resume:
        _restore(s, resume_from or run.last)
    elif ctx.is_main:
        run.root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run.config, json.dumps(with_scheme(to_dict(cfg)), indent=2) + "\n")
    s.train_sub = fixed_subset(
        len(data.train), cfg.train_eval_size, seed=derive_seed(cfg.seed, "train", "eval", "train")
    )
    s.test_sub = (
        fixed_subset(
            len(data.test), cfg.test_eval_size, seed=derive_seed(cfg.seed, "train", "eval", "test")
        )
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
    _restore_averages(s, ckpt, source)
    # Drop records of epochs after the checkpoint (a resume from an earlier epoch); add the
    # checkpoint's own epoch when the run stopped after last.pt, before its metrics row.
    s.history = [r for r in s.run.read_metrics() if r["epoch"] <= s.start_epoch]
    saved = ckpt.get("metrics")
    if isinstance(saved, dict) and saved.get("epoch") == s.start_epoch:
        if not s.history or s.history[-1]["epoch"] < s.start_epoch:
            s.history.append(saved)
    if s.ctx.is_main:
        s.run.rewrite_metrics(s.history)
    if s.ctx.is_main and source.resolve() != s.run.last.resolve():
        # An epoch checkpoint holds last.pt's state of its epoch: it becomes last.pt now, so a
        # corrupt or missing last.pt is repaired even when no epoch is left to train, and
        # --resume continues from here.
        atomic_write_bytes(s.run.last, source.read_bytes())
        log.info("%s rewritten from %s", s.run.last, source.name)
    log.info("resuming %s at epoch %d from %s", s.run.root, s.start_epoch, source.name)


def _restore_averages(s: _Session, ckpt: dict[str, Any], source: Path) -> None:
    """The averages' state from a checkpoint's resume state (and, resuming from an epoch
    checkpoint, their last.pt rewritten from their checkpoints of that epoch)."""
    saved = ckpt.get("averages") or {}
    for avg in s.averages:
        if avg.kind not in saved:
            raise CheckpointError(
                f"{source} holds no state of the {avg.kind.upper()} average this run keeps; "
                f"{continue_hint(s.run)}"
            )
        state = saved[avg.kind]
        avg.model.load_state_dict(state["state_dict"])
        avg.n, avg.best_val = int(state["n"]), float(state["best_val"])
        folder = s.run.ckpt_dir / avg.kind
        epoch_file = folder / source.name
        if s.ctx.is_main and source.resolve() != s.run.last.resolve() and epoch_file.exists():
            atomic_write_bytes(folder / s.run.last.name, epoch_file.read_bytes())


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
    if s.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
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
    perturbation = cfg.perturbation_config
    perturbed_now = perturbation is not None and epoch >= perturbation.warmup
    train_attack, objective, attack_loss = cfg.train_attack, cfg.objective, cfg.attack_loss
    losses = cfg.per_example_objective
    params = select_params(
        s.net, weight_method(perturbation).param_set if perturbation is not None else "weights"
    )
    emas = [a for a in s.averages if isinstance(a.config, EMAConfig)]
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
            perturbation=perturbation if perturbed_now else None,
            params=params,
            generator=s.gens["attack"],
            grad_hook=grad_hook,
            attack_loss=attack_loss,
            loss_scale=scale,
            noise=noise,
            losses=losses,
        )
        for avg in emas:
            ema_update_(avg.model, s.net, decay=avg.config.decay)
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
        "awp": perturbed_now and cfg.awp,
        # Whether SAM, ASAM or RWP perturbed this epoch's steps (under "sam", "asam", "rwp").
        **({cfg.weight_method: perturbed_now} if cfg.weight_method != "none" else {}),
        "train_loss": loss_sum / max(seen, 1),
        "train_acc": correct / max(seen, 1),
        "seconds": seconds,
    }
    if ratios:  # the same on every rank: v is computed from all-reduced gradients
        record["awp_v_norm_ratio"] = sum(ratios) / len(ratios)
    return record


def _average_epoch(s: _Session, epoch: int) -> None:
    """At the end of 1-based ``epoch``: the SWA average takes the epoch's weights (from its start
    epoch on) and re-estimates its BatchNorm statistics on the training images; under torchrun
    every average takes rank 0's BatchNorm buffers, as the trained model does."""
    for avg in s.averages:
        if isinstance(avg.config, SWAConfig) and epoch >= avg.config.start:
            avg.n += 1
            swa_update_(avg.model, s.net, n=avg.n)
            _recompute_bn(s, avg.model)
        elif s.ctx.active:
            distributed.broadcast_buffers_(avg.model)


def _recompute_bn(s: _Session, model: nn.Module) -> None:
    """BatchNorm statistics of ``model`` over the training images (un-augmented, in order: no
    random draw, so a resumed run re-estimates what an uninterrupted one does)."""
    channels_last = s.cfg.channels_last(s.device)

    def prepare(x_u8: torch.Tensor) -> torch.Tensor:
        x = to_float(x_u8)
        return x.contiguous(memory_format=torch.channels_last) if channels_last else x

    recompute_bn_stats(model, s.data.train.x, batch_size=s.cfg.eval_batch_size, prepare=prepare)


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
    for avg in s.averages:
        bad = first_nonfinite(avg.model.state_dict())
        if bad is not None:
            raise DivergedError(
                f"after epoch {record['epoch']} the {avg.kind.upper()} average's {bad} holds NaN "
                f"or infinity, so nothing of this epoch was saved; {_last_saved(s)}; lower --lr"
            )
    seconds = record.pop("seconds")
    t1 = time.perf_counter()
    if evaluated_at(record["epoch"], cfg):
        assert s.train_sub is not None and s.test_sub is not None
        record.update(_epoch_eval(s.net, s.data, cfg, s.train_sub, s.test_sub, ctx))
        for avg in s.averages:
            if avg.ready():
                own = _epoch_eval(avg.model, s.data, cfg, s.train_sub, s.test_sub, ctx)
                record.update({f"{avg.kind}_{k}": v for k, v in own.items()})
    record["seconds"] = seconds
    record["eval_seconds"] = time.perf_counter() - t1
    s.net.train()
    improved = record.get("val_robust_acc", -1.0) > s.best_val
    if improved:
        s.best_val = record["val_robust_acc"]
    improved_averages = set()
    for avg in s.averages:
        if record.get(f"{avg.kind}_val_robust_acc", -1.0) > avg.best_val:
            avg.best_val = record[f"{avg.kind}_val_robust_acc"]
            improved_averages.add(avg.kind)
    s.history.append(record)
    # Every rank takes part in the gather; only rank 0 writes.
    attack_states = (
        distributed.all_gather_objects(s.gens["attack"].get_state()) if ctx.active else None
    )
    if ctx.is_main:
        # The checkpoints first, the epoch's metrics row after last.pt: a write that fails (a
        # full disk) leaves no row of an epoch that cannot be resumed from.
        _save(
            s,
            record,
            improved=improved,
            improved_averages=improved_averages,
            attack_states=attack_states,
        )
        s.run.append_metrics(record)
        if s.board is not None:
            write_epoch(s.board, record)


def _save(
    s: _Session,
    record: dict[str, Any],
    *,
    improved: bool,
    improved_averages: set[str],
    attack_states: list[Any] | None,
) -> None:
    """best.pt (when improved), epoch_NNN.pt (when due), the averages' own checkpoints, then
    last.pt with the resume state (the averages' state included)."""
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
    if s.averages:
        state["averages"] = {avg.kind: avg.state() for avg in s.averages}
    full = {**common, "extra": {**common["extra"], **state}}
    due = bool(cfg.save_every) and epoch % cfg.save_every == 0
    if due:
        save_checkpoint(s.run.epoch_ckpt(epoch), **full)
    for avg in s.averages:
        if avg.ready():
            _save_average(s, avg, record, best=avg.kind in improved_averages, due=due)
    # last.pt is written last: once it exists, every file of this epoch is on disk.
    save_checkpoint(s.run.last, **full)


def _save_average(
    s: _Session, avg: _Average, record: dict[str, Any], *, best: bool, due: bool
) -> None:
    """``checkpoints/<kind>/{last,best,epoch_NNN}.pt``: the average as a checkpoint like any
    other (its metrics under the usual names), marked ``"average": kind``; its resume state is
    in the run's own last.pt."""
    folder = s.run.ckpt_dir / avg.kind
    prefix = f"{avg.kind}_"
    metrics = {"epoch": record["epoch"], "lr": record["lr"], "average": avg.kind}
    metrics.update({k[len(prefix) :]: v for k, v in record.items() if k.startswith(prefix)})
    kw = dict(
        model=avg.model,
        model_spec=s.spec_record,
        config=to_dict(s.cfg),
        epoch=record["epoch"],
        metrics=metrics,
        extra={
            "average": avg.kind,
            "average_config": to_dict(avg.config),
            **({"swa_n": avg.n} if isinstance(avg.config, SWAConfig) else {}),
            "resolved_config": to_dict(s.cfg.resolved()),
            "inputs": s.inputs,
            "world": s.ctx.world,
        },
    )
    if best and len(s.data.val):
        save_checkpoint(folder / s.run.best.name, **kw)
    if due:
        save_checkpoint(folder / s.run.epoch_ckpt(record["epoch"]).name, **kw)
    save_checkpoint(folder / s.run.last.name, **kw)


def _load_init(net: nn.Module, path: str, spec: ModelSpec | None) -> dict[str, Any]:
    """Load ``--init`` weights into ``net``: a checkpoint or state-dict file (``.pt``,
    ``.safetensors``), or the weights of a model named by a source string
    (``robustbench:NAME``, a TorchScript or ``torch.export`` file... :mod:`awp.sources`), which
    must be this run's architecture (mismatched keys are listed). A checkpoint of ours with
    another input convention (normalized vs raw [0, 1]) is refused: it would load but compute
    something else."""
    if is_source(path):
        return _load_init_source(net, path, spec)
    if not Path(path).is_file():
        raise FileNotFoundError(f"--init {path} does not exist (or is not a file)")
    load = load_weights_file if Path(path).suffix == ".safetensors" else load_weights
    info = dict(load(net, path, source=f"--init {path}"))
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


def _load_init_source(net: nn.Module, name: str, spec: ModelSpec | None) -> dict[str, Any]:
    """``--init`` from a model named by a source string: its own weights (without the input
    wrapper's), into this run's architecture."""
    source = load_source(name, num_classes=spec.num_classes if spec is not None else None)
    inner = source.model.model if isinstance(source.model, InputWrapper) else source.model
    # buffers the run's network keeps out of its state dict (its input normalization) are not
    # weights to load, though a TorchScript file keeps them in its own
    transient = {n for n, _ in net.named_buffers()} - set(net.state_dict())
    state = {k: v for k, v in inner.state_dict().items() if k not in transient}
    adapted, how = adapt_state_dict(state, net)
    load_state_dict_checked(net, adapted, source=f"--init {name}")
    log.info("initialized from %s (%s, weights sha256 %s)", name, source.kind, source.sha256[:12])
    return {"path": name, "sha256": source.sha256, "layout": f"source {source.kind}", **how}


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
        seed = derive_seed(cfg.seed, "train", "eval attack", name, ctx.rank)
        if ctx.active:
            x, y = x[ctx.rank :: ctx.world], y[ctx.rank :: ctx.world]
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
