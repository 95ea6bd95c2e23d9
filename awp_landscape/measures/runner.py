"""One runner for every measure of one checkpoint at a time: evaluation, gap, spectra,
quantization, flatness, curvature, certification (:class:`~awp_landscape.measures.base.
CheckpointMeasure`). The command line, the demo, the sweep and ``awp reproduce`` all call
:func:`run_measure`; a measure only computes one checkpoint's result.

What it does for every measure, in order:

1. refuses settings that cannot work and checkpoint files that are not there, before anything
   is loaded;
2. holds the output folder (one writer at a time: :func:`awp.io.exclusive_output`, with the
   measure's name as the folder's lock) and joins the torchrun job, if any;
3. names the checkpoints (their sha256 and ``--labels``) and reads the results already in
   ``<out>/<units>/``: a folder holds results of one setting, so a result computed with other
   settings is refused with the differences (:func:`awp.config.check_same_settings`), never
   dropped; a checkpoint whose bytes (sha256), settings and label are those of a result there
   is skipped before it is loaded;
4. computes the others, split across the ranks by checkpoint (``shard = "checkpoints"``) or
   with every rank in every checkpoint (``shard = "units"``: the measure splits its units), a
   progress line per checkpoint, each result written atomically as soon as it is done
   (``<out>/<units>/<stem>-<sha8>/result.json``), so a killed run loses at most the checkpoint
   in flight (and a measure of many units, at most its unit in flight);
5. on the main rank, writes the result set of every checkpoint measured in ``out``
   (:meth:`~awp_landscape.measures.base.CheckpointMeasure.tables`, all files or none) and the
   measure's figures, and prints this call's results.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from awp import distributed
from awp.config import check_same_settings, config_diff
from awp.io import atomic_write_set, json_text
from awp.progress import progress_bar
from awp.seeds import with_scheme
from awp_landscape.console import CLIError, say
from awp_landscape.inputs import Sources, held_inputs, identity_of, unique_labels
from awp_landscape.measures.base import CheckpointMeasure, figures_current

log = logging.getLogger(__name__)

RESULT_FORMAT = "awp-landscape/checkpoint-result"
RESULT_FILE = "result.json"


@dataclass(frozen=True)
class Entry:
    """One checkpoint's result as the runner keeps it.

    Attributes:
        identity: checkpoint, sha256, run, method, epoch (:func:`awp_landscape.inputs.identity`).
        label: its name in tables and figures.
        settings: what the result depends on besides the checkpoint (the measure's
            :meth:`~awp_landscape.measures.base.CheckpointMeasure.settings`).
        result: the measure's result of this checkpoint.
        path: its ``result.json``.
    """

    identity: dict[str, Any]
    label: str
    settings: dict[str, Any]
    result: Any
    path: Path

    @property
    def sha256(self) -> str:
        return str(self.identity["sha256"])

    @property
    def checkpoint(self) -> str:
        return str(self.identity["checkpoint"])

    def row(self) -> dict[str, Any]:
        """The identity columns of its table rows, with the label."""
        return {**self.identity, "label": self.label}


def result_folder(folder: Path, checkpoint: str | Path, sha256: str) -> Path:
    """``<folder>/<stem>-<sha8>``: one checkpoint's result (and unit stores)."""
    return folder / f"{Path(checkpoint).stem}-{sha256[:8]}"


def envelope(entry: Entry) -> dict[str, Any]:
    """What a result file holds: the checkpoint, its label, the settings and the result."""
    return {
        "format": RESULT_FORMAT,
        "identity": entry.identity,
        "label": entry.label,
        "settings": entry.settings,
        "result": entry.result,
    }


def read_envelope(path: Path) -> Entry | None:
    """A result file written by :func:`envelope`; None when it is of an earlier format.

    Raises:
        CLIError: an unreadable file (naming it, and what to do).
    """
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CLIError(f"{path} is unreadable ({err}); move it away to recompute it") from None
    if not isinstance(data, dict) or data.get("format") != RESULT_FORMAT:
        return None
    return Entry(data["identity"], data["label"], data["settings"], data["result"], path)


def read_entries(folder: Path) -> list[Entry]:
    """Every result in ``folder`` (``*/result.json``), the newest per checkpoint file.

    A checkpoint overwritten in place since it was measured has a result for each version:
    only the newest is kept (the log names the one replaced), so a result set has one row per
    checkpoint file. Results an earlier version wrote in another format are left out, with a
    note (rerun those checkpoints to include them).
    """
    paths = sorted(folder.glob(f"*/{RESULT_FILE}"), key=lambda p: p.stat().st_mtime_ns)
    by_file: dict[str, Entry] = {}
    older = 0
    for path in paths:  # oldest first: a newer result of the same file replaces an older one
        entry = read_envelope(path)
        if entry is None:
            older += 1
            continue
        name = str(Path(entry.checkpoint).resolve())
        if name in by_file and by_file[name].sha256 != entry.sha256:
            log.info(
                "%s changed since it was measured (sha256 %s, now %s): its row is replaced",
                entry.checkpoint,
                by_file[name].sha256[:8],
                entry.sha256[:8],
            )
        by_file[name] = entry
    if older:
        log.warning(
            "%s: %d result(s) of an earlier version are left out of the tables; measure those "
            "checkpoints again to include them",
            folder,
            older,
        )
    return sorted(by_file.values(), key=lambda e: str(e.path))


def _normalized(obj: Any) -> Any:
    """``obj`` as it reads back from JSON (tuples as lists), with the seed scheme."""
    return json.loads(json.dumps(with_scheme(dict(obj))))


def check_folder(
    entries: Sequence[Entry], settings: dict[str, Any], *, folder: Path, ignore: Sequence[str]
) -> None:
    """Refuse a folder holding results of other settings (those in ``ignore`` may differ)."""
    for entry in entries:
        check_same_settings(
            entry.settings,
            settings,
            where=f"{folder} holds results computed with other settings ({entry.label})",
            fix="Choose another --out folder, or move that folder away to recompute.",
            ignore=tuple(ignore),
            shown=6,
            error=CLIError,
        )


def run_measure(
    measure: CheckpointMeasure,
    checkpoints: Sequence[str | Path],
    cfg: Any,
    *,
    out: Path,
    labels: Sequence[str] | None = None,
    sources: Sources = Sources(),
    figures: bool = True,
    overwrite: bool = False,
) -> list[Entry]:
    """Measure ``checkpoints`` into ``out`` (see the module): each one's result, in order, on
    every rank; the result set and figures of every checkpoint measured in ``out``.

    Args:
        measure: what to compute of each checkpoint.
        checkpoints: checkpoint files (ours, or from elsewhere as ``sources`` describes).
        cfg: the measure's config.
        out: the results folder.
        labels: their names in tables and figures (default: the methods, made unique).
        sources: device, data and checkpoints-from-elsewhere options, progress bars.
        figures: draw the measure's figures beside its tables.
        overwrite: replace results of other settings instead of refusing them.

    Raises:
        CLIError: results of other settings in ``out``; ValueError, FileNotFoundError: bad
            input, before anything is computed.
    """
    measure.check(cfg)
    paths = [Path(p) for p in checkpoints]
    out = Path(out)
    cleans = [out / measure.units, *(out / t for t in measure.table_files)]
    held = held_inputs(paths, out=out, lock=measure.name, cleans=cleans, sources=sources)
    with held as (inputs, ctx):
        # A model named by a source string is identified by its weights: built to know them.
        idents = [identity_of(p) for p in paths]
        idents = [i if i["sha256"] else inputs.load(p).identity() for p, i in zip(paths, idents)]
        names = unique_labels(idents, labels)
        settings = _normalized(measure.settings(cfg, sources))
        wheres = [
            measure.entry_path(out, p, i["sha256"], n) for p, i, n in zip(paths, idents, names)
        ]
        saved = {e.path: e for e in measure.saved_entries(out, wheres)}
        if not overwrite:
            measure.check_saved(list(saved.values()), settings, out=out)
        entries: dict[Path, Entry] = {}
        todo = []
        for path, ident, label, where in zip(paths, idents, names, wheres):
            done = saved.get(where)
            same = done is not None and done.sha256 == ident["sha256"]
            if same and not config_diff(done.settings, settings):
                if done.label == label or not measure.labelled:
                    entries[where] = _relabelled(measure, done, label, ident, write=ctx.is_main)
                    continue
            legacy = measure.legacy(out, ident["sha256"], settings) if done is None else None
            if legacy is not None:
                entries[where] = Entry(ident, label, settings, legacy, where)
                if ctx.is_main:
                    measure.write_entry(entries[where])
                continue
            todo.append((path, ident, label, where))
        if len(todo) < len(paths) and ctx.is_main:
            say(f"{measure.name}: {len(paths) - len(todo)} of {len(paths)} checkpoint(s) "
                f"already measured with these settings in {out}")  # fmt: skip
        by_rank = measure.shard == "checkpoints"
        mine = distributed.shard(todo, ctx.rank, ctx.world) if by_rank else todo
        show = sources.progress and ctx.is_main
        bar = progress_bar(mine, desc=f"{measure.name}: checkpoints", enabled=show and by_rank)
        for path, ident, label, where in bar:
            loaded = inputs.load(path, with_data=measure.needs_data)
            result = measure.compute(
                loaded, cfg, label=label, folder=where.parent, progress=show and not by_rank
            )
            entry = Entry(ident, label, settings, json.loads(json_text(result)), where)
            if by_rank or ctx.is_main:
                measure.write_entry(entry)
            entries[where] = entry
        distributed.barrier()
        if by_rank and ctx.world > 1:  # each rank computed its share: read the others' back
            for *_, where in todo:
                if where not in entries or entries[where].result is None:
                    found = measure.load_entry(where)
                    assert found is not None, f"{where} was not written"
                    entries[where] = found
        ordered = [entries[w] for w in wheres]
        if ctx.is_main:
            measure.show(ordered, cfg)
            write_result_set(measure, out, cfg, figures=figures, first=ordered)
        return ordered


def _relabelled(
    measure: CheckpointMeasure, entry: Entry, label: str, ident: dict[str, Any], *, write: bool
) -> Entry:
    """A finished result under this call's label and path (rewritten only when they differ)."""
    if entry.label == label and entry.identity == ident:
        return entry
    fresh = Entry(ident, label, entry.settings, entry.result, entry.path)
    if write:
        measure.write_entry(fresh)
    return fresh


def write_result_set(
    measure: CheckpointMeasure,
    out: Path,
    cfg: Any,
    *,
    figures: bool = True,
    first: Sequence[Entry] = (),
) -> list[Path]:
    """The tables of every result in ``out`` (all files or none; ``first``, this call's, in
    their order, then the others), then the figures: not drawn again where the tables are
    unchanged and the figures on disk were drawn after them (a rerun that changes nothing; a
    figure with nothing to draw has no file, and the report draws a missing one itself)."""
    called = {e.path for e in first}
    entries = [*first, *(e for e in measure.saved_entries(out, []) if e.path not in called)]
    tables = measure.tables(entries, cfg, out)
    written = (
        atomic_write_set({out / name: text for name, text in tables.items()}) if tables else []
    )
    table_dir = (out / measure.table_files[0]).parent if measure.table_files else out
    pngs = [table_dir / f"{spec.name}.png" for spec in measure.figure_specs]
    if (
        figures
        and measure.figure_specs
        and not figures_current([out / name for name in tables], written, pngs)
    ):
        # matplotlib is imported only when a figure is drawn: `awp` starts without it.
        from figures.style import save_figure

        results = measure.read(out)
        for spec in measure.figure_specs:
            fig = spec.draw(results)
            if fig is not None:
                written += save_figure(fig, table_dir / spec.name)
    if written:
        say(f"results: {out} ({', '.join(p.name for p in written)})")
    return written
