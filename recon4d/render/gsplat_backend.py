"""The ``gsplat`` backend: ``gsplat.rasterization_2dgs`` (gsplat 1.5.3, CUDA only) mapped onto
recon4d's RenderOutput.

gsplat has no CPU path, so this backend refuses CPU tensors with a clear error. Where gsplat's
2DGS rasteriser differs from recon4d's spec (docs/render.md), the mapping converts or documents:

- normals: gsplat accumulates CAMERA-space normals; they are rotated to WORLD space here
  (accumulated normals are linear in the per-surfel normals, so rotating the sum is exact).
- depth: gsplat composites each surfel's CENTRE depth (camera z of the mean), not the per-pixel
  ray-surfel intersection depth of the spec. ``depth`` (expected) and ``median_depth`` therefore
  differ slightly from the other backends on slanted surfels.
- distortion: gsplat's is the L1 variant sum_{i,j} w_i w_j |z_i - z_j| on centre depths (the spec's
  is the squared variant); it is passed through as is.
- alpha is capped at 0.999 per surfel (0.99 in the spec); colours come from gsplat's own SH code
  (same basis and 0.5 offset); background and normal_from_depth are recon4d's own (``assemble``).
- Ks get no gradient (a gsplat limitation); poses, means, quats, scales, opacities, SH do.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .assemble import ALPHA_EPS, normal_from_depth
from .types import Cameras, RenderOutput, Surfels

_THIRD_SCALE = 1e-6
"""gsplat takes (N, 3) scales and ignores the third for 2DGS; a tiny positive value is passed."""


def gsplat_available() -> tuple[bool, str]:
    """Whether gsplat can run here, and why not."""
    if not torch.cuda.is_available():
        return False, "no CUDA device (gsplat has no CPU path)"
    try:
        import gsplat  # noqa: F401
    except Exception as exc:  # ImportError, or a broken install
        return False, f"gsplat import failed: {type(exc).__name__}: {exc} (pip install gsplat==1.5.3)"
    return True, "ok"


def render_gsplat(surfels: Surfels, cameras: Cameras, background: Tensor | None = None,
                  tile_size: int = 16) -> RenderOutput:
    """Render with gsplat.rasterization_2dgs; same inputs and outputs as ``render``.

    Raises:
        RuntimeError: when gsplat cannot run (CPU tensors, no CUDA, gsplat missing).
    """
    if surfels.device.type != "cuda":
        raise RuntimeError("backend 'gsplat' needs CUDA tensors (gsplat has no CPU path); "
                           "use backend='native' or 'reference' on CPU")
    ok, reason = gsplat_available()
    if not ok:
        raise RuntimeError(f"backend 'gsplat' unavailable: {reason}")
    from gsplat import rasterization_2dgs

    if surfels.dtype != torch.float32:
        raise RuntimeError(f"backend 'gsplat' supports float32 only, got {surfels.dtype}")
    width, height = int(cameras.width), int(cameras.height)
    scales3 = torch.cat([surfels.scales, torch.full_like(surfels.scales[:, :1], _THIRD_SCALE)], -1)
    # gsplat's kernels index raw pointers: hand them contiguous tensors.
    colors, alphas, normals, _, distort, median, _ = rasterization_2dgs(
        surfels.means.contiguous(), surfels.quats.contiguous(), scales3,
        surfels.opacities.contiguous(), surfels.sh.contiguous(), cameras.viewmats.contiguous(),
        cameras.Ks.contiguous(), width, height, near_plane=0.01, sh_degree=surfels.sh_degree, packed=False,
        tile_size=tile_size, backgrounds=None, render_mode="RGB+D", distloss=True)
    alpha = alphas[..., 0]
    rgb = colors[..., 0:3]
    acc_depth = colors[..., 3]
    if background is not None:
        bg = background.view(-1, 1, 1, 3) if background.ndim == 2 else background.view(1, 1, 1, 3)
        rgb = rgb + (1.0 - alpha).unsqueeze(-1) * bg
    has = alpha >= ALPHA_EPS
    depth = torch.where(has, acc_depth / torch.where(has, alpha, torch.ones_like(alpha)), 0.0)
    # rasterization_2dgs already returns world-space normals (it rotates its camera-space
    # ones by inv(viewmats) before returning, in every release since 1.0): rotating them here
    # again was right only for cameras with the identity rotation.
    normal = normals
    return RenderOutput(
        rgb=rgb,
        alpha=alpha,
        depth=depth,
        median_depth=median[..., 0],
        normal=normal,
        normal_from_depth=normal_from_depth(depth, alpha, cameras),
        distortion=distort[..., 0],
    )
