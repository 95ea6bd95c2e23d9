"""``awp hessian``: top Hessian eigenvalues, trace, eigenvalue density and per-layer curvature.

PyHessian's measures for the loss of each checkpoint on a fixed seeded subset, with x_adv
crafted at w and held fixed (``--loss adv``: the robust loss's gradient by Danskin's theorem,
not its full curvature) or the clean loss. Finished units (each eigen-solve, Hutchinson probe,
SLQ run and layer block) of every checkpoint live in ``<out>/hessian/<stem>-<sha8>/`` and are
skipped when run again with the same settings. Under torchrun every rank computes every unit
together: each sums the Hessian-vector products of its share of the batches, all-reduced.

    awp hessian runs/at/checkpoints/last.pt runs/at_awp/checkpoints/last.pt --labels AT AT-AWP \\
        --top-k 5 --trace --density --n-examples 1000 --out runs/analysis/curvature
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from analysis.curvature import HessianConfig, HessianProblem, compute_unit, hessian_records
from analysis.curvature_results import curvature_statement, summarize
from analysis.gap import subset
from analysis.store import RunKeys, checkpoint_units
from awp import distributed
from awp.config import to_dict
from awp.data import DataConfig
from awp.io import atomic_write_set, csv_text, json_text
from awp.progress import progress_bar
from awp_landscape.commands.common import current_results, out_folder
from awp_landscape.commands.hessian_parser import register as register
from awp_landscape.console import format_table, say
from awp_landscape.flags import dataclass_from_arguments
from awp_landscape.inputs import (
    Loaded,
    Sources,
    each_checkpoint,
)

# Settings that only add or summarize units (they are part of the unit keys, or only of the
# summary): the store's ignore list, checked by awp.config.check_same_settings; every other
# one changes what a unit computes.
RESUME_MUTABLE = tuple(
    f"hessian.{name}"
    for name in (
        "top_k",
        "eig_tol",
        "lanczos_vectors",
        "trace",
        "probes_min",
        "probes_max",
        "trace_rel_tol",
        "density",
        "slq_runs",
        "slq_steps",
        "slq_sigma",
        "per_layer",
        "power",
        "confidence",
    )
)


def _settings(cfg: HessianConfig, data_cfg: DataConfig | None, sha: str, n_split: int) -> dict:
    """What the stored units are computed under (:data:`RESUME_MUTABLE` may change)."""
    return {
        "checkpoint_sha256": sha,
        "data": to_dict(data_cfg) if data_cfg is not None else None,
        "split_size": n_split,
        "hessian": to_dict(cfg),
    }


def hessian_for_checkpoint(
    loaded: Loaded,
    *,
    cfg: HessianConfig,
    out: Path,
    label: str | None = None,
    progress: bool = False,
    compute: Callable[[HessianProblem, str], dict] | None = None,
) -> dict[str, Any]:
    """The curvature of one checkpoint, resumable and sharded; its result (on every rank).

    Finished units live in ``out/hessian/<stem>-<sha8>/samples.rank0.json`` (written by the
    main rank); the result is written there as ``result.json``. The model is cast to
    ``cfg.dtype`` in place. ``compute`` replaces :func:`analysis.curvature.compute_unit` (tests
    count calls).
    """
    ctx = distributed.current()
    assert loaded.data is not None
    split = loaded.data.train if cfg.split == "train" else loaded.data.test
    x, y = subset(split, cfg.n_examples, seed=cfg.subset_seed, flag="--n-examples")
    if len(y) == 0:
        raise ValueError(f"the {cfg.split} split of {loaded.data_cfg.dataset!r} is empty")
    model = loaded.model.to(cfg.torch_dtype)
    ident = {**loaded.identity(), "label": label or loaded.identity()["method"]}
    settings = _settings(cfg, loaded.data_cfg, loaded.sha256, len(split))
    # Units can be long (an eigen-solve is tens of products): a second bar counts products.
    bar = progress_bar(
        desc=f"{ident['label']}: Hessian-vector products", unit="HVP", enabled=progress
    )
    problem = HessianProblem(
        model, x, y, cfg, rank=ctx.rank, world=ctx.world, on_product=lambda: bar.update(1)
    )
    unit = compute or compute_unit

    def measure(run_keys: RunKeys) -> dict[str, Any]:
        with bar:
            records = hessian_records(problem, run_keys, label=ident["label"])
        return {**summarize(records, cfg, ident), "settings": settings}

    return checkpoint_units(
        out / "hessian" / f"{loaded.path.stem}-{loaded.sha256[:8]}",
        stores={"samples": settings},
        compute=lambda k: unit(problem, k),
        measure=measure,
        ignore=RESUME_MUTABLE,
        progress=progress,
        collective=True,
    )


def collect_results(out: Path) -> list[dict[str, Any]]:
    """Every checkpoint's ``result.json`` under ``out/hessian`` (see :func:`current_results`)."""
    return current_results(out / "hessian", what="hessian")


def measure_hessian(
    checkpoints: Sequence[Path],
    cfg: HessianConfig,
    *,
    out: Path,
    labels: Sequence[str] | None = None,
    sources: Sources = Sources(),
    figures: bool = True,
) -> list[dict[str, Any]]:
    """``awp hessian`` as a function: each checkpoint's result; ``hessian.json``/``.csv`` (and
    the figures) in ``out`` hold every checkpoint measured there."""

    def measure(loaded: Loaded, label: str, show: bool) -> dict[str, Any]:
        return hessian_for_checkpoint(loaded, cfg=cfg, out=out, label=label, progress=show)

    def finish(results: list[dict[str, Any]]) -> None:
        _print_results(results, cfg)
        write_tables(out, figures=figures)

    names = ("hessian.json", "hessian.csv", "hessian_layers.csv")
    return each_checkpoint(
        checkpoints,
        measure,
        out=out,
        lock="hessian",
        cleans=[out / "hessian", *(out / n for n in names)],
        sources=sources,
        labels=labels,
        finish=finish,
    )


def write_tables(out: Path, *, figures: bool) -> list[Path]:
    """hessian.json (rows, layer rows, full results), hessian.csv, hessian_layers.csv and the
    figures, from every result in ``out/hessian``."""
    results = collect_results(out)
    rows = [r["row"] for r in results]
    layers = [
        {**{k: r["row"][k] for k in ("sha256", "label", "method", "epoch")}, **layer}
        for r in results
        for layer in r["layers"]
    ]
    written = atomic_write_set(
        {
            out / "hessian.json": json_text({"rows": rows, "layers": layers, "results": results}),
            out / "hessian.csv": csv_text(rows),
            out / "hessian_layers.csv": csv_text(layers),
        }
    )
    if figures and results:
        written += draw_figures(results, out)
    say(f"results: {out} ({', '.join(p.name for p in written)})")
    return written


def draw_figures(results: list[dict[str, Any]], out: Path) -> list[Path]:
    """The density overlay, the top-k eigenvalues and the per-layer curvature, where measured."""
    # matplotlib is imported only when a figure is drawn: `awp` starts without it.
    from figures.hessian import plot_eigen_density, plot_layer_curvature, plot_top_eigenvalues
    from figures.style import save_figure

    written: list[Path] = []
    if any(r.get("density") for r in results):
        written += save_figure(plot_eigen_density(results), out / "hessian_density")
    if any(len(r.get("eigenvalues") or ()) > 1 for r in results):  # one value: see the table
        written += save_figure(plot_top_eigenvalues(results), out / "hessian_eigenvalues")
    measured = ("trace", "top_eigenvalue")
    if any(x.get(m) is not None for r in results for x in r["layers"] for m in measured):
        written += save_figure(plot_layer_curvature(results), out / "hessian_layers")
    return written


def run(args: argparse.Namespace) -> int:
    """Measure, print the table, write hessian.json/.csv and the figures."""
    measure_hessian(
        args.checkpoints,
        dataclass_from_arguments(HessianConfig, args),
        out=out_folder(args.out, args.checkpoints),
        labels=args.labels,
        sources=Sources.from_args(args),
        figures=not args.no_figures,
    )
    return 0


def _sizes(results: list[dict[str, Any]]) -> str:
    """The subset sizes measured (the request capped to each split)."""
    return "/".join(dict.fromkeys(str(r["row"]["n"]) for r in results)) or "none"


def _print_results(results: list[dict[str, Any]], cfg: HessianConfig) -> None:
    loss = f"loss at x_adv fixed ({cfg.attack.describe()})" if cfg.loss == "adv" else "clean loss"
    say(
        f"Hessian of the {loss}, {cfg.split} n={_sizes(results)}, {cfg.params} "
        f"({cfg.dtype}, {cfg.method} products)"
    )
    table = []
    for res in results:
        r = res["row"]
        row: dict[str, Any] = {"label": r["label"], "loss": r["loss"], "acc": r["accuracy"]}
        for j, v in enumerate(res["eigenvalues"]):
            row[f"lambda_{j + 1}"] = v
        if r.get("trace") is not None:
            row["trace"] = r["trace"]
            row["ci"] = f"[{r['trace_low']:.4g}, {r['trace_high']:.4g}]"
            row["probes"] = r["trace_probes"]
        if r.get("slq_runs"):
            row["slq trace"] = r["slq_trace"]
        if r.get("power_top_eigenvalue") is not None:
            row["power lambda_1"] = r["power_top_eigenvalue"]
            row["power HVPs"] = r["power_hvps"]
        row["HVPs"] = r["hvps"]
        table.append(row)
    say(format_table(table))
    for sentence in curvature_statement([res["row"] for res in results]):
        say(sentence)
