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

from awp.config import config_diff, from_dict, to_dict
from awp.io import atomic_write_text

# Keys that may differ between a run and its resumption without changing the result's meaning.
RESUME_MUTABLE = ("device", "out")


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
        """``checkpoints/epoch_NNN.pt`` of a 1-based epoch."""
        return self.ckpt_dir / f"epoch_{epoch:03d}.pt"

    def epoch_ckpts(self) -> list[Path]:
        """The epoch checkpoints on disk, in epoch order."""
        return sorted(self.ckpt_dir.glob("epoch_*.pt"))

    def read_metrics(self) -> list[dict[str, Any]]:
        """The per-epoch records of ``metrics.jsonl`` (empty when there is none)."""
        if not self.metrics.exists():
            return []
        return [json.loads(line) for line in self.metrics.read_text().splitlines() if line.strip()]

    def append_metrics(self, record: Mapping[str, Any]) -> None:
        """Add one epoch's record to ``metrics.jsonl``."""
        with self.metrics.open("a") as fh:
            fh.write(json.dumps(record) + "\n")

    def rewrite_metrics(self, records: list[dict[str, Any]]) -> None:
        """Replace ``metrics.jsonl`` atomically (resume drops records after the checkpoint)."""
        atomic_write_text(self.metrics, "".join(json.dumps(r) + "\n" for r in records))

    def finished(self, epochs: int) -> bool:
        """Whether the run trained all ``epochs`` and wrote its last checkpoint."""
        return self.last.exists() and len(self.read_metrics()) >= epochs


def prepare_run(cfg: Any, *, resume: bool) -> RunFolder:
    """Check the run folder of ``cfg`` (a TrainConfig): a new run never overwrites one; a
    resumed run must match it.

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
        # Compare the values used, so a None ("the method's default") matches the same number
        # written out, and runs from before a field existed match its default.
        try:
            saved = to_dict(from_dict(type(cfg), saved).resolved())
        except (ValueError, TypeError):
            pass  # an unreadable config: compare as written, the diff names the problem
        diffs = config_diff(
            saved, to_dict(cfg.resolved()), ignore=RESUME_MUTABLE, saved_as="in the run"
        )
        if diffs:
            raise ValueError(
                f"cannot resume {run.root}: the configuration differs: "
                + "; ".join(diffs)
                + ". Resume with the run's own settings."
            )
    return run


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
