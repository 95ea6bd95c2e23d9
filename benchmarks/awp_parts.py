"""Benchmark: what our AWP part of the training step costs, piece by piece.

On one batch of adversarial examples (PGD-10 at the initial weights), interleaved, median over
rounds after one warm-up, each against one plain forward and backward pass of the training
objective with every parameter's gradient (the pass the AWP ascent cannot avoid):

  fwd+bwd               at_objective forward, backward, all parameter gradients
  ascent                awp.perturb.weight_ascent, one step (AWP's v, BatchNorm frozen)
  norm ratio            the logged ||v|| / ||w|| (awp.step._norm_ratio)
  perturbed             adding v and subtracting it again (awp.perturb.perturbed)

    python benchmarks/awp_parts.py               # PreActResNet-18 full width, batch 32
    python benchmarks/awp_parts.py --width 0.25  # the demo's width
"""

from __future__ import annotations

import argparse
import sys

import torch
from interleave import interleaved_times, medians

from awp.attacks import run_attack
from awp.augment import augment
from awp.config import PGD10_TRAIN
from awp.data import DataConfig, load_data
from awp.models import ModelSpec, build_model
from awp.objectives import at_objective
from awp.perturb import perturbed, select_params, weight_ascent
from awp.step import _norm_ratio


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = load_data(DataConfig(dataset="sample", val_size=0), torch.device("cpu"), progress=False)
    bs = args.batch_size
    x = augment(data.train.x[:bs], generator=torch.Generator().manual_seed(0))
    y = data.train.y[:bs]
    spec = ModelSpec(name="preactresnet18", width=args.width, mean=data.mean, std=data.std)
    torch.manual_seed(0)
    model = build_model(spec).train()
    params = select_params(model)
    x_adv = run_attack(model, x, y, PGD10_TRAIN, generator=torch.Generator().manual_seed(1))

    def objective() -> torch.Tensor:
        return at_objective(model, x, x_adv, y)[0]

    def fwd_bwd() -> None:
        model.zero_grad(set_to_none=True)
        objective().backward()

    def ascent():
        return weight_ascent(objective, params, gamma=0.01, model=model)

    v = ascent()

    def perturb() -> None:
        with perturbed(params, v, restore="subtract"):
            pass

    fns = {
        "fwd+bwd": fwd_bwd,
        "ascent": ascent,
        "norm ratio": lambda: _norm_ratio(v, params),
        "perturbed": perturb,
    }
    times = interleaved_times(fns, args.rounds)
    med = medians(times)
    print(
        f"PreActResNet-18 width {args.width}, batch {bs}, threads {torch.get_num_threads()}, "
        f"{args.rounds} rounds + 1 warm-up"
    )
    for k, t in med.items():
        ratio = t / med["fwd+bwd"]
        print(f"  {k:12s} {t:8.4f} s   (min {min(times[k]):.4f})   / fwd+bwd {ratio:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
