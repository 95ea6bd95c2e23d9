"""Benchmark: our AT and AT-AWP steps against the official code's way of doing them.

In one process, interleaved (the order rotates every round), median over rounds:
  (a) our AT step             PGD-10 with input-only gradients, one training forward/backward
  (b) our AT-AWP step         (a) plus the direct AWP gradient (one extra forward/backward)
  (c) reference AT-AWP step   as the official code: PGD whose every step calls loss.backward()
                              (parameter gradients computed too), AWP through a proxy model
                              (load_state_dict of the whole model, an SGD step on the negated
                              loss, per-layer rescaled difference), and the extra clean forward
                              pass the official loop makes for logging
  (d) reference AT step       (c) without AWP
Targets: (b)/(c) <= 0.80 and (b)/(a) <= 1.15.

    python benchmarks/train_step.py                  # PreActResNet-18 full width, batch 32 (CPU)
    python benchmarks/train_step.py --device cuda    # batch 128 on a GPU
"""

from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F
from interleave import interleaved_times, medians

from awp.augment import augment
from awp.config import PGD10_TRAIN, AWPConfig
from awp.data import DataConfig, load_data
from awp.distributed import pick_device
from awp.models import ModelSpec, build_model
from awp.objectives import at_objective
from awp.perturb import select_params
from awp.train import train_step

EPS, ALPHA, STEPS, GAMMA = 8 / 255, 2 / 255, 10, 0.01


# ----------------------------------------------------------------- the official code's way
def reference_attack_pgd(model, x, y):
    """Rice et al. / official AWP attack_pgd: loss.backward() every step (param grads too)."""
    delta = (torch.rand_like(x) * 2 - 1) * EPS
    delta = (x + delta).clamp(0, 1) - x
    delta.requires_grad = True
    for _ in range(STEPS):
        loss = F.cross_entropy(model(x + delta), y)
        loss.backward()
        grad = delta.grad.detach()
        d = torch.clamp(delta + ALPHA * grad.sign(), -EPS, EPS)
        d = torch.clamp(d, -x, 1 - x)
        delta.data = d
        delta.grad.zero_()
    return (x + delta).clamp(0, 1).detach()


class ReferenceAWP:
    """The official utils_awp.AdvWeightPerturb (proxy model, SGD step, rescaled difference)."""

    def __init__(self, model, proxy, gamma):
        self.model, self.proxy, self.gamma = model, proxy, gamma
        self.proxy_optim = torch.optim.SGD(proxy.parameters(), lr=0.01)

    def calc_awp(self, x_adv, y):
        self.proxy.load_state_dict(self.model.state_dict())
        self.proxy.train()
        loss = -F.cross_entropy(self.proxy(x_adv), y)
        self.proxy_optim.zero_grad()
        loss.backward()
        self.proxy_optim.step()
        diff = {}
        model_sd, proxy_sd = self.model.state_dict(), self.proxy.state_dict()
        for k, w in model_sd.items():
            if len(w.size()) <= 1 or "weight" not in k:
                continue
            d = proxy_sd[k] - w
            diff[k] = w.norm() / (d.norm() + 1e-20) * d
        return diff

    def _add(self, diff, coeff):
        names = dict(self.model.named_parameters())
        with torch.no_grad():
            for k, d in diff.items():
                names[k].add_(coeff * d)

    def perturb(self, diff):
        self._add(diff, 1.0 * self.gamma)

    def restore(self, diff):
        self._add(diff, -1.0 * self.gamma)


def reference_step(model, opt, awp, x, y):
    model.train()
    x_adv = reference_attack_pgd(model, x, y)
    model.train()
    diff = None
    if awp is not None:
        diff = awp.calc_awp(x_adv, y)
        awp.perturb(diff)
    loss = F.cross_entropy(model(x_adv), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    if diff is not None:
        awp.restore(diff)
    output = model(x)  # the official loop's clean forward, for its logged train accuracy
    F.cross_entropy(output, y)


# ----------------------------------------------------------------- harness
def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=None, help="default 32 on CPU, 128 on GPU")
    p.add_argument("--width", type=float, default=1.0, help="PreActResNet-18 width (1 = full)")
    p.add_argument("--rounds", type=int, default=5, help="timed rounds (after one warm-up round)")
    args = p.parse_args(argv)

    device = pick_device(args.device)
    bs = args.batch_size or (128 if device.type == "cuda" else 32)
    data = load_data(DataConfig(dataset="sample", val_size=0), device, progress=False)
    g = torch.Generator().manual_seed(0)
    x = augment(data.train.x[:bs], generator=g)
    y = data.train.y[:bs]
    spec = ModelSpec(name="preactresnet18", width=args.width, mean=data.mean, std=data.std)

    def fresh():
        torch.manual_seed(0)
        m = build_model(spec).to(device)
        return m, torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

    models = {k: fresh() for k in "abcd"}
    proxy = build_model(spec).to(device)
    ref_awp = ReferenceAWP(models["c"][0], proxy, GAMMA)
    params_a, params_b = select_params(models["a"][0]), select_params(models["b"][0])
    gen = torch.Generator().manual_seed(1)
    steps = {
        "a": lambda: train_step(
            *models["a"],
            x,
            y,
            attack=PGD10_TRAIN,
            objective=at_objective,
            params=params_a,
            generator=gen,
        ),
        "b": lambda: train_step(
            *models["b"],
            x,
            y,
            attack=PGD10_TRAIN,
            objective=at_objective,
            awp=AWPConfig(gamma=GAMMA),
            params=params_b,
            generator=gen,
        ),
        "c": lambda: reference_step(*models["c"], ref_awp, x, y),
        "d": lambda: reference_step(*models["d"], None, x, y),
    }
    labels = {
        "a": "ours AT",
        "b": "ours AT-AWP",
        "c": "reference AT-AWP (official way)",
        "d": "reference AT (official way)",
    }
    print(
        f"PreActResNet-18 width {args.width}, batch {bs}, PGD-{STEPS}, device {device}, "
        f"threads {torch.get_num_threads()}, {args.rounds} rounds + 1 warm-up",
        flush=True,
    )
    times = interleaved_times(steps, args.rounds, sync=lambda: sync(device))
    med = medians(times)
    for k in steps:
        print(f"  ({k}) {labels[k]:34s} {med[k]:8.3f} s/step   (min {min(times[k]):.3f})")
    print(
        f"  AWP adds per step: ours {med['b'] - med['a']:.3f} s, the official way "
        f"{med['c'] - med['d']:.3f} s (medians; by the fastest rounds "
        f"{min(times['b']) - min(times['a']):.3f} s and {min(times['c']) - min(times['d']):.3f} s)"
    )
    ratios = {
        "(b)/(c)": (med["b"] / med["c"], 0.80),
        "(b)/(a)": (med["b"] / med["a"], 1.15),
        "(a)/(d)": (med["a"] / med["d"], None),
    }
    ok = True
    for name, (value, target) in ratios.items():
        met = "met" if target is not None and value <= target else "MISSED"
        verdict = "" if target is None else f"  target <= {target:.2f}: {met}"
        ok &= target is None or value <= target
        print(f"  {name} = {value:.3f}{verdict}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
