"""Motion terms: local rigidity across time, smooth bone trajectories, smooth skinning.

Neighbourhoods are k nearest canonical surfels (:func:`knn`), recomputed by the trainer
whenever densification changes the rows.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from recon4d.model.rotations import quat_conjugate, quat_rotate


def knn(points: Tensor, k: int) -> Tensor:
    """(N, 3) -> (N, k) indices of each point's k nearest other points (scipy cKDTree)."""
    from scipy.spatial import cKDTree

    pts = points.detach().cpu().numpy().astype(np.float64)
    k = min(k, max(len(pts) - 1, 1))
    _, idx = cKDTree(pts).query(pts, k=k + 1)
    return torch.as_tensor(np.asarray(idx)[:, 1:].reshape(len(pts), k), dtype=torch.long,
                           device=points.device)


def rigidity_loss(canon_means: Tensor, means_t: Tensor, warp_quats: Tensor, rows: Tensor,
                  neighbours: Tensor) -> Tensor:
    """Local rigidity: neighbours of a surfel should move with the surfel's own rigid transform.

    For sampled surfels i (``rows`` (S,)) and their neighbours j (``neighbours`` (S, k)):
    || R_i(t)^T (x_j(t) - x_i(t)) - (x_j - x_i) ||, averaged, with R_i(t) the warp rotation
    ``warp_quats`` (N, 4) at t. Zero for any rigid motion of the neighbourhood.
    """
    offsets_t = means_t[neighbours] - means_t[rows].unsqueeze(1)          # (S, k, 3)
    q_inv = quat_conjugate(warp_quats[rows]).unsqueeze(1).expand(-1, neighbours.shape[1], -1)
    back = quat_rotate(q_inv, offsets_t)
    offsets_c = canon_means[neighbours] - canon_means[rows].unsqueeze(1)
    return (back - offsets_c).norm(dim=-1).mean()


def isometry_loss(canon_means: Tensor, means_a: Tensor, means_b: Tensor, rows: Tensor,
                  neighbours: Tensor) -> Tensor:
    """Neighbour distances at two times should agree: mean | |x_j-x_i|_a - |x_j-x_i|_b |."""
    da = (means_a[neighbours] - means_a[rows].unsqueeze(1)).norm(dim=-1)
    db = (means_b[neighbours] - means_b[rows].unsqueeze(1)).norm(dim=-1)
    return (da - db).abs().mean()


def trajectory_smoothness(params_prev: Tensor, params_now: Tensor, params_next: Tensor) -> Tensor:
    """Mean squared second difference of a motion parameter sampled at t-dt, t, t+dt
    (bone rotation vectors / translations): penalises jerky bone trajectories."""
    return ((params_next - 2 * params_now + params_prev) ** 2).sum(-1).mean()


def keyframe_smoothness(values: Tensor) -> Tensor:
    """(K, D) keyframed values (root poses) -> mean squared second difference along K."""
    if values.shape[0] < 3:
        return values.sum() * 0
    return ((values[2:] - 2 * values[1:-1] + values[:-2]) ** 2).sum(-1).mean()


def skinning_smoothness(weights: Tensor, neighbour_weights: Tensor) -> Tensor:
    """(S, B) weights of sampled surfels and (S, k, B) of their neighbours -> mean L1 gap."""
    return (weights.unsqueeze(1) - neighbour_weights).abs().sum(-1).mean()
