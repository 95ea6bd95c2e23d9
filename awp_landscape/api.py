"""The Python API: one call per measure, on a model and data you already hold.

Every function takes any ``nn.Module`` (a torchvision, timm or Hugging Face model, one of ours,
one of your own) and data as ``(x, y)`` tensors, a ``DataLoader`` or a ``Dataset`` of (x, y)
items, with keyword-only sizes; the attack is an argument (an
:class:`~awp.config.AttackConfig`, or None for the clean loss, which measures models on inputs
of any shape: tabular, sequences). Images are (N, C, H, W) in [0, 1] (or uint8), and the model
normalizes them itself (:class:`awp.sources.InputWrapper` adds a mean/std to one that does not),
so attacks and radii stay in pixel space. The loss is cross-entropy unless a callable
``(outputs, targets) -> scalar`` is given. A result comes back; nothing is written to disk.

    import torchvision
    from awp_landscape import api

    model = api.wrapped(torchvision.models.resnet18(num_classes=10), mean=..., std=...)
    curve = api.landscape(model, (x, y), x_range="-1:1:11")       # attacks regenerated
    rows = api.flatness(model, (x, y), alphas=(0.05, 0.1), samples=4)

Each call is the same computation the command of that name makes (``awp landscape``,
``awp flatness``...): the command adds files, resume and torchrun around it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from awp.config import PGD10_EVAL, PGD20_EVAL, AttackConfig

if TYPE_CHECKING:
    import torch
    from torch import nn

    from analysis.adaptive_sharpness import SharpnessResult
    from analysis.gap import GapRecord
    from analysis.weights import WeightReport
    from awp.data import DataBundle
    from awp_landscape.inputs import Loaded
    from landscape.surface import SurfaceValues

Loss = Callable[["torch.Tensor", "torch.Tensor"], "torch.Tensor"]

__all__ = [
    "certify",
    "connectivity",
    "curvature",
    "flatness",
    "landscape",
    "quantization",
    "robust_gap",
    "sharpness",
    "spectra",
    "weight_statistics",
    "wrapped",
]


# ----------------------------------------------------------------------------- inputs
def wrapped(
    model: nn.Module,
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    size: int | None = None,
) -> nn.Module:
    """``model`` taking [0, 1] inputs: normalized by ``mean``/``std`` (and resized and
    centre-cropped to ``size``, ImageNet-style) inside; the weights are the model's own, not
    copied (perturbing the wrapper's parameters perturbs ``model``)."""
    from awp.sources import InputConvention, InputWrapper

    convention = InputConvention(
        mean=tuple(mean) if mean is not None else None,
        std=tuple(std) if std is not None else None,
        size=size,
    )
    return InputWrapper(model, convention)


def _bundle(data: Any, test: Any = None, *, device: Any) -> DataBundle:
    """A DataBundle whose train and test splits are ``data`` (and ``test``)."""
    import torch

    from awp.data import DataBundle, Split
    from awp.data_sources import tensors_of

    x, y = tensors_of(data, device=device)
    tx, ty = tensors_of(test, device=device) if test is not None else (x, y)
    labels = torch.cat([y.reshape(-1), ty.reshape(-1)])
    classes = int(labels.max()) + 1 if not labels.is_floating_point() and len(labels) else 0
    empty = Split(x[:0], y[:0])
    return DataBundle(Split(x, y), empty, Split(tx, ty), tuple(map(str, range(classes))), (),
                      (), "data")  # fmt: skip


def _loaded(model: nn.Module, data: Any, test: Any = None, *, name: str = "model") -> Loaded:
    """A model and its data as the measures take them (nothing loaded from disk)."""
    from awp.data import DataConfig
    from awp.sources import state_sha256
    from awp_landscape.inputs import Loaded, SourceSpec

    device = next(model.parameters()).device
    bundle = _bundle(data, test, device=device)
    spec = SourceSpec(name=name, kind="python", num_classes=bundle.num_classes or None,
                      mean=None, std=None, input_size=None)  # fmt: skip
    return Loaded(
        path=Path(name),
        model=model,
        spec=spec,
        ckpt=None,
        data_cfg=DataConfig(dataset=name, val_size=0),
        data=bundle,
        sha256=state_sha256(model),
        weights={},
    )


def _row(loaded: Loaded, label: str) -> dict[str, Any]:
    return {"checkpoint": label, "sha256": loaded.sha256, "label": label}


def _bn_images(bn_data: Any, device: torch.device) -> torch.Tensor | None:
    """``bn_data`` (images, or anything :func:`awp.data_sources.tensors_of` takes, whose
    labels are not used) as float images in [0, 1] on ``device``; None stays None."""
    import torch

    from awp.augment import as_float
    from awp.data_sources import tensors_of

    if bn_data is None:
        return None
    x = bn_data if isinstance(bn_data, torch.Tensor) else tensors_of(bn_data, device=device)[0]
    return as_float(x.to(device))


# ----------------------------------------------------------------------------- measures
def landscape(
    model: nn.Module,
    data: Any,
    *,
    kind: str = "1d",
    x_range: str = "-1:1:11",
    y_range: str = "",
    attack: AttackConfig | None = PGD10_EVAL,
    loss: Loss | None = None,
    bn: str = "eval",
    bn_data: Any = None,
    batch_size: int = 256,
    direction_seed: int = 0,
    attack_seed: int = 0,
    dir_norm: str = "filter",
    include: str = "weights",
    fixed: bool = False,
) -> SurfaceValues:
    """The weight loss landscape theta0 + sum c_i d_i along filter-normalized random
    directions, the attack regenerated on every perturbed model (``awp landscape``).

    Args:
        model: at theta0 (restored bit for bit afterwards).
        data: the evaluation examples (their metrics are named ``test_*``).
        kind: ``1d`` (one direction), ``2d`` (two) or ``multi``.
        x_range, y_range: ``start:stop:points`` of each axis (y for 2d; default -1:1:11).
        attack: regenerated at every point (None: the clean loss only).
        loss: the loss measured (default cross-entropy).
        bn: ``eval`` (theta0's BatchNorm statistics) or ``recompute`` (re-estimated on
            ``bn_data`` at every point).
        bn_data: training images (a tensor, uint8 or in [0, 1]), or (x, y), a DataLoader or
            a Dataset, for ``bn="recompute"``.
        batch_size, direction_seed, attack_seed, dir_norm, include, fixed: as the command's.

    Returns:
        :class:`landscape.surface.SurfaceValues`: the grid (``.grid.x``), ``.values`` (metric
        -> array over the grid: ``test_loss``, ``test_acc``, ``test_adv_loss``...).
    """
    from awp.data_sources import tensors_of
    from landscape.config import SurfaceConfig
    from landscape.surface import EvalSet, compute_surface, make_directions

    device = next(model.parameters()).device
    x, y = tensors_of(data, device=device)
    cfg = SurfaceConfig(kind=kind, x=x_range, y=y_range, seed=direction_seed,
                        attack_seed=attack_seed, attack=attack, dir_norm=dir_norm,
                        dir_include=include, fixed=fixed, bn=bn)  # fmt: skip
    directions, _, _ = make_directions(model, cfg)
    bn_x = _bn_images(bn_data, device)
    if bn == "recompute" and bn_x is None:
        raise ValueError("bn='recompute' re-estimates BatchNorm statistics on bn_data: pass it")
    return compute_surface(
        model, directions, cfg.grid(), [EvalSet("test", x, y)], attack=attack,
        attack_seed=attack_seed, fixed=fixed, bn=bn, bn_x=bn_x, batch_size=batch_size,
        loss=loss,
    )  # fmt: skip


def flatness(
    model: nn.Module,
    data: Any,
    *,
    alphas: Sequence[float] = (0.1,),
    samples: int = 4,
    attack: AttackConfig | None = PGD20_EVAL,
    worst_gammas: Sequence[float] = (),
    worst_steps: int = 5,
    loss: Loss | None = None,
    bn_data: Any = None,
    noise: str = "layer",
    params: str = "weights",
    batch_size: int = 256,
    seed: int = 0,
    label: str = "model",
) -> list[dict[str, Any]]:
    """Expected flatness E_u[rho(w+u)] - rho(w) at each alpha, the attack regenerated on every
    w+u, and the worst case over ||v_l|| <= gamma ||w_l|| for each of ``worst_gammas``
    (``awp flatness``).

    Args:
        data: the examples rho is measured on (all of them).
        alphas: noise scales (relative to each layer's norm with ``noise="layer"``).
        samples: noise draws per alpha.
        attack: regenerated at every w+u (None: the clean loss and 0-1 error).
        worst_gammas, worst_steps: the worst case's radii and ascent steps (none by default).
        loss: the loss measured (default cross-entropy).
        bn_data: training images re-estimating BatchNorm statistics at every point (a tensor,
            uint8 or in [0, 1], or (x, y), a DataLoader or a Dataset; None: w's statistics,
            eval mode).

    Returns:
        One row per alpha (``kind`` expected: ``flatness``, its interval, ``flatness_loss``,
        the PAC-Bayes terms...) and per gamma (``kind`` worst).
    """
    from analysis.config import FlatnessConfig, WorstCaseConfig
    from awp_landscape.measures.flatness import FlatnessRequest, flatness_for_checkpoint

    loaded = _loaded(model, data)
    cfg = FlatnessConfig(alphas=tuple(alphas), samples=samples, n_examples=0, attack=attack,
                         noise=noise, params=params, batch_size=batch_size, seed=seed)  # fmt: skip
    worst = (WorstCaseConfig(gammas=tuple(worst_gammas), ascent_steps=worst_steps)
             if worst_gammas else None)  # fmt: skip
    bn_x = _bn_images(bn_data, loaded.data.train.x.device)
    result = flatness_for_checkpoint(
        loaded, FlatnessRequest(flatness=cfg, worst=worst), folder=None, label=label, loss=loss,
        bn_x=bn_x,
    )  # fmt: skip
    return result["rows"]


def robust_gap(
    model: nn.Module,
    train: Any,
    test: Any,
    *,
    attack: AttackConfig | None = PGD20_EVAL,
    batch_size: int = 256,
    seed: int = 0,
) -> GapRecord:
    """Robust (and natural) accuracy and loss on ``train`` and on ``test``, and their gaps
    (``awp gap``)."""
    from analysis.gap import robust_gap as gap
    from awp.data_sources import tensors_of

    device = next(model.parameters()).device
    xtr, ytr = tensors_of(train, device=device)
    xte, yte = tensors_of(test, device=device)
    return gap(model, xtr, ytr, xte, yte, attack=attack, batch_size=batch_size, seed=seed)


def curvature(
    model: nn.Module,
    data: Any,
    *,
    top_k: int = 1,
    trace: bool = False,
    density: bool = False,
    attack: AttackConfig | None = PGD20_EVAL,
    loss: Loss | None = None,
    params: str = "weights",
    batch_size: int = 128,
    label: str = "model",
    **sizes: Any,
) -> dict[str, Any]:
    """The Hessian of the mean loss over ``data`` at w: top-k eigenvalues (Lanczos), the trace
    (Hutchinson, with an interval) and the eigenvalue density (SLQ) (``awp curvature``).
    x_adv is crafted at w by ``attack`` and held fixed (None: the clean loss).

    ``sizes`` are further :class:`analysis.config.HessianConfig` fields (``eig_tol``,
    ``probes_max``, ``slq_runs``...; ``dtype``, default the model's float32 or float64, casts
    the model).

    Returns:
        ``row`` (the table row: ``top_eigenvalue``, ``trace``...), ``eigenvalues``,
        ``density`` and per-layer ``layers``.
    """
    import torch

    from analysis.config import HessianConfig
    from awp_landscape.measures.curvature import curvature_of_checkpoint

    loaded = _loaded(model, data)
    # the model's own precision: the measure casts the model to cfg.dtype
    dtype = "float64" if next(model.parameters()).dtype == torch.float64 else "float32"
    sizes.setdefault("dtype", dtype)
    cfg = HessianConfig(top_k=top_k, trace=trace, density=density, n_examples=0, params=params,
                        batch_size=batch_size, loss="adv" if attack is not None else "clean",
                        **({"attack": attack} if attack is not None else {}), **sizes)  # fmt: skip
    return curvature_of_checkpoint(loaded, cfg, folder=None, label=label, loss=loss)


def sharpness(
    model: nn.Module,
    data: Any,
    *,
    attack: AttackConfig | None = PGD10_EVAL,
    loss: Loss | None = None,
    **settings: Any,
) -> SharpnessResult:
    """Adaptive sharpness (Andriushchenko et al., ICML 2023), worst and average case, on the
    robust and the clean loss (``awp sharpness``); ``settings`` are
    :class:`analysis.config.AdaptiveSharpnessConfig` fields (``rho_worst``, ``m``, ``p``...).
    """
    from analysis.adaptive_sharpness import adaptive_sharpness
    from analysis.config import AdaptiveSharpnessConfig
    from awp.data_sources import tensors_of

    device = next(model.parameters()).device
    x, y = tensors_of(data, device=device)
    settings.setdefault("n_examples", len(y) - len(y) % settings.get("m", 128))
    cfg = AdaptiveSharpnessConfig(attack=attack, **settings)
    return adaptive_sharpness(model, x, y, cfg, loss=loss)


def weight_statistics(
    models: Mapping[str, nn.Module],
    *,
    layers: Sequence[str] = ("weights",),
    bins: int = 80,
    clip_quantile: float | None = None,
) -> WeightReport:
    """Per-layer weight statistics of each model (norm, std, mean |w|, skewness, excess
    kurtosis), histograms, and the KS statistic and Wasserstein distance between the models,
    layer by layer (``awp hist``)."""
    from analysis.weights import model_layers, weight_report

    weights = {label: model_layers(m, ["all"]) for label, m in models.items()}
    return weight_report(weights, layers=layers, bins=bins, clip_quantile=clip_quantile)


def spectra(model: nn.Module, **settings: Any) -> list[dict[str, Any]]:
    """Per conv and linear layer: singular values, the exact conv operator norm (FFT), the
    stable rank and a power-law fit of the eigenvalue density (``awp spectra``);
    ``settings`` are :class:`analysis.config.SpectraConfig` fields."""
    from analysis.config import SpectraConfig
    from analysis.weight_spectra import model_spectra
    from awp_landscape.inputs import rows_of

    records, _ = model_spectra(model, SpectraConfig(**settings))
    return rows_of(records)


def certify(
    model: nn.Module,
    data: Any,
    *,
    sigmas: Sequence[float] = (0.25,),
    n0: int = 100,
    n: int = 1000,
    alpha: float = 0.001,
    label: str = "model",
    **settings: Any,
) -> dict[str, list[dict[str, Any]]]:
    """Randomized smoothing as Cohen, Rosenfeld, Kolter (2019) publish it: CERTIFY's certified
    L2 radius of every example, and the base classifier's accuracy under Gaussian noise
    (``awp certify``); ``settings`` are further :class:`analysis.config.CertifyConfig`
    fields.

    Returns:
        ``summary`` (per sigma), ``examples`` (per example and sigma), ``noise_accuracy``.
    """
    from analysis.config import CertifyConfig
    from awp_landscape.measures.certify import certify_checkpoint

    loaded = _loaded(model, data)
    cfg = CertifyConfig(sigmas=tuple(sigmas), n0=n0, n=n, alpha=alpha, n_test=0, **settings)
    return certify_checkpoint(loaded, cfg, folder=None, label=label)


def quantization(
    model: nn.Module,
    data: Any,
    *,
    bits: Sequence[int] = (8, 6, 4),
    attack: AttackConfig = PGD20_EVAL,
    batch_size: int = 256,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Natural and robust accuracy with every conv and linear weight quantized symmetrically
    per output channel to each bit width, the attack regenerated on each quantized model
    (``awp quantize``); the float weights' row has ``bits`` 32."""
    from analysis.config import QuantizeConfig
    from analysis.quantize import quantized_accuracy
    from awp.data_sources import tensors_of

    x, y = tensors_of(data, device=next(model.parameters()).device)
    cfg = QuantizeConfig(bits=tuple(bits), n_test=0, attack=attack, batch_size=batch_size,
                         seed=seed)  # fmt: skip
    return quantized_accuracy(model, x, y, cfg)


def connectivity(
    model_a: nn.Module,
    model_b: nn.Module,
    train: Any,
    test: Any,
    *,
    points: int = 5,
    curve: bool = True,
    epochs: int = 2,
    attack: AttackConfig = PGD20_EVAL,
    **settings: Any,
) -> dict[str, Any]:
    """Mode connectivity of two models of one architecture: the straight line and (``curve``)
    a quadratic Bezier curve whose middle point is trained on ``train``, BatchNorm
    re-estimated and the attack regenerated at every point, evaluated on ``test``; the
    barriers (``awp connect``). ``settings`` are further :class:`analysis.config.ConnectConfig`
    fields.

    Returns:
        ``paths`` (t -> metrics along line and curve) and ``barriers``.
    """
    import copy

    from analysis.config import ConnectConfig
    from analysis.connect import PATHS, barriers, point_metrics, train_curve
    from awp.data_sources import tensors_of
    from landscape.surface import EvalSet

    carrier = copy.deepcopy(model_a)  # moved along the paths; the two models stay as they are
    device = next(model_a.parameters()).device
    xtr, ytr = tensors_of(train, device=device)
    xte, yte = tensors_of(test, device=device)
    cfg = ConnectConfig(points=points, curve=curve, epochs=epochs, attack=attack, **settings)
    ends = tuple({n: p.detach().clone() for n, p in m.named_parameters()}
                 for m in (model_a, model_b))  # fmt: skip
    theta = None
    if curve:
        theta = train_curve(carrier, *ends, xtr[: cfg.n_fit or None], ytr[: cfg.n_fit or None],
                            cfg).theta  # fmt: skip
    evalsets = [EvalSet("test", xte, yte)]
    bn_x = xtr[: cfg.n_bn]
    paths = {}
    for path in (p for p in PATHS if p == "line" or theta is not None):
        paths[path] = [
            point_metrics(carrier, (ends[0], theta, ends[1]), path, t, evalsets, bn_x=bn_x,
                          attack=cfg.attack, seed=cfg.seed, batch_size=cfg.eval_batch_size)
            for t in cfg.ts
        ]  # fmt: skip
    return {
        "paths": paths,
        "barriers": [dataclasses.asdict(r) for p, rows in paths.items() for r in barriers(p, rows)],
    }
