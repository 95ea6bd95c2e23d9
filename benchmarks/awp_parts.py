"""Benchmark: what our AWP part of the training step costs, piece by piece.

On one batch of adversarial examples (PGD-10 at the initial weights), interleaved, median over
rounds after one warm-up, each against one plain forward and backward pass of the training
objective with every parameter's gradient (the pass the AWP ascent cannot avoid):

  fwd+bwd               at_objective forward, backward, all parameter gradients
  ascent                awp.perturb.weight_ascent, one step (AWP's v, BatchNorm frozen)
  ascent gradient       its forward/backward alone (awp.perturb.objective_gradient, the
                        perturbed weights' gradients only)
  weight norms          ||w_l|| of every perturbed tensor (one read of the weights)
  scale                 v_l = g_l * gamma ||w_l|| / ||g_l|| (one read of g, one write of v)
  zeros (removed)       the zero v the ascent used to allocate before its first step, which
                        one step from 0 overwrites unread: no longer done
  norm ratio            the logged ||v|| / ||w|| (awp.step._norm_ratio: float64 sums, squared
                        in place on one float64 copy)
  norm ratio (before)   the same bits as it was computed before (t.double().pow(2): a second
                        float64 tensor per weight)
  perturbed             adding v and subtracting it again (awp.perturb.perturbed), with the
                        copy of w it keeps for an exact restore after an exception
  SAM, ASAM ascent      awp.weight_methods.sam_ascent over every parameter
  RWP ascent step       awp.weight_methods.rwp_ascent, one step (its 10 steps cost ten)

    python benchmarks/awp_parts.py               # PreActResNet-18 full width, batch 32
    python benchmarks/awp_parts.py --width 0.25  # the demo's width
    python benchmarks/awp_parts.py --rounds 1 --width 0.125 --batch-size 4   # a quick check
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
from awp.objectives import at_losses, at_objective
from awp.perturb import objective_gradient, perturbed, select_params, weight_ascent
from awp.step import _norm_ratio
from awp.weight_methods import rwp_ascent, sam_ascent


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
    tensors = list(params.values())
    grads = objective_gradient(objective, tensors)
    w_norms = [p.detach().norm() for p in tensors]
    all_params = select_params(model, "all")

    def scale() -> None:
        for g, wn in zip(grads, w_norms):
            g * (0.01 * wn / (g.norm() + 1e-20))

    def ratio_before() -> float:
        v_sq = sum(float(t.double().pow(2).sum()) for t in v.values())
        w_sq = sum(float(params[n].detach().double().pow(2).sum()) for n in v)
        return (v_sq / w_sq) ** 0.5

    def perturb() -> None:
        with perturbed(params, v, restore="subtract"):
            pass

    def losses() -> torch.Tensor:
        return at_losses(model, x, x_adv, y)[0]

    fns = {
        "fwd+bwd": fwd_bwd,
        "ascent": ascent,
        "ascent gradient": lambda: objective_gradient(objective, tensors),
        "weight norms": lambda: [p.detach().norm() for p in tensors],
        "scale": scale,
        "zeros (removed)": lambda: [torch.zeros_like(p) for p in tensors],
        "norm ratio": lambda: _norm_ratio(v, params),
        "norm ratio (before)": ratio_before,
        "perturbed": perturb,
        "SAM ascent": lambda: sam_ascent(objective, all_params, rho=0.05, model=model),
        "ASAM ascent": lambda: sam_ascent(objective, all_params, rho=0.5, eta=0.01, model=model),
        "RWP ascent step": lambda: rwp_ascent(
            losses, params, gamma=0.01, c_min=1.7, steps=1, model=model
        ),
    }
    times = interleaved_times(fns, args.rounds)
    med = medians(times)
    print(
        f"PreActResNet-18 width {args.width}, batch {bs}, threads {torch.get_num_threads()}, "
        f"{args.rounds} rounds + 1 warm-up"
    )
    for k, t in med.items():
        ratio = t / med["fwd+bwd"]
        print(f"  {k:20s} {t:8.4f} s   (min {min(times[k]):.4f})   / fwd+bwd {ratio:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
