"""The report: one self-contained HTML file (and a markdown summary) from result folders.

Reads what the other stages left on disk, so it can be rerun at any time: training runs
(``metrics.jsonl``, ``config.json``), evaluations (``eval/*.json``), and the analysis folder
(``gap.json``, ``weights.json``, flatness results, ``correlation.json``, landscape ``*.h5``,
``curvature/hessian.json``, ``spectra/spectra.json``, ``trajectory/*.h5``).
The outcome statements are computed by :mod:`analysis.outcome` from those numbers, including
when AT-AWP did *not* come out flatter or with the smaller gap; the figures are drawn by
:mod:`figures`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from analysis.curvature_results import curvature_statement
from analysis.outcome import Measurements, outcome
from analysis.replicates import MIN_SEEDS
from awp.config import method_of
from awp.io import atomic_write_text, exclusive_output, read_json
from awp.runs import RunFolder
from awp_landscape.replicate import seed_folders
from awp_landscape.report_replicates import (
    replicates_section,
    sweep_section,
)
from awp_landscape.report_surfaces import interactive_section, planes
from figures.certify import plot_certified_accuracy, plot_noise_accuracy
from figures.connect import plot_connect
from figures.curves import (
    plot_gap_by_epoch,
    plot_landscape,
    plot_learning_curves,
    plot_story_curves,
)
from figures.flatness import plot_flatness_curve
from figures.hessian import plot_eigen_density, plot_layer_curvature, plot_top_eigenvalues
from figures.html import Document, FigureBlock, Section, Table, render_html, render_markdown
from figures.spectra import plot_esd, plot_spectra_depth, plot_spectra_epochs
from figures.trajectory import plot_trajectories, trajectory_panel
from landscape.storage import Surface, read_surface

log = logging.getLogger(__name__)


@dataclass
class Run:
    """One training run folder."""

    label: str
    path: Path
    config: dict[str, Any]
    history: list[dict[str, Any]]


@dataclass
class Results:
    """Everything the report reads, by kind; absent parts stay empty."""

    root: Path
    runs: list[Run] = field(default_factory=list)
    evals: list[dict[str, Any]] = field(default_factory=list)
    gap: list[dict[str, Any]] = field(default_factory=list)
    flatness_final: list[dict[str, Any]] = field(default_factory=list)
    flatness_epochs: list[dict[str, Any]] = field(default_factory=list)
    weights: dict[str, Any] = field(default_factory=dict)
    correlation: dict[str, Any] = field(default_factory=dict)
    landscapes: list[Surface] = field(default_factory=list)
    trajectories: list[Surface] = field(default_factory=list)
    spectra: dict[str, Any] = field(default_factory=dict)
    certify: dict[str, Any] = field(default_factory=dict)  # certify.json
    demo_config: dict[str, Any] = field(default_factory=dict)
    figures: dict[str, Path] = field(default_factory=dict)
    curvature: list[dict[str, Any]] = field(default_factory=list)  # hessian.json "results"
    connect: dict[str, Any] = field(default_factory=dict)  # connect/connect.json
    seeds: list[int] = field(default_factory=list)  # a replicated demo's seeds
    seed_histories: dict[int, dict[str, list[dict[str, Any]]]] = field(default_factory=dict)
    replicates: dict[str, Any] = field(default_factory=dict)  # replicates.json
    sweep: dict[str, Any] = field(default_factory=dict)  # sweep.json


def _read_runs(path: Path) -> list[Run]:
    """A run folder, or every run folder directly inside ``path``."""
    candidates = (
        [path]
        if (path / "metrics.jsonl").exists()
        else sorted(p for p in path.iterdir() if p.is_dir() and (p / "metrics.jsonl").exists())
    )
    runs = []
    for p in candidates:
        cfg = read_json(p / "config.json") if (p / "config.json").exists() else {}
        hist = RunFolder(p).read_metrics()
        runs.append(Run(method_of(cfg), p, cfg, hist))
    return runs


def collect(paths: Sequence[str | Path]) -> Results:
    """Gather results from demo folders, run folders or analysis folders.

    Raises:
        FileNotFoundError: a path that does not exist.
        ValueError: nothing to report in the paths given.
    """
    roots = [Path(p) for p in paths]
    for p in roots:
        if not p.exists():
            raise FileNotFoundError(
                f"{p} does not exist; pass a demo folder (runs/demo) or run "
                f"folders holding metrics.jsonl"
            )
    res = Results(root=roots[0])
    roots = _expand(roots, res)
    analysis_dirs: list[Path] = []
    for root in roots:
        if (root / "demo_config.json").exists():
            res.demo_config = read_json(root / "demo_config.json")
        res.runs += _read_runs(root) if root.is_dir() else []
        for cand in (root / "analysis", root):
            if cand.is_dir() and cand not in analysis_dirs:
                analysis_dirs.append(cand)
        for e in sorted((root / "eval").glob("*.json")) if (root / "eval").is_dir() else []:
            res.evals.append({"file": e.name, **read_json(e)})
    for run in res.runs:
        if (run.path / "analysis").is_dir() and run.path / "analysis" not in analysis_dirs:
            analysis_dirs.append(run.path / "analysis")
    for d in analysis_dirs:
        if (d / "gap.json").exists():
            res.gap += read_json(d / "gap.json")["rows"]
        if (d / "weights.json").exists() and not res.weights:
            res.weights = read_json(d / "weights.json")
        if (d / "correlation.json").exists() and not res.correlation:
            res.correlation = read_json(d / "correlation.json")
        if (d / "certify.json").exists() and not res.certify:
            res.certify = read_json(d / "certify.json")
        for sub, target in (
            ("flatness_final", res.flatness_final),
            ("flatness_epochs", res.flatness_epochs),
            (".", res.flatness_final),
        ):
            f = d / sub / "flatness.json"
            if f.exists() and not target:
                target += read_json(f)["rows"]
        for sub in ("curvature", "."):
            f = d / sub / "hessian.json"
            if f.exists() and not res.curvature:
                res.curvature += read_json(f).get("results", [])
        if (d / "connect" / "connect.json").exists() and not res.connect:
            res.connect = read_json(d / "connect" / "connect.json")
        for h5 in sorted((d / "landscape").glob("*.h5")) if (d / "landscape").is_dir() else []:
            if not h5.name.endswith(".directions.h5"):
                res.landscapes.append(read_surface(h5))
        _collect_spectra_and_trajectories(d, res)
        for name in ("weights_hist", "weights_depth"):
            if (d / f"{name}.png").exists() and name not in res.figures:
                res.figures[name] = d / f"{name}.png"
        scatter = sorted(d.glob("*_vs_gap.png"))
        if scatter and "vs_gap" not in res.figures:
            res.figures["vs_gap"] = scatter[0]
    found = (res.runs, res.gap, res.landscapes, res.weights, res.flatness_final, res.curvature)
    others = (res.certify, res.sweep, res.replicates, res.spectra, res.trajectories)
    if not (any(found) or any(others)):
        raise ValueError(
            f"nothing to report in {', '.join(map(str, roots))}: expected run "
            f"folders (metrics.jsonl) or an analysis folder (gap.json, ...)"
        )
    return res


def _collect_spectra_and_trajectories(d: Path, res: Results) -> None:
    """``spectra/spectra.json`` (or ``spectra.json``) and ``trajectory/*.h5`` of an analysis
    folder; a trajectory file among the landscapes moves to the trajectories."""
    for f in (d / "spectra" / "spectra.json", d / "spectra.json"):
        if f.exists() and not res.spectra:
            res.spectra = read_json(f)
    folder = d / "trajectory"
    for h5 in sorted(folder.glob("*.h5")) if folder.is_dir() else []:
        if not h5.name.endswith(".directions.h5"):
            res.trajectories.append(read_surface(h5))
    res.trajectories += [s for s in res.landscapes if s.kind == "trajectory"]
    res.landscapes[:] = [s for s in res.landscapes if s.kind != "trajectory"]


def _expand(roots: list[Path], res: Results) -> list[Path]:
    """The folders whose results are shown in detail: a sweep folder gives its summary only; a
    replicated demo folder gives its replicate table, and its first seed folder in detail."""
    detail = []
    for root in roots:
        if (root / "sweep.json").exists():
            res.sweep = read_json(root / "sweep.json")
            for name in ("sweep_tradeoff", "sweep_gap_flatness"):
                if (root / f"{name}.png").exists():
                    res.figures[name] = root / f"{name}.png"
            continue
        seeds = seed_folders(root)
        if not seeds:
            detail.append(root)
            continue
        res.seeds = sorted(seeds)
        res.seed_histories = {
            k: {r.label: r.history for r in _read_runs(f)} for k, f in seeds.items()
        }
        if (root / "demo_config.json").exists():
            res.demo_config = read_json(root / "demo_config.json")
        if (root / "replicates.json").exists():
            res.replicates = read_json(root / "replicates.json")
        detail.append(seeds[res.seeds[0]])
    return detail


def _best_epoch(history: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    with_val = [r for r in history if "val_robust_acc" in r]
    if not with_val:
        return None
    best = with_val[0]
    for r in with_val[1:]:  # first epoch reaching the maximum, as train() selects best.pt
        if r["val_robust_acc"] > best["val_robust_acc"]:
            best = r
    return best


def accuracy_rows(res: Results) -> list[dict[str, Any]]:
    """Natural / PGD-20 / CW-20 (and AutoAttack where run) per method, best and last."""
    rows = []
    for e in res.evals:
        accs = {r["attack"]: r.get("accuracy") for r in e.get("results", e.get("rows", []))}
        method = e.get("method") or method_of(e.get("train_config") or {})
        stem = e["file"].removesuffix(".json")
        label, _, which = stem.rpartition("_")
        rows.append(
            {
                "method": label or method,
                "checkpoint": which,
                "epoch": e.get("epoch"),
                "n": e.get("n"),
                "natural": accs.get("natural"),
                "PGD-20": accs.get("pgd20"),
                "CW-20": accs.get("cw20"),
                "AutoAttack": accs.get("autoattack"),
            }
        )
    if rows:
        return rows
    for run in res.runs:  # no separate evaluation: the per-epoch test numbers
        best, last = _best_epoch(run.history), run.history[-1] if run.history else None
        for which, r in (("best", best), ("last", last)):
            if r is not None:
                rows.append(
                    {
                        "method": run.label,
                        "checkpoint": which,
                        "epoch": r["epoch"],
                        "natural": r.get("test_nat_acc"),
                        "PGD (per-epoch eval)": r.get("test_robust_acc"),
                    }
                )
    return rows


def _png(path: Path, caption: str, alt: str) -> FigureBlock:
    return FigureBlock(path.read_bytes(), caption, alt)


def measurements(res: Results) -> Measurements:
    """What the outcome statements are computed from."""
    return Measurements(
        histories={r.label: r.history for r in res.runs},
        gap=res.gap,
        flatness=res.flatness_final,
        landscapes=res.landscapes,
        correlation=res.correlation,
        certify=res.certify,
    )


def _intro(cfg: Mapping[str, Any], seeds: Sequence[int]) -> str:
    training = cfg.get("training", cfg)  # older demo_config.json files are flat
    model = training.get("model")
    name, width = (
        (model.get("name"), model.get("width"))
        if isinstance(model, Mapping)
        else (model, training.get("width"))
    )
    data = training.get("data", {})
    seeds = list(seeds) or list(cfg.get("seeds", [cfg.get("seed", 0)]))
    return (
        f"Trained {name} (width {width}) with AT and AT-AWP (gamma {cfg.get('gamma')}) for "
        f"{training.get('epochs')} epochs on {data.get('dataset')}, once per seed "
        f"({', '.join(map(str, seeds))}; the same seed for both methods), then measured "
        "everything below on this machine. Small data and short training make single runs "
        "noisy: the comparisons over seeds say which differences survive the seed."
    )


def _accuracy_section(res: Results) -> Section:
    s = Section("Accuracy and learning curves")
    s.tables.append(
        Table(
            accuracy_rows(res),
            caption="Test accuracy (best = highest validation robust accuracy; last = final epoch)",
        )
    )
    s.figures.append(
        FigureBlock.from_figure(
            plot_learning_curves({r.label: r.history for r in res.runs}),
            "Train (dashed) and test (solid) robust accuracy (left, the paper's Fig. 3(d)) and "
            "robust loss (right) per evaluated epoch.",
            "learning curves",
        )
    )
    return s


def _gap_section(res: Results) -> Section:
    s = Section("Robust generalization gap")
    cols = ["method", "epoch", "train_robust_acc", "test_robust_acc", "gap", "loss_gap"]
    s.paragraphs.append(
        f"Robust accuracy on a fixed train subset minus robust accuracy on a "
        f"test subset, same attack ({res.gap[0].get('attack')}), eval mode, "
        f"unperturbed weights."
    )
    s.tables.append(
        Table(
            sorted(res.gap, key=lambda r: (r["method"], r.get("epoch") or 0)),
            columns=cols,
            caption="Gap per checkpoint",
        )
    )
    s.figures.append(
        FigureBlock.from_figure(plot_gap_by_epoch(res.gap), "Robust gap per epoch.", "gap by epoch")
    )
    return s


def _landscape_section(res: Results) -> Section:
    s = Section("Weight loss landscape")
    s.paragraphs.append(
        "theta = theta0 + alpha d along a filter-normalized Gaussian direction "
        "(same seed for every model); at every alpha PGD is run again on the "
        "perturbed model (solid). Dashed: adversarial examples crafted once at "
        "theta0 and reused, which underestimates the loss."
    )
    s.paragraphs += _incomplete(res.landscapes)
    for split in ("test", "train"):
        have = [
            x
            for x in res.landscapes
            if f"{split}_adv_loss" in x.values and np.isfinite(x.values[f"{split}_adv_loss"]).any()
        ]
        if have:
            s.figures.append(
                FigureBlock.from_figure(
                    plot_landscape(have, split),
                    f"{split} adversarial loss along alpha.",
                    f"landscape {split}",
                )
            )
    return s


def _incomplete(surfaces: Sequence[Surface]) -> list[str]:
    """A sentence for every surface file not complete (a stage stopped midway)."""
    return [
        f"{s.label}: {int(s.computed.sum())} of {s.computed.size} points computed (the stage "
        "was stopped midway; the others are missing from the figure)."
        for s in surfaces
        if not s.computed.all()
    ]


WEIGHT_STATS = ("label", "layer", "n", "norm", "std", "mean_abs", "skewness", "excess_kurtosis")
WEIGHT_COMPARISONS = (
    "layer",
    "label_a",
    "label_b",
    "ks_statistic",
    "ks_pvalue",
    "wasserstein",
    "norm_ratio",
)


def _weights_section(res: Results) -> Section:
    s = Section("Weight histograms")
    comps = res.weights.get("comparisons", [])
    s.tables.append(
        Table(res.weights.get("stats", []), columns=WEIGHT_STATS, caption="Per-layer statistics")
    )
    if comps:
        s.tables.append(Table(comps, columns=WEIGHT_COMPARISONS, caption="Between checkpoints"))
    for name, cap in (
        ("weights_hist", "Weight values (rebuttal R#1 Q3 figure)."),
        ("weights_depth", "Per-layer statistics against depth."),
    ):
        if name in res.figures:
            s.figures.append(_png(res.figures[name], cap, name))
    return s


SPECTRA_COLUMNS = ("label", "layer", "fft_size", "spectral_norm", "op_norm_circular")
SPECTRA_COLUMNS += ("op_norm_zero_lower", "op_norm_zero_bound", "stable_rank", "alpha", "alpha_se")
SPECTRA_COLUMNS += ("n_tail",)
SPECTRA_SUMMARY = ("label", "epoch", "fitted", "alpha_mean", "stable_rank_mean")
SPECTRA_SUMMARY += ("log10_op_norm_mean",)


def _spectra_section(res: Results) -> Section:
    sp, s = res.spectra, Section("Weight spectra")
    cfg, finals = sp.get("config", {}), set(sp.get("final", []))
    final = [r for r in sp.get("stats", []) if r["label"] in finals]
    s.paragraphs.append(
        f"Per conv and linear layer ({len(sp.get('layers', []))} layers) of "
        f"{len(sp.get('checkpoints', []))} checkpoints: the singular values of W reshaped to "
        "(out, in*kh*kw) (WeightWatcher's convention), the stable rank ||W||_F^2 / ||W||_2^2, "
        "and a power law p(lambda) ~ lambda^-alpha fitted to the eigenvalues of W^T W by "
        "maximum likelihood with x_min chosen by the Clauset-Shalizi-Newman KS rule, alpha "
        "+- its standard error (alpha - 1) / sqrt(n_tail); layers with fewer than "
        f"{cfg.get('min_tail')} eigenvalues get no fit. Smaller alpha reads as a heavier tail."
    )
    s.paragraphs.append(
        str(sp.get("operator_note", "")) + f" Sizes: each conv's own input "
        f"size in the network for a {cfg.get('image_size')} x "
        f"{cfg.get('image_size')} image; {cfg.get('power_iterations')} power "
        "iterations."
    )
    gaps = [
        (np.float64(r["op_norm_circular"]) / np.float64(r["op_norm_zero_lower"]) - 1, r)
        for r in final
        if r["kind"] == "conv"
    ]
    gaps = [(g, r) for g, r in gaps if np.isfinite(g)]
    if gaps:
        gap, r = max(gaps, key=lambda t: t[0])
        s.paragraphs.append(
            f"In this run the circular FFT value exceeded the zero-padded layer's norm (its "
            f"power-iteration lower bound) by up to {gap:.1%} ({r['label']}, {r['layer']}, "
            f"{r['fft_size']} x {r['fft_size']} inputs): on small inputs wrap-around matters."
        )
    s.tables.append(
        Table(
            final,
            columns=SPECTRA_COLUMNS,
            caption="Per layer, last checkpoints (no fit: fewer than min_tail eigenvalues)",
            missing={"alpha": "no fit", "alpha_se": "no fit", "n_tail": "no fit"},
        )
    )
    summary = sp.get("summary", [])
    esd = [r for r in sp.get("esd", []) if r["label"] in finals]
    if esd:
        s.figures.append(
            FigureBlock.from_figure(
                plot_esd(esd),
                "Eigenvalue density of one layer (log-log) with the fitted power law (dashed) "
                "from x_min (dotted).",
                "ESD",
            )
        )
    s.figures.append(
        FigureBlock.from_figure(
            plot_spectra_depth(final),
            "Per layer against depth: alpha (+- SE), stable rank, ||W||_2, and the FFT "
            "operator norm (circular, solid; zero-padding upper bound, dotted).",
            "spectra by depth",
        )
    )
    if len(summary) > len(finals):  # several checkpoints of a run: over epochs
        s.tables.append(
            Table(
                summary,
                columns=SPECTRA_SUMMARY,
                caption="Layer means per checkpoint",
                missing={"alpha_mean": "no fit"},
            )
        )
        s.figures.append(
            FigureBlock.from_figure(
                plot_spectra_epochs(summary), "Layer means against epoch.", "spectra by epoch"
            )
        )
    return s


def _trajectory_section(res: Results) -> Section:
    s = Section("Training trajectory")
    trajs = sorted(res.trajectories, key=lambda t: t.label)
    cfg = trajs[0].config
    attack = trajs[0].attrs.get("attack", "none")
    bn = (
        f"BatchNorm statistics re-estimated on {cfg.get('n_bn')} training images at every point"
        if cfg.get("bn") == "recompute"
        else "BatchNorm with the last checkpoint's statistics (far from it they do not fit)"
    )
    s.paragraphs.append(
        "PCA of the epoch checkpoints' weights relative to the last one (theta0; loss-"
        "landscape's centered PCA over "
        f"{'every parameter' if cfg.get('dir_include') == 'all' else 'conv and linear weights'}"
        "), the path projected on the first two principal directions, and the loss on that "
        "plane with PGD regenerated at every point (the evaluator of the other surfaces). "
        "Coordinates are in units of the farthest checkpoint's distance from theta0. A point "
        "of the plane is not a checkpoint: a checkpoint lies in it only to its in-plane "
        f"fraction. Sizes: {len(trajs[0].x)} x {trajs[0].rows} points, "
        f"{cfg.get('n_test')} test images, {attack}; {bn}."
    )
    s.paragraphs += _incomplete(trajs)
    rows = []
    for t in trajs:
        tr = t.attrs.get("trajectory") or {}
        ratio = list(tr.get("explained_variance_ratio", [])) + [float("nan")] * 2
        epochs = [c.get("epoch") for c in tr.get("path", [])]
        rows.append(
            {
                "method": t.label,
                "checkpoints": len(epochs),
                "epochs": f"{epochs[0]}-{epochs[-1]}" if epochs else "",
                "PC1": ratio[0],
                "PC2": ratio[1],
                "other PCs": 1.0 - ratio[0] - ratio[1],
                "unit (weight distance)": tr.get("scale"),
                "in-plane (min)": float(np.min(tr.get("in_plane", [np.nan]))),
            }
        )
    s.tables.append(Table(rows, caption="Explained variance of the principal directions"))
    metrics = [m for m in ("test_loss", "test_adv_loss") if all(m in t.values for t in trajs)]
    if metrics:
        panels = [[trajectory_panel(t, m) for t in trajs] for m in metrics]
        s.figures.append(
            FigureBlock.from_figure(
                plot_trajectories(panels, metrics=metrics),
                "The path (square: first checkpoint, star: theta0, epochs written) on the clean "
                "(top) and adversarial (bottom) test loss of its plane.",
                "training trajectory",
            )
        )
    return s


EXPECTED_COLUMNS = (
    "label",
    "noise",
    "alpha",
    "samples",
    "n",
    "base_error",
    "flatness",
    "flatness_low",
    "flatness_high",
    "flatness_loss",
)
BOUND_COLUMNS = (
    "label",
    "alpha",
    "kl",
    "kl_rebuttal",
    "complexity_exact",
    "complexity_rebuttal",
    "bound_exact",
    "bound_rebuttal",
    "vacuous_exact",
    "vacuous_rebuttal",
)
WORST_COLUMNS = (
    "label",
    "gamma",
    "ascent_steps",
    "n",
    "base_error",
    "worst_error",
    "flatness",
    "flatness_loss",
)


def _flatness_section(res: Results) -> Section:
    s = Section("Flatness and the PAC-Bayes bound")
    exp = [r for r in res.flatness_final if r.get("kind") == "expected"]
    worst = [r for r in res.flatness_final if r.get("kind") == "worst"]
    s.paragraphs.append(
        "Expected flatness E_u[rho(w+u)] - rho(w) with rho the robust 0-1 "
        "error (and robust loss), attacks regenerated on every w+u; worst "
        "case: max over ||v_l|| <= gamma ||w_l|| by projected ascent."
    )
    if exp:
        s.tables.append(Table(exp, columns=EXPECTED_COLUMNS, caption="Expected flatness"))
        s.tables.append(
            Table(
                exp,
                columns=BOUND_COLUMNS,
                caption="PAC-Bayes terms (exact KL vs the rebuttal's 1/(2 alpha)); "
                "vacuous = bound above 1",
            )
        )
        s.figures.append(
            FigureBlock.from_figure(
                plot_flatness_curve(exp, measure="flatness_loss"),
                "Expected flatness (robust loss increase) against alpha.",
                "flatness curve",
            )
        )
    if worst:
        s.tables.append(Table(worst, columns=WORST_COLUMNS, caption="Worst-case flatness"))
    return s


CURVATURE_COLUMNS = (
    "label",
    "n",
    "loss",
    "accuracy",
    "top_eigenvalue",
    "eigenvalue_2",
    "trace",
    "trace_low",
    "trace_high",
    "trace_probes",
    "slq_trace",
    "hvps",
)


def _curvature_sizes(row: Mapping[str, Any]) -> str:
    """What was measured, with its sizes, from a row of hessian.json."""
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


def _curvature_section(res: Results) -> Section:
    s = Section("Curvature: the Hessian of the loss at fixed x_adv")
    rows = [r["row"] for r in res.curvature]
    s.paragraphs.append(_curvature_sizes(rows[0]))
    s.paragraphs.append(
        "By Danskin's theorem the loss with x_adv held fixed has the robust loss's gradient at "
        "w, but not its full curvature, which also moves with x_adv: these numbers describe "
        "the loss on examples adversarial at w. Small subsets and few probes make them noisy."
    )
    s.paragraphs += curvature_statement(rows)
    cols = [c for c in CURVATURE_COLUMNS if any(c in r for r in rows)]
    s.tables.append(Table(rows, columns=cols, caption="Curvature per checkpoint"))
    if any(r.get("density") for r in res.curvature):
        s.figures.append(
            FigureBlock.from_figure(
                plot_eigen_density(res.curvature),
                "Eigenvalue density (SLQ), log scale.",
                "eigenvalue density",
            )
        )
    if any(len(r.get("eigenvalues") or ()) > 1 for r in res.curvature):
        s.figures.append(
            FigureBlock.from_figure(
                plot_top_eigenvalues(res.curvature), "Top eigenvalues.", "top eigenvalues"
            )
        )
    if any(x.get("trace") is not None for r in res.curvature for x in r.get("layers", [])):
        s.figures.append(
            FigureBlock.from_figure(
                plot_layer_curvature(res.curvature),
                "Trace of each layer's diagonal block (Hutchinson, with its interval) by depth.",
                "per-layer curvature",
            )
        )
    return s


def _connect_section(res: Results) -> Section:
    c = res.connect
    a, b = c["a"]["label"], c["b"]["label"]
    s = Section(f"Mode connectivity: {a} to {b}")
    cfg = c["settings"]["connect"]
    training = c.get("curve_settings") or {}
    s.paragraphs.append(
        f"Natural and robust ({c['attack']}, regenerated on every model) loss and accuracy at "
        f"{cfg['points']} points of the straight line from {a} to {b} and of a quadratic Bezier "
        f"curve whose middle point was trained for {training.get('epochs', '?')} epoch(s) on the "
        f"{training.get('objective', '?')} loss, t uniform per batch; BatchNorm statistics "
        "re-estimated at "
        "every point. Barrier: the maximum along the path minus the mean of the ends (for an "
        "accuracy, the drop below the ends' mean)."
    )
    split = "test" if cfg["n_test"] else "train"
    by = {(r["path"], r["metric"]): r for r in c["barriers"]}
    line, curve = by.get(("line", f"{split}_adv_loss")), by.get(("curve", f"{split}_adv_loss"))
    if line and curve:
        word = "lower" if curve["barrier"] < line["barrier"] else "NOT lower"
        s.paragraphs.append(
            f"The trained curve's robust-loss barrier is {word} than the straight line's "
            f"({curve['barrier']:.4g} at t={curve['t']:.2g} vs {line['barrier']:.4g} at "
            f"t={line['t']:.2g}; one pair, one evaluation subset: no interval)."
        )
    rows = [
        {"path": r["path"], "metric": r["metric"], "barrier": r["barrier"], "t": r["t"]}
        for r in c["barriers"]
        if r["metric"].startswith(split)
    ]
    s.tables.append(Table(rows, columns=["path", "metric", "barrier", "t"], caption="Barriers"))
    s.figures.append(
        FigureBlock.from_figure(
            plot_connect(c["paths"], split=split),
            f"Loss and accuracy along the paths from {a} (t=0) to {b} (t=1).",
            "mode connectivity",
        )
    )
    return s


def _correlation_section(res: Results) -> Section:
    s = Section("Flatness versus the robust gap")
    s.paragraphs.append(
        f"Across checkpoints: x = {res.correlation.get('x')} "
        f"({', '.join(res.correlation.get('where', []))}), y = "
        f"{res.correlation.get('y')}."
    )
    s.tables.append(
        Table(
            res.correlation.get("correlations", []),
            columns=["group", "measure", "n", "statistic", "pvalue", "ci_low", "ci_high", "note"],
            caption="Correlations with bootstrap intervals",
        )
    )
    if "vs_gap" in res.figures:
        s.figures.append(
            _png(
                res.figures["vs_gap"],
                "Flatness against gap, one point per "
                "checkpoint, coloured by method, with fitted lines.",
                "flatness vs gap",
            )
        )
    return s


def _certify_section(res: Results) -> Section:
    s = Section("Certified robustness (randomized smoothing)")
    summary = res.certify["summary"]
    r = summary[0]
    s.paragraphs.append(
        f"The smoothed classifier g(x) = argmax_c P(f(x + e) = c), e ~ N(0, sigma^2 I), of each "
        f"final checkpoint, certified by CERTIFY (Cohen, Rosenfeld, Kolter 2019): n0 = {r['n0']} "
        f"selection and n = {r['n']} estimation samples per image, a one-sided Clopper-Pearson "
        f"bound on pA at alpha = {r['alpha']:g}, radius sigma Phi^-1(pA_lower) in L2 pixel units "
        f"([0,1] scale), abstention when pA_lower < 1/2; {r['examples']} test images per sigma, "
        f"the same images and the same noise for every checkpoint. The published protocol uses "
        f"n = 100,000 on 500 images; with n = {r['n']} no radius can exceed "
        f"{r['max_radius'] / r['sigma']:.2f} sigma. Smoothing is usually applied to a base "
        f"classifier trained with Gaussian data augmentation (awp train --noise-sd); "
        f"adversarially trained ones test the rebuttal's claim as it is stated."
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
    s.figures.append(
        FigureBlock.from_figure(
            plot_certified_accuracy(res.certify["examples"], summary=summary),
            "Certified accuracy against L2 radius, one panel per sigma (dotted: the largest "
            "radius n samples can certify).",
            "certified accuracy",
        )
    )
    return s


def _noise_section(res: Results) -> Section:
    s = Section("Accuracy under Gaussian input noise")
    noise = res.certify["noise_accuracy"]
    s.paragraphs.append(
        f"The rebuttal's premise: the base classifier's accuracy on x + N(0, s^2 I) "
        f"({noise[0]['draws']} noisy copies of each of {noise[0]['examples']} test images per "
        f"level, the same for every checkpoint; intervals over images)."
    )
    s.tables.append(
        Table(
            noise,
            columns=["label", "level", "accuracy", "low", "high"],
            caption="Accuracy under Gaussian noise",
        )  # fmt: skip
    )
    s.figures.append(
        FigureBlock.from_figure(
            plot_noise_accuracy(noise),
            "Accuracy of the base classifier under Gaussian input noise of standard deviation s.",
            "accuracy under noise",
        )
    )
    return s


def _surfaces_section(res: Results) -> Section:
    """Rotatable 3-D views of every 2-D landscape and trajectory plane."""
    return interactive_section([*res.landscapes, *res.trajectories])


# Sections in reading order, each drawn when its results are there: (present, section, title,
# the files it reads and the command that writes them, for the list of what is not measured).
SECTIONS: tuple[tuple[Callable[[Results], Any], Callable[[Results], Section], str, str], ...] = (
    (lambda r: r.runs, _accuracy_section, "Accuracy", "metrics.jsonl of each run (awp train)"),
    (lambda r: r.gap, _gap_section, "Robust generalization gap", "analysis/gap.json (awp gap)"),
    (
        lambda r: r.landscapes,
        _landscape_section,
        "Weight loss landscape",
        "analysis/landscape/*.h5 (awp landscape)",
    ),
    (
        lambda r: r.trajectories,
        _trajectory_section,
        "Training trajectory",
        "analysis/trajectory/*.h5 (awp landscape --kind trajectory)",
    ),
    (
        lambda r: r.weights,
        _weights_section,
        "Weight histograms",
        "analysis/weights.json (awp hist)",
    ),
    (
        lambda r: planes([*r.landscapes, *r.trajectories]),
        _surfaces_section,
        "3-D views of the planes",
        "analysis/landscape/*.h5 and analysis/trajectory/*.h5 (2-D)",
    ),
    (
        lambda r: r.spectra,
        _spectra_section,
        "Weight spectra",
        "analysis/spectra/spectra.json (awp spectra)",
    ),
    (
        lambda r: r.flatness_final,
        _flatness_section,
        "Flatness",
        "analysis/flatness_final/flatness.json (awp flatness)",
    ),
    (
        lambda r: r.curvature,
        _curvature_section,
        "Curvature",
        "analysis/curvature/hessian.json (awp hessian)",
    ),
    (
        lambda r: r.correlation,
        _correlation_section,
        "Flatness versus the robust gap",
        "analysis/correlation.json (awp correlate)",
    ),
    (
        lambda r: r.certify.get("summary"),
        _certify_section,
        "Certified robustness",
        "analysis/certify.json (awp certify)",
    ),
    (
        lambda r: r.certify.get("noise_accuracy"),
        _noise_section,
        "Accuracy under Gaussian input noise",
        "analysis/certify.json with --noise-draws > 0 (awp certify)",
    ),
    (
        lambda r: r.connect,
        _connect_section,
        "Mode connectivity",
        "analysis/connect/connect.json (awp connect)",
    ),
)


def _drawn(section: Callable[[Results], Section], res: Results, title: str, files: str) -> Section:
    """A section, or where its files hold values it cannot read (a stage killed while it wrote
    them, a file of another version), the section saying so: the report is still written."""
    try:
        drawn = section(res)
    except (KeyError, TypeError, ValueError, IndexError, ZeroDivisionError) as err:
        log.warning("report: the %s section could not be drawn from %s: %r", title, files, err)
        return Section(
            title,
            paragraphs=[
                f"Not shown: {files} holds values this section cannot read ({err!r}); rerun that "
                "command (or awp demo, which reruns the unfinished stages) to replace it."
            ],
        )
    for table in drawn.tables:  # a number a stage wrote as null was not measured
        if table.missing == "–":
            table.missing = "not measured"
    return drawn


def _not_measured(res: Results, absent: Sequence[tuple[str, str]]) -> Section:
    """What a demo folder does not hold yet (a demo stopped or still running)."""
    where = res.root
    return Section(
        "Not measured",
        paragraphs=[
            f"These parts of the demo are not measured in {where}: the demo was stopped before "
            "their stages, or they failed. Run the same awp demo command again to finish them "
            "(finished stages are reused), then awp report."
        ],
        tables=[
            Table(
                [{"part": title, "reads": files} for title, files in absent],
                caption="Not measured",
            )
        ],
    )


def _per_epoch_eval(res: Results) -> str:
    """What the per-epoch curves measured, e.g. "PGD-5; 250 test, 200 train images"."""
    cfg = res.demo_config.get("training") or (res.runs[0].config if res.runs else {})
    steps, n_test = cfg.get("eval_steps"), cfg.get("test_eval_size")
    n_train = cfg.get("train_eval_size")
    if steps is None:
        return "PGD"
    test = "all test images" if not n_test else f"{n_test} test images"
    return f"PGD-{steps} per evaluated epoch; {test}, {n_train} train images"


def _story_rows(replicates: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per measure: AT, AT-AWP (means over seeds), the difference, its interval and a
    short verdict that follows the interval."""
    rows = []
    for m in replicates.get("measures", []):
        n = len(m["seeds"])
        resolved = m["t_low"] is not None and (m["t_low"] > 0 or m["t_high"] < 0)
        if resolved:
            verdict = f"AT-AWP {'higher' if m['mean_diff'] > 0 else 'lower'}"
        elif m["t_low"] is not None:
            verdict = f"not resolved at {n} seeds"
        else:
            verdict = "single run, no interval" if n == 1 else f"{n} seeds, no interval"
        interval = "–" if m["t_low"] is None else f"[{m['t_low']:+.4g}, {m['t_high']:+.4g}]"
        rows.append(
            {
                "measure": m["measure"],
                "AT": m["mean_at"],
                "AT-AWP": m["mean_awp"],
                "AT-AWP minus AT": m["mean_diff"],
                f"{m['confidence']:.0%} t interval over seeds": interval,
                "verdict": verdict,
            }
        )
    return rows


def _story_section(res: Results) -> Section | None:
    """The first screen: both methods' learning curves (every seed) and one outcome table."""
    histories = res.seed_histories or (
        {0: {r.label: r.history for r in res.runs}} if res.runs else {}
    )
    if not histories and not res.replicates:
        return None
    n = len(res.seeds) or 1
    s = Section("AT against AT-AWP: learning curves and outcome")
    if n < MIN_SEEDS:
        s.paragraphs.append(
            f"This is {'one run' if n == 1 else f'{n} seeds'} of each method. A claim over "
            f"seeds needs {MIN_SEEDS} seeds (awp demo --seeds 0 1 2); the table below compares "
            "the runs as they came out, without intervals."
        )
    else:
        s.paragraphs.append(
            f"{n} seeds of each method, paired by seed. A difference is called only when its "
            "95% Student-t interval over seeds excludes zero."
        )
    what = _per_epoch_eval(res)
    if histories:
        s.figures.append(
            FigureBlock.from_figure(
                plot_story_curves(histories, what=what.split(";")[0]),
                f"Robust loss and robust accuracy per evaluated epoch ({what}): test solid, "
                "train dashed, one line per seed. Robust overfitting is the test loss rising "
                "while the train loss keeps falling.",
                "learning curves of AT and AT-AWP",
            )
        )
    rows = _story_rows(res.replicates) if res.replicates else []
    if rows:
        s.tables.append(
            Table(
                rows,
                caption="Outcome: the last checkpoint of each run unless the measure says "
                "otherwise; AT and AT-AWP are means over seeds",
            )
        )
    return s


def build_document(res: Results, *, title: str = "AWP: what this run measured") -> Document:
    """The report's document: the outcome, then a section for every kind of result found.

    A replicated demo's outcome is its paired verdicts over seeds; the first seed is then shown
    in detail, its single-seed statements labelled as such. A sweep adds its own section.
    """
    doc = Document(title=title)
    if res.demo_config:
        doc.intro.append(_intro(res.demo_config, res.seeds))
    single = outcome(measurements(res)) if res.runs or res.gap or res.flatness_final else []
    story = _story_section(res)
    if story is not None:
        doc.sections.append(story)
    if res.replicates:
        if len(res.seeds) >= MIN_SEEDS:
            doc.sections.append(replicates_section(res.replicates))
        if single:
            seed = res.seeds[0] if res.seeds else 0
            doc.sections.append(
                Section(
                    f"Seed {seed} in detail",
                    paragraphs=[
                        f"The sections below show seed {seed} alone. Its statements compare "
                        "two single runs and are not claims over seeds:",
                        *single,
                    ],
                )
            )
    elif single:
        doc.sections.append(
            Section("Outcome of this run", paragraphs=[f"NOTE: {s}" for s in single])
        )
    if res.sweep:
        doc.sections.append(sweep_section(res.sweep, res.figures))
    if not doc.sections:
        doc.sections.append(Section("Outcome", paragraphs=["Not enough results for an outcome."]))
    absent = []
    for present, section, title, files in SECTIONS:
        if present(res):
            doc.sections.append(_drawn(section, res, title, files))
        else:
            absent.append((title, files))
    if absent and (res.demo_config or res.seeds):
        doc.sections.append(_not_measured(res, absent))
    return doc


def write_report(
    paths: Sequence[str | Path], out: str | Path, *, title: str | None = None
) -> tuple[Path, Path]:
    """Collect, build and write ``out`` (HTML) and the markdown summary beside it."""
    out = Path(out)
    res = collect(paths)
    with exclusive_output(out, cleans=[out, out.with_suffix(".md")]):
        doc = build_document(res, **({"title": title} if title else {}))
        html_path = atomic_write_text(out, render_html(doc))
        md_path = atomic_write_text(out.with_suffix(".md"), render_markdown(doc))
    return html_path, md_path
