"""The report's section over seeds.

A replicated demo's outcome is its paired differences over seeds (``replicates.json``): a claim
is stated only when its interval excludes zero, else "not resolved at N seeds".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from figures.html import FigureBlock, Section, Table
from figures.replicates import plot_paired_differences


def _fmt_values(values: Sequence[float]) -> str:
    return ", ".join(f"{v:.4g}" for v in values)


def interval(low: float | None, high: float | None) -> str:
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
            f"{m['confidence']:.0%} t interval": interval(m["t_low"], m["t_high"]),
            "bootstrap interval": interval(m["boot_low"], m["boot_high"]),
            "resolved": m["t_low"] is not None and (m["t_low"] > 0 or m["t_high"] < 0),
        }
        for m in replicates.get("measures", [])
    ]
    s.tables.append(Table(rows, caption="Paired differences per measure"))
    if replicates.get("measures"):
        s.figures.append(
            FigureBlock.from_figure(
                plot_paired_differences(replicates["measures"]),
                "AT-AWP minus AT per seed (points), their mean (diamond) and 95% t interval "
                "(line), one panel per measure; dotted: zero.",
                "paired differences per seed",
            )
        )
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
