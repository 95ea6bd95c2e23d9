"""Benchmark: the CPU levers on the demo's training step, its evaluation attack, and batch sizes.

In one process, interleaved (the order rotates every round), median over rounds, each variant
against the plain float32 NCHW eager step of the same round:

  training step   AT with PGD-3 (the demo's), PreActResNet-18 width 0.25, batch 32
                  plain | channels_last | bf16 autocast | both | torch.compile (inductor)
  evaluation      PGD-20 in eval mode on 256 images: plain | channels_last | bf16 | both
  threads         the plain training step with 1 and with 2 threads
  batch size      the plain training step per image at batch 16, 32, 64 and 128

Also printed: how far each variant's loss after one identical step lies from the plain one
(the tolerance a variant must hold to be adopted), and torch.compile's one-off compile time.

    python benchmarks/cpu_levers.py                  # the demo's sizes
    python benchmarks/cpu_levers.py --width 1        # full width
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time

import torch
from interleave import interleaved_times, medians

from awp.attacks import run_attack
from awp.augment import augment
from awp.config import PGD20_EVAL, AttackConfig
from awp.data import DataConfig, load_data
from awp.models import ModelSpec, build_model
from awp.objectives import at_objective
from awp.perturb import select_params
from awp.train import train_step

TRAIN_ATTACK = AttackConfig(name="pgd", steps=3, step_size=3 / 255, mode="train")


def _median_times(fns: dict, rounds: int) -> dict[str, float]:
    return medians(interleaved_times(fns, rounds))


def _report(title: str, med: dict[str, float], base: str, unit: str = "s") -> None:
    print(title)
    for k, v in med.items():
        print(f"  {k:28s} {v:8.3f} {unit}   ratio to {base}: {v / med[base]:.3f}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    dev = torch.device("cpu")
    data = load_data(DataConfig(dataset="sample", val_size=0), dev, progress=False)
    g = torch.Generator().manual_seed(0)
    x = augment(data.train.x[:128], generator=g)
    y = data.train.y[:128]
    xe, ye = data.test.x[:256].float() / 255, data.test.y[:256]
    spec = ModelSpec(name="preactresnet18", width=args.width, mean=data.mean, std=data.std)

    def fresh(channels_last: bool = False):
        torch.manual_seed(0)
        m = build_model(spec)
        if channels_last:
            m = m.to(memory_format=torch.channels_last)
        return m, torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

    def cl(t):
        return t.contiguous(memory_format=torch.channels_last)

    variants = {
        "plain": (fresh(), lambda t: t, contextlib.nullcontext),
        "channels_last": (fresh(True), cl, contextlib.nullcontext),
        "bf16 autocast": (fresh(), lambda t: t, lambda: torch.autocast("cpu", torch.bfloat16)),
        "channels_last + bf16": (fresh(True), cl, lambda: torch.autocast("cpu", torch.bfloat16)),
    }
    compile_s = None
    if not args.no_compile:
        m, opt = fresh()
        cm = torch.compile(m)
        t0 = time.perf_counter()
        gen0 = torch.Generator().manual_seed(1)
        train_step(cm, opt, x[:32], y[:32], attack=TRAIN_ATTACK, objective=at_objective,
                   params=select_params(m), generator=gen0)  # fmt: skip
        compile_s = time.perf_counter() - t0
        variants["torch.compile"] = ((cm, opt), lambda t: t, contextlib.nullcontext)

    # How far one identical step moves each variant from the plain one.
    print(f"PreActResNet-18 width {args.width}, AT PGD-3, threads {torch.get_num_threads()}")
    losses = {}
    for name, (_, fmt, ctx) in variants.items():
        mm, oo = fresh(name.startswith("channels_last"))
        model = torch.compile(mm) if name == "torch.compile" else mm
        with ctx():
            st = train_step(model, oo, fmt(x[:32]), y[:32], attack=TRAIN_ATTACK,
                            objective=at_objective, params=select_params(mm),
                            generator=torch.Generator().manual_seed(5))  # fmt: skip
        with torch.no_grad():
            losses[name] = float(at_objective(mm.eval(), x[:32], x[:32], y[:32])[0])
        del st
    for name, v in losses.items():
        diff = abs(v - losses["plain"])
        print(f"  loss after one step, {name:16s} {v:.6f}  (|diff| to plain {diff:.2e})")
    if compile_s is not None:
        print(f"  torch.compile: first step (compiling) {compile_s:.1f} s")

    def step_fn(name):
        (m, opt), fmt, ctx = variants[name]
        params = select_params(m)
        gen = torch.Generator().manual_seed(1)
        xb = fmt(x[:32])

        def run():
            with ctx():
                train_step(m, opt, xb, y[:32], attack=TRAIN_ATTACK, objective=at_objective,
                           params=params, generator=gen)  # fmt: skip

        return run

    _report("training step (batch 32)", _median_times({k: step_fn(k) for k in variants},
            args.rounds), "plain")  # fmt: skip

    def eval_fn(name):
        (m, _), fmt, ctx = variants[name]
        xb = fmt(xe)

        def run():
            with ctx():
                run_attack(m, xb, ye, PGD20_EVAL, generator=torch.Generator().manual_seed(2))

        return run

    evals = {
        k: eval_fn(k) for k in ("plain", "channels_last", "bf16 autocast", "channels_last + bf16")
    }
    _report("PGD-20 evaluation (256 images, eval mode)", _median_times(evals, args.rounds), "plain")

    def threads_fn(n):
        run = step_fn("plain")

        def go():
            torch.set_num_threads(n)
            try:
                run()
            finally:
                torch.set_num_threads(2)

        return go

    _report("training step, threads", _median_times({f"{n} thread(s)": threads_fn(n)
            for n in (1, 2)}, args.rounds), "2 thread(s)")  # fmt: skip

    def batch_fn(bs):
        m, opt = fresh()
        params = select_params(m)
        gen = torch.Generator().manual_seed(1)

        def run():
            t0 = time.perf_counter()
            train_step(m, opt, x[:bs], y[:bs], attack=TRAIN_ATTACK, objective=at_objective,
                       params=params, generator=gen)  # fmt: skip
            return time.perf_counter() - t0

        return run

    per_image = {}
    med = _median_times({f"batch {b}": batch_fn(b) for b in (16, 32, 64, 128)}, args.rounds)
    for k, v in med.items():
        per_image[k] = v / int(k.split()[1]) * 1000
    _report("training step per image", per_image, "batch 32", unit="ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
