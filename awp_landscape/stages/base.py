"""What a stage is: the one place a measure of the demo, reproduce and the sweep is declared.

A :class:`Stage` names its output files (relative to the seed folder's ``analysis/``, or to the
seed folder itself for training and evaluation), runs from a :class:`Context` (the plan becomes
its config inside its run function), reads its files back, draws its report sections, and
states its measures over seeds and its sweep columns. :mod:`awp_landscape.stages` lists the
stages in order; the pipeline, the report, the table over seeds and the sweep iterate over that
list, and nothing else names a stage's files.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from awp import distributed
from awp.io import read_json
from awp.runs import RunFolder
from awp_landscape.inputs import Inputs, Sources

if TYPE_CHECKING:  # the report's types: drawing imports matplotlib, only when a report is made
    from awp_landscape.report.collect import Results
    from figures.html import Section

Log = Callable[[str], None]
#: A measure over seeds: (seed folder, method label) -> its value, or None where not measured.
Measure = Callable[[Path, str], "float | None"]


@dataclass
class Context:
    """What a stage's run function gets: the runs of one seed (or one sweep point), the plan's
    sizes, where to write, and how the caller (demo or sweep) wants the stage to run.

    Attributes:
        runs: label (AT, AT-AWP, gamma_0.01...) -> run folder.
        plan: the sizes (the demo's AnalysisPlan or the sweep's SweepPlan).
        out: the seed folder (runs, ``eval/``, ``analysis/``).
        configs: label -> TrainConfig, for the training stage.
        eval_attacks: the attacks of the final evaluation.
        gap_epochs: the gap of every epoch checkpoint (demo), or of the last ones (sweep).
        figures: the stages draw their own figures (the demo) or not (the sweep).
    """

    runs: dict[str, RunFolder]
    plan: Any
    out: Path
    device: str
    progress: bool
    log: Log
    configs: dict[str, Any] = field(default_factory=dict)
    eval_attacks: tuple[str, ...] = ("natural", "pgd20", "cw20")
    gap_epochs: bool = True
    figures: bool = True

    @property
    def analysis(self) -> Path:
        return self.out / "analysis"

    def path(self, stage: Stage) -> Path:
        """Where ``stage`` writes: its first file."""
        return stage.folder(self.out) / stage.files[0]

    @property
    def last(self) -> list[Path]:
        return [run.last for run in self.runs.values()]

    @property
    def labels(self) -> list[str]:
        return list(self.runs)

    def epoch_ckpts(self) -> list[Path]:
        """Every run's epoch checkpoints (they exist only after training)."""
        return [p for run in self.runs.values() for p in run.epoch_ckpts()]

    def sources(self) -> Sources:
        return Sources(device=self.device, progress=self.progress)

    def inputs(self) -> Inputs:
        return Inputs(distributed.pick_device(self.device), progress=self.progress)


@dataclass(frozen=True)
class ReportSection:
    """One section of the report: drawn when ``present`` finds its results."""

    title: str
    present: Callable[[Results], Any]
    draw: Callable[[Results], Section]
    #: the files it reads and the command that writes them (for "not measured")
    reads: str


@dataclass(frozen=True)
class SweepColumn:
    """A column of the sweep's rows; ``paired``: compared AT-AWP minus AT seed by seed."""

    name: str
    paired: bool = True


@dataclass(frozen=True)
class Stage:
    """One measure: its files, run, reader, report sections, measures over seeds, sweep columns.

    Attributes:
        name: short name (``gap``), the key of its results in the report's Results.
        heading: the line the pipeline logs before running it.
        files: output paths relative to :meth:`folder`; the run writes the first, the reader
            also accepts the others (a command's own layout, an older layout).
        run: runs the stage for a Context (skipping or resuming what is on disk); None for a
            stage that only reads.
        read: reads one folder's results (an analysis folder, or the seed folder when
            ``in_analysis`` is False); None when there are none.
        accumulate: several folders' results are concatenated (lists); else the first wins.
        sections: the report sections drawn from the results, in order.
        measures: plan -> (name, Measure) pairs compared AT-AWP minus AT over seeds.
        sweep_columns: columns of the sweep's rows, and ``sweep_values(seed folder, run label)``
            giving them.
        figures_of: the PNGs it left in an analysis folder, by name, shown by its section.
    """

    name: str
    heading: str
    files: tuple[str, ...]
    run: Callable[[Context], None] | None = None
    read: Callable[[Path], Any] | None = None
    in_analysis: bool = True
    accumulate: bool = False
    sections: tuple[ReportSection, ...] = ()
    measures: Callable[[Any], list[tuple[str, Measure]]] | None = None
    sweep_columns: tuple[SweepColumn, ...] = ()
    sweep_values: Callable[[Path, str], dict[str, float | None]] | None = None
    figures_of: Callable[[Path], dict[str, Path]] | None = None

    def folder(self, seed_folder: Path) -> Path:
        """The folder its files are relative to, inside a seed folder."""
        return seed_folder / "analysis" if self.in_analysis else seed_folder

    def read_seed(self, seed_folder: Path) -> Any:
        """Its results in one seed folder (None where it did not run)."""
        if self.read is None:
            return None
        return self.read(self.folder(seed_folder))


def json_reader(files: Sequence[str], key: str | None = None) -> Callable[[Path], Any]:
    """A stage's reader: the first of ``files`` present in a folder, as JSON (or its ``key``,
    e.g. the rows of a table); empty ({} or []) where none is there."""

    def read(folder: Path) -> Any:
        for name in files:
            if (folder / name).exists():
                data = read_json(folder / name)
                return data.get(key, []) if key else data
        return [] if key else {}

    return read
