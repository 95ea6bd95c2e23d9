"""The units of a flatness run: their keys, the dispatch from a key, and the summaries.

A run is cut into units with string keys (``base``, ``expected|alpha=0.1|k=3``,
``worst|gamma=0.01|r=0|steps=5|...``), each a pure function of its key and the settings, so
they can be sharded across ranks and resumed (:mod:`analysis.store`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from analysis.flatness import (
    FlatnessConfig,
    FlatnessEstimate,
    Record,
    baseline_unit,
    expected_key,
    expected_unit,
    summarize_expected,
)
from analysis.pacbayes import pac_bayes_bound
from analysis.store import UnitKey
from analysis.worst_case import (
    WorstCaseConfig,
    WorstCaseEstimate,
    summarize_worst,
    worst_key,
    worst_unit,
)
from awp.evaluate import Loss


def flatness_keys(
    cfg: FlatnessConfig,
    worst: WorstCaseConfig | None = None,
    alphas: Sequence[float] | None = None,
) -> list[str]:
    """Unit keys of a flatness run: the baseline, M draws per alpha, restarts per gamma."""
    keys = ["base"]
    for a in cfg.alphas if alphas is None else alphas:
        keys += [expected_key(a, k) for k in range(cfg.samples)]
    if worst is not None:
        for g in worst.gammas:
            keys += [worst_key(g, r, worst) for r in range(worst.ascent_restarts)]
    return keys


def compute_unit(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    key: str,
    *,
    cfg: FlatnessConfig,
    loss: Loss | None = None,
    bn_x: torch.Tensor | None = None,
) -> Record:
    """The record of one unit, from its key (see :func:`flatness_keys`).

    Args:
        model: the network at w (left exactly as it was).
        x: (N, C, H, W) uint8 or float in [0, 1], the fixed subset; y: (N,) labels.
        key: ``base``, ``expected|alpha=..|k=..`` or ``worst|gamma=..|r=..|steps=..|...``.
        cfg: the settings every unit shares (noise, subset, attack, seeds).
        loss: the loss measured (default cross-entropy; :data:`awp.evaluate.Loss`).
        bn_x: training inputs to re-estimate BatchNorm statistics at every measured point
            (None: eval mode with w's statistics, the default).

    Returns:
        A JSON-able record (see :func:`baseline_unit`, :func:`expected_unit`,
        :func:`worst_unit`).
    """
    unit = UnitKey.parse(key)
    if unit.kind == "base":
        return baseline_unit(model, x, y, cfg=cfg, loss=loss, bn_x=bn_x)
    if unit.kind == "expected":
        return expected_unit(
            model,
            x,
            y,
            cfg=cfg,
            alpha=unit.float("alpha"),
            k=unit.int("k"),
            loss=loss,
            bn_x=bn_x,
        )
    if unit.kind == "worst":
        gamma = unit.float("gamma")
        worst = WorstCaseConfig(
            gammas=(gamma,),
            ascent_steps=unit.int("steps"),
            step_fraction=unit.float("fraction"),
            per_batch=unit.flag("per_batch"),
        )
        return worst_unit(
            model,
            x,
            y,
            cfg=cfg,
            worst=worst,
            gamma=gamma,
            restart=unit.int("r"),
            loss=loss,
            bn_x=bn_x,
        )
    raise ValueError(f"unknown flatness unit key {key!r} (kinds: base, expected, worst)")


def summarize(
    records: Mapping[str, Record],
    *,
    cfg: FlatnessConfig,
    worst: WorstCaseConfig | None = None,
    alphas: Sequence[float] | None = None,
) -> tuple[list[FlatnessEstimate], list[WorstCaseEstimate]]:
    """Estimates per alpha (and per gamma) from the records of :func:`flatness_keys`."""
    base = records["base"]
    expected = [
        summarize_expected(
            base,
            [records[expected_key(a, k)] for k in range(cfg.samples)],
            alpha=a,
            noise=cfg.noise,
            confidence=cfg.confidence,
            per_example=cfg.per_example,
        )
        for a in (cfg.alphas if alphas is None else alphas)
    ]
    worst_rows = []
    if worst is not None:
        for g in worst.gammas:
            worst_rows.append(
                summarize_worst(
                    base,
                    [records[worst_key(g, r, worst)] for r in range(worst.ascent_restarts)],
                    gamma=g,
                    per_batch=worst.per_batch,
                )
            )
    return expected, worst_rows


def result_rows(
    records: Mapping[str, Record],
    *,
    cfg: FlatnessConfig,
    worst: WorstCaseConfig | None,
    params: Mapping[str, torch.Tensor],
    n_bound: int,
    delta: float,
    ident: Mapping[str, object],
) -> list[dict]:
    """One table row per alpha (estimate and PAC-Bayes terms) and per gamma (worst case).

    Args:
        records: the finished units of :func:`flatness_keys`.
        cfg, worst: the settings they were computed with.
        params: the perturbed tensors (for the KL term).
        n_bound: training examples n in the bound; delta: its confidence parameter.
        ident: columns naming the checkpoint (checkpoint, sha256, run, method, epoch, label).
    """
    expected, worst_rows = summarize(records, cfg=cfg, worst=worst)
    settings = {
        "noise": cfg.noise,
        "params": cfg.params,
        "split": cfg.split,
        "per_example": cfg.per_example,
        "attack": cfg.attack.describe() if cfg.attack is not None else "none",
    }
    rows = []
    for e in expected:
        bound = pac_bayes_bound(
            params,
            alpha=e.alpha,
            mode=cfg.noise,
            n=n_bound,
            delta=delta,
            base_error=e.base_error,
            flatness=e.flatness,
        )
        est = dataclasses.asdict(e)
        b = {k: v for k, v in dataclasses.asdict(bound).items() if k not in est}
        rows.append({**ident, "kind": "expected", **settings, **est, **b})
    for w in worst_rows:
        assert worst is not None
        ascent = {"ascent_steps": worst.ascent_steps, "step_fraction": worst.step_fraction}
        rows.append({**ident, "kind": "worst", **settings, **ascent, **dataclasses.asdict(w)})
    return rows
