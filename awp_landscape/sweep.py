"""``awp sweep``: AWP's gamma trade-off, and any grid of training or measurement settings.

Every gamma (0 is plain AT) is trained with the demo's training plan and every seed, then each
run's best and last checkpoint are evaluated (natural and PGD-20), and the last checkpoint's
robust gap, expected and worst-case flatness, 1-D landscape sharpness and deepest-layer weight
statistics measured, with the same functions as the demo. Per gamma the seeds give a mean and,
from three seeds on, a t interval; with gamma 0 in the sweep, every other gamma is also compared
with it seed by seed (AT-AWP minus AT, paired over seeds).

``--grid NAME=V1,V2 ...`` varies any field of the training plan or of the measurement sizes (the
names of their flags: ``--grid train_size=250,500 epochs=60,100``): every combination is a grid
point, trained and measured with every gamma and seed in a folder of its own named by the values
that differ from the other flags (the point equal to them is the folder itself). Everything is
kept and reused when the sweep is run again: more gammas, seeds or grid values add runs, and the
summary merges by (point, gamma, seed), never losing rows of earlier calls.

    out/[<point>/]seed<k>/gamma_<g>/   a run folder (config.json, metrics.jsonl, checkpoints/)
    out/[<point>/]seed<k>/eval/        gamma_<g>_{best,last}.json
    out/[<point>/]seed<k>/analysis/    gap.json, flatness_final/, landscape/, weights.json
    out/sweep.json, sweep.csv, sweep_*.png
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

from analysis.replicates import MIN_SEEDS, paired_difference, verdict
from analysis.stats import t_interval
from awp.io import atomic_write_set, csv_text, exclusive_output, json_text, read_json
from awp.method_config import measured_average
from awp.runs import RunFolder
from awp_landscape.console import say
from awp_landscape.launch import LaunchConfig, Unit, run_phases
from awp_landscape.measures import SWEEP_MEASURES, Context, training
from awp_landscape.pipeline import record_config
from awp_landscape.sweep_config import (  # noqa: F401 - re-exported: they lived here
    GridPoint,
    SweepConfig,
    SweepPlan,
    grid_points,
    parse_grid,
    run_name,
)

# --------------------------------------------------------------------------- measures
#: The columns of a sweep's rows: every sweep measure's, in the registry's order, then the time.
MEASURES = (*(c.name for m in SWEEP_MEASURES for c in m.sweep_columns), "seconds per run")
#: The measures compared AT-AWP minus AT, seed by seed (gamma 0 against every other gamma).
PAIRED = tuple(c.name for m in SWEEP_MEASURES for c in m.sweep_columns if c.paired)


def run_configs(cfg: SweepConfig, point: GridPoint, seed: int) -> dict[str, Any]:
    """The training config of every gamma of one seed at one grid point, by run name."""
    folder = point.folder(cfg.out) / f"seed{seed}"
    return {
        run_name(g): point.training.train_config(
            folder / run_name(g), seed=seed, awp=g > 0, gamma=g
        )
        for g in cfg.gammas
    }


def _measure_seed(
    cfg: SweepConfig, point: GridPoint, seed: int, *, progress: bool
) -> list[dict[str, Any]]:
    """Train (or reuse) every gamma of one seed at one grid point, then run the sweep's measures
    (:data:`~awp_landscape.measures.SWEEP_MEASURES`) and read their columns; one row per gamma."""
    folder = point.folder(cfg.out) / f"seed{seed}"
    configs = run_configs(cfg, point, seed)
    ctx = Context(
        runs={name: RunFolder(c.out, measured_average(c)) for name, c in configs.items()},
        plan=point.plan,
        out=folder,
        device=point.training.device,
        progress=progress,
        log=say,
        configs=configs,
        sweep=True,
    )
    training.MEASURE.run(ctx)
    t0 = time.perf_counter()
    for measure in SWEEP_MEASURES:
        if measure is not training.MEASURE:
            measure.run(ctx)
    measured = (time.perf_counter() - t0) / len(configs)
    rows = []
    for name, gamma in zip(configs, cfg.gammas):
        row: dict[str, Any] = {"point": point.name, **point.values, "gamma": gamma, "seed": seed}
        for measure in SWEEP_MEASURES:
            row.update(measure.sweep_values(folder, name))
        row["seconds per run"] = training.train_seconds(folder, name) + measured
        rows.append(row)
    return rows


def _key(row: dict[str, Any]) -> tuple[str, float, int]:
    return (str(row.get("point", "")), float(row["gamma"]), int(row["seed"]))


def summarize(rows: Sequence[dict[str, Any]], confidence: float = 0.95) -> list[dict[str, Any]]:
    """Per grid point, gamma and measure: the seeds' values, their mean, and a t interval from
    three seeds."""
    out = []
    for point, gamma in sorted({(str(r.get("point", "")), r["gamma"]) for r in rows}):
        mine = [r for r in rows if r["gamma"] == gamma and str(r.get("point", "")) == point]
        for measure in MEASURES:
            values = [float(r[measure]) for r in mine if r.get(measure) is not None]
            if not values:
                continue
            low = high = None
            if len(values) >= MIN_SEEDS:
                low, high = t_interval(values, confidence)
            out.append(
                {
                    "point": point,
                    "gamma": gamma,
                    "measure": measure,
                    "n": len(values),
                    "mean": float(sum(values) / len(values)),
                    "low": low,
                    "high": high,
                    "values": values,
                    "note": "" if low is not None else f"no interval with {len(values)} seed(s)",
                }
            )
    return out


def paired(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per grid point and gamma > 0: every measure of :data:`PAIRED` as AT-AWP (that gamma)
    minus AT (gamma 0) of the same seed, over the seeds both have, with the t interval and the
    verdict of :func:`analysis.replicates.paired_difference` (none below three seeds)."""
    by = {_key(r): r for r in rows}
    out = []
    for point, gamma in sorted({(k[0], k[1]) for k in by if k[1] > 0}):
        seeds = sorted(s for p, g, s in by if (p, g) == (point, gamma) and (p, 0.0, s) in by)
        for measure in PAIRED:
            pairs = [(s, by[(point, 0.0, s)].get(measure), by[(point, gamma, s)].get(measure))
                     for s in seeds]  # fmt: skip
            pairs = [p for p in pairs if p[1] is not None and p[2] is not None]
            if not pairs:
                continue
            pd = paired_difference(
                measure, [p[0] for p in pairs], [p[1] for p in pairs], [p[2] for p in pairs]
            )
            out.append(
                {"point": point, "gamma": gamma, **dataclasses.asdict(pd), "verdict": verdict(pd)}
            )
    return out


REGIME_DIFFS = (
    ("robust gap (last)", "gap"),
    ("expected flatness (last)", "expected flatness"),
    ("worst-case flatness (last)", "worst-case flatness"),
    ("landscape sharpness (last)", "landscape sharpness"),
    ("deepest conv mean |w| (last)", "deepest conv mean abs(w)"),
    ("deepest conv |skewness| (last)", "deepest conv abs(skewness)"),
)


def _mean_of(values: Sequence[float | None]) -> str:
    v = [x for x in values if x is not None]
    if not v:
        return "–"
    return f"{sum(v) / len(v):.3g} ({', '.join(f'{x:.3g}' for x in v)})"


def regime_table(rows: Sequence[dict[str, Any]], pairs: Sequence[dict[str, Any]]) -> str:
    """A markdown table, one row per grid point and AWP gamma: whether AT overfits there (its
    last-epoch train robust accuracy, the rise of its test robust loss after the minimum, its
    best and best-minus-last PGD-20 accuracy; mean and per seed) and AT-AWP minus AT with the
    95% t interval over seeds for the gap, flatness, sharpness and deepest-layer statistics,
    then the seconds per seed (every gamma's run and measurement)."""
    head = ["grid point", "gamma", "seeds", "AT train robust acc. (last epoch)",
            "AT test robust loss rise", "AT best robust acc.", "AT best minus last"]  # fmt: skip
    head += [f"{name}: AT-AWP minus AT" for _, name in REGIME_DIFFS] + ["seconds per seed"]
    lines = ["| " + " | ".join(h.replace("|", "\\|") for h in head) + " |"]
    lines.append("|" + "|".join("---" for _ in head) + "|")
    by_pair = {(p["point"], p["gamma"], p["measure"]): p for p in pairs}
    for point, gamma in sorted({(p["point"], p["gamma"]) for p in pairs}):
        at = [r for r in rows if str(r.get("point", "")) == point and r["gamma"] == 0]
        seeds = sorted({r["seed"] for r in at})
        per_seed = [
            sum(r["seconds per run"] or 0 for r in rows
                if str(r.get("point", "")) == point and r["seed"] == s and r["gamma"] in (0, gamma))
            for s in seeds
        ]  # fmt: skip
        cells = [point or "(flags)", f"{gamma:g}", str(len(seeds))]
        for m in ("train robust accuracy (last epoch)", "test robust loss rise after its minimum",
                  "robust accuracy (best)", "best minus last robust accuracy"):  # fmt: skip
            cells.append(_mean_of([r.get(m) for r in at]))
        for measure, _ in REGIME_DIFFS:
            p = by_pair.get((point, gamma, measure))
            if p is None:
                cells.append("–")
            elif p["t_low"] is None:
                cells.append(f"{p['mean_diff']:+.3g} (no interval, {len(p['seeds'])} seed(s))")
            else:
                mark = "**" if p["t_low"] > 0 or p["t_high"] < 0 else ""
                cells.append(
                    f"{mark}{p['mean_diff']:+.3g} [{p['t_low']:+.3g}, {p['t_high']:+.3g}]{mark}"
                )
        cells.append(f"{sum(per_seed) / len(per_seed):.0f}" if per_seed else "–")
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- methods
#: The outcomes of a run compared method against AT: name in analysis.predictors -> column.
OUTCOME_COLUMNS = {
    "best": "robust accuracy (best)",
    "last": "robust accuracy (last)",
    "gap": "robust gap (last)",
    "loss_rise": "test robust loss rise after its minimum",
}


def _context(row: dict[str, Any], grid: Sequence[str]) -> str:
    """The grid values of a row other than its method (one comparison per such context)."""
    return ",".join(f"{n}={row[n]}" for n in grid if n != "method")


def method_label(name: str) -> str:
    """``at-sam`` -> ``AT-SAM``, ``at+ema`` -> ``AT+EMA``: a grid's method name as the report
    labels it."""
    from awp.config import method_of
    from awp.method_config import method_fields, split_average

    method, average = split_average(name)
    label = method_of(method_fields(method))
    return f"{label}+{average.upper()}" if average else label


def method_outcomes(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per method of a grid over ``method`` (gamma 0: each method as named): its best and last
    test robust accuracy, robust gap and test robust loss rise against AT's, paired by seed
    (:func:`analysis.predictors.compare_methods`), within each combination of the grid's other
    values; [] without a method grid or without AT."""
    from analysis.predictors import compare_methods

    mine = [r for r in rows if r.get("method") and float(r["gamma"]) == 0.0]
    if not mine:
        return []
    grid = [n for n in mine[0] if n not in ("point", "gamma", "seed", *MEASURES)]
    out = []
    for context in dict.fromkeys(_context(r, grid) for r in mine):
        runs = [
            {"method": method_label(r["method"]), "seed": int(r["seed"]),
             **{o: r.get(c) for o, c in OUTCOME_COLUMNS.items()}}
            for r in mine if _context(r, grid) == context
        ]  # fmt: skip
        if "AT" not in {r["method"] for r in runs} or len({r["method"] for r in runs}) < 2:
            continue
        for m in compare_methods(runs, reference="AT"):
            out.append({"context": context, **dataclasses.asdict(m), "resolved": m.resolved})
    return out


def rank_predictors(out: Path, rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each flatness measure of every saved checkpoint (``--predictors``) against its robust
    gap: stratified Kendall tau-b over every (method, seed, checkpoint) of each combination of
    the grid's values other than the method (:func:`analysis.predictors.rank_measures`), twice:
    pairing the checkpoints of one seed, and pairing only the methods' checkpoints of one seed
    at one epoch (``within``)."""
    from analysis.predictors import WITHIN, rank_measures
    from awp_landscape.measures import predictors

    if not rows:
        return []
    grid = [n for n in rows[0] if n not in ("point", "gamma", "seed", *MEASURES)]
    records: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        folder = (out / r["point"] if r.get("point") else out) / f"seed{r['seed']}"
        for c in predictors.MEASURE.read_seed(folder):
            if c.get("run") != run_name(float(r["gamma"])):
                continue
            rec = {**c, "seed": int(r["seed"]), "checkpoint": int(c["epoch"] or 0)}
            records.setdefault(_context(r, grid), []).append(rec)
    ranked = []
    for context, recs in records.items():
        names = [m for m in predictors.MEASURES if any(r.get(m) is not None for r in recs)]
        for within in WITHIN:
            for m in rank_measures(recs, measures=names, within=within):
                ranked.append({"context": context, **dataclasses.asdict(m)})
    return ranked


def _interval(low: float | None, high: float | None) -> str:
    if low is None or high is None or not (math.isfinite(low) and math.isfinite(high)):
        return "–"
    return f"[{low:+.3g}, {high:+.3g}]"


def methods_table(methods: Sequence[dict[str, Any]]) -> str:
    """A markdown table: each method minus AT, per outcome, with the 95% t interval over seeds
    (bold where it excludes zero)."""
    lines = ["\n## Each method against AT (paired by seed)\n",
             "| grid | method | outcome | seeds | AT | method | difference | 95% t interval |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for m in methods:
        mark = "**" if m["resolved"] else ""
        lines.append(
            f"| {m['context'] or '–'} | {m['method']} | {OUTCOME_COLUMNS[m['outcome']]} | "
            f"{len(m['seeds'])} | {m['mean_reference']:.3g} | {m['mean_method']:.3g} | "
            f"{mark}{m['mean_diff']:+.3g}{mark} | {_interval(m['t_low'], m['t_high'])} |"
        )
    return "\n".join(lines) + "\n"


def predictors_table(ranked: Sequence[dict[str, Any]]) -> str:
    """Markdown tables: each measure's stratified Kendall tau-b with the robust gap, its
    bootstrap interval and permutation p-value (bold where the interval excludes zero); one
    table pairing the checkpoints of a seed, one pairing the methods at one epoch."""
    from analysis.predictors import WITHIN

    titles = {
        WITHIN[("seed",)]: "every method, seed and checkpoint; pairs of one seed",
        WITHIN[("seed", "checkpoint")]: "the methods at equal epochs; pairs of one seed and epoch",
    }
    lines = []
    for within, title in titles.items():
        rows = [r for r in ranked if r.get("within", "seed") == within]
        if not rows:
            continue
        lines += [f"\n## Which measure ranks the robust gap ({title})\n",
                  "| grid | measure | checkpoints | groups | pairs | Kendall tau-b | 95% interval "
                  "| p-value |",
                  "|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in rows:
            low, high = r["low"], r["high"]
            resolved = math.isfinite(low) and math.isfinite(high) and (low > 0 or high < 0)
            mark = "**" if resolved else ""
            tau = f"{mark}{r['tau']:+.3f}{mark}" if math.isfinite(r["tau"]) else "undefined"
            lines.append(
                f"| {r['context'] or '–'} | {r['measure']} | {r['n']} | {r['strata']} | "
                f"{r['pairs']} | {tau} | {_interval(low, high)} | {r['pvalue']:.3g} |"
            )
    return "\n".join(lines) + "\n"


def merged_rows(path: Path, new: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows of an earlier ``sweep.json`` with ``new`` merged in by (point, gamma, seed): a
    rerun with fewer gammas, seeds or grid values keeps what the earlier calls measured."""
    old = read_json(path, what="sweep summary")["rows"] if path.exists() else []
    merged = {_key(r): r for r in old}
    replaced = sum(_key(r) in merged for r in new)
    merged.update({_key(r): r for r in new})
    kept = len(merged) - len(new)
    if kept:
        say(f"sweep: kept {kept} row(s) of earlier calls in {path.name}; {replaced} remeasured")
    return sorted(merged.values(), key=_key)


def sweep_units(cfg: SweepConfig, points: Sequence[GridPoint]) -> list[list[Unit]]:
    """The jobs of a sweep: first every training run not finished yet (grid point, seed,
    gamma), then the measurements of every grid point and seed (:func:`_measure_seed`, which
    reuses the runs)."""
    trainings, measures = [], []
    for point in points:
        where = f"{point.name} " if point.name else ""
        for seed in cfg.seeds:
            group = f"{where}seed{seed}"
            for name, tcfg in run_configs(cfg, point, seed).items():
                if RunFolder(tcfg.out, measured_average(tcfg)).finished(tcfg.epochs):
                    continue
                trainings.append(
                    Unit(
                        f"{group} {name}: training",
                        partial(training.train_all, {name: tcfg}, progress=False, log=say),
                        group=group,
                    )
                )
            measures.append(
                Unit(
                    f"{group}: measurements",
                    partial(_measure_seed, cfg, point, seed, progress=False),
                    group=group,
                )
            )
    return [trainings, measures]


def run_sweep(
    cfg: SweepConfig, *, progress: bool = True, launch: LaunchConfig | None = None
) -> Path:
    """Train and measure every grid point, gamma and seed; write sweep.json/.csv and figures.

    ``launch`` runs them as jobs (:mod:`awp_landscape.launch`): every training run one job,
    then every point's and seed's measurements one job; by default they run here, one after
    another.
    """
    launch = launch or LaunchConfig()
    launch.check()
    out = Path(cfg.out)
    points = grid_points(cfg)
    with exclusive_output(out, folder_lock="sweep"):
        record_config(out, "sweep_config.json", cfg, growable=("gammas", "seeds", "grid"))
        new = []
        if launch.serial:
            for point in points:
                if point.name:
                    say(f"\n######## grid point {point.name}")
                for seed in cfg.seeds:
                    new += _measure_seed(cfg, point, seed, progress=progress)
        else:
            _, measured = run_phases(sweep_units(cfg, points), launch, out=out)
            new = [row for rows in measured for row in rows]
        rows = merged_rows(out / "sweep.json", new)
        summary = summarize(rows)
        gammas = sorted({float(r["gamma"]) for r in rows})
        seeds = sorted({int(r["seed"]) for r in rows})
        names = sorted({str(r.get("point", "")) for r in rows})
        pairs = paired(rows)
        methods = method_outcomes(rows)
        predictors = rank_predictors(out, rows)
        payload = {
            "gammas": gammas,
            "seeds": seeds,
            "grid": list(cfg.grid),
            "points": names,
            "rows": rows,
            "summary": summary,
            "paired": pairs,
            "methods": methods,
            "rankings": predictors,
        }
        files = {out / "sweep.json": json_text(payload), out / "sweep.csv": csv_text(rows)}
        if pairs or methods or predictors:
            files[out / "sweep_regime.md"] = (
                (regime_table(rows, pairs) if pairs else "")
                + (methods_table(methods) if methods else "")
                + (predictors_table(predictors) if predictors else "")
            )
        atomic_write_set(files)  # the JSON, CSV and table always agree
        for name in names:
            _figures([r for r in summary if r["point"] == name], out, name)
        for r in summary:
            if r["measure"] in ("robust accuracy (last)", "natural accuracy (last)"):
                ci = f" [{r['low']:.3f}, {r['high']:.3f}]" if r["low"] is not None else ""
                where = f"{r['point']}: " if r["point"] else ""
                say(f"{where}gamma {r['gamma']:g}: {r['measure']} {r['mean']:.3f}{ci} (n={r['n']})")
    return out / "sweep.json"


def _figures(summary: list[dict[str, Any]], out: Path, point: str = "") -> None:
    # matplotlib is imported only when figures are drawn: `awp` starts without it.
    from figures.style import save_figure
    from figures.sweep import plot_tradeoff, plot_vs_gamma

    suffix = f"_{point}" if point else ""
    save_figure(plot_tradeoff(summary), out / f"sweep_tradeoff{suffix}")
    panels = ("robust gap (last)", "expected flatness (last)", "worst-case flatness (last)")
    save_figure(plot_vs_gamma(summary, panels), out / f"sweep_gap_flatness{suffix}")
