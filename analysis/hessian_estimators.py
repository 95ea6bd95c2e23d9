"""Spectral estimates from products with a symmetric operator: Hutchinson's trace, stochastic
Lanczos quadrature (the eigenvalue density) and power iteration (PyHessian's top eigenvalue).

Everything here sees the operator only through ``matvec`` (a flat float64 (p,) tensor in, the
product out), so it applies to :class:`awp.hessian.LossHessian` and, in the tests, to an
explicit matrix. Random vectors come from CPU generators the caller seeds, so a result is the
same on every device and rank. The top eigenpairs themselves come from
:func:`awp.hessian.top_eigenpairs` (Lanczos checked after every product, or ARPACK); power
iteration is here for comparison.

Reference: Hutchinson, "A stochastic estimator of the trace of the influence matrix for
Laplacian smoothing splines", 1990; Ghorbani, Krishnan, Xiao, "An Investigation into Neural
Net Optimization via Hessian Eigenvalue Density", ICML 2019 (SLQ with Gaussian broadening);
Golub & Meurant, "Matrices, Moments and Quadrature", 1994; Yao et al., "PyHessian", 2020.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.linalg import eigh_tridiagonal

from analysis.stats import t_interval
from awp.hessian import lanczos_basis

Matvec = Callable[[torch.Tensor], torch.Tensor]


def rademacher(size: int, *, generator: torch.Generator, device=None) -> torch.Tensor:
    """A (size,) float64 vector of independent +-1 entries (drawn on the CPU generator)."""
    z = torch.randint(0, 2, (size,), generator=generator, dtype=torch.int64)
    return (2 * z - 1).to(dtype=torch.float64, device=device)


# --------------------------------------------------------------------------- Hutchinson


@dataclass(frozen=True)
class TraceEstimate:
    """Hutchinson's estimate of tr(H) from i.i.d. probes z^T H z (E = tr H for Rademacher z).

    Attributes:
        trace: mean of the probes; std: their standard deviation; probes: how many.
        ci_low, ci_high: Student-t interval for tr(H) at ``confidence`` (NaN below 2 probes).
        rel_half_width: (ci_high - ci_low) / 2 / |trace|, the stopping rule's quantity.
    """

    trace: float
    std: float
    probes: int
    ci_low: float
    ci_high: float
    confidence: float
    rel_half_width: float


def summarize_trace(quads: Sequence[float], confidence: float = 0.95) -> TraceEstimate:
    """Mean and t interval of Hutchinson probes ``quads`` (each z^T H z)."""
    a = np.asarray(quads, dtype=np.float64)
    if a.size == 0:
        raise ValueError("no Hutchinson probes to summarize")
    lo, hi = t_interval(a, confidence)
    mean = float(a.mean())
    rel = (hi - lo) / 2 / abs(mean) if mean != 0 else float("inf")
    return TraceEstimate(
        trace=mean,
        std=float(a.std(ddof=1)) if a.size > 1 else float("nan"),
        probes=int(a.size),
        ci_low=lo,
        ci_high=hi,
        confidence=confidence,
        rel_half_width=float(rel) if math.isfinite(lo) else float("inf"),
    )


def more_probes(
    quads: Sequence[float],
    *,
    rel_tol: float,
    confidence: float,
    min_probes: int,
    max_probes: int,
) -> int:
    """How many more probes the stopping rule asks for (0: stop).

    Rule: at least ``min_probes``; then stop once the interval's half-width is at most
    ``rel_tol`` * |trace|, or at ``max_probes``. Otherwise ask for another block of
    ``min_probes`` (capped at ``max_probes``), so the decision is checked a few times only.
    """
    n = len(quads)
    if n < min_probes:
        return min_probes - n
    if n >= max_probes or summarize_trace(quads, confidence).rel_half_width <= rel_tol:
        return 0
    return min(min_probes, max_probes - n)


# --------------------------------------------------------------------------- Lanczos / SLQ


def lanczos(matvec: Matvec, v0: torch.Tensor, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """The Lanczos tridiagonalization of H from v0 (:func:`awp.hessian.lanczos_basis`, with full
    reorthogonalization), without its basis: (alpha (m',), beta (m'-1,)), m' <= ``steps``."""
    alpha, beta, _ = lanczos_basis(matvec, v0, steps)
    return alpha, beta


def gauss_quadrature(alpha: np.ndarray, beta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights of the Gauss quadrature that T (alpha, beta) defines.

    Nodes are T's eigenvalues theta_i, weights the squared first components of its
    eigenvectors tau_i; sum_i tau_i f(theta_i) = v^T f(H) v exactly for polynomials f of
    degree < 2m (v the unit start vector), so the weights sum to 1.
    """
    if len(alpha) == 1:
        return np.asarray(alpha, dtype=np.float64), np.ones(1)
    nodes, vecs = eigh_tridiagonal(alpha, beta)
    return nodes, vecs[0] ** 2


def slq_run(
    matvec: Matvec, size: int, *, steps: int, generator: torch.Generator, device=None
) -> tuple[np.ndarray, np.ndarray]:
    """One run of stochastic Lanczos quadrature: nodes and weights from a Rademacher start.

    With v = z / sqrt(p), E[v v^T] = I / p, so E[sum_i tau_i theta_i^k] = tr(H^k) / p: the
    weighted nodes are an unbiased estimate of the eigenvalue distribution's moments.

    Returns:
        (nodes, weights), each (m',); the weights sum to 1.
    """
    v0 = rademacher(size, generator=generator, device=device) / math.sqrt(size)
    return gauss_quadrature(*lanczos(matvec, v0, steps))


def density_grid(
    runs: Sequence[tuple[Sequence[float], Sequence[float]]],
    sigma: float,
    *,
    points: int = 1000,
    pad: float = 5.0,
) -> np.ndarray:
    """Evenly spaced eigenvalues covering every run's nodes, ``pad`` sigmas beyond them."""
    nodes = np.concatenate([np.asarray(n, dtype=np.float64) for n, _ in runs])
    return np.linspace(nodes.min() - pad * sigma, nodes.max() + pad * sigma, points)


def broadening(runs: Sequence[tuple[Sequence[float], Sequence[float]]], relative: float) -> float:
    """The Gaussian broadening sigma: ``relative`` times the span of the nodes (or of 1)."""
    nodes = np.concatenate([np.asarray(n, dtype=np.float64) for n, _ in runs])
    span = float(nodes.max() - nodes.min())
    return relative * (span if span > 0 else max(abs(float(nodes.max())), 1.0))


def spectral_density(
    runs: Sequence[tuple[Sequence[float], Sequence[float]]],
    grid: np.ndarray,
    sigma: float,
) -> np.ndarray:
    """The eigenvalue density at ``grid``: SLQ's weighted nodes smoothed by Gaussians.

    phi(t) = (1/R) sum_r sum_i tau_ri N(t; theta_ri, sigma^2), a probability density (it
    integrates to 1 over the real line) whose mean is the runs' mean first moment and whose
    variance adds sigma^2.

    Args:
        runs: (nodes, weights) per SLQ run.
        grid: eigenvalues at which to evaluate, (G,).
        sigma: standard deviation of the broadening (> 0, eigenvalue units).

    Returns:
        (G,) density values.

    Reference: Ghorbani, Krishnan, Xiao, ICML 2019, Sec. 2.2 (Gaussian broadening).
    """
    if sigma <= 0:
        raise ValueError(f"sigma={sigma}: the broadening must be > 0")
    if not runs:
        raise ValueError("no SLQ runs")
    grid = np.asarray(grid, dtype=np.float64)
    out = np.zeros_like(grid)
    for nodes, weights in runs:
        t = np.asarray(nodes, dtype=np.float64)[None, :]  # (1, m)
        w = np.asarray(weights, dtype=np.float64)[None, :]
        g = np.exp(-((grid[:, None] - t) ** 2) / (2 * sigma**2)) / (sigma * math.sqrt(2 * math.pi))
        out += (g * w).sum(1)
    return out / len(runs)


def slq_moment(runs: Sequence[tuple[Sequence[float], Sequence[float]]], k: int) -> float:
    """The runs' mean k-th moment sum_i tau_i theta_i^k, an estimate of tr(H^k) / p."""
    return float(
        np.mean([np.sum(np.asarray(w) * np.asarray(n, dtype=np.float64) ** k) for n, w in runs])
    )


# --------------------------------------------------------------------------- power iteration


@dataclass(frozen=True)
class PowerResult:
    """Eigenvalues found by power iteration (largest magnitude first, then deflated).

    Attributes:
        values: (k,) Rayleigh quotients at the last iteration of each.
        vectors: (k, p) float64 unit vectors.
        hvps: products used; history: the Rayleigh quotient after every product, per value.
    """

    values: np.ndarray
    vectors: torch.Tensor
    hvps: int
    history: tuple[tuple[float, ...], ...]


def power_iteration(
    matvec: Matvec,
    size: int,
    *,
    k: int = 1,
    tol: float = 1e-3,
    max_iter: int = 100,
    generator: torch.Generator,
    device=None,
) -> PowerResult:
    """PyHessian's top eigenvalues: power iteration, deflated by Gram-Schmidt against the ones
    found, stopped when the Rayleigh quotient changes by less than ``tol`` relative.

    It converges to the eigenvalue of largest *magnitude* (Lanczos' "LA" finds the largest
    algebraic one; they agree when that is positive and dominant), at a rate set by
    |lambda_2 / lambda_1|.

    Args:
        matvec: H v on flat float64 tensors; size: p.
        k: eigenvalues; tol: relative change that stops an iteration; max_iter: per value.
        generator: CPU generator of the Gaussian start vectors.

    Reference: Yao et al., "PyHessian", 2020 (hessian.eigenvalues, orthnormal).
    """
    vectors: list[torch.Tensor] = []
    values, history, hvps = [], [], 0
    for _ in range(k):
        v = torch.randn(size, generator=generator, dtype=torch.float64).to(device)
        value: float | None = None
        seen: list[float] = []
        for _ in range(max_iter):
            for u in vectors:  # deflation: stay orthogonal to the eigenvectors found
                v = v - (v @ u) * u
            v = v / v.norm()
            hv = matvec(v).to(v)
            hvps += 1
            rayleigh = float(hv @ v)
            seen.append(rayleigh)
            v = hv / hv.norm()
            if value is not None and abs(value - rayleigh) / (abs(value) + 1e-6) < tol:
                value = rayleigh
                break
            value = rayleigh
        values.append(value)
        vectors.append(v)
        history.append(tuple(seen))
    return PowerResult(np.array(values), torch.stack(vectors), hvps, tuple(history))
