"""Gaussian weight noise with a scale relative to the weights.

Every random draw of the flatness analyses comes from a CPU generator of
:func:`awp.seeds.generator_for`, seeded from parts that name what it is for
(``(seed, "noise", k)``), so a draw is the same on every rank, device and run.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence

import torch

from analysis.config import NOISE_MODES

Params = Mapping[str, torch.Tensor]


def noise_scales(params: Params, *, alpha: float, mode: str) -> dict[str, torch.Tensor]:
    """Standard deviation of the Gaussian noise for each perturbed tensor, by mode.

    - ``global``: sigma = alpha * ||w|| for every element, ||w|| the norm of all perturbed
      tensors together (the rebuttal's choice; ||u|| is then about alpha*||w||*sqrt(d), so
      useful alphas are small).
    - ``layer``: sigma_l = alpha * ||w_l|| / sqrt(d_l), so ||u_l|| is about alpha * ||w_l||.
    - ``filter``: sigma_lf = alpha * ||w_lf|| / sqrt(d_lf) per output filter (slice along dim 0);
      each element of a 1-D tensor is its own filter, sigma = alpha * |w_i|.
    - ``element``: sigma_i = alpha * |w_i|.

    Args:
        params: name -> tensor (from :func:`awp.perturb.select_params`).
        alpha: relative scale, >= 0.
        mode: one of :data:`NOISE_MODES`.

    Returns:
        name -> sigma, broadcastable to the tensor (0-dim for global/layer, (out, 1, ...) for
        filter, full shape for element), same dtype and device as the tensor.
    """
    if mode not in NOISE_MODES:
        raise ValueError(f"unknown noise mode {mode!r}; choose one of {NOISE_MODES}")
    if alpha < 0:
        raise ValueError(f"alpha={alpha} must be >= 0")
    out: dict[str, torch.Tensor] = {}
    if mode == "global":
        total = torch.sqrt(sum(p.detach().double().pow(2).sum() for p in params.values()))
        for n, p in params.items():
            out[n] = (alpha * total).to(p.dtype).to(p.device)
        return out
    for n, p in params.items():
        w = p.detach()
        if mode == "layer":
            out[n] = alpha * w.norm() / math.sqrt(max(w.numel(), 1))
        elif mode == "element" or w.dim() <= 1:
            out[n] = alpha * w.abs()
        else:  # filter
            d_f = w[0].numel()
            norms = w.flatten(1).norm(dim=1).view(-1, *([1] * (w.dim() - 1)))  # (out, 1, ...)
            out[n] = alpha * norms / math.sqrt(d_f)
    return out


def draw_noise(
    params: Params, scales: Mapping[str, torch.Tensor], *, generator: torch.Generator
) -> dict[str, torch.Tensor]:
    """u = sigma * z, z standard normal drawn on the CPU generator in model order, moved over.

    Drawing on the CPU makes a seed give the same u on every device.
    """
    u = {}
    for n, p in params.items():
        z = torch.randn(p.shape, generator=generator, dtype=p.dtype).to(p.device)
        u[n] = z * scales[n]
    return u


def global_norm(tensors: Iterator[torch.Tensor] | Sequence[torch.Tensor]) -> float:
    return math.sqrt(sum(float(t.detach().double().pow(2).sum()) for t in tensors))
