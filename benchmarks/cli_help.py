"""How fast ``awp --help`` and every ``awp CMD --help`` answer, against importing torch.

Each is a fresh process (the best of ``--rounds``), timed by wall clock from this script; the
reference in the same run is ``python -c "import torch"``, which every command that computes
pays once and ``--help`` should not. Prints a table and each one's ratio to the reference.

    python benchmarks/cli_help.py --rounds 3
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from awp_landscape.cli import command_names  # noqa: E402


def best_of(argv: list[str], rounds: int) -> float:
    """The fastest of ``rounds`` runs of ``argv`` in a fresh process, in seconds."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        subprocess.run(argv, check=True, capture_output=True, env=env)
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3, help="runs of each, the fastest kept")
    args = p.parse_args()
    awp = [sys.executable, "-m", "awp_landscape"]
    torch_s = best_of([sys.executable, "-c", "import torch"], args.rounds)
    rows = [("awp --help", best_of([*awp, "--help"], args.rounds))]
    rows += [
        (f"awp {c} --help", best_of([*awp, c, "--help"], args.rounds)) for c in command_names()
    ]
    print(f"reference: python -c 'import torch' {torch_s:.2f} s (best of {args.rounds})")
    print(f"{'command':28s} {'seconds':>8s} {'/ import torch':>15s}")
    for name, s in rows:
        print(f"{name:28s} {s:8.2f} {s / torch_s:15.2f}")
    slowest = max(rows, key=lambda r: r[1])
    print(f"slowest: {slowest[0]} {slowest[1]:.2f} s = {slowest[1] / torch_s:.2f}x import torch")


if __name__ == "__main__":
    main()
