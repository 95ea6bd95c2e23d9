"""Benchmark: the cost of one Hessian-vector product, and the products the top eigenvalue needs.

One run, PreActResNet-18 (full width by default, seeded weights with BatchNorm statistics
re-estimated on the images, or --checkpoint) on CIFAR-10 test images from
../shared/data/cifar10-jpeg.tar.gz:

Part 1, one batch of ``--batch`` images, CPU time with one torch thread (``--threads``):
  (fb)     one forward + backward of the mean cross-entropy w.r.t. the conv/linear weights
  (jvp)    one H v by :class:`awp.hessian.LossHessian` with method "jvp" (forward-over-reverse)
  (double) the same with method "double" (double backward)
  (lin)    for reference: torch.func.linearize of the gradient, one tangent evaluation (its
           one-time tracing is printed separately); not used by the library (see below)
Target: (best HVP) / (fb) <= 2.5. Each variant runs ``--repeats`` times, the fastest counts.

Part 2, the loss at x_adv (PGD-10, 8/255, crafted once) on ``--eig-images`` images: the
products each method needs for the top eigenvalue to 1e-3 relative, against a reference from
``top_eigenpairs`` at tol 1e-6:
  Lanczos (one start vector; the top Ritz value after every step j, from the leading j x j
  block of one m-step tridiagonalization), ``top_eigenpairs`` at tol 1e-3 (scipy's ncv and
  ncv=8, as ``awp hessian`` calls it: Lanczos checked per product, ARPACK beyond), and power
  iteration as PyHessian does it (its own stopping
  rule, relative change < 1e-3, and the products until it is truly within 1e-3 of the
  largest-magnitude eigenvalue, which is what it converges to).

Part 3, the time to the requested accuracy (``--tol``, 1e-3 by default) of the top eigenvalue,
all parameters, ``--threads`` threads, CPU seconds, rounds interleaved (median of ``--rounds``):
  PyHessian   its ``hessian.eigenvalues`` power iteration written as PyHessian writes it (one
              forward/backward with create_graph, then H v by autograd.grad of the kept
              gradients; stop when the Rayleigh quotient changes by < tol relative), and
  ours        ``top_eigenpairs(LossHessian(...), 1, tol=tol)`` at the default method "auto"
              (the kept-graph product PyHessian uses, when the graphs fit in memory; the
              method it resolved to is printed): Lanczos that checks its Ritz values after
              every product,
for the clean loss and the loss at x_adv (PGD-10 crafted once), whose top eigenvalues are more
or less separated (the printed relative gap (lambda_1 - lambda_2) / lambda_1 says how much), on
``--eig-images`` images. Round r starts both from seed r. Errors (one per round) are against
``top_eigenpairs`` (k = 2) at tol 1e-9. Target: ours / PyHessian <= 1.0
in both, with ours within tol.

    python benchmarks/hessian.py                     # full width, 64 + 32 images
    python benchmarks/hessian.py --skip 1 2 --eig-images 64   # part 3 only
    python benchmarks/hessian.py --width 0.25 --repeats 1   # quicker
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.linalg import eigvalsh_tridiagonal
from scipy.sparse.linalg import eigsh

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from analysis.hessian_estimators import lanczos, power_iteration  # noqa: E402
from awp.config import AttackConfig  # noqa: E402
from awp.data import fixed_subset  # noqa: E402
from awp.hessian import LossHessian, loss_batches, top_eigenpairs  # noqa: E402
from awp.imagefolder import read_imagefolder_files  # noqa: E402
from awp.models import ModelSpec, build_model  # noqa: E402
from awp.modes import model_mode  # noqa: E402
from awp.perturb import select_params  # noqa: E402
from awp.seeds import generator_for  # noqa: E402
from landscape.surface import recompute_bn_stats  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
TARGET = 2.5
REL = 1e-3


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="CIFAR-10 JPEG tar.gz")
    p.add_argument("--batch", type=int, default=64, help="images of part 1 (one batch)")
    p.add_argument("--eig-images", type=int, default=32, help="images of part 2")
    p.add_argument("--width", type=float, default=1.0, help="PreActResNet-18 width multiplier")
    p.add_argument("--repeats", type=int, default=3, help="runs per variant of part 1")
    p.add_argument("--threads", type=int, default=1, help="torch threads of part 1")
    p.add_argument("--eig-threads", type=int, default=0, help="threads of part 2 (0: default)")
    p.add_argument("--lanczos-steps", type=int, default=40, help="Lanczos steps of part 2")
    p.add_argument("--power-iters", type=int, default=80, help="most power iterations")
    p.add_argument("--checkpoint", type=Path, default=None, help="a trained checkpoint instead")
    p.add_argument("--tol", type=float, default=1e-3, help="requested accuracy of part 3")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds of part 3")
    p.add_argument("--skip", nargs="*", default=[], choices=("1", "2", "3", "lin"))
    return p.parse_args(argv)


def read_images(path: Path, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed subset of n test JPEGs, decoded: (n, 3, 32, 32) float in [0, 1], labels."""
    from PIL import Image

    files = read_imagefolder_files(path)["test"]
    classes = sorted(files)
    flat = [(c, data) for c in classes for _, data in files[c]]
    idx = fixed_subset(len(flat), n, seed=0).tolist()
    arrays = [np.asarray(Image.open(io.BytesIO(flat[i][1])).convert("RGB")) for i in idx]
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().div_(255)
    y = torch.tensor([classes.index(flat[i][0]) for i in idx])
    return x.contiguous(), y


def cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def timed(fn, repeats: int) -> float:
    """The fastest CPU time of ``repeats`` runs of ``fn``."""
    best = float("inf")
    for _ in range(repeats):
        t0 = cpu_seconds()
        fn()
        best = min(best, cpu_seconds() - t0)
    return best


def part1(model, x, y, args) -> None:
    torch.set_num_threads(args.threads)
    params = select_params(model)
    tensors = list(params.values())
    data = loss_batches(model, x, y, attack=None, batch_size=len(y))
    ops = {m: LossHessian(model, data, params, method=m) for m in ("jvp", "double")}
    v = torch.randn(ops["jvp"].size, generator=torch.Generator().manual_seed(0))

    def fb() -> None:
        with model_mode(model, "eval"):
            loss = F.cross_entropy(model(x), y)
            torch.autograd.grad(loss, tensors)

    jobs = {
        "fb": fb,
        "jvp": lambda: ops["jvp"].matvec(v),
        "double": lambda: ops["double"].matvec(v),
    }
    for job in jobs.values():  # warm-up: allocator, oneDNN kernels, torch.func's decompositions
        job()
    diff = (ops["jvp"].matvec(v) - ops["double"].matvec(v)).norm() / ops["double"].matvec(v).norm()
    times = {name: timed(job, args.repeats) for name, job in jobs.items()}
    if "lin" not in args.skip:
        times["lin"], times["lin setup"] = linearized(model, x, y, params, v, args.repeats)
    print(
        f"\npart 1: one batch of {len(y)} images, {args.threads} thread(s), CPU seconds "
        f"(fastest of {args.repeats}); jvp and double agree to {float(diff):.1e} relative"
    )
    for name, t in times.items():
        ratio = f"{t / times['fb']:5.2f} x fb" if name != "lin setup" else "(once per batch)"
        print(f"  {name:10s} {t:8.3f}s  {ratio}")
    best = min(("jvp", "double"), key=lambda k: times[k])
    ratio = times[best] / times["fb"]
    verdict = "PASS" if ratio <= TARGET else "MISS"
    print(f"HVP ({best}) / forward+backward = {ratio:.2f}  (target <= {TARGET}: {verdict})")


def linearized(model, x, y, params, v, repeats) -> tuple[float, float]:
    """torch.func.linearize of grad L: tracing once, then one tangent evaluation per H v."""
    from torch.func import functional_call, grad, linearize

    names = list(params)
    primals = {n: params[n].detach() for n in names}
    tangent = dict(zip(names, v.split([params[n].numel() for n in names])))
    tangent = {n: t.view(params[n].shape) for n, t in tangent.items()}

    def loss(p):
        return F.cross_entropy(functional_call(model, p, (x,)), y)

    with model_mode(model, "eval"):
        t0 = cpu_seconds()
        _, jvp_fn = linearize(grad(loss), primals)
        setup = cpu_seconds() - t0
        jvp_fn(tangent)  # warm-up
        return timed(lambda: jvp_fn(tangent), repeats), setup


def first_within(values, ref: float) -> int | None:
    """1-based index from which every value is within REL of ``ref`` (None: never)."""
    ok = [abs(v - ref) <= REL * abs(ref) for v in values]
    for i in range(len(ok)):
        if all(ok[i:]):
            return i + 1
    return None


def part2(model, x, y, args) -> None:
    if args.eig_threads:
        torch.set_num_threads(args.eig_threads)
    else:
        torch.set_num_threads(os.cpu_count() or 1)
    attack = AttackConfig(steps=10, step_size=2 / 255, mode="eval")
    t0 = time.perf_counter()
    data = loss_batches(model, x, y, attack=attack, batch_size=len(y))
    op = LossHessian(model, data, select_params(model))
    print(
        f"\npart 2: loss at x_adv (PGD-10 crafted once, {time.perf_counter() - t0:.1f}s) on "
        f"{len(y)} images, p = {op.size:,}, {torch.get_num_threads()} thread(s)"
    )
    t0 = time.perf_counter()
    ref = top_eigenpairs(op, 1, tol=1e-6, seed=1)
    lin = op.linear_operator()
    v0 = np.random.default_rng(2).standard_normal(op.size)
    lam_lm = float(eigsh(lin, k=1, which="LM", tol=1e-6, v0=v0)[0][0])  # power's target
    lam = float(ref.values[0])
    per = (time.perf_counter() - t0) / op.hvps
    print(
        f"  reference: largest eigenvalue {lam:.6g} ({ref.solver} tol 1e-6, {ref.hvps} products); "
        f"largest magnitude {lam_lm:.6g}; ~{per:.2f}s per product"
    )
    start = torch.randn(op.size, generator=generator_for(0, "bench"), dtype=torch.float64)
    alpha, beta = lanczos(op.matvec, start, args.lanczos_steps)
    # Lanczos is incremental: the leading j x j block of T is the tridiagonal after j steps.
    ritz = [float(alpha[0])] + [
        float(eigvalsh_tridiagonal(alpha[:j], beta[: j - 1]).max())
        for j in range(2, len(alpha) + 1)
    ]
    n_lanczos = first_within(ritz, lam)
    rows = [("Lanczos (Ritz value after each step)", n_lanczos, ritz[-1])]
    for ncv in (None, 8):
        e = top_eigenpairs(op, 1, tol=REL, seed=3, ncv=ncv)
        err = abs(float(e.values[0]) - lam) / abs(lam)
        rows.append(
            (
                f"top_eigenpairs tol 1e-3, ncv {ncv or 'scipy'} ({e.solver}, error {err:.1e})",
                e.hvps,
                e.values[0],
            )
        )
    power = power_iteration(
        op.matvec, op.size, tol=0.0, max_iter=args.power_iters, generator=generator_for(0, "power")
    )
    hist = list(power.history[0])
    changes = [abs(b - a) / (abs(a) + 1e-6) for a, b in zip(hist, hist[1:])]
    stop = next((i + 2 for i, c in enumerate(changes) if c < REL), None)  # PyHessian's rule
    if stop is not None:
        err = abs(hist[stop - 1] - lam_lm) / abs(lam_lm)
        rows.append(
            (f"power, PyHessian's stop (change < 1e-3; error {err:.1e})", stop, hist[stop - 1])
        )
    rows.append(("power, truly within 1e-3 of |lambda|max", first_within(hist, lam_lm), hist[-1]))
    print(f"  products until the top eigenvalue is within {REL:g} relative:")
    for name, n, last in rows:
        shown = (
            n if n is not None else f"> {len(hist) if 'power' in name else len(ritz)} (not reached)"
        )
        print(f"    {name:58s} {shown!s:>14}   (last value {last:.6g})")


# ----------------------------------------------------------------------------- part 3
# PyHessian's power iteration, as pyhessian/hessian.py and pyhessian/utils.py write it
# (amirgholami/PyHessian, hessian.eigenvalues with its helpers), for a single batch.


def group_product(xs, ys):
    return sum([torch.sum(x * y) for (x, y) in zip(xs, ys)])


def group_add(params, update, alpha=1):
    for i, p in enumerate(params):  # noqa: B007 (as PyHessian writes it)
        params[i].data.add_(update[i] * alpha)
    return params


def normalization(v):
    s = group_product(v, v)
    s = s**0.5
    s = s.cpu().item()
    v = [vi / (s + 1e-6) for vi in v]
    return v


def get_params_grad(model):
    params = []
    grads = []
    for param in model.parameters():
        if not param.requires_grad:
            continue
        params.append(param)
        grads.append(0.0 if param.grad is None else param.grad + 0.0)
    return params, grads


def hessian_vector_product(gradsH, params, v):
    hv = torch.autograd.grad(gradsH, params, grad_outputs=v, only_inputs=True, retain_graph=True)
    return hv


def orthnormal(w, v_list):
    for v in v_list:
        w = group_add(w, v, alpha=-group_product(w, v))
    return normalization(w)


class PyHessian:
    """pyhessian.hessian for one batch (``data=(inputs, targets)``), eigenvalues() only."""

    def __init__(self, model, criterion, data):
        self.model = model.eval()
        self.criterion = criterion
        self.inputs, self.targets = data
        self.device = self.inputs.device
        outputs = self.model(self.inputs)
        loss = self.criterion(outputs, self.targets)
        loss.backward(create_graph=True)
        params, gradsH = get_params_grad(self.model)
        self.params = params
        self.gradsH = gradsH
        self.hvps = 0

    def eigenvalues(self, maxIter=100, tol=1e-3, top_n=1):
        assert top_n >= 1
        device = self.device
        eigenvalues = []
        eigenvectors = []
        computed_dim = 0
        while computed_dim < top_n:
            eigenvalue = None
            v = [torch.randn(p.size()).to(device) for p in self.params]
            v = normalization(v)
            for _i in range(maxIter):
                v = orthnormal(v, eigenvectors)
                self.model.zero_grad()
                Hv = hessian_vector_product(self.gradsH, self.params, v)
                self.hvps += 1
                tmp_eigenvalue = group_product(Hv, v).cpu().item()
                v = normalization(Hv)
                if eigenvalue is None:
                    eigenvalue = tmp_eigenvalue
                else:
                    if abs(eigenvalue - tmp_eigenvalue) / (abs(eigenvalue) + 1e-6) < tol:
                        break
                    else:
                        eigenvalue = tmp_eigenvalue
            eigenvalues.append(eigenvalue)
            eigenvectors.append(v)
            computed_dim += 1
        return eigenvalues, eigenvectors


def pyhessian_top(model, x, y, tol, seed):
    """PyHessian's top eigenvalue from scratch (its setup included), and its products."""
    torch.manual_seed(seed)
    for p in model.parameters():
        p.grad = None
    h = PyHessian(model, torch.nn.CrossEntropyLoss(), (x, y))
    values, _ = h.eigenvalues(tol=tol)
    for p in model.parameters():  # PyHessian leaves graph-holding .grad behind
        p.grad = None
    return float(values[0]), h.hvps


RESOLVED: set[str] = set()  # the methods "auto" resolved to in part 3


def ours_top(model, data, tol, seed):
    # The default method ("auto": the kept gradient graph, PyHessian's product, when it fits).
    op = LossHessian(model, data, dict(model.named_parameters()))
    pairs = top_eigenpairs(op, 1, tol=tol, seed=seed)
    RESOLVED.add(f"{op.resolved}" + (f" ({op.fallback})" if op.fallback else ""))
    return float(pairs.values[0]), pairs.hvps


def part3(model, x, y, args) -> None:
    torch.set_num_threads(args.threads)
    attack = AttackConfig(steps=10, step_size=2 / 255, mode="eval")
    print(
        f"\npart 3: top eigenvalue to {args.tol:g} relative, all parameters, {len(y)} images, "
        f"{args.threads} thread(s), CPU seconds (median of {args.rounds} interleaved rounds)"
    )
    for name, atk in (("clean", None), ("x_adv", attack)):
        data = loss_batches(model, x, y, attack=atk, batch_size=len(y))
        xb = data.batches[0][0]
        op = LossHessian(model, data, dict(model.named_parameters()))
        ref = top_eigenpairs(op, 2, tol=1e-9, seed=1)
        lam = float(ref.values[0])
        times: dict[str, list[float]] = {"PyHessian": [], "ours": []}
        got: dict[str, list[tuple[float, int]]] = {"PyHessian": [], "ours": []}
        for r in range(args.rounds):  # round r: start vectors from seed r for both
            order = ("PyHessian", "ours") if r % 2 == 0 else ("ours", "PyHessian")
            for who in order:
                t0 = cpu_seconds()
                if who == "PyHessian":
                    got[who].append(pyhessian_top(model, xb, y, args.tol, r))
                else:
                    got[who].append(ours_top(model, data, args.tol, r))
                times[who].append(cpu_seconds() - t0)
        gap = (ref.values[0] - ref.values[1]) / abs(lam)
        print(
            f"  {name}: reference lambda_1 {lam:.6g}, (lambda_1 - lambda_2) / lambda_1 = {gap:.3g}"
        )
        med = {who: float(np.median(t)) for who, t in times.items()}
        for who in ("PyHessian", "ours"):
            errs = [abs(v - lam) / abs(lam) for v, _ in got[who]]
            hvps = " ".join(str(n) for _, n in got[who])
            ok = sum(e <= args.tol for e in errs)
            print(
                f"    {who:10s} {med[who]:8.2f}s  products {hvps:10s}  errors "
                + " ".join(f"{e:.1e}" for e in errs)
                + f"  ({ok}/{len(errs)} within tol)"
            )
        ratio = med["ours"] / med["PyHessian"]
        verdict = "PASS" if ratio <= 1.0 else "MISS"
        print(f"    ours / PyHessian = {ratio:.2f}  (target <= 1.0: {verdict})")
        print(f"    ours resolved method auto to: {', '.join(sorted(RESOLVED))}")
        RESOLVED.clear()


def main(argv=None) -> int:
    args = parse_args(argv)
    if not args.data.is_file():
        print(f"data archive {args.data} not found; pass --data", file=sys.stderr)
        return 2
    x, y = read_images(args.data, max(args.batch, args.eig_images))
    torch.manual_seed(0)
    if args.checkpoint is not None:
        from awp.checkpoint import load_model

        model, _ = load_model(args.checkpoint)
    else:
        model = build_model(ModelSpec(name="preactresnet18", num_classes=10, width=args.width))
        recompute_bn_stats(model, x, batch_size=len(x))  # eval-mode statistics of real images
    model.eval()
    n = sum(p.numel() for p in select_params(model).values())
    name = str(args.checkpoint) if args.checkpoint else f"PreActResNet-18 width {args.width:g}"
    print(f"{name}, {n / 1e6:.2f}M conv/linear weights, CIFAR-10 test images from {args.data.name}")
    if "1" not in args.skip:
        part1(model, x[: args.batch], y[: args.batch], args)
    if "2" not in args.skip:
        part2(model, x[: args.eig_images], y[: args.eig_images], args)
    if "3" not in args.skip:
        part3(model, x[: args.eig_images], y[: args.eig_images], args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
