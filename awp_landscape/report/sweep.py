"""The report's section of a gamma sweep: natural and robust accuracy, gap and flatness
against gamma with their intervals over seeds (``sweep.json``), and its two figures."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from awp_landscape import measures
from awp_landscape.report.over_seeds import interval
from figures.html import FigureBlock, Section, Table

#: The columns of the per-gamma table (the measures' reported sweep columns).
REPORTED_COLUMNS = tuple(
    c.name for m in measures.SWEEP_MEASURES for c in m.sweep_columns if c.reported
)


def sweep_section(sweep: Mapping[str, Any], figures: Mapping[str, Path]) -> Section:
    """Natural and robust accuracy, gap and flatness against gamma (rebuttal R#2 Q3), per grid
    point, and AT-AWP minus AT paired over seeds where gamma 0 was trained."""
    seeds = sweep.get("seeds", [])
    points = sweep.get("points", [""])
    title = f"AWP's gamma trade-off (sweep over {len(sweep.get('gammas', []))} gammas)"
    if len(points) > 1 or points != [""]:
        title += f" at {len(points)} grid points"
    s = Section(title)
    s.paragraphs.append(
        "The rebuttal (R#2 Q3) says a smaller gamma (e.g. 2.5e-3) improves AT on both natural "
        f"and robust accuracy, i.e. that gamma sets a trade-off. Each gamma was trained with "
        f"{len(seeds)} seed(s) (0 = AT); values are means over seeds with a t interval from "
        "three seeds on."
    )
    by = {(r.get("point", ""), r["gamma"], r["measure"]): r for r in sweep.get("summary", [])}
    rows = []
    for point in points:
        for g in sweep.get("gammas", []):
            row: dict[str, Any] = {"grid point": point or "(flags)"} if points != [""] else {}
            row["gamma"] = g
            found = False
            for m in REPORTED_COLUMNS:
                r = by.get((point, g, m))
                if r is not None:
                    found = True
                    row[m] = f"{r['mean']:.4g}" + (
                        f" {interval(r['low'], r['high'])}" if r["low"] is not None else ""
                    )
            if found:
                rows.append(row)
    s.tables.append(Table(rows, caption="Per gamma: mean over seeds [t interval]"))
    pairs = sweep.get("paired", [])
    if pairs:
        s.tables.append(
            Table(
                [
                    {
                        "grid point": p["point"] or "(flags)",
                        "gamma": p["gamma"],
                        "measure": p["measure"],
                        "seeds": len(p["seeds"]),
                        "mean AT-AWP minus AT": p["mean_diff"],
                        f"{p['confidence']:.0%} t interval": interval(p["t_low"], p["t_high"]),
                        "resolved": p["t_low"] is not None and (p["t_low"] > 0 or p["t_high"] < 0),
                    }
                    for p in pairs
                ],
                caption="AT-AWP (gamma) minus AT (gamma 0), paired by seed",
            )
        )
    methods = sweep.get("methods", [])
    if methods:
        s.tables.append(
            Table(
                [
                    {
                        **({"grid": m["context"]} if m["context"] else {}),
                        "method": m["method"],
                        "outcome": m["outcome"],
                        "seeds": len(m["seeds"]),
                        "AT": m["mean_reference"],
                        "method's": m["mean_method"],
                        "difference": m["mean_diff"],
                        f"{m['confidence']:.0%} t interval": interval(m["t_low"], m["t_high"]),
                        "resolved": m["resolved"],
                    }
                    for m in methods
                ],
                caption="Each method minus AT, paired by seed (best and last test robust "
                "accuracy, robust gap of the last checkpoint, rise of the test robust loss "
                "after its minimum)",
            )
        )
    ranked = sweep.get("rankings", [])
    if ranked:
        s.tables.append(
            Table(
                [
                    {
                        **({"grid": r["context"]} if r["context"] else {}),
                        "measure": r["measure"],
                        "checkpoints": r["n"],
                        "seeds": r["strata"],
                        "Kendall tau-b": r["tau"],
                        f"{r['confidence']:.0%} interval": interval(r["low"], r["high"]),
                        "p-value": r["pvalue"],
                    }
                    for r in ranked
                ],
                caption="Which flatness measure ranks the robust gap: Kendall tau-b with the gap "
                "over every method, seed and saved checkpoint, pairs within a seed only, with a "
                "bootstrap interval within seeds and a permutation p-value",
            )
        )
    for key, caption in (
        ("sweep_tradeoff", "Natural against PGD-20 accuracy per gamma (best and last checkpoint)."),
        ("sweep_gap_flatness", "Robust gap and expected / worst-case flatness against gamma."),
    ):
        if key in figures:
            s.figures.append(FigureBlock(figures[key].read_bytes(), caption, key))
    return s
