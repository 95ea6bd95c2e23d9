"""A certification run cut into per-example units, and what is read off their counts.

A unit samples; the statistics come after. ``sigma=0.25|i=123`` holds the selection and
estimation counts of test image 123 under sigma 0.25, ``noise|i=123`` its correct counts at
every level of the Gaussian-noise curve, ``predict|sigma=0.25|i=123`` PREDICT's counts. Each is
a pure function of its key and the settings (noise seeds derive from the seed and the image's
index in the dataset, not from the rank, the batch size or the subset), so units are sharded
across ranks and resumed by :mod:`analysis.store`. The decisions (class, pA_lower, radius,
abstention) are computed from the counts at the stated alpha (:func:`example_rows`), then
summarized per sigma (:func:`summary_rows`): certified accuracy at radii, the average certified
radius, abstentions and the base classifier's accuracy under that noise.

Reference: Cohen, Rosenfeld, Kolter, ICML 2019 (certified accuracy at radius r: the fraction of
the test set that CERTIFY classifies correctly with a radius of at least r).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from scipy.stats import norm
from torch import nn

from analysis.certify import (
    ABSTAIN,
    certify,
    certify_from_counts,
    noise_accuracy_rows,
    noise_correct,
    predict,
    predict_from_counts,
)
from analysis.config import (  # noqa: F401 - re-exported: CertifyConfig moved there
    MAX_SAMPLES,
    N_WHY,
    SD_WHY,
    CertifyConfig,
)
from analysis.stats import clopper_pearson
from analysis.store import UnitKey
from awp.seeds import derive_seed

Record = dict[str, Any]


def unit_keys(cfg: CertifyConfig, indices: Sequence[int]) -> dict[str, list[str]]:
    """The unit keys of each store for test images ``indices`` (dataset indices)."""
    keys = {"certify": [str(UnitKey.of("", sigma=s, i=i)) for s in cfg.sigmas for i in indices]}
    if cfg.predict:
        keys["predict"] = [
            str(UnitKey.of("predict", sigma=s, i=i)) for s in cfg.sigmas for i in indices
        ]
    if cfg.noise_draws:
        keys["noise"] = [str(UnitKey.of("noise", i=i)) for i in indices]
    return keys


def unit_index(key: str) -> int:
    """The dataset index of the test image a unit key names (its ``i`` field)."""
    return UnitKey.parse(key).int("i")


def compute_unit(
    model: nn.Module, x: torch.Tensor, y: int, key: str, *, cfg: CertifyConfig
) -> Record:
    """The record of one unit (see the module): counts, the label, and the seconds it took.

    A thin call of the tested :func:`analysis.certify.certify`, :func:`~analysis.certify.predict`
    and :func:`~analysis.certify.noise_correct` with the image's seed
    ``derive_seed(cfg.seed, "certify" | "noise", index)``; the decisions are made later from
    the counts (:func:`example_rows`), at the stated alpha.

    Args:
        model: the base classifier on the device (left as it was).
        x: the unit's test image (C, H, W) float in [0, 1] on the device; y: its label.
        key: a key of :func:`unit_keys`; cfg: the settings.
    """
    unit = UnitKey.parse(key)
    index = unit.int("i")
    t0 = time.perf_counter()
    common = dict(batch_size=cfg.batch(x.device), workers=cfg.threads(x.device))
    record: Record = {"index": index, "label": int(y)}
    if unit.kind == "noise":
        record["correct"] = noise_correct(
            model,
            x,
            y,
            levels=cfg.noise_levels,
            draws=cfg.noise_draws,
            seed=derive_seed(cfg.seed, "noise", index),
            batch_size=cfg.batch(x.device),
        )
    elif unit.kind in ("", "predict"):
        sigma = unit.float("sigma")
        seed = derive_seed(cfg.seed, "certify", index)
        record["sigma"] = sigma
        if unit.kind == "predict":
            _, counts = predict(
                model, x, sigma=sigma, n=cfg.n, alpha=cfg.alpha, seed=seed, **common
            )
        else:
            _, counts0, counts = certify(
                model, x, sigma=sigma, n0=cfg.n0, n=cfg.n, alpha=cfg.alpha, seed=seed, **common
            )
            record["counts0"] = counts0.tolist()
        record["counts"] = counts.tolist()
    else:
        raise ValueError(f"unknown certify unit key {key!r} (kinds: sigma=..|i=.., predict, noise)")
    record["seconds"] = time.perf_counter() - t0
    return record


def example_rows(
    records: Mapping[str, Record],
    cfg: CertifyConfig,
    *,
    predictions: Mapping[str, Record] | None = None,
) -> list[Record]:
    """One row per (sigma, example): CERTIFY's decision at ``cfg.alpha`` from the counts.

    Columns: sigma, index, label, prediction (-1 = abstain), radius, correct, abstained,
    p_lower, count (n_A), n0, n, counts0, counts, seconds; with PREDICT's records also
    ``predict`` (its class or -1) and ``predict_correct``.
    """
    predictions = predictions or {}
    rows = []
    for key, r in records.items():
        cert = certify_from_counts(r["counts0"], r["counts"], sigma=r["sigma"], alpha=cfg.alpha)
        row = {
            "sigma": r["sigma"],
            "index": r["index"],
            "label": r["label"],
            "prediction": cert.prediction,
            "radius": cert.radius,
            "correct": cert.prediction == r["label"],
            "abstained": cert.abstained,
            "p_lower": cert.p_lower,
            "count": cert.count,
            "n0": sum(r["counts0"]),
            "n": sum(r["counts"]),
            "counts0": r["counts0"],
            "counts": r["counts"],
            "seconds": r["seconds"],
        }
        p = predictions.get(f"predict|{key}")
        if p is not None:
            row["predict"] = predict_from_counts(p["counts"], alpha=cfg.alpha)
            row["predict_correct"] = row["predict"] == r["label"]
        rows.append(row)
    return rows


def certified_accuracy(rows: Sequence[Mapping[str, Any]], radii: Sequence[float]) -> list[float]:
    """Fraction of ``rows`` certified correct with radius >= r, for each r of ``radii``."""
    if not rows:
        return [float("nan")] * len(radii)
    good = [r["radius"] for r in rows if r["correct"] and r["prediction"] != ABSTAIN]
    return [sum(g >= t for g in good) / len(rows) for t in radii]


def accuracy_curve(rows: Sequence[Mapping[str, Any]]) -> list[tuple[float, float]]:
    """The whole certified-accuracy curve of ``rows`` (one sigma, one model) as its steps:
    (r, accuracy at r) at r = 0 and at every certified radius; the curve is constant between
    them and drops just after each r."""
    radii = sorted({0.0, *(float(r["radius"]) for r in rows if r["correct"])})
    return list(zip(radii, certified_accuracy(rows, radii)))


def summary_rows(
    rows: Sequence[Mapping[str, Any]], cfg: CertifyConfig, *, confidence: float = 0.95
) -> list[Record]:
    """Per sigma: certified accuracy at ``cfg.radii`` (``acc@r`` columns), its value at radius 0
    with a Clopper-Pearson interval over examples, abstentions, the average certified radius
    (radius of correct answers, 0 otherwise) and the base classifier's accuracy under that
    noise (the mean over examples of counts[label] / n)."""
    out = []
    for sigma in sorted({r["sigma"] for r in rows}):
        mine = [r for r in rows if r["sigma"] == sigma]
        m = len(mine)
        correct = sum(1 for r in mine if r["correct"])
        low, high = clopper_pearson(correct, m, confidence)
        row: Record = {
            "sigma": sigma,
            "examples": m,
            "n0": cfg.n0,
            "n": cfg.n,
            "alpha": cfg.alpha,
            "accuracy": correct / m,
            "accuracy_low": low,
            "accuracy_high": high,
            "abstained": sum(1 for r in mine if r["abstained"]) / m,
            "acr": sum(r["radius"] for r in mine if r["correct"]) / m,
            "noise_acc": sum(r["counts"][r["label"]] / r["n"] for r in mine) / m,
            "max_radius": sigma * _max_z(cfg.n, cfg.alpha),
        }
        for t, acc in zip(cfg.radii, certified_accuracy(mine, cfg.radii)):
            row[f"acc@{t:g}"] = acc
        if "predict" in mine[0]:
            row["predict_accuracy"] = sum(1 for r in mine if r["predict_correct"]) / m
            row["predict_abstained"] = sum(1 for r in mine if r["predict"] == ABSTAIN) / m
        out.append(row)
    return out


def _max_z(n: int, alpha: float) -> float:
    """Phi^-1 of the largest pA_lower n samples can give (all n on one class): the largest
    certifiable radius is sigma times this."""
    return float(norm.ppf(alpha ** (1 / n)))


def noise_rows(records: Mapping[str, Record], cfg: CertifyConfig) -> list[Record]:
    """The Gaussian-noise accuracy curve from the ``noise|i=..`` records: one row per level."""
    correct = [r["correct"] for r in records.values()]
    rows = noise_accuracy_rows(correct, cfg.noise_levels, draws=cfg.noise_draws)
    return [
        {"level": a.level, "accuracy": a.accuracy, "low": a.low, "high": a.high,
         "examples": a.n, "draws": a.draws}
        for a in rows
    ]  # fmt: skip
