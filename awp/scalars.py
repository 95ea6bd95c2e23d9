"""TensorBoard event files of a training run: every number of each epoch's record, as it ends.

``metrics.jsonl`` stays the run's record; this writes the same numbers through
``torch.utils.tensorboard`` so that ``tensorboard --logdir runs`` shows the curves while a run
trains (the optional extra ``[tensorboard]``). Tags group by what they measure, e.g.
``accuracy/test_robust`` and ``loss/train_objective``; the step is the 1-based epoch.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from awp.extras import require

# Keys of an epoch record (awp.train) that are not "<split>_<measure>".
TAGS = {
    "lr": "schedule/lr",
    "awp": "awp/active",
    "awp_v_norm_ratio": "awp/v_norm_over_w_norm",
    "train_loss": "loss/train_objective",
    "train_acc": "accuracy/train_objective",
    "seconds": "time/train_seconds",
    "eval_seconds": "time/eval_seconds",
}
# The per-epoch evaluation's "<split>_<measure>" keys: measure -> (group, suffix).
EVAL_MEASURES = {
    "nat_acc": ("accuracy", "natural"),
    "robust_acc": ("accuracy", "robust"),
    "robust_loss": ("loss", "robust"),
}


def tag_of(key: str) -> str:
    """The TensorBoard tag of a record key: ``test_robust_acc`` -> ``accuracy/test_robust``;
    a key this module does not know goes under ``other/``."""
    if key in TAGS:
        return TAGS[key]
    split, _, measure = key.partition("_")
    if measure in EVAL_MEASURES:
        group, suffix = EVAL_MEASURES[measure]
        return f"{group}/{split}_{suffix}"
    return f"other/{key}"


def open_writer(log_dir: str | Path, *, purge_step: int | None = None) -> Any:
    """A ``SummaryWriter`` into ``log_dir``.

    Args:
        log_dir: the folder of the event files (created).
        purge_step: a resumed run passes its first epoch to come: events of that epoch and
            later, written before the run was stopped, are hidden, so a curve never shows an
            epoch twice.

    Raises:
        MissingDependencyError: tensorboard is not installed (names the extra).
    """
    tb = require("torch.utils.tensorboard", purpose="--tensorboard")
    return tb.SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)


def write_epoch(writer: Any, record: Mapping[str, Any]) -> None:
    """Write every number of one epoch's record (booleans as 0/1) at step ``record["epoch"]``,
    and flush, so the curve is on disk before the next epoch starts."""
    step = int(record["epoch"])
    for key, value in record.items():
        if key == "epoch" or not isinstance(value, int | float):
            continue
        writer.add_scalar(tag_of(key), float(value), global_step=step)
    writer.flush()
