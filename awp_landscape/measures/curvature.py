"""The curvature of the loss of every checkpoint given: top Hessian eigenvalues, trace,
eigenvalue density and per-layer curvature (PyHessian's measures).

The Hessian of the mean loss over a fixed seeded subset, with x_adv crafted at w and held fixed
(``--loss adv``: the robust loss's gradient by Danskin's theorem, not its full curvature) or the
clean loss.

    awp curvature runs/at/checkpoints/last.pt runs/at_awp/checkpoints/last.pt --labels AT AT-AWP \\
        --top-k 5 --trace --density --n-examples 1000 --out runs/analysis/curvature

Finished units (each eigen-solve, Hutchinson probe, SLQ run and layer block) of every checkpoint
live in ``<out>/curvature/<stem>-<sha8>/`` and are skipped when run again with the same settings.
Under torchrun every rank computes every unit together: each sums the Hessian-vector products of
its share of the batches, all-reduced. ``awp hessian`` is this command's earlier name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from analysis.config import HessianConfig
from awp_landscape.measures.base import (
    CheckpointMeasure,
    Context,
    FigureSpec,
    ReportSection,
    Size,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from awp.data_config import DataConfig
    from awp_landscape.inputs import Loaded
    from awp_landscape.measures.runner import Entry
    from awp_landscape.results import Results
    from figures.html import Section

# Settings that only add or summarize a checkpoint's units (they are part of the unit keys, or
# only of the summary): every other one changes what a unit computes.
SUMMARY_FIELDS = ("top_k", "eig_tol", "lanczos_vectors", "trace", "probes_min", "probes_max",
                  "trace_rel_tol", "density", "slq_runs", "slq_steps", "slq_sigma", "per_layer",
                  "power", "confidence")  # fmt: skip
#: The unit store's ignore list (its settings keep the config under ``hessian``).
UNIT_MUTABLE = tuple(f"hessian.{name}" for name in SUMMARY_FIELDS)

COLUMNS = ("label", "n", "loss", "accuracy", "top_eigenvalue", "eigenvalue_2", "trace")
COLUMNS += ("trace_low", "trace_high", "trace_probes", "slq_trace", "hvps")


def _results(data: dict[str, Any]) -> list[dict[str, Any]]:
    return data.get("results", []) if isinstance(data, dict) else list(data)


def _density(data: Any) -> Figure | None:
    from figures.hessian import plot_eigen_density

    found = _results(data)
    return plot_eigen_density(found) if any(r.get("density") for r in found) else None


def _top(data: Any) -> Figure | None:
    from figures.hessian import plot_top_eigenvalues

    found = _results(data)
    return (
        plot_top_eigenvalues(found)
        if any(len(r.get("eigenvalues") or ()) > 1 for r in found)
        else None
    )


def _layers(data: Any) -> Figure | None:
    from figures.hessian import plot_layer_curvature

    found = _results(data)
    measured = ("trace", "top_eigenvalue")
    if any(x.get(m) is not None for r in found for x in r.get("layers", []) for m in measured):
        return plot_layer_curvature(found)
    return None


class Curvature(CheckpointMeasure):
    name = "curvature"
    heading = "curvature: Hessian eigenvalues, trace and density"
    command = "curvature"
    aliases = ("hessian",)
    summary = "top Hessian eigenvalues, trace, eigenvalue density and per-layer curvature"
    description = (
        "PyHessian's measures of the loss of each checkpoint on a fixed seeded subset, x_adv "
        "crafted at w and held fixed (--loss adv) or the clean loss: top eigenvalues by "
        "Lanczos, the trace by Hutchinson with an interval, the eigenvalue density by SLQ, "
        "per-layer blocks. Finished units are kept in <out>/curvature/ and skipped when run "
        "again; under torchrun the Hessian-vector products are split across ranks."
    )
    files = ("curvature/curvature.json", "curvature.json", "curvature/hessian.json",
             "hessian.json")  # fmt: skip
    config_type = HessianConfig
    units = "curvature"
    table_files = ("curvature.json", "curvature.csv", "curvature_layers.csv")
    shard = "units"
    labelled = True
    resume_mutable = tuple(f"curvature.{name}" for name in SUMMARY_FIELDS)
    sizes = (
        Size("hessian_n", 128, "train images of the curvature (Hessian at fixed x_adv)",
             HessianConfig, "n_examples", plans=("demo", "sweep"), reproduce=1000),
        Size("hessian_probes", 4, "Hutchinson probes of the curvature", HessianConfig,
             "probes_min", plans=("demo", "sweep"), reproduce=30),
    )  # fmt: skip
    figure_specs = (
        FigureSpec("curvature_density", _density, "Eigenvalue density (SLQ), log scale."),
        FigureSpec("curvature_eigenvalues", _top, "Top eigenvalues."),
        FigureSpec(
            "curvature_layers",
            _layers,
            "Trace of each layer's diagonal block (Hutchinson, with its interval) by depth.",
        ),
    )

    def compute(
        self, loaded: Loaded, cfg: HessianConfig, *, label: str, folder: Path, progress: bool
    ) -> dict[str, Any]:
        return curvature_of_checkpoint(loaded, cfg, folder=folder, label=label, progress=progress)

    def tables(self, entries: Sequence[Entry], cfg: HessianConfig, out: Path) -> dict[str, str]:
        from awp.io import csv_text, json_text

        results = [e.result for e in entries]
        rows = [r["row"] for r in results]
        layers = [
            {**{k: r["row"][k] for k in ("sha256", "label", "method", "epoch")}, **layer}
            for r in results
            for layer in r["layers"]
        ]
        return {
            "curvature.json": json_text({"rows": rows, "layers": layers, "results": results}),
            "curvature.csv": csv_text(rows),
            "curvature_layers.csv": csv_text(layers),
        }

    def show(self, entries: Sequence[Entry], cfg: HessianConfig) -> None:
        _print_results([e.result for e in entries], cfg)

    def read(self, folder: Path) -> list[dict[str, Any]]:
        from awp_landscape.measures.base import json_table

        return json_table(folder, self.files, "results")

    # -- the pipeline ---------------------------------------------------------------------
    def plan_config(self, plan: Any) -> HessianConfig:
        from awp_landscape.measures.base import analysis_attack

        # Sized for ~25 s on 2 cores at the demo's size (two checkpoints): the top eigenvalue
        # (Lanczos with 8 vectors to 1e-2, which ARPACK usually meets in its first 8
        # products), a few Hutchinson probes, one SLQ run of 10 steps.
        return HessianConfig(
            n_examples=plan.hessian_n,
            top_k=1,
            eig_tol=1e-2,
            lanczos_vectors=8,
            trace=True,
            probes_min=plan.hessian_probes,
            probes_max=plan.hessian_probes,
            density=True,
            slq_runs=1,
            slq_steps=10,
            attack=analysis_attack(plan),
        )

    def run(self, ctx: Context) -> None:

        self.run_on(ctx, self.plan_config(ctx.plan))

    # -- the report -----------------------------------------------------------------------
    def section(self, res: Results) -> Section:
        from analysis.curvature_results import curvature_statement
        from figures.html import Section, Table

        found = res[self.name]
        s = Section("Curvature: the Hessian of the loss at fixed x_adv")
        rows = [r["row"] for r in found]
        s.paragraphs.append(curvature_sizes(rows[0]))
        s.paragraphs.append(
            "By Danskin's theorem the loss with x_adv held fixed has the robust loss's gradient "
            "at w, but not its full curvature, which also moves with x_adv: these numbers "
            "describe the loss on examples adversarial at w. Small subsets and few probes make "
            "them noisy."
        )
        s.paragraphs += curvature_statement(rows)
        cols = [c for c in COLUMNS if any(c in r for r in rows)]
        s.tables.append(Table(rows, columns=cols, caption="Curvature per checkpoint"))
        s.figures += self.figure_blocks(res)
        return s

    def sections(self) -> tuple[ReportSection, ...]:
        return (
            ReportSection(
                "Curvature",
                lambda r: r[self.name],
                self.section,
                "analysis/curvature/curvature.json (awp curvature)",
            ),
        )


def curvature_sizes(row: Mapping[str, Any]) -> str:
    """What was measured, with its sizes, from a row of curvature.json."""
    loss = (
        f"x_adv crafted at w by {row['attack']} and held fixed"
        if row.get("loss_type") == "adv"
        else "clean images"
    )
    k = sum(1 for c in row if c == "top_eigenvalue" or c.startswith("eigenvalue_"))
    coords = "conv and linear weights" if row["params"] == "weights" else "parameters"
    parts = [
        f"Hessian of the mean cross-entropy over {row['n']} {row['split']} images ({loss}), "
        f"BatchNorm in eval mode, with respect to the {row['p']:,} {coords} ({row['dtype']})"
    ]
    if k:
        what = "the top eigenvalue" if k == 1 else f"the top {k} eigenvalues"
        parts.append(f"{what} by Lanczos")
    if row.get("trace_probes"):
        parts.append(
            f"the trace by Hutchinson with {row['trace_probes']} Rademacher probes "
            f"({row.get('trace_confidence', 0.95):.0%} t interval)"
        )
    if row.get("slq_runs"):
        parts.append(
            f"the eigenvalue density by SLQ ({row['slq_runs']} run(s) of {row['slq_steps']} "
            f"Lanczos steps, Gaussian broadening); hvps: Hessian-vector products in all"
        )
    return "; ".join(parts) + "."


def curvature_of_checkpoint(
    loaded: Loaded,
    cfg: HessianConfig,
    *,
    folder: Path | None,
    label: str | None = None,
    progress: bool = False,
    compute: Any = None,
    loss: Any = None,
) -> dict[str, Any]:
    """The curvature of one checkpoint, resumable and sharded; its result (on every rank).

    Finished units live in ``folder/samples.rank0.json`` (written by the main rank; ``folder``
    None: nothing kept). The model is cast to ``cfg.dtype`` in place. ``compute`` replaces
    :func:`analysis.curvature.compute_unit` (tests count calls); ``loss`` is the loss whose
    curvature is measured (default cross-entropy).
    """
    from analysis.curvature import HessianProblem, compute_unit, hessian_records
    from analysis.curvature_results import summarize
    from analysis.gap import subset
    from analysis.store import RunKeys, checkpoint_units
    from awp import distributed
    from awp.progress import progress_bar

    ctx = distributed.current()
    split = loaded.data.train if cfg.split == "train" else loaded.data.test
    x, y = subset(split, cfg.n_examples, seed=cfg.subset_seed, flag="--n-examples")
    if len(y) == 0:
        raise ValueError(f"the {cfg.split} split of {loaded.data_cfg.dataset!r} is empty")
    model = loaded.model.to(cfg.torch_dtype)
    ident = {**loaded.identity(), "label": label or loaded.identity()["method"]}
    settings = unit_settings(cfg, loaded.data_cfg, loaded.sha256, len(split))
    # Units can be long (an eigen-solve is tens of products): a second bar counts products.
    bar = progress_bar(
        desc=f"{ident['label']}: Hessian-vector products", unit="HVP", enabled=progress
    )
    problem = HessianProblem(
        model, x, y, cfg, rank=ctx.rank, world=ctx.world, on_product=lambda: bar.update(1),
        loss=loss,
    )  # fmt: skip
    unit = compute or compute_unit

    def measure(run_keys: RunKeys) -> dict[str, Any]:
        with bar:
            records = hessian_records(problem, run_keys, label=ident["label"])
        return {**summarize(records, cfg, ident), "settings": settings}

    return checkpoint_units(
        folder,
        stores={"samples": settings},
        compute=lambda k: unit(problem, k),
        measure=measure,
        ignore=UNIT_MUTABLE,
        progress=progress,
        collective=True,
    )


def unit_settings(
    cfg: HessianConfig, data_cfg: DataConfig | None, sha256: str, n_split: int
) -> dict[str, Any]:
    """What a checkpoint's stored units are computed under (:data:`UNIT_MUTABLE` may change)."""
    from awp.config import to_dict

    return {
        "checkpoint_sha256": sha256,
        "data": to_dict(data_cfg) if data_cfg is not None else None,
        "split_size": n_split,
        "hessian": to_dict(cfg),
    }


def _sizes(results: list[dict[str, Any]]) -> str:
    """The subset sizes measured (the request capped to each split)."""
    return "/".join(dict.fromkeys(str(r["row"]["n"]) for r in results)) or "none"


def _print_results(results: list[dict[str, Any]], cfg: HessianConfig) -> None:
    from analysis.curvature_results import curvature_statement
    from awp_landscape.console import format_table, say

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


MEASURE = Curvature()
