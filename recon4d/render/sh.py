"""Real spherical harmonics colour evaluation (degree 0..3), the basis used by 3DGS and gsplat.

colour = clamp_min(0.5 + sum_k sh_k * Y_k(dir), 0), with ``dir`` the unit vector from the camera
centre to the surfel centre (world space). The 0.5 offset makes all-zero coefficients mid-grey.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .types import SH_C0

# Normalisation constants of the real SH basis Y_lm (orthonormal on the sphere), sign convention
# of the 3DGS/gsplat basis so coefficients fitted with either are interchangeable.
_C1 = 0.4886025119029199
_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792,
       0.5462742152960396)
_C3 = (-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154,
       -0.4570457994644658, 1.445305721320277, -0.5900435899266435)


def sh_basis(dirs: Tensor, degree: int) -> Tensor:
    """The (degree+1)^2 real SH basis functions at unit directions.

    Args:
        dirs: (..., 3) unit vectors.
        degree: 0..3.
    Returns:
        (..., (degree+1)^2) basis values, ordered by band then m as in 3DGS.
    """
    if degree not in (0, 1, 2, 3):
        raise ValueError(f"sh degree: must be 0..3, got {degree}")
    x, y, z = dirs.unbind(-1)
    out = [torch.full_like(x, SH_C0)]
    if degree >= 1:
        out += [-_C1 * y, _C1 * z, -_C1 * x]
    if degree >= 2:
        xx, yy, zz = x * x, y * y, z * z
        out += [_C2[0] * x * y, _C2[1] * y * z, _C2[2] * (2.0 * zz - xx - yy), _C2[3] * x * z,
                _C2[4] * (xx - yy)]
    if degree >= 3:
        out += [_C3[0] * y * (3.0 * xx - yy), _C3[1] * x * y * z, _C3[2] * y * (4.0 * zz - xx - yy),
                _C3[3] * z * (2.0 * zz - 3.0 * xx - 3.0 * yy), _C3[4] * x * (4.0 * zz - xx - yy),
                _C3[5] * z * (xx - yy), _C3[6] * x * (xx - 3.0 * yy)]
    return torch.stack(out, dim=-1)


def eval_sh_colors(sh: Tensor, means: Tensor, centers: Tensor) -> Tensor:
    """View-dependent colours of N surfels seen from C cameras.

    Args:
        sh: (N, K, 3) coefficients, K in (1, 4, 9, 16).
        means: (N, 3) surfel centres, world space.
        centers: (C, 3) camera centres, world space.
    Returns:
        (C, N, 3) colours, >= 0 (not clamped above: values > 1 are allowed as in 3DGS).
    """
    k = sh.shape[1]
    degree = {1: 0, 4: 1, 9: 2, 16: 3}[k]
    if degree == 0:
        # No direction needed: skip the normalisation (and its gradient w.r.t. the means).
        color = 0.5 + SH_C0 * sh[:, 0, :]
        return color.clamp_min(0.0).unsqueeze(0).expand(centers.shape[0], -1, -1)
    offsets = means.unsqueeze(0) - centers.unsqueeze(1)  # (C, N, 3)
    # A surfel exactly at a camera centre has no direction; the tiny floor keeps it finite.
    dirs = offsets / offsets.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    basis = sh_basis(dirs, degree)  # (C, N, K)
    color = 0.5 + torch.einsum("cnk,nkd->cnd", basis, sh)
    return color.clamp_min(0.0)
