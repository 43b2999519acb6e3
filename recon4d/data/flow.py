"""Optical flow between neighbouring frames with OpenCV's DIS (classical, no model weights)."""

from __future__ import annotations

import numpy as np

from recon4d.utils import console


def dis_flow(frames: np.ndarray, preset: str = "medium") -> tuple[np.ndarray, np.ndarray]:
    """Forward and backward DIS flow for a clip.

    Args:
        frames: (F, H, W, 3) uint8 RGB, F >= 2.
        preset: OpenCV DIS preset: "ultrafast", "fast" or "medium".

    Returns:
        (forward, backward), each (F-1, H, W, 2) float32 pixel offsets (dx, dy):
        forward[i] moves pixels of frame i to frame i+1, backward[i] those of frame i+1 to i.
    """
    import cv2

    dis = _dis(preset)
    grey = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]
    count = len(grey) - 1
    forward = np.empty((count,) + grey[0].shape + (2,), np.float32)
    backward = np.empty_like(forward)
    for i in console.track(range(count), description="optical flow"):
        forward[i] = dis.calc(grey[i], grey[i + 1], None)
        backward[i] = dis.calc(grey[i + 1], grey[i], None)
    return forward, backward


def _dis(preset: str):
    import cv2

    presets = {"ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
               "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
               "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM}
    if preset not in presets:
        raise ValueError(f"preset: must be one of {', '.join(presets)}, got {preset!r}")
    return cv2.DISOpticalFlow_create(presets[preset])


def midpoint_frame(before: np.ndarray, after: np.ndarray, preset: str = "medium") -> np.ndarray:
    """The frame halfway between two frames, interpolated along DIS flow in both directions.

    A point at q in ``before`` is at q + F(q) in ``after`` (F the forward flow), so halfway it
    is at about q + F(q)/2; to first order the midpoint frame at p is before(p - F(p)/2), and
    likewise after(p - B(p)/2) with the backward flow B. The two predictions are averaged.
    The evaluation uses this as the classical baseline for a held-out frame.

    Args:
        before, after: (H, W, 3) float RGB in [0, 1], the frames either side.

    Returns:
        (H, W, 3) float32 in [0, 1].
    """
    import cv2

    if before.shape != after.shape or before.ndim != 3 or before.shape[2] != 3:
        raise ValueError(f"frames: expected two (H, W, 3) images of one size, got "
                         f"{before.shape} and {after.shape}")
    a = np.clip(before, 0, 1).astype(np.float32)
    b = np.clip(after, 0, 1).astype(np.float32)
    grey_a, grey_b = (cv2.cvtColor((x * 255 + 0.5).astype(np.uint8), cv2.COLOR_RGB2GRAY)
                      for x in (a, b))
    dis = _dis(preset)
    forward = dis.calc(grey_a, grey_b, None)
    backward = dis.calc(grey_b, grey_a, None)
    return 0.5 * (warp_with_flow(a, -0.5 * forward) + warp_with_flow(b, -0.5 * backward))


def warp_with_flow(image: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """Backward-warp ``image`` (H, W[, C]) by ``flow`` (H, W, 2): out(p) = image(p + flow(p)).

    With ``flow = forward[i]`` and ``image = frame i+1`` this predicts frame i (a check of the
    flow's direction and units).
    """
    import cv2

    height, width = flow.shape[:2]
    grid_x, grid_y = np.meshgrid(np.arange(width, dtype=np.float32),
                                 np.arange(height, dtype=np.float32))
    return cv2.remap(image, grid_x + flow[..., 0], grid_y + flow[..., 1], cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_REPLICATE)
