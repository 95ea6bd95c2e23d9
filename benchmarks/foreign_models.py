"""Benchmark: a landscape of a model from elsewhere costs what it costs on the model built here.

One run, one 1-D weight loss curve of a torchvision ResNet-18 (random initialization, 10
classes, seeded) on the bundled CIFAR-10 sample's test images, the same direction (filter
normalized, the same seed) and coordinates, for the same model reached three ways:

  direct       ``torchvision.models.resnet18(num_classes=10)``, built by hand and measured
  torchvision  ``awp.sources.load_source("torchvision:resnet18", num_classes=10)``
  py           ``awp.sources.load_source("py:torchvision.models:resnet18", kwargs=...)``

The two sources are given the identity input convention (no normalization, no resize), so the
three run the same arithmetic and their curves must be equal bit for bit (checked): what is
timed is what naming the model adds per point (the wrapper's call and the logits check), with
no copy of the model or of the data per point. Every variant runs ``landscape.surface.
compute_surface`` (channels_last weights on the CPU). The variants run interleaved
(``benchmarks/interleave.py``), the median of ``--rounds`` timed rounds counts.

Target: torchvision / direct <= 1.05 and py / direct <= 1.05.

    python benchmarks/foreign_models.py                        # 11 points x 500 images, clean
    python benchmarks/foreign_models.py --attack-steps 10      # PGD-10 regenerated per point
    python benchmarks/foreign_models.py --images 8 --points 3 --rounds 1   # a quick check
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torchvision

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from interleave import interleaved_times, medians  # noqa: E402

from awp.augment import to_float  # noqa: E402
from awp.config import AttackConfig  # noqa: E402
from awp.data import DataConfig, fixed_subset, load_data  # noqa: E402
from awp.sources import InputConvention, load_source  # noqa: E402
from landscape.directions import random_direction  # noqa: E402
from landscape.grid import make_grid  # noqa: E402
from landscape.surface import EvalSet, compute_surface  # noqa: E402

TARGET = 1.05


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=500, help="test images per point")
    ap.add_argument("--points", type=int, default=11, help="coordinates in [-1, 1]")
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds (after one warm-up)")
    ap.add_argument("--batch-size", type=int, default=250)
    ap.add_argument("--attack-steps", type=int, default=0, help="PGD steps per point (0: clean)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    data = load_data(DataConfig(dataset="sample", val_size=0), device, progress=False)
    idx = fixed_subset(len(data.test), args.images, seed=0).to(device)
    evalset = EvalSet("test", to_float(data.test.x[idx]), data.test.y[idx])
    grid = make_grid("1d", np.linspace(-1.0, 1.0, args.points))
    attack = (
        AttackConfig(steps=args.attack_steps, eps=8 / 255, step_size=2 / 255)
        if args.attack_steps
        else None
    )

    torch.manual_seed(0)  # load_source draws its initialization from seed 0 the same way
    direct = torchvision.models.resnet18(num_classes=10).to(device).eval()
    same = InputConvention()  # no normalization: the three run the same arithmetic
    models = {
        "direct": direct,
        "torchvision": load_source(
            "torchvision:resnet18", num_classes=10, input=same, device=device
        ).model,
        "py": load_source(
            "py:torchvision.models:resnet18",
            kwargs={"num_classes": 10},
            input=same,
            device=device,
        ).model,
    }
    directions = {k: random_direction(m, seed=1) for k, m in models.items()}
    curves: dict[str, np.ndarray] = {}

    def run(name: str):
        def fn() -> None:
            out = compute_surface(
                models[name],
                [directions[name]],
                grid,
                [evalset],
                attack=attack,
                batch_size=args.batch_size,
            )
            curves[name] = out.values["test_adv_loss" if attack else "test_loss"]

        return fn

    sync = torch.cuda.synchronize if device.type == "cuda" else None
    times = interleaved_times({k: run(k) for k in models}, args.rounds, sync=sync)
    med = medians(times)
    what = f"PGD-{args.attack_steps} regenerated" if attack else "clean loss"
    print(
        f"1-D landscape of a ResNet-18, {args.points} points x {args.images} images, {what}, "
        f"{torch.get_num_threads()} thread(s) on {device}; median of {args.rounds} round(s)"
    )
    for k in models:
        print(f"  {k:<12} {med[k]:8.3f} s")
    equal = all(np.array_equal(curves[k], curves["direct"]) for k in models)
    print(f"  curves equal bit for bit: {equal}")
    ok = equal
    for k in ("torchvision", "py"):
        ratio = med[k] / med["direct"]
        met = ratio <= TARGET
        ok &= met
        print(f"  {k} / direct = {ratio:.3f}  (target <= {TARGET}: {'met' if met else 'NOT met'})")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
