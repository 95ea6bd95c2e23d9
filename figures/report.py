"""``awp report``: one self-contained HTML file (and a markdown summary) from result folders.

Reads what the other stages left on disk, so it can be rerun at any time:
training runs (``metrics.jsonl``, ``config.json``), evaluations (``eval/*.json``), and the
analysis folder (``gap.json``, ``weights.json``, flatness results, ``correlation.json``,
landscape ``*.h5``). Every statement of the outcome is computed from those numbers, including
when AT-AWP did *not* come out flatter or with the smaller gap.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from analysis.gap import method_of
from figures.html import Document, FigureBlock, Section, Table, render_html, render_markdown
from figures.style import color_for, new_figure


# ----------------------------------------------------------------------------- collecting
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
    landscapes: list[Any] = field(default_factory=list)
    demo_config: dict[str, Any] = field(default_factory=dict)
    figures: dict[str, Path] = field(default_factory=dict)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{path} is not valid JSON ({err}); rerun the stage that writes it"
        ) from err


def _read_runs(path: Path) -> list[Run]:
    """A run folder, or every run folder directly inside ``path``."""
    candidates = (
        [path]
        if (path / "metrics.jsonl").exists()
        else sorted(p for p in path.iterdir() if p.is_dir() and (p / "metrics.jsonl").exists())
    )
    runs = []
    for p in candidates:
        cfg = _read_json(p / "config.json") if (p / "config.json").exists() else {}
        hist = [json.loads(x) for x in (p / "metrics.jsonl").read_text().splitlines() if x.strip()]
        runs.append(Run(method_of(cfg), p, cfg, hist))
    return runs


def collect(paths: Sequence[str | Path]) -> Results:
    """Gather results from demo folders, run folders or analysis folders.

    Raises:
        FileNotFoundError: a path that does not exist.
        ValueError: nothing to report in the paths given.
    """
    from landscape.storage import read_surface

    roots = [Path(p) for p in paths]
    for p in roots:
        if not p.exists():
            raise FileNotFoundError(
                f"{p} does not exist; pass a demo folder (runs/demo) or run "
                f"folders holding metrics.jsonl"
            )
    res = Results(root=roots[0])
    analysis_dirs: list[Path] = []
    for root in roots:
        if (root / "demo_config.json").exists():
            res.demo_config = _read_json(root / "demo_config.json")
        res.runs += _read_runs(root) if root.is_dir() else []
        for cand in (root / "analysis", root):
            if cand.is_dir() and cand not in analysis_dirs:
                analysis_dirs.append(cand)
        for e in sorted((root / "eval").glob("*.json")) if (root / "eval").is_dir() else []:
            res.evals.append({"file": e.name, **_read_json(e)})
    for run in res.runs:
        if (run.path / "analysis").is_dir() and run.path / "analysis" not in analysis_dirs:
            analysis_dirs.append(run.path / "analysis")
    for d in analysis_dirs:
        if (d / "gap.json").exists():
            res.gap += _read_json(d / "gap.json")["rows"]
        if (d / "weights.json").exists() and not res.weights:
            res.weights = _read_json(d / "weights.json")
        if (d / "correlation.json").exists() and not res.correlation:
            res.correlation = _read_json(d / "correlation.json")
        for sub, target in (
            ("flatness_final", res.flatness_final),
            ("flatness_epochs", res.flatness_epochs),
            (".", res.flatness_final),
        ):
            f = d / sub / "flatness.json"
            if f.exists() and not target:
                target += _read_json(f)["rows"]
        for h5 in sorted((d / "landscape").glob("*.h5")) if (d / "landscape").is_dir() else []:
            if not h5.name.endswith(".directions.h5"):
                res.landscapes.append(read_surface(h5))
        for name in ("weights_hist", "weights_depth"):
            if (d / f"{name}.png").exists() and name not in res.figures:
                res.figures[name] = d / f"{name}.png"
        scatter = sorted(d.glob("*_vs_gap.png"))
        if scatter and "vs_gap" not in res.figures:
            res.figures["vs_gap"] = scatter[0]
    if not (res.runs or res.gap or res.landscapes or res.weights or res.flatness_final):
        raise ValueError(
            f"nothing to report in {', '.join(map(str, roots))}: expected run "
            f"folders (metrics.jsonl) or an analysis folder (gap.json, ...)"
        )
    return res


# ----------------------------------------------------------------------------- figures
def plot_learning_curves(runs: Sequence[Run]) -> Figure:
    """Train and test robust accuracy (left, AWP Fig. 3(d) style) and robust loss (right) per
    evaluated epoch, one colour per method; train dashed, test solid."""
    fig, (acc_ax, loss_ax) = new_figure(1, 2, width=4.2, height=3.2)
    for i, run in enumerate(runs):
        color = color_for(run.label, i)
        for split, style in (
            ("train", dict(linestyle="--", marker=".")),
            ("test", dict(marker="o", markersize=3)),
        ):
            for ax, key in ((acc_ax, "robust_acc"), (loss_ax, "robust_loss")):
                rows = [r for r in run.history if f"{split}_{key}" in r]
                if not rows:
                    continue
                ax.plot(
                    [r["epoch"] for r in rows],
                    [r[f"{split}_{key}"] for r in rows],
                    color=color,
                    **style,
                    label=f"{run.label} {split}",
                )
    for ax, label in ((acc_ax, "robust accuracy (PGD)"), (loss_ax, "robust loss (PGD)")):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(label)
    acc_ax.legend(frameon=False)
    return fig


def plot_gap_by_epoch(rows: Sequence[Mapping[str, Any]]) -> Figure:
    """Robust generalization gap (train minus test robust accuracy) per checkpoint epoch."""
    fig, ax = new_figure(width=4.2, height=3.0)
    for i, method in enumerate(sorted({r["method"] for r in rows})):
        pts = sorted(
            (r["epoch"], r["gap"])
            for r in rows
            if r["method"] == method and r.get("epoch") is not None
        )
        if pts:
            ax.plot(*zip(*pts), marker="o", markersize=3, color=color_for(method, i), label=method)
    ax.axhline(0, color="#888", linewidth=0.8)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("robust gap (train - test acc.)")
    ax.legend(frameon=False)
    return fig


def plot_landscape(surfaces: Sequence[Any], split: str) -> Figure:
    """Adversarial loss along alpha with attacks regenerated (solid) and fixed at w0 (dashed)."""
    fig, ax = new_figure(width=4.4, height=3.2)
    for i, s in enumerate(surfaces):
        color = color_for(s.label, i)
        regen = np.nanmean(s.values[f"{split}_adv_loss"], axis=0)
        ax.plot(
            s.x,
            regen,
            color=color,
            marker="o",
            markersize=3,
            label=f"{s.label} (attack regenerated)",
        )
        fixed = s.values.get(f"{split}_adv_fixed_loss")
        if fixed is not None and np.isfinite(fixed).any():
            ax.plot(
                s.x,
                np.nanmean(fixed, axis=0),
                color=color,
                linestyle="--",
                label=f"{s.label} (x_adv fixed at w0)",
            )
    ax.set_xlabel(r"$\alpha$ (filter-normalized direction)")
    ax.set_ylabel(f"{split} adversarial loss")
    ax.legend(frameon=False)
    return fig


# ----------------------------------------------------------------------------- tables
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


def _fmt_pct(x: float | None) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"


# ----------------------------------------------------------------------------- outcome
#: Rise of the test robust loss above its minimum (nats) that counts as robust overfitting.
OVERFIT_LOSS_RISE = 0.02


@dataclass(frozen=True)
class RobustOverfitting:
    """Robust overfitting read off the per-epoch evaluations (Rice et al.): after some epoch the
    test robust loss rises while the train robust loss keeps falling.

    The loss is the criterion because on a few hundred test images the robust accuracy moves
    in steps of several tenths of a point per image; both are reported.
    """

    min_epoch: int  # epoch of the lowest test robust loss
    min_loss: float
    last_epoch: int
    last_loss: float
    train_loss_at_min: float | None
    train_loss_last: float | None
    peak_epoch: int  # epoch of the highest test robust accuracy
    peak_acc: float
    last_acc: float

    @property
    def loss_rise(self) -> float:
        return self.last_loss - self.min_loss

    @property
    def visible(self) -> bool:
        train_fell = (
            self.train_loss_at_min is None
            or self.train_loss_last is None
            or self.train_loss_last < self.train_loss_at_min
        )
        return self.loss_rise > OVERFIT_LOSS_RISE and train_fell

    def statement(self) -> str:
        train = (
            f", while its train robust loss fell from {self.train_loss_at_min:.3f} to "
            f"{self.train_loss_last:.3f}"
            if self.train_loss_at_min is not None and self.train_loss_last is not None
            else ""
        )
        acc = (
            f"Test robust accuracy peaked at {_fmt_pct(self.peak_acc)} (epoch "
            f"{self.peak_epoch}) and ended at {_fmt_pct(self.last_acc)}."
        )
        if self.visible:
            return (
                f"robust overfitting is visible: test robust loss was lowest at epoch "
                f"{self.min_epoch} ({self.min_loss:.3f}) and rose by {self.loss_rise:.3f} to "
                f"{self.last_loss:.3f} at epoch {self.last_epoch}{train}. {acc}"
            )
        return (
            f"no robust overfitting visible: test robust loss ended at {self.last_loss:.3f}, "
            f"{self.loss_rise:.3f} above its lowest ({self.min_loss:.3f}, epoch "
            f"{self.min_epoch}; a rise above {OVERFIT_LOSS_RISE} with a falling train robust "
            f"loss would count){train}. {acc}"
        )


def robust_overfitting(history: Sequence[Mapping[str, Any]]) -> RobustOverfitting | None:
    """Robust overfitting of one run from its metrics records; None without test robust loss."""
    rows = [r for r in history if "test_robust_loss" in r and "test_robust_acc" in r]
    if not rows:
        return None
    low = min(rows, key=lambda r: r["test_robust_loss"])  # first minimum
    peak = max(rows, key=lambda r: r["test_robust_acc"])
    last = rows[-1]
    return RobustOverfitting(
        min_epoch=int(low["epoch"]),
        min_loss=float(low["test_robust_loss"]),
        last_epoch=int(last["epoch"]),
        last_loss=float(last["test_robust_loss"]),
        train_loss_at_min=low.get("train_robust_loss"),
        train_loss_last=last.get("train_robust_loss"),
        peak_epoch=int(peak["epoch"]),
        peak_acc=float(peak["test_robust_acc"]),
        last_acc=float(last["test_robust_acc"]),
    )


def outcome(res: Results) -> list[str]:
    """Plain statements of what this run measured; each is computed, none is assumed."""
    out = []
    overfit = {r.label: robust_overfitting(r.history) for r in res.runs}
    for label, ro in overfit.items():
        if ro is not None:
            out.append(f"{label}: {ro.statement()}")
    a, b = overfit.get("AT"), overfit.get("AT-AWP")
    if a is not None and b is not None:
        diff = b.last_acc - a.last_acc
        out.append(
            f"Last-epoch test robust accuracy: AT {_fmt_pct(a.last_acc)}, "
            f"AT-AWP {_fmt_pct(b.last_acc)} "
            f"({'AT-AWP higher' if diff > 0 else 'AT-AWP lower' if diff < 0 else 'equal,'} by "
            f"{abs(100 * diff):.1f} points)."
        )
    if res.gap:
        last_gap = {}
        for r in res.gap:
            if r.get("epoch") is not None and r["epoch"] >= last_gap.get(r["method"], {}).get(
                "epoch", -1
            ):
                last_gap[r["method"]] = r
        if {"AT", "AT-AWP"} <= set(last_gap):
            ga, gb = last_gap["AT"]["gap"], last_gap["AT-AWP"]["gap"]
            out.append(
                f"Robust generalization gap at the last checkpoint: AT {100 * ga:.1f} "
                f"points, AT-AWP {100 * gb:.1f} points: AT-AWP "
                f"{'has the smaller gap' if gb < ga else 'does NOT have the smaller gap'}."
            )
    exp = [r for r in res.flatness_final if r.get("kind") == "expected"]
    for alpha in sorted({r["alpha"] for r in exp}):
        rows = {r["label"]: r for r in exp if r["alpha"] == alpha}
        if {"AT", "AT-AWP"} <= set(rows):
            fa, fb = rows["AT"]["flatness_loss"], rows["AT-AWP"]["flatness_loss"]
            out.append(
                f"Expected flatness (robust loss increase) at alpha={alpha:g}: AT "
                f"{fa:.4f}, AT-AWP {fb:.4f}: AT-AWP "
                f"{'is flatter' if fb < fa else 'is NOT flatter'} here."
            )
    worst = {r["label"]: r for r in res.flatness_final if r.get("kind") == "worst"}
    if {"AT", "AT-AWP"} <= set(worst):
        fa, fb = worst["AT"]["flatness_loss"], worst["AT-AWP"]["flatness_loss"]
        out.append(
            f"Worst-case flatness (gamma={worst['AT']['gamma']:g}, robust loss increase): "
            f"AT {fa:.4f}, AT-AWP {fb:.4f}: AT-AWP "
            f"{'is flatter' if fb < fa else 'is NOT flatter'} in the worst case."
        )
    lands = {s.label: s for s in res.landscapes}
    if {"AT", "AT-AWP"} <= set(lands):

        def rise(s: Any) -> float:
            v = (
                np.nanmean(s.values["test_adv_loss"], axis=0)
                if "test_adv_loss" in s.values
                else np.nanmean(s.values["train_adv_loss"], axis=0)
            )
            mid = int(np.argmin(np.abs(s.x)))
            return float(np.nanmax(v) - v[mid])

        ra, rb = rise(lands["AT"]), rise(lands["AT-AWP"])
        out.append(
            f"Weight loss landscape (attack regenerated): the adversarial loss rises by "
            f"{ra:.3f} for AT and {rb:.3f} for AT-AWP over the plotted range: AT-AWP "
            f"{'is flatter' if rb < ra else 'is NOT flatter'} along this direction."
        )
    for c in res.correlation.get("correlations", []):
        if c["group"] == "all" and c["measure"] == "kendall":
            positive = c["statistic"] > 0 and c["pvalue"] < 0.05
            verdict = (
                "a significant positive association, as the PAC-Bayes argument predicts"
                if positive
                else "no significant positive association in this run"
            )
            out.append(
                f"Flatness vs gap across {c['n']} checkpoints: Kendall tau = "
                f"{c['statistic']:.3f} (p = {c['pvalue']:.3g}); {verdict}."
            )
    return out


# ----------------------------------------------------------------------------- document
def _png(path: Path, caption: str, alt: str) -> FigureBlock:
    return FigureBlock(path.read_bytes(), caption, alt)


def build_document(res: Results, *, title: str = "AWP: what this run measured") -> Document:
    """The report's document: sections for every kind of result found."""
    doc = Document(title=title)
    cfg = res.demo_config
    if cfg:
        data = cfg.get("data", {})
        doc.intro.append(
            f"Trained {cfg.get('model')} (width {cfg.get('width')}) with AT and AT-AWP "
            f"(gamma {cfg.get('gamma')}) for {cfg.get('epochs')} epochs on "
            f"{data.get('dataset')} with the same seed, then measured everything below on "
            f"this machine. Numbers come from this run only; small data and short training "
            f"make them noisy."
        )
    statements = outcome(res)
    doc.sections.append(
        Section(
            "Outcome of this run",
            paragraphs=[f"NOTE: {s}" for s in statements] or ["Not enough results for an outcome."],
        )
    )

    if res.runs:
        s = Section("Accuracy and learning curves")
        s.tables.append(
            Table(
                accuracy_rows(res),
                caption="Test accuracy (best = highest "
                "validation robust accuracy; last = final epoch)",
            )
        )
        s.figures.append(
            FigureBlock.from_figure(
                plot_learning_curves(res.runs),
                "Train (dashed) and test (solid) robust accuracy (left, the paper's Fig. 3(d)) and "
                "robust loss (right) per evaluated epoch.",
                "learning curves",
            )
        )
        doc.sections.append(s)
    if res.gap:
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
            FigureBlock.from_figure(
                plot_gap_by_epoch(res.gap), "Robust gap per epoch.", "gap by epoch"
            )
        )
        doc.sections.append(s)
    if res.landscapes:
        s = Section("Weight loss landscape")
        s.paragraphs.append(
            "theta = theta0 + alpha d along a filter-normalized Gaussian direction "
            "(same seed for every model); at every alpha PGD is run again on the "
            "perturbed model (solid). Dashed: adversarial examples crafted once at "
            "theta0 and reused, which underestimates the loss."
        )
        for split in ("test", "train"):
            have = [
                x
                for x in res.landscapes
                if f"{split}_adv_loss" in x.values
                and np.isfinite(x.values[f"{split}_adv_loss"]).any()
            ]
            if have:
                s.figures.append(
                    FigureBlock.from_figure(
                        plot_landscape(have, split),
                        f"{split} adversarial loss along alpha.",
                        f"landscape {split}",
                    )
                )
        doc.sections.append(s)
    if res.weights:
        s = Section("Weight histograms")
        comps = res.weights.get("comparisons", [])
        s.tables.append(
            Table(
                res.weights.get("stats", []),
                columns=[
                    "label",
                    "layer",
                    "n",
                    "norm",
                    "std",
                    "mean_abs",
                    "skewness",
                    "excess_kurtosis",
                ],
                caption="Per-layer statistics",
            )
        )
        if comps:
            s.tables.append(
                Table(
                    comps,
                    columns=[
                        "layer",
                        "label_a",
                        "label_b",
                        "ks_statistic",
                        "ks_pvalue",
                        "wasserstein",
                        "norm_ratio",
                    ],
                    caption="Between checkpoints",
                )
            )
        for name, cap in (
            ("weights_hist", "Weight values (rebuttal R#1 Q3 figure)."),
            ("weights_depth", "Per-layer statistics against depth."),
        ):
            if name in res.figures:
                s.figures.append(_png(res.figures[name], cap, name))
        doc.sections.append(s)
    if res.flatness_final:
        s = Section("Flatness and the PAC-Bayes bound")
        exp = [r for r in res.flatness_final if r.get("kind") == "expected"]
        worst = [r for r in res.flatness_final if r.get("kind") == "worst"]
        s.paragraphs.append(
            "Expected flatness E_u[rho(w+u)] - rho(w) with rho the robust 0-1 "
            "error (and robust loss), attacks regenerated on every w+u; worst "
            "case: max over ||v_l|| <= gamma ||w_l|| by projected ascent."
        )
        if exp:
            s.tables.append(
                Table(
                    exp,
                    columns=[
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
                    ],
                    caption="Expected flatness",
                )
            )
            s.tables.append(
                Table(
                    exp,
                    columns=[
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
                    ],
                    caption="PAC-Bayes terms (exact KL vs the rebuttal's 1/(2 alpha)); "
                    "vacuous = bound above 1",
                )
            )
            from figures.flatness import plot_flatness_curve

            s.figures.append(
                FigureBlock.from_figure(
                    plot_flatness_curve(exp, measure="flatness_loss"),
                    "Expected flatness (robust loss increase) against alpha.",
                    "flatness curve",
                )
            )
        if worst:
            s.tables.append(
                Table(
                    worst,
                    columns=[
                        "label",
                        "gamma",
                        "ascent_steps",
                        "n",
                        "base_error",
                        "worst_error",
                        "flatness",
                        "flatness_loss",
                    ],
                    caption="Worst-case flatness",
                )
            )
        doc.sections.append(s)
    if res.correlation:
        s = Section("Flatness versus the robust gap")
        s.paragraphs.append(
            f"Across checkpoints: x = {res.correlation.get('x')} "
            f"({', '.join(res.correlation.get('where', []))}), y = "
            f"{res.correlation.get('y')}."
        )
        s.tables.append(
            Table(
                res.correlation.get("correlations", []),
                columns=["group", "measure", "n", "statistic", "pvalue", "ci_low", "ci_high"],
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
        doc.sections.append(s)
    return doc


def write_report(
    paths: Sequence[str | Path], out: str | Path, *, title: str | None = None
) -> tuple[Path, Path]:
    """Collect, build and write ``out`` (HTML) and the markdown summary beside it."""
    from awp.checkpoint import atomic_write_text

    res = collect(paths)
    doc = build_document(res, **({"title": title} if title else {}))
    out = Path(out)
    html_path = atomic_write_text(out, render_html(doc))
    md_path = atomic_write_text(out.with_suffix(".md"), render_markdown(doc))
    return html_path, md_path


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``awp report``."""
    p = sub.add_parser("report", help="self-contained HTML report (+ markdown) of result folders")
    p.add_argument(
        "paths",
        nargs="+",
        type=Path,
        help="a demo folder, run folders (metrics.jsonl) or analysis folders",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="HTML file (default: report.html in the first folder)",
    )
    p.add_argument("--title", default=None)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    out = args.out or args.paths[0] / "report.html"
    html_path, md_path = write_report(args.paths, out, title=args.title)
    print(f"report: {html_path} (self-contained), summary: {md_path}")
    return 0
