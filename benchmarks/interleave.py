"""The benchmarks' one timing loop: variants run interleaved, measured against each other in the
same rounds.

Every round runs each variant once, the order rotating by one every round so that no variant
always runs first (or right after the same neighbour); round 0 warms up and is not timed. Run
the scripts as ``python benchmarks/<name>.py``, which puts this folder on the import path.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Hashable, Mapping


def interleaved_times(
    fns: Mapping[Hashable, Callable[[], object]],
    rounds: int,
    *,
    sync: Callable[[], None] | None = None,
) -> dict[Hashable, list[float]]:
    """Seconds of each of ``fns`` in each of ``rounds`` timed rounds (after one warm-up).

    ``sync`` is called before the clock starts and before it stops (a CUDA synchronize, so that
    queued kernels are counted where they belong).
    """
    times: dict[Hashable, list[float]] = {k: [] for k in fns}
    order = list(fns)
    for r in range(rounds + 1):
        for k in order:
            if sync is not None:
                sync()
            t0 = time.perf_counter()
            fns[k]()
            if sync is not None:
                sync()
            if r > 0:
                times[k].append(time.perf_counter() - t0)
        order = order[1:] + order[:1]
    return times


def medians(times: Mapping[Hashable, list[float]]) -> dict[Hashable, float]:
    """The median of each variant's timed rounds."""
    return {k: statistics.median(v) for k, v in times.items()}


def paired_medians(times: Mapping[Hashable, list[float]], base: Hashable) -> dict[Hashable, float]:
    """What each variant adds to ``base``: the median over rounds of its time minus ``base``'s
    in the same round. Rounds that are slow for every variant (another process, a clock change)
    cancel in the difference, which a difference of two medians does not do."""
    ref = times[base]
    return {k: statistics.median(a - b for a, b in zip(v, ref)) for k, v in times.items()}
