"""Benchmark: CERTIFY (randomized smoothing), ours against the reference implementation's way.

One run, same model (PreActResNet-18, seeded weights or --checkpoint), same CIFAR-10 test
images (the bundled sample), same sigma, n0 and n:

  (a)  ours: ``analysis.certify.certify`` per image: noise from per-image seeded CPU chunks
       (the same on any device and batch size), counts by ``torch.bincount`` on the device
  (a0) the bare forward passes (a) needs: n0 + n noisy images per test image through the model
       in the same batches, inputs prepared beforehand, argmax, nothing else
  (b)  the reference way (Cohen et al.'s ``core.py``): a Python loop per image, per batch
       ``x.repeat``, ``torch.randn_like`` noise from the global generator, predictions moved to
       numpy and counted by a Python loop over them, then the same Clopper-Pearson bound

Targets: (a) <= 1.05 x (a0) on CPU; the ratio (b)/(a) is printed. Each variant runs
``--repeats`` times, interleaved, and the fastest run counts; times are judged on CPU time of
this process with one torch thread by default (the machine is shared; wall times are printed
too). No GPU was available to this project: on a GPU the forward passes are much cheaper and
the CPU noise draw (printed below in samples/s per thread) matters more; ``--device cuda``
measures it there.

    python benchmarks/certify.py                        # 4 images, n0 100, n 1000
    python benchmarks/certify.py --width 0.25 --images 8 --n 2000
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import norm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from analysis.certify import certify, noise_batches  # noqa: E402
from analysis.stats import clopper_pearson_lower  # noqa: E402
from awp.augment import to_float  # noqa: E402
from awp.data import DataConfig, load_data  # noqa: E402
from awp.models import ModelSpec, build_model  # noqa: E402
from awp.modes import model_mode  # noqa: E402

TARGET = 1.05  # (a) / (a0)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--images", type=int, default=4, help="test images certified")
    p.add_argument("--n0", type=int, default=100, help="selection samples per image")
    p.add_argument("--n", type=int, default=1000, help="estimation samples per image")
    p.add_argument("--sigma", type=float, default=0.25)
    p.add_argument("--alpha", type=float, default=0.001)
    p.add_argument("--batch-size", type=int, default=400, help="Cohen et al.'s CIFAR default")
    p.add_argument("--width", type=float, default=1.0, help="PreActResNet-18 width multiplier")
    p.add_argument("--repeats", type=int, default=2, help="runs per variant; the fastest counts")
    p.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    p.add_argument("--judge", default="cpu", choices=("cpu", "wall"))
    p.add_argument("--checkpoint", type=Path, default=None, help="a trained checkpoint instead")
    p.add_argument("--device", default="cpu")
    return p.parse_args(argv)


class Clock:
    """Wall and CPU time of a block (CPU time of this process: the work, on a shared machine);
    a CUDA device is synchronized before the block ends."""

    def __init__(self, device: torch.device | None = None) -> None:
        self.device = device

    def __enter__(self) -> Clock:
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        if self.device is not None and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.wall = time.perf_counter() - self._wall
        self.cpu = time.process_time() - self._cpu


# ----------------------------------------------------------------------------- variants


def ours(model, xs, args) -> list[float]:
    """(a): the library's CERTIFY per image; returns the radii."""
    out = []
    for i, x in enumerate(xs):
        cert, _, _ = certify(
            model, x, sigma=args.sigma, n0=args.n0, n=args.n, alpha=args.alpha, seed=i,
            batch_size=args.batch_size,
        )  # fmt: skip
        out.append(cert.radius)
    return out


def bare(model, xs, args, inputs: torch.Tensor) -> None:
    """(a0): the forward passes of (a) on prepared inputs, argmax, nothing else."""
    with torch.no_grad(), model_mode(model, "eval"):
        for _ in xs:
            for num in (args.n0, args.n):
                for start in range(0, num, args.batch_size):
                    b = min(args.batch_size, num - start)
                    model(inputs[:b]).argmax(1)


def reference(model, xs, args, num_classes: int) -> list[float]:
    """(b): Cohen et al.'s ``Smooth.certify`` / ``_sample_noise`` / ``_count_arr``."""

    def count_arr(arr, length):
        counts = np.zeros(length, dtype=int)
        for idx in arr:
            counts[idx] += 1
        return counts

    def sample_noise(x, num, batch_size):
        with torch.no_grad():
            counts = np.zeros(num_classes, dtype=int)
            remaining = num
            for _ in range(int(np.ceil(num / batch_size))):
                this_batch_size = min(batch_size, remaining)
                remaining -= this_batch_size
                batch = x.repeat((this_batch_size, 1, 1, 1))
                noise = torch.randn_like(batch) * args.sigma
                predictions = model(batch + noise).argmax(1)
                counts += count_arr(predictions.cpu().numpy(), num_classes)
            return counts

    torch.manual_seed(0)
    model.eval()
    radii = []
    for x in xs:
        c_a = sample_noise(x, args.n0, args.batch_size).argmax().item()
        counts = sample_noise(x, args.n, args.batch_size)
        p_a = clopper_pearson_lower(int(counts[c_a]), args.n, args.alpha)
        radii.append(args.sigma * norm.ppf(p_a) if p_a >= 0.5 else 0.0)
    return radii


def noise_rate(shape, args) -> float:
    """CPU noise samples per second (one thread) drawn by (a)'s chunked generators."""
    num = max(args.n, 2000)
    with Clock() as clock:
        for _ in noise_batches(shape, num, seed=0, batch_size=args.batch_size):
            pass
    return num / clock.cpu


# ----------------------------------------------------------------------------- main


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    data = load_data(DataConfig(dataset="sample", val_size=0), progress=False)
    xs = [to_float(data.test.x[i]).to(device) for i in range(args.images)]
    spec = ModelSpec(
        name="preactresnet18", num_classes=10, width=args.width, mean=data.mean, std=data.std
    )
    torch.manual_seed(0)
    model = build_model(spec)
    if args.checkpoint is not None:
        from awp.checkpoint import load_model

        model, _ = load_model(args.checkpoint)
    model = model.to(device).eval()
    g = torch.Generator().manual_seed(0)
    inputs = (xs[0] + args.sigma * torch.randn((args.batch_size, *xs[0].shape), generator=g)).to(
        device
    )
    with torch.no_grad():  # warm-up: allocator, oneDNN kernels
        model(inputs[: args.batch_size])
    passes = args.images * (args.n0 + args.n)
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"PreActResNet-18 width {args.width:g} ({n_params / 1e6:.2f}M parameters) on {device}, "
        f"{torch.get_num_threads()} thread(s); {args.images} CIFAR-10 test images x (n0 {args.n0}"
        f" + n {args.n}) = {passes} noisy forward passes per variant, batch {args.batch_size}, "
        f"sigma {args.sigma}, alpha {args.alpha}"
        + ("" if device.type == "cuda" else "; no GPU measured (none was available)"),
        flush=True,
    )
    jobs = {
        "a": lambda: ours(model, xs, args),
        "a0": lambda: bare(model, xs, args, inputs),
        "b": lambda: reference(model, xs, args, spec.num_classes),
    }
    times: dict[str, list[tuple[float, float]]] = {}
    radii: dict[str, list[float]] = {}
    for r in range(args.repeats):
        order = ["a", "a0", "b"] if r % 2 == 0 else ["b", "a0", "a"]
        print(f"repeat {r + 1}/{args.repeats}", flush=True)
        for name in order:
            with Clock(device) as clock:
                result = jobs[name]()
            if result is not None:
                radii[name] = result
            times.setdefault(name, []).append((clock.wall, clock.cpu))
            print(f"  {name:3s} wall {clock.wall:8.2f}s  cpu {clock.cpu:8.2f}s", flush=True)
    wall = {k: min(w for w, _ in v) for k, v in times.items()}
    cpu = {k: min(c for _, c in v) for k, v in times.items()}
    rate = noise_rate(xs[0].shape, args)
    judge = cpu if args.judge == "cpu" else wall
    print("\nfastest of the repeats:")
    for k in times:
        print(
            f"  {k:3s} wall {wall[k]:8.2f}s   cpu {cpu[k]:8.2f}s   "
            f"({passes / judge[k]:7.0f} noisy images/s)"
        )
    share = 100 * passes / rate / judge["a"]
    print(
        f"noise drawn by (a): {rate:.0f} samples/s on one CPU thread "
        f"({rate * xs[0].numel() / 1e6:.0f} M normals/s), i.e. {share:.1f}% of (a)'s time here"
    )
    print(f"certified radii (a): {np.round(radii['a'], 3).tolist()}")
    print(f"certified radii (b): {np.round(radii['b'], 3).tolist()} (other noise draws)")
    a_a0, b_a = judge["a"] / judge["a0"], judge["b"] / judge["a"]
    print(f"\nratio      cpu    wall   target   result (judged on {args.judge} time)")
    passed = a_a0 <= TARGET
    print(
        f"a/a0   {cpu['a'] / cpu['a0']:6.3f}  {wall['a'] / wall['a0']:6.3f}   <= {TARGET:<5g} "
        f"{'PASS' if passed else 'MISS'}"
    )
    print(f"b/a    {cpu['b'] / cpu['a']:6.3f}  {wall['b'] / wall['a']:6.3f}   (printed)  "
          f"the reference way takes {b_a:.2f}x ours on {device}")  # fmt: skip
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
