"""The measures of a replicated demo, read from its seed folders, as paired differences.

A replicated demo folder holds one folder per seed (``seed0/``, ``seed1/``...), each a complete
single-seed demo (runs ``at/`` and ``at_awp/``, ``eval/``, ``analysis/``). For every measure the
report states (final and best robust accuracy, robust gap, the rise of the test robust loss
after its minimum, expected and worst-case flatness, the landscape's sharpness, deep-layer
weight statistics, Kendall's tau of flatness vs gap within each method), this module reads the
AT and AT-AWP value of every seed and pairs them (:func:`analysis.replicates.paired_difference`).
The flatness-vs-gap correlation pools the checkpoints of all seeds with the seed as a stratum.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from analysis.outcome import landscape_rise, robust_overfitting
from analysis.replicates import (
    PairedDifference,
    StratifiedKendall,
    paired_difference,
    stratified_kendall,
    verdict,
)
from analysis.tables import join_tables
from awp.io import read_json, write_json
from awp.runs import RunFolder
from landscape.storage import read_surface

METHODS = ("AT", "AT-AWP")
RUNS = {"AT": "at", "AT-AWP": "at_awp"}
SEED_FOLDER = re.compile(r"^seed(\d+)$")

Measure = Callable[[Path, str], float | None]


def seed_folders(out: Path) -> dict[int, Path]:
    """``seed<k>/`` folders of a demo folder, by seed."""
    found = {}
    if out.is_dir():
        for p in out.iterdir():
            m = SEED_FOLDER.match(p.name)
            if m and p.is_dir():
                found[int(m.group(1))] = p
    return dict(sorted(found.items()))


def _eval_accuracy(which: str) -> Measure:
    def get(folder: Path, method: str) -> float | None:
        path = folder / "eval" / f"{method}_{which}.json"
        if not path.exists():
            return None
        rows = {r["attack"]: r for r in read_json(path)["results"]}
        row = rows.get("pgd20")
        if row is None:
            return None
        alone = row.get("accuracy_alone")  # the demo evaluates without a cascade
        return float(alone if alone is not None else row["accuracy"])

    return get


def _last_gap(folder: Path, method: str) -> float | None:
    path = folder / "analysis" / "gap.json"
    if not path.exists():
        return None
    rows = [r for r in read_json(path)["rows"] if r.get("method") == method]
    return float(max(rows, key=lambda r: r["epoch"])["gap"]) if rows else None


def _loss_rise(folder: Path, method: str) -> float | None:
    ro = robust_overfitting(RunFolder(folder / RUNS[method]).read_metrics())
    return None if ro is None else ro.loss_rise


def _flatness(kind: str, key: str, value: float) -> Measure:
    def get(folder: Path, method: str) -> float | None:
        path = folder / "analysis" / "flatness_final" / "flatness.json"
        if not path.exists():
            return None
        rows = [
            r
            for r in read_json(path)["rows"]
            if r.get("kind") == kind and r.get("label") == method and r.get(key) == value
        ]
        return float(rows[0]["flatness_loss"]) if rows else None

    return get


def _sharpness(folder: Path, method: str) -> float | None:
    path = folder / "analysis" / "landscape" / f"{method}.h5"
    return landscape_rise(read_surface(path)) if path.exists() else None


def deepest_conv(stat: str) -> Measure:
    def get(folder: Path, method: str) -> float | None:
        path = folder / "analysis" / "weights.json"
        if not path.exists():
            return None
        stats = [r for r in read_json(path)["stats"] if r.get("kind") == "conv"]
        if not stats:
            return None
        deepest = max(r["depth"] for r in stats)
        rows = [r for r in stats if r["depth"] == deepest and r["label"] == method]
        return abs(float(rows[0][stat])) if rows and rows[0][stat] is not None else None

    return get


def _tau(folder: Path, method: str) -> float | None:
    path = folder / "analysis" / "correlation.json"
    if not path.exists():
        return None
    for c in read_json(path).get("correlations", []):
        if c["group"] == method and c["measure"] == "kendall" and c["statistic"] is not None:
            return float(c["statistic"])
    return None


def measures(alphas: Sequence[float], gamma: float) -> list[tuple[str, Measure]]:
    """The measures of the replicate table, by name (what a value means is in its name)."""
    out: list[tuple[str, Measure]] = [
        ("last-checkpoint robust accuracy (PGD-20)", _eval_accuracy("last")),
        ("best-checkpoint robust accuracy (PGD-20)", _eval_accuracy("best")),
        ("robust gap at the last checkpoint (train - test robust accuracy)", _last_gap),
        ("rise of the test robust loss after its minimum", _loss_rise),
    ]
    for a in alphas:
        out.append(
            (
                f"expected flatness at alpha={a:g} (robust loss increase)",
                _flatness("expected", "alpha", a),
            )
        )
    out += [
        (
            f"worst-case flatness at gamma={gamma:g} (robust loss increase)",
            _flatness("worst", "gamma", gamma),
        ),
        ("landscape sharpness (adversarial loss rise along the direction)", _sharpness),
        ("mean |w| of the deepest conv layer", deepest_conv("mean_abs")),
        ("|skewness| of the deepest conv layer (asymmetry)", deepest_conv("skewness")),
        ("Kendall tau of flatness vs gap within the method", _tau),
    ]
    return out


def paired_measures(
    out: Path, *, alphas: Sequence[float], gamma: float, seed: int = 0
) -> list[PairedDifference]:
    """Every measure with a value for both methods in every seed folder, as a paired difference
    (a measure missing in some seed is left out rather than paired on fewer seeds)."""
    folders = seed_folders(out)
    rows = []
    for name, get in measures(alphas, gamma):
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
        flat = folder / "analysis" / "flatness_epochs" / "flatness.json"
        gap = folder / "analysis" / "gap.json"
        if not (flat.exists() and gap.exists()):
            continue
        tables = [("flatness", read_json(flat)["rows"]), ("gap", read_json(gap)["rows"])]
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


def write_replicates(out: Path, *, alphas: Sequence[float], gamma: float, alpha: float) -> Path:
    """``out/replicates.json``: every paired measure over the seed folders of ``out`` and the
    flatness-vs-gap correlation pooled over seeds (stratified by seed)."""
    rows = paired_measures(out, alphas=alphas, gamma=gamma)
    pooled = pooled_correlation(out, alpha=alpha)
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
