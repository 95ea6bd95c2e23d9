"""Robustness to post-training weight quantization (the rebuttal's reviewer 3, question 1, which
contrasts AWP with work on weight-perturbed, quantized models).

Every conv and linear weight (AWP's selection, :func:`awp.perturb.select_params`) is quantized
symmetrically per output channel to ``b`` bits: with ``L = 2^(b-1) - 1`` levels on each side and
``s_c = max |w_c| / L`` the channel's step, ``q(w) = s_c * clip(round(w / s_c), -L, L)``. The
quantized model is ``w + (q(w) - w)``, applied and undone exactly through
:func:`awp.perturb.perturbed`; its natural and robust accuracy are measured with the attack
regenerated on the quantized model (not examples crafted at the float weights).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from analysis.config import FLOAT_BITS as FLOAT_BITS
from analysis.config import QuantizeConfig as QuantizeConfig
from awp.evaluate import evaluate_attack
from awp.modes import cpu_channels_last
from awp.perturb import perturbed, select_params


def quantize_per_channel(w: torch.Tensor, bits: int) -> torch.Tensor:
    """``w`` quantized symmetrically to ``bits`` bits with one step per output channel (dim 0);
    an all-zero channel stays zero."""
    if bits < 2:
        raise ValueError(f"bits={bits}: symmetric quantization needs at least 2 bits")
    levels = 2 ** (bits - 1) - 1
    flat = w.detach().reshape(w.shape[0], -1)
    step = flat.abs().amax(dim=1, keepdim=True) / levels
    step = torch.where(step > 0, step, torch.ones_like(step))
    return (torch.round(flat / step).clamp_(-levels, levels) * step).reshape(w.shape)


def quantization_offsets(params: Mapping[str, torch.Tensor], bits: int) -> dict[str, torch.Tensor]:
    """``q(w) - w`` for every parameter: the perturbation that quantizes the model."""
    return {n: quantize_per_channel(p, bits) - p.detach() for n, p in params.items()}


def relative_error(params: Mapping[str, torch.Tensor], v: Mapping[str, torch.Tensor]) -> float:
    """``||q(w) - w|| / ||w||`` over all the quantized weights."""
    num = sum(float(t.double().pow(2).sum()) for t in v.values())
    den = sum(float(params[n].detach().double().pow(2).sum()) for n in v)
    return (num / den) ** 0.5 if den > 0 else 0.0


def quantized_accuracy(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: QuantizeConfig
) -> list[dict[str, Any]]:
    """Natural and robust accuracy of the float model and of each quantized one.

    Returns:
        One row per bit width, the float weights first (``bits`` = 32): bits, natural_acc,
        robust_acc, robust_loss, weight_error (relative L2 error of the quantized weights).
        The model's weights are restored bit for bit.
    """
    params = select_params(model)
    rows = []
    for bits in (FLOAT_BITS, *cfg.bits):
        v = {} if bits == FLOAT_BITS else quantization_offsets(params, bits)
        # channels_last on the CPU: faster, the same numbers to float32 rounding (awp.modes)
        with perturbed(params, v), cpu_channels_last(model):
            nat = evaluate_attack(model, x, y, None, batch_size=cfg.batch_size, seed=cfg.seed)
            rob = evaluate_attack(model, x, y, cfg.attack, batch_size=cfg.batch_size, seed=cfg.seed)
        rows.append(
            {
                "bits": bits,
                "natural_acc": nat.accuracy,
                "robust_acc": rob.accuracy,
                "robust_loss": rob.loss,
                "weight_error": relative_error(params, v) if v else 0.0,
                "n": nat.n,
            }
        )
    return rows
