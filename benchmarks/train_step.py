"""Benchmark: our AT step with each weight perturbation (AWP, SAM, ASAM, RWP), against the
official code's way of doing AT and AT-AWP.

In one process, interleaved (the order rotates every round), median over rounds:
  (a) our AT step             PGD-10 with input-only gradients, one training forward/backward
  (b) our AT-AWP step         (a) plus the direct AWP gradient (one extra forward/backward)
  (c) reference AT-AWP step   as the official code: PGD whose every step calls loss.backward()
                              (parameter gradients computed too), AWP through a proxy model
                              (load_state_dict of the whole model, an SGD step on the negated
                              loss, per-layer rescaled difference), and the extra clean forward
                              pass the official loop makes for logging
  (d) reference AT step       (c) without AWP
  (e) our AT-SAM step         (a) plus SAM's gradient at w (one extra forward/backward)
  (f) our AT-ASAM step        (e) with ASAM's elementwise scaling
  (g) our AT-RWP step         (a) plus RWP's --rwp-steps ascent steps (each a forward/backward)
Targets: (b)/(c) <= 0.80, (b)/(a) <= 1.15, what AWP adds to ours at most what it adds to the
official way, and what SAM and ASAM add to (a), and RWP per ascent step, each within 10% of
what AWP adds. What a step adds is the median over rounds of its time minus the AT step's of
the same round (``interleave.paired_medians``).

    python benchmarks/train_step.py                  # PreActResNet-18 full width, batch 32 (CPU)
    python benchmarks/train_step.py --device cuda    # batch 128 on a GPU
    python benchmarks/train_step.py --rounds 1 --width 0.125 --batch-size 4   # a quick check
"""

from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F
from interleave import interleaved_times, medians, paired_medians

from awp.augment import augment
from awp.config import PGD10_TRAIN, AWPConfig
from awp.data import DataConfig, load_data
from awp.distributed import pick_device
from awp.method_config import ASAMConfig, RWPConfig, SAMConfig
from awp.models import ModelSpec, build_model
from awp.objectives import at_losses, at_objective
from awp.perturb import select_params
from awp.train import train_step
from awp.weight_methods import WEIGHT_METHODS

EPS, ALPHA, STEPS, GAMMA = 8 / 255, 2 / 255, 10, 0.01
OURS = {  # our steps: label, weight perturbation (None: plain AT)
    "a": ("ours AT", None),
    "b": ("ours AT-AWP", AWPConfig(gamma=GAMMA)),
    "e": ("ours AT-SAM", SAMConfig()),
    "f": ("ours AT-ASAM", ASAMConfig()),
    "g": ("ours AT-RWP", None),  # RWPConfig with --rwp-steps, set in main
}


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
    p.add_argument("--rwp-steps", type=int, default=10, help="RWP's ascent steps (its default)")
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

    ours = dict(OURS, g=("ours AT-RWP", RWPConfig(gamma=GAMMA, steps=args.rwp_steps)))
    models = {k: fresh() for k in (*ours, "c", "d")}
    proxy = build_model(spec).to(device)
    ref_awp = ReferenceAWP(models["c"][0], proxy, GAMMA)
    gen = torch.Generator().manual_seed(1)

    def our_step(key):
        model, opt = models[key]
        perturbation = ours[key][1]
        name = perturbation.name if perturbation is not None else None
        params = select_params(model, WEIGHT_METHODS[name].param_set if name else "weights")
        return lambda: train_step(
            model,
            opt,
            x,
            y,
            attack=PGD10_TRAIN,
            objective=at_objective,
            perturbation=perturbation,
            params=params,
            generator=gen,
            losses=at_losses if name == "rwp" else None,
        )

    steps = {k: our_step(k) for k in ours}
    steps["c"] = lambda: reference_step(*models["c"], ref_awp, x, y)
    steps["d"] = lambda: reference_step(*models["d"], None, x, y)
    labels = {k: label for k, (label, _) in ours.items()}
    labels.update(c="reference AT-AWP (official way)", d="reference AT (official way)")
    print(
        f"PreActResNet-18 width {args.width}, batch {bs}, PGD-{STEPS}, device {device}, "
        f"threads {torch.get_num_threads()}, {args.rounds} rounds + 1 warm-up",
        flush=True,
    )
    times = interleaved_times(steps, args.rounds, sync=lambda: sync(device))
    med = medians(times)
    for k in sorted(steps):
        print(f"  ({k}) {labels[k]:34s} {med[k]:8.3f} s/step   (min {min(times[k]):.3f})")
    over_a, over_d = paired_medians(times, "a"), paired_medians(times, "d")
    print(
        f"  AWP adds per step: ours {over_a['b']:.3f} s, the official way {over_d['c']:.3f} s "
        f"(medians over rounds of the step minus the AT step of the same round; differences of "
        f"the medians {med['b'] - med['a']:.3f} s and {med['c'] - med['d']:.3f} s)"
    )
    awp_adds = over_a["b"]
    adds = {
        "SAM adds": over_a["e"],
        "ASAM adds": over_a["f"],
        f"RWP adds per ascent step ({args.rwp_steps} steps)": over_a["g"] / args.rwp_steps,
    }
    ok = True
    for name, value in adds.items():
        ratio = value / awp_adds if awp_adds > 0 else float("inf")
        met = "met" if ratio <= 1.10 else "MISSED"
        ok &= ratio <= 1.10
        print(f"  {name:34s} {value:8.3f} s = {ratio:.3f} x AWP's  target <= 1.10: {met}")
    ratios = {
        "(b)/(c)": (med["b"] / med["c"], 0.80),
        "(b)/(a)": (med["b"] / med["a"], 1.15),
        "(a)/(d)": (med["a"] / med["d"], None),
        "AWP adds, ours/official": (awp_adds / over_d["c"], 1.0),
    }
    for name, (value, target) in ratios.items():
        met = "met" if target is not None and value <= target else "MISSED"
        verdict = "" if target is None else f"  target <= {target:.2f}: {met}"
        ok &= target is None or value <= target
        print(f"  {name} = {value:.3f}{verdict}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
