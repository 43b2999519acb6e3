"""Rotation and rigid-transform helpers (quaternions wxyz, dual quaternions), batched torch.

All functions take and return tensors with arbitrary leading batch dimensions ``...``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from recon4d.render.camera_space import quat_to_rotmat  # noqa: F401  (one implementation, shared with the renderer)


def quat_multiply(a: Tensor, b: Tensor) -> Tensor:
    """Hamilton product a * b of (..., 4) wxyz quaternions (rotation b first, then a)."""
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack([
        aw * bw - ax * bx - ay * by - az * bz,
        aw * bx + ax * bw + ay * bz - az * by,
        aw * by - ax * bz + ay * bw + az * bx,
        aw * bz + ax * by - ay * bx + az * bw,
    ], dim=-1)


def quat_conjugate(q: Tensor) -> Tensor:
    return q * torch.tensor([1.0, -1.0, -1.0, -1.0], dtype=q.dtype, device=q.device)


def rotmat_to_quat(m: Tensor) -> Tensor:
    """(..., 3, 3) rotation matrix -> (..., 4) unit wxyz quaternion with w >= 0.

    Shepperd's method: of the four algebraically equivalent formulas, each row uses the one
    whose pivot (largest of 1 + trace and the 1 + 2 m_ii - trace) is largest, so no division by
    a tiny number loses the signs.
    """
    m00, m11, m22 = m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]
    m01, m02, m10, m12, m20, m21 = (m[..., 0, 1], m[..., 0, 2], m[..., 1, 0], m[..., 1, 2],
                                    m[..., 2, 0], m[..., 2, 1])
    pivots = torch.stack([1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22,
                          1 - m00 - m11 + m22], dim=-1)
    candidates = torch.stack([
        torch.stack([pivots[..., 0], m21 - m12, m02 - m20, m10 - m01], -1),
        torch.stack([m21 - m12, pivots[..., 1], m01 + m10, m02 + m20], -1),
        torch.stack([m02 - m20, m01 + m10, pivots[..., 2], m12 + m21], -1),
        torch.stack([m10 - m01, m02 + m20, m12 + m21, pivots[..., 3]], -1),
    ], dim=-2)                                                 # (..., 4 choices, 4)
    best = pivots.argmax(dim=-1, keepdim=True)
    q = torch.gather(candidates, -2, best.unsqueeze(-1).expand(best.shape[:-1] + (1, 4)))
    q = torch.nn.functional.normalize(q.squeeze(-2), dim=-1)
    return torch.where(q[..., :1] < 0, -q, q)


def axis_angle_to_quat(v: Tensor) -> Tensor:
    """(..., 3) rotation vector (axis * angle, radians) -> (..., 4) unit wxyz quaternion.

    Smooth at zero (uses sinc), so a zero-initialised vector gives the identity with finite
    gradients.
    """
    angle = torch.linalg.norm(v, dim=-1, keepdim=True)
    half = angle / 2
    # sin(a/2)/a = 0.5 * sinc(a / (2 pi)) in torch's normalised-sinc convention.
    scale = 0.5 * torch.sinc(half / torch.pi)
    return torch.cat([torch.cos(half), v * scale], dim=-1)


def quat_rotate(q: Tensor, v: Tensor) -> Tensor:
    """Rotate (..., 3) vectors by (..., 4) unit wxyz quaternions."""
    w = q[..., :1]
    u = q[..., 1:]
    uv = torch.cross(u, v, dim=-1)
    return v + 2 * (w * uv + torch.cross(u, uv, dim=-1))


def se3_matrix(rot: Tensor, trans: Tensor) -> Tensor:
    """(..., 3, 3) rotation and (..., 3) translation -> (..., 4, 4) homogeneous transform."""
    out = torch.zeros(rot.shape[:-2] + (4, 4), dtype=rot.dtype, device=rot.device)
    out[..., :3, :3] = rot
    out[..., :3, 3] = trans
    out[..., 3, 3] = 1
    return out


# Dual quaternions ---------------------------------------------------------------------------
def dual_quat_from_rt(q: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """Unit rotation q (..., 4) and translation t (..., 3) -> dual quaternion (real, dual)."""
    t_quat = torch.cat([torch.zeros_like(t[..., :1]), t], dim=-1)
    return q, 0.5 * quat_multiply(t_quat, q)


def dual_quat_to_rt(real: Tensor, dual: Tensor) -> tuple[Tensor, Tensor]:
    """Dual quaternion (not necessarily unit) -> (unit rotation (..., 4), translation (..., 3))."""
    norm = torch.linalg.norm(real, dim=-1, keepdim=True).clamp_min(1e-12)
    real = real / norm
    dual = dual / norm
    t = 2 * quat_multiply(dual, quat_conjugate(real))[..., 1:]
    return real, t


@torch.no_grad()
def _hemisphere_signs(weights: Tensor, q: Tensor) -> Tensor:
    """(M, B) +-1: the sign that puts each bone's quaternion q (B, 4) in the hemisphere of the
    point's dominant bone (largest of its weights (M, B)); 1 where they are orthogonal.

    A constant for autograd (the sign's derivative is zero): computing it without a graph
    spares the backward pass an (M, B, 4) product, once a third of the warp's time.
    """
    dots = q[weights.argmax(dim=1)] @ q.T                      # (M, B)
    return torch.where(dots < 0, -1.0, 1.0).to(weights.dtype)


def blend_dual_quats(weights: Tensor, q: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """Dual-quaternion skinning: blend B rigid transforms per point.

    Args:
        weights: (M, B) skinning weights, rows summing to 1.
        q: (B, 4) unit bone rotations; t: (B, 3) bone translations.
    Returns:
        (M, 4) unit rotations and (M, 3) translations (x' = R x + t).
    """
    real, dual = dual_quat_from_rt(q, t)
    # Antipodal quaternions are the same rotation: align every bone with the point's dominant
    # bone so the blend does not cancel out (the classic DQS sign fix).
    signed = weights * _hemisphere_signs(weights, real)
    blended_real = signed @ real
    blended_dual = signed @ dual
    return dual_quat_to_rt(blended_real, blended_dual)


def blend_linear(weights: Tensor, q: Tensor, t: Tensor, points: Tensor) -> tuple[Tensor, Tensor]:
    """Linear blend skinning of ``points`` (M, 3) with bones (q (B, 4), t (B, 3)).

    Returns (M, 4) rotations and (M, 3) translations such that R x + t equals the LBS position
    sum_b w_b (R_b x + t_b) exactly; the rotation (for surfel orientation, which LBS does not
    define) is the sign-aligned normalised blend of bone quaternions.
    """
    rot = quat_to_rotmat(q)                                   # (B, 3, 3)
    blended_m = torch.einsum("mb,bij->mij", weights, rot)     # (M, 3, 3), not orthonormal
    blended_t = weights @ t
    positions = torch.einsum("mij,mj->mi", blended_m, points) + blended_t
    quat = torch.nn.functional.normalize((weights * _hemisphere_signs(weights, q)) @ q, dim=-1)
    trans = positions - quat_rotate(quat, points)
    return quat, trans
