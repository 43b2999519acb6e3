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

    presets = {"ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
               "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
               "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM}
    dis = cv2.DISOpticalFlow_create(presets[preset])
    grey = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]
    count = len(grey) - 1
    forward = np.empty((count,) + grey[0].shape + (2,), np.float32)
    backward = np.empty_like(forward)
    for i in console.track(range(count), description="optical flow"):
        forward[i] = dis.calc(grey[i], grey[i + 1], None)
        backward[i] = dis.calc(grey[i + 1], grey[i], None)
    return forward, backward


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
