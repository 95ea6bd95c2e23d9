"""Sigma search: the largest noise scale whose expected robust accuracy drop is at most a target.

Reference: Jiang, Neyshabur, Mobahi, Krishnan, Bengio, "Fantastic Generalization Measures and
Where to Find Them", ICLR 2020 (sigma found by bisection to reach a target deviation).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from awp.config import check_bounds, opt


@dataclass(frozen=True)
class SigmaSearchConfig:
    """Sigma search: the largest alpha whose expected robust accuracy drop is <= target."""

    target: float = opt(
        0.1, "largest tolerated drop of robust accuracy (absolute, in [0, 1])", bounds=(0, 1)
    )
    alpha_low: float = opt(
        0.0, "lower end of the bracket (its drop must be <= target)", bounds=(0, None)
    )
    alpha_high: float = opt(
        1.0, "upper end of the bracket (its drop should exceed target)", bounds=(0, None)
    )
    depth: int = opt(
        10,
        "bisection steps at most",
        flag="search_depth",
        bounds=(1, 100),
        why="every step is a flatness measurement",
    )
    tolerance: float = opt(0.01, "stop when |drop - target| <= tolerance", bounds=(0, 1))

    def __post_init__(self) -> None:
        check_bounds(self)
        if not 0 < self.target < 1:
            raise ValueError(f"target={self.target} must be in (0, 1), e.g. 0.1")
        if not 0 <= self.alpha_low < self.alpha_high:
            raise ValueError(
                f"need 0 <= alpha_low < alpha_high, got {self.alpha_low}, {self.alpha_high}"
            )
        if self.depth < 1 or self.tolerance < 0:
            raise ValueError(
                f"need depth >= 1 and tolerance >= 0, got {self.depth}, {self.tolerance}"
            )


@dataclass(frozen=True)
class SigmaSearchResult:
    """The largest alpha found whose drop is at most the target (within tolerance).

    ``converged`` is False when the tolerance was not met within the depth, or when the
    upper end's drop was already <= target (then ``alpha`` is that end: raise alpha_high).
    ``history`` lists every (alpha, drop) evaluated, in order.
    """

    alpha: float
    drop: float
    target: float
    converged: bool
    history: tuple[tuple[float, float], ...]


def bisect_alpha(
    drop: Callable[[float], float],
    *,
    target: float,
    low: float,
    high: float,
    depth: int,
    tolerance: float,
) -> SigmaSearchResult:
    """Bisection for the largest alpha with drop(alpha) <= target, drop assumed increasing.

    Args:
        drop: alpha -> expected drop of robust accuracy (= expected flatness of the error).
        target: largest tolerated drop; low, high: the bracket (drop(low) <= target is assumed for
            low = 0, where the drop is exactly 0, and checked otherwise).
        depth: bisection steps at most; tolerance: stop once |drop - target| <= tolerance.

    Returns:
        :class:`SigmaSearchResult`.

    Reference: Jiang et al., ICLR 2020, Appendix (sharpness/PAC-Bayes measures: sigma found by
    bisection to reach a target deviation).
    """
    history: list[tuple[float, float]] = []

    def f(a: float) -> float:
        d = float(drop(a))
        history.append((a, d))
        return d

    d_low = f(low) if low > 0 else 0.0
    if d_low > target:
        raise ValueError(
            f"the drop at alpha_low={low} is already {d_low:.4f} > target {target}; lower alpha_low"
        )
    d_high = f(high)
    if d_high <= target:
        return SigmaSearchResult(high, d_high, target, False, tuple(history))
    lo, hi, d_lo = low, high, d_low
    for _ in range(depth):
        mid = 0.5 * (lo + hi)
        d = f(mid)
        if abs(d - target) <= tolerance:
            return SigmaSearchResult(mid, d, target, True, tuple(history))
        if d <= target:
            lo, d_lo = mid, d
        else:
            hi = mid
    return SigmaSearchResult(lo, d_lo, target, False, tuple(history))
