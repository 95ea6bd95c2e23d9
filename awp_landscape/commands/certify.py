"""``awp certify``: certified L2 robustness by randomized smoothing, and accuracy under noise.

Finished examples of every checkpoint live in ``<out>/certify/<stem>-<sha8>/`` (one store per
kind of unit: certify, predict, noise) and are skipped when run again with the same settings;
under torchrun the examples are split across ranks.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from analysis.certify_units import (
    CertifyConfig,
    accuracy_curve,
    compute_unit,
    example_rows,
    noise_rows,
    summary_rows,
    unit_index,
    unit_keys,
)
from analysis.store import RunKeys, checkpoint_units
from awp.augment import to_float
from awp.config import to_dict
from awp.data import capped_notice, fixed_subset
from awp.io import atomic_write_set, csv_text, json_text
from awp_landscape.commands.certify_parser import register as register
from awp_landscape.commands.common import current_results, out_folder
from awp_landscape.console import format_table, say
from awp_landscape.flags import dataclass_from_arguments
from awp_landscape.inputs import (
    Loaded,
    Sources,
    each_checkpoint,
)

log = logging.getLogger(__name__)


def certify_checkpoint(
    loaded: Loaded,
    cfg: CertifyConfig,
    *,
    out: Path,
    label: str,
    progress: bool = False,
    compute: Callable[..., dict] | None = None,
) -> dict[str, Any]:
    """Certify one checkpoint, resumable and sharded; returns its result (on every rank).

    Finished units live in ``out/certify/<stem>-<sha8>/{certify,predict,noise}.rank<r>.json``;
    the result (per-sigma summary, per-example rows, noise curve) is written there as
    ``result.json`` by the main rank. ``compute`` replaces
    :func:`analysis.certify_units.compute_unit` (tests interrupt it).
    """
    split = loaded.data.test
    if len(split) == 0:
        raise ValueError(f"the test split of {loaded.data_cfg.dataset!r} is empty")
    capped_notice(cfg.n_test, len(split), flag="--n-test")
    idx = fixed_subset(len(split), cfg.n_test, seed=cfg.subset_seed) if cfg.n_test else None
    indices = idx.tolist() if idx is not None else list(range(len(split)))
    _say_cost(cfg, len(indices), label)
    where = {i: k for k, i in enumerate(indices)}
    pick = torch.tensor(indices, device=split.x.device)
    x_all, y_all = split.x[pick], split.y[pick]
    ident = {**loaded.identity(), "label": label}
    base = {
        "checkpoint_sha256": loaded.sha256,
        "data": to_dict(loaded.data_cfg),
        "split_size": len(split),
    }
    unit = compute or compute_unit

    def one(key: str) -> dict:
        k = where[unit_index(key)]
        x = to_float(x_all[k]) if x_all.dtype == torch.uint8 else x_all[k]
        return unit(loaded.model, x, int(y_all[k]), key, cfg=cfg)

    keys = unit_keys(cfg, indices)
    stores = {kind: {**base, kind: meta} for kind, meta in cfg.stores().items()}

    def measure(run_keys: RunKeys) -> dict[str, Any]:
        records = {kind: run_keys(keys[kind], f"{label}: {kind}", kind) for kind in stores}
        examples = example_rows(records["certify"], cfg, predictions=records.get("predict"))
        return {
            **ident,
            "settings": {**base, "certify": to_dict(cfg)},
            "summary": [{**ident, **r} for r in summary_rows(examples, cfg)],
            # Cohen et al.'s columns: "label" is the true class; "model" names the checkpoint.
            "examples": [{"model": label, **r} for r in examples],
            "noise_accuracy": (
                [{**ident, **r} for r in noise_rows(records["noise"], cfg)]
                if "noise" in records
                else []
            ),
            # per image: correct draws at each level (paired comparisons of checkpoints)
            "noise_examples": [
                {
                    **{k: r[k] for k in ("index", "label", "correct")},
                    "model": label,
                    "levels": list(cfg.noise_levels),
                    "draws": cfg.noise_draws,
                }
                for r in records.get("noise", {}).values()
            ],
        }

    return checkpoint_units(
        out / "certify" / f"{loaded.path.stem}-{loaded.sha256[:8]}",
        stores=stores,
        compute=one,
        measure=measure,
        progress=progress,
    )


# More noisy forward passes than this per checkpoint get a warning that states the count.
COSTLY_PASSES = 10**8


def _say_cost(cfg: CertifyConfig, images: int, label: str) -> None:
    """Warn when the sample counts make a long run: every sample is one forward pass."""
    per_image = len(cfg.sigmas) * (cfg.n0 + cfg.n * (2 if cfg.predict else 1))
    per_image += cfg.noise_draws * len(cfg.noise_levels)
    if per_image * images > COSTLY_PASSES:
        log.warning(
            "%s: %.3g noisy forward passes (%d images x %.3g each: n0 + n per sigma, and the "
            "noise curve); lower --samples or --n-test for a shorter run",
            label,
            per_image * images,
            images,
            per_image,
        )


def curve_rows(examples: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Certified accuracy against radius, every step, per model and sigma (for plotting
    elsewhere)."""
    groups = dict.fromkeys((r["model"], r["sigma"]) for r in examples)
    return [
        {"model": model, "sigma": sigma, "radius": radius, "certified_accuracy": acc}
        for model, sigma in groups
        for radius, acc in accuracy_curve(
            [r for r in examples if r["model"] == model and r["sigma"] == sigma]
        )
    ]


def collect_results(out: Path) -> dict[str, list[dict[str, Any]]]:
    """Summary, example and noise rows (per level and per image) of every checkpoint's
    ``result.json`` under ``out/certify``."""
    tables: dict[str, list[dict[str, Any]]] = {
        "summary": [],
        "examples": [],
        "noise_accuracy": [],
        "noise_examples": [],
    }
    for result in current_results(out / "certify", what="certify"):
        for name, rows in tables.items():
            rows += result.get(name, [])
    return tables


def measure_certify(
    checkpoints: Sequence[Path],
    cfg: CertifyConfig,
    *,
    out: Path,
    labels: Sequence[str] | None = None,
    sources: Sources = Sources(),
    figures: bool = True,
) -> list[dict[str, Any]]:
    """``awp certify`` as a function: each checkpoint's result; ``certify.json`` and the CSV
    tables (and figures) in ``out`` hold every checkpoint certified there."""

    def measure(loaded: Loaded, label: str, show: bool) -> dict[str, Any]:
        return certify_checkpoint(loaded, cfg, out=out, label=label, progress=show)

    def finish(results: list[dict[str, Any]]) -> None:
        _print_results(results, cfg)
        _write_tables(out, figures=figures)

    tables = ("certify.json", "certify.csv", "certify_examples.csv", "certify_curves.csv")
    return each_checkpoint(
        checkpoints,
        measure,
        out=out,
        lock="certify",
        cleans=[out / "certify", *(out / t for t in (*tables, "noise_accuracy.csv"))],
        sources=sources,
        labels=labels,
        finish=finish,
    )


def _write_tables(out: Path, *, figures: bool) -> None:
    tables = collect_results(out)
    files = {
        out / "certify.json": json_text(tables),
        out / "certify.csv": csv_text(tables["summary"]),
        out / "certify_examples.csv": csv_text(tables["examples"]),
        out / "certify_curves.csv": csv_text(curve_rows(tables["examples"])),
    }
    if tables["noise_accuracy"]:
        files[out / "noise_accuracy.csv"] = csv_text(tables["noise_accuracy"])
    written = atomic_write_set(files)  # the tables always agree, also after a full disk
    if figures and tables["examples"]:
        # matplotlib is imported only when a figure is drawn: `awp` starts without it.
        from figures.certify import plot_certified_accuracy, plot_noise_accuracy
        from figures.style import save_figure

        written += save_figure(
            plot_certified_accuracy(tables["examples"], summary=tables["summary"]),
            out / "certified_accuracy",
        )
        if tables["noise_accuracy"]:
            written += save_figure(
                plot_noise_accuracy(tables["noise_accuracy"]), out / "noise_accuracy"
            )
    say(f"results: {out} ({', '.join(p.name for p in written)})")


def run(args: argparse.Namespace) -> int:
    """Certify, print the tables, write certify.json/.csv, noise_accuracy.csv and figures."""
    cfg = dataclass_from_arguments(CertifyConfig, args)
    measure_certify(
        args.checkpoints,
        cfg,
        out=out_folder(args.out, args.checkpoints),
        labels=args.labels,
        sources=Sources.from_args(args),
        figures=not args.no_figures,
    )
    return 0


def _print_results(results: list[dict[str, Any]], cfg: CertifyConfig) -> None:
    radii = [f"acc@{t:g}" for t in cfg.radii]
    say(
        f"certified accuracy (randomized smoothing, n0={cfg.n0}, n={cfg.n}, alpha={cfg.alpha:g}, "
        f"{len(results[0]['examples']) // len(cfg.sigmas)} test images; L2 radii in pixel units)"
    )
    cols = ["label", "sigma", "accuracy", "abstained", *radii, "acr", "noise_acc"]
    rows = [r for res in results for r in res["summary"]]
    if rows and "predict_accuracy" in rows[0]:
        cols += ["predict_accuracy", "predict_abstained"]
    say(format_table(rows, cols))
    noise = [r for res in results for r in res["noise_accuracy"]]
    if noise:
        say(f"\nbase classifier under x + N(0, s^2), {cfg.noise_draws} draws per image")
        say(format_table(noise, ["label", "level", "accuracy", "low", "high"]))
