"""What a measure is: one module holds its command, its computation on a checkpoint, its
sizes in the demo and the sweep, its report section and its measures over seeds.

Every module of :mod:`awp_landscape.measures` defines one :class:`Measure` object, ``MEASURE``.
Importing a measure module imports no torch: ``awp CMD --help`` is built from it, and the
heavy modules are imported inside the functions that run. A measure of one checkpoint at a
time is a :class:`CheckpointMeasure`: it states what a checkpoint's result depends on
(:meth:`CheckpointMeasure.settings`) and computes it (:meth:`CheckpointMeasure.compute`);
everything else it shares with the others (skipping checkpoints already measured, refusing
results of other settings, the lock, torchrun sharding, writing the result set atomically,
the progress line) is :func:`awp_landscape.measures.runner.run_measure`'s.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from awp.config import PGD20_EVAL, AttackConfig, bounds_of, opt

if TYPE_CHECKING:  # torch, matplotlib: imported where a measure runs or draws
    from matplotlib.figure import Figure

    from awp.runs import RunFolder
    from awp_landscape.inputs import Inputs, Loaded, Sources
    from awp_landscape.measures.runner import Entry
    from awp_landscape.results import Results
    from figures.html import FigureBlock, Section

Log = Callable[[str], None]
#: A measure over seeds: (seed folder, method label) -> its value, or None where not measured.
SeedValue = Callable[[Path, str], "float | None"]


# ----------------------------------------------------------------------------- sizes
@dataclass(frozen=True)
class Size:
    """One size of the demo's and the sweep's plans (a flag of ``awp demo``/``awp sweep``),
    declared once, by the measure that uses it.

    Its type and range are those of the config field it sets (``config``, ``field``), so a
    size can never admit a value its measure refuses; ``bounds`` is for a size that sets no
    single field (a number of grid points).

    Attributes:
        name: the plan's field and its flag (``gap_n`` is ``--gap-n``).
        default: its value in ``awp demo`` (and ``awp sweep`` where it is in ``plans``).
        help: what it sizes.
        config, field: the config field whose type and range it takes.
        bounds: the range when no config field gives it.
        plans: the plans that have it: ``demo`` (awp demo, awp reproduce), ``sweep``.
        reproduce: its value in ``awp reproduce`` (the published protocol), if not the default.
    """

    name: str
    default: Any
    help: str
    config: type | None = None
    field: str | None = None
    bounds: tuple[float | None, float | None] | None = None
    plans: tuple[str, ...] = ("demo",)
    reproduce: Any = None

    def dataclass_field(self) -> tuple[str, Any, Any]:
        """``(name, type, field)`` for :func:`dataclasses.make_dataclass`."""
        if self.config is not None:
            assert self.field is not None, f"size {self.name}: name the config's field"
            kind = typing.get_type_hints(self.config)[self.field]
            if typing.get_origin(kind) is tuple and not isinstance(self.default, tuple):
                kind = typing.get_args(kind)[0]  # one value of a tuple setting (one alpha)
            extra = bounds_of(self.config, self.field)
        else:
            kind = type(self.default)
            extra = {"bounds": self.bounds} if self.bounds else {}
        return self.name, kind, opt(self.default, self.help, **extra)


def analysis_attack(plan: Any) -> AttackConfig:
    """The attack of the demo's and the sweep's analyses (gap, flatness, landscape,
    curvature...): PGD at 8/255, step 2/255, eval mode, with the plan's ``analysis_steps``."""
    return dataclasses.replace(PGD20_EVAL, steps=plan.analysis_steps)


# ----------------------------------------------------------------------------- context
@dataclass
class Context:
    """What a measure's :meth:`Measure.run` gets: the runs of one seed (or one sweep point),
    the plan's sizes, where to write, and how the caller (demo or sweep) wants it to run.

    Attributes:
        runs: label (AT, AT-AWP, gamma_0.01...) -> run folder.
        plan: the sizes (an ``AnalysisPlan`` of the demo, or a ``SweepPlan``).
        out: the seed folder (runs, ``eval/``, ``analysis/``).
        configs: label -> TrainConfig, for training.
        sweep: run for the sweep: the final evaluation natural and PGD-20 only, the gap of the
            last checkpoints, no figures; else the demo's (natural, PGD-20 and CW-20, the gap
            of every epoch checkpoint, figures).
    """

    runs: dict[str, RunFolder]
    plan: Any
    out: Path
    device: str
    progress: bool
    log: Log
    configs: dict[str, Any] = field(default_factory=dict)
    sweep: bool = False

    @property
    def analysis(self) -> Path:
        return self.out / "analysis"

    @property
    def figures(self) -> bool:
        return not self.sweep

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
        from awp_landscape.inputs import Sources

        return Sources(device=self.device, progress=self.progress)

    def inputs(self) -> Inputs:
        from awp import distributed
        from awp_landscape.inputs import Inputs

        return Inputs(distributed.pick_device(self.device), progress=self.progress)


# ----------------------------------------------------------------------------- report parts
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
    """A column of the sweep's rows; ``paired``: compared AT-AWP minus AT seed by seed;
    ``reported``: a column of the report's per-gamma table."""

    name: str
    paired: bool = True
    reported: bool = False


@dataclass(frozen=True)
class FigureSpec:
    """A measure's figure: drawn once from what the measure's reader returns, saved beside its
    tables as ``<name>.png`` (and ``.pdf``), and shown by the report from that PNG (drawn again
    only where the PNG is missing or older than the tables).

    Attributes:
        name: the file stem (``flatness_curve``).
        draw: the measure's results (what :meth:`Measure.read` returns) -> a matplotlib Figure,
            or None when they hold nothing to draw.
        caption: the report's caption.
    """

    name: str
    draw: Callable[[Any], Figure | None]
    caption: str


# ----------------------------------------------------------------------------- measures
class Measure:
    """One measure: its command, how the demo and the sweep run it, its reader, its report
    sections, its measures over seeds and its sweep columns.

    Subclasses set the class attributes and override what they have; a measure that only
    reads (training's) leaves :meth:`run` out of the pipeline by :attr:`runs`.
    """

    #: key of its results in the report's Results, and its name in the pipeline's log
    name: ClassVar[str]
    #: the line the pipeline logs before running it
    heading: ClassVar[str] = ""
    #: ``awp <command>`` (None: no command of its own)
    command: ClassVar[str | None] = None
    #: earlier names of the command, accepted with a deprecation note
    aliases: ClassVar[tuple[str, ...]] = ()
    #: one line of ``awp --help``
    summary: ClassVar[str] = ""
    #: its output paths relative to :meth:`folder`; the pipeline writes the first, the reader
    #: also accepts the others (a command's own layout, an older layout)
    files: ClassVar[tuple[str, ...]] = ()
    #: its files are in the seed folder's ``analysis/`` (else in the seed folder)
    in_analysis: ClassVar[bool] = True
    #: several folders' results are concatenated (lists); else the first found wins
    accumulate: ClassVar[bool] = False
    #: its sizes in the demo's and the sweep's plans
    sizes: ClassVar[tuple[Size, ...]] = ()
    #: its figures (drawn once, reused by the report)
    figure_specs: ClassVar[tuple[FigureSpec, ...]] = ()
    #: the columns of the sweep's rows it gives (:meth:`sweep_values`)
    sweep_columns: ClassVar[tuple[SweepColumn, ...]] = ()
    #: the pipelines that run it: ``demo`` (awp demo, awp reproduce) and ``sweep``
    pipelines: ClassVar[tuple[str, ...]] = ("demo",)

    # -- the command line ---------------------------------------------------------------
    def register(self, sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
        """Add ``awp <command>`` (imports no torch)."""
        raise NotImplementedError(f"{self.name} has no command")

    def run_command(self, args: argparse.Namespace) -> int:
        """Run ``awp <command>`` (heavy imports happen here)."""
        raise NotImplementedError(f"{self.name} has no command")

    def parser(self, sub: argparse._SubParsersAction, description: str) -> argparse.ArgumentParser:
        """The command's parser, under its name and its deprecated aliases."""
        assert self.command is not None
        p = sub.add_parser(
            self.command, aliases=list(self.aliases), help=self.summary, description=description
        )
        p.set_defaults(func=self.run_command, canonical=self.command)
        return p

    # -- the pipeline -------------------------------------------------------------------
    def run(self, ctx: Context) -> None:
        """Compute it for the runs of ``ctx``, skipping or resuming what is on disk."""

    def folder(self, seed_folder: Path) -> Path:
        """The folder its files are relative to, inside a seed folder."""
        return seed_folder / "analysis" if self.in_analysis else seed_folder

    def path(self, ctx: Context) -> Path:
        """Where it writes for ``ctx``: its first file."""
        return self.folder(ctx.out) / self.files[0]

    def read(self, folder: Path) -> Any:
        """Its results in one folder (empty where absent)."""
        return [] if self.accumulate else {}

    def read_seed(self, seed_folder: Path) -> Any:
        """Its results in one seed folder (empty where it did not run)."""
        return self.read(self.folder(seed_folder))

    def figures_of(self, folder: Path) -> dict[str, Path]:
        """Its PNGs in a folder (as :meth:`read` gets it), by figure name, where they are no
        older than the results they were drawn from."""
        if not self.files or not self.figure_specs:
            return {}
        for name in self.files:
            table = folder / name
            if table.exists():
                break
        else:
            return {}
        found = {}
        for spec in self.figure_specs:
            png = table.parent / f"{spec.name}.png"
            if png.exists() and png.stat().st_mtime_ns >= table.stat().st_mtime_ns:
                found[spec.name] = png
        return found

    # -- the report and the table over seeds ----------------------------------------------
    def sections(self) -> tuple[ReportSection, ...]:
        """Its report sections, in order."""
        return ()

    def over_seeds(self, plan: Any) -> list[tuple[str, SeedValue]]:
        """Its measures compared AT-AWP minus AT over seeds: (name, value getter)."""
        return []

    def sweep_values(self, folder: Path, label: str) -> dict[str, float | None]:
        """Its columns (:attr:`sweep_columns`) for one run of a sweep's seed folder."""
        return {}

    def fold_over_seeds(
        self, measures: list[dict[str, Any]]
    ) -> tuple[list[dict[str, Any]], list[str]]:
        """The outcome table's rows (paired measures over seeds) with its own rows that would
        only repeat others left out, and the sentences that say so instead (default: all kept,
        nothing said)."""
        return measures, []

    def figure(self, res: Results, spec: FigureSpec) -> FigureBlock | None:
        """``spec``'s figure for the report: the PNG its run saved, else drawn from ``res``."""
        from figures.html import FigureBlock

        png = res.figures.get(spec.name)
        if png is not None:
            return FigureBlock(png.read_bytes(), spec.caption, spec.name)
        fig = spec.draw(res[self.name])
        return None if fig is None else FigureBlock.from_figure(fig, spec.caption, spec.name)

    def figure_blocks(self, res: Results) -> list[FigureBlock]:
        """Every figure of :attr:`figure_specs` there is something to draw for."""
        return [b for spec in self.figure_specs if (b := self.figure(res, spec)) is not None]


def figures_current(tables: Sequence[Path], written: Sequence[Path], pngs: Sequence[Path]) -> bool:
    """Whether a measure's figures need not be drawn again: none of its ``tables`` was just
    ``written`` (they hold what they held) and the figures on disk (``pngs`` that exist) were
    drawn after them: a rerun that changes nothing. A figure with nothing to draw has no file;
    the report draws a missing one itself."""
    drawn = [p for p in pngs if p.exists()]
    if not tables or any(p in written for p in tables) or not drawn:
        return False
    newest = max(p.stat().st_mtime_ns for p in tables)
    return all(p.stat().st_mtime_ns >= newest for p in drawn)


def json_table(folder: Path, files: Sequence[str], key: str | None = None) -> Any:
    """The first of ``files`` present in ``folder``, as JSON (or its ``key``, e.g. the rows of
    a table); empty ({} or []) where none is there."""
    from awp.io import read_json  # here: it imports torch

    for name in files:
        if (folder / name).exists():
            data = read_json(folder / name)
            return data.get(key, []) if key else data
    return [] if key else {}


class CheckpointMeasure(Measure):
    """A measure of each checkpoint given: ``compute`` on one loaded checkpoint, everything
    else by :func:`awp_landscape.measures.runner.run_measure`.

    Each checkpoint's result is kept in ``<out>/<units>/<stem>-<sha8>/result.json`` (with the
    measure's unit stores, if any), and the result set (:meth:`tables`, the figures) of every
    checkpoint measured in ``<out>`` is written together after each call.
    """

    #: the config dataclass of its command (flags come from its fields)
    config_type: ClassVar[type]
    #: the folder of the per-checkpoint results inside ``--out``
    units: ClassVar[str]
    #: the result set's files inside ``--out`` (written together, atomically)
    table_files: ClassVar[tuple[str, ...]] = ()
    #: ``checkpoints``: each checkpoint is computed by one rank (a cheap measure of many
    #: checkpoints); ``units``: every rank takes part in every checkpoint (the measure splits its
    #: own units across ranks)
    shard: ClassVar[str] = "checkpoints"
    #: settings that may change between calls without recomputing a finished unit (they add or
    #: summarize units); a result computed with other values is recomputed from its units
    resume_mutable: ClassVar[tuple[str, ...]] = ()
    #: its result holds the checkpoint's label (computed again, cheaply, when --labels change)
    labelled: ClassVar[bool] = False
    #: it needs the data (False: weights only)
    needs_data: ClassVar[bool] = True
    #: ``--labels`` names its checkpoints
    takes_labels: ClassVar[bool] = True

    description: ClassVar[str] = ""
    #: the --dataset help of its command
    dataset_help: ClassVar[str] = ""
    #: the --out help of its command
    out_help: ClassVar[str] = "results folder (default: <run>/analysis)"

    # -- the command line ---------------------------------------------------------------
    def register(self, sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
        from awp_landscape.checkpoint_flags import add_checkpoint_arguments, add_checkpoint_list
        from awp_landscape.flags import add_run_arguments

        p = self.parser(sub, self.description)
        add_checkpoint_list(p, labels=self.takes_labels)
        self.add_flags(p)
        if self.figure_specs:
            p.add_argument("--no-figures", action="store_true", help="only tables, no PNG/PDF")
        add_checkpoint_arguments(p, dataset_help=self.dataset_help)
        add_run_arguments(p, out_help=self.out_help)
        return p

    def add_flags(self, p: argparse.ArgumentParser) -> None:
        """The measure's own flags (default: its config's fields)."""
        from awp_landscape.flags import add_dataclass_arguments

        add_dataclass_arguments(p, self.config_type)

    def config_from(self, args: argparse.Namespace) -> Any:
        """Its config from the command's flags."""
        from awp_landscape.flags import dataclass_from_arguments

        return dataclass_from_arguments(self.config_type, args)

    def run_command(self, args: argparse.Namespace) -> int:
        from awp_landscape.inputs import Sources, out_folder
        from awp_landscape.measures.runner import run_measure

        cfg = self.config_from(args)
        run_measure(
            self,
            args.checkpoints,
            cfg,
            out=out_folder(args.out, args.checkpoints),
            labels=getattr(args, "labels", None),
            sources=Sources.from_args(args),
            figures=not getattr(args, "no_figures", False),
        )
        return 0

    def run_on(
        self,
        ctx: Context,
        cfg: Any,
        checkpoints: Sequence[Path] | None = None,
        *,
        labelled: bool = True,
    ) -> list[Entry]:
        """Measure the runs of ``ctx`` (their last checkpoints, or ``checkpoints``) into this
        measure's folder of the seed, as the demo and the sweep do: labelled by run (with
        ``labelled``), figures unless the sweep runs it."""
        from awp_landscape.measures.runner import run_measure

        return run_measure(
            self, ctx.last if checkpoints is None else checkpoints, cfg,
            out=self.path(ctx).parent, labels=ctx.labels if labelled else None,
            sources=ctx.sources(), figures=ctx.figures,
        )  # fmt: skip

    # -- one checkpoint -----------------------------------------------------------------
    def settings(self, cfg: Any, sources: Sources) -> dict[str, Any]:
        """What every result in a folder depends on besides its checkpoint: a folder holds
        results of one setting (or of settings differing only in :attr:`resume_mutable`)."""
        from awp.config import to_dict

        return {self.name: to_dict(cfg), **sources.settings()}

    def check(self, cfg: Any) -> None:
        """Refuse settings that cannot work, before anything is loaded or computed."""

    def compute(
        self, loaded: Loaded, cfg: Any, *, label: str, folder: Path, progress: bool
    ) -> dict[str, Any]:
        """One checkpoint's result (JSON-able). ``folder`` is its result folder, where a
        measure of many units keeps their stores (:func:`analysis.store.checkpoint_units`)."""
        raise NotImplementedError

    def legacy(self, out: Path, sha256: str, settings: dict[str, Any]) -> dict[str, Any] | None:
        """A result of this checkpoint that an earlier version kept elsewhere in ``out`` with
        the same settings (reused instead of computed again), or None."""
        return None

    # -- where results are kept -----------------------------------------------------------
    def entry_path(self, out: Path, checkpoint: Path, sha256: str, label: str) -> Path:
        """A checkpoint's result file: ``<out>/<units>/<stem>-<sha8>/result.json``."""
        from awp_landscape.measures.runner import RESULT_FILE, result_folder

        return result_folder(out / self.units, checkpoint, sha256) / RESULT_FILE

    def saved_entries(self, out: Path, paths: Sequence[Path]) -> list[Entry]:
        """Every result kept in ``out`` (``paths``: this call's result files)."""
        from awp_landscape.measures.runner import read_entries

        return read_entries(out / self.units)

    def check_saved(self, entries: Sequence[Entry], settings: dict[str, Any], *, out: Path) -> None:
        """Refuse results of other settings kept where this call writes (those of
        :attr:`resume_mutable` may differ)."""
        from awp_landscape.measures.runner import check_folder

        check_folder(entries, settings, folder=out / self.units, ignore=self.resume_mutable)

    def load_entry(self, path: Path) -> Entry | None:
        """The result in ``path``, or None."""
        from awp_landscape.measures.runner import read_envelope

        return read_envelope(path) if path.exists() else None

    def write_entry(self, entry: Entry) -> Path:
        """Keep a result, atomically."""
        from awp.io import write_json
        from awp_landscape.measures.runner import envelope

        return write_json(entry.path, envelope(entry))

    # -- the result set -----------------------------------------------------------------
    def tables(self, entries: Sequence[Entry], cfg: Any, out: Path) -> dict[str, str | bytes]:
        """The result set of every checkpoint measured in ``out``: file name -> content."""
        raise NotImplementedError

    def show(self, entries: Sequence[Entry], cfg: Any) -> None:
        """Print this call's results (on the main rank)."""

    def read(self, folder: Path) -> Any:
        return json_table(folder, self.files, None)
