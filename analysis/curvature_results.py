"""A curvature run's records as results: the table row, the per-layer blocks, the AT vs AT-AWP
sentences.

The records are those of :mod:`analysis.curvature` (keyed units); the result of a checkpoint is
what ``awp hessian`` writes as ``result.json`` and gathers in ``hessian.json``: one row per
checkpoint (identity columns, settings, one number per column, so ``awp correlate`` can join it
on the sha256), the eigenvalues, the trace estimate, the layers and the SLQ runs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from analysis.curvature import (
    HessianConfig,
    Record,
    eigs_key,
    layer_key,
    power_key,
    slq_key,
    trace_probes,
)
from analysis.hessian_estimators import broadening, slq_moment, summarize_trace


@dataclass(frozen=True)
class LayerCurvature:
    """One layer's diagonal block: trace (Hutchinson, with interval) and top eigenvalue."""

    layer: str
    depth: int
    numel: int
    trace: float | None
    trace_low: float | None
    trace_high: float | None
    top_eigenvalue: float | None
    mass_v1: float | None  # share of the top eigenvector's squared norm in this layer


def summarize(
    records: Mapping[str, Record], cfg: HessianConfig, ident: Mapping[str, Any]
) -> dict[str, Any]:
    """A checkpoint's result: the table row, the eigenvalues, trace, layers and SLQ runs."""
    base = records["base"]
    names = [n for n, _ in base["layers"]]
    eigs = records.get(eigs_key(cfg.top_k, cfg.eig_tol, cfg.lanczos_vectors)) if cfg.top_k else None
    probes = trace_probes(records) if cfg.trace else []
    trace = summarize_trace([r["quad"] for r in probes], cfg.confidence) if probes else None
    slq = [records[slq_key(cfg.slq_steps, r)] for r in range(cfg.slq_runs)] if cfg.density else []
    runs = [(r["nodes"], r["weights"]) for r in slq]
    layers = []
    for d, (name, numel) in enumerate(base["layers"]):
        est = summarize_trace([r["layers"][d] for r in probes], cfg.confidence) if probes else None
        block = (
            records.get(layer_key(name, cfg.eig_tol, cfg.lanczos_vectors))
            if cfg.per_layer
            else None
        )
        layers.append(
            LayerCurvature(
                layer=name,
                depth=d,
                numel=numel,
                trace=est.trace if est else None,
                trace_low=est.ci_low if est else None,
                trace_high=est.ci_high if est else None,
                top_eigenvalue=block["value"] if block else None,
                mass_v1=eigs["layer_mass"][0][d] if eigs else None,
            )
        )
    power = records.get(power_key(cfg.top_k)) if cfg.power else None
    hvps = (eigs["hvps"] + eigs["check_hvps"] if eigs else 0) + len(probes)
    hvps += power["hvps"] if power else 0
    hvps += sum(r["hvps"] for r in slq)
    if cfg.per_layer:
        hvps += sum(records[layer_key(n, cfg.eig_tol, cfg.lanczos_vectors)]["hvps"] for n in names)
    row = result_row(base, cfg, ident, eigs=eigs, trace=trace, runs=runs, hvps=hvps)
    if power:
        row.update(power_top_eigenvalue=power["values"][0], power_hvps=power["hvps"])
    return {
        **ident,
        "row": row,
        "eigenvalues": eigs["values"] if eigs else [],
        "eigen": eigs,
        "trace": asdict(trace) if trace else None,
        "layers": [asdict(r) for r in layers],
        "density": (
            {
                "runs": [[list(n), list(w)] for n, w in runs],
                "sigma": broadening(runs, cfg.slq_sigma),
            }
            if runs
            else None
        ),
    }


def result_row(
    base: Record,
    cfg: HessianConfig,
    ident: Mapping[str, Any],
    *,
    eigs: Record | None,
    trace: Any,
    runs: Sequence[tuple[Sequence[float], Sequence[float]]],
    hvps: int,
) -> dict[str, Any]:
    """The checkpoint's row of hessian.json/.csv: identity, settings, one number per column."""
    row: dict[str, Any] = {
        **ident,
        "kind": "hessian",
        "loss_type": cfg.loss,
        "split": cfg.split,
        "attack": cfg.attack.describe() if cfg.loss == "adv" else "none",
        "params": cfg.params,
        "dtype": cfg.dtype,
        "n": base["n"],
        "p": base["p"],
        "loss": base["loss"],
        "accuracy": base["accuracy"],
        "weight_norm": base["weight_norm"],
    }
    if eigs is not None:
        for j, v in enumerate(eigs["values"]):
            row["top_eigenvalue" if j == 0 else f"eigenvalue_{j + 1}"] = v
        row["eig_hvps"] = eigs["hvps"]
        row["eig_converged"] = eigs["converged"]
        row["eig_residual_max"] = float(np.nanmax(eigs["residuals"]))
    if trace is not None:
        row.update(
            trace=trace.trace,
            trace_low=trace.ci_low,
            trace_high=trace.ci_high,
            trace_probes=trace.probes,
            trace_confidence=trace.confidence,
            trace_rel_half_width=trace.rel_half_width,
        )
        if eigs is not None and trace.trace:
            row["top_over_trace"] = eigs["values"][0] / trace.trace
    if runs:
        row.update(
            slq_runs=len(runs),
            slq_steps=cfg.slq_steps,
            slq_trace=base["p"] * slq_moment(runs, 1),  # p * mean node: estimates tr(H)
            slq_second_moment=slq_moment(runs, 2),  # estimates tr(H^2) / p
        )
    row["hvps"] = hvps
    return row


def curvature_statement(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Sentences comparing AT and AT-AWP (first row of each method), computed from the rows;
    a trace difference whose intervals overlap is called not resolved."""
    by = {}
    for r in rows:
        by.setdefault(str(r.get("method")), r)
    if "AT" not in by or "AT-AWP" not in by:
        return []
    a, b = by["AT"], by["AT-AWP"]
    out = []
    if a.get("top_eigenvalue") is not None and b.get("top_eigenvalue") is not None:
        word = "smaller" if b["top_eigenvalue"] < a["top_eigenvalue"] else "NOT smaller"
        out.append(
            f"AT-AWP's top Hessian eigenvalue is {word} than AT's "
            f"({b['top_eigenvalue']:.4g} vs {a['top_eigenvalue']:.4g}, on one fixed subset: "
            f"no interval over subsets)."
        )
    if a.get("trace") is not None and b.get("trace") is not None:
        overlap = b["trace_high"] >= a["trace_low"] and a["trace_high"] >= b["trace_low"]
        word = "smaller" if b["trace"] < a["trace"] else "NOT smaller"
        note = " (the intervals overlap: not resolved)" if overlap else ""
        out.append(
            f"AT-AWP's Hessian trace is {word} than AT's ({b['trace']:.4g} "
            f"[{b['trace_low']:.4g}, {b['trace_high']:.4g}] vs {a['trace']:.4g} "
            f"[{a['trace_low']:.4g}, {a['trace_high']:.4g}]){note}."
        )
    return out
