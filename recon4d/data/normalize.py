"""Normalisation: crop to the object, pad to square, resize; normalised times.

Pixel convention (the project's, as gsplat's): pixel (i, j) covers [i, i+1) x [j, j+1) and its
centre is at (i + 0.5, j + 0.5), so a centred camera has cx = W / 2. Cropping a square box with
top-left (x0, y0) and side s, then resizing it to R pixels, maps a source point u to
R / s * (u - x0): :func:`box_affine` gives that 3x3 map, which also carries intrinsics
(K' = A @ K).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SquareBox:
    """A square crop in source pixels; it may extend past the image (that part is padded).

    Attributes:
        x0, y0: top-left corner (integer pixels, may be negative).
        side: side length in pixels.
    """

    x0: int
    y0: int
    side: int

    def to_json(self) -> dict:
        return {"x0": self.x0, "y0": self.y0, "side": self.side}


def union_box(masks: np.ndarray, threshold: int = 128) -> tuple[int, int, int, int] | None:
    """(x_min, y_min, x_max, y_max) exclusive bounds of all frames' masks >= threshold, or None."""
    any_mask = masks.max(axis=0) >= threshold  # no (F, H, W) boolean copy of a full-size clip
    ys = np.flatnonzero(any_mask.any(axis=1))
    xs = np.flatnonzero(any_mask.any(axis=0))
    if ys.size == 0:
        return None
    return int(xs[0]), int(ys[0]), int(xs[-1]) + 1, int(ys[-1]) + 1


def crop_box(masks: np.ndarray, margin: float) -> SquareBox:
    """Square box around the union of mask boxes, grown by ``margin`` x its longer side per side."""
    height, width = masks.shape[1:3]
    bounds = union_box(masks)
    if bounds is None:
        return full_box(width, height)
    x_min, y_min, x_max, y_max = bounds
    longest = max(x_max - x_min, y_max - y_min)
    side = max(2, int(np.ceil(longest * (1.0 + 2.0 * margin))))
    x0 = int(np.floor((x_min + x_max - side) / 2.0))
    y0 = int(np.floor((y_min + y_max - side) / 2.0))
    return SquareBox(x0, y0, side)


def full_box(width: int, height: int) -> SquareBox:
    """The whole frame, padded symmetrically to a square."""
    side = max(width, height)
    return SquareBox(-((side - width) // 2), -((side - height) // 2), side)


def box_affine(box: SquareBox, resolution: int) -> np.ndarray:
    """(3, 3) map from source pixel coordinates to output pixel coordinates."""
    scale = resolution / box.side
    return np.array([[scale, 0.0, -scale * box.x0],
                     [0.0, scale, -scale * box.y0],
                     [0.0, 0.0, 1.0]])


def crop_resize(image: np.ndarray, box: SquareBox, resolution: int, fill) -> np.ndarray:
    """Cut ``box`` out of ``image`` (H, W[, C]), padding with ``fill``, and resize to resolution².

    Area filtering when shrinking (no aliasing), bilinear when enlarging; an exact copy when the
    box already is the whole image at the target size.
    """
    import cv2

    height, width = image.shape[:2]
    shape = (box.side, box.side) + image.shape[2:]
    canvas = np.empty(shape, image.dtype)
    canvas[...] = np.asarray(fill, dtype=image.dtype)
    sx0, sy0 = max(box.x0, 0), max(box.y0, 0)
    sx1, sy1 = min(box.x0 + box.side, width), min(box.y0 + box.side, height)
    if sx1 > sx0 and sy1 > sy0:
        canvas[sy0 - box.y0:sy1 - box.y0, sx0 - box.x0:sx1 - box.x0] = image[sy0:sy1, sx0:sx1]
    if box.side == resolution:
        return canvas
    interpolation = cv2.INTER_AREA if box.side > resolution else cv2.INTER_LINEAR
    return cv2.resize(canvas, (resolution, resolution), interpolation=interpolation)


def normalise_times(source_indices: list[int],
                    timestamps: np.ndarray | None = None) -> tuple[np.ndarray, str]:
    """Times in [0, 1] over the kept frames: from container timestamps when they are usable.

    Timestamps must be strictly increasing to be used (some containers repeat or omit them);
    otherwise the source frame numbers are used, which assumes a constant frame rate.

    Returns:
        ((F,) float64 times, "timestamps" or "frame_index").
    """
    if timestamps is not None and len(timestamps) >= 2 and np.all(np.diff(timestamps) > 0):
        values, origin = np.asarray(timestamps, np.float64), "timestamps"
    else:
        values, origin = np.asarray(source_indices, np.float64), "frame_index"
    span = values[-1] - values[0]
    if len(values) < 2 or span <= 0:
        return np.zeros(len(values)), origin
    return np.clip((values - values[0]) / span, 0.0, 1.0), origin
