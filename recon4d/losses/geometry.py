"""Surface terms on a rendered (warped) state: mask, normal consistency, depth distortion."""

from __future__ import annotations

from torch import Tensor

from recon4d.render.types import RenderOutput


def mask_loss(out: RenderOutput, mask: Tensor) -> Tensor:
    """(C,) mean |alpha - mask| per image; mask (C, H, W) in [0, 1]."""
    return (out.alpha - mask).abs().flatten(1).mean(1)


def normal_consistency(out: RenderOutput, mask: Tensor | None = None) -> Tensor:
    """(C,) 1 - <rendered normal, normal from depth>, averaged over pixels where the depth
    normal exists (it is zero on the border and off the object) and, if given, inside ``mask``.

    The rendered normal is the compositing-weighted sum (not renormalised), as in 2DGS: the
    term also pulls alpha towards 1 where a surface exists.
    """
    dot = (out.normal * out.normal_from_depth).sum(-1)
    valid = (out.normal_from_depth.abs().sum(-1) > 0).to(dot.dtype)
    if mask is not None:
        valid = valid * (mask > 0.5).to(dot.dtype)
    per = ((1 - dot) * valid).flatten(1).sum(1)
    return per / valid.flatten(1).sum(1).clamp_min(1.0)


def distortion_loss(out: RenderOutput) -> Tensor:
    """(C,) mean depth distortion per image (scene units squared)."""
    return out.distortion.flatten(1).mean(1)
