"""Per-layer weight statistics, distances between checkpoints, and shared-bin histograms.

Answers the rebuttal's R#1 Q3 (how do AT-AWP weights differ from AT's?): for each chosen layer,
matched by name across checkpoints, the number of weights, L2 norm, mean, standard deviation,
mean |w|, skewness and excess kurtosis, and between two checkpoints the two-sample
Kolmogorov-Smirnov statistic (with its p-value) and the Wasserstein-1 distance. AT-AWP is
expected to have smaller magnitudes and more symmetric distributions in deeper layers.

Everything here is pure: tensors in, frozen dataclasses out (float64 arithmetic).

Reference: Wu, Xia, Wang, NeurIPS 2020, rebuttal R#1 Q3 (last conv layer of PreActResNet-18).
"""

from __future__ import annotations

import fnmatch
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy import stats as sps
from torch import nn

from awp.modes import unwrap
from awp.perturb import is_perturbed_weight

# Selectors understood by :func:`select_layers`, besides parameter names and glob patterns.
LAYER_SELECTORS = (
    "weights",  # conv and linear weights: the AWP rule of awp.perturb.select_params
    "all",  # every parameter (adds biases and BatchNorm affine)
    "conv",
    "linear",
    "norm",
    "bias",
    "first-conv",
    "last-conv",
    "first-linear",
    "last-linear",
)
KINDS = ("conv", "linear", "norm", "bias")


def layer_kind(name: str, tensor: torch.Tensor) -> str:
    """The kind of a parameter from its name and shape.

    ``conv``: weight with >= 3 dims; ``linear``: 2-D weight; ``bias``: a name ending in
    ``bias``; ``norm``: any other 1-D tensor (BatchNorm/LayerNorm scale).
    """
    if name.rsplit(".", 1)[-1] == "bias":
        return "bias"
    if tensor.dim() >= 3:
        return "conv"
    if tensor.dim() == 2:
        return "linear"
    return "norm"


def select_layers(params: Mapping[str, torch.Tensor], selectors: Sequence[str]) -> list[str]:
    """Names of the parameters the selectors pick, in model order.

    Args:
        params: name -> tensor, in model order (``dict(model.named_parameters())``).
        selectors: any of :data:`LAYER_SELECTORS`, exact parameter names, or glob patterns
            (``layer4.*.conv2.weight``); the union is returned.

    Raises:
        ValueError: a selector matches nothing (the message lists some valid names).
    """
    if not selectors:
        raise ValueError("no layer selector given; use e.g. 'weights', 'last-conv' or a name")
    names = list(params)
    kinds = {n: layer_kind(n, params[n]) for n in names}
    chosen: set[str] = set()
    for sel in selectors:
        if sel == "weights":
            hit = [n for n in names if is_perturbed_weight(n, params[n])]
        elif sel == "all":
            hit = list(names)
        elif sel in KINDS:
            hit = [n for n in names if kinds[n] == sel]
        elif sel.startswith(("first-", "last-")) and sel in LAYER_SELECTORS:
            where, kind = sel.split("-", 1)
            of_kind = [n for n in names if kinds[n] == kind]
            hit = of_kind[:1] if where == "first" else of_kind[-1:]
        elif sel in params:
            hit = [sel]
        else:
            hit = [n for n in names if fnmatch.fnmatchcase(n, sel)]
        if not hit:
            raise ValueError(
                f"layer selector {sel!r} matches no parameter; use one of "
                f"{', '.join(LAYER_SELECTORS)}, a name such as {names[-1]!r}, or a glob pattern"
            )
        chosen.update(hit)
    return [n for n in names if n in chosen]


def model_layers(
    model: nn.Module, selectors: Sequence[str] = ("weights",)
) -> dict[str, torch.Tensor]:
    """The chosen parameters of ``model`` as detached tensors, by name, in model order."""
    params = dict(unwrap(model).named_parameters())
    return {n: params[n].detach() for n in select_layers(params, selectors)}


def _flat64(w: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(w, torch.Tensor):
        w = w.detach().to("cpu", torch.float64).numpy()
    return np.asarray(w, dtype=np.float64).ravel()


@dataclass(frozen=True)
class WeightStats:
    """Statistics of one layer's weights in one checkpoint.

    ``std`` is the population standard deviation (ddof=0); ``skewness`` and
    ``excess_kurtosis`` are the moment estimators m3/m2^1.5 and m4/m2^2 - 3 (scipy's
    ``skew`` and ``kurtosis`` with ``bias=True``), NaN when all weights are equal.
    """

    label: str
    layer: str
    kind: str
    depth: int
    n: int
    norm: float
    mean: float
    std: float
    mean_abs: float
    skewness: float
    excess_kurtosis: float


def weight_stats(
    w: torch.Tensor | np.ndarray,
    *,
    label: str = "",
    layer: str = "",
    kind: str = "",
    depth: int = 0,
) -> WeightStats:
    """Size, L2 norm, mean, std, mean |w|, skewness and excess kurtosis of a weight tensor.

    Args:
        w: weights, any shape (flattened), any dtype (computed in float64).
        label: the checkpoint's label (e.g. ``AT-AWP``); layer, kind, depth: where it sits.

    Returns:
        :class:`WeightStats`.
    """
    a = _flat64(w)
    if a.size == 0:
        raise ValueError(f"layer {layer!r} has no weights")
    mean = float(a.mean())
    c = a - mean
    m2 = float(np.mean(c**2))
    if m2 > 0:
        skew = float(np.mean(c**3)) / m2**1.5
        kurt = float(np.mean(c**4)) / m2**2 - 3.0
    else:
        skew = kurt = float("nan")
    return WeightStats(
        label=label,
        layer=layer,
        kind=kind,
        depth=depth,
        n=int(a.size),
        norm=float(np.sqrt(np.sum(a**2))),
        mean=mean,
        std=float(np.sqrt(m2)),
        mean_abs=float(np.mean(np.abs(a))),
        skewness=skew,
        excess_kurtosis=kurt,
    )


@dataclass(frozen=True)
class WeightComparison:
    """How the weight distributions of one layer differ between two checkpoints.

    ``ks_statistic`` is sup_t |F_a(t) - F_b(t)| of the empirical CDFs, ``ks_pvalue`` the
    two-sided two-sample KS p-value (exact for small layers, asymptotic for large ones),
    ``wasserstein`` the Wasserstein-1 distance (integral of |F_a - F_b|, weight units), and
    ``norm_ratio`` / ``mean_abs_ratio`` are b's value over a's.
    """

    layer: str
    label_a: str
    label_b: str
    ks_statistic: float
    ks_pvalue: float
    wasserstein: float
    norm_ratio: float
    mean_abs_ratio: float


def compare_weights(
    a: torch.Tensor | np.ndarray,
    b: torch.Tensor | np.ndarray,
    *,
    layer: str = "",
    label_a: str = "a",
    label_b: str = "b",
) -> WeightComparison:
    """KS statistic and p-value, Wasserstein-1 distance and magnitude ratios of two layers.

    Args:
        a, b: the two weight tensors (any shapes and sizes; flattened, float64).

    Returns:
        :class:`WeightComparison` (b relative to a).

    Reference: scipy.stats.ks_2samp and scipy.stats.wasserstein_distance.
    """
    x, y = _flat64(a), _flat64(b)
    if x.size == 0 or y.size == 0:
        raise ValueError(f"layer {layer!r}: cannot compare an empty weight tensor")
    ks = sps.ks_2samp(x, y)
    na, nb = float(np.sqrt(np.sum(x**2))), float(np.sqrt(np.sum(y**2)))
    ma, mb = float(np.mean(np.abs(x))), float(np.mean(np.abs(y)))
    return WeightComparison(
        layer=layer,
        label_a=label_a,
        label_b=label_b,
        ks_statistic=float(ks.statistic),
        ks_pvalue=float(ks.pvalue),
        wasserstein=float(sps.wasserstein_distance(x, y)),
        norm_ratio=nb / na if na > 0 else float("nan"),
        mean_abs_ratio=mb / ma if ma > 0 else float("nan"),
    )


@dataclass(frozen=True)
class Histogram:
    """One layer's weight histogram in one checkpoint, on bins shared with the others.

    ``density`` integrates to the fraction of weights inside ``edges`` (1 without clipping).
    """

    label: str
    layer: str
    edges: tuple[float, ...]  # (bins + 1,)
    density: tuple[float, ...]  # (bins,)
    n: int
    outside: int  # weights beyond the edges (only with clipping)


def shared_histograms(
    tensors: Mapping[str, torch.Tensor | np.ndarray],
    *,
    layer: str = "",
    bins: int = 80,
    clip_quantile: float | None = None,
) -> dict[str, Histogram]:
    """Histograms of the same layer in several checkpoints, on common symmetric bins.

    The bins span [-m, m] with m the largest |w| over all checkpoints (or the
    ``clip_quantile`` quantile of |w|), so the panels compare magnitudes and symmetry directly.

    Args:
        tensors: label -> weights of this layer.
        bins: number of bins (>= 1).
        clip_quantile: in (0, 1]; None keeps every weight inside the range.

    Returns:
        label -> :class:`Histogram`.
    """
    if bins < 1:
        raise ValueError(f"bins={bins} must be >= 1")
    if clip_quantile is not None and not 0 < clip_quantile <= 1:
        raise ValueError(f"clip_quantile={clip_quantile} must be in (0, 1]")
    flat = {k: _flat64(v) for k, v in tensors.items()}
    allabs = np.concatenate([np.abs(v) for v in flat.values()])
    m = float(allabs.max()) if clip_quantile is None else float(np.quantile(allabs, clip_quantile))
    m = m if m > 0 else 1.0
    edges = np.linspace(-m, m, bins + 1)
    out = {}
    for label, a in flat.items():
        counts, _ = np.histogram(a, bins=edges)
        density = counts / (a.size * np.diff(edges))
        out[label] = Histogram(
            label=label,
            layer=layer,
            edges=tuple(float(e) for e in edges),
            density=tuple(float(d) for d in density),
            n=int(a.size),
            outside=int(a.size - counts.sum()),
        )
    return out


@dataclass(frozen=True)
class WeightReport:
    """Statistics per (checkpoint, layer), comparisons per (layer, pair), histograms."""

    layers: tuple[str, ...]
    stats: tuple[WeightStats, ...]
    comparisons: tuple[WeightComparison, ...]
    histograms: tuple[Histogram, ...]


def weight_report(
    weights: Mapping[str, Mapping[str, torch.Tensor]],
    *,
    layers: Sequence[str] = ("weights",),
    bins: int = 80,
    clip_quantile: float | None = None,
) -> WeightReport:
    """Statistics, pairwise comparisons and histograms of the chosen layers of checkpoints.

    Args:
        weights: label -> (name -> tensor, in model order), e.g. ``{"AT": ..., "AT-AWP": ...}``
            from ``dict(model.named_parameters())``. Layers are matched by name; the first
            checkpoint decides the order and the depth index.
        layers: selectors (see :func:`select_layers`), applied to the first checkpoint.
        bins, clip_quantile: see :func:`shared_histograms`.

    Returns:
        :class:`WeightReport`; comparisons cover every pair of checkpoints (first vs later).

    Raises:
        ValueError: a chosen layer is missing from some checkpoint.
    """
    if not weights:
        raise ValueError("no checkpoints given")
    labels = list(weights)
    first = weights[labels[0]]
    names = select_layers(first, layers)
    for label in labels[1:]:
        missing = [n for n in names if n not in weights[label]]
        if missing:
            raise ValueError(
                f"checkpoint {label!r} has no layer(s) {missing[:4]}: layers are matched by "
                f"name, so compare checkpoints of the same architecture or pick layers present "
                f"in both with --layers"
            )
    stats, comparisons, hists = [], [], []
    for depth, name in enumerate(names):
        kind = layer_kind(name, first[name])
        for label in labels:
            stats.append(
                weight_stats(weights[label][name], label=label, layer=name, kind=kind, depth=depth)
            )
        for la, lb in itertools.combinations(labels, 2):
            comparisons.append(
                compare_weights(
                    weights[la][name], weights[lb][name], layer=name, label_a=la, label_b=lb
                )
            )
        per_label = {label: weights[label][name] for label in labels}
        hists.extend(
            shared_histograms(
                per_label, layer=name, bins=bins, clip_quantile=clip_quantile
            ).values()
        )
    return WeightReport(tuple(names), tuple(stats), tuple(comparisons), tuple(hists))
