"""Colour encodings of the exported files.

The fit's colours are the video's own values, sRGB-encoded. glTF's COLOR_0 and USD's
``displayColor`` hold linear light, while PNG textures and PLY vertex colours stay sRGB.
"""

from __future__ import annotations

import numpy as np


def srgb_to_linear(rgb: np.ndarray) -> np.ndarray:
    """sRGB-encoded values in [0, 1] -> linear light in [0, 1] (IEC 61966-2-1), any shape."""
    rgb = np.clip(np.asarray(rgb, dtype=np.float64), 0.0, 1.0)
    return np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
