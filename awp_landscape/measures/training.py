"""Training: AT and AT-AWP (or every gamma of a sweep), each in its run folder of the seed
(``awp train`` trains one run).

Its measures over seeds come from the runs' per-epoch records: the rise of the test robust loss
after its minimum (robust overfitting), and, in the sweep, the last train robust accuracy.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from awp_landscape.measures.base import Context, Log, Measure, SweepColumn

if TYPE_CHECKING:
    from awp.runs import RunFolder
    from awp.train_config import TrainConfig

#: The demo's run folders inside a seed folder, by method label.
RUNS = {"AT": "at", "AT-AWP": "at_awp"}


def train_all(configs: Mapping[str, TrainConfig], *, progress: bool, log: Log) -> None:
    """Train (or resume, or reuse) every run; one dataset load shared by all."""
    from awp import distributed
    from awp.data import load_data
    from awp.method_config import measured_average
    from awp.runs import RunFolder
    from awp.train import train
    from awp_landscape.console import epoch_line

    data = None
    for label, tcfg in configs.items():
        run = RunFolder(tcfg.out, measured_average(tcfg))
        if run.finished(tcfg.epochs):
            log(f"[{label}] reusing the finished run in {run.root}")
            continue
        if data is None:
            data = load_data(tcfg.data, distributed.pick_device(tcfg.device), progress=progress)
        log(
            f"[{label}] training {tcfg.model.name} (width {tcfg.model.width}) for {tcfg.epochs} "
            f"epochs on {data.name}: {len(data.train)} train / {len(data.val)} val / "
            f"{len(data.test)} test"
        )
        train(
            tcfg,
            resume=run.last.exists(),
            progress=progress,
            data=data,
            on_epoch=lambda r, label=label: log(f"[{label}] {epoch_line(r)}"),
        )
        log(f"[{label}] checkpoints in {run.ckpt_dir}")


def run_folder(seed_folder: Path, label: str) -> RunFolder:
    """A run of a seed folder as the pipelines measure it (by its weight average, where it was
    trained to be: ``at+ema``): the demo's ``at``/``at_awp``, or a sweep's run named by label."""
    from awp.runs import RunFolder

    return RunFolder.measured(seed_folder / RUNS.get(label, label))


def train_seconds(folder: Path, label: str) -> float:
    """Seconds of a run's training and per-epoch evaluation."""
    return sum(
        r.get("seconds", 0.0) + r.get("eval_seconds", 0.0)
        for r in run_folder(folder, label).read_metrics()
    )


class Training(Measure):
    name = "training"
    heading = "training"
    files = tuple(RUNS.values())
    in_analysis = False
    pipelines = ("demo", "sweep")
    sweep_columns = (
        SweepColumn("train robust accuracy (last epoch)"),
        SweepColumn("test robust loss rise after its minimum"),
    )

    def run(self, ctx: Context) -> None:
        train_all(ctx.configs, progress=ctx.progress, log=ctx.log)

    def read(self, folder: Path) -> Any:
        return None  # the report reads the runs themselves (awp_landscape.report.collect)

    def loss_rise(self, folder: Path, method: str) -> float | None:
        from analysis.outcome import robust_overfitting

        ro = robust_overfitting(run_folder(folder, method).read_metrics())
        return None if ro is None else ro.loss_rise

    def over_seeds(self, plan: Any) -> list[tuple[str, Any]]:
        return [("rise of the test robust loss after its minimum", self.loss_rise)]

    def sweep_values(self, folder: Path, label: str) -> dict[str, float | None]:
        """The last evaluated epoch's train robust accuracy and the test loss rise."""
        from analysis.outcome import robust_overfitting

        history = run_folder(folder, label).read_metrics()
        evaluated = [r for r in history if "train_robust_acc" in r]
        ro = robust_overfitting(history)
        return {
            "train robust accuracy (last epoch)": (
                float(evaluated[-1]["train_robust_acc"]) if evaluated else None
            ),
            "test robust loss rise after its minimum": None if ro is None else ro.loss_rise,
        }


MEASURE = Training()
