"""A resumable, rank-sharded store of finished work units (flatness samples, gap rows).

Long analyses are cut into units named by a string key (``expected|alpha=0.01|k=3``). Every
unit is a pure function of its key and the run's settings (its noise and attack seeds derive
from the key), so a unit computed on any rank, on any device, before or after an interruption,
gives the same record. The store keeps finished units on disk and :func:`run_units` skips them:

- each rank owns one file, ``<folder>/<name>.rank<r>.json``, holding the settings it was
  computed under (``meta``) and its records; it is rewritten atomically (temp file, then
  ``os.replace``) after every unit, so a killed run loses at most the unit in flight;
- on start every rank reads every rank file in the folder (any earlier world size), the ranks
  agree on the union of finished keys, and the remaining keys are split round robin with
  :func:`awp.distributed.shard`;
- a file written under other settings is never mixed in nor overwritten: loading it is an
  error that names the differences.

A unit that is itself spread over the ranks (the Hessian's products, each rank summing its
share of the batches and all-reducing) runs ``collective``: every rank computes every unit
together, in the same order, and only the main rank keeps the records.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from awp import distributed
from awp.config import config_diff
from awp.distributed import DistContext
from awp.io import atomic_write_text
from awp.progress import progress_bar

log = logging.getLogger(__name__)

Record = dict[str, Any]


class StoreMismatch(ValueError):
    """A store folder holds results computed under other settings."""


class SampleStore:
    """Finished units of one analysis, kept in ``folder`` as one JSON file per rank.

    Args:
        folder: where the rank files live (created on the first write).
        meta: JSON-able settings the records depend on (configuration, checkpoint hash).
            Files written under other settings make the store refuse to load.
        name: file stem, e.g. ``samples`` -> ``samples.rank0.json``.
        rank: this process's rank; it writes only its own file.
    """

    def __init__(
        self, folder: str | Path, *, meta: Mapping[str, Any], name: str = "samples", rank: int = 0
    ) -> None:
        self.folder = Path(folder)
        self.meta = json.loads(json.dumps(dict(meta)))  # normalized as it will be read back
        self.name = name
        self.rank = rank
        self.path = self.folder / f"{name}.rank{rank}.json"
        self._own: dict[str, Record] = {}
        if self.path.exists():
            self._own = self._read(self.path)

    def _read(self, path: Path) -> dict[str, Record]:
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise StoreMismatch(
                f"{path} is unreadable ({err}); move it away to recompute its samples"
            ) from err
        if not isinstance(data, dict) or "meta" not in data or "records" not in data:
            raise StoreMismatch(f"{path} is not a sample store file; move it away or use --out")
        diffs = config_diff(data["meta"], self.meta)
        if diffs:
            raise StoreMismatch(
                f"{path} holds results computed with other settings ("
                + "; ".join(diffs[:6])
                + ("; ..." if len(diffs) > 6 else "")
                + "). Choose another --out folder, or move that folder away to recompute."
            )
        return dict(data["records"])

    def load(self) -> dict[str, Record]:
        """Every finished record in the folder (all rank files), by key."""
        records: dict[str, Record] = {}
        if self.folder.is_dir():
            for path in sorted(self.folder.glob(f"{self.name}.rank*.json")):
                records.update(self._read(path))
        records.update(self._own)
        return records

    def add(self, key: str, record: Record) -> None:
        """Keep ``record`` under ``key`` and rewrite this rank's file atomically."""
        self._own[key] = json.loads(json.dumps(dict(record)))
        payload = {"meta": self.meta, "records": self._own}
        atomic_write_text(self.path, json.dumps(payload, indent=1) + "\n")


def run_units(
    keys: Sequence[str],
    compute: Callable[[str], Record],
    *,
    store: SampleStore | None = None,
    info: DistContext | None = None,
    progress: bool = False,
    desc: str = "samples",
    collective: bool = False,
) -> dict[str, Record]:
    """Compute the units not finished yet, split across ranks; return all records of ``keys``.

    Args:
        keys: unit keys, in the order to run them (the same list on every rank).
        compute: key -> JSON-able record; must depend only on the key and fixed settings.
        store: where finished units are kept (None: nothing on disk, nothing skipped).
        info: this process's place (default :func:`awp.distributed.current`).
        progress: show a progress bar (on the main rank only).
        desc: the bar's label.
        collective: every rank computes every unfinished unit together (``compute`` itself
            communicates, e.g. all-reduces); only the main rank writes the store.

    Returns:
        key -> record for every key of ``keys``, on every rank.
    """
    info = info or distributed.current()
    if len(set(keys)) != len(keys):
        raise ValueError("unit keys must be unique")
    done = store.load() if store is not None else {}
    # Ranks may see different files (no shared disk): agree on the union before sharding,
    # or two ranks could split different to-do lists and leave a unit out.
    finished: set[str] = set()
    for part in distributed.all_gather_objects(sorted(k for k in keys if k in done)):
        finished.update(part)
    todo = [k for k in keys if k not in finished]
    mine = todo if collective else distributed.shard(todo, info.rank, info.world)
    if finished:
        log.info("%s: %d of %d units already finished", desc, len(finished), len(keys))
    bar = progress_bar(mine, desc=desc, enabled=progress and info.is_main)
    new: dict[str, Record] = {}
    for key in bar:
        # Normalized as JSON, so fresh records look exactly like ones read back from disk.
        record = json.loads(json.dumps(compute(key)))
        new[key] = record
        if store is not None and (info.is_main or not collective):
            store.add(key, record)
    local = {k: done[k] for k in keys if k in done}
    local.update(new)
    merged: dict[str, Record] = {}
    parts = distributed.all_gather_objects(local)
    for part in reversed(parts) if collective else parts:  # collective: the main rank's win
        merged.update(part)
    missing = [k for k in keys if k not in merged]
    if missing:  # only possible if a rank's compute skipped a key
        raise RuntimeError(f"units not computed: {missing[:5]}")
    return {k: merged[k] for k in keys}
