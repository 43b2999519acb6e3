"""Test doubles of :class:`recon4d.model.protocol.DynamicScene` with known motion.

``CapsuleScene``: a capsule (a cylinder with hemispherical caps) along x, covered with coloured
surfels, driven by three bones in a chain (shoulder, elbow, hand) that bend about z over time,
plus a root pose that turns about y and translates. The warp blends bone transforms with
dual-quaternion skinning (``blend="dqs"``, the fitted model's default) or linear blend skinning.
Everything is analytic, so exporters can be checked against the truth without training.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from recon4d.render.types import Cameras, Surfels


def _axis_angle_matrix(axis: Tensor, angle: float) -> Tensor:
    axis = axis / axis.norm()
    x, y, z = axis.tolist()
    c, s = math.cos(angle), math.sin(angle)
    return torch.tensor([
        [c + x * x * (1 - c), x * y * (1 - c) - z * s, x * z * (1 - c) + y * s],
        [y * x * (1 - c) + z * s, c + y * y * (1 - c), y * z * (1 - c) - x * s],
        [z * x * (1 - c) - y * s, z * y * (1 - c) + x * s, c + z * z * (1 - c)],
    ], dtype=torch.float64)


def _rotation_about(center: Tensor, axis: Tensor, angle: float) -> Tensor:
    """(4, 4) rotation by ``angle`` about the line through ``center`` along ``axis``."""
    out = torch.eye(4, dtype=torch.float64)
    rot = _axis_angle_matrix(axis, angle)
    out[:3, :3] = rot
    out[:3, 3] = center - rot @ center
    return out


def _quat_from_matrix(rot: Tensor) -> Tensor:
    """(N, 3, 3) -> (N, 4) wxyz (trace method with a safe fallback via eigen decomposition)."""
    m = rot.double()
    # Bar-Itzhack: the quaternion is the top eigenvector of a symmetric 4x4 built from m.
    k = torch.zeros(m.shape[0], 4, 4, dtype=torch.float64)
    k[:, 0, 0] = m[:, 0, 0] - m[:, 1, 1] - m[:, 2, 2]
    k[:, 1, 1] = m[:, 1, 1] - m[:, 0, 0] - m[:, 2, 2]
    k[:, 2, 2] = m[:, 2, 2] - m[:, 0, 0] - m[:, 1, 1]
    k[:, 3, 3] = m[:, 0, 0] + m[:, 1, 1] + m[:, 2, 2]
    k[:, 0, 1] = k[:, 1, 0] = m[:, 1, 0] + m[:, 0, 1]
    k[:, 0, 2] = k[:, 2, 0] = m[:, 2, 0] + m[:, 0, 2]
    k[:, 1, 2] = k[:, 2, 1] = m[:, 2, 1] + m[:, 1, 2]
    k[:, 3, 0] = k[:, 0, 3] = m[:, 1, 2] - m[:, 2, 1]
    k[:, 3, 1] = k[:, 1, 3] = m[:, 2, 0] - m[:, 0, 2]
    k[:, 3, 2] = k[:, 2, 3] = m[:, 0, 1] - m[:, 1, 0]
    _, vecs = torch.linalg.eigh(k / 3.0)
    xyzw = vecs[:, :, -1]
    q = torch.cat([xyzw[:, 3:], -xyzw[:, :3]], 1)  # the convention above yields the conjugate
    return q * torch.where(q[:, :1] < 0, -1.0, 1.0)


def _quat_mul(a: Tensor, b: Tensor) -> Tensor:
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack([aw * bw - ax * bx - ay * by - az * bz, aw * bx + ax * bw + ay * bz - az * by,
                        aw * by - ax * bz + ay * bw + az * bx, aw * bz + ax * by - ay * bx + az * bw], -1)


def _quat_to_matrix(q: Tensor) -> Tensor:
    q = q / q.norm(dim=-1, keepdim=True)
    w, x, y, z = q.unbind(-1)
    return torch.stack([
        torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
        torch.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
        torch.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
    ], -2)


def _dqs_blend(weights: Tensor, transforms: Tensor) -> Tensor:
    """(M, B) weights, (B, 4, 4) rigid transforms -> (M, 4, 4) dual-quaternion blends."""
    real = _quat_from_matrix(transforms[:, :3, :3])  # (B, 4)
    trans = torch.cat([torch.zeros(len(real), 1, dtype=real.dtype), transforms[:, :3, 3]], 1)
    dual = 0.5 * _quat_mul(trans, real)
    # Keep every bone's quaternion in the hemisphere of the first (antipodal = same rotation).
    sign = torch.where((real * real[:1]).sum(1, keepdim=True) < 0, -1.0, 1.0)
    real, dual = real * sign, dual * sign
    b_real, b_dual = weights @ real, weights @ dual
    norm = b_real.norm(dim=1, keepdim=True)
    b_real, b_dual = b_real / norm, b_dual / norm
    conj = b_real * torch.tensor([1.0, -1.0, -1.0, -1.0], dtype=b_real.dtype)
    t = 2.0 * _quat_mul(b_dual, conj)[:, 1:]
    out = torch.eye(4, dtype=b_real.dtype).repeat(len(b_real), 1, 1)
    out[:, :3, :3] = _quat_to_matrix(b_real)
    out[:, :3, 3] = t
    return out


def _capsule_samples(count: int, half_length: float, radius: float, seed: int):
    """Points and outward normals spread over a capsule along x (area-proportional)."""
    gen = np.random.default_rng(seed)
    side_area = 2 * math.pi * radius * 2 * half_length
    cap_area = 4 * math.pi * radius * radius
    n_side = int(round(count * side_area / (side_area + cap_area)))
    theta = gen.uniform(0, 2 * math.pi, n_side)
    x = gen.uniform(-half_length, half_length, n_side)
    side_n = np.stack([np.zeros(n_side), np.cos(theta), np.sin(theta)], 1)
    side_p = np.stack([x, radius * side_n[:, 1], radius * side_n[:, 2]], 1)
    n_cap = count - n_side
    dirs = gen.normal(size=(n_cap, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    cap_p = radius * dirs + np.where(dirs[:, :1] >= 0, half_length, -half_length) * np.array([1, 0, 0])
    return np.concatenate([side_p, cap_p]), np.concatenate([side_n, dirs])


def _frame_from_normal(normals: np.ndarray) -> np.ndarray:
    """(N, 3) unit normals -> (N, 3, 3) rotations whose third column is the normal."""
    helper = np.where(np.abs(normals[:, :1]) < 0.9, np.array([[1.0, 0, 0]]), np.array([[0, 1.0, 0]]))
    t1 = np.cross(helper, normals)
    t1 /= np.linalg.norm(t1, axis=1, keepdims=True)
    t2 = np.cross(normals, t1)
    return np.stack([t1, t2, normals], 2)


class CapsuleScene:
    """A bending capsule that implements the DynamicScene protocol (CPU, float32 outputs).

    Args:
        num_surfels: surfels on the capsule surface.
        num_frames: input frames (times evenly spaced in [0, 1]).
        blend: "dqs" or "lbs", how ``warp_points`` blends the bones.
        bend: peak bend angle of each joint, radians.
        root_motion: whether the root pose turns and translates over time.
        image_size: side of the square input cameras.
    """

    half_length = 0.8
    radius = 0.3

    def __init__(self, num_surfels: int = 6000, num_frames: int = 8, blend: str = "dqs",
                 bend: float = 0.6, root_motion: bool = True, image_size: int = 96, seed: int = 0):
        self.blend = blend
        self.bend = bend
        self.root_motion = root_motion
        self.image_size = image_size
        self._times = torch.linspace(0.0, 1.0, num_frames)
        self._centers = torch.tensor([[-0.6, 0.0, 0.0], [0.0, 0.0, 0.0], [0.6, 0.0, 0.0]],
                                     dtype=torch.float64)
        self._sigma = 0.35
        points, normals = _capsule_samples(num_surfels, self.half_length, self.radius, seed)
        self._means = torch.tensor(points, dtype=torch.float64)
        self._rots = torch.tensor(_frame_from_normal(normals), dtype=torch.float64)
        spacing = math.sqrt((2 * math.pi * self.radius * 2 * self.half_length
                             + 4 * math.pi * self.radius ** 2) / num_surfels)
        self._scale = 0.7 * spacing
        # A texture that is not flat: stripes along x and a colour ramp around the axis.
        stripes = 0.5 + 0.4 * np.sign(np.sin(points[:, 0] * 9.0))
        angle = np.arctan2(points[:, 2], points[:, 1])
        rgb = np.stack([stripes, 0.5 + 0.4 * np.cos(angle), 0.3 + 0.2 * np.sin(angle)], 1)
        self._rgb = torch.tensor(np.clip(rgb, 0, 1), dtype=torch.float32)

    # Protocol -----------------------------------------------------------------------------
    @property
    def num_bones(self) -> int:
        return 3

    @property
    def frame_times(self) -> Tensor:
        return self._times.clone()

    def bone_centers(self) -> Tensor:
        return self._centers.float()

    def root_pose(self, t: float) -> Tensor:
        """(4, 4) float64 canonical-to-world root transform at ``t``."""
        if not self.root_motion:
            return torch.eye(4, dtype=torch.float64)
        root = _rotation_about(torch.zeros(3, dtype=torch.float64),
                               torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64), 0.8 * t)
        root[:3, 3] += torch.tensor([0.3 * t, 0.1 * math.sin(2 * math.pi * t), 0.0],
                                    dtype=torch.float64)
        return root

    def _bones64(self, t: float) -> Tensor:
        z = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
        elbow = _rotation_about(self._centers[1], z, self.bend * math.sin(2 * math.pi * t))
        wrist = _rotation_about(self._centers[2], z, self.bend * math.sin(2 * math.pi * t + 1.0))
        local = torch.stack([torch.eye(4, dtype=torch.float64), elbow, elbow @ wrist])
        return self.root_pose(t) @ local

    def bone_transforms(self, t: float) -> Tensor:
        return self._bones64(float(t)).float()

    def _weights64(self, points: Tensor) -> Tensor:
        d2 = torch.cdist(points.double(), self._centers) ** 2
        return torch.softmax(-d2 / (2 * self._sigma ** 2), dim=1)

    def skinning_weights(self, points: Tensor) -> Tensor:
        return self._weights64(points).float()

    def _blend(self, points: Tensor, t: float) -> Tensor:
        weights = self._weights64(points)
        bones = self._bones64(float(t))
        if self.blend == "lbs":
            return torch.einsum("mb,bij->mij", weights, bones)
        return _dqs_blend(weights, bones)

    def warp_points(self, points: Tensor, t: float) -> Tensor:
        transforms = self._blend(points, t)
        p = points.double()
        return (torch.einsum("mij,mj->mi", transforms[:, :3, :3], p) + transforms[:, :3, 3]).float()

    def canonical_surfels(self) -> Surfels:
        return self._surfels(self._means, self._rots)

    def surfels_at(self, t: float) -> Surfels:
        transforms = self._blend(self._means, t)
        means = torch.einsum("mij,mj->mi", transforms[:, :3, :3], self._means) + transforms[:, :3, 3]
        rots = transforms[:, :3, :3] @ self._rots
        return self._surfels(means, rots)

    def _surfels(self, means: Tensor, rots: Tensor) -> Surfels:
        n = len(means)
        scales = torch.full((n, 2), self._scale, dtype=torch.float32)
        return Surfels.from_rgb(means.float(), _quat_from_matrix(rots).float(), scales,
                                torch.full((n,), 0.95), self._rgb.clone())

    def input_cameras(self) -> Cameras:
        """One fixed camera looking down -z at the capsule from 4 units away, per frame."""
        size = self.image_size
        focal = 1.2 * size
        viewmat = torch.eye(4)
        viewmat[:3, 3] = torch.tensor([-0.15, 0.0, 4.0])
        k = torch.tensor([[focal, 0.0, size / 2], [0.0, focal, size / 2], [0.0, 0.0, 1.0]])
        count = len(self._times)
        return Cameras(viewmat.repeat(count, 1, 1), k.repeat(count, 1, 1), size, size)
