"""``awp flatness``: expected and worst-case PAC-Bayes flatness, sigma search, bound terms.

Finished units of every checkpoint live in ``<out>/flatness/<stem>-<sha8>/`` and are skipped
when run again with the same settings; under torchrun the units are split across ranks.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from analysis.flatness import FlatnessConfig
from analysis.flatness_units import compute_unit, flatness_keys, result_rows, summarize
from analysis.gap import subset
from analysis.pacbayes import PacBayesConfig
from analysis.sigma import SigmaSearchConfig, SigmaSearchResult, bisect_alpha
from analysis.store import RunKeys, checkpoint_units
from analysis.worst_case import WorstCaseConfig
from awp.config import to_dict
from awp.data import DataConfig
from awp.io import atomic_write_set, csv_text, json_text
from awp.modes import cpu_channels_last
from awp.perturb import select_params
from awp_landscape.commands.common import current_results, out_folder
from awp_landscape.commands.flatness_parser import register as register
from awp_landscape.console import format_table, say
from awp_landscape.flags import dataclass_from_arguments
from awp_landscape.inputs import (
    Loaded,
    Sources,
    each_checkpoint,
)

# Settings that only add or summarize units (the store's ignore list, checked by
# awp.config.check_same_settings); every other one changes what a unit computes.
RESUME_MUTABLE = ("flatness.alphas", "flatness.samples", "flatness.confidence")


def _settings(cfg: FlatnessConfig, data_cfg: DataConfig, sha: str, n_split: int) -> dict:
    """What the stored units are computed under. Alphas, M and the worst-case settings are
    part of the unit keys (and the confidence only of the summary), so a run with other ones
    reuses the finished units (:data:`RESUME_MUTABLE`)."""
    return {
        "checkpoint_sha256": sha,
        "data": to_dict(data_cfg),
        "split_size": n_split,
        "flatness": to_dict(cfg),
    }


def flatness_for_checkpoint(
    loaded: Loaded,
    *,
    cfg: FlatnessConfig,
    worst: WorstCaseConfig | None = None,
    search: SigmaSearchConfig | None = None,
    pacbayes: PacBayesConfig | None = None,
    out: Path,
    label: str | None = None,
    progress: bool = False,
    compute: Callable[..., dict] | None = None,
) -> dict[str, Any]:
    """Flatness of one checkpoint, resumable and sharded; returns its result (every rank).

    Finished units live in ``out/flatness/<stem>-<sha8>/samples.rank<r>.json``; the result
    (rows per alpha and per gamma, sigma search) is written there as ``result.json`` by the
    main rank. ``compute`` replaces :func:`analysis.flatness_units.compute_unit` (tests count
    calls).
    """
    pacbayes = pacbayes or PacBayesConfig()
    split = loaded.data.train if cfg.split == "train" else loaded.data.test
    x, y = subset(split, cfg.n_examples, seed=cfg.subset_seed, flag="--n-examples")
    if len(y) == 0:
        raise ValueError(f"the {cfg.split} split of {loaded.data_cfg.dataset!r} is empty")
    ident = {**loaded.identity(), "label": label or loaded.identity()["method"]}
    settings = _settings(cfg, loaded.data_cfg, loaded.sha256, len(split))
    unit = compute or compute_unit

    def measure(run_keys: RunKeys) -> dict[str, Any]:
        records = run_keys(flatness_keys(cfg, worst), f"{ident['label']}: samples")
        search_result = _sigma_search(search, records, cfg, run_keys) if search else None
        rows = result_rows(
            records,
            cfg=cfg,
            worst=worst,
            params=select_params(loaded.model, cfg.params),
            n_bound=pacbayes.n_bound or len(loaded.data.train),
            delta=pacbayes.delta,
            ident=ident,
        )
        if search_result is not None:
            rows.append(_search_row(search_result, cfg, ident))
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
            out / "flatness" / f"{loaded.path.stem}-{loaded.sha256[:8]}",
            stores={"samples": settings},
            compute=lambda k: unit(loaded.model, x, y, k, cfg=cfg),
            measure=measure,
            ignore=RESUME_MUTABLE,
            progress=progress,
        )


def _sigma_search(
    search: SigmaSearchConfig,
    records: dict[str, dict],
    cfg: FlatnessConfig,
    run_keys: RunKeys,
) -> SigmaSearchResult:
    """Bisect alpha, computing (or reusing) the draws of every alpha it tries."""

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
        "attack": cfg.attack.describe(),
        "alpha": result.alpha,
        "drop": result.drop,
        "target": result.target,
        "converged": result.converged,
    }


def collect_results(out: Path) -> list[dict[str, Any]]:
    """Every row of every checkpoint's ``result.json`` under ``out/flatness``."""
    return [r for res in current_results(out / "flatness", what="flatness") for r in res["rows"]]


def measure_flatness(
    checkpoints: Sequence[Path],
    cfg: FlatnessConfig,
    *,
    out: Path,
    labels: Sequence[str] | None = None,
    worst: WorstCaseConfig | None = None,
    search: SigmaSearchConfig | None = None,
    pacbayes: PacBayesConfig | None = None,
    sources: Sources = Sources(),
    figures: bool = True,
) -> list[dict[str, Any]]:
    """``awp flatness`` as a function: each checkpoint's result; ``flatness.json``/``.csv``
    (and the curve figure) in ``out`` hold every checkpoint measured there."""

    def measure(loaded: Loaded, label: str, show: bool) -> dict[str, Any]:
        return flatness_for_checkpoint(
            loaded,
            cfg=cfg,
            worst=worst,
            search=search,
            pacbayes=pacbayes,
            out=out,
            label=label,
            progress=show,
        )

    def finish(results: list[dict[str, Any]]) -> None:
        _print_results(results, cfg)
        _write_tables(out, figures=figures)

    tables = [out / "flatness", out / "flatness.json", out / "flatness.csv"]
    return each_checkpoint(
        checkpoints,
        measure,
        out=out,
        lock="flatness",
        cleans=tables,
        sources=sources,
        labels=labels,
        finish=finish,
    )


def _write_tables(out: Path, *, figures: bool) -> None:
    rows = collect_results(out)
    written = atomic_write_set(
        {out / "flatness.json": json_text({"rows": rows}), out / "flatness.csv": csv_text(rows)}
    )
    curve = [r for r in rows if r["kind"] == "expected"]
    if figures and curve:
        # matplotlib is imported only when a figure is drawn: `awp` starts without it.
        from figures.flatness import plot_flatness_curve
        from figures.style import save_figure

        written += save_figure(plot_flatness_curve(curve), out / "flatness_curve")
    say(f"results: {out} ({', '.join(p.name for p in written)})")


def run(args: argparse.Namespace) -> int:
    """Measure, print the tables, write flatness.json/.csv and the curve."""
    cfg = dataclass_from_arguments(FlatnessConfig, args)
    measure_flatness(
        args.checkpoints,
        cfg,
        out=out_folder(args.out, args.checkpoints),
        labels=args.labels,
        worst=dataclass_from_arguments(WorstCaseConfig, args) if args.worst_case else None,
        search=dataclass_from_arguments(SigmaSearchConfig, args) if args.sigma_search else None,
        pacbayes=dataclass_from_arguments(PacBayesConfig, args),
        sources=Sources.from_args(args),
        figures=not args.no_figures,
    )
    return 0


def _interval(row: dict[str, Any]) -> str:
    """The flatness interval, or why it is undefined (fewer than 3 draws, all draws equal)."""
    low, high = row.get("flatness_low"), row.get("flatness_high")
    if low is None or high is None or not (math.isfinite(low) and math.isfinite(high)):
        return row.get("ci_note") or "undefined"
    return f"[{low:.4f}, {high:.4f}] ({row.get('ci_method', 't')})"


def _print_results(results: list[dict[str, Any]], cfg: FlatnessConfig) -> None:
    rows = [r for res in results for r in res["rows"]]
    say(
        f"expected flatness ({cfg.noise} noise, M={cfg.samples}, {cfg.split} "
        f"n={'/'.join(dict.fromkeys(str(r.get('n')) for r in rows)) or 'none'}, "
        f"{cfg.attack.describe()} regenerated on every w+u)"
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
                for r in rows
                if r["kind"] == "expected"
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
                f" (target {s['target']}){note}"
            )
