"""Hessian-vector products, eigenpairs, trace, SLQ density and per-layer blocks against the exact
Hessian of a tiny float64 model (``torch.autograd.functional.hessian``)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from analysis.curvature import (
    HessianConfig,
    HessianProblem,
    compute_unit,
    eigs_key,
    layer_key,
    trace_key,
)
from analysis.hessian_estimators import (
    density_grid,
    gauss_quadrature,
    lanczos,
    more_probes,
    power_iteration,
    rademacher,
    slq_moment,
    slq_run,
    spectral_density,
    summarize_trace,
)
from awp.config import AttackConfig
from awp.hessian import (
    LossHessian,
    graph_memory_budget,
    lanczos_top,
    loss_batches,
    ritz_errors,
    top_eigenpairs,
)
from awp.perturb import select_params
from awp.seeds import generator_for
from tests.helpers import assert_same_state, snapshot, tiny_batch, tiny_model

ATTACK = AttackConfig(steps=3, step_size=2 / 255)


def exact_hessian(model, x, y, names):
    """The reference: autograd's Hessian of the mean CE (eval mode) over the named tensors."""
    params = dict(model.named_parameters())
    flat0 = torch.cat([params[n].detach().reshape(-1) for n in names])

    def loss(flat):
        d, off = {}, 0
        for n in names:
            k = params[n].numel()
            d[n] = flat[off : off + k].view(params[n].shape)
            off += k
        return F.cross_entropy(functional_call(model, d, (x,)), y)

    model.eval()
    return torch.autograd.functional.hessian(loss, flat0)


class Matrix:
    """An explicit symmetric matrix as an operator (for the matvec-level algorithms)."""

    def __init__(self, h: torch.Tensor) -> None:
        self.h, self.size = h, h.shape[0]

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        return self.h @ v.to(self.h)


@pytest.fixture(scope="module")
def problem():
    """A tiny float64 model, 10 images in batches of 4 (3 batches), x_adv held fixed."""
    model = tiny_model(dtype=torch.float64).eval()
    x, y = tiny_batch(10, dtype=torch.float64)
    data = loss_batches(model, x, y, attack=ATTACK, batch_size=4, seed=3)
    x_adv = torch.cat([b[0] for b in data.batches])
    names = list(select_params(model, "weights"))
    return model, x, y, data, x_adv, exact_hessian(model, x_adv, y, names)


@pytest.mark.parametrize("method", ["jvp", "double", "graph"])
@pytest.mark.parametrize("which", ["weights", "all"])
def test_hvp_equals_the_exact_hessian_times_v(problem, method, which):
    model, _, y, data, x_adv, _ = problem
    params = select_params(model, which)
    h = exact_hessian(model, x_adv, y, list(params))
    before = snapshot(model)
    op = LossHessian(model, data, params, method=method)
    g = torch.Generator().manual_seed(1)
    for _ in range(2):
        v = torch.randn(op.size, generator=g, dtype=torch.float64)
        # float64 throughout: both sides sum the same ~100 products, agreeing to ~1e-15.
        torch.testing.assert_close(op.matvec(v), h @ v, rtol=1e-10, atol=1e-12)
    assert op.hvps == 2 and op.size == h.shape[0]
    assert_same_state(model, before)
    assert all(p.grad is None for p in model.parameters())


def count_forwards(model):
    """A list whose length is the number of forwards of ``model`` from now (hook, removable)."""
    calls: list[int] = []
    handle = model.register_forward_hook(lambda *_: calls.append(1))
    return calls, handle


def test_the_default_keeps_the_gradient_graphs_and_agrees_with_jvp(problem):
    model, _, _, data, _, h = problem
    params = select_params(model, "weights")
    assert HessianConfig().method == "auto"  # awp hessian's default is the same
    op = LossHessian(model, data, params)  # every caller's default
    calls, handle = count_forwards(model)
    try:
        fast = top_eigenpairs(op, 1, tol=1e-8, seed=0)
        forwards_fast = len(calls)
        jvp = top_eigenpairs(LossHessian(model, data, params, method="jvp"), 1, tol=1e-8, seed=0)
        forwards_jvp = len(calls) - forwards_fast
    finally:
        handle.remove()
    # The fast method: one forward per batch for the whole solve, not one per product.
    assert op.method == "auto" and op.resolved == "graph" and op.fallback is None
    assert op.graph_bytes is not None and op.graph_bytes > 0
    assert forwards_fast == len(data.batches) and fast.hvps > 2
    assert forwards_jvp == jvp.hvps * len(data.batches)
    # The same eigenvalue as jvp to 1e-6 relative (float64), and the exact one.
    assert fast.converged and jvp.converged and fast.hvps == jvp.hvps
    assert fast.values[0] == pytest.approx(jvp.values[0], rel=1e-6)
    assert fast.values[0] == pytest.approx(float(torch.linalg.eigvalsh(h)[-1]), rel=1e-6)
    assert all(p.grad is None for p in model.parameters())


def test_auto_falls_back_to_jvp_when_the_graphs_exceed_the_budget(problem):
    model, _, y, data, x_adv, h = problem
    params = select_params(model, "weights")
    v = torch.randn(h.shape[0], generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    probe = LossHessian(model, data, params)
    probe.matvec(v)
    need = probe.graph_bytes * len(data.batches)
    fits = LossHessian(model, data, params, graph_memory=need)
    torch.testing.assert_close(fits.matvec(v), h @ v, rtol=1e-10, atol=1e-12)
    assert fits.resolved == "graph"
    over = LossHessian(model, data, params, graph_memory=need - 1)
    calls, handle = count_forwards(model)
    try:
        for _ in range(2):
            torch.testing.assert_close(over.matvec(v), h @ v, rtol=1e-10, atol=1e-12)
    finally:
        handle.remove()
    assert over.resolved == "jvp" and "over the budget" in over.fallback
    # The first batch's graph (one forward) is dropped; then a forward per batch and product.
    assert len(calls) == 1 + 2 * len(data.batches)
    assert graph_memory_budget("cpu") > 0
    with pytest.raises(ValueError, match="graph_memory"):
        LossHessian(model, data, params, graph_memory=-1)


@pytest.mark.parametrize("fail_at", [0, 2])
def test_auto_falls_back_to_jvp_when_building_the_graph_fails(problem, monkeypatch, fail_at):
    model, _, _, data, _, h = problem
    op = LossHessian(model, data, select_params(model, "weights"))
    build, calls = op._graph, []

    def out_of_memory(*batch):  # batch fail_at runs out of memory
        calls.append(1)
        if len(calls) > fail_at:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return build(*batch)

    monkeypatch.setattr(op, "_graph", out_of_memory)
    v = torch.ones(op.size, dtype=torch.float64)
    torch.testing.assert_close(op.matvec(v), h @ v, rtol=1e-10, atol=1e-12)
    assert op.resolved == "jvp" and "out of memory" in op.fallback
    assert len(calls) == fail_at + 1 and op._graphs is None


def test_kept_graphs_follow_weights_changed_in_place():
    model = tiny_model(dtype=torch.float64).eval()
    x, y = tiny_batch(6, dtype=torch.float64)
    data = loss_batches(model, x, y, attack=None, batch_size=4)
    params = select_params(model, "weights")
    op = LossHessian(model, data, params)
    v = torch.randn(op.size, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    before = op.matvec(v)
    with torch.no_grad():
        next(iter(params.values())).mul_(1.5)
    after = op.matvec(v)
    torch.testing.assert_close(
        after, h_v := LossHessian(model, data, params, method="jvp").matvec(v)
    )
    assert not torch.allclose(before, h_v) and op.resolved == "graph"


def test_adversarial_inputs_are_crafted_per_batch_and_rank_independent(problem):
    model, x, y, data, x_adv, _ = problem
    assert data.n == 10 and [len(b[1]) for b in data.batches] == [4, 4, 2]
    assert (x_adv - x).abs().max() <= 8 / 255 + 1e-12 and not torch.equal(x_adv, x)
    # Rank 1 of 2 holds batch 1 (round robin), crafted exactly as one process crafts it.
    (b1,) = loss_batches(model, x, y, attack=ATTACK, batch_size=4, seed=3, rank=1, world=2).batches
    assert torch.equal(b1[0], data.batches[1][0])
    # The recorded loss is the mean CE at w on x_adv.
    with torch.no_grad():
        ce = F.cross_entropy(model(x_adv), y)
    assert data.loss == pytest.approx(float(ce), rel=1e-12)
    clean = loss_batches(model, x, y, attack=None, batch_size=4)
    assert torch.equal(torch.cat([b[0] for b in clean.batches]), x)


def test_top_eigenvalues_match_the_exact_spectrum(problem):
    model, _, _, data, _, h = problem
    op = LossHessian(model, data, select_params(model, "weights"))
    exact = torch.linalg.eigvalsh(h).numpy()[::-1]
    pairs = top_eigenpairs(op, 3, tol=0, seed=0)
    assert pairs.solver == "eigsh" and pairs.converged and pairs.hvps > 3
    # tol=0 is ARPACK's machine precision; 1e-6 relative is the bar.
    np.testing.assert_allclose(pairs.values, exact[:3], rtol=1e-6)
    for j in range(3):
        v = torch.from_numpy(pairs.vectors[:, j])
        assert float(v.norm()) == pytest.approx(1.0, abs=1e-10)
        assert float((h @ v - exact[j] * v).norm()) < 1e-6 * abs(exact[j])
    # Small operators are built densely (exact); same values.
    small = Matrix(h[:12, :12])
    dense = top_eigenpairs(small, 2)
    assert dense.solver == "dense" and dense.hvps == 12
    np.testing.assert_allclose(dense.values, torch.linalg.eigvalsh(h[:12, :12]).numpy()[::-1][:2])


@pytest.mark.parametrize("tol", [1e-3, 1e-6])
def test_lanczos_stops_at_the_requested_accuracy(problem, tol):
    model, _, _, data, _, h = problem
    exact = torch.linalg.eigvalsh(h).numpy()
    op = LossHessian(model, data, select_params(model, "weights"))
    pairs = top_eigenpairs(op, 1, tol=tol, seed=0)
    assert pairs.solver == "lanczos" and pairs.converged and pairs.hvps == op.hvps
    # Ours is within the tolerance asked for, judged against the exact spectrum.
    assert abs(pairs.values[0] - exact[-1]) <= tol * abs(exact[-1])
    # A looser tolerance stops earlier: the check runs after every product.
    looser = lanczos_top(op, 1, tol=tol * 100, seed=0)
    assert looser.hvps < pairs.hvps or pairs.hvps <= 3
    # The smallest eigenvalue by the same Lanczos on -H (curvature maps use it). The two
    # smallest eigenvalues of this H are 3% apart (-0.0641, -0.0621): at tol 1e-3 a Ritz value
    # of the unresolved pair can pass the error estimate, whose gap is judged from Ritz values
    # (as ARPACK's is; lanczos_top's docstring says so), so it is only known to lie between
    # them; at 1e-6 the pair is resolved and the value is the smallest.
    low = top_eigenpairs(op, 1, tol=tol, seed=0, which="SA")
    assert low.converged
    if tol >= 1e-3:
        margin = tol * abs(exact[-1])
        assert exact[0] - margin <= low.values[0] <= exact[1] + margin
    else:
        assert abs(low.values[0] - exact[0]) <= tol * abs(exact[-1])
        v = torch.from_numpy(low.vectors[:, 0])
        assert float((h @ v - exact[0] * v).norm()) < 1e-2 * abs(exact[-1]) ** 0.5 + 1e-6


def test_lanczos_needs_fewer_products_than_power_iteration_when_separated():
    # A well-separated spectrum (lambda_2 / lambda_1 = 0.5): Lanczos reaches 1e-6 in a few
    # products; power iteration gains a factor 0.25 in the Rayleigh quotient per product.
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(60, 60, generator=g, dtype=torch.float64))
    vals = torch.cat([torch.tensor([10.0, 5.0]), torch.linspace(-1, 4, 58)]).double()
    op = Matrix(q @ torch.diag(vals) @ q.T)
    ours = lanczos_top(op, 1, tol=1e-6, seed=0)
    power = power_iteration(op.matvec, 60, tol=1e-6, max_iter=200, generator=generator_for(0))
    assert ours.converged and abs(ours.values[0] - 10) <= 1e-5
    assert ours.hvps < power.hvps


def test_clustered_top_hands_on_to_arpack_and_ritz_errors():
    # Top eigenvalues 1 and 1 - 1e-7 with a budget of 4 vectors: Lanczos cannot resolve them,
    # ARPACK's restarts do (started from the Lanczos run's Ritz vector).
    g = torch.Generator().manual_seed(1)
    q, _ = torch.linalg.qr(torch.randn(40, 40, generator=g, dtype=torch.float64))
    vals = torch.cat([torch.tensor([1.0, 1 - 1e-7]), torch.linspace(0, 0.99, 38)]).double()
    op = Matrix(q @ torch.diag(vals) @ q.T)
    pairs = top_eigenpairs(op, 1, tol=1e-10, seed=0, ncv=4)
    assert pairs.solver == "eigsh" and pairs.converged
    assert abs(pairs.values[0] - 1.0) <= 1e-7
    # Error estimates: the residual alone, or r^2 / gap when the gap is larger than r.
    err = ritz_errors(np.array([3.0, 1.0]), np.array([0.1, 0.1]), 1)
    assert err[0] == pytest.approx(0.01 / 2)
    assert ritz_errors(np.array([3.0, 2.95]), np.array([0.1, 0.1]), 1)[0] == pytest.approx(0.1)
    with pytest.raises(ValueError, match="tol > 0"):
        lanczos_top(op, 1, tol=0)
    with pytest.raises(ValueError, match="eigenvalue end"):
        top_eigenpairs(op, 1, which="LM")


def test_power_iteration_finds_the_largest_magnitude_eigenvalue(problem):
    h = problem[5]
    exact = torch.linalg.eigvalsh(h).numpy()
    top = exact[np.argmax(np.abs(exact))]
    res = power_iteration(
        Matrix(h).matvec, h.shape[0], tol=1e-9, max_iter=2000, generator=generator_for(0)
    )
    # Converges at the rate |lambda_2 / lambda_1|; a 1e-9 stopping change leaves ~1e-7.
    assert res.values[0] == pytest.approx(top, rel=1e-6)
    assert res.hvps == len(res.history[0]) and res.history[0][-1] == res.values[0]


def test_hutchinson_trace_is_in_its_interval_and_unbiased(problem):
    h = problem[5]
    p, tr = h.shape[0], float(torch.trace(h))
    # Var z^T H z = 2 (||H||_F^2 - sum_i H_ii^2) for Rademacher z.
    sd = math.sqrt(2 * (float((h**2).sum()) - float((torch.diagonal(h) ** 2).sum())))

    def probes(seed, n):
        return [
            float(z @ (h @ z))
            for z in (rademacher(p, generator=generator_for(seed, i)) for i in range(n))
        ]

    est = summarize_trace(probes(0, 30), 0.95)
    assert est.ci_low <= tr <= est.ci_high and est.probes == 30
    # Unbiased: the mean of 40 seeds x 50 probes is within 4 standard errors of tr(H).
    means = [np.mean(probes(s, 50)) for s in range(40)]
    assert abs(np.mean(means) - tr) < 4 * sd / math.sqrt(40 * 50)
    # ... and a 95% interval covers tr(H) in most seeds (binomial: 40 seeds, >= 33).
    covered = sum(
        summarize_trace(probes(s, 20)).ci_low <= tr <= summarize_trace(probes(s, 20)).ci_high
        for s in range(40)
    )
    assert covered >= 33


def test_stopping_rule():
    assert more_probes([], rel_tol=0.1, confidence=0.95, min_probes=4, max_probes=10) == 4
    tight = [10.0, 10.1, 9.9, 10.0]
    assert more_probes(tight, rel_tol=0.1, confidence=0.95, min_probes=4, max_probes=10) == 0
    wide = [1.0, 30.0, -10.0, 5.0]
    assert more_probes(wide, rel_tol=0.1, confidence=0.95, min_probes=4, max_probes=10) == 4
    assert more_probes(wide * 2, rel_tol=0.1, confidence=0.95, min_probes=4, max_probes=10) == 2
    assert more_probes(wide * 3, rel_tol=0.1, confidence=0.95, min_probes=4, max_probes=10) == 0


def test_slq_quadrature_moments_and_density(problem):
    h = problem[5]
    p = h.shape[0]
    mv = Matrix(h).matvec
    evals = torch.linalg.eigvalsh(h)
    # One run: Gauss quadrature with m nodes is exact for degree < 2m: sum tau theta^k = v^T H^k v.
    v = rademacher(p, generator=generator_for(7)) / math.sqrt(p)
    nodes, weights = gauss_quadrature(*lanczos(mv, v, 10))
    for k in range(5):
        exact = float(v @ torch.linalg.matrix_power(h, k) @ v)
        assert float(np.sum(weights * nodes**k)) == pytest.approx(exact, rel=1e-8, abs=1e-14)
    # Averaged over the basis vectors e_i the moments are exactly tr(H^k) / p.
    basis = [gauss_quadrature(*lanczos(mv, e, 4)) for e in torch.eye(p, dtype=torch.float64)]
    for k in range(1, 5):
        target = float((evals**k).sum()) / p
        assert slq_moment(basis, k) == pytest.approx(target, rel=1e-8)
    # Random runs: the first moment v^T H v is Hutchinson's estimate of tr(H) / p, within 4
    # standard errors (Var = 2 (||H||_F^2 - sum H_ii^2) / p^2 for v = z / sqrt(p)).
    runs = [slq_run(mv, p, steps=12, generator=generator_for(1, r)) for r in range(60)]
    sd = math.sqrt(2 * (float((h**2).sum()) - float((torch.diagonal(h) ** 2).sum()))) / p
    assert abs(slq_moment(runs, 1) - float(evals.sum()) / p) < 4 * sd / math.sqrt(60)
    # Full Lanczos (m = p) recovers every eigenvalue as a node.
    full, _ = slq_run(mv, p, steps=p, generator=generator_for(2))
    assert float(np.max(full)) == pytest.approx(float(evals.max()), rel=1e-9)
    # The broadened density is a probability density with the runs' moments (+ sigma^2).
    sigma = 0.02 * float(evals.max() - evals.min())
    grid = density_grid(runs, sigma, points=20001, pad=8)
    phi = spectral_density(runs, grid, sigma)
    assert np.trapezoid(phi, grid) == pytest.approx(1.0, abs=1e-8)
    assert np.trapezoid(grid * phi, grid) == pytest.approx(slq_moment(runs, 1), rel=1e-6)
    second = np.trapezoid(grid**2 * phi, grid)
    assert second == pytest.approx(slq_moment(runs, 2) + sigma**2, rel=1e-6)


def test_units_of_a_run_share_one_operator_and_its_graphs(problem):
    model, x, y, _, _, h = problem
    cfg = HessianConfig(
        n_examples=0, batch_size=4, attack=ATTACK, seed=3, dtype="float64", top_k=1,
        eig_tol=1e-8, trace=True,
    )  # fmt: skip
    prob = HessianProblem(model, x, y, cfg)
    data = prob.data  # crafted first (the attack runs forwards too)
    calls, handle = count_forwards(model)
    try:
        eig = compute_unit(prob, eigs_key(1, 1e-8))
        quads = [compute_unit(prob, trace_key(i))["quad"] for i in range(3)]
    finally:
        handle.remove()
    assert prob.operator() is prob.operator() and prob.operator().resolved == "graph"
    # One forward per batch for the eigen-solve and every trace probe together.
    assert len(calls) == len(data.batches) and eig["hvps"] > 2
    assert eig["values"][0] == pytest.approx(float(torch.linalg.eigvalsh(h)[-1]), rel=1e-6)
    jvp = LossHessian(model, data, select_params(model), method="jvp")
    for i, quad in enumerate(quads):
        z = rademacher(jvp.size, generator=generator_for(3, "trace", i))
        assert quad == pytest.approx(float(z @ jvp.matvec(z)), rel=1e-9)


def test_units_per_layer_blocks(problem):
    model, x, y, _, x_adv, _ = problem
    cfg = HessianConfig(
        n_examples=0, batch_size=4, attack=ATTACK, seed=3, dtype="float64", top_k=2,
        eig_tol=0.0, trace=True, per_layer=True,
    )  # fmt: skip
    prob = HessianProblem(model, x, y, cfg)
    names = prob.layer_names
    assert names == ["conv1.weight", "conv2.weight", "linear.weight"]
    h = exact_hessian(model, x_adv, y, names)
    sizes = [select_params(model)[n].numel() for n in names]
    bounds = np.cumsum([0, *sizes])
    blocks = [h[a:b, a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    for name, block in zip(names, blocks):
        rec = compute_unit(prob, layer_key(name, 0.0))
        top = float(torch.linalg.eigvalsh(block).max())
        assert rec["value"] == pytest.approx(top, rel=1e-6) and rec["converged"]
    eigs = compute_unit(prob, eigs_key(2, 0.0))
    assert eigs["residuals"][0] < 1e-6 and sum(eigs["layer_mass"][0]) == pytest.approx(1.0)
    probes = [compute_unit(prob, f"trace|i={i}") for i in range(40)]
    total = summarize_trace([r["quad"] for r in probes])
    assert total.ci_low <= float(torch.trace(h)) <= total.ci_high
    for d, block in enumerate(blocks):  # z_l^T (H z)_l: unbiased for tr(H_ll)
        est = summarize_trace([r["layers"][d] for r in probes], 0.99)
        assert est.ci_low <= float(torch.trace(block)) <= est.ci_high, names[d]
    # The block quadratics add up to the whole one (cross terms included).
    assert sum(probes[0]["layers"]) == pytest.approx(probes[0]["quad"], rel=1e-12)


def test_hessian_directions_are_exact_eigenvectors_scaled_to_the_weights(problem):
    from landscape.directions import hessian_directions

    model, x, y, data, x_adv, h = problem
    before = snapshot(model)
    dirs, values = hessian_directions(
        model, x, y, attack=ATTACK, k=2, batch_size=4, attack_seed=3, tol=0.0
    )
    assert_same_state(model, before)
    exact = torch.linalg.eigvalsh(h).numpy()[::-1]
    np.testing.assert_allclose(values, exact[:2], rtol=1e-6)
    params = select_params(model)
    w_norm = float(torch.sqrt(sum((p.detach() ** 2).sum() for p in params.values())))
    flat = [torch.cat([d[n].reshape(-1) for n in params]) for d in dirs]
    for f, lam in zip(flat, values):
        assert float(f.norm()) == pytest.approx(w_norm, rel=1e-12)
        assert float((h @ f - lam * f).norm()) < 1e-6 * abs(lam) * w_norm
        assert float(f[f.abs().argmax()]) > 0  # the sign convention: reproducible
    assert abs(float(flat[0] @ flat[1])) < 1e-8 * w_norm**2


def test_eigen_solves_larger_than_the_problem_are_refused():
    """ARPACK finds k < p eigenpairs with at most p Lanczos vectors; p of TinyNet's weights is
    3*4*9 + 4*4*9 + 4*3 = 264."""
    model = tiny_model()
    x, y = tiny_batch(4)
    p = sum(t.numel() for t in select_params(model, "weights").values())
    assert p == 264
    with pytest.raises(ValueError, match=r"top_k=264 needs fewer eigenpairs than the 264"):
        HessianProblem(model, x, y, HessianConfig(top_k=264, loss="clean"))
    with pytest.raises(ValueError, match=r"lanczos_vectors=265 is more than the 264"):
        HessianProblem(model, x, y, HessianConfig(top_k=2, lanczos_vectors=265, loss="clean"))
    HessianProblem(model, x, y, HessianConfig(top_k=262, lanczos_vectors=264, loss="clean"))
