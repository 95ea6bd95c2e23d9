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
  :func:`landscape.distributed.shard`;
- a file written under other settings is never mixed in nor overwritten: loading it is an
  error that names the differences.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch.distributed as dist

from awp.checkpoint import atomic_write_text
from landscape.distributed import DistInfo, current, shard

log = logging.getLogger(__name__)

Record = dict[str, Any]


class StoreMismatch(ValueError):
    """A store folder holds results computed under other settings."""


def _diff(saved: Any, now: Any, prefix: str = "") -> list[str]:
    if isinstance(saved, dict) and isinstance(now, dict):
        out: list[str] = []
        for key in sorted(set(saved) | set(now)):
            out += _diff(saved.get(key), now.get(key), f"{prefix}{key}.")
        return out
    return [] if saved == now else [f"{prefix.rstrip('.')}: {saved!r} on disk, {now!r} now"]


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
        diffs = _diff(data["meta"], self.meta)
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


def all_gather(obj: Any, info: DistInfo | None = None) -> list[Any]:
    """Every rank's ``obj``, on every rank (``[obj]`` when not distributed)."""
    info = info or current()
    if not info.active:
        return [obj]
    out: list[Any] = [None] * info.world
    dist.all_gather_object(out, obj)
    return out


def run_units(
    keys: Sequence[str],
    compute: Callable[[str], Record],
    *,
    store: SampleStore | None = None,
    info: DistInfo | None = None,
    progress: bool = False,
    desc: str = "samples",
) -> dict[str, Record]:
    """Compute the units not finished yet, split across ranks; return all records of ``keys``.

    Args:
        keys: unit keys, in the order to run them (the same list on every rank).
        compute: key -> JSON-able record; must depend only on the key and fixed settings.
        store: where finished units are kept (None: nothing on disk, nothing skipped).
        info: this process's place (default :func:`landscape.distributed.current`).
        progress: show a tqdm bar (on the main rank only).
        desc: the bar's label.

    Returns:
        key -> record for every key of ``keys``, on every rank.
    """
    from tqdm.auto import tqdm

    info = info or current()
    if len(set(keys)) != len(keys):
        raise ValueError("unit keys must be unique")
    done = store.load() if store is not None else {}
    # Ranks may see different files (no shared disk): agree on the union before sharding,
    # or two ranks could split different to-do lists and leave a unit out.
    finished: set[str] = set()
    for part in all_gather(sorted(k for k in keys if k in done), info):
        finished.update(part)
    todo = [k for k in keys if k not in finished]
    mine = shard(todo, info.rank, info.world)
    if finished:
        log.info("%s: %d of %d units already finished", desc, len(finished), len(keys))
    bar = tqdm(mine, desc=desc, disable=not (progress and info.is_main), leave=False)
    new: dict[str, Record] = {}
    for key in bar:
        # Normalized as JSON, so fresh records look exactly like ones read back from disk.
        record = json.loads(json.dumps(compute(key)))
        new[key] = record
        if store is not None:
            store.add(key, record)
    local = {k: done[k] for k in keys if k in done}
    local.update(new)
    merged: dict[str, Record] = {}
    for part in all_gather(local, info):
        merged.update(part)
    missing = [k for k in keys if k not in merged]
    if missing:  # only possible if a rank's compute skipped a key
        raise RuntimeError(f"units not computed: {missing[:5]}")
    return {k: merged[k] for k in keys}
