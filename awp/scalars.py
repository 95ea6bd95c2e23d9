"""TensorBoard event files of a training run: every number of each epoch's record, as it ends.

``metrics.jsonl`` stays the run's record; this writes the same numbers through
``torch.utils.tensorboard`` so that ``tensorboard --logdir runs`` shows the curves while a run
trains (the optional extra ``[tensorboard]``). Tags group by what they measure, e.g.
``accuracy/test_robust`` and ``loss/train_objective``; the step is the 1-based epoch.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from awp.extras import require
from awp.io import check_writable

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
        OutputNotWritable: ``log_dir`` cannot be created or written (names it and the flag).
    """
    tb = require("torch.utils.tensorboard", purpose="--tensorboard")
    check_writable(log_dir, flag="--tensorboard")  # here, not in the writer's thread
    _quiet_writer_threads()
    with _writer_errors():
        return tb.SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)


@contextlib.contextmanager
def _writer_errors() -> Iterator[None]:
    """An OSError of the writer names its file as text: tensorboard's file layer passes the
    name as bytes, which the one error line would print as ``b'...'``."""
    try:
        yield
    except OSError as err:
        if isinstance(err.filename, bytes):
            raise type(err)(err.errno, err.strerror, os.fsdecode(err.filename)) from None
        raise


_QUIET = threading.Lock()
_quieted = False


def _quiet_writer_threads() -> None:
    """Keep the tracebacks of tensorboard's writer thread off stderr.

    An event file that cannot be written (a full disk) ends the writer's thread, which
    Python reports with the thread's whole traceback; the writer raises the same error again
    in the main thread at its next write or flush (:func:`write_epoch`), where the command
    reports it in one line. Other threads' errors are reported as before.
    """
    global _quieted
    with _QUIET:
        if _quieted:
            return
        previous = threading.excepthook

        def hook(args: threading.ExceptHookArgs) -> None:
            if type(args.thread).__module__.startswith("tensorboard.") and isinstance(
                args.exc_value, OSError
            ):
                return
            previous(args)

        threading.excepthook = hook
        _quieted = True


def write_epoch(writer: Any, record: Mapping[str, Any]) -> None:
    """Write every number of one epoch's record (booleans as 0/1) at step ``record["epoch"]``,
    and flush, so the curve is on disk before the next epoch starts."""
    step = int(record["epoch"])
    with _writer_errors():
        for key, value in record.items():
            if key == "epoch" or not isinstance(value, int | float):
                continue
            writer.add_scalar(tag_of(key), float(value), global_step=step)
        writer.flush()
