"""Optional priors: optical flow (e.g. OpenCV DIS, cached by ingest) and user depth."""

from __future__ import annotations

import torch
from torch import Tensor

from recon4d.data.options import DEPTH_KINDS


def flow_loss(rendered_flow: Tensor, target_flow: Tensor, mask: Tensor, max_px: float = 20.0) -> Tensor:
    """Mean robust end-point error between rendered and target flow (pixels).

    Args:
        rendered_flow, target_flow: (H, W, 2) pixel offsets frame i -> i+1.
        mask: (H, W) where the target is trusted (object pixels of frame i).
        max_px: errors are clipped here (flow fails on fast or occluded parts).
    """
    err = (rendered_flow - target_flow).norm(dim=-1).clamp(max=max_px)
    return (err * mask).sum() / mask.sum().clamp_min(1.0)


def _normalise(values: Tensor) -> Tensor:
    """(x - median) / mean |x - median|: values with their offset and scale taken out."""
    centre = values.median()
    spread = (values - centre).abs().mean().clamp_min(1e-8)
    return (values - centre) / spread


def depth_prior_loss(rendered_depth: Tensor, user_depth: Tensor, mask: Tensor,
                     kind: str = "depth") -> Tensor:
    """Invariant L1 between rendered depth and a user map (H, W) on the trusted pixels.

    - ``kind="disparity"`` (relative inverse depth, what monocular estimators output): the
      map's scale *and* offset are unknown per frame, so both sides are normalised (minus the
      median, divided by the mean absolute deviation) and compared in inverse depth. This fixes
      the shape of the visible surface up to a stretch along the view axis (an offset in
      disparity is a stretch in depth).
    - ``kind="depth"`` (depth along +z with a true zero: metric estimators, renderers,
      sensors): only the scale is unknown (it is the scene's scale), so both sides are divided
      by their median; this also fixes the stretch.

    Normalising both sides matters: fitting the user map onto the render by least squares
    instead would let a flat render (every surfel at one depth) score a perfect 0, and the prior
    would flatten the object it is meant to shape.

    Args:
        rendered_depth: (H, W) expected camera z, 0 where nothing was rendered.
        user_depth: (H, W) the user's map, 0 where unknown.
        mask: (H, W) in [0, 1]: where to trust it (object pixels).
        kind: "depth" or "disparity".

    Returns:
        Scalar, about 1 for a flat or unrelated render and 0 for one that matches the map up to
        the invariance: mean absolute difference of the normalised maps, divided by the user
        map's own normalised spread.
    """
    if kind not in DEPTH_KINDS:
        raise ValueError(f"kind: expected one of {DEPTH_KINDS}, got {kind!r}")
    valid = (mask > 0.5) & (user_depth > 0) & (rendered_depth > 1e-6)
    if int(valid.sum()) < 16:
        return rendered_depth.sum() * 0.0
    pred, target = rendered_depth[valid], user_depth[valid]
    if kind == "disparity":
        pred_n, target_n = _normalise(1.0 / pred), _normalise(target)
    else:
        pred_n, target_n = pred / pred.median() - 1.0, target / target.median() - 1.0
    spread = target_n.abs().mean().clamp_min(1e-8)
    return (pred_n - target_n).abs().mean() / spread
