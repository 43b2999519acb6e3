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


def keyframe_smoothness(values: Tensor, times: Tensor | None = None) -> Tensor:
    """(K, D) keyframed values (root poses) at increasing ``times`` (K,) -> mean squared second
    difference along K.

    With ``times`` the second difference is the divided one, 2 ((v2-v1)/h1 - (v1-v0)/h0) /
    (h0 + h1), times the median spacing squared: steady motion costs nothing across uneven
    gaps (the keys skip held-out frames), and evenly spaced keys give the plain
    v2 - 2 v1 + v0 whatever their spacing. Without ``times`` the keys count as evenly spaced.
    """
    if values.shape[0] < 3:
        return values.sum() * 0
    if times is None:
        times = torch.arange(values.shape[0])
    spacing = (times[1:] - times[:-1]).to(values).clamp_min(1e-12).unsqueeze(-1)   # (K-1, 1)
    slopes = (values[1:] - values[:-1]) / spacing
    second = 2 * (slopes[1:] - slopes[:-1]) / (spacing[1:] + spacing[:-1])
    return ((second * spacing.median() ** 2) ** 2).sum(-1).mean()


def skinning_smoothness(weights: Tensor, neighbour_weights: Tensor) -> Tensor:
    """(S, B) weights of sampled surfels and (S, k, B) of their neighbours -> mean L1 gap."""
    return (weights.unsqueeze(1) - neighbour_weights).abs().sum(-1).mean()


def hermite_between(points: Tensor, times: Tensor, t: float) -> Tensor:
    """Cubic Hermite prediction of positions at time t from four keyframes.

    ``points`` (4, S, 3) are positions at ``times`` (4,) = (t_prev, t_a, t_b, t_next) with
    t_prev <= t_a < t_b <= t_next and t_a <= t <= t_b (t_prev = t_a or t_next = t_b at the ends
    of the clip). Each tangent is the slope at its key of the parabola through that key and its
    two neighbours (exact for quadratic motion on uneven spacing, as around a held-out frame;
    one-sided at the clip's ends): a still point is predicted still, and a point turning on an
    arc stays near the arc instead of cutting its chord.
    """
    x_prev, x_a, x_b, x_next = points
    t_prev, t_a, t_b, t_next = (float(v) for v in times)
    h = t_b - t_a
    chord = (x_b - x_a) / h

    def slope(x_left, t_left, x_mid, t_mid, x_right, t_right):
        left = (x_mid - x_left) / (t_mid - t_left)
        right = (x_right - x_mid) / (t_right - t_mid)
        return (left * (t_right - t_mid) + right * (t_mid - t_left)) / (t_right - t_left)

    m_a = slope(x_prev, t_prev, x_a, t_a, x_b, t_b) if t_prev < t_a else chord
    m_b = slope(x_a, t_a, x_b, t_b, x_next, t_next) if t_next > t_b else chord
    s = (t - t_a) / h
    h00 = 2 * s ** 3 - 3 * s ** 2 + 1
    h10 = s ** 3 - 2 * s ** 2 + s
    h01 = -2 * s ** 3 + 3 * s ** 2
    h11 = s ** 3 - s ** 2
    return h00 * x_a + h10 * h * m_a + h01 * x_b + h11 * h * m_b


def between_frames_loss(means_t: Tensor, predicted: Tensor, weights: Tensor | None = None) -> Tensor:
    """Mean squared distance (S, 3) - (S, 3) between positions at a time between two training
    frames and their prediction from the neighbouring training frames; ``weights`` (S,), when
    given, weigh each surfel's term (the mean stays over all S)."""
    sq = ((means_t - predicted) ** 2).sum(-1)
    return (sq if weights is None else sq * weights).mean()
