"""How a decoded video frame is shown: the container's display matrix as array operations.

Phones store portrait video as landscape frames and mirrored (front-camera) video as unmirrored
frames, plus a 3x3 display matrix that players apply; decoding ignores it. This module turns a
frame's DISPLAYMATRIX side data into the quarter turns and flips that show it upright, the way
ffmpeg's autorotate does (fftools: a rotation of 90, 180 or 270 degrees, with the matrix's signs
choosing between a plain turn and a turn plus flip).

The matrix holds nine int32 values ``a b u c d v x y w`` (``a b c d`` in 16.16 fixed point);
the angle of its first column is ``atan2(b, a)``. Arrays are (H, W[, C]) with row 0 at the top.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DisplayOrientation:
    """The operations, applied in order, that show a stored frame as its player would.

    ``turns``: quarter turns counter-clockwise (0-3); ``flip_vertical``: rows reversed after the
    turns. Every rotation-and-mirror of the plane is one of these eight."""

    turns: int = 0
    flip_vertical: bool = False

    @property
    def is_identity(self) -> bool:
        return self.turns == 0 and not self.flip_vertical

    def apply(self, array: np.ndarray) -> np.ndarray:
        """(H, W[, C]) stored frame -> the displayed frame (a contiguous copy when it changes)."""
        if self.is_identity:
            return array
        shown = np.rot90(array, self.turns) if self.turns else array
        if self.flip_vertical:
            shown = shown[::-1]
        return np.ascontiguousarray(shown)

    def describe(self) -> str:
        """Words for a log line and the dataset's source record, e.g. 'turned 90 degrees'."""
        if self.is_identity:
            return "as stored"
        if self.flip_vertical and self.turns == 2:
            return "mirrored left to right"
        parts = [f"turned {90 * self.turns} degrees"] if self.turns else []
        if self.flip_vertical:
            parts.append("mirrored top to bottom")
        return " and ".join(parts)

    @property
    def rotation_deg(self) -> int:
        """The counter-clockwise turn, in degrees, before any flip."""
        return 90 * self.turns


def orientation_from_matrix(matrix) -> DisplayOrientation:
    """Nine display-matrix values (int32, ``a b u c d v x y w``) -> the DisplayOrientation.

    A rotation that is not a multiple of 90 degrees is rounded to the nearest quarter turn: phones
    write only those, and resampling the frame to an odd angle would blur it for no gain."""
    values = [float(v) for v in matrix]
    a, b, c, d = values[0], values[1], values[3], values[4]
    if math.hypot(a, c) == 0.0 or math.hypot(b, d) == 0.0:
        return DisplayOrientation()  # degenerate matrix: show the frame as stored, as players do
    angle = math.degrees(math.atan2(b / math.hypot(b, d), a / math.hypot(a, c)))
    quarter = int(round(angle / 90.0)) % 4
    # A pure rotation whose first column is turned by `angle` is shown turned by -angle
    # counter-clockwise (ffmpeg applies its "clock" transpose for 90). A mirror (negative
    # determinant) is shown turned by +angle and then flipped top to bottom. Both were read off
    # ffmpeg 9's autorotate on all eight orientations (tests/test_ingest.py holds the cases).
    if (a * d - b * c) >= 0:
        return DisplayOrientation(turns=(-quarter) % 4)
    return DisplayOrientation(turns=quarter, flip_vertical=True)


def frame_orientation(frame) -> DisplayOrientation:
    """A PyAV VideoFrame's DisplayOrientation, from its DISPLAYMATRIX side data (none: as stored)."""
    container = getattr(frame, "side_data", None) or ()
    for entry in container:
        # PyAV up to 18.1.0 iterates SideData objects; 18.1.1 iterates their types (enum keys,
        # the container mapping each to its SideData).
        side = entry if hasattr(entry, "type") else container[entry]
        kind = getattr(getattr(side, "type", entry), "name", "")
        if kind == "DISPLAYMATRIX":
            values = np.frombuffer(bytes(side), dtype="<i4")
            if values.size >= 9:
                return orientation_from_matrix(values[:9])
    return DisplayOrientation()
