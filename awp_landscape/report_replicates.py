"""The report's parts about several seeds and about the gamma sweep.

A replicated demo's outcome is its paired differences over seeds (``replicates.json``): a claim
is stated only when its interval excludes zero, else "not resolved at N seeds". The sweep's
section tabulates natural and robust accuracy, gap and flatness against gamma with their
intervals over seeds (``sweep.json``) and embeds its two figures.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from figures.html import FigureBlock, Section, Table


def _fmt_values(values: Sequence[float]) -> str:
    return ", ".join(f"{v:.4g}" for v in values)


def _interval(low: float | None, high: float | None) -> str:
    return "–" if low is None or high is None else f"[{low:.4g}, {high:.4g}]"


def replicates_section(replicates: Mapping[str, Any]) -> Section:
    """The table of paired differences over seeds, and the pooled stratified correlation."""
    seeds = replicates.get("seeds", [])
    s = Section(f"Replicates: AT-AWP minus AT over {len(seeds)} seed(s)")
    s.paragraphs.append(
        "Every seed trains AT and AT-AWP from the same initialization and data order, so each "
        "measure is a paired difference (AT-AWP minus AT) per seed. The verdict uses the "
        "Student-t interval of the mean difference (the bootstrap interval over seeds is shown "
        "beside it); a claim whose interval contains zero is reported as not resolved, and "
        "with fewer than three seeds no interval is given."
    )
    rows = [
        {
            "measure": m["measure"],
            "seeds": ", ".join(map(str, m["seeds"])),
            "AT": _fmt_values(m["at"]),
            "AT-AWP": _fmt_values(m["awp"]),
            "mean AT-AWP minus AT": m["mean_diff"],
            f"{m['confidence']:.0%} t interval": _interval(m["t_low"], m["t_high"]),
            "bootstrap interval": _interval(m["boot_low"], m["boot_high"]),
            "resolved": m["t_low"] is not None and (m["t_low"] > 0 or m["t_high"] < 0),
        }
        for m in replicates.get("measures", [])
    ]
    s.tables.append(Table(rows, caption="Paired differences per measure"))
    pooled = replicates.get("pooled_correlation")
    if pooled:
        groups = {"all": pooled["all"], **pooled["by_method"]}
        s.paragraphs.append(
            f"Flatness ({pooled['x']} at alpha {pooled['alpha']:g}) against the robust gap over "
            f"the epoch checkpoints of every seed. Method: {pooled['all']['method']}."
        )
        s.tables.append(
            Table(
                [
                    {
                        "group": g,
                        "checkpoints": r["n"],
                        "within-seed pairs": r["pairs"],
                        "Kendall tau": r["tau"],
                        "p-value": r["pvalue"],
                    }
                    for g, r in groups.items()
                ],
                caption="Flatness vs gap, stratified by seed",
            )
        )
    return s


SWEEP_MEASURES = (
    "natural accuracy (last)",
    "robust accuracy (last)",
    "robust accuracy (best)",
    "robust gap (last)",
    "expected flatness (last)",
    "worst-case flatness (last)",
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
            for m in SWEEP_MEASURES:
                r = by.get((point, g, m))
                if r is not None:
                    found = True
                    row[m] = f"{r['mean']:.4g}" + (
                        f" {_interval(r['low'], r['high'])}" if r["low"] is not None else ""
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
                        f"{p['confidence']:.0%} t interval": _interval(p["t_low"], p["t_high"]),
                        "resolved": p["t_low"] is not None and (p["t_low"] > 0 or p["t_high"] < 0),
                    }
                    for p in pairs
                ],
                caption="AT-AWP (gamma) minus AT (gamma 0), paired by seed",
            )
        )
    for key, caption in (
        ("sweep_tradeoff", "Natural against PGD-20 accuracy per gamma (best and last checkpoint)."),
        ("sweep_gap_flatness", "Robust gap and expected / worst-case flatness against gamma."),
    ):
        if key in figures:
            s.figures.append(FigureBlock(figures[key].read_bytes(), caption, key))
    return s
