"""The report's first step: gather what the measures left on disk, from demo folders, seed
folders, run folders or analysis folders.

Training runs (``metrics.jsonl``, ``config.json``) are read here; every measure's files are read
by the measure itself (:data:`awp_landscape.measures.MEASURES`, its ``read``), so this module
names no measure's files.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from analysis.outcome import Measurements
from awp.config import method_of
from awp.io import read_json
from awp.runs import RunFolder
from awp_landscape.measures import MEASURES, Measure
from awp_landscape.over_seeds import seed_folders
from awp_landscape.results import Results, Run, per_epoch_evaluation


def _empty(measure: Measure) -> Any:
    return [] if measure.accumulate else {}


def _read_runs(path: Path) -> list[Run]:
    """A run folder, or every run folder directly inside ``path``."""
    candidates = (
        [path]
        if (path / "metrics.jsonl").exists()
        else sorted(p for p in path.iterdir() if p.is_dir() and (p / "metrics.jsonl").exists())
    )
    runs = []
    for p in candidates:
        cfg = read_json(p / "config.json") if (p / "config.json").exists() else {}
        hist = RunFolder(p).read_metrics()
        runs.append(Run(method_of(cfg), p, cfg, hist))
    return runs


def _read_measure(measure: Measure, folders: Sequence[Path], res: Results) -> None:
    """A measure's results from the folders, in order: concatenated, or the first found."""
    found = _empty(measure)
    for d in folders:
        if not d.is_dir():
            continue
        if measure.accumulate:
            found += measure.read(d)
        elif not found:
            found = measure.read(d) or found
        for name, path in measure.figures_of(d).items():
            res.figures.setdefault(name, path)
    res.measures[measure.name] = found


def collect(paths: Sequence[str | Path]) -> Results:
    """Gather results from demo folders, run folders or analysis folders.

    Raises:
        FileNotFoundError: a path that does not exist.
        ValueError: nothing to report in the paths given.
    """
    roots = [Path(p) for p in paths]
    for p in roots:
        if not p.exists():
            raise FileNotFoundError(
                f"{p} does not exist; pass a demo folder (runs/demo) or run "
                f"folders holding metrics.jsonl"
            )
    res = Results(root=roots[0])
    roots = _expand(roots, res)
    analysis_dirs: list[Path] = []
    for root in roots:
        if (root / "demo_config.json").exists():
            res.demo_config = read_json(root / "demo_config.json")
        res.runs += _read_runs(root) if root.is_dir() else []
        for cand in (root / "analysis", root):
            if cand.is_dir() and cand not in analysis_dirs:
                analysis_dirs.append(cand)
    for run in res.runs:
        if (run.path / "analysis").is_dir() and run.path / "analysis" not in analysis_dirs:
            analysis_dirs.append(run.path / "analysis")
    for measure in MEASURES:
        _read_measure(measure, analysis_dirs if measure.in_analysis else roots, res)
    if not (res.runs or res.sweep or res.replicates or any(v for v in res.measures.values())):
        raise ValueError(
            f"nothing to report in {', '.join(map(str, roots))}: expected run "
            f"folders (metrics.jsonl) or an analysis folder (gap.json, ...)"
        )
    return res


def _expand(roots: list[Path], res: Results) -> list[Path]:
    """The folders whose results are shown in detail: a sweep folder gives its summary only; a
    replicated demo folder gives its replicate table, and its first seed folder in detail."""
    detail = []
    for root in roots:
        if (root / "sweep.json").exists():
            res.sweep = read_json(root / "sweep.json")
            for name in ("sweep_tradeoff", "sweep_gap_flatness"):
                if (root / f"{name}.png").exists():
                    res.figures[name] = root / f"{name}.png"
            continue
        seeds = seed_folders(root)
        if not seeds:
            detail.append(root)
            continue
        res.seeds = sorted(seeds)
        res.seed_histories = {
            k: {r.label: r.history for r in _read_runs(f)} for k, f in seeds.items()
        }
        if (root / "demo_config.json").exists():
            res.demo_config = read_json(root / "demo_config.json")
        if (root / "replicates.json").exists():
            res.replicates = read_json(root / "replicates.json")
        detail.append(seeds[res.seeds[0]])
    return detail


def measurements(res: Results) -> Measurements:
    """What the outcome statements are computed from."""
    return Measurements(
        histories={r.label: r.history for r in res.runs},
        gap=res["gap"],
        flatness=res["flatness"],
        landscapes=res["landscape"],
        correlation=res["correlate"],
        certify=res["certify"],
        evals=res["evaluate"],
        weights=res["hist"],
        per_epoch=per_epoch_evaluation(res),
    )
