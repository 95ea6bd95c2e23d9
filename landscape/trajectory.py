"""The training trajectory in weight space: PCA of checkpoints relative to the last one.

Checkpoints theta_0 ... theta_T in training order give x_t = theta_t - theta_T over the chosen
tensors (conv and linear weights by default, the random directions' rule). As loss-landscape
does, the principal directions are those of the centered matrix [x_0; ...; x_T] (sklearn's PCA;
the last row is zero) and the path is projected without centering, c_tk = <x_t, v_k>, so the
plane passes through theta_T = theta0 and the surface theta0 + a d_1 + b d_2 contains the
projected path. Explained variance ratios are those of every component.

The directions are stored as d_k = s v_k with s = max_t ||x_t||, the farthest checkpoint's
distance: coordinates are in units of s, the same on both axes (so distances and angles in
the plane are true) and every projected checkpoint lies in the unit disk. Each v_k's sign is
chosen so that the first checkpoint's coordinate is <= 0 (the path arrives from the left and
from below).

The PCA runs on the (T+1) x (T+1) Gram matrix, accumulated one tensor at a time in float64, so
memory stays at one tensor's differences however large the model.

Reference: Li, Xu, Taylor, Studer, Goldstein, NeurIPS 2018, Sec. 7 (trajectories on PCA
directions; github.com/tomgoldstein/loss-landscape, projection.py setup_PCA_directions).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from landscape.directions import Direction

# A second component below this fraction of the first means the path is (numerically) a line.
_MIN_SECOND = 1e-12


@dataclass(frozen=True, eq=False)
class PathPCA:
    """The plane of a training path and the path in it.

    Attributes:
        directions: (d_1, d_2), d_k = scale * v_k with v_1, v_2 orthonormal over the tensors
            named (on the tensors' devices and dtypes).
        coords: (T+1, 2) the checkpoints' projections <x_t, v_k> / scale, in training order;
            the last row is (0, 0).
        explained_variance_ratio: (K,) of every principal component, decreasing, summing to 1.
        scale: s = max_t ||x_t|| (weight units).
        distances: (T+1,) ||x_t|| / scale.
        in_plane: (T+1,) fraction of ||x_t||^2 inside the plane (1 for the last checkpoint).
    """

    directions: tuple[Direction, Direction]
    coords: np.ndarray
    explained_variance_ratio: np.ndarray
    scale: float
    distances: np.ndarray
    in_plane: np.ndarray

    def summary(self) -> dict[str, Any]:
        """The JSON-able numbers (everything but the directions)."""
        return {
            "coords": self.coords.tolist(),
            "explained_variance_ratio": self.explained_variance_ratio.tolist(),
            "scale": self.scale,
            "distances": self.distances.tolist(),
            "in_plane": self.in_plane.tolist(),
        }


def _differences(
    theta0: Mapping[str, torch.Tensor], path: Sequence[Mapping[str, torch.Tensor]], name: str
) -> torch.Tensor:
    """(T+1, numel) float64 rows x_t = theta_t - theta0 of one tensor."""
    ref = theta0[name].detach().to(torch.float64)
    return torch.stack(
        [s[name].detach().to(ref.device, torch.float64).reshape(-1) - ref.reshape(-1) for s in path]
    )


def path_pca(
    theta0: Mapping[str, torch.Tensor],
    path: Sequence[Mapping[str, torch.Tensor]],
    names: Sequence[str],
) -> PathPCA:
    """The first two principal directions of a training path and its projection on them.

    Args:
        theta0: name -> the last checkpoint's tensors (the origin of the plane).
        path: one name -> tensor mapping per checkpoint, in training order (the last one
            included: its row is zero), each naming every tensor in ``names``.
        names: the tensors the PCA runs over (e.g. conv and linear weights).

    Returns:
        :class:`PathPCA`.

    Raises:
        ValueError: fewer than 3 checkpoints, a missing tensor or shape, or a path on a line.

    Reference: Li et al., NeurIPS 2018, Sec. 7 (centered PCA as sklearn's, projection without
    centering as loss-landscape's project_trajectory).
    """
    if len(path) < 3:
        raise ValueError(
            f"a trajectory needs at least 3 checkpoints (2 principal directions), got {len(path)}"
        )
    if not names:
        raise ValueError("no tensors to run the PCA over")
    for k, state in enumerate(path):
        bad = [n for n in names if n not in state or state[n].shape != theta0[n].shape]
        if bad:
            raise ValueError(
                f"checkpoint {k} of the path lacks {bad[:3]} (or has other shapes): the path "
                "must be checkpoints of one architecture"
            )
    n = len(path)
    gram = torch.zeros(n, n, dtype=torch.float64)
    for name in names:
        x = _differences(theta0, path, name)
        gram += (x @ x.T).cpu()
    center = torch.eye(n, dtype=torch.float64) - 1.0 / n
    evals, evecs = torch.linalg.eigh(center @ gram @ center)  # increasing
    evals, evecs = evals.flip(0).clamp_min(0.0), evecs.flip(1)
    if evals[1] <= _MIN_SECOND * evals[0]:
        raise ValueError(
            "the checkpoints lie on a line (or coincide): there is no second principal "
            "direction; use kind interp for a path between two checkpoints"
        )
    u = evecs[:, :2] / evals[:2].sqrt()  # (n, 2): v_k = X^T u_k (the u_k sum to zero)
    coords = gram @ u  # (n, 2): <x_t, v_k>
    sign = torch.where(coords[0] > 0, -1.0, 1.0).to(torch.float64)
    coords, u = coords * sign, u * sign
    sq = gram.diagonal()
    scale = float(sq.max().sqrt())
    if scale == 0:
        raise ValueError("every checkpoint of the path equals the last one")
    directions: tuple[Direction, Direction] = ({}, {})
    for name in names:
        x = _differences(theta0, path, name)  # (n, numel)
        v = x.T @ u.to(x.device)  # (numel, 2)
        ref = theta0[name]
        for k in range(2):
            directions[k][name] = (scale * v[:, k]).reshape(ref.shape).to(ref.dtype)
    in_plane = torch.where(sq > 0, (coords**2).sum(1) / sq.clamp_min(1e-300), 1.0)
    return PathPCA(
        directions=directions,
        coords=(coords / scale).numpy(),
        explained_variance_ratio=(evals / evals.sum()).numpy(),
        scale=scale,
        distances=(sq.sqrt() / scale).numpy(),
        in_plane=in_plane.numpy(),
    )
