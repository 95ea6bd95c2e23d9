"""Expected and worst-case PAC-Bayes flatness of every checkpoint given, the sigma search and the
PAC-Bayes bound's terms.

Expected flatness E_u[rho(w+u)] - rho(w), with rho the robust 0-1 error and the attack
regenerated on every w+u, for several noise scales alpha (a curve); optionally the worst case
over ||v_l|| <= gamma ||w_l|| (``--worst-case``) and the largest alpha whose robust accuracy drop
is at most a target (``--sigma-search``).

    awp flatness runs/*/checkpoints/epoch_*.pt --alphas 0.1 --samples 10 --out runs/analysis/flat

Finished noise draws of every checkpoint live in ``<out>/flatness/<stem>-<sha8>/`` and are
skipped when run again; under torchrun they are split across ranks.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from analysis.config import BatchNormChoice, FlatnessConfig, PacBayesConfig, WorstCaseConfig
from analysis.sigma import SigmaSearchConfig
from awp_landscape.measures.base import (
    CheckpointMeasure,
    Context,
    FigureSpec,
    ReportSection,
    Size,
    SweepColumn,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from analysis.sigma import SigmaSearchResult
    from analysis.store import RunKeys
    from awp.data_config import DataConfig
    from awp_landscape.inputs import Loaded, Sources
    from awp_landscape.measures.runner import Entry
    from awp_landscape.results import Results
    from figures.html import Section


@dataclass(frozen=True)
class FlatnessRequest:
    """Everything ``awp flatness`` measures: the expected flatness, and optionally the worst
    case and the sigma search, with the PAC-Bayes bound's settings."""

    flatness: FlatnessConfig = FlatnessConfig()
    worst: WorstCaseConfig | None = None
    search: SigmaSearchConfig | None = None
    pacbayes: PacBayesConfig = PacBayesConfig()
    bn: BatchNormChoice = BatchNormChoice()


# Settings that only add or summarize a checkpoint's units (they are part of the unit keys, or
# only of the summary): its unit store's ignore list; every other one changes what a unit
# computes.
UNIT_MUTABLE = ("flatness.alphas", "flatness.samples", "flatness.confidence")

# The names of the expected-flatness measures over seeds, by alpha: the signed one and the
# absolute one (the rebuttal's, reviewer 4).
SIGNED = "expected flatness at alpha={alpha:g}"
ABSOLUTE = "expected absolute flatness at alpha={alpha:g}"

EXPECTED_COLUMNS = ("label", "noise", "alpha", "samples", "n", "base_error", "flatness")
EXPECTED_COLUMNS += ("flatness_low", "flatness_high", "flatness_loss", "abs_flatness")
EXPECTED_COLUMNS += ("abs_flatness_loss", "ci_note")
BOUND_COLUMNS = ("label", "alpha", "kl", "kl_rebuttal", "complexity_exact")
BOUND_COLUMNS += ("complexity_rebuttal", "bound_exact", "bound_rebuttal", "vacuous_exact")
BOUND_COLUMNS += ("vacuous_rebuttal",)
WORST_COLUMNS = ("label", "gamma", "ascent_steps", "n", "base_error", "worst_error")
WORST_COLUMNS += ("flatness", "flatness_loss")


def _expected(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if r.get("kind") == "expected"]


def _curve(rows: list[dict[str, Any]]) -> Figure | None:
    from figures.flatness import plot_flatness_curve

    exp = _expected(rows)
    return plot_flatness_curve(exp, measure="flatness_loss") if exp else None


def _abs_curve(rows: list[dict[str, Any]]) -> Figure | None:
    from figures.flatness import plot_flatness_curve

    exp = _expected(rows)
    if not exp or any(r.get("abs_flatness_loss") is None for r in exp):
        return None
    return plot_flatness_curve(exp, measure="abs_flatness_loss")


class Flatness(CheckpointMeasure):
    name = "flatness"
    heading = "expected and worst-case flatness, PAC-Bayes terms"
    command = "flatness"
    summary = "expected / worst-case PAC-Bayes flatness, sigma search, PAC-Bayes bound"
    description = (
        "E_u[rho(w+u)] - rho(w) with the attack regenerated on every w+u, for several alphas "
        "(a curve); optionally the worst case over ||v_l|| <= gamma ||w_l|| (--worst-case) and "
        "the largest alpha whose robust accuracy drop is <= a target (--sigma-search); with the "
        "PAC-Bayes bound's terms. Finished samples are kept in <out>/flatness/ and skipped when "
        "run again; under torchrun samples are split across ranks."
    )
    files = ("flatness_final/flatness.json", "flatness.json")
    config_type = FlatnessRequest
    units = "flatness"
    table_files = ("flatness.json", "flatness.csv")
    shard = "units"
    labelled = True
    # They add or summarize units (alphas, draws, the worst case's and the search's keys, the
    # bound): every other setting changes what a unit computes.
    resume_mutable = (*UNIT_MUTABLE, "worst", "search", "pacbayes")
    sizes = (
        Size("flatness_n", 200, "train images of the flatness estimates", FlatnessConfig,
             "n_examples", plans=("demo", "sweep"), reproduce=1000),
        Size("flatness_samples", 4, "noise draws per alpha of the expected flatness",
             FlatnessConfig, "samples", plans=("demo", "sweep"), reproduce=10),
        Size("worst_gamma", 0.01, "radius of the worst-case flatness", WorstCaseConfig, "gammas",
             plans=("demo", "sweep")),
        Size("worst_steps", 5, "ascent steps of the worst-case flatness", WorstCaseConfig,
             "ascent_steps", plans=("demo", "sweep")),
        Size("flatness_alphas", (0.05, 0.1, 0.2),
             "noise scales of the flatness curve (layer mode)", FlatnessConfig, "alphas"),
        Size("flatness_alpha", 0.1, "noise scale of the expected flatness (layer mode)",
             FlatnessConfig, "alphas", plans=("sweep",)),
    )  # fmt: skip
    figure_specs = (
        FigureSpec(
            "flatness_curve", _curve, "Expected flatness (robust loss increase) against alpha."
        ),
        FigureSpec(
            "abs_flatness_curve",
            _abs_curve,
            "Expected absolute flatness E|rho(w+u) - rho(w)| (robust loss) against alpha: "
            "beside the signed one, a draw that lowers the loss cannot cancel one that raises "
            "it.",
        ),
    )
    pipelines = ("demo", "sweep")
    sweep_columns = (
        SweepColumn("expected flatness (last)", reported=True),
        SweepColumn("worst-case flatness (last)", reported=True),
    )

    # -- the command line ---------------------------------------------------------------
    def add_flags(self, p: argparse.ArgumentParser) -> None:
        from awp_landscape.flags import add_dataclass_arguments

        add_dataclass_arguments(p, FlatnessConfig)
        p.add_argument("--worst-case", action="store_true", help="also measure worst-case flatness")
        add_dataclass_arguments(p.add_argument_group("worst case (--worst-case)"), WorstCaseConfig)
        p.add_argument("--sigma-search", action="store_true", help="also run the sigma search")
        add_dataclass_arguments(
            p.add_argument_group("sigma search (--sigma-search)"), SigmaSearchConfig
        )
        add_dataclass_arguments(p.add_argument_group("PAC-Bayes bound"), PacBayesConfig)
        add_dataclass_arguments(p.add_argument_group("BatchNorm at w+u"), BatchNormChoice)

    def config_from(self, args: argparse.Namespace) -> FlatnessRequest:
        from awp_landscape.flags import dataclass_from_arguments as read

        return FlatnessRequest(
            flatness=read(FlatnessConfig, args),
            worst=read(WorstCaseConfig, args) if args.worst_case else None,
            search=read(SigmaSearchConfig, args) if args.sigma_search else None,
            pacbayes=read(PacBayesConfig, args),
            bn=read(BatchNormChoice, args),
        )

    # -- one checkpoint -----------------------------------------------------------------
    def settings(self, cfg: FlatnessRequest, sources: Sources) -> dict[str, Any]:
        from awp.config import to_dict

        settings = {**to_dict(cfg), **sources.settings()}
        if cfg.bn.bn == "eval":  # the default: the settings of results that had no such choice
            del settings["bn"]
        return settings

    def compute(
        self, loaded: Loaded, cfg: FlatnessRequest, *, label: str, folder: Path, progress: bool
    ) -> dict[str, Any]:
        return flatness_for_checkpoint(loaded, cfg, folder=folder, label=label, progress=progress)

    def tables(self, entries: Sequence[Entry], cfg: FlatnessRequest, out: Path) -> dict[str, str]:
        from awp.io import csv_text, json_text

        rows = [r for e in entries for r in e.result["rows"]]
        return {"flatness.json": json_text({"rows": rows}), "flatness.csv": csv_text(rows)}

    def show(self, entries: Sequence[Entry], cfg: FlatnessRequest) -> None:
        _print_results([e.result for e in entries], cfg.flatness)

    def read(self, folder: Path) -> list[dict[str, Any]]:
        from awp_landscape.measures.base import json_table

        return json_table(folder, self.files, "rows")

    # -- the pipeline ---------------------------------------------------------------------
    def plan_config(self, plan: Any, alphas: tuple[float, ...], samples: int) -> FlatnessConfig:
        """The flatness settings of a plan at the given noise scales and draws."""
        from awp_landscape.measures.base import analysis_attack

        return FlatnessConfig(
            alphas=alphas, samples=samples, n_examples=plan.flatness_n, attack=analysis_attack(plan)
        )

    def alphas(self, ctx: Context) -> tuple[float, ...]:
        """The final checkpoints' noise scales: the demo's curve, or the sweep's one scale."""
        return (ctx.plan.flatness_alpha,) if ctx.sweep else tuple(ctx.plan.flatness_alphas)

    def run(self, ctx: Context) -> None:

        p = ctx.plan
        cfg = FlatnessRequest(
            flatness=self.plan_config(p, self.alphas(ctx), p.flatness_samples),
            worst=WorstCaseConfig(gammas=(p.worst_gamma,), ascent_steps=p.worst_steps),
        )
        self.run_on(ctx, cfg)

    def value(self, kind: str, key: str, value: float, column: str = "flatness_loss") -> Any:
        """A method's final-checkpoint flatness of one kind (expected at an alpha, worst at a
        gamma), by label."""

        def get(folder: Path, method: str) -> float | None:
            rows = [
                r
                for r in self.read_seed(folder)
                if r.get("kind") == kind and r.get("label") == method and r.get(key) == value
            ]
            return float(rows[0][column]) if rows and rows[0].get(column) is not None else None

        return get

    def over_seeds(self, plan: Any) -> list[tuple[str, Any]]:
        on = f"PGD-{plan.analysis_steps}, {plan.flatness_n} train images"
        alphas = tuple(plan.flatness_alphas)
        out: list[tuple[str, Any]] = [
            (f"{SIGNED.format(alpha=a)} (robust loss increase; {on})",
             self.value("expected", "alpha", a))
            for a in alphas
        ]  # fmt: skip
        out += [
            (f"{ABSOLUTE.format(alpha=a)} (mean |robust loss change|; {on})",
             self.value("expected", "alpha", a, "abs_flatness_loss"))
            for a in alphas
        ]  # fmt: skip
        out.append(
            (f"worst-case flatness at gamma={plan.worst_gamma:g} (robust loss increase; {on}, "
             f"{plan.worst_steps} ascent steps)", self.value("worst", "gamma", plan.worst_gamma))
        )  # fmt: skip
        return out

    def fold_over_seeds(
        self, measures: list[dict[str, Any]]
    ) -> tuple[list[dict[str, Any]], list[str]]:
        """Without the expected absolute flatness that equals the signed one for both methods
        (every noise draw raised the robust loss: E|d| = E d), and one sentence that says so
        instead of repeating those rows."""
        import math

        def alpha_of(name: str, template: str) -> str | None:
            head = template.split("{")[0]
            return name[len(head) :].split(" ", 1)[0] if name.startswith(head) else None

        signed = {alpha_of(m["measure"], SIGNED): m for m in measures}
        same = []
        for m in measures:
            alpha = alpha_of(m["measure"], ABSOLUTE)
            twin = signed.get(alpha) if alpha is not None else None
            if twin is not None and all(
                m.get(k) is not None
                and twin.get(k) is not None
                and math.isclose(m[k], twin[k], rel_tol=1e-9, abs_tol=1e-12)
                for k in ("mean_at", "mean_awp")
            ):
                same.append((alpha, m))
        if not same:
            return measures, []
        left = [m for m in measures if all(m is not s for _, s in same)]
        said = (
            "Expected absolute flatness (mean |robust loss change|) equals the expected "
            f"flatness at alpha={', '.join(a for a, _ in same)} for both methods: every noise "
            "draw raised the robust loss, so its rows are not repeated."
        )
        return left, [said]

    def sweep_values(self, folder: Path, label: str) -> dict[str, float | None]:
        rows = {r["kind"]: r for r in self.read_seed(folder) if r.get("label") == label}
        return {
            "expected flatness (last)": rows.get("expected", {}).get("flatness_loss"),
            "worst-case flatness (last)": rows.get("worst", {}).get("flatness_loss"),
        }

    # -- the report -----------------------------------------------------------------------
    def section(self, res: Results) -> Section:
        from figures.html import Section, Table

        s = Section("Flatness and the PAC-Bayes bound")
        exp = _expected(res[self.name])
        worst = [r for r in res[self.name] if r.get("kind") == "worst"]
        s.paragraphs.append(
            "Expected flatness E_u[rho(w+u)] - rho(w) with rho the robust 0-1 "
            "error (and robust loss), attacks regenerated on every w+u, and the absolute "
            "flatness E_u|rho(w+u) - rho(w)| (abs_flatness, the rebuttal's reviewer 4, question "
            "1) over the same draws; worst case: max over ||v_l|| <= gamma ||w_l|| by projected "
            "ascent."
        )
        if exp:
            undefined = "undefined (ci_note)"
            s.tables.append(
                Table(
                    exp,
                    columns=[
                        c
                        for c in EXPECTED_COLUMNS
                        if c != "ci_note" or any(r.get("ci_note") for r in exp)
                    ],
                    caption="Expected flatness (flatness_low/high: t interval over noise draws)",
                    missing={"flatness_low": undefined, "flatness_high": undefined, "ci_note": ""},
                )  # fmt: skip
            )
            s.tables.append(
                Table(
                    exp,
                    columns=BOUND_COLUMNS,
                    caption="PAC-Bayes terms (exact KL vs the rebuttal's 1/(2 alpha)); "
                    "vacuous = bound above 1",
                )
            )
            s.figures += self.figure_blocks(res)
        if worst:
            s.tables.append(Table(worst, columns=WORST_COLUMNS, caption="Worst-case flatness"))
        return s

    def sections(self) -> tuple[ReportSection, ...]:
        return (
            ReportSection(
                "Flatness",
                lambda r: r[self.name],
                self.section,
                "analysis/flatness_final/flatness.json (awp flatness)",
            ),
        )


# ----------------------------------------------------------------------------- one checkpoint
def flatness_for_checkpoint(
    loaded: Loaded,
    cfg: FlatnessRequest,
    *,
    folder: Path | None,
    label: str | None = None,
    progress: bool = False,
    compute: Any = None,
    loss: Any = None,
    bn_x: Any = None,
) -> dict[str, Any]:
    """Flatness of one checkpoint, resumable and sharded; its result (every rank).

    Finished units live in ``folder/samples.rank<r>.json`` (``folder`` None: nothing kept).
    ``compute`` replaces :func:`analysis.flatness_units.compute_unit` (tests count calls);
    ``loss`` and ``bn_x`` are its (the loss measured, and training inputs re-estimating
    BatchNorm statistics at every point).
    """
    from analysis.flatness_units import compute_unit, flatness_keys, result_rows
    from analysis.gap import subset
    from analysis.store import checkpoint_units
    from awp.modes import cpu_channels_last
    from awp.perturb import select_params

    flat, worst, search = cfg.flatness, cfg.worst, cfg.search
    split = loaded.data.train if flat.split == "train" else loaded.data.test
    x, y = subset(split, flat.n_examples, seed=flat.subset_seed, flag="--n-examples")
    if len(y) == 0:
        raise ValueError(f"the {flat.split} split of {loaded.data_cfg.dataset!r} is empty")
    ident = {**loaded.identity(), "label": label or loaded.identity()["method"]}
    settings = unit_settings(flat, loaded.data_cfg, loaded.sha256, len(split))
    from awp.modes import check_bn_recomputable

    if cfg.bn.bn == "recompute" and bn_x is None:  # the statistics belong to the point
        from awp.augment import as_float

        train = loaded.data.train
        bn_x = as_float(subset(train, cfg.bn.n_bn, seed=flat.subset_seed, flag="--n-bn")[0])
    if bn_x is not None:
        check_bn_recomputable(loaded.model, str(loaded.path))
        settings["bn"] = {"recompute": len(bn_x)}
    unit = compute or compute_unit

    def measure(run_keys: RunKeys) -> dict[str, Any]:
        records = run_keys(flatness_keys(flat, worst), f"{ident['label']}: samples")
        search_result = _sigma_search(search, records, flat, run_keys) if search else None
        rows = result_rows(
            records,
            cfg=flat,
            worst=worst,
            params=select_params(loaded.model, flat.params),
            n_bound=cfg.pacbayes.n_bound or len(loaded.data.train),
            delta=cfg.pacbayes.delta,
            ident=ident,
        )
        if search_result is not None:
            rows.append(_search_row(search_result, flat, ident))
        return {
            **ident,
            "settings": settings,
            "worst_case": dataclasses.asdict(worst) if worst is not None else None,
            "rows": rows,
            "sigma_search": dataclasses.asdict(search_result) if search_result else None,
        }

    # channels_last on the CPU: faster, the same numbers to float32 rounding (awp.modes)
    with cpu_channels_last(loaded.model):
        return checkpoint_units(
            folder,
            stores={"samples": settings},
            compute=lambda k: unit(loaded.model, x, y, k, cfg=flat, loss=loss, bn_x=bn_x),
            measure=measure,
            ignore=UNIT_MUTABLE,
            progress=progress,
        )


def unit_settings(
    cfg: FlatnessConfig, data_cfg: DataConfig, sha256: str, n_split: int
) -> dict[str, Any]:
    """What a checkpoint's stored units are computed under (:data:`UNIT_MUTABLE` may change)."""
    from awp.config import to_dict

    return {
        "checkpoint_sha256": sha256,
        "data": to_dict(data_cfg),
        "split_size": n_split,
        "flatness": to_dict(cfg),
    }


def _sigma_search(
    search: SigmaSearchConfig, records: dict[str, dict], cfg: FlatnessConfig, run_keys: RunKeys
) -> SigmaSearchResult:
    """Bisect alpha, computing (or reusing) the draws of every alpha it tries."""
    from analysis.flatness_units import flatness_keys, summarize
    from analysis.sigma import bisect_alpha

    def drop(alpha: float) -> float:
        keys = flatness_keys(cfg, None, alphas=[alpha])[1:]  # "base" is known
        recs = {"base": records["base"], **run_keys(keys, f"sigma search a={alpha:.4g}")}
        return summarize(recs, cfg=cfg, alphas=[alpha])[0][0].flatness

    return bisect_alpha(
        drop,
        target=search.target,
        low=search.alpha_low,
        high=search.alpha_high,
        depth=search.depth,
        tolerance=search.tolerance,
    )


def _search_row(
    result: SigmaSearchResult, cfg: FlatnessConfig, ident: dict[str, Any]
) -> dict[str, Any]:
    return {
        **ident,
        "kind": "sigma_search",
        "noise": cfg.noise,
        "params": cfg.params,
        "split": cfg.split,
        "per_example": cfg.per_example,
        "attack": cfg.attack.describe() if cfg.attack is not None else "none",
        "alpha": result.alpha,
        "drop": result.drop,
        "target": result.target,
        "converged": result.converged,
    }


def _interval(row: dict[str, Any]) -> str:
    """The flatness interval, or why it is undefined (fewer than 3 draws, all draws equal)."""
    low, high = row.get("flatness_low"), row.get("flatness_high")
    if low is None or high is None or not (math.isfinite(low) and math.isfinite(high)):
        return row.get("ci_note") or "undefined"
    return f"[{low:.4f}, {high:.4f}] ({row.get('ci_method', 't')})"


def _print_results(results: list[dict[str, Any]], cfg: FlatnessConfig) -> None:
    from awp_landscape.console import format_table, say

    rows = [r for res in results for r in res["rows"]]
    say(
        f"expected flatness ({cfg.noise} noise, M={cfg.samples}, {cfg.split} "
        f"n={'/'.join(dict.fromkeys(str(r.get('n')) for r in rows)) or 'none'}, "
        f"{cfg.attack.describe() + ' regenerated on every w+u' if cfg.attack else 'clean loss'})"
    )
    say(
        format_table(
            [
                {
                    "label": r["label"],
                    "alpha": r["alpha"],
                    "rho(w)": r["base_error"],
                    "E rho(w+u)": r["mean_error"],
                    "flatness": r["flatness"],
                    "ci": _interval(r),
                    "flat. loss": r["flatness_loss"],
                    "bound": r["bound_exact"],
                    "vacuous": r["vacuous_exact"],
                }
                for r in _expected(rows)
            ]
        )
    )
    worst = [
        {
            "label": r["label"],
            "gamma": r["gamma"],
            "rho(w)": r["base_error"],
            "rho(w+v)": r["worst_error"],
            "worst flatness": r["flatness"],
            "flat. loss": r["flatness_loss"],
        }
        for r in rows
        if r["kind"] == "worst"
    ]
    if worst:
        say("\nworst-case flatness (projected ascent on v jointly with the attack)")
        say(format_table(worst))
    for res in results:
        s = res["sigma_search"]
        if s is not None:
            note = "" if s["converged"] else " (not converged: widen the bracket or the depth)"
            say(
                f"sigma search {res['label']}: alpha = {s['alpha']:.5g}, drop {s['drop']:.4f}"
                f" (target {s['target']})" + note
            )


MEASURE = Flatness()
