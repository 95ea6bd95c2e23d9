"""Curvature maps: the largest and smallest Hessian eigenvalues at every point of a surface.

At each grid point theta = theta0 + sum c_i d_i the Hessian of the mean cross-entropy over a
fixed subset of one evaluation set (the clean loss, or the loss at x_adv crafted on the model
at that point by the surface's attack and then held fixed: the same operator as ``awp hessian
--loss adv``, whose curvature leaves out how x_adv moves with w) is reduced to two numbers:
lambda_max, by Lanczos checked after every product (:func:`awp.hessian.top_eigenpairs`), and
lambda_min, the same on -H. |lambda_min / lambda_max| is loss-landscape's local measure of
non-convexity: near 0 where the surface is convex, large near saddles.

The values go into the surface file as ``max_eig`` and ``min_eig``, the names loss-landscape's
``plot_hessian_eigen.py`` writes (and its ``plot_2D.plot_2d_eig_ratio`` reads), NaN where not
computed yet; the settings are stored in the ``hessian_eigs`` attribute, and a resume with other
settings is refused. Filling the missing points is :func:`landscape.run.fill_eigen_map`
(sharded across ranks, written after every round, as every surface).

Reference: Li, Xu, Taylor, Studer, Goldstein, "Visualizing the Loss Landscape of Neural Nets",
NeurIPS 2018, Sec. 7 (and tomgoldstein/loss-landscape, plot_hessian_eigen.py).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from awp.config import AttackConfig
from awp.hessian import LossHessian, loss_batches, top_eigenpairs
from awp.perturb import select_params
from landscape.config import EigenMapConfig as EigenMapConfig  # its home before, re-exported

EIG_NAMES = ("max_eig", "min_eig")  # loss-landscape's dataset names
EIG_ATTR = "hessian_eigs"  # the surface file's attribute holding the settings


def extreme_eigenvalues(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    attack: AttackConfig | None,
    params: str = "weights",
    tol: float = 1e-3,
    batch_size: int = 128,
    seed: int = 0,
) -> dict[str, float]:
    """lambda_max and lambda_min of the Hessian of the mean loss at the model's current weights.

    Args:
        model: the network at the point (modes, weights and grads are left as they were).
        x: (N, C, H, W) images in [0, 1]; y: (N,) labels.
        attack: crafts x_adv at these weights, held fixed (None: the clean loss).
        params: the Hessian's coordinates (:func:`awp.perturb.select_params`).
        tol: relative accuracy of each eigenvalue.
        batch_size: examples per batch of the attack and of every product.
        seed: seed of the attacks' random starts and of the Lanczos start vectors.

    Returns:
        {"max_eig": lambda_max, "min_eig": lambda_min} (NaN for one that did not converge).
    """
    data = loss_batches(model, x, y, attack=attack, batch_size=batch_size, seed=seed)
    op = LossHessian(model, data, select_params(model, params))
    out = {}
    for name, which in zip(EIG_NAMES, ("LA", "SA")):
        pairs = top_eigenpairs(op, 1, tol=tol, seed=seed, which=which)
        out[name] = float(pairs.values[0]) if pairs.converged else float("nan")
    return out


def eig_ratio(max_eig: np.ndarray, min_eig: np.ndarray) -> np.ndarray:
    """|lambda_min / lambda_max| per point (NaN where either is missing or lambda_max is 0)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.abs(np.asarray(min_eig, dtype=np.float64) / np.asarray(max_eig, dtype=np.float64))
    r[~np.isfinite(r)] = np.nan
    return r
