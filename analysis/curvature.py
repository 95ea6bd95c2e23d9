"""Curvature of the (robust) loss: top Hessian eigenvalues, trace, eigenvalue density, per layer.

PyHessian's measures, for the mean loss over a fixed seeded subset with BatchNorm in eval mode
(:mod:`awp.hessian`): with ``loss="adv"`` the inputs are x_adv crafted once at w and held
fixed. By Danskin's theorem that loss has the robust loss's gradient at w, but not its full
curvature, which also moves with x_adv (the measured H leaves that term out).

A measurement is cut into units with string keys, each a pure function of its key and the
settings, kept and skipped by :func:`analysis.store.run_units` (resume), and computed by all
ranks together (``collective``: each rank sums the products of its share of the batches and
they are all-reduced):

- ``base``: the loss and accuracy at w, the parameter count and the layers;
- ``eigs|k=..|tol=..``: the top-k eigenpairs (ARPACK Lanczos), residuals, where each lives;
- ``trace|i=..``: Hutchinson probe i, z^T H z with Rademacher z, and z_l^T (H z)_l per layer
  (E = tr H_ll, the layer's diagonal block: the same products give every block's trace);
- ``slq|steps=..|r=..``: stochastic Lanczos quadrature run r (nodes and weights);
- ``layer|name=..|tol=..``: the top eigenvalue of one layer's diagonal block;
- ``power|k=..``: PyHessian's power iteration, for comparison with Lanczos.

Trace probes are added in blocks until the interval is narrow enough
(:func:`analysis.hessian_estimators.more_probes`), so a rerun with the same settings asks for
the same probes and a resumed run ends with the numbers of an uninterrupted one. The results
made of the records (table rows, layers) are :mod:`analysis.curvature_results`.

Reference: Yao, Gholami, Keutzer, Mahoney, "PyHessian", 2020; Ghorbani, Krishnan, Xiao, ICML
2019; Danskin 1967.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from analysis.config import (  # noqa: F401 - re-exported: HessianConfig moved there
    DTYPES,
    EIG_WHY,
    HVP_WHY,
    LOSSES,
    MAX_EIGENPAIRS,
    MAX_PRODUCTS,
    SPLITS,
    HessianConfig,
)
from analysis.hessian_estimators import (
    more_probes,
    power_iteration,
    rademacher,
    slq_run,
)
from analysis.store import RunKeys, UnitKey
from awp.evaluate import Loss
from awp.hessian import LossBatches, LossHessian, loss_batches, top_eigenpairs
from awp.perturb import select_params
from awp.seeds import derive_seed, generator_for

log = logging.getLogger(__name__)

Record = dict[str, Any]
# PyHessian's defaults (hessian.eigenvalues(maxIter=100, tol=1e-3)).
POWER_TOL, POWER_ITERS = 1e-3, 100


# ----------------------------------------------------------------------------- the problem


class HessianProblem:
    """The loss whose curvature is measured: one model at w and a fixed subset.

    The inputs (x_adv crafted at w, or x) are made on first use, so a run whose units are all
    finished crafts nothing.

    Args:
        model: the network at w, in the dtype of the measurement (left as it was).
        x: (N, C, H, W) uint8 or float in [0, 1] on its device; y: (N,) labels.
        cfg: the settings.
        rank, world: this process's share of the batches (every rank computes every unit).
        on_product: called after every Hessian-vector product (a progress bar).
        loss: ``(outputs, targets) -> scalar mean or (B,)`` whose curvature is measured
            (default cross-entropy); with the clean loss x may have any shape.
    """

    def __init__(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        cfg: HessianConfig,
        *,
        rank: int = 0,
        world: int = 1,
        on_product: Callable[[], None] | None = None,
        loss: Loss | None = None,
    ) -> None:
        self.model, self.x, self.y, self.cfg = model, x, y, cfg
        self.loss = loss
        self.rank, self.world = rank, world
        self.on_product = on_product
        self.params = select_params(model, cfg.params)
        cfg.check_sizes(sum(t.numel() for t in self.params.values()))
        self._data: LossBatches | None = None
        self._operator: LossHessian | None = None

    @property
    def layer_names(self) -> list[str]:
        return list(self.params)

    @property
    def data(self) -> LossBatches:
        if self._data is None:
            self._data = loss_batches(
                self.model,
                self.x,
                self.y,
                attack=self.cfg.attack if self.cfg.loss == "adv" else None,
                batch_size=self.cfg.batch_size,
                seed=self.cfg.seed,
                rank=self.rank,
                world=self.world,
                loss=self.loss,
            )
        return self._data

    def operator(self, names: Sequence[str] | None = None) -> LossHessian:
        """H over every measured tensor (one operator for every unit, so that the gradient
        graphs the default method keeps serve them all), or the diagonal block of ``names``."""
        if names is None and self._operator is not None:
            return self._operator
        params = self.params if names is None else {n: self.params[n] for n in names}
        op = LossHessian(
            self.model, self.data, params, method=self.cfg.method, on_product=self.on_product
        )
        if names is None:
            self._operator = op
        return op


# ----------------------------------------------------------------------------- units


def eigs_key(k: int, tol: float, ncv: int = 0) -> str:
    """The top-k eigen-solve's key (ncv 0: scipy's default)."""
    return str(UnitKey.of("eigs", k=k, tol=float(tol), ncv=ncv))


def trace_key(i: int) -> str:
    """Hutchinson probe i's key."""
    return str(UnitKey.of("trace", i=i))


def slq_key(steps: int, r: int) -> str:
    """SLQ run r's key."""
    return str(UnitKey.of("slq", steps=steps, r=r))


def power_key(k: int) -> str:
    """The power iteration's key (PyHessian's tolerance and cap are in it)."""
    return str(UnitKey.of("power", k=k, tol=POWER_TOL, iters=POWER_ITERS))


def layer_key(name: str, tol: float, ncv: int = 0) -> str:
    """The key of one layer's diagonal block's top eigenvalue."""
    return str(UnitKey.of("layer", name=name, tol=float(tol), ncv=ncv))


def plan_keys(cfg: HessianConfig, layers: Sequence[str]) -> list[str]:
    """The units of a run, but for the trace probes (added by the stopping rule)."""
    keys = ["base"]
    if cfg.top_k:
        keys.append(eigs_key(cfg.top_k, cfg.eig_tol, cfg.lanczos_vectors))
    if cfg.power:
        keys.append(power_key(cfg.top_k))
    if cfg.density:
        keys += [slq_key(cfg.slq_steps, r) for r in range(cfg.slq_runs)]
    if cfg.per_layer:
        keys += [layer_key(n, cfg.eig_tol, cfg.lanczos_vectors) for n in layers]
    return keys


def compute_unit(problem: HessianProblem, key: str) -> Record:
    """The record of one unit, from its key (see the module and :func:`plan_keys`)."""
    f = UnitKey.parse(key)
    if f.kind == "base":
        return base_unit(problem)
    if f.kind == "eigs":
        return eigs_unit(problem, k=f.int("k"), tol=f.float("tol"), ncv=f.int("ncv"))
    if f.kind == "trace":
        return trace_unit(problem, f.int("i"))
    if f.kind == "slq":
        op = problem.operator()
        nodes, weights = slq_run(
            op.matvec,
            op.size,
            steps=f.int("steps"),
            generator=generator_for(problem.cfg.seed, "slq", f.int("r")),
            device=op.device,
        )
        return {"nodes": nodes.tolist(), "weights": weights.tolist(), "hvps": len(nodes)}
    if f.kind == "power":
        op = problem.operator()
        res = power_iteration(
            op.matvec,
            op.size,
            k=f.int("k"),
            tol=f.float("tol"),
            max_iter=f.int("iters"),
            generator=generator_for(problem.cfg.seed, "power"),
            device=op.device,
        )
        return {"values": [float(v) for v in res.values], "hvps": res.hvps}
    if f.kind == "layer":
        op = problem.operator([f["name"]])
        seed = derive_seed(problem.cfg.seed, "layer", f["name"])
        ncv = _ncv(f.int("ncv"), op.size)
        pairs = top_eigenpairs(op, 1, tol=f.float("tol"), seed=seed, ncv=ncv)
        return {"value": float(pairs.values[0]), "hvps": pairs.hvps, "converged": pairs.converged}
    raise ValueError(
        f"unknown curvature unit key {key!r} (kinds: base, eigs, trace, slq, power, layer)"
    )


def base_unit(problem: HessianProblem) -> Record:
    """The loss and accuracy at w on the subset, the parameter count, the layers."""
    data = problem.data
    w2 = sum(float((p.detach().double() ** 2).sum()) for p in problem.params.values())
    return {
        "loss": data.loss,
        "accuracy": data.accuracy,
        "n": data.n,
        "p": int(sum(p.numel() for p in problem.params.values())),
        "weight_norm": math.sqrt(w2),
        "layers": [[n, int(p.numel())] for n, p in problem.params.items()],
    }


def _ncv(ncv: int, size: int) -> int | None:
    """ARPACK's ncv from a key (0 = scipy's default), at most the operator's size."""
    return min(int(ncv), size) if int(ncv) else None


def eigs_unit(problem: HessianProblem, *, k: int, tol: float, ncv: int = 0) -> Record:
    """Top-k eigenpairs by Lanczos; each vector's residual ||H v - lambda v|| / |lambda| (one
    more product each) and its mass per layer (sum of v_l^2, which sums to 1)."""
    op = problem.operator()
    seed = derive_seed(problem.cfg.seed, "eigs")
    pairs = top_eigenpairs(op, k, tol=tol, seed=seed, ncv=_ncv(ncv, op.size))
    residuals, mass = [], []
    for j in range(k):
        v = torch.from_numpy(pairs.vectors[:, j])
        if not torch.isfinite(v).all():
            residuals.append(float("nan"))
            mass.append([float("nan")] * len(op.names))
            continue
        hv = op.matvec(v).cpu()
        lam = float(pairs.values[j])
        residuals.append(float((hv - lam * v).norm()) / max(abs(lam), 1e-30))
        mass.append([float((v[a:b] ** 2).sum()) for _, a, b in op.segments()])
    return {
        "values": [float(v) for v in pairs.values],
        "hvps": pairs.hvps,
        "check_hvps": k,
        "converged": pairs.converged,
        "solver": pairs.solver,
        "residuals": residuals,
        "layer_mass": mass,
    }


def trace_unit(problem: HessianProblem, i: int) -> Record:
    """Hutchinson probe i: z^T H z for a Rademacher z, and z_l^T (H z)_l for every layer."""
    op = problem.operator()
    z = rademacher(op.size, generator=generator_for(problem.cfg.seed, "trace", i), device=op.device)
    zhz = z * op.matvec(z)  # (p,) elementwise: sums over segments are the block quadratics
    layers = [float(zhz[a:b].sum()) for _, a, b in op.segments()]
    return {"quad": float(zhz.sum()), "layers": layers}


def hessian_records(problem: HessianProblem, run_keys: RunKeys, *, label: str) -> dict[str, Record]:
    """Every unit of a run (trace probes in blocks until the stopping rule holds).

    Args:
        problem: the loss.
        run_keys: (keys, description) -> records of those keys, computing the missing ones
            (:func:`analysis.store.run_units` with the store, ``collective``).
        label: names the progress bars.
    """
    cfg = problem.cfg
    records = dict(run_keys(plan_keys(cfg, problem.layer_names), f"{label}: curvature"))
    if cfg.trace:
        quads: list[float] = []
        while need := more_probes(
            quads,
            rel_tol=cfg.trace_rel_tol,
            confidence=cfg.confidence,
            min_probes=cfg.probes_min,
            max_probes=cfg.probes_max,
        ):
            keys = [trace_key(i) for i in range(len(quads), len(quads) + need)]
            new = run_keys(keys, f"{label}: trace probes")
            records.update(new)
            quads += [new[k]["quad"] for k in keys]
    return records


def trace_probes(records: Mapping[str, Record]) -> list[Record]:
    """The trace probes among ``records``, in order (0, 1, ... while present)."""
    out, i = [], 0
    while trace_key(i) in records:
        out.append(records[trace_key(i)])
        i += 1
    return out
