"""Hessian-vector products of a model's mean loss over fixed examples, and its top eigenpairs.

H is the Hessian, with respect to chosen parameters w (conv and linear weights by default,
AWP's set; or every parameter), of the mean loss over a fixed set of N examples,

    L(w) = (1/N) sum_i CE(f_w(x_i), y_i)

(cross-entropy unless another loss is given: any ``(outputs, targets) -> scalar`` mean over a
batch, or per-example values, :data:`awp.evaluate.Loss`; on inputs of any shape when there is
no attack),

with BatchNorm in eval mode (its running statistics are constants) and the inputs held fixed.
For the robust loss the inputs are x_adv, crafted once at w by an attack and then held fixed.
By Danskin's theorem grad L at w is then the gradient of the robust loss
max_{x' in B(x)} CE(f_w(x'), y); H is *not* its Hessian, which also moves with x_adv(w) (a
term through d x_adv / d w that this leaves out). What H measures is the curvature in weight
space of the loss on examples that are adversarial at w.

H v is exact (automatic differentiation, no finite differences), computed batch by batch and
summed in float64, by one of four methods:

- "graph": every batch's gradient is built once with its graph (``create_graph=True``) and
  kept; each product is then one backward through it (PyHessian's product). It skips the
  forward and first backward of every product, so a solver that needs a few products (the top
  eigenvalue) is fastest with it, but it holds one double-backward graph per batch for the
  operator's lifetime: the tensors saved by a forward and by the backward built on it, about
  twice a training step's saved activations (2.1x for a PreActResNet-18 of width 1/8, counted
  by ``graph_bytes``), for every batch of the N examples.
- "jvp": forward-over-reverse (``torch.func.jvp`` of ``torch.func.grad``), a forward and a
  backward per product and batch, nothing kept between products; on a CPU a little faster per
  product than "double" for a PreActResNet-18 (benchmarks/hessian.py, part 1).
- "double": reverse-over-reverse (double backward) recomputed per product.
- "auto" (the default): "graph" when its graphs fit in memory, else "jvp". The first batch's
  graph is built under a saved-tensor hook that counts the bytes it holds (on CUDA, at least
  the allocator's growth); if that times the number of batches exceeds ``graph_memory``
  (default: half the memory available on the device when the operator is first used,
  :func:`graph_memory_budget`), or if building any batch's graph fails (an operation without
  a double backward, or out of memory), the graphs are dropped and "jvp" is used.
  ``LossHessian.resolved`` names the method used (None before the first product), and
  ``LossHessian.fallback`` why "auto" chose "jvp". Under torchrun each rank decides for its
  own share (the products are the same either way).

"jvp" used to be the default because it keeps nothing between products (its memory is one
batch's); "auto" keeps that where the graphs would not fit. Under torchrun
each rank takes a round-robin share of the batches and the products are summed over ranks
(:func:`awp.distributed.all_reduce_sum_`), so every rank holds the same H v as one process
(the same per-batch products, added in another order).

The top eigenpairs come from Lanczos with full reorthogonalization whose Ritz values and
residuals are checked after every product, so it stops at the accuracy asked for (a
well-separated top eigenvalue in a few products, fewer than PyHessian's power iteration); where
k is large or that needs more vectors than it may keep, from ARPACK's implicitly restarted
Lanczos method (``scipy.sparse.linalg.eigsh``) on a ``LinearOperator`` whose matvec is one H v.

Reference: Pearlmutter, "Fast Exact Multiplication by the Hessian", Neural Computation 1994;
Yao, Gholami, Keutzer, Mahoney, "PyHessian: Neural Networks Through the Lens of the Hessian",
2020; Danskin, "The Theory of Max-Min", 1967 (the gradient of a max).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from scipy.linalg import eigh_tridiagonal
from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh
from torch import nn
from torch.func import functional_call, grad, jvp

from awp import distributed
from awp.augment import as_float
from awp.config import HVP_METHODS, AttackConfig, check_choice
from awp.evaluate import Loss, attack_outcomes, batch_loss_sum
from awp.modes import model_mode
from awp.seeds import derive_seed

# "auto" keeps the gradient graphs when they take at most this fraction of the available memory.
GRAPH_MEMORY_FRACTION = 0.5


def batch_seed(seed: int, index: int) -> int:
    """The attack seed of batch ``index``: ``derive_seed(seed, "hessian batch", index)``, a
    pure function, the same on every rank."""
    return derive_seed(seed, "hessian batch", index)


@dataclass(frozen=True, eq=False)
class LossBatches:
    """The fixed inputs of a loss, batch by batch: this rank's share of them.

    Attributes:
        batches: (x, y) pairs, x (B, C, H, W) float in [0, 1] in the model's dtype (x_adv
            crafted at w, or the clean images; without an attack, inputs of any shape, floats
            in the model's dtype), y (B,) int64 labels (or the loss's targets).
        n: examples over all ranks (the mean's denominator).
        loss: mean loss at w over all N examples (cross-entropy in nats by default).
        accuracy: fraction of the N examples classified right at w (robust accuracy for x_adv;
            NaN when the outputs are not class scores).
        world: ranks sharing the batches (their products are summed when > 1).
        criterion: the loss, ``(outputs, targets) -> scalar mean or (B,)``; None is
            cross-entropy. :class:`LossHessian` differentiates this one.
    """

    batches: tuple[tuple[torch.Tensor, torch.Tensor], ...]
    n: int
    loss: float
    accuracy: float
    world: int = 1
    criterion: Loss | None = None


def loss_batches(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    attack: AttackConfig | None,
    batch_size: int = 128,
    seed: int = 0,
    rank: int = 0,
    world: int = 1,
    loss: Loss | None = None,
) -> LossBatches:
    """Craft the loss's inputs once at the current weights: x_adv batch by batch, or x itself.

    Batch b (examples b*batch_size onwards) belongs to rank b % world, and its attack draws
    its random start from a CPU generator seeded with :func:`batch_seed` (seed, b), so x_adv of
    a batch is the same whatever the number of ranks.

    Args:
        model: classifier on [0, 1] images at w (modes and weights are left as they were).
        x: (N, C, H, W) uint8 or float in [0, 1] on the model's device; y: (N,) labels.
        attack: the attack (:func:`awp.evaluate.attack_outcomes`), or None for clean inputs.
        batch_size: examples per batch (of the attack and of every H v).
        seed: base seed of the attacks' random starts.
        rank, world: this process's share (0 of 1 without torchrun); with world > 1 every
            rank must call this together (the loss and accuracy are summed over ranks).
        loss: ``(outputs, targets) -> scalar mean or (B,)`` (default cross-entropy), kept in
            the result for the Hessian; with ``attack`` None, x may have any shape.

    Returns:
        :class:`LossBatches` for this rank.
    """
    if len(x) != len(y) or len(y) == 0:
        raise ValueError(f"need as many labels as images (> 0), got {len(x)} and {len(y)}")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    dtype = next(model.parameters()).dtype
    starts = list(enumerate(range(0, len(x), batch_size)))
    batches, sums = [], [0.0, 0.0]
    classified = True
    for b, start in distributed.shard(starts, rank, world):
        xb = as_float(x[start : start + batch_size])  # (B, C, H, W)
        if xb.is_floating_point():  # token ids and other integer inputs stay as they are
            xb = xb.to(dtype)
        yb = y[start : start + batch_size]
        gen = torch.Generator().manual_seed(batch_seed(seed, b))
        out = attack_outcomes(
            model, xb, yb, attack, batch_size=len(yb), generator=gen, keep_adv=True, loss=loss
        )
        assert out.x_adv is not None
        batches.append((out.x_adv.detach(), yb))
        sums[0] += float(out.loss.sum())
        sums[1] += float(out.correct.sum())
        classified &= out.classified
    if world > 1:
        sums = distributed.all_reduce_sums(sums, x.device)
    accuracy = sums[1] / len(y) if classified else float("nan")
    return LossBatches(tuple(batches), len(y), sums[0] / len(y), accuracy, world, loss)


class LossHessian:
    """H of the mean loss over fixed inputs w.r.t. chosen parameters, as an operator H v.

    Vectors are flat (p,) tensors over the parameters in the order given (each flattened in
    row-major order). ``matvec`` returns float64; the products themselves run in the
    parameters' dtype (float32 models give float32 products, float64 models float64).

    Args:
        model: the network at w (eval mode is used; weights, buffers, ``.grad`` and modes are
            left as they were).
        data: the fixed inputs (:func:`loss_batches`); with ``data.world > 1`` every rank must
            call ``matvec`` together.
        params: name -> parameter, the Hessian's coordinates (e.g.
            :func:`awp.perturb.select_params`, or one layer's weight for a diagonal block).
        method: "auto" (the default: "graph" when the graphs fit in ``graph_memory``, else
            "jvp"), "graph" (double backward through every batch's gradient graph, built once
            and kept: the fastest for a few products, PyHessian's way, but it holds one graph
            per batch), "jvp" (forward-over-reverse, torch.func) or "double" (double backward);
            see the module docstring.
        on_product: called after every product (a progress bar's update).
        graph_memory: bytes the kept graphs of "auto" may take (None: half the memory
            available on the parameters' device, :func:`graph_memory_budget`).

    The kept graphs belong to the weights they were built at: if a parameter is changed in
    place afterwards (its version counter moves), they are rebuilt before the next product.
    """

    def __init__(
        self,
        model: nn.Module,
        data: LossBatches,
        params: Mapping[str, torch.Tensor],
        *,
        method: str = "auto",
        on_product: Callable[[], None] | None = None,
        graph_memory: int | None = None,
    ) -> None:
        check_choice(method, HVP_METHODS, "HVP method")
        if not params:
            raise ValueError("the Hessian needs at least one parameter")
        self.model, self.data, self.method = model, data, method
        self.names = list(params)
        self.tensors = [params[n] for n in self.names]
        self.numels = [t.numel() for t in self.tensors]
        self.size = int(sum(self.numels))
        self.dtype = self.tensors[0].dtype
        self.device = self.tensors[0].device
        self.hvps = 0  # products computed so far
        self.on_product = on_product
        if graph_memory is not None and graph_memory < 0:
            raise ValueError(f"graph_memory={graph_memory} must be >= 0 bytes (or None: auto)")
        self.graph_memory = graph_memory
        # The method used ("graph", "jvp" or "double"); "auto" decides at the first product.
        self.resolved: str | None = None if method == "auto" else method
        self.graph_bytes: int | None = None  # bytes held by one batch's graph (auto's count)
        self.fallback: str | None = None  # why "auto" chose "jvp"
        self._graphs: list[tuple[torch.Tensor | None, ...]] | None = None
        self._versions: tuple[int, ...] | None = None

    def segments(self) -> list[tuple[str, int, int]]:
        """(name, start, end) of each parameter in a flat vector."""
        out, start = [], 0
        for name, k in zip(self.names, self.numels):
            out.append((name, start, start + k))
            start += k
        return out

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """A flat (p,) vector as name -> tensor shaped like each parameter (same dtype)."""
        return {
            name: flat[a:b].view(t.shape) for (name, a, b), t in zip(self.segments(), self.tensors)
        }

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """H v for a flat v (p,) of any float dtype and device; float64 (p,) on the params'
        device, summed over every batch of every rank."""
        if v.shape != (self.size,):
            raise ValueError(f"v has shape {tuple(v.shape)}, the Hessian is {self.size} square")
        parts = list(v.to(device=self.device, dtype=self.dtype).split(self.numels))
        vs = [p.view(t.shape) for p, t in zip(parts, self.tensors)]
        total = torch.zeros(self.size, dtype=torch.float64, device=self.device)
        graphs = self._gradient_graphs() if self.resolved in (None, "graph") else None
        if graphs is not None:
            for grads in graphs:
                hv = _hvp_graph(grads, self.tensors, vs)
                total += torch.cat([h.reshape(-1) for h in hv]).double()
        else:
            hvp = _hvp_jvp if self.resolved == "jvp" else _hvp_double
            with model_mode(self.model, "eval"):
                for xb, yb in self.data.batches:
                    hv = hvp(
                        self.model,
                        xb,
                        yb,
                        self.names,
                        self.tensors,
                        vs,
                        1.0 / self.data.n,
                        self.data.criterion,
                    )
                    total += torch.cat([h.reshape(-1) for h in hv]).double()
        if self.data.world > 1:
            distributed.all_reduce_sum_(total)
        self.hvps += 1
        if self.on_product is not None:
            self.on_product()
        return total

    def _gradient_graphs(self) -> list[tuple[torch.Tensor | None, ...]] | None:
        """Every batch's gradient with its graph (methods "graph" and "auto"), built on first
        use and kept: each product is then one backward through it, as PyHessian does, at the
        memory of one double-backward graph per batch. Rebuilt when a parameter has changed in
        place since. None when "auto" falls back to "jvp" (``self.fallback`` says why)."""
        versions = tuple(t._version for t in self.tensors)
        if self._graphs is not None and versions == self._versions:
            return self._graphs
        self._graphs = None  # free the stale graphs before building new ones
        graphs: list[tuple[torch.Tensor | None, ...]] = []
        with model_mode(self.model, "eval"), torch.enable_grad():
            if self.resolved == "graph":
                graphs = [self._graph(xb, yb) for xb, yb in self.data.batches]
            else:  # "auto": count the first batch's graph, then build the rest if they fit
                try:
                    for xb, yb in self.data.batches:
                        if graphs:
                            graphs.append(self._graph(xb, yb))
                            continue
                        graphs.append(self._counted_graph(xb, yb))
                        need = int(self.graph_bytes or 0) * len(self.data.batches)
                        budget = (
                            graph_memory_budget(self.device)
                            if self.graph_memory is None
                            else self.graph_memory
                        )
                        if need > budget:
                            graphs.clear()
                            return self._fall_back(
                                f"the gradient graphs would hold ~{need / 2**20:.0f} MiB "
                                f"({len(self.data.batches)} batches), over the budget of "
                                f"{budget / 2**20:.0f} MiB"
                            )
                except RuntimeError as err:  # no double backward for an op, or out of memory
                    graphs.clear()
                    return self._fall_back(f"building the gradient graphs failed: {err}")
        self.resolved = "graph"
        self._graphs, self._versions = graphs, versions
        return graphs

    def _counted_graph(self, xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        """:meth:`_graph`, setting ``graph_bytes`` to the bytes it holds: the distinct storages
        autograd saved (a saved-tensor hook) and the gradients; on CUDA at least the growth of
        the allocated memory (which also sees what the hook may not)."""
        cuda = self.device.type == "cuda"
        before = torch.cuda.memory_allocated(self.device) if cuda else 0
        with _SavedBytes(self.tensors) as saved:
            graph = self._graph(xb, yb)
        grads = sum(g.numel() * g.element_size() for g in graph if g is not None)
        self.graph_bytes = saved.bytes + grads
        if cuda:
            grown = torch.cuda.memory_allocated(self.device) - before
            self.graph_bytes = max(self.graph_bytes, grown)
        return graph

    def _graph(self, xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        """One batch's gradient of its share of the mean loss, with its graph."""
        loss = batch_loss_sum(self.model(xb), yb, self.data.criterion) / self.data.n
        grads = torch.autograd.grad(loss, self.tensors, create_graph=True, allow_unused=True)
        return tuple(g if g is not None and g.requires_grad else None for g in grads)

    def _fall_back(self, why: str) -> None:
        """Without kept graphs ("auto" falling back): every product by "jvp" from now on."""
        self.resolved, self.fallback = "jvp", why
        return None

    def linear_operator(self) -> LinearOperator:
        """``self`` as a float64 scipy ``LinearOperator`` (numpy vectors on the CPU)."""

        def mv(v: np.ndarray) -> np.ndarray:
            t = torch.from_numpy(np.ascontiguousarray(v, dtype=np.float64).reshape(-1))
            return self.matvec(t).cpu().numpy()

        return LinearOperator((self.size, self.size), matvec=mv, dtype=np.float64)


def graph_memory_budget(device: torch.device | str) -> int:
    """Bytes "auto" lets the kept gradient graphs take on ``device``: ``GRAPH_MEMORY_FRACTION``
    of the memory free there now (CUDA: ``torch.cuda.mem_get_info``; CPU: the system's
    available memory, MemAvailable of /proc/meminfo or the free pages), 0 if unknown."""
    device = torch.device(device)
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
    else:
        free = _available_host_memory()
    return int(GRAPH_MEMORY_FRACTION * free)


def _available_host_memory() -> int:
    """The host's available memory in bytes (0 when the system does not say)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0


class _SavedBytes(torch.autograd.graph.saved_tensors_hooks):
    """Counts the bytes of the distinct storages autograd saves while active (the memory a
    graph holds), leaving out ``exclude`` (the parameters, which exist anyway)."""

    def __init__(self, exclude: Sequence[torch.Tensor]) -> None:
        self.bytes = 0
        seen = {t.untyped_storage().data_ptr() for t in exclude}

        def pack(t: torch.Tensor) -> torch.Tensor:
            storage = t.untyped_storage()
            if storage.data_ptr() not in seen:
                seen.add(storage.data_ptr())
                self.bytes += storage.nbytes()
            return t

        super().__init__(pack, lambda t: t)

    def __enter__(self) -> _SavedBytes:
        super().__enter__()
        return self


def _hvp_double(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    names: Sequence[str],
    tensors: Sequence[torch.Tensor],
    vs: Sequence[torch.Tensor],
    scale: float,
    criterion: Loss | None = None,
) -> list[torch.Tensor]:
    """One batch's H v by double backward: d/dw (grad L(w) . v)."""
    with torch.enable_grad():
        loss = batch_loss_sum(model(x), y, criterion) * scale
        grads = torch.autograd.grad(loss, tensors, create_graph=True, allow_unused=True)
        dot = sum((g * v).sum() for g, v in zip(grads, vs) if g is not None)
        if not isinstance(dot, torch.Tensor) or not dot.requires_grad:
            return [torch.zeros_like(t) for t in tensors]  # the loss is linear in w
        hv = torch.autograd.grad(dot, tensors, allow_unused=True)
    return [torch.zeros_like(t) if h is None else h.detach() for h, t in zip(hv, tensors)]


def _hvp_graph(
    grads: Sequence[torch.Tensor | None],
    tensors: Sequence[torch.Tensor],
    vs: Sequence[torch.Tensor],
) -> list[torch.Tensor]:
    """One batch's H v from its kept gradient graph: d/dw (grad L(w) . v), graph retained."""
    pairs = [(g, v) for g, v in zip(grads, vs) if g is not None]
    if not pairs:
        return [torch.zeros_like(t) for t in tensors]  # the loss is linear in w
    with torch.enable_grad():
        hv = torch.autograd.grad(
            [g for g, _ in pairs],
            tensors,
            grad_outputs=[v for _, v in pairs],
            retain_graph=True,
            allow_unused=True,
        )
    return [torch.zeros_like(t) if h is None else h.detach() for h, t in zip(hv, tensors)]


def _hvp_jvp(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    names: Sequence[str],
    tensors: Sequence[torch.Tensor],
    vs: Sequence[torch.Tensor],
    scale: float,
    criterion: Loss | None = None,
) -> list[torch.Tensor]:
    """One batch's H v forward-over-reverse: the directional derivative of grad L along v."""

    def loss(p: dict[str, torch.Tensor]) -> torch.Tensor:
        return batch_loss_sum(functional_call(model, p, (x,)), y, criterion) * scale

    primals = {n: t.detach() for n, t in zip(names, tensors)}
    tangents = dict(zip(names, vs))
    with warnings.catch_warnings():
        # torch's own forward-AD decompositions call the deprecated torch.jit.script when
        # first loaded; the warning is about torch's internals, not this code.
        warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", FutureWarning)
        _, hv = jvp(grad(loss), (primals,), (tangents,))
    return [hv[n].detach() for n in names]


class Operator(Protocol):
    """A symmetric operator on flat vectors (:class:`LossHessian`, or a matrix in tests)."""

    size: int

    def matvec(self, v: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class Eigenpairs:
    """The top eigenpairs of a symmetric operator.

    Attributes:
        values: (k,) eigenvalues, largest first (NaN where the solver did not converge).
        vectors: (p, k) float64 unit eigenvectors, column i for ``values[i]``; the sign of each
            makes its entry of largest magnitude positive (so a run is reproducible).
        hvps: operator products the solver used.
        converged: every requested pair converged.
        solver: "lanczos" (Lanczos checked after every product, :func:`lanczos_top`),
            "eigsh" (ARPACK's restarted Lanczos) or "dense" (p products, then a dense
            eigensolver, for operators too small for ARPACK).
    """

    values: np.ndarray
    vectors: np.ndarray
    hvps: int
    converged: bool
    solver: str


# Lanczos without restarts: k <= this many eigenpairs; ARPACK for more (see top_eigenpairs).
LANCZOS_MAX_K = 3
WHICH = ("LA", "SA")


def lanczos_basis(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    v0: torch.Tensor,
    steps: int,
    *,
    stop: Callable[[np.ndarray, np.ndarray, float], bool] | None = None,
) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
    """The Lanczos tridiagonalization of H from v0, with full reorthogonalization.

    Every new vector is orthogonalized twice (classical Gram-Schmidt) against all previous
    ones, as PyHessian's SLQ does; without it round-off makes copies of converged eigenvalues
    ("ghosts"). Stops early when the Krylov space becomes invariant (beta below 1e-10 of the
    largest coefficient so far), or when ``stop`` says so.

    Args:
        matvec: H v on flat float64 tensors.
        v0: (p,) start vector (normalized here).
        steps: m, most Lanczos steps (products); at most p are useful.
        stop: called after every product j with (alpha (j+1,), beta (j,), b), b the norm of
            the next residual vector (the last Ritz residuals are b * |last components| of the
            eigenvectors of T); True ends the iteration there.

    Returns:
        (alpha (m',), beta (m'-1,), basis (m', p)): the diagonal and off-diagonal of T and the
        orthonormal Lanczos vectors, m' <= m.
    """
    if steps < 1:
        raise ValueError(f"steps={steps}: Lanczos needs at least one step")
    p = v0.numel()
    m = min(steps, p)
    # (m, p) the q_j; rows past the last one written are never read (no need to zero them)
    basis = torch.empty(m, p, dtype=torch.float64, device=v0.device)
    basis[0] = v0.double() / v0.double().norm()
    alpha: list[float] = []
    beta: list[float] = []
    scale = 0.0
    for j in range(m):
        w = matvec(basis[j]).to(basis)
        a = float(w @ basis[j])
        alpha.append(a)
        w -= a * basis[j]
        if j > 0:
            w -= beta[-1] * basis[j - 1]
        q = basis[: j + 1]
        for _ in range(2):
            w -= q.T @ (q @ w)
        b = float(w.norm())
        scale = max(scale, abs(a), b)
        if b <= 1e-10 * scale:  # invariant: T's eigenvalues are exact eigenvalues of H
            break
        if stop is not None and stop(np.array(alpha), np.array(beta), b):
            break
        if j == m - 1:
            break
        beta.append(b)
        basis[j + 1] = w / b
    n = len(alpha)
    return np.array(alpha), np.array(beta), basis[:n]


def ritz_errors(theta: np.ndarray, residuals: np.ndarray, k: int) -> np.ndarray:
    """Error estimates of the top k Ritz values (``theta`` descending, their ``residuals``).

    A Ritz value theta with residual r = ||H y - theta y|| is within r of an eigenvalue, and
    within r^2 / gap when the rest of the spectrum is at least ``gap`` away (Kato-Temple;
    the gap is estimated by the distance to the nearest other Ritz value, as ARPACK and
    Parlett do). The estimate is the smaller of the two.

    Reference: Parlett, "The Symmetric Eigenvalue Problem", 1998, Sec. 11-7 and 13-2.
    """
    err = np.array(residuals[:k], dtype=np.float64)
    if len(theta) > k:
        for i in range(k):
            others = np.delete(theta, i)
            gap = float(np.min(np.abs(others - theta[i])))
            if gap > err[i]:
                err[i] = min(err[i], err[i] ** 2 / gap)
    return err


def lanczos_top(
    op: Operator, k: int = 1, *, tol: float, seed: int = 0, steps: int = 20
) -> Eigenpairs:
    """The k largest eigenpairs by Lanczos, checked after every product, stopped at ``tol``.

    After each product j the top k Ritz values of T_j are checked: each one's error estimate
    (:func:`ritz_errors`, from the residuals beta_j * |s_ij|, no extra products) must be at most
    ``tol`` * |theta_i|. That needs as many products as the accuracy asks for, where ARPACK
    cannot stop before ncv + 1 and power iteration converges at the rate lambda_2 / lambda_1.
    The estimate's gap is judged from the Ritz values, as ARPACK's is, so on a cluster of
    eigenvalues not yet resolved (two within a few percent) a Ritz value between them can pass
    it: ask for a smaller ``tol`` where such clusters matter.
    The iteration keeps every Lanczos vector, so ``steps`` bounds both products and memory
    (steps * p float64); :func:`top_eigenpairs` hands on to ARPACK's restarts beyond it.

    Args:
        op: symmetric operator; k: eigenpairs (1 <= k < p); tol: relative accuracy (> 0).
        seed: seed of the Gaussian start vector; steps: most products.

    Returns:
        :class:`Eigenpairs` with solver "lanczos"; ``converged`` False if ``steps`` products
        did not reach ``tol`` (the values are then the last Ritz values).
    """
    p = int(op.size)
    if not 1 <= k < p or not tol > 0 or steps < k:
        raise ValueError(f"need 1 <= k < p, tol > 0 and steps >= k, got {k}, {p}, {tol}, {steps}")
    v0 = torch.from_numpy(np.random.default_rng(seed).standard_normal(p))
    hvps, done = [0], [False]

    def matvec(v: torch.Tensor) -> torch.Tensor:
        hvps[0] += 1
        return op.matvec(v).double()

    def stop(alpha: np.ndarray, beta: np.ndarray, b: float) -> bool:
        if len(alpha) < k:
            return False
        theta, s = _tridiagonal_eigh(alpha, beta)
        err = ritz_errors(theta, b * np.abs(s[-1]), k)
        done[0] = bool(np.all(err <= tol * np.abs(theta[:k])))
        return done[0]

    alpha, beta, basis = lanczos_basis(matvec, v0.to(_device(op)), steps, stop=stop)
    theta, s = _tridiagonal_eigh(alpha, beta)
    invariant = len(alpha) < min(steps, p) and not done[0]  # an exact (invariant) Krylov space
    k_found = min(k, len(theta))
    vecs = (basis.T @ torch.from_numpy(s[:, :k_found]).to(basis)).cpu().numpy()  # (p, k)
    vals = np.concatenate([theta[:k_found], np.full(k - k_found, np.nan)])
    vecs = np.concatenate([vecs, np.full((p, k - k_found), np.nan)], axis=1)
    converged = (done[0] or invariant) and k_found == k
    return Eigenpairs(vals, _fix_signs(vecs), hvps[0], converged, "lanczos")


def _tridiagonal_eigh(alpha: np.ndarray, beta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (descending) and eigenvectors (columns) of the tridiagonal T."""
    if len(alpha) == 1:
        return np.asarray(alpha, dtype=np.float64), np.ones((1, 1))
    theta, s = eigh_tridiagonal(alpha, beta)
    return theta[::-1].copy(), s[:, ::-1].copy()


def _device(op: Operator) -> torch.device:
    return getattr(op, "device", torch.device("cpu"))


class Negated:
    """-H as an operator: its largest eigenvalues are the negated smallest of H."""

    def __init__(self, op: Operator) -> None:
        self.op, self.size = op, op.size
        self.device = _device(op)

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        return -self.op.matvec(v)


def top_eigenpairs(
    op: Operator,
    k: int = 1,
    *,
    tol: float = 1e-4,
    seed: int = 0,
    max_restarts: int | None = None,
    ncv: int | None = None,
    which: str = "LA",
) -> Eigenpairs:
    """The k largest (algebraic; ``which="SA"``: smallest) eigenvalues of ``op`` and their
    eigenvectors.

    Three solvers, the cheapest that applies:
    - operators with p <= max(2k + 1, 20): built densely from p products ("dense");
    - k <= ``LANCZOS_MAX_K`` and tol > 0: :func:`lanczos_top`, which stops after the first
      product at which the Ritz values are within ``tol`` ("lanczos");
    - otherwise, or when that has not converged within ncv products: ARPACK's implicitly
      restarted Lanczos, ``scipy.sparse.linalg.eigsh(which="LA")`` ("eigsh"), started from
      the Lanczos run's top Ritz vector (its products are counted in ``hvps``).

    Args:
        op: symmetric operator (``size`` p, ``matvec`` on flat tensors).
        k: eigenpairs wanted (1 <= k < p).
        tol: relative accuracy of the eigenvalues (ARPACK's tol; 0 = machine precision, ARPACK).
        seed: seed of the start vector.
        max_restarts: ARPACK's ``maxiter`` (default: scipy's, p * 10).
        ncv: Lanczos vectors: the Lanczos run's most products, and ARPACK's vectors kept
            between restarts (default: scipy's, max(2k + 1, 20)).
        which: "LA" (largest algebraic) or "SA" (smallest: the top of -H, negated back).

    Returns:
        :class:`Eigenpairs`, values ordered from the extreme inward (largest first for "LA",
        smallest first for "SA"). A solver that runs out of restarts returns the pairs that
        converged (NaN for the others) with ``converged=False``.
    """
    check_choice(which, WHICH, "eigenvalue end")
    if which == "SA":
        neg = top_eigenpairs(Negated(op), k, tol=tol, seed=seed, max_restarts=max_restarts, ncv=ncv)
        return Eigenpairs(-neg.values, neg.vectors, neg.hvps, neg.converged, neg.solver)
    p = int(op.size)
    if not 1 <= k < p:
        raise ValueError(f"need 1 <= k < p for the top-k eigenpairs, got k={k}, p={p}")
    count = [0]

    def mv(v: np.ndarray) -> np.ndarray:
        count[0] += 1
        t = torch.from_numpy(np.ascontiguousarray(v, dtype=np.float64).reshape(-1))
        return op.matvec(t).double().cpu().numpy()

    if p <= max(2 * k + 1, 20):
        h = np.column_stack([mv(e) for e in np.eye(p)])
        vals, vecs = np.linalg.eigh((h + h.T) / 2)
        order = np.argsort(vals)[::-1][:k]
        return Eigenpairs(vals[order], _fix_signs(vecs[:, order]), count[0], True, "dense")
    v0: np.ndarray | None = None
    if k <= LANCZOS_MAX_K and tol > 0:
        first = lanczos_top(op, k, tol=tol, seed=seed, steps=min(ncv or max(2 * k + 1, 20), p))
        if first.converged:
            return first
        count[0] += first.hvps
        if np.isfinite(first.vectors[:, 0]).all():
            v0 = first.vectors[:, 0]
    if v0 is None:
        v0 = np.random.default_rng(seed).standard_normal(p)
    linop = LinearOperator((p, p), matvec=mv, dtype=np.float64)
    converged = True
    try:
        vals, vecs = eigsh(linop, k=k, which="LA", v0=v0, tol=tol, maxiter=max_restarts, ncv=ncv)
    except ArpackNoConvergence as err:
        converged = False
        vals, vecs = err.eigenvalues, err.eigenvectors
        pad = k - len(vals)
        vals = np.concatenate([vals, np.full(pad, np.nan)])
        vecs = np.concatenate([vecs.reshape(p, -1), np.full((p, pad), np.nan)], axis=1)
    order = np.argsort(-np.nan_to_num(vals, nan=-np.inf))
    return Eigenpairs(vals[order], _fix_signs(vecs[:, order]), count[0], converged, "eigsh")


def _fix_signs(vecs: np.ndarray) -> np.ndarray:
    """Flip each column so that its entry of largest magnitude is positive."""
    out = np.array(vecs, dtype=np.float64)
    for j in range(out.shape[1]):
        col = out[:, j]
        if np.isfinite(col).all() and col[np.argmax(np.abs(col))] < 0:
            out[:, j] = -col
    return out
