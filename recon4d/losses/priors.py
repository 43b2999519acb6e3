"""Optional priors: optical flow (e.g. OpenCV DIS, cached by ingest) and user depth."""

from __future__ import annotations

import torch
from torch import Tensor


def flow_loss(rendered_flow: Tensor, target_flow: Tensor, mask: Tensor, max_px: float = 20.0) -> Tensor:
    """Mean robust end-point error between rendered and target flow (pixels).

    Args:
        rendered_flow, target_flow: (H, W, 2) pixel offsets frame i -> i+1.
        mask: (H, W) where the target is trusted (object pixels of frame i).
        max_px: errors are clipped here (flow fails on fast or occluded parts).
    """
    err = (rendered_flow - target_flow).norm(dim=-1).clamp(max=max_px)
    return (err * mask).sum() / mask.sum().clamp_min(1.0)


def scale_shift_align(pred: Tensor, target: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Least-squares (scale, shift) with scale * target + shift ~ pred on the mask (detached)."""
    m = mask > 0.5
    x, y = target[m].detach(), pred[m].detach()
    if x.numel() < 2:
        return torch.ones(()), torch.zeros(())
    a = torch.stack([x, torch.ones_like(x)], 1)
    sol = torch.linalg.lstsq(a, y.unsqueeze(1)).solution.squeeze(1)
    return sol[0], sol[1]


def depth_prior_loss(rendered_depth: Tensor, user_depth: Tensor, mask: Tensor) -> Tensor:
    """Scale-and-shift-invariant L1 between rendered depth and a user depth map (H, W).

    User depth (from a monocular estimator, say) has unknown scale and offset; they are solved
    in closed form on the mask each step, so only the shape of the depth map constrains the fit.
    """
    scale, shift = scale_shift_align(rendered_depth, user_depth, mask)
    aligned = scale * user_depth + shift
    m = (mask > 0.5).to(rendered_depth.dtype)
    return ((rendered_depth - aligned).abs() * m).sum() / m.sum().clamp_min(1.0)
