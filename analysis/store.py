"""The unit toolkit: keyed work units, their resumable rank-sharded store, a checkpoint's run.

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

Keys are :class:`UnitKey` strings (one format for flatness, curvature and certify units), the
randomness of a unit derives from its key by :func:`awp.seeds.derive_seed`, and
:func:`checkpoint_units` is the one body of a per-checkpoint measurement of many units (its
stores and its units; the application's runner keeps the result beside them).

A unit that is itself spread over the ranks (the Hessian's products, each rank summing its
share of the batches and all-reducing) runs ``collective``: every rank computes every unit
together, in the same order, and only the main rank keeps the records.
"""

from __future__ import annotations

import json
import logging
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from awp import distributed
from awp.config import SettingsMismatch, check_same_settings
from awp.distributed import DistContext
from awp.io import atomic_write_text
from awp.progress import progress_bar
from awp.seeds import with_scheme

log = logging.getLogger(__name__)

Record = dict[str, Any]
#: (keys, progress label[, store name]) -> the records of those keys, computing missing ones.
RunKeys = Callable[..., dict[str, Record]]


class StoreMismatch(SettingsMismatch):
    """A store folder holds results computed under other settings."""


@dataclass(frozen=True)
class UnitKey:
    """The key of one unit: a kind and named fields, written ``kind|name=value|name=value``.

    ``base`` is a kind without fields; ``sigma=0.25|i=3`` has fields without a kind (an empty
    ``kind``). Values are kept as written: floats by ``repr`` (so they round-trip exactly),
    booleans as 0/1. Decoding refuses anything else with the key and what is wrong in it.

    Example:
        >>> str(UnitKey.of("expected", alpha=0.1, k=3))
        'expected|alpha=0.1|k=3'
        >>> UnitKey.parse("expected|alpha=0.1|k=3").float("alpha")
        0.1
    """

    kind: str
    fields: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(cls, kind: str, **fields: object) -> UnitKey:
        """A key from a kind and field values (float -> repr, bool -> 0/1, others -> str)."""
        return cls(kind, tuple((name, _written(name, v)) for name, v in fields.items()))

    def __post_init__(self) -> None:
        if "|" in self.kind or "=" in self.kind:
            raise ValueError(f"unit kind {self.kind!r} may not contain '|' or '='")
        names = [n for n, _ in self.fields]
        if len(set(names)) != len(names):
            raise ValueError(f"unit key fields {names} repeat a name")
        for name, value in self.fields:
            if not name or "|" in name or "=" in name:
                raise ValueError(f"unit key field name {name!r} must be non-empty, without | or =")
            if "|" in value:
                raise ValueError(f"unit key field {name}={value!r} may not contain '|'")
        if not self.kind and not self.fields:
            raise ValueError("a unit key needs a kind or fields")

    def __str__(self) -> str:
        parts = [self.kind] if self.kind else []
        return "|".join(parts + [f"{n}={v}" for n, v in self.fields])

    @classmethod
    def parse(cls, key: str) -> UnitKey:
        """Decode a key written by :meth:`of` (``str``).

        Raises:
            ValueError: naming the key and its malformed part.
        """
        if not isinstance(key, str) or not key:
            raise ValueError(f"unit key {key!r} is empty or not a string")
        parts = key.split("|")
        kind = "" if "=" in parts[0] else parts.pop(0)
        fields = []
        for part in parts:
            name, eq, value = part.partition("=")
            if not eq or not name:
                raise ValueError(
                    f"malformed unit key {key!r}: {part!r} is not name=value (keys read "
                    f"kind|name=value|..., e.g. 'expected|alpha=0.1|k=3')"
                )
            fields.append((name, value))
        try:
            return cls(kind, tuple(fields))
        except ValueError as err:
            raise ValueError(f"malformed unit key {key!r}: {err}") from err

    def __getitem__(self, name: str) -> str:
        for n, v in self.fields:
            if n == name:
                return v
        have = ", ".join(n for n, _ in self.fields) or "none"
        raise ValueError(f"unit key {str(self)!r} has no field {name!r} (it has: {have})")

    def int(self, name: str) -> int:
        """Field ``name`` as an int (ValueError naming the key if it is not one)."""
        return self._read(name, int)

    def float(self, name: str) -> float:
        """Field ``name`` as a float (ValueError naming the key if it is not one)."""
        return self._read(name, float)

    def flag(self, name: str) -> bool:
        """Field ``name`` written as 0/1, as a bool."""
        value = self._read(name, int)
        if value not in (0, 1):
            raise ValueError(f"unit key {str(self)!r}: {name}={value} is not 0 or 1")
        return bool(value)

    def _read(self, name: str, kind: Callable[[str], Any]) -> Any:
        raw = self[name]
        try:
            return kind(raw)
        except ValueError as err:
            raise ValueError(
                f"unit key {str(self)!r}: {name}={raw!r} is not a {kind.__name__}"
            ) from err


def _written(name: str, value: object) -> str:
    if isinstance(value, (bool, np.bool_)):
        return str(int(value))
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        return repr(float(value))
    if isinstance(value, str):
        return value
    raise TypeError(f"unit key field {name}={value!r}: give an int, float, bool or str")


class SampleStore:
    """Finished units of one analysis, kept in ``folder`` as one JSON file per rank.

    Args:
        folder: where the rank files live (created on the first write).
        meta: JSON-able settings the records depend on (configuration, checkpoint hash).
            Files written under other settings make the store refuse to load. The seed scheme
            (:data:`awp.seeds.SEED_SCHEME`) is added to it: files of older versions, which have
            none, are refused rather than mixed with units drawn differently.
        name: file stem, e.g. ``samples`` -> ``samples.rank0.json``.
        rank: this process's rank; it writes only its own file.
        ignore: settings of ``meta`` that only add or summarize units (they are in the keys,
            or only in the summary), so files written with other values are still read
            (:func:`awp.config.check_same_settings`; dotted paths such as ``flatness.alphas``).
    """

    def __init__(
        self,
        folder: str | Path,
        *,
        meta: Mapping[str, Any],
        name: str = "samples",
        rank: int = 0,
        ignore: Sequence[str] = (),
    ) -> None:
        self.folder = Path(folder)
        # Normalized as it will be read back; the seed scheme is part of every store's settings.
        self.meta = json.loads(json.dumps(with_scheme(dict(meta))))
        self.name = name
        self.rank = rank
        self.ignore = tuple(ignore)
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
        check_same_settings(
            data["meta"],
            self.meta,
            where=f"{path} holds results computed with other settings",
            fix="Choose another --out folder, or move that folder away to recompute.",
            ignore=self.ignore,
            shown=6,
            error=StoreMismatch,
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


def checkpoint_units(
    folder: Path | None,
    *,
    stores: Mapping[str, Mapping[str, Any]],
    compute: Callable[[str], Record],
    measure: Callable[[RunKeys], dict[str, Any]],
    ignore: Sequence[str] = (),
    progress: bool = False,
    collective: bool = False,
) -> dict[str, Any]:
    """One checkpoint's measurement of many units, resumed and sharded: its result.

    The one body of ``awp flatness``, ``awp curvature`` and ``awp certify`` per checkpoint: the
    stores are opened in ``folder`` (refusing files of other settings before any work), then
    ``measure`` asks for units through ``run_keys(keys, desc[, store])``, which computes the
    missing ones with ``compute`` (split across ranks, or all together with ``collective``)
    and returns every record; ``measure`` returns the result (on every rank).

    Args:
        folder: the checkpoint's folder (``<out>/<measure>/<stem>-<sha8>``), or None to keep
            nothing on disk (every unit computed, nothing resumed: the Python API's calls).
        stores: store name (its file stem) -> the settings its records depend on; with one
            store, ``run_keys`` needs no store name.
        compute: unit key -> JSON-able record (a pure function of the key and the settings).
        measure: run_keys -> the checkpoint's result (JSON-able).
        ignore: settings that may differ from the stored ones (see :class:`SampleStore`).
        progress: progress bars on the main rank.
        collective: every rank computes every unit together (see :func:`run_units`).

    Returns:
        The result, on every rank.
    """
    if not stores:
        raise ValueError("checkpoint_units needs at least one store (name -> settings)")
    ctx = distributed.current()
    opened = {
        name: None if folder is None else
        SampleStore(folder, meta=meta, name=name, rank=ctx.rank, ignore=ignore)
        for name, meta in stores.items()
    }  # fmt: skip

    def run_keys(keys: Sequence[str], desc: str, store: str | None = None) -> dict[str, Record]:
        if store is None and len(opened) != 1:
            raise ValueError(f"name the store of these units: one of {sorted(opened)}")
        chosen = opened[store] if store is not None else next(iter(opened.values()))
        return run_units(
            keys,
            compute,
            store=chosen,
            info=ctx,
            progress=progress,
            desc=desc,
            collective=collective,
        )

    return measure(run_keys)
