"""Warp fields: canonical points -> world points at time t, one rigid transform per point.

One interface (:class:`WarpField`) with three implementations:

- :class:`IdentityWarp`: no motion (a static scene, or a root-pose-only model).
- :class:`GaussianBoneSkinning`: B Gaussian bones; a small MLP on a Fourier encoding of t gives
  each bone an SE(3) (its zero-initialised output head makes every bone the identity at init);
  skinning weights are a softmax over bones of minus half the Mahalanobis distance to each bone
  at rest plus a learned per-point residual; dual-quaternion blending (default) or linear blend.
- :class:`ComposedWarp`: a bone warp followed by per-frame root poses (:class:`RootPoses`),
  which move the whole object; root poses are keyframes at the training frame times,
  interpolated in between (so held-out frames get a pose without being fitted).

Every transform maps x to R x + trans with R a unit quaternion (wxyz); it is applied to a
surfel's centre and rotation alike, so normals follow the motion.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from recon4d.model.rotations import (axis_angle_to_quat, blend_dual_quats, blend_linear,
                                     quat_multiply, quat_rotate, quat_to_rotmat, se3_matrix)


def _as_time(t: float | Tensor, like: Tensor) -> Tensor:
    return torch.as_tensor(t, dtype=like.dtype, device=like.device).reshape(())


def fourier_encode(t: Tensor, num_freqs: int) -> Tensor:
    """Scalar time t in [0, 1] -> (1 + 2 * num_freqs,) features [t, sin(pi k t), cos(pi k t)].

    Linear frequencies (k = 1..num_freqs) keep the motion smooth between frames: the highest
    frequency sets the shortest motion period the warp can represent.
    """
    k = torch.arange(1, num_freqs + 1, dtype=t.dtype, device=t.device)
    phase = math.pi * k * t
    return torch.cat([t.reshape(1), torch.sin(phase), torch.cos(phase)])


class WarpField(nn.Module):
    """Canonical -> warped transform per point at time t.

    Subclasses implement :meth:`point_transforms`, :meth:`bone_rt`, :meth:`skinning_weights`
    and :meth:`bone_centers`.
    """

    num_bones: int = 0

    def point_transforms(self, points: Tensor, t: float | Tensor,
                         residual: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(M, 3) canonical points -> ((M, 4) unit rotations wxyz, (M, 3) translations).

        ``residual`` (M, B) are learned skinning-logit offsets of the points (None: zero).
        """
        raise NotImplementedError

    def bone_rt(self, t: float | Tensor) -> tuple[Tensor, Tensor]:
        """((B, 4) rotations, (B, 3) translations) of each bone at time t."""
        raise NotImplementedError

    def skinning_weights(self, points: Tensor, residual: Tensor | None = None) -> Tensor:
        """(M, 3) canonical points -> (M, B) weights, rows summing to 1."""
        raise NotImplementedError

    def bone_centers(self) -> Tensor:
        """(B, 3) rest centres of the bones, canonical frame."""
        raise NotImplementedError

    def warp_points(self, points: Tensor, t: float | Tensor, residual: Tensor | None = None) -> Tensor:
        """(M, 3) canonical points -> (M, 3) warped points."""
        q, trans = self.point_transforms(points, t, residual)
        return quat_rotate(q, points) + trans


class IdentityWarp(WarpField):
    """No motion: every point keeps its place."""

    num_bones = 0

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("_anchor", torch.zeros(1))

    def point_transforms(self, points, t, residual=None):
        q = torch.zeros(points.shape[0], 4, dtype=points.dtype, device=points.device)
        q[:, 0] = 1
        return q, torch.zeros_like(points)

    def bone_rt(self, t):
        return self._anchor.new_zeros(0, 4), self._anchor.new_zeros(0, 3)

    def skinning_weights(self, points, residual=None):
        return points.new_zeros(points.shape[0], 0)

    def bone_centers(self):
        return self._anchor.new_zeros(0, 3)


class GaussianBoneSkinning(WarpField):
    """B Gaussian bones driven by an MLP of Fourier-encoded time.

    Bone b at rest: centre c_b (3,), orientation q_b (4,), log-scales (3,). At time t the MLP
    outputs a rotation vector r_b(t) and a translation d_b(t); the bone moves points as
    x -> R(r_b) (x - c_b) + c_b + d_b, i.e. it rotates about its own centre (better conditioned
    than rotating about the origin). The output layer is zero-initialised: identity at init.

    Args:
        centers: (B, 3) initial rest centres (canonical frame).
        radius: initial isotropic bone scale (std, scene units).
        blend: "dqs" (dual-quaternion skinning) or "lbs" (linear blend skinning).
        num_freqs, hidden: time encoding size and MLP width.
        rot_scale, trans_scale: output multipliers (radians, scene units) that set the
            effective learning rate of rotations vs translations.
    """

    def __init__(self, centers: Tensor, radius: float, blend: str = "dqs", num_freqs: int = 8,
                 hidden: int = 64, rot_scale: float = 1.0, trans_scale: float = 0.1):
        super().__init__()
        if blend not in ("dqs", "lbs"):
            raise ValueError(f"blend: must be 'dqs' or 'lbs', got {blend!r}")
        b = centers.shape[0]
        self.num_bones = int(b)
        self.blend = blend
        self.num_freqs = int(num_freqs)
        self.rot_scale = float(rot_scale)
        self.trans_scale = float(trans_scale)
        self.centers = nn.Parameter(centers.detach().clone().float())
        rest = torch.zeros(b, 4)
        rest[:, 0] = 1
        self.rest_quats = nn.Parameter(rest)
        self.log_radii = nn.Parameter(torch.full((b, 3), math.log(radius)))
        self.mlp = nn.Sequential(nn.Linear(1 + 2 * num_freqs, hidden), nn.SiLU(),
                                 nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 6 * b))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def motion_params(self, t: float | Tensor) -> tuple[Tensor, Tensor]:
        """((B, 3) rotation vectors, (B, 3) translations) at time t (what smoothness acts on)."""
        out = self.mlp(fourier_encode(_as_time(t, self.centers), self.num_freqs)).reshape(-1, 6)
        return out[:, :3] * self.rot_scale, out[:, 3:] * self.trans_scale

    def bone_rt(self, t):
        rotvec, offset = self.motion_params(t)
        q = axis_angle_to_quat(rotvec)
        trans = self.centers + offset - quat_rotate(q, self.centers)
        return q, trans

    def skinning_logits(self, points: Tensor) -> Tensor:
        """(M, 3) -> (M, B) minus half the squared Mahalanobis distance to each rest bone.

        Written as one matrix product: with A_b = R_b diag(1/s_b^2) R_b^T, the distance
        (x - c_b)^T A_b (x - c_b) is linear in the features [x x^T, x, 1] of the point. That
        makes the (M, B) logits a single (M, 13) @ (13, B) product, forward and backward,
        instead of (M, B, 3) intermediates. Coordinates are taken relative to the bones' mean
        centre so the expanded quadratic does not cancel large numbers in float32.
        """
        origin = self.centers.detach().mean(0)
        x = points - origin
        c = self.centers - origin                                  # (B, 3)
        rot = quat_to_rotmat(self.rest_quats)                      # (B, 3, 3) bone2canonical
        inv_var = torch.exp(-2 * self.log_radii)                   # (B, 3)
        a = torch.einsum("bij,bj,bkj->bik", rot, inv_var, rot)     # (B, 3, 3) symmetric
        ac = torch.einsum("bij,bj->bi", a, c)                      # (B, 3)
        weights = torch.cat([a.reshape(-1, 9), -2 * ac, (c * ac).sum(-1, keepdim=True)], dim=1)
        feats = torch.cat([(x[:, :, None] * x[:, None, :]).reshape(-1, 9), x,
                           torch.ones_like(x[:, :1])], dim=1)      # (M, 13)
        return -0.5 * feats @ weights.T
    def skinning_weights(self, points, residual=None):
        logits = self.skinning_logits(points)
        if residual is not None:
            logits = logits + residual
        return torch.softmax(logits, dim=-1)

    def point_transforms(self, points, t, residual=None):
        weights = self.skinning_weights(points, residual)
        q, trans = self.bone_rt(t)
        if self.blend == "dqs":
            return blend_dual_quats(weights, q, trans)
        return blend_linear(weights, q, trans, points)

    def bone_centers(self):
        return self.centers


class RootPoses(nn.Module):
    """Per-frame rigid motion of the whole object, keyframed at ``key_times``.

    Pose k maps x -> R_k (x - p) + p + d_k with p a fixed pivot (the object's centre at init)
    so rotations do not swing the object around the world origin. Between keyframes the
    rotation vector and translation are interpolated linearly; outside they are held.
    Zero-initialised: the identity.
    """

    def __init__(self, key_times: Tensor, pivot: Tensor):
        super().__init__()
        order = torch.argsort(key_times)
        self.register_buffer("key_times", key_times.detach().float()[order].clone())
        self.register_buffer("pivot", pivot.detach().float().reshape(3).clone())
        k = key_times.shape[0]
        self.rotvecs = nn.Parameter(torch.zeros(k, 3))
        self.offsets = nn.Parameter(torch.zeros(k, 3))

    def params_at(self, t: float | Tensor) -> tuple[Tensor, Tensor]:
        """((3,) rotation vector, (3,) translation) at time t."""
        t = _as_time(t, self.key_times)
        k = self.key_times.shape[0]
        if k == 1:
            return self.rotvecs[0], self.offsets[0]
        hi = torch.searchsorted(self.key_times, t.reshape(1)).clamp(1, k - 1)[0]
        lo = hi - 1
        span = (self.key_times[hi] - self.key_times[lo]).clamp_min(1e-12)
        a = ((t - self.key_times[lo]) / span).clamp(0, 1)
        return (torch.lerp(self.rotvecs[lo], self.rotvecs[hi], a),
                torch.lerp(self.offsets[lo], self.offsets[hi], a))

    def rt_at(self, t: float | Tensor) -> tuple[Tensor, Tensor]:
        """((4,) rotation wxyz, (3,) translation) of the root at time t."""
        rotvec, offset = self.params_at(t)
        q = axis_angle_to_quat(rotvec)
        return q, self.pivot + offset - quat_rotate(q, self.pivot)


class ComposedWarp(WarpField):
    """``bones`` (any WarpField) followed by the root pose: x -> root(t)(bones(t)(x))."""

    def __init__(self, bones: WarpField, root: RootPoses):
        super().__init__()
        self.bones = bones
        self.root = root
        self.num_bones = bones.num_bones

    def point_transforms(self, points, t, residual=None):
        q_b, t_b = self.bones.point_transforms(points, t, residual)
        q_r, t_r = self.root.rt_at(t)
        q = quat_multiply(q_r.expand_as(q_b), q_b)
        return q, quat_rotate(q_r.expand_as(q_b), t_b) + t_r

    def bone_rt(self, t):
        q_b, t_b = self.bones.bone_rt(t)
        q_r, t_r = self.root.rt_at(t)
        return quat_multiply(q_r.expand_as(q_b), q_b), quat_rotate(q_r.expand_as(q_b), t_b) + t_r

    def skinning_weights(self, points, residual=None):
        return self.bones.skinning_weights(points, residual)

    def bone_centers(self):
        return self.bones.bone_centers()

    def bone_matrices(self, t: float | Tensor) -> Tensor:
        """(B, 4, 4) canonical-to-world transform of each bone at t, root pose included."""
        q, trans = self.bone_rt(t)
        return se3_matrix(quat_to_rotmat(q), trans)
