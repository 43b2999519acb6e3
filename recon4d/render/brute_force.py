"""Dense float64 oracle of the rasteriser core, for tests only.

No tiles, no bounding boxes, no feature tricks: for every pixel it solves the 3x3 ray-surfel
system with determinants exactly as the spec states (Cramer's rule), then walks the depth-sorted
surfels one by one with an explicit transmittance and an explicit early-termination flag. It is
vectorised over pixels only (a Python loop over surfels), so it is meant for small scenes.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .reference import ALPHA_MAX, ALPHA_MIN, DET_EPS, NEAR, RHO_CUT, T_MIN


def _det3(c0: Tensor, c1: Tensor, c2: Tensor) -> Tensor:
    """Determinant of the 3x3 matrices with columns c0, c1, c2 (..., 3)."""
    return torch.linalg.det(torch.stack([c0, c1, c2], dim=-1))


@torch.no_grad()
def rasterize_core_brute_force(means_c: Tensor, tu_c: Tensor, tv_c: Tensor, opacities: Tensor,
                               colors: Tensor, normals: Tensor, Ks: Tensor, width: int,
                               height: int) -> tuple[Tensor, Tensor]:
    """Same contract as ``rasterize_core_reference`` (no gradients), computed in float64."""
    num_cams, num = means_c.shape[:2]
    f64 = torch.float64
    accum_all, median_all = [], []
    ys, xs = torch.meshgrid(torch.arange(height, dtype=f64), torch.arange(width, dtype=f64),
                            indexing="ij")
    px, py = xs + 0.5, ys + 0.5
    for c in range(num_cams):
        m, tu, tv = means_c[c].to(f64), tu_c[c].to(f64), tv_c[c].to(f64)
        opac, col, nrm = opacities[c].to(f64), colors[c].to(f64), normals[c].to(f64)
        fx, fy, cx, cy = (float(v) for v in (Ks[c, 0, 0], Ks[c, 1, 1], Ks[c, 0, 2], Ks[c, 1, 2]))
        d = torch.stack([(px - cx) / fx, (py - cy) / fy, torch.ones_like(px)], -1)  # (H, W, 3)
        trans = torch.ones(height, width, dtype=f64)
        done = torch.zeros(height, width, dtype=torch.bool)
        median = torch.zeros(height, width, dtype=f64)
        median_set = torch.zeros(height, width, dtype=torch.bool)
        acc = torch.zeros(height, width, 9, dtype=f64)
        order = sorted(range(num), key=lambda i: (float(m[i, 2]), i))
        for i in order:
            if float(m[i, 2]) < NEAR:
                continue
            a = tu[i].expand_as(d)
            b = tv[i].expand_as(d)
            rhs = (-m[i]).expand_as(d)
            det = _det3(a, b, -d)
            degenerate = det.abs() < DET_EPS
            det_safe = torch.where(degenerate, torch.ones_like(det), det)
            u = _det3(rhs, b, -d) / det_safe
            v = _det3(a, rhs, -d) / det_safe
            z = _det3(a, b, rhs) / det_safe
            # A hit behind the camera (z <= 0) is no hit.
            rho3d = torch.where(degenerate | (z <= 0), torch.full_like(u, float("inf")),
                                u * u + v * v)
            qx = fx * float(m[i, 0]) / float(m[i, 2]) + cx
            qy = fy * float(m[i, 1]) / float(m[i, 2]) + cy
            rho2d = 2.0 * ((px - qx) ** 2 + (py - qy) ** 2)
            use3d = rho3d <= rho2d
            rho = torch.where(use3d, rho3d, rho2d)
            zi = torch.where(use3d, z, torch.full_like(z, float(m[i, 2])))
            alpha = torch.clamp(opac[i] * torch.exp(-0.5 * rho), max=ALPHA_MAX)
            active = (~done) & (rho <= RHO_CUT) & (alpha >= ALPHA_MIN)
            t_next = trans * (1.0 - alpha)
            stop = active & (t_next < T_MIN)
            done = done | stop
            add = active & ~stop
            w = torch.where(add, alpha * trans, torch.zeros_like(alpha))
            acc[..., 0:3] += w.unsqueeze(-1) * col[i]
            acc[..., 3] += w
            acc[..., 4] += w * zi
            acc[..., 5] += w * zi * zi
            acc[..., 6:9] += w.unsqueeze(-1) * nrm[i]
            trans = torch.where(add, t_next, trans)
            newly = add & (trans < 0.5) & ~median_set
            median = torch.where(newly, zi, median)
            median_set = median_set | newly
        accum_all.append(acc)
        median_all.append(median)
    return torch.stack(accum_all), torch.stack(median_all)
