"""Benchmark: the default batch sizes of the analysis commands, per image, on this machine.

Every command that attacks or evaluates (``awp eval``, gap, flatness, landscape, quantize,
connect's evaluation) defaults to 256 examples per pass, and ``awp hessian`` to 128 per
Hessian-vector product. This measures, on the demo's network (PreActResNet-18 width 0.25,
bundled CIFAR-10 test images), the time per image at other batch sizes, each against the
default in the same round (interleaved, the order rotating, median of the rounds):

  attack      PGD-20 in eval mode, weights in channels_last on the CPU as ``awp eval`` runs it,
              on 512 images, batch 64, 128, 256 (default), 512
  hessian     one Hessian-vector product of the clean loss (the default product, graphs kept)
              over 256 images, batch 64, 128 (default), 256
  certify     CERTIFY (sigma 0.25, n0 = 100, n = 1000) of 2 test images, noisy copies per
              forward pass 25, 50, 100 (the CPU default), 200, 400, 1000 (the GPU default)

A batch size changes no result except through the attacks' random starts (drawn per batch;
CERTIFY's noise is drawn per image in fixed chunks, so its counts do not depend on it), so a
default is a choice of speed alone.

    python benchmarks/batch_sizes.py                                  # 2 threads, 3 rounds
    python benchmarks/batch_sizes.py --parts certify --width 1        # certify, full width
"""

from __future__ import annotations

import argparse

import torch
from interleave import interleaved_times, medians

from analysis.certify import certify
from awp.config import PGD20_EVAL
from awp.data import DataConfig, load_data
from awp.evaluate import evaluate_attack
from awp.hessian import LossHessian, loss_batches
from awp.models import ModelSpec, build_model
from awp.modes import cpu_channels_last
from awp.perturb import select_params


def _rounds(fns: dict, rounds: int) -> dict:
    """Median seconds of each function over ``rounds`` (after one warm-up), interleaved."""
    return medians(interleaved_times(fns, rounds))


def _table(title: str, med: dict, n: int, default) -> None:
    print(title)
    for k, v in med.items():
        mark = "  (default)" if k == default else ""
        print(f"  batch {k:4d}: {1000 * v / n:7.2f} ms per image, {v / med[default]:.3f}x{mark}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument(
        "--parts", nargs="+", choices=("attack", "hessian", "certify"),
        default=["attack", "hessian", "certify"],
    )  # fmt: skip
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = load_data(DataConfig(dataset="sample", val_size=0), "cpu", progress=False)
    spec = ModelSpec(name="preactresnet18", width=args.width, mean=data.mean, std=data.std)
    torch.manual_seed(0)
    model = build_model(spec).eval()
    x, y = data.test.x[:512], data.test.y[:512]
    print(f"threads {args.threads}, PreActResNet-18 width {args.width}, {args.rounds} rounds")

    def attack(b: int):
        def run() -> None:
            with cpu_channels_last(model):
                evaluate_attack(model, x, y, PGD20_EVAL, batch_size=b, seed=0)

        return run

    if "attack" in args.parts:
        med = _rounds({b: attack(b) for b in (64, 128, 256, 512)}, args.rounds)
        _table("attack: PGD-20 on 512 images", med, len(y), 256)
    if "hessian" in args.parts:
        _hessian(model, x, y, args.rounds)
    if "certify" in args.parts:
        xc = x[:2].float() / 255

        def smoothed(b: int):
            def run() -> None:
                for i, img in enumerate(xc):
                    certify(model, img, sigma=0.25, n0=100, n=1000, seed=i, batch_size=b)

            return run

        med = _rounds({b: smoothed(b) for b in (25, 50, 100, 200, 400, 1000)}, args.rounds)
        _table("certify: n0 100 + n 1000 noisy copies of 2 images", med, len(xc), 100)
    return 0


def _hessian(model, x, y, rounds: int) -> None:
    params = select_params(model)
    xs, ys = x[:256].float() / 255, y[:256]
    ops = {}
    for b in (64, 128, 256):
        ops[b] = LossHessian(model, loss_batches(model, xs, ys, attack=None, batch_size=b), params)
    v = torch.randn(ops[128].size)

    def product(b: int):
        return lambda: ops[b].matvec(v)

    med = _rounds({b: product(b) for b in ops}, rounds)
    _table("hessian: one product over 256 images", med, len(ys), 128)


if __name__ == "__main__":
    raise SystemExit(main())
