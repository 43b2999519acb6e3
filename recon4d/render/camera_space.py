"""Steps 2-3 of the renderer: per-camera colours, camera-space surfel frames, world normals.

Everything here is plain differentiable torch shared by every backend (reference, native,
gsplat-free paths); only the per-pixel compositing (``rasterize_core``) differs between backends.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .sh import eval_sh_colors
from .types import Cameras, Surfels


def quat_to_rotmat(quats: Tensor) -> Tensor:
    """Rotation matrices from quaternions.

    Args:
        quats: (N, 4) wxyz, any non-zero norm (normalised here).
    Returns:
        (N, 3, 3) rotations; column j is the rotated j-th axis.
    """
    q = quats / quats.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    w, x, y, z = q.unbind(-1)
    rows = [
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ]
    return torch.stack(rows, dim=-1).reshape(quats.shape[:-1] + (3, 3))


@dataclass
class CameraSpaceSurfels:
    """Per-camera inputs of ``rasterize_core`` (C cameras, N surfels).

    Attributes:
        means_c: (C, N, 3) centres in camera space (OpenCV, z forward).
        tu_c, tv_c: (C, N, 3) scaled tangent axes (rotation column times std-dev), camera space.
        opacities: (C, N) in [0, 1] (the same row for every camera).
        colors: (C, N, 3) SH colours evaluated for each camera's view direction.
        normals: (C, N, 3) unit WORLD-space normals, each flipped to face its camera.
    """

    means_c: Tensor
    tu_c: Tensor
    tv_c: Tensor
    opacities: Tensor
    colors: Tensor
    normals: Tensor


def to_camera_space(surfels: Surfels, cameras: Cameras) -> CameraSpaceSurfels:
    """Spec steps 2-3: colours per camera and the surfel frames in each camera's space."""
    viewmats = cameras.viewmats
    num_cams = viewmats.shape[0]
    rot_c = viewmats[:, :3, :3]  # (C, 3, 3) world -> camera rotation
    trans_c = viewmats[:, :3, 3]  # (C, 3)
    centers = -(rot_c.transpose(1, 2) @ trans_c.unsqueeze(-1)).squeeze(-1)  # (C, 3) world

    colors = eval_sh_colors(surfels.sh, surfels.means, centers)

    rot = quat_to_rotmat(surfels.quats)  # (N, 3, 3)
    t_u = rot[:, :, 0] * surfels.scales[:, 0:1]
    t_v = rot[:, :, 1] * surfels.scales[:, 1:2]
    normal = rot[:, :, 2]
    # Flip each normal to face its camera; the sign is a discrete choice (no gradient needed).
    facing = ((surfels.means.unsqueeze(0) - centers.unsqueeze(1)) * normal.unsqueeze(0)).sum(-1)
    sign = torch.where(facing > 0, -1.0, 1.0).to(normal.dtype).detach()
    normals = normal.unsqueeze(0) * sign.unsqueeze(-1)

    means_c = torch.einsum("cij,nj->cni", rot_c, surfels.means) + trans_c.unsqueeze(1)
    tu_c = torch.einsum("cij,nj->cni", rot_c, t_u)
    tv_c = torch.einsum("cij,nj->cni", rot_c, t_v)
    opacities = surfels.opacities.unsqueeze(0).expand(num_cams, -1)
    return CameraSpaceSurfels(means_c, tu_c, tv_c, opacities, colors, normals)
