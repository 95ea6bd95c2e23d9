"""The demo over seeds: every measure's values, read from the seed folders, as paired
differences.

A replicated demo folder holds one folder per seed (``seed0/``, ``seed1/``...), each a complete
single-seed demo (runs ``at/`` and ``at_awp/``, ``eval/``, ``analysis/``). For every measure the
report states (final and best robust accuracy, robust gap, the rise of the test robust loss
after its minimum, expected and worst-case flatness, the landscape's sharpness, deep-layer
weight statistics, Kendall's tau of flatness vs gap within each method), the measure module
(:data:`awp_landscape.measures.MEASURES`, its ``over_seeds``) reads the AT and AT-AWP value of
every seed, and this module pairs them (:func:`analysis.replicates.paired_difference`).
The flatness-vs-gap correlation pools the checkpoints of all seeds with the seed as a stratum.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from analysis.replicates import (
    PairedDifference,
    StratifiedKendall,
    paired_difference,
    stratified_kendall,
    verdict,
)
from analysis.tables import join_tables
from awp.io import write_json
from awp_landscape.measures import MEASURES, flatness_epochs, gap
from awp_landscape.measures.base import SeedValue

METHODS = ("AT", "AT-AWP")
SEED_FOLDER = re.compile(r"^seed(\d+)$")


def seed_folders(out: Path) -> dict[int, Path]:
    """``seed<k>/`` folders of a demo folder, by seed."""
    found = {}
    if out.is_dir():
        for p in out.iterdir():
            m = SEED_FOLDER.match(p.name)
            if m and p.is_dir():
                found[int(m.group(1))] = p
    return dict(sorted(found.items()))


def measures(plan: Any) -> list[tuple[str, SeedValue]]:
    """The measures of the table over seeds, by name (what a value means is in its name): every
    measure's, in the registry's order."""
    return [pair for m in MEASURES for pair in m.over_seeds(plan)]


def paired_measures(out: Path, plan: Any, *, seed: int = 0) -> list[PairedDifference]:
    """Every measure with a value for both methods in every seed folder, as a paired difference
    (a measure missing in some seed is left out rather than paired on fewer seeds)."""
    folders = seed_folders(out)
    rows = []
    for name, get in measures(plan):
        values = {s: (get(f, "AT"), get(f, "AT-AWP")) for s, f in folders.items()}
        if not values or any(a is None or b is None for a, b in values.values()):
            continue
        seeds = list(values)
        rows.append(
            paired_difference(
                name,
                seeds,
                [values[s][0] for s in seeds],
                [values[s][1] for s in seeds],
                seed=seed,
            )
        )
    return rows


@dataclass(frozen=True)
class PooledCorrelation:
    """Flatness vs gap over the epoch checkpoints of every seed, stratified by seed."""

    x: str
    y: str
    alpha: float
    result: StratifiedKendall
    by_method: dict[str, StratifiedKendall]


def pooled_correlation(
    out: Path, *, alpha: float, x: str = "flatness_loss"
) -> PooledCorrelation | None:
    """Stratified Kendall tau of ``x`` (per-checkpoint flatness) against the robust gap, pooling
    the checkpoints of all seeds, overall and per method; None without the tables."""
    points: list[dict[str, Any]] = []
    for s, folder in seed_folders(out).items():
        tables = [
            ("flatness", flatness_epochs.MEASURE.read_seed(folder)),
            ("gap", gap.MEASURE.read_seed(folder)),
        ]
        if not all(rows for _, rows in tables):
            continue
        for r in join_tables(tables, [f"alpha={alpha}", "kind=expected"]):
            points.append({**r, "seed": s})
    if len({p["seed"] for p in points}) < 1 or len(points) < 3:
        return None

    def tau(rows: list[dict[str, Any]]) -> StratifiedKendall:
        return stratified_kendall(
            [r[x] for r in rows], [r["gap"] for r in rows], [r["seed"] for r in rows]
        )

    by_method = {m: tau([p for p in points if p["method"] == m]) for m in METHODS}
    return PooledCorrelation(x, "gap", alpha, tau(points), by_method)


def write_replicates(out: Path, plan: Any) -> Path:
    """``out/replicates.json``: every paired measure over the seed folders of ``out`` and the
    flatness-vs-gap correlation pooled over seeds (stratified by seed), with the plan's sizes
    (its flatness scales, worst-case gamma and the correlation's alpha)."""
    rows = paired_measures(out, plan)
    pooled = pooled_correlation(out, alpha=plan.correlate_alpha)
    payload = {
        "seeds": sorted(seed_folders(out)),
        "measures": [dataclasses.asdict(r) | {"verdict": verdict(r)} for r in rows],
        "pooled_correlation": None
        if pooled is None
        else {
            "x": pooled.x,
            "y": pooled.y,
            "alpha": pooled.alpha,
            "all": dataclasses.asdict(pooled.result),
            "by_method": {m: dataclasses.asdict(r) for m, r in pooled.by_method.items()},
        },
    }
    return write_json(out / "replicates.json", payload)
