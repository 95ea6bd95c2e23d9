"""Randomized smoothing: PREDICT and CERTIFY of Cohen et al., and accuracy under Gaussian noise.

The smoothed classifier g(x) = argmax_c P(f(x + e) = c), e ~ N(0, sigma^2 I), is robust in L2
around x with radius sigma * Phi^-1(pA) when its top class has probability pA > 1/2. CERTIFY
picks the class from n0 samples, estimates pA from n fresh samples with a one-sided
Clopper-Pearson bound and certifies radius sigma * Phi^-1(pA_lower), or abstains when
pA_lower < 1/2. PREDICT returns the top class when a binomial test of the top two counts
rejects a tie at level alpha, else abstains.

**Noise.** Every example's noise is a pure function of its seed and of the sample index: the
samples are cut into chunks of :data:`NOISE_CHUNK`, and chunk c is drawn by a CPU
``torch.Generator`` seeded with ``derive_seed(seed, c)``, then moved to the model's device. So
sample j is the same whatever the batch size, the device, the rank or what ran before, and the
first m samples of a run with n > m are the m samples of a run with n = m. One thread of this
project's CPU draws about 120,000 CIFAR-10 samples/s (365 M normals/s; ``benchmarks/certify.py``
prints it): 1% of the time of a quarter-width PreActResNet-18's CPU forward passes, 0.1% of a
full-width one's. Chunks are independent, so ``workers`` threads draw them ahead of a fast
device (2 threads: 1.8x here); a GPU would have to classify more than that many images per
second for the draw to hold it back (not measured: no GPU was available). A counter-based
generator made of integer tensor ops would run on the device, but its Box-Muller step (log,
cos) is not bit-identical between CPU and CUDA; the CPU generator's draws are.

Reference: Cohen, Rosenfeld, Kolter, "Certified Adversarial Robustness via Randomized
Smoothing", ICML 2019 (Algorithm PREDICT and CERTIFY; code ``core.py``).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
from scipy.stats import norm
from torch import nn

from analysis.config import NOISE_CHUNK as NOISE_CHUNK
from analysis.stats import binomial_pvalue, clopper_pearson_lower, t_interval
from awp.modes import model_mode
from awp.seeds import derive_seed

#: The class of an abstention.
ABSTAIN = -1


def noise_chunk(
    seed: int, c: int, shape: Sequence[int], dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Standard normal samples c*NOISE_CHUNK ... (c+1)*NOISE_CHUNK - 1 of a seed, on the CPU.

    Returns:
        (NOISE_CHUNK, *shape) tensor drawn by a CPU generator seeded with ``derive_seed(seed, c)``.
    """
    g = torch.Generator().manual_seed(derive_seed(seed, c))
    return torch.randn((NOISE_CHUNK, *shape), generator=g, dtype=dtype)


def _in_order(make: Callable[[int], torch.Tensor], count: int, workers: int) -> Iterator:
    """make(0), ..., make(count - 1) in order, drawn ahead by ``workers`` threads (0: inline)."""
    if workers <= 0:
        for c in range(count):
            yield make(c)
        return
    with ThreadPoolExecutor(workers) as pool:  # torch releases the GIL while drawing
        ahead: deque = deque()
        nxt = 0
        while nxt < count or ahead:
            while nxt < count and len(ahead) < 2 * workers:
                ahead.append(pool.submit(make, nxt))
                nxt += 1
            yield ahead.popleft().result()


def noise_batches(
    shape: Sequence[int],
    num: int,
    *,
    seed: int,
    batch_size: int,
    dtype: torch.dtype = torch.float32,
    workers: int = 0,
) -> Iterator[torch.Tensor]:
    """Samples 0 ... num-1 of a seed's standard normal noise, in batches (CPU tensors).

    Args:
        shape: the shape of one example, e.g. (3, 32, 32).
        num: number of samples; seed: the example's noise seed.
        batch_size: samples per yielded batch (the last may be smaller); it does not change
            the samples.
        dtype: float dtype of the noise.
        workers: threads drawing chunks ahead (0: drawn when needed).

    Yields:
        (b, *shape) tensors whose concatenation is samples 0 ... num-1.
    """
    if num < 0 or batch_size < 1:
        raise ValueError(f"need num >= 0 and batch_size >= 1, got {num}, {batch_size}")
    chunks = _in_order(
        lambda c: noise_chunk(seed, c, shape, dtype), math.ceil(num / NOISE_CHUNK), workers
    )
    parts: list[torch.Tensor] = []
    have = made = 0
    for c, chunk in enumerate(chunks):
        chunk = chunk[: num - c * NOISE_CHUNK]  # the last chunk is cut at num
        parts.append(chunk)
        have += len(chunk)
        while have >= min(batch_size, num - made) and made < num:
            b = min(batch_size, num - made)
            joined = parts[0] if len(parts) == 1 else torch.cat(parts)
            yield joined[:b]
            rest = joined[b:]
            parts = [rest] if len(rest) else []
            have -= b
            made += b


@torch.no_grad()
def sample_counts(
    model: nn.Module,
    x: torch.Tensor,
    *,
    sigma: float,
    num: int,
    seed: int,
    batch_size: int = 1000,
    workers: int = 0,
) -> torch.Tensor:
    """How often the base classifier predicts each class on x + sigma * z_j, j < num.

    Args:
        model: the base classifier f on images in [0, 1] (run in eval mode, restored after).
        x: one example, (C, H, W) (any shape the model takes with a batch dimension), float,
            on the model's device.
        sigma: noise standard deviation in the pixel units of x ([0, 1] scale).
        num: number of noise samples; seed: the example's noise seed (:func:`noise_batches`).
        batch_size: forward-pass size (does not change the counts); workers: noise threads.

    Returns:
        (K,) int64 CPU tensor of class counts summing to ``num``.

    Reference: Cohen et al. 2019, ``Smooth._sample_noise`` (counts of f's predictions).
    """
    counts: torch.Tensor | None = None
    with model_mode(model, "eval"):
        batches = noise_batches(
            x.shape, num, seed=seed, batch_size=batch_size, dtype=x.dtype, workers=workers
        )
        for z in batches:
            inputs = z.to(x.device).mul_(sigma).add_(x)  # (b, *x.shape): x + sigma z
            logits = model(inputs)  # (b, K)
            c = torch.bincount(logits.argmax(1), minlength=logits.shape[1])
            counts = c if counts is None else counts + c  # stays on the device: no sync
    if counts is None:
        raise ValueError("num must be >= 1")
    return counts.cpu()


@dataclass(frozen=True)
class Certificate:
    """CERTIFY's answer for one example.

    Attributes:
        prediction: the certified class, or :data:`ABSTAIN` (-1).
        radius: certified L2 radius in pixel units (0.0 when abstaining).
        p_lower: one-sided (1 - alpha) Clopper-Pearson lower bound of pA.
        selected: the class picked from the n0 selection samples (cA).
        count: n_A, the estimation samples classified as ``selected``.
    """

    prediction: int
    radius: float
    p_lower: float
    selected: int
    count: int

    @property
    def abstained(self) -> bool:
        return self.prediction == ABSTAIN


def certify_from_counts(
    counts0: Sequence[int], counts: Sequence[int], *, sigma: float, alpha: float
) -> Certificate:
    """CERTIFY's decision from the selection counts (n0) and estimation counts (n).

    cA = argmax counts0 (the lowest class on a tie, as numpy's argmax); pA_lower = the
    one-sided Clopper-Pearson bound of counts[cA] of n; abstain when pA_lower < 1/2, else
    radius sigma * Phi^-1(pA_lower).
    """
    counts0, counts = [int(c) for c in counts0], [int(c) for c in counts]
    c_a = max(range(len(counts0)), key=lambda c: (counts0[c], -c))
    n_a = counts[c_a]
    p = clopper_pearson_lower(n_a, sum(counts), alpha)
    if p < 0.5:
        return Certificate(ABSTAIN, 0.0, p, c_a, n_a)
    return Certificate(c_a, float(sigma * norm.ppf(p)), p, c_a, n_a)


def predict_from_counts(counts: Sequence[int], *, alpha: float) -> int:
    """PREDICT's decision: the top class if a two-sided binomial test of the top two counts
    rejects a tie at level alpha, else :data:`ABSTAIN` (a tie always abstains)."""
    counts = [int(c) for c in counts]
    if len(counts) < 2:
        raise ValueError("PREDICT needs at least two classes")
    order = sorted(range(len(counts)), key=lambda c: (-counts[c], c))
    n_a, n_b = counts[order[0]], counts[order[1]]
    return order[0] if binomial_pvalue(n_a, n_a + n_b, 0.5) <= alpha else ABSTAIN


def certify(
    model: nn.Module,
    x: torch.Tensor,
    *,
    sigma: float,
    n0: int = 100,
    n: int = 100_000,
    alpha: float = 0.001,
    seed: int = 0,
    batch_size: int = 1000,
    workers: int = 0,
) -> tuple[Certificate, torch.Tensor, torch.Tensor]:
    """CERTIFY one example: select with n0 samples, estimate pA with n fresh ones.

    Args:
        model, x, sigma, batch_size, workers: as :func:`sample_counts`.
        n0: selection samples; n: estimation samples; alpha: the certificate fails with
            probability at most alpha.
        seed: the example's seed; selection and estimation noise are drawn from
            ``derive_seed(seed, "select")`` and ``derive_seed(seed, "estimate")``.

    Returns:
        (:class:`Certificate`, counts0 (K,), counts (K,)).

    Reference: Cohen et al. 2019, Algorithm CERTIFY.
    """
    common = dict(sigma=sigma, batch_size=batch_size, workers=workers)
    counts0 = sample_counts(model, x, num=n0, seed=derive_seed(seed, "select"), **common)
    counts = sample_counts(model, x, num=n, seed=derive_seed(seed, "estimate"), **common)
    cert = certify_from_counts(counts0.tolist(), counts.tolist(), sigma=sigma, alpha=alpha)
    return cert, counts0, counts


def predict(
    model: nn.Module,
    x: torch.Tensor,
    *,
    sigma: float,
    n: int = 100_000,
    alpha: float = 0.001,
    seed: int = 0,
    batch_size: int = 1000,
    workers: int = 0,
) -> tuple[int, torch.Tensor]:
    """PREDICT one example with n samples drawn from ``derive_seed(seed, "predict")``.

    Returns:
        (the class or :data:`ABSTAIN`, counts (K,)); a wrong answer has probability <= alpha.

    Reference: Cohen et al. 2019, Algorithm PREDICT.
    """
    counts = sample_counts(
        model,
        x,
        sigma=sigma,
        num=n,
        seed=derive_seed(seed, "predict"),
        batch_size=batch_size,
        workers=workers,
    )
    return predict_from_counts(counts.tolist(), alpha=alpha), counts


@torch.no_grad()
def noise_correct(
    model: nn.Module,
    x: torch.Tensor,
    y: int,
    *,
    levels: Sequence[float],
    draws: int,
    seed: int,
    batch_size: int = 1000,
) -> list[int]:
    """How many of ``draws`` noisy copies x + s z_k the base classifier gets right, per level s.

    The same z_k (samples of :func:`noise_batches` for ``seed``) serve every level, so the
    curve over s is smooth for one example (common random numbers).

    Args:
        model: base classifier (eval mode during the passes, restored after).
        x: one example (C, H, W) float in [0, 1] on the model's device; y: its label.
        levels: noise standard deviations s >= 0 (pixel units); draws: copies per level.
        seed: the example's noise seed; batch_size: forward-pass size.

    Returns:
        Correct counts, one per level (each in 0 ... draws).
    """
    z = torch.cat(list(noise_batches(x.shape, draws, seed=seed, batch_size=draws, dtype=x.dtype)))
    z = z.to(x.device)
    inputs = torch.cat([x + s * z for s in levels])  # (levels * draws, *x.shape)
    right = []
    with model_mode(model, "eval"):
        for start in range(0, len(inputs), batch_size):
            right.append(model(inputs[start : start + batch_size]).argmax(1) == y)
    per_level = torch.cat(right).view(len(levels), draws).sum(1)
    return [int(c) for c in per_level.tolist()]


@dataclass(frozen=True)
class NoiseAccuracy:
    """The base classifier's accuracy under x + N(0, s^2 I) at one level s."""

    level: float
    accuracy: float
    low: float  # t interval over examples (of each one's fraction right), clipped to [0, 1]
    high: float
    n: int  # examples
    draws: int


def noise_accuracy_rows(
    correct: Sequence[Sequence[int]],
    levels: Sequence[float],
    *,
    draws: int,
    confidence: float = 0.95,
) -> list[NoiseAccuracy]:
    """Per level, the mean over examples of correct/draws with a t interval over examples.

    Args:
        correct: per example, its :func:`noise_correct` counts (one per level).
        levels: the levels of those counts; draws: copies per level.
        confidence: of the interval (the examples are the i.i.d. units; draws of one example
            are not independent of each other's example, so they are not counted as trials).
    """
    rows = []
    for j, s in enumerate(levels):
        fractions = [c[j] / draws for c in correct]
        low, high = t_interval(fractions, confidence)
        low, high = max(low, 0.0), min(high, 1.0)  # an accuracy: NaN (one example) stays NaN
        mean = sum(fractions) / len(fractions) if fractions else float("nan")
        rows.append(NoiseAccuracy(float(s), mean, low, high, len(fractions), draws))
    return rows


def noise_accuracy(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    levels: Sequence[float],
    draws: int = 10,
    seed: int = 0,
    indices: Sequence[int] | None = None,
    batch_size: int = 1000,
) -> list[NoiseAccuracy]:
    """The Gaussian-noise accuracy curve of a base classifier (the rebuttal's premise).

    Args:
        model: the base classifier; x: (N, C, H, W) float in [0, 1]; y: (N,) labels, on the
            model's device.
        levels: noise standard deviations s (pixel units); draws: noisy copies per example.
        seed: noise seed; example i uses ``derive_seed(seed, "noise", indices[i])``, so a subset
            gets the same noise as in a larger set (default indices: 0 ... N-1).
        batch_size: forward-pass size.

    Returns:
        One :class:`NoiseAccuracy` per level.
    """
    indices = range(len(y)) if indices is None else indices
    correct = [
        noise_correct(
            model,
            x[i],
            int(y[i]),
            levels=levels,
            draws=draws,
            seed=derive_seed(seed, "noise", int(indices[i])),
            batch_size=batch_size,
        )
        for i in range(len(y))
    ]
    return noise_accuracy_rows(correct, levels, draws=draws)
