"""Rendering the model's own optical flow, for the optional DIS-flow prior.

The renderer composites colours, so flow is rendered as a colour: each surfel's screen motion
from frame i to frame j (pixels: its centre at time i through camera i to its centre at time j
through camera j, so a moving camera's own motion is part of it, as in the video) is encoded as colour 0.5 + d / span on a
black background; the composite is 0.5 * alpha + sum_k w_k d_k / span, from which the
alpha-normalised flow is read back. ``span`` keeps colours positive (the renderer clamps
negative colours) for motions below span / 2 pixels.
"""

from __future__ import annotations

import torch
from torch import Tensor

from recon4d.render import render
from recon4d.render.types import SH_C0, Cameras, Surfels


def project(points: Tensor, cameras: Cameras) -> Tensor:
    """(N, 3) world points -> (N, 2) pixel coordinates in the first camera of ``cameras``."""
    view, K = cameras.viewmats[0], cameras.Ks[0]
    cam = points @ view[:3, :3].T + view[:3, 3]
    z = cam[:, 2:].clamp_min(1e-6)
    return torch.cat([K[0, 0] * cam[:, :1] / z + K[0, 2], K[1, 1] * cam[:, 1:2] / z + K[1, 2]], 1)


def render_flow(surfels_i: Surfels, means_j: Tensor, cameras: Cameras, backend: str = "auto",
                span: float | None = None, cameras_j: Cameras | None = None
                ) -> tuple[Tensor, Tensor]:
    """((H, W, 2) flow in pixels from frame i to j, (H, W) alpha) rendered in camera i.

    Args:
        surfels_i: the surfels at frame i's time (world frame); means_j: (N, 3) their centres
            at frame j (world frame).
        cameras: frame i's camera (one); cameras_j: frame j's camera (one), ``cameras`` if
            None (a fixed camera). The image motion of a point is its pixel in camera j at
            time j minus its pixel in camera i at time i.
    """
    span = float(span or 4 * max(cameras.width, cameras.height))
    target_cameras = cameras if cameras_j is None else cameras_j
    motion = project(means_j, target_cameras) - project(surfels_i.means, cameras)      # (N, 2)
    color = 0.5 + torch.cat([motion, torch.zeros_like(motion[:, :1])], 1) / span
    sh = ((color - 0.5) / SH_C0).unsqueeze(1)
    flat = Surfels(surfels_i.means, surfels_i.quats, surfels_i.scales, surfels_i.opacities, sh)
    out = render(flat, cameras, backend=backend, background=torch.zeros(3, device=sh.device))
    alpha = out.alpha[0]
    flow = span * (out.rgb[0, :, :, :2] - 0.5 * alpha[..., None]) / alpha[..., None].clamp_min(1e-4)
    return flow, alpha
