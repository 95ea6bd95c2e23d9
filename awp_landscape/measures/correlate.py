"""A flatness measure against the robust gap across checkpoints: result tables joined on the
checkpoint's sha256, Kendall tau-b, Spearman and Pearson with p-values and intervals (the union
of a percentile bootstrap and the analytic Fisher-z interval), pooled and per method, and a
scatter figure.

    awp correlate runs/analysis/flat/flatness.json runs/analysis/gap.json \\
        --where alpha=0.1 --where kind=expected --out runs/analysis

The demo correlates every epoch checkpoint's expected flatness with its gap
(``analysis/correlation.json``).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from awp_landscape.measures.base import Context, Measure, ReportSection

if TYPE_CHECKING:
    from awp_landscape.results import Results
    from figures.html import Section

FILE = "correlation.json"


class Correlate(Measure):
    name = "correlate"
    heading = "flatness versus gap"
    command = "correlate"
    summary = "correlate a flatness measure with the robust gap across checkpoints"
    files = (FILE,)

    # -- the command line ---------------------------------------------------------------
    def register(self, sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
        from awp.config import parse_number
        from awp_landscape.flags import add_bounded_argument, deprecated_alias, in_range, integer

        p = self.parser(
            sub,
            "Join result tables (flatness.json, gap.json, or CSV) on the checkpoint's sha256 "
            "and report Kendall tau-b, Spearman and Pearson between two columns, with p-values "
            "and intervals (the union of a percentile bootstrap and the analytic Fisher-z "
            "interval, both printed), pooled and per method; and a scatter figure.",
        )
        p.add_argument("tables", nargs="+", type=Path, help="result tables (.json or .csv)")
        p.add_argument("--x", default="flatness", help="column on x (default: flatness)")
        p.add_argument("--y", default="gap", help="column on y (default: gap)")
        p.add_argument(
            "--where",
            action="append",
            default=[],
            metavar="COL=VALUE",
            help="keep rows whose COL equals VALUE (tables without COL are not filtered), "
            "e.g. --where kind=expected --where alpha=0.1; repeatable",
        )
        p.add_argument("--by", default="method", help="grouping column (default: method)")
        add_bounded_argument(
            p,
            "--n-boot",
            type=integer,
            bounds=(0, 1_000_000),
            why="every resample recomputes every correlation",
            default=1000,
            help="bootstrap resamples (0 = no bootstrap interval) (default: 1000)",
        )
        add_bounded_argument(
            p,
            "--confidence",
            type=parse_number,
            bounds=(0, 1),
            default=0.95,
            help="interval level, strictly between 0 and 1 (default: 0.95)",
        )
        add_bounded_argument(
            p,
            "--bootstrap-seed",
            type=integer,
            bounds=(0, None),
            default=0,
            help="seed of the bootstrap resamples (default: 0)",
        )
        deprecated_alias(p, "--seed", "--bootstrap-seed", type=in_range(integer, (0, None)))
        p.add_argument("--no-figures", action="store_true", help="only tables, no PNG/PDF")
        p.add_argument(
            "--out", type=Path, default=None, help="results folder (default: the first table's)"
        )
        return p

    def run_command(self, args: argparse.Namespace) -> int:
        correlate_tables(
            args.tables,
            x=args.x,
            y=args.y,
            where=args.where,
            by=args.by,
            n_boot=args.n_boot,
            confidence=args.confidence,
            seed=args.bootstrap_seed,
            out=args.out,
            figures=not args.no_figures,
        )
        return 0

    # -- the pipeline ---------------------------------------------------------------------
    def run(self, ctx: Context) -> None:
        from awp_landscape.measures import flatness_epochs, gap

        n = len(ctx.epoch_ckpts())
        if n < 3:
            ctx.log(f"skipped: a correlation needs at least 3 checkpoints, these runs have {n}")
            return
        correlate_tables(
            [flatness_epochs.MEASURE.path(ctx), gap.MEASURE.path(ctx)],
            x="flatness_loss",
            where=[f"alpha={ctx.plan.correlate_alpha}", "kind=expected"],
            out=self.path(ctx).parent,
        )

    def read(self, folder: Path) -> dict[str, Any]:
        from awp_landscape.measures.base import json_table

        return json_table(folder, self.files)

    def figures_of(self, folder: Path) -> dict[str, Path]:
        scatter = sorted(folder.glob("*_vs_gap.png"))
        return {"vs_gap": scatter[0]} if scatter else {}

    def tau(self, folder: Path, method: str) -> float | None:
        for c in self.read_seed(folder).get("correlations", []):
            if c["group"] == method and c["measure"] == "kendall" and c["statistic"] is not None:
                return float(c["statistic"])
        return None

    def over_seeds(self, plan: Any) -> list[tuple[str, Any]]:
        return [("Kendall tau of flatness vs gap within the method", self.tau)]

    # -- the report -----------------------------------------------------------------------
    def section(self, res: Results) -> Section:
        from figures.html import FigureBlock, Section, Table

        c = res[self.name]
        s = Section("Flatness versus the robust gap")
        s.paragraphs.append(
            f"Across checkpoints: x = {c.get('x')} ({', '.join(c.get('where', []))}), "
            f"y = {c.get('y')}."
        )
        s.tables.append(
            Table(
                c.get("correlations", []),
                columns=[
                    "group",
                    "measure",
                    "n",
                    "statistic",
                    "pvalue",
                    "ci_low",
                    "ci_high",
                    "note",
                ],
                caption="Correlations with bootstrap intervals",
            )  # fmt: skip
        )
        if "vs_gap" in res.figures:
            s.figures.append(
                FigureBlock(
                    res.figures["vs_gap"].read_bytes(),
                    "Flatness against gap, one point per checkpoint, coloured by method, with "
                    "fitted lines.",
                    "flatness vs gap",
                )
            )
        return s

    def sections(self) -> tuple[ReportSection, ...]:
        return (
            ReportSection(
                "Flatness versus the robust gap",
                lambda r: r[self.name],
                self.section,
                "analysis/correlation.json (awp correlate)",
            ),
        )


def correlate_tables(
    tables: list[Path],
    *,
    x: str = "flatness",
    y: str = "gap",
    where: list[str] | None = None,
    by: str = "method",
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    out: Path | None = None,
    figures: bool = True,
) -> dict[str, Any]:
    """``awp correlate`` as a function: correlation.json/.csv and the scatter in ``out``; what
    correlation.json holds. The same rows and settings as the correlation.json in ``out``
    (its ``inputs``: their sha256) reuse it: nothing is computed or drawn again."""
    import hashlib

    from analysis.correlate import correlate_records, fit_line
    from analysis.tables import IDENTITY, join_tables, read_table
    from awp.io import atomic_write_set, csv_text, exclusive_output, json_text, read_json
    from awp_landscape.console import CLIError, format_table, say
    from awp_landscape.inputs import rows_of

    where = list(where or [])
    out = out or tables[0].resolve().parent
    names = ("correlation.json", "correlation.csv")
    with exclusive_output(out / names[0], cleans=[out / n for n in names]):
        rows = join_tables([(p.stem, read_table(p)) for p in tables], where)
        if len(rows) < 3:
            raise CLIError(
                f"{len(rows)} checkpoint(s) left after joining "
                f"{', '.join(p.name for p in tables)} with filters {where or 'none'}: "
                "correlations need at least 3"
            )
        for col in (x, y):
            if col not in rows[0]:
                raise CLIError(f"no column {col!r}; columns are {sorted(rows[0])}")
        settings = {"x": x, "y": y, "by": by, "n_boot": n_boot, "confidence": confidence,
                    "seed": seed, "rows": rows}  # fmt: skip
        inputs = hashlib.sha256(json_text(settings).encode()).hexdigest()
        saved = out / "correlation.json"
        drawn = not figures or (out / f"{x}_vs_{y}.png").is_file()
        if saved.is_file() and (out / "correlation.csv").is_file() and drawn:
            try:
                before = read_json(saved)
            except ValueError:
                before = {}
            if before.get("inputs") == inputs and before.get("tables") == [str(p) for p in tables]:
                say(f"{y} against {x}: {len(rows)} checkpoints, already correlated in {saved}")
                return before
        cors = correlate_records(
            rows, x=x, y=y, by=by, n_boot=n_boot, confidence=confidence, seed=seed
        )
        cor_rows = rows_of(cors)
        say(f"{y} against {x}: {len(rows)} checkpoints")
        say(format_table([_printed(c) for c in cor_rows]))
        methods = {c["measure"]: c["ci_method"] for c in cor_rows if c["ci_method"]}
        for measure, method in methods.items():
            say(f"{measure} CI: {method}")
        fit = fit_line([r[x] for r in rows], [r[y] for r in rows])
        keep = [*IDENTITY, x, y, by]
        points = [{k: r[k] for k in dict.fromkeys(keep) if k in r} for r in rows]
        result = {
            "tables": [str(p) for p in tables],
            "inputs": inputs,
            "where": where,
            "x": x,
            "y": y,
            "by": by,
            "fit": dataclasses.asdict(fit),
            "correlations": cor_rows,
            "points": points,
        }
        written = atomic_write_set(
            {
                out / "correlation.json": json_text(result),
                out / "correlation.csv": csv_text(cor_rows),
            }
        )
        if figures:
            # matplotlib is imported only when a figure is drawn: `awp` starts without it.
            from figures.flatness import plot_flatness_vs_gap
            from figures.style import save_figure

            fig = plot_flatness_vs_gap(rows, x=x, y=y, by=by, correlations=cors)
            written += save_figure(fig, out / f"{x}_vs_{y}")
        say(f"results: {out} ({', '.join(p.name for p in written)})")
        return result


def _printed(c: dict[str, Any]) -> dict[str, Any]:
    return {
        "group": c["group"],
        "measure": c["measure"],
        "n": c["n"],
        "statistic": c["note"] or c["statistic"],
        "p-value": "" if c["note"] else c["pvalue"],
        f"{c['confidence']:.0%} CI": "" if c["note"] else _interval(c, "ci"),
        "bootstrap": "" if c["note"] else _interval(c, "boot"),
        "analytic": "" if c["note"] else _interval(c, "analytic"),
        "warning": c["warning"],
    }


def _interval(c: dict[str, Any], prefix: str) -> str:
    low, high = c[f"{prefix}_low"], c[f"{prefix}_high"]
    if low is None or high is None or not (math.isfinite(low) and math.isfinite(high)):
        return "none (resamples undefined)" if prefix == "boot" else "undefined"
    return f"[{low:.3f}, {high:.3f}]"


MEASURE = Correlate()
