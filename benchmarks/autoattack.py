"""Benchmark: the original AutoAttack (pyautoattack) against torchattacks' reimplementation.

Both run through ``awp.evaluate.evaluate_robustness`` (natural, then AutoAttack-standard on the
points still right) on the same tiny models: a 10-class conv net (two 8-channel convs) fitted
to 32 random 8x8 images, seeds 0, 1, 2, at two L-inf radii. Printed per case: clean accuracy,
each implementation's robust accuracy and wall time, how many points both call robust, and
the original's sub-attacks (attacked, broken) from its own log.

    python benchmarks/autoattack.py            # about 2 minutes on one CPU thread
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from awp.evaluate import AA_IMPLEMENTATIONS, AutoAttackConfig, evaluate_robustness  # noqa: E402
from tests.helpers import tiny_batch, tiny_model  # noqa: E402


def memorized(n: int, classes: int, seed: int):
    model = tiny_model(seed=seed, num_classes=classes, channels=8)
    x, y = tiny_batch(n=n, seed=seed + 1, classes=classes)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(60):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval(), x, y


def main() -> None:
    torch.set_num_threads(1)
    for seed in range(3):
        model, x, y = memorized(32, 10, seed)
        for eps in (1 / 255, 4 / 255):
            reports, seconds = {}, {}
            for impl in AA_IMPLEMENTATIONS:
                attacks = {"natural": None, "aa": AutoAttackConfig(eps=eps, implementation=impl)}
                t0 = time.perf_counter()
                reports[impl] = evaluate_robustness(model, x, y, attacks, batch_size=len(y))
                seconds[impl] = time.perf_counter() - t0
            orig, ta = reports["original"], reports["torchattacks"]
            same = int((orig.robust == ta.robust).sum())
            subs = [(a.name, a.attacked, a.broken) for a in orig.rows[1].sub_attacks]
            print(
                f"seed {seed} eps {eps * 255:g}/255: clean {orig.rows[0].accuracy:.3f}, "
                f"original {orig.robust_accuracy:.3f} ({seconds['original']:.1f} s), "
                f"torchattacks {ta.robust_accuracy:.3f} ({seconds['torchattacks']:.1f} s), "
                f"same robust points {same}/{len(y)}; original's sub-attacks {subs}",
                flush=True,
            )


if __name__ == "__main__":
    main()
