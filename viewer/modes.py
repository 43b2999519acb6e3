"""Render modes: how a :class:`~recon4d.render.types.RenderOutput` becomes the picture shown.

Every mode returns an (H, W, 3) float32 image in [0, 1]. ``Bones`` is not a post-process: the
surfels themselves are recoloured by their dominant bone (argmax of the skinning weights of their
canonical centre) before rendering, so the colours move with the surface.
"""

from __future__ import annotations

import colorsys

import numpy as np

RENDER_MODES = ("RGB", "Alpha", "Depth", "Normals", "Bones")
"""The choices of the viewer's render-mode dropdown."""


def bone_palette(num_bones: int) -> np.ndarray:
    """(B, 3) distinct colours in [0, 1]: hues stepped by the golden ratio, so neighbours differ."""
    hues = (np.arange(max(num_bones, 1)) * 0.618033988749895) % 1.0
    return np.array([colorsys.hsv_to_rgb(h, 0.75, 0.95) for h in hues], np.float32)[:num_bones]


def colorize_depth(depth: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """(H, W) camera z and alpha -> (H, W, 3) colours: near = yellow, far = purple, empty = black.

    The range is the 2nd..98th percentile of the covered pixels (alpha > 0.5), so one stray
    surfel does not flatten the picture.
    """
    covered = alpha > 0.5
    out = np.zeros(depth.shape + (3,), np.float32)
    if not covered.any():
        return out
    near, far = np.percentile(depth[covered], [2.0, 98.0])
    x = np.clip((depth - near) / max(far - near, 1e-6), 0.0, 1.0)
    # A short perceptual ramp (yellow -> orange -> magenta -> purple), interpolated per channel.
    stops = np.array([[0.99, 0.91, 0.15], [0.97, 0.55, 0.22], [0.80, 0.23, 0.47],
                      [0.47, 0.10, 0.58], [0.20, 0.05, 0.45]], np.float32)
    pos = x * (len(stops) - 1)
    lo = np.floor(pos).astype(int).clip(0, len(stops) - 2)
    frac = (pos - lo)[..., None]
    colours = stops[lo] * (1 - frac) + stops[lo + 1] * frac
    return np.where(covered[..., None], colours, out) * np.clip(alpha, 0, 1)[..., None]


def colorize_normals(normal: np.ndarray, alpha: np.ndarray, background: np.ndarray) -> np.ndarray:
    """(H, W, 3) world-space normals (not unit: alpha-weighted sums) -> RGB = 0.5 * n + 0.5."""
    length = np.linalg.norm(normal, axis=-1, keepdims=True)
    unit = normal / np.maximum(length, 1e-8)
    a = np.clip(alpha, 0, 1)[..., None]
    return (0.5 * unit + 0.5) * a + background[None, None, :] * (1 - a)


def to_image(mode: str, rgb: np.ndarray, alpha: np.ndarray, depth: np.ndarray,
             normal: np.ndarray, background: np.ndarray) -> np.ndarray:
    """One camera's outputs (numpy, shapes as in RenderOutput without C) -> (H, W, 3) in [0, 1]."""
    if mode in ("RGB", "Bones"):
        image = rgb
    elif mode == "Alpha":
        image = np.repeat(alpha[..., None], 3, axis=-1)
    elif mode == "Depth":
        image = colorize_depth(depth, alpha)
    elif mode == "Normals":
        image = colorize_normals(normal, alpha, background)
    else:
        raise ValueError(f"mode: expected one of {RENDER_MODES}, got {mode!r}")
    return np.clip(image, 0.0, 1.0).astype(np.float32)
