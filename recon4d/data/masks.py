"""Foreground masks: background keying for near-uniform backgrounds, GrabCut refinement, checks.

Generated object videos sit on a near-uniform background (about 250-255 white, never exact, with
compression noise). :func:`key_background` estimates its colour from the image border, marks
pixels far from it in RGB, cleans the result (small specks removed, gaps closed, the main
component(s) kept, small holes filled) and softens the edge from the colour distance.
All masks here are uint8 (F, H, W), 0 = background, 255 = object.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from recon4d.errors import UserError
from recon4d.utils import console

EMPTY_AREA = 1e-4   # a mask covering less than this fraction of the frame counts as empty
FULL_AREA = 0.995   # ... and more than this as full


@dataclass
class KeyResult:
    """Output of :func:`key_background`.

    Attributes:
        masks: (F, H, W) uint8 soft masks.
        background: (3,) RGB in [0, 1], the background colour (median over frames; each frame is
            keyed against its own border colour).
        tolerance: the colour distance threshold used (RGB Euclidean, [0, sqrt(3)]).
        border_agreement: fraction of border pixels within tolerance of the background colour.
    """

    masks: np.ndarray
    background: np.ndarray
    tolerance: float
    border_agreement: float
    notes: dict = field(default_factory=dict)


def border_pixels(frames: np.ndarray, width: int | None = None) -> np.ndarray:
    """(F, N, 3) uint8 pixels from a ``width``-pixel strip around each frame's border."""
    height, wide = frames.shape[1:3]
    width = width or max(2, round(0.01 * min(height, wide)))
    strips = [frames[:, :width], frames[:, -width:], frames[:, width:-width, :width],
              frames[:, width:-width, -width:]]
    return np.concatenate([s.reshape(frames.shape[0], -1, 3) for s in strips], axis=1)


def estimate_background(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame background colours and the border pixels' distances to them.

    Per frame, because generated clips drift in exposure; the median is robust to an object
    touching part of the border.

    Returns:
        (colours (F, 3) float in [0, 1], distances (F, N) of border pixels in the same units).
    """
    border = border_pixels(frames).astype(np.float32) / 255.0
    colours = np.median(border, axis=1)
    return colours, np.linalg.norm(border - colours[:, None], axis=2)


def pick_tolerance(border_distances: np.ndarray) -> float:
    """Keying threshold from the background's own noise: well above its 99th percentile.

    Border pixels nearer than 0.15 to the background colour are taken as background samples;
    the threshold is 2x their 99th percentile plus a floor, clamped to [0.06, 0.25].
    """
    near = border_distances[border_distances < 0.15]
    noise = float(np.percentile(near, 99)) if near.size else 0.05
    return float(np.clip(2.0 * noise + 0.04, 0.06, 0.25))


def clean_mask(hard: np.ndarray, min_part: float = 0.05, hole_fraction: float = 0.02) -> np.ndarray:
    """Morphological cleanup of one binary mask (H, W) bool -> bool.

    Steps: drop specks, close 1-2 pixel gaps, keep the largest component and any other at least
    ``min_part`` of its area (detached limbs, thrown props), fill enclosed holes smaller than
    ``hole_fraction`` of the object area (near-white patches inside the object) while keeping
    large enclosed background regions (the space between an arm and the body).
    """
    import cv2

    mask = hard.astype(np.uint8)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, kernel)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if count <= 1:
        return np.zeros_like(hard, dtype=bool)
    areas = stats[1:, cv2.CC_STAT_AREA]
    largest = int(areas.max())
    keep = np.zeros(count, bool)
    keep[1:] = areas >= max(min_part * largest, 4)
    mask = keep[labels]
    # Holes: background components that do not touch the image border.
    inverse = (~mask).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(inverse, connectivity=4)
    height, width = mask.shape
    x, y, w, h, area = (stats[:, k] for k in (cv2.CC_STAT_LEFT, cv2.CC_STAT_TOP, cv2.CC_STAT_WIDTH,
                                              cv2.CC_STAT_HEIGHT, cv2.CC_STAT_AREA))
    touches = (x == 0) | (y == 0) | (x + w == width) | (y + h == height)
    fill = ~touches & (area <= hole_fraction * mask.sum())
    fill[0] = False  # label 0 is the object itself in the inverted image
    mask = mask | fill[labels]
    return mask


def soften_edge(mask: np.ndarray, distance: np.ndarray, tolerance: float) -> np.ndarray:
    """Soft uint8 mask from a binary one, with alpha estimated in a band around the edge.

    An edge pixel that blends object colour o and background b with coverage a sits at colour
    distance a * |o - b| from the background. In a band of 1 pixel either side of the edge,
    |o - b| is taken as the largest distance among object pixels within 2 pixels, so
    alpha = d / that (minus the background noise floor, ``tolerance / 2``); elsewhere the binary
    decision holds.
    """
    import cv2

    kernel = np.ones((3, 3), np.uint8)
    m8 = mask.astype(np.uint8)
    band = (cv2.dilate(m8, kernel) - cv2.erode(m8, kernel)).astype(bool)
    if not band.any():
        return m8 * 255
    floor = 0.5 * tolerance
    local = cv2.dilate((distance * mask).astype(np.float32), np.ones((5, 5), np.uint8))
    soft = np.clip((distance - floor) / np.maximum(local - floor, 1e-3), 0.0, 1.0)
    alpha = np.where(band, soft, mask.astype(np.float32))
    return (alpha * 255.0 + 0.5).astype(np.uint8)


def colour_distance(frame: np.ndarray, colour: np.ndarray) -> np.ndarray:
    """(H, W) float32 RGB Euclidean distance of a uint8 frame (H, W, 3) to ``colour`` in [0, 1]."""
    diff = frame.astype(np.float32) - np.asarray(colour, np.float32) * 255.0
    return np.sqrt(np.einsum("ijk,ijk->ij", diff, diff)) / 255.0


def key_background(frames: np.ndarray, tolerance: float = 0.0) -> KeyResult:
    """Masks of a near-uniform-background clip by colour distance to each frame's border colour.

    Args:
        frames: (F, H, W, 3) uint8 RGB.
        tolerance: RGB distance threshold in [0, 1]; 0 = pick it from the border noise.

    Raises:
        UserError: when the border is not a near-uniform colour (keying cannot work).
    """
    colours, border_dist = estimate_background(frames)
    tol = float(tolerance) if tolerance > 0 else pick_tolerance(border_dist.ravel())
    agreement = float((border_dist < tol).mean())
    if agreement < 0.5:
        raise UserError(f"the background is not a near-uniform colour (only {agreement:.0%} of "
                        "the border is close to its median colour), so automatic keying cannot "
                        "separate the object: pass masks with --masks, or RGBA frames")
    masks = np.empty(frames.shape[:3], np.uint8)
    for i in console.track(range(frames.shape[0]), description="keying background"):
        distance = colour_distance(frames[i], colours[i])
        hard = clean_mask(distance > tol)
        masks[i] = soften_edge(hard, distance, tol)
    return KeyResult(masks, np.median(colours, axis=0), tol, agreement)


def grabcut_refine(frames: np.ndarray, masks: np.ndarray, iterations: int = 3) -> np.ndarray:
    """Refine masks with OpenCV GrabCut seeded by them (eroded = sure object, far = sure bg).

    Args:
        frames: (F, H, W, 3) uint8 RGB.
        masks: (F, H, W) uint8 initial masks.

    Returns:
        (F, H, W) uint8 refined masks (binary, edge softened by a 1-pixel blur).
    """
    import cv2

    out = np.empty_like(masks)
    size = max(masks.shape[1:])
    radius = max(3, round(0.03 * size))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    for i in console.track(range(frames.shape[0]), description="grabcut"):
        binary = (masks[i] >= 128).astype(np.uint8)
        if binary.sum() == 0 or binary.all():
            out[i] = masks[i]
            continue
        seed = np.full(binary.shape, cv2.GC_PR_BGD, np.uint8)
        seed[binary == 1] = cv2.GC_PR_FGD
        seed[cv2.erode(binary, kernel) == 1] = cv2.GC_FGD
        seed[cv2.dilate(binary, kernel) == 0] = cv2.GC_BGD
        bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
        bgr = np.ascontiguousarray(frames[i][..., ::-1])
        try:
            cv2.grabCut(bgr, seed, None, bgd, fgd, iterations, cv2.GC_INIT_WITH_MASK)
        except cv2.error:  # degenerate colour models: keep the seed mask
            out[i] = masks[i]
            continue
        refined = np.isin(seed, (cv2.GC_FGD, cv2.GC_PR_FGD)).astype(np.float32)
        out[i] = (np.clip(cv2.GaussianBlur(refined, (3, 3), 0.6), 0, 1) * 255 + 0.5).astype(np.uint8)
    return out


def mask_areas(masks: np.ndarray) -> np.ndarray:
    """(F,) fraction of each frame covered by the mask (soft values summed)."""
    # Accumulate in float64 without a float64 copy of the masks: at full input resolution that
    # copy was 8x the masks (4 GB for 60 frames of 4K), the peak of a whole ingest.
    return masks.reshape(masks.shape[0], -1).mean(axis=1, dtype=np.float64) / 255.0


def find_jumps(areas: np.ndarray, threshold: float = 0.35) -> list[int]:
    """Frames whose mask area differs from both neighbours by more than ``threshold`` (relative).

    A real motion changes the area gradually; a keying failure or a distorted generated frame
    makes one frame stand out from the frames on either side. End frames compare with their one
    neighbour.
    """
    jumps = []
    count = len(areas)
    for i in range(count):
        neighbours = [areas[j] for j in (i - 1, i + 1) if 0 <= j < count]
        changes = [abs(areas[i] - a) / max(areas[i], a, 1e-9) for a in neighbours]
        if changes and min(changes) > threshold:
            jumps.append(i)
    return jumps


def check_sequence(masks: np.ndarray, masks_from: str) -> np.ndarray:
    """Refuse all-empty / all-full mask sequences; warn about empty frames. Returns the areas."""
    areas = mask_areas(masks)
    hint = {"keying": "the background keying found no object; pass --masks or check that the "
                      "object differs from the background colour",
            "alpha": "the alpha channel is empty; pass --mask-source key or --masks",
            }.get(masks_from, "check the mask files (white = object)")
    if (areas < EMPTY_AREA).all():
        raise UserError(f"every mask is empty (masks from {masks_from}): {hint}")
    if (areas > FULL_AREA).all():
        raise UserError(f"every mask covers the whole frame (masks from {masks_from}), so there is "
                        "no background to separate: pass masks where white is the object only")
    empty = [i for i, a in enumerate(areas) if a < EMPTY_AREA]
    if empty:
        console.warn(f"{len(empty)} frame(s) have an empty mask: {_list(empty)}")
    return areas


def frame_edge_cuts(masks: np.ndarray, strip: int = 2, min_share: float = 0.01) -> dict[str, list[int]]:
    """Frames in which the object runs off each edge of the frame, {side: [frame indices]}.

    A side counts when mask pixels (>= 128) in its outer ``strip`` rows or columns span more than
    ``min_share`` of its length: a subject whose feet, tail or perch leave the picture, whose
    cut-off part no reconstruction can recover. ``masks``: (F, H, W) uint8 at the input's size,
    before any crop (a crop's padding is not the frame's edge)."""
    solid = masks >= 128
    height, width = solid.shape[1:3]
    strips = {"top": solid[:, :strip, :].any(axis=1), "bottom": solid[:, -strip:, :].any(axis=1),
              "left": solid[:, :, :strip].any(axis=2), "right": solid[:, :, -strip:].any(axis=2)}
    cuts = {}
    for side, covered in strips.items():
        share = covered.sum(axis=1) / (width if side in ("top", "bottom") else height)
        frames = [int(i) for i in np.flatnonzero(share > min_share)]
        if frames:
            cuts[side] = frames
    return cuts


def edge_cut_warning(cuts: dict[str, list[int]], frame_count: int) -> str | None:
    """One warning line for :func:`frame_edge_cuts`' result (None when nothing is cut)."""
    if not cuts:
        return None
    sides = ", ".join(f"{side} ({len(frames)} of {frame_count} frames)" for side, frames in cuts.items())
    return (f"the object runs off the frame's edge: {sides}; what lies outside the frame cannot "
            "be reconstructed and the model ends there (use a clip framed with some margin if "
            "the whole object matters)")


def _list(indices: list[int], limit: int = 12) -> str:
    text = ", ".join(str(i) for i in indices[:limit])
    return text + (f" ... ({len(indices)} in all)" if len(indices) > limit else "")
