"""Per-layer weight spectra: singular values, norms, stable rank, the ESD's power law, and the
convolution's operator norm.

For every conv and linear layer (matched by name across checkpoints, like the histograms of
:mod:`analysis.weights`): the singular values of the weight reshaped to (out, in*kh*kw) (the
WeightWatcher convention), its Frobenius and spectral norms, the stable rank
||W||_F^2 / ||W||_2^2, a power-law fit of the eigenvalues of W^T W (the empirical spectral
density, ESD; alpha as WeightWatcher reports it), and for a convolution the exact operator norm
of the layer as a linear map on its input images.

Which operator: :func:`analysis.conv_operator.conv_operator_norm` is exact for the convolution
with *circular* padding on n x n inputs, n the layer's input size in the network (32, 16, 8, 4
in a CIFAR ResNet) or a fixed ``fft_size``; the networks pad with zeros, for which that value
is not exact (it can be above or below; on 4 x 4 inputs by 10% and more). The zero-padded
layer's norm is bracketed instead: ``op_norm_zero_bound`` is a guaranteed upper bound (the
circular norm on a grid large enough that nothing wraps) and ``op_norm_zero_lower`` a lower
bound by power iteration on the conv itself, tight when it has converged. A strided conv is
the circular conv followed by subsampling, handled exactly (n divisible by the stride), and
its zero-padded version is bracketed the same way. A linear layer's operator norm is its
spectral norm.

Everything is float64; records are frozen dataclasses.

Reference: Martin & Mahoney, JMLR 2021 (ESD, alpha, stable rank; WeightWatcher); Sedghi,
Gupta, Long, ICLR 2019 (operator norm by FFT); Clauset, Shalizi, Newman 2009 (the fit).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from analysis.config import SpectraConfig
from analysis.conv_operator import (
    conv_operator_norm,
    zero_padded_norm_lower,
    zero_padding_bound,
    zero_padding_grid,
)
from analysis.powerlaw import fit_power_law
from analysis.weights import layer_kind, select_layers
from awp.modes import model_mode, unwrap

NAN = float("nan")


@dataclass(frozen=True)
class LayerGeometry:
    """How a conv or linear layer acts in the network.

    Attributes:
        kind: "conv" or "linear".
        input_size: (H, W) of the conv's input for the probe image (None for linear layers or a
            conv the forward pass did not reach).
        stride, padding, dilation, groups, padding_mode: the conv's settings (None for linear).
    """

    kind: str
    input_size: tuple[int, int] | None = None
    stride: tuple[int, int] | None = None
    padding: tuple[int, int] | None = None
    dilation: tuple[int, int] | None = None
    groups: int = 1
    padding_mode: str = "zeros"


def _conv_padding(m: nn.Conv2d) -> tuple[int, int] | None:
    if not isinstance(m.padding, str):
        return (int(m.padding[0]), int(m.padding[1]))
    if m.padding == "valid":
        return (0, 0)
    ext = [d * (k - 1) for d, k in zip(m.dilation, m.kernel_size)]
    return None if any(e % 2 for e in ext) else (ext[0] // 2, ext[1] // 2)  # asymmetric "same"


def layer_geometry(model: nn.Module, *, image_size: int = 32) -> dict[str, LayerGeometry]:
    """The geometry of every Conv2d and Linear layer, by weight name, from one probe pass.

    A zero image (1, C, image_size, image_size) goes through the model in eval mode under
    ``no_grad`` (modes and buffers are left as they were); hooks record each conv's input size.

    Returns:
        ``"{module}.weight"`` -> :class:`LayerGeometry`, in model order.
    """
    net = unwrap(model)
    sizes: dict[str, tuple[int, int]] = {}
    hooks, convs = [], [(n, m) for n, m in net.named_modules() if isinstance(m, nn.Conv2d)]
    for name, m in convs:

        def hook(_m, inputs, _out, name=name):
            sizes[name] = (int(inputs[0].shape[-2]), int(inputs[0].shape[-1]))

        hooks.append(m.register_forward_hook(hook))
    try:
        if convs:
            p = next(net.parameters())
            x = torch.zeros(1, convs[0][1].in_channels, image_size, image_size, dtype=p.dtype)
            with model_mode(model, "eval"), torch.no_grad():
                model(x.to(p.device))
    finally:
        for h in hooks:
            h.remove()
    out: dict[str, LayerGeometry] = {}
    for name, m in net.named_modules():
        key = f"{name}.weight" if name else "weight"
        if isinstance(m, nn.Conv2d):
            out[key] = LayerGeometry(
                "conv",
                input_size=sizes.get(name),
                stride=(int(m.stride[0]), int(m.stride[1])),
                padding=_conv_padding(m),
                dilation=(int(m.dilation[0]), int(m.dilation[1])),
                groups=int(m.groups),
                padding_mode=str(m.padding_mode),
            )
        elif isinstance(m, nn.Linear):
            out[key] = LayerGeometry("linear")
    return out


def weight_matrix(w: torch.Tensor | np.ndarray) -> np.ndarray:
    """A weight as a float64 matrix (out, in*kh*kw): row i is output filter i, flattened."""
    a = w.detach().cpu().double().numpy() if isinstance(w, torch.Tensor) else np.asarray(w)
    if a.ndim < 2:
        raise ValueError(f"a weight matrix needs >= 2 dimensions, got shape {a.shape}")
    return a.astype(np.float64).reshape(a.shape[0], -1)


def singular_values(w: torch.Tensor | np.ndarray) -> np.ndarray:
    """Singular values of :func:`weight_matrix` (w), float64, decreasing (min(out, in*k*k))."""
    return np.linalg.svd(weight_matrix(w), compute_uv=False)


@dataclass(frozen=True)
class OperatorNorms:
    """A layer's operator norm as a map on its input images, three ways.

    Attributes:
        fft_size: the input size n (n x n) of the numbers (0 for a linear layer).
        bound_grid: the circular grid N of ``zero_bound`` (0 when not defined).
        circular: exact norm of the conv with circular padding on n x n inputs (FFT).
        zero_lower: power iteration on the zero-padded conv itself: a lower bound of the norm
            the network applies, tight when converged (NaN when skipped).
        zero_bound: the circular norm on N x N, an upper bound of the zero-padded conv's norm.
        A linear layer has its spectral norm in all three.
    """

    fft_size: int
    bound_grid: int
    circular: float
    zero_lower: float
    zero_bound: float


def operator_norms(
    w: torch.Tensor, geometry: LayerGeometry, *, fft_size: int = 0, power_iterations: int = 50
) -> OperatorNorms:
    """The :class:`OperatorNorms` of a conv (NaN where a value is not defined: a size not
    divisible by the stride, a padding mode other than zeros/circular, a conv the probe did not
    reach). Square inputs are assumed in the record (n is the height).

    Args:
        w: (cout, cin/groups, kh, kw); geometry: how the network applies it.
        fft_size: 0 = the layer's input size in the network, else n for an n x n input.
        power_iterations: for ``zero_lower`` (0 = skip).
    """
    geo = geometry
    size = (fft_size, fft_size) if fft_size else geo.input_size
    if size is None or geo.stride is None or geo.dilation is None:
        return OperatorNorms(0, 0, NAN, NAN, NAN)
    conv = dict(stride=geo.stride, dilation=geo.dilation, groups=geo.groups)
    divisible = size[0] % geo.stride[0] == 0 and size[1] % geo.stride[1] == 0
    circ = conv_operator_norm(w, size, **conv) if divisible else NAN
    if geo.padding_mode == "circular":
        return OperatorNorms(size[0], size[0], circ, circ, circ)
    if geo.padding_mode != "zeros" or geo.padding is None:
        return OperatorNorms(size[0], 0, circ, NAN, NAN)
    grid = zero_padding_grid(
        size,
        kernel_size=tuple(w.shape[-2:]),
        stride=geo.stride,
        padding=geo.padding,
        dilation=geo.dilation,
    )
    bound = zero_padding_bound(w, size, padding=geo.padding, **conv)
    lower = (
        zero_padded_norm_lower(w, size, padding=geo.padding, iterations=power_iterations, **conv)
        if power_iterations
        else NAN
    )
    return OperatorNorms(size[0], grid[0], circ, lower, bound)


@dataclass(frozen=True)
class LayerSpectrum:
    """The spectral statistics of one layer in one checkpoint.

    Norms are of the (out, in*kh*kw) matrix W except the operator norms (see
    :class:`OperatorNorms`): ``op_norm_circular`` is exact for the conv with circular padding on
    ``fft_size`` x ``fft_size`` inputs; the network's zero-padded conv has its norm between
    ``op_norm_zero_lower`` (power iteration) and ``op_norm_zero_bound`` (circular on
    ``bound_grid``). A linear layer has its spectral norm in all three. alpha etc. describe the
    power-law fit of the ESD, the eigenvalues sigma_i^2 of W^T W (NaN: no fit).
    """

    label: str
    layer: str
    kind: str
    depth: int
    shape: tuple[int, ...]
    stride: int
    fft_size: int
    bound_grid: int
    frobenius_norm: float
    spectral_norm: float
    stable_rank: float
    op_norm_circular: float
    op_norm_zero_lower: float
    op_norm_zero_bound: float
    n_eigs: int
    alpha: float
    alpha_se: float
    xmin: float
    n_tail: int
    ks_distance: float


def layer_spectrum(
    w: torch.Tensor,
    geometry: LayerGeometry,
    *,
    label: str = "",
    layer: str = "",
    depth: int = 0,
    fft_size: int = 0,
    min_tail: int = 10,
    power_iterations: int = 50,
) -> tuple[LayerSpectrum, np.ndarray]:
    """The spectral statistics of one conv or linear weight.

    Args:
        w: (out, in) or (out, in/groups, kh, kw) weights.
        geometry: how the layer acts (:func:`layer_geometry`).
        label, layer, depth: which checkpoint and layer (for the record).
        fft_size, power_iterations: see :func:`operator_norms`.
        min_tail: fewest eigenvalues in the power-law tail.

    Returns:
        (:class:`LayerSpectrum`, the ESD: eigenvalues of W^T W, increasing, float64).
    """
    sv = singular_values(w)
    eigs = np.sort(sv**2)
    frob2 = float(np.sum(eigs))
    top = float(sv[0]) if sv.size else NAN
    fit = fit_power_law(eigs, min_tail=min_tail)
    if geometry.kind == "conv" and w.dim() == 4:
        ops = operator_norms(w, geometry, fft_size=fft_size, power_iterations=power_iterations)
    else:
        ops = OperatorNorms(0, 0, top, top, top)
    record = LayerSpectrum(
        label=label,
        layer=layer,
        kind=geometry.kind,
        depth=depth,
        shape=tuple(int(s) for s in w.shape),
        stride=geometry.stride[0] if geometry.stride else 1,
        fft_size=ops.fft_size,
        bound_grid=ops.bound_grid,
        frobenius_norm=float(np.sqrt(frob2)),
        spectral_norm=top,
        stable_rank=frob2 / top**2 if top > 0 else NAN,
        op_norm_circular=ops.circular,
        op_norm_zero_lower=ops.zero_lower,
        op_norm_zero_bound=ops.zero_bound,
        n_eigs=int(np.count_nonzero(eigs > 0)),
        alpha=fit.alpha,
        alpha_se=fit.alpha_se,
        xmin=fit.xmin,
        n_tail=fit.n_tail,
        ks_distance=fit.ks_distance,
    )
    return record, eigs


def model_spectra(
    model: nn.Module, cfg: SpectraConfig, *, label: str = ""
) -> tuple[list[LayerSpectrum], dict[str, np.ndarray]]:
    """:func:`layer_spectrum` of every chosen conv and linear layer of a model.

    Args:
        model: the network (left as it was).
        cfg: layers, sizes and the fit's ``min_tail``.
        label: the checkpoint's label, written in every record.

    Returns:
        (records in model order, layer -> ESD eigenvalues).

    Raises:
        ValueError: the selectors pick no conv or linear weight.
    """
    params = dict(unwrap(model).named_parameters())
    geometry = layer_geometry(model, image_size=cfg.image_size)
    names = [n for n in select_layers(params, cfg.layers) if n in geometry]
    if not names:
        raise ValueError(
            f"--layers {' '.join(cfg.layers)} picks no conv or linear weight; spectra need "
            "weight matrices (e.g. --layers weights)"
        )
    records, esds = [], {}
    for depth, name in enumerate(names):
        w = params[name].detach()
        rec, eigs = layer_spectrum(
            w,
            geometry[name],
            label=label,
            layer=name,
            depth=depth,
            fft_size=cfg.fft_size,
            min_tail=cfg.min_tail,
            power_iterations=cfg.power_iterations,
        )
        records.append(rec)
        esds[name] = eigs
    return records, esds


@dataclass(frozen=True)
class SpectraSummary:
    """Layer averages of one checkpoint (WeightWatcher's model-level summaries).

    ``alpha_mean`` is over the layers with a fit (``fitted`` of ``layers``); the log10 norms
    average log10 of each layer's spectral and circular operator norm.
    """

    label: str
    layers: int
    fitted: int
    alpha_mean: float
    stable_rank_mean: float
    log10_spectral_norm_mean: float
    log10_op_norm_mean: float


def _nanmean(values: Sequence[float]) -> float:
    a = np.asarray(values, dtype=np.float64)
    a = a[np.isfinite(a)]
    return float(a.mean()) if a.size else NAN


def summarize(records: Sequence[LayerSpectrum | Mapping[str, Any]]) -> list[SpectraSummary]:
    """One :class:`SpectraSummary` per label, in first-seen order.

    Args:
        records: :class:`LayerSpectrum` records or their dicts (as read from JSON).
    """
    by_label: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        row = dataclasses.asdict(r) if isinstance(r, LayerSpectrum) else dict(r)
        by_label.setdefault(str(row["label"]), []).append(row)
    out = []
    for label, rs in by_label.items():

        def col(name: str, rs: list[dict[str, Any]] = rs) -> np.ndarray:
            return np.array([r[name] for r in rs], dtype=np.float64)

        out.append(
            SpectraSummary(
                label=label,
                layers=len(rs),
                fitted=int(np.isfinite(col("alpha")).sum()),
                alpha_mean=_nanmean(col("alpha")),
                stable_rank_mean=_nanmean(col("stable_rank")),
                log10_spectral_norm_mean=_nanmean(np.log10(col("spectral_norm"))),
                log10_op_norm_mean=_nanmean(np.log10(col("op_norm_circular"))),
            )
        )
    return out


def esd_layer_name(params: Mapping[str, torch.Tensor], selector: str) -> str:
    """The one layer a selector (``last-conv``, a name...) picks for the ESD figure.

    Raises:
        ValueError: the selector picks no layer or several.
    """
    names = select_layers(params, [selector])
    kinds = [layer_kind(n, params[n]) for n in names]
    names = [n for n, k in zip(names, kinds) if k in ("conv", "linear")]
    if len(names) != 1:
        raise ValueError(
            f"--esd-layer {selector!r} must pick one conv or linear weight, it picks "
            f"{len(names)}; use last-conv, first-linear or a parameter name"
        )
    return names[0]
