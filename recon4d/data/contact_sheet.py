"""A contact sheet: frames in a grid with their masks overlaid, for a person to check the ingest.

Outside the mask the frame is dimmed and tinted magenta; the mask outline is drawn in green; each
tile is labelled with its frame index, time and mask area. A mask that covers background or
misses part of the object is visible at a glance.
"""

from __future__ import annotations

import numpy as np


def overlay(frame: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 frame with (H, W) uint8 mask shown: tinted background, green outline."""
    import cv2

    alpha = (mask.astype(np.float32) / 255.0)[..., None]
    tint = np.array([200, 40, 200], np.float32)
    out = frame.astype(np.float32) * alpha + (0.45 * frame + 0.55 * tint) * (1.0 - alpha)
    out = np.clip(out, 0, 255).astype(np.uint8)
    contours, _ = cv2.findContours((mask >= 128).astype(np.uint8), cv2.RETR_LIST,
                                   cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(out, contours, -1, (0, 230, 0), 1)
    return out


def contact_sheet(frames: np.ndarray, masks: np.ndarray, times: np.ndarray,
                  areas: np.ndarray | None = None, max_tiles: int = 24, tile: int = 160,
                  columns: int = 6) -> np.ndarray:
    """A grid of up to ``max_tiles`` evenly spaced frames with mask overlays.

    Args:
        frames: (F, H, W, 3) uint8 RGB.
        masks: (F, H, W) uint8.
        times: (F,) normalised times.
        areas: (F,) mask area fractions for the labels (computed if None).

    Returns:
        (rows * (tile + 16), columns * tile, 3) uint8 image.
    """
    import cv2

    count = frames.shape[0]
    picks = np.unique(np.round(np.linspace(0, count - 1, min(count, max_tiles))).astype(int))
    columns = min(columns, len(picks))
    rows = int(np.ceil(len(picks) / columns))
    label_h = 16
    sheet = np.full((rows * (tile + label_h), columns * tile, 3), 32, np.uint8)
    if areas is None:
        areas = masks.reshape(count, -1).mean(axis=1) / 255.0
    for slot, index in enumerate(picks):
        row, col = divmod(slot, columns)
        image = overlay(frames[index], masks[index])
        image = cv2.resize(image, (tile, tile), interpolation=cv2.INTER_AREA)
        y, x = row * (tile + label_h), col * tile
        sheet[y:y + tile, x:x + tile] = image
        text = f"#{index} t={times[index]:.2f} {100 * areas[index]:.1f}%"
        cv2.putText(sheet, text, (x + 3, y + tile + 12), cv2.FONT_HERSHEY_SIMPLEX, 0.36,
                    (235, 235, 235), 1, cv2.LINE_AA)
    return sheet
