"""Result tables: read JSON/CSV tables written by the analyses, filter them and join them on
the checkpoint's sha256 (what ``awp correlate`` does before correlating two columns)."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from awp.config import parse_number

IDENTITY = ("checkpoint", "sha256", "run", "method", "epoch", "label")
TEXT_COLUMNS = ("checkpoint", "sha256", "run", "method", "label", "kind", "attack")


def read_table(path: Path) -> list[dict[str, Any]]:
    """Rows of a result table: JSON (a list, or an object with ``rows``) or CSV."""
    if not path.is_file():
        raise FileNotFoundError(f"table {path} does not exist")
    hint = "pass the flatness.json, gap.json or CSV tables that awp flatness / awp gap write"
    try:
        if path.suffix == ".csv":
            with path.open(newline="") as fh:
                # Names and hashes stay text (an all-digit sha256 must not become a number).
                return [
                    {k: v if k in TEXT_COLUMNS else _parse_cell(v) for k, v in r.items()}
                    for r in csv.DictReader(fh)
                ]
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError, csv.Error) as err:
        raise ValueError(f"{path} is not a JSON or CSV result table ({err}); {hint}") from None
    rows = data.get("rows") if isinstance(data, dict) else data
    if not isinstance(rows, list):
        raise ValueError(
            f"{path} holds no list of rows (expected a list or {{'rows': [...]}}); {hint}"
        )
    return rows


def _parse_cell(v: str) -> Any:
    if v in ("True", "False"):
        return v == "True"
    try:
        return int(v)
    except ValueError:
        pass
    try:
        return float(v)
    except ValueError:
        return v


def _matches(value: Any, wanted: str) -> bool:
    if isinstance(value, bool) or wanted.lower() in ("true", "false"):
        return str(value).lower() == wanted.lower()
    try:
        a, b = float(value), parse_number(wanted)
    except (TypeError, ValueError):
        return str(value) == wanted
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def join_tables(
    tables: Sequence[tuple[str, list[dict[str, Any]]]], where: Sequence[str]
) -> list[dict[str, Any]]:
    """Filter each table with ``where`` and inner-join them on ``sha256``.

    A column present in several tables with different values keeps the first table's value,
    and the later one is also kept as ``<table>.<column>``.

    Raises:
        ValueError: a malformed filter, rows without ``sha256``, or a table with several rows
            per checkpoint after filtering (the message says which column tells them apart).
    """
    filters = []
    for w in where:
        if "=" not in w:
            raise ValueError(f"--where {w!r}: write COL=VALUE, e.g. alpha=0.1")
        filters.append(tuple(w.split("=", 1)))
    joined: dict[str, dict[str, Any]] | None = None
    for name, rows in tables:
        kept = [r for r in rows if all(c not in r or _matches(r[c], v) for c, v in filters)]
        by_sha: dict[str, dict[str, Any]] = {}
        for r in kept:
            if "sha256" not in r:
                raise ValueError(f"{name}: rows have no 'sha256' column to join on")
            if r["sha256"] in by_sha:
                other = by_sha[r["sha256"]]
                differ = sorted(k for k in r if k in other and r[k] != other[k])[:4]
                raise ValueError(
                    f"{name} has several rows for checkpoint {r.get('checkpoint')} (they differ in "
                    f"{differ}); keep one with --where, e.g. --where {differ[0]}={r[differ[0]]}"
                    if differ
                    else f"{name} has duplicate rows for checkpoint {r.get('checkpoint')}"
                )
            by_sha[r["sha256"]] = r
        if joined is None:
            joined = {s: dict(r) for s, r in by_sha.items()}
            continue
        merged = {}
        for sha, row in joined.items():
            if sha not in by_sha:
                continue
            new = dict(row)
            for k, v in by_sha[sha].items():
                if k not in new:
                    new[k] = v
                elif new[k] != v and k not in IDENTITY:
                    new[f"{name}.{k}"] = v
            merged[sha] = new
        joined = merged
    return list((joined or {}).values())
