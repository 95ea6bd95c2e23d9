"""Run folders: their layout, the checks before a run writes into one, and exact resume state.

A run folder holds ``config.json`` (the training config as given), ``metrics.jsonl`` (one record
per epoch) and ``checkpoints/`` (``last.pt`` with the optimizer and every RNG state, ``best.pt``,
``epoch_NNN.pt``). A new run never writes into a folder that holds one; a resumed run must have
the run's own settings (:func:`prepare_run` names every difference).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from awp.checkpoint import CheckpointError, load_checkpoint
from awp.config import check_same_settings, from_dict, to_dict
from awp.io import atomic_write_text, read_json_lines
from awp.method_config import measured_average
from awp.seeds import SEED_SCHEME_KEY, with_scheme

# Keys that may differ between a run and its resumption without changing the result's meaning.
RESUME_MUTABLE = ("device", "out", "tensorboard")


METRICS_FIX = (
    "delete that line (and the epochs after it) and rerun awp train with --resume, which "
    "retrains from the last checkpoint"
)


class RunFolder:
    """Paths of a run folder: config.json, metrics.jsonl, checkpoints/{last,best,epoch_NNN}.pt.

    With ``average`` (``ema``, ``swa``), the run as a pipeline measures it: the checkpoints of
    that weight average (``checkpoints/<average>/``) and its per-epoch evaluation (the
    ``<average>_`` columns of metrics.jsonl under their usual names); training writes through
    the plain folder.
    """

    def __init__(self, out: str | Path, average: str = "") -> None:
        self.root = Path(out)
        self.average = average
        self.config = self.root / "config.json"
        self.metrics = self.root / "metrics.jsonl"
        self.ckpt_dir = (
            self.root / "checkpoints" / average if average else self.root / "checkpoints"
        )
        self.last = self.ckpt_dir / "last.pt"
        self.best = self.ckpt_dir / "best.pt"

    @classmethod
    def measured(cls, out: str | Path) -> RunFolder:
        """The run at ``out`` as a pipeline measures it: by the weight average it was trained
        to be measured by (:func:`awp.method_config.measured_average`, from its config.json),
        else by its own weights."""
        config = Path(out) / "config.json"
        saved = json.loads(config.read_text()) if config.is_file() else {}
        return cls(out, measured_average(saved))

    def epoch_ckpt(self, epoch: int) -> Path:
        """``checkpoints/epoch_NNN.pt`` of a 1-based epoch."""
        return self.ckpt_dir / f"epoch_{epoch:03d}.pt"

    def epoch_ckpts(self) -> list[Path]:
        """The epoch checkpoints on disk, in epoch order."""
        return sorted(self.ckpt_dir.glob("epoch_*.pt"))

    def read_metrics(self) -> list[dict[str, Any]]:
        """The per-epoch records of ``metrics.jsonl`` (empty when there is none); with
        ``average``, its evaluation under the usual names (the plain weights' dropped)."""
        if not self.metrics.exists():
            return []
        records = read_json_lines(self.metrics, what="metrics file", fix=METRICS_FIX)
        if not self.average:
            return records
        prefix, own = f"{self.average}_", ("epoch", "lr", "seconds", "eval_seconds")
        return [
            {**{k: r[k] for k in own if k in r},
             **{k[len(prefix):]: v for k, v in r.items() if k.startswith(prefix)}}
            for r in records
        ]  # fmt: skip

    def append_metrics(self, record: Mapping[str, Any]) -> None:
        """Add one epoch's record to ``metrics.jsonl``: the file is rewritten atomically, so a
        write that fails (a full disk) leaves it as it was, never with a cut line."""
        self.rewrite_metrics([*self.read_metrics(), dict(record)])

    def rewrite_metrics(self, records: list[dict[str, Any]]) -> None:
        """Replace ``metrics.jsonl`` atomically (resume drops records after the checkpoint)."""
        if self.average:
            raise ValueError(f"{self.root}: training writes through the plain run folder")
        atomic_write_text(self.metrics, "".join(json.dumps(r) + "\n" for r in records))

    def finished(self, epochs: int) -> bool:
        """Whether the run trained all ``epochs`` and wrote its last checkpoint (with
        ``average``, that average's too)."""
        plain = RunFolder(self.root)
        return plain.last.exists() and self.last.exists() and len(plain.read_metrics()) >= epochs


def resume_source(path: Path) -> dict[str, Any] | None:
    """The checkpoint at ``path`` when a run can continue from it exactly (it holds the
    optimizer and every RNG state), else None (missing, corrupt, or weights only)."""
    try:
        ckpt = load_checkpoint(path)
    except (OSError, CheckpointError):
        return None
    return ckpt if "optimizer" in ckpt and "rng_torch" in ckpt else None


def newest_resumable(run: RunFolder) -> tuple[Path, int] | None:
    """The newest epoch checkpoint a run can continue from exactly, with its epoch."""
    for path in reversed(run.epoch_ckpts()):
        ckpt = resume_source(path)
        if ckpt is not None:
            return path, int(ckpt["epoch"])
    return None


def continue_hint(run: RunFolder) -> str:
    """Where a run whose last.pt cannot be resumed can continue from (the newest epoch
    checkpoint holding the full state), or that it cannot."""
    found = newest_resumable(run)
    if found is None:
        return (
            f"no epoch checkpoint of {run.root} holds the state to continue from: start a new "
            "run with another --out (--init CHECKPOINT keeps a checkpoint's weights)"
        )
    path, epoch = found
    return (
        f"the newest checkpoint to continue from is {path} (epoch {epoch}): "
        f"pass --resume-from {path}"
    )


def prepare_run(cfg: Any, *, resume: bool, resume_from: Path | None = None) -> RunFolder:
    """Check the run folder of ``cfg`` (a TrainConfig): a new run never overwrites one; a
    resumed run must match it and have a checkpoint to continue from.

    Args:
        cfg: the TrainConfig.
        resume: continue the run in ``cfg.out``.
        resume_from: continue from this checkpoint of the run (an epoch checkpoint) instead
            of ``last.pt``.

    Raises:
        FileExistsError: a new run into a folder that already holds one.
        ValueError: resuming with a configuration that differs (names each difference).
        FileNotFoundError: nothing to resume from (names the newest checkpoint that can be).
    """
    run = RunFolder(cfg.out)
    if not resume and resume_from is None:
        existing = [p for p in (run.last, run.metrics) if p.exists()]
        if existing:
            hint = (
                "pass --resume to continue it"
                if run.last.exists()
                else f"its {run.last.name} is missing; {continue_hint(run)}"
            )
            raise FileExistsError(
                f"run folder {run.root} already holds a run ({existing[0]}); {hint}, or choose "
                "another --out"
            )
        return run
    source = Path(resume_from) if resume_from is not None else run.last
    if resume_from is None and not run.last.exists() and not run.metrics.exists():
        raise FileNotFoundError(
            f"cannot resume: {run.root} holds no run (no {run.last.name}, no "
            f"{run.metrics.name}); start it without --resume"
        )
    if source.is_dir():
        raise FileNotFoundError(
            f"cannot resume: {source} is a directory; pass a checkpoint file. {continue_hint(run)}"
        )
    if resume_source(source) is None:
        what = "is missing" if not source.exists() else "cannot be continued from"
        why = "" if source == run.last else " (a checkpoint without the optimizer and RNG states?)"
        raise FileNotFoundError(f"cannot resume: {source} {what}{why}; {continue_hint(run)}")
    _check_same_config(run, cfg)
    return run


def _check_same_config(run: RunFolder, cfg: Any) -> None:
    saved = json.loads(run.config.read_text()) if run.config.exists() else None
    if saved is None:
        return
    scheme = saved.get(SEED_SCHEME_KEY) if isinstance(saved, dict) else None
    # Compare the values used, so a None ("the method's default") matches the same number
    # written out, and runs from before a field existed match its default.
    try:
        saved = {**to_dict(from_dict(type(cfg), saved).resolved()), SEED_SCHEME_KEY: scheme}
    except (ValueError, TypeError):
        pass  # an unreadable config: compare as written, the diff names the problem
    check_same_settings(
        saved,
        with_scheme(to_dict(cfg.resolved())),
        where=f"cannot resume {run.root}: the configuration differs",
        fix="Resume with the run's own settings.",
        ignore=RESUME_MUTABLE,
        saved_as="in the run",
    )


def rng_state(generators: Mapping[str, torch.Generator]) -> dict[str, torch.Tensor]:
    """Every RNG state a run depends on (its generators, torch's, CUDA's), for ``last.pt``."""
    state = {f"rng_{k}": g.get_state() for k, g in generators.items()}
    state["rng_torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        state["rng_cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(ckpt: Mapping[str, Any], generators: Mapping[str, torch.Generator]) -> None:
    """Restore the states :func:`rng_state` saved."""
    for k, g in generators.items():
        g.set_state(ckpt[f"rng_{k}"])
    torch.set_rng_state(ckpt["rng_torch"])
    if "rng_cuda" in ckpt and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(ckpt["rng_cuda"])
