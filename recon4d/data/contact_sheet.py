"""A contact sheet: frames in a grid with their masks overlaid, for a person to check the ingest.

Outside the mask the frame is dimmed and tinted magenta; the mask outline is drawn in green; each
tile is labelled with its frame index, time and mask area. A mask that covers background or
misses part of the object is visible at a glance. With user depth maps each frame gets a second
tile: the map in colour (near = yellow, far = purple, no depth = grey) under the same mask
outline, so a map that is shifted, flipped or from another frame shows.
"""

from __future__ import annotations

import numpy as np


def overlay(frame: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 frame with (H, W) uint8 mask shown: tinted background, green outline."""
    alpha = (mask.astype(np.float32) / 255.0)[..., None]
    tint = np.array([200, 40, 200], np.float32)
    out = frame.astype(np.float32) * alpha + (0.45 * frame + 0.55 * tint) * (1.0 - alpha)
    return _outline(np.clip(out, 0, 255).astype(np.uint8), mask)


def _outline(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    import cv2

    contours, _ = cv2.findContours((mask >= 128).astype(np.uint8), cv2.RETR_LIST,
                                   cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(image, contours, -1, (0, 230, 0), 1)
    return image


def depth_tile(depth: np.ndarray, mask: np.ndarray, near_is_large: bool = True) -> np.ndarray:
    """(H, W, 3) uint8 picture of one (H, W) user map (0 = unknown) with the mask outline.

    Colours span the 2nd-98th percentile of the frame's known values; near is yellow and far
    purple whichever way the map counts (disparity: large = near; depth: large = far)."""
    import cv2

    picture = np.full(depth.shape + (3,), 64, np.uint8)
    known = depth > 0
    if known.any():
        lo, hi = np.percentile(depth[known], [2, 98])
        level = np.clip((depth - lo) / max(hi - lo, 1e-8), 0.0, 1.0)
        if not near_is_large:
            level = 1.0 - level
        coloured = cv2.applyColorMap((level * 255).astype(np.uint8), cv2.COLORMAP_VIRIDIS)[..., ::-1]
        picture[known] = coloured[known]
    return _outline(picture, mask)


def contact_sheet(frames: np.ndarray, masks: np.ndarray, times: np.ndarray,
                  areas: np.ndarray | None = None, max_tiles: int = 24, tile: int = 160,
                  columns: int = 6, depth: np.ndarray | None = None,
                  depth_kind: str = "disparity") -> np.ndarray:
    """A grid of up to ``max_tiles`` evenly spaced frames with mask overlays.

    Args:
        frames: (F, H, W, 3) uint8 RGB.
        masks: (F, H, W) uint8.
        times: (F,) normalised times.
        areas: (F,) mask area fractions for the labels (computed if None).
        depth: optional (F, H, W) user maps (0 = unknown), shown beside each frame.
        depth_kind: "disparity" (large = near) or "depth" (large = far).

    Returns:
        (rows * (tile + 16), columns * width, 3) uint8 image; width = tile, or 2 * tile with
        depth (and then at most 3 columns).
    """
    import cv2

    count = frames.shape[0]
    picks = np.unique(np.round(np.linspace(0, count - 1, min(count, max_tiles))).astype(int))
    width = tile if depth is None else 2 * tile
    columns = min(columns if depth is None else min(columns, 3), len(picks))
    rows = int(np.ceil(len(picks) / columns))
    label_h = 16
    sheet = np.full((rows * (tile + label_h), columns * width, 3), 32, np.uint8)
    if areas is None:
        areas = masks.reshape(count, -1).mean(axis=1) / 255.0
    for slot, index in enumerate(picks):
        row, col = divmod(slot, columns)
        image = overlay(frames[index], masks[index])
        image = cv2.resize(image, (tile, tile), interpolation=cv2.INTER_AREA)
        y, x = row * (tile + label_h), col * width
        sheet[y:y + tile, x:x + tile] = image
        if depth is not None:
            picture = depth_tile(depth[index], masks[index], near_is_large=depth_kind != "depth")
            sheet[y:y + tile, x + tile:x + width] = cv2.resize(picture, (tile, tile),
                                                              interpolation=cv2.INTER_NEAREST)
        text = f"#{index} t={times[index]:.2f} {100 * areas[index]:.1f}%"
        cv2.putText(sheet, text, (x + 3, y + tile + 12), cv2.FONT_HERSHEY_SIMPLEX, 0.36,
                    (235, 235, 235), 1, cv2.LINE_AA)
    return sheet
