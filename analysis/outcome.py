"""The outcome of a run, in sentences computed from its numbers.

Robust overfitting read off the learning curves, and the comparisons of AT and AT-AWP the
report states (accuracy, gap, expected and worst-case flatness, landscape sharpness, flatness
against gap). Every statement is computed, including when AT-AWP did *not* come out better.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from analysis.stats import t_interval
from landscape.storage import Surface


@dataclass
class Measurements:
    """What the outcome is computed from; absent parts stay empty.

    Attributes:
        histories: method label -> its run's per-epoch records (metrics.jsonl).
        gap: rows of ``gap.json``; flatness: rows of the final checkpoints' ``flatness.json``;
        landscapes: the landscape surfaces (labelled by method); correlation: the
        ``correlation.json`` of flatness against gap; certify: ``certify.json`` (randomized
        smoothing and the Gaussian-noise accuracy, per image).
    """

    histories: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    gap: list[dict[str, Any]] = field(default_factory=list)
    flatness: list[dict[str, Any]] = field(default_factory=list)
    landscapes: list[Surface] = field(default_factory=list)
    correlation: dict[str, Any] = field(default_factory=dict)
    certify: dict[str, Any] = field(default_factory=dict)


def fmt_pct(x: float | None) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"


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
            f"Test robust accuracy peaked at {fmt_pct(self.peak_acc)} (epoch "
            f"{self.peak_epoch}) and ended at {fmt_pct(self.last_acc)}."
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


def landscape_rise(surface: Surface) -> float:
    """How far the adversarial loss climbs over the plotted range above its value at alpha = 0
    (test split when measured, else train; mean over directions)."""
    key = "test_adv_loss" if "test_adv_loss" in surface.values else "train_adv_loss"
    v = np.nanmean(surface.values[key], axis=0)
    mid = int(np.argmin(np.abs(surface.x)))
    return float(np.nanmax(v) - v[mid])


def _paired(a: Mapping[int, float], b: Mapping[int, float]) -> tuple[float, float, float]:
    """Mean of b - a over the images both have, with its 95% t interval over images."""
    d = [b[i] - a[i] for i in sorted(set(a) & set(b))]
    low, high = t_interval(d)
    return (float(np.mean(d)) if d else float("nan")), low, high


def _verdict(low: float, high: float, more: str, less: str) -> str:
    if low > 0:
        return more
    if high < 0:
        return less
    return "not resolved (the interval contains 0)"


def certification_statements(
    tables: Mapping[str, Any], a: str = "AT", b: str = "AT-AWP"
) -> list[str]:
    """Randomized smoothing and the Gaussian-noise accuracy of ``b`` against ``a`` (rows of
    ``certify.json``), each a paired difference over the same test images and the same noise
    with a 95% t interval over images; a difference whose interval contains 0 is not resolved."""
    return _radius_statement(tables, a, b) + _noise_statement(tables, a, b)


def _radius_statement(tables: Mapping[str, Any], a: str, b: str) -> list[str]:
    ex = [r for r in tables.get("examples", []) if r.get("model") in (a, b)]
    parts = []
    for sigma in sorted({r["sigma"] for r in ex}):
        radius = {
            m: {r["index"]: r["radius"] if r["correct"] else 0.0 for r in ex
                if r["model"] == m and r["sigma"] == sigma}
            for m in (a, b)
        }  # fmt: skip
        if not (radius[a] and radius[b]):
            continue
        d, low, high = _paired(radius[a], radius[b])
        parts.append(
            f"sigma {sigma:g}: {a} {np.mean(list(radius[a].values())):.3f}, {b} "
            f"{np.mean(list(radius[b].values())):.3f}, difference {d:+.3f} "
            f"[{low:+.3f}, {high:+.3f}]: {_verdict(low, high, f'{b} larger', f'{b} SMALLER')}"
        )
    if not parts:
        return []
    s = next(r for r in tables["summary"] if r.get("label") in (a, b))
    return [
        f"Certified robustness by randomized smoothing (n0 = {s['n0']}, n = {s['n']}, "
        f"alpha = {s['alpha']:g}, {s['examples']} test images), average certified L2 radius "
        f"(0 when wrong or abstaining), paired over the same images and noise with a 95% t "
        f"interval: " + "; ".join(parts) + "."
    ]


def _noise_statement(tables: Mapping[str, Any], a: str, b: str) -> list[str]:
    rows = tables.get("noise_examples", [])
    noise = {m: {r["index"]: r for r in rows if r["model"] == m} for m in (a, b)}
    if not (noise[a] and noise[b]):
        return []
    levels = next(iter(noise[a].values()))["levels"]
    acc = {m: [{i: r["correct"][j] / r["draws"] for i, r in noise[m].items()}
               for j in range(len(levels))] for m in (a, b)}  # fmt: skip
    parts, resolved = [], []
    for j, level in enumerate(levels):
        if level == 0:
            continue
        d, low, high = _paired(acc[a][j], acc[b][j])
        parts.append(f"s = {level:g}: {100 * d:+.1f} points [{100 * low:+.1f}, {100 * high:+.1f}]")
        if low > 0 or high < 0:
            resolved.append(f"s = {level:g} ({b} {'higher' if low > 0 else 'LOWER'})")
    text = (
        f"Accuracy of the base classifier under Gaussian noise x + N(0, s^2) (the rebuttal's "
        f"premise), {b} minus {a}, paired over the same images and noise: "
        + "; ".join(parts)
        + ". Resolved (interval excludes 0) at "
        + (", ".join(resolved) if resolved else "no level")
        + "."
    )
    if 0.0 in levels and len(levels) > 1:
        # Resistance rather than accuracy: what each loses from s = 0 to the largest level.
        j0, top = levels.index(0.0), max(range(len(levels)), key=lambda j: levels[j])
        lost = {m: {i: acc[m][j0][i] - acc[m][top][i] for i in acc[m][j0]} for m in (a, b)}
        d, low, high = _paired(lost[a], lost[b])
        verdict = _verdict(low, high, f"{b} loses MORE", f"{b} loses less")
        text += (
            f" Accuracy lost from s = 0 to s = {levels[top]:g}, {b} minus {a}: "
            f"{100 * d:+.1f} points [{100 * low:+.1f}, {100 * high:+.1f}]: {verdict}."
        )
    return [text]


def outcome(res: Measurements) -> list[str]:
    """Plain statements of what this run measured; each is computed, none is assumed."""
    out = []
    overfit = {label: robust_overfitting(h) for label, h in res.histories.items()}
    for label, ro in overfit.items():
        if ro is not None:
            out.append(f"{label}: {ro.statement()}")
    a, b = overfit.get("AT"), overfit.get("AT-AWP")
    if a is not None and b is not None:
        diff = b.last_acc - a.last_acc
        out.append(
            f"Last-epoch test robust accuracy: AT {fmt_pct(a.last_acc)}, "
            f"AT-AWP {fmt_pct(b.last_acc)} "
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
    exp = [r for r in res.flatness if r.get("kind") == "expected"]
    for alpha in sorted({r["alpha"] for r in exp}):
        rows = {r["label"]: r for r in exp if r["alpha"] == alpha}
        if {"AT", "AT-AWP"} <= set(rows):
            fa, fb = rows["AT"]["flatness_loss"], rows["AT-AWP"]["flatness_loss"]
            out.append(
                f"Expected flatness (robust loss increase) at alpha={alpha:g}: AT "
                f"{fa:.4f}, AT-AWP {fb:.4f}: AT-AWP "
                f"{'is flatter' if fb < fa else 'is NOT flatter'} here."
            )
    worst = {r["label"]: r for r in res.flatness if r.get("kind") == "worst"}
    if {"AT", "AT-AWP"} <= set(worst):
        fa, fb = worst["AT"]["flatness_loss"], worst["AT-AWP"]["flatness_loss"]
        out.append(
            f"Worst-case flatness (gamma={worst['AT']['gamma']:g}, robust loss increase): "
            f"AT {fa:.4f}, AT-AWP {fb:.4f}: AT-AWP "
            f"{'is flatter' if fb < fa else 'is NOT flatter'} in the worst case."
        )
    lands = {s.label: s for s in res.landscapes}
    if {"AT", "AT-AWP"} <= set(lands):
        ra, rb = landscape_rise(lands["AT"]), landscape_rise(lands["AT-AWP"])
        out.append(
            f"Weight loss landscape (attack regenerated): the adversarial loss rises by "
            f"{ra:.3f} for AT and {rb:.3f} for AT-AWP over the plotted range: AT-AWP "
            f"{'is flatter' if rb < ra else 'is NOT flatter'} along this direction."
        )
    for c in res.correlation.get("correlations", []):
        if c["group"] == "all" and c["measure"] == "kendall":
            if c.get("statistic") is None or not math.isfinite(c["statistic"]):
                why = c.get("note") or "undefined"
                out.append(f"Flatness vs gap across {c['n']} checkpoints: Kendall tau {why}.")
                continue
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
    if res.certify:
        out += certification_statements(res.certify)
    return out
