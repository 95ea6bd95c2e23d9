"""Certified L2 robustness by randomized smoothing (Cohen, Rosenfeld, Kolter 2019), and the base
classifier's accuracy under Gaussian input noise, of every checkpoint given.

    awp certify runs/at_awp/checkpoints/last.pt --sigma 0.25 --n-test 500 --out runs/analysis

Finished examples of every checkpoint live in ``<out>/certify/<stem>-<sha8>/`` (one store per
kind of unit: certify, predict, noise) and are skipped when run again with the same settings;
under torchrun the examples are split across ranks.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from analysis.config import CertifyConfig
from awp_landscape.measures.base import CheckpointMeasure, Context, FigureSpec, ReportSection, Size

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from analysis.store import RunKeys
    from awp_landscape.inputs import Loaded
    from awp_landscape.measures.runner import Entry
    from awp_landscape.results import Results
    from figures.html import Section

log = logging.getLogger(__name__)

# More noisy forward passes than this per checkpoint get a warning that states the count.
COSTLY_PASSES = 10**8
TABLES = ("summary", "examples", "noise_accuracy", "noise_examples")


def _certified(c: dict[str, Any]) -> Figure | None:
    from figures.certify import plot_certified_accuracy

    if not c.get("examples"):
        return None
    return plot_certified_accuracy(c["examples"], summary=c["summary"])


def _noise(c: dict[str, Any]) -> Figure | None:
    from figures.certify import plot_noise_accuracy

    return plot_noise_accuracy(c["noise_accuracy"]) if c.get("noise_accuracy") else None


CERTIFIED = FigureSpec(
    "certified_accuracy",
    _certified,
    "Certified accuracy against L2 radius, one panel per sigma (dotted: the largest radius n "
    "samples can certify).",
)
NOISE = FigureSpec(
    "noise_accuracy",
    _noise,
    "Accuracy of the base classifier under Gaussian input noise of standard deviation s.",
)


class Certify(CheckpointMeasure):
    name = "certify"
    heading = "randomized smoothing: certified radius, accuracy under noise"
    command = "certify"
    summary = "certified L2 radius by randomized smoothing (Cohen et al.), accuracy under noise"
    description = (
        "CERTIFY and PREDICT of the smoothed classifier g(x) = argmax_c P(f(x + e) = c), e ~ "
        "N(0, sigma^2 I), as Cohen, Rosenfeld and Kolter publish them (n0 selection and n "
        "estimation samples, a one-sided Clopper-Pearson bound, radius sigma Phi^-1(pA), "
        "abstention), and the base classifier's accuracy under Gaussian noise. Finished "
        "examples are kept in <out>/certify/ and skipped when run again; under torchrun the "
        "examples are split across ranks."
    )
    files = ("certify.json",)
    config_type = CertifyConfig
    units = "certify"
    table_files = ("certify.json", "certify.csv", "certify_examples.csv", "certify_curves.csv",
                   "noise_accuracy.csv")  # fmt: skip
    shard = "units"
    labelled = True
    sizes = (
        Size("certify_n", 40, "test images certified by randomized smoothing (0 = all)",
             CertifyConfig, "n_test", reproduce=500),
        Size("certify_sigmas", (0.12, 0.25), "sigmas of the smoothed classifiers", CertifyConfig,
             "sigmas", reproduce=(0.12, 0.25, 0.5, 1.0)),
        Size("certify_n0", 10, "CERTIFY's selection samples per image (the paper: 100)",
             CertifyConfig, "n0", reproduce=100),
        Size("certify_samples", 100, "CERTIFY's estimation samples n per image (the paper: "
             "100,000)", CertifyConfig, "n", reproduce=100_000),
        Size("certify_noise_levels", (0.0, 0.06, 0.12, 0.25, 0.5),
             "noise levels s of the base classifier's accuracy curve", CertifyConfig,
             "noise_levels", reproduce=(0.0, 0.06, 0.12, 0.18, 0.25, 0.37, 0.5, 0.75, 1.0)),
        Size("certify_noise_draws", 4, "noisy copies per image and level of that curve",
             CertifyConfig, "noise_draws", reproduce=10),
    )  # fmt: skip
    figure_specs = (CERTIFIED, NOISE)

    def compute(
        self, loaded: Loaded, cfg: CertifyConfig, *, label: str, folder: Path, progress: bool
    ) -> dict[str, Any]:
        return certify_checkpoint(loaded, cfg, folder=folder, label=label, progress=progress)

    def collect(self, entries: Sequence[Entry]) -> dict[str, list[dict[str, Any]]]:
        """Summary, example and noise rows (per level and per image) of every checkpoint."""
        return {name: [r for e in entries for r in e.result.get(name, [])] for name in TABLES}

    def tables(self, entries: Sequence[Entry], cfg: CertifyConfig, out: Path) -> dict[str, str]:
        from awp.io import csv_text, json_text

        tables = self.collect(entries)
        files = {
            "certify.json": json_text(tables),
            "certify.csv": csv_text(tables["summary"]),
            "certify_examples.csv": csv_text(tables["examples"]),
            "certify_curves.csv": csv_text(curve_rows(tables["examples"])),
        }
        if tables["noise_accuracy"]:
            files["noise_accuracy.csv"] = csv_text(tables["noise_accuracy"])
        return files

    def show(self, entries: Sequence[Entry], cfg: CertifyConfig) -> None:
        from awp_landscape.console import format_table, say

        results = [e.result for e in entries]
        radii = [f"acc@{t:g}" for t in cfg.radii]
        say(
            f"certified accuracy (randomized smoothing, n0={cfg.n0}, n={cfg.n}, "
            f"alpha={cfg.alpha:g}, {len(results[0]['examples']) // len(cfg.sigmas)} test images; "
            "L2 radii in pixel units)"
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

    # -- the pipeline ---------------------------------------------------------------------
    def run(self, ctx: Context) -> None:

        p = ctx.plan
        cfg = CertifyConfig(
            sigmas=p.certify_sigmas,
            n0=p.certify_n0,
            n=p.certify_samples,
            n_test=p.certify_n,
            noise_levels=p.certify_noise_levels,
            noise_draws=p.certify_noise_draws,
        )
        self.run_on(ctx, cfg)

    # -- the report -----------------------------------------------------------------------
    def section(self, res: Results) -> Section:
        from figures.html import Section, Table

        s = Section("Certified robustness (randomized smoothing)")
        summary = res[self.name]["summary"]
        r = summary[0]
        s.paragraphs.append(
            "The smoothed classifier g(x) = argmax_c P(f(x + e) = c), e ~ N(0, sigma^2 I), of "
            f"each final checkpoint, certified by CERTIFY (Cohen, Rosenfeld, Kolter 2019): n0 = "
            f"{r['n0']} selection and n = {r['n']} estimation samples per image, a one-sided "
            f"Clopper-Pearson bound on pA at alpha = {r['alpha']:g}, radius sigma "
            "Phi^-1(pA_lower) in L2 pixel units ([0,1] scale), abstention when pA_lower < 1/2; "
            f"{r['examples']} test images per sigma, the same images and the same noise for "
            "every checkpoint. The published protocol uses n = 100,000 on 500 images; with "
            f"n = {r['n']} no radius can exceed {r['max_radius'] / r['sigma']:.2f} sigma. "
            "Smoothing is usually applied to a base classifier trained with Gaussian data "
            "augmentation (awp train --noise-sd); adversarially trained ones test the "
            "rebuttal's claim as it is stated."
        )
        radii = sorted({k for row in summary for k in row if k.startswith("acc@")},
                       key=lambda k: float(k[4:]))  # fmt: skip
        s.tables.append(
            Table(
                summary,
                columns=[
                    "label",
                    "sigma",
                    "examples",
                    "accuracy",
                    "abstained",
                    *radii,
                    "acr",
                    "noise_acc",
                ],
                caption="Certified accuracy at L2 radius r (acc@r), average certified radius "
                "(acr) and the base classifier's accuracy on the n noisy copies (noise_acc)",
            )  # fmt: skip
        )
        block = self.figure(res, CERTIFIED)
        s.figures += [block] if block is not None else []
        return s

    def noise_section(self, res: Results) -> Section:
        from figures.html import Section, Table

        s = Section("Accuracy under Gaussian input noise")
        noise = res[self.name]["noise_accuracy"]
        s.paragraphs.append(
            f"The rebuttal's premise: the base classifier's accuracy on x + N(0, s^2 I) "
            f"({noise[0]['draws']} noisy copies of each of {noise[0]['examples']} test images "
            "per level, the same for every checkpoint; intervals over images)."
        )
        s.tables.append(
            Table(
                noise,
                columns=["label", "level", "accuracy", "low", "high"],
                caption="Accuracy under Gaussian noise",
            )  # fmt: skip
        )
        block = self.figure(res, NOISE)
        s.figures += [block] if block is not None else []
        return s

    def sections(self) -> tuple[ReportSection, ...]:
        return (
            ReportSection(
                "Certified robustness",
                lambda r: r[self.name].get("summary"),
                self.section,
                "analysis/certify.json (awp certify)",
            ),
            ReportSection(
                "Accuracy under Gaussian input noise",
                lambda r: r[self.name].get("noise_accuracy"),
                self.noise_section,
                "analysis/certify.json with --noise-draws > 0 (awp certify)",
            ),
        )


def certify_checkpoint(
    loaded: Loaded,
    cfg: CertifyConfig,
    *,
    folder: Path | None,
    label: str,
    progress: bool = False,
    compute: Any = None,
) -> dict[str, Any]:
    """Certify one checkpoint, resumable and sharded; returns its result (on every rank).

    Finished units live in ``folder/{certify,predict,noise}.rank<r>.json``. ``compute``
    replaces :func:`analysis.certify_units.compute_unit` (tests interrupt it).
    """
    import torch

    from analysis.certify_units import (
        compute_unit,
        example_rows,
        noise_rows,
        summary_rows,
        unit_index,
        unit_keys,
    )
    from analysis.store import checkpoint_units
    from awp.augment import to_float
    from awp.config import to_dict
    from awp.data import capped_notice, fixed_subset

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

    return checkpoint_units(folder, stores=stores, compute=one, measure=measure, progress=progress)


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
    from analysis.certify_units import accuracy_curve

    groups = dict.fromkeys((r["model"], r["sigma"]) for r in examples)
    return [
        {"model": model, "sigma": sigma, "radius": radius, "certified_accuracy": acc}
        for model, sigma in groups
        for radius, acc in accuracy_curve(
            [r for r in examples if r["model"] == model and r["sigma"] == sigma]
        )
    ]


MEASURE = Certify()
