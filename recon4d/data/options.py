"""Options of ingest, shared by ``recon4d ingest`` and ``recon4d fit`` (which ingests on the way).

A plain dataclass with no heavy imports, so CLI modules can embed it and keep ``--help`` fast.
Field docstrings are the ``--help`` text.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional, get_args

MaskSource = Literal["auto", "given", "alpha", "key"]
CameraMode = Literal["auto", "fixed", "orbit", "transforms"]
CropMode = Literal["auto", "on", "off"]
DepthKind = Literal["disparity", "depth"]
DEPTH_KINDS: tuple[str, ...] = get_args(DepthKind)


@dataclass
class IngestOptions:
    """How an input video becomes a dataset."""

    masks: Optional[Path] = None
    """Mask folder (PNG/JPG, one per frame, same order) or mask video; white = object."""

    mask_source: MaskSource = "auto"
    """auto: given masks, else the alpha channel, else background keying; or force one source."""

    grabcut: bool = False
    """Refine the masks with OpenCV GrabCut (slower; helps when object and background are close)."""

    key_tolerance: float = 0.0
    """Keying threshold (RGB distance, 0..1) under which a pixel is background; 0 = from the noise."""

    stride: int = 1
    """Keep every N-th source frame."""

    max_frames: Optional[int] = None
    """Keep at most this many frames, evenly spaced over the clip (after --stride)."""

    resolution: int = 256
    """Side of the square output frames in pixels."""

    crop: CropMode = "auto"
    """Crop to the union of the mask boxes plus --margin (auto: on, but off for transforms.json)."""

    margin: float = 0.1
    """Crop margin on each side, as a fraction of the mask box's longer side."""

    max_input_side: int = 4096
    """Frames whose longer side exceeds this are downscaled on reading (with a warning)."""

    camera: CameraMode = "auto"
    """Camera init: fixed (still), orbit (circling), transforms (auto: from the file, else fixed)."""

    fov_deg: float = 40.0
    """Field of view guess of the square output frames, in degrees (fixed and orbit cameras)."""

    distance: float = 2.7
    """Distance from the camera to the object centre, in scene units (fixed and orbit)."""

    sweep_deg: float = 360.0
    """Orbit: azimuth swept from the first to the last frame, in degrees."""

    elevation_deg: float = 0.0
    """Orbit: camera elevation above the object's equator, in degrees."""

    start_azimuth_deg: float = 0.0
    """Orbit: azimuth of the first frame, in degrees."""

    direction: Literal["ccw", "cw"] = "ccw"
    """Orbit: counter-clockwise (ccw) or clockwise (cw) seen from above."""

    depth: Optional[Path] = None
    """Optional depth maps, one per source frame, as a prior for the fit: a folder of .npy or
    greyscale PNG/TIFF maps, or one .npy/.npz array (frames, height, width). Relative maps from
    a monocular estimator are fine: the fit factors out each frame's scale (and, for
    disparity, offset)."""

    depth_kind: DepthKind = "disparity"
    """What --depth holds: disparity (inverse depth, what monocular estimators output; larger =
    nearer) or depth along the camera axis (larger = farther)."""

    flow: bool = True
    """Compute and cache DIS optical flow between neighbouring frames (forward and backward)."""

    overwrite: bool = False
    """Replace an existing output directory."""

    def validate(self) -> None:
        """Raise :class:`~recon4d.errors.UserError` on an option out of range."""
        from recon4d.errors import UserError

        if self.stride < 1:
            raise UserError(f"--stride must be >= 1, got {self.stride}")
        if self.max_frames is not None and self.max_frames < 2:
            raise UserError(f"--max-frames must be >= 2 (a motion needs two frames), got "
                            f"{self.max_frames}")
        if not 16 <= self.resolution <= 4096:
            raise UserError(f"--resolution must be between 16 and 4096 pixels, got "
                            f"{self.resolution}")
        if not 0.0 <= self.margin <= 2.0:
            raise UserError(f"--margin must be between 0 and 2, got {self.margin}")
        if self.max_input_side < 64:
            raise UserError(f"--max-input-side must be >= 64, got {self.max_input_side}")
        if not 1.0 <= self.fov_deg <= 170.0:
            raise UserError(f"--fov-deg must be between 1 and 170 degrees, got {self.fov_deg}")
        if not (math.isfinite(self.distance) and self.distance > 0.0):
            raise UserError(f"--distance must be a positive number, got {self.distance}")
        for option, value in (("--sweep-deg", self.sweep_deg),
                              ("--start-azimuth-deg", self.start_azimuth_deg)):
            if not math.isfinite(value):
                raise UserError(f"{option} must be a number of degrees, got {value}")
        if not -89.0 <= self.elevation_deg <= 89.0:
            raise UserError(f"--elevation-deg must be between -89 and 89, got "
                            f"{self.elevation_deg}")
        if not 0.0 <= self.key_tolerance < 1.0:
            raise UserError(f"--key-tolerance must be in [0, 1), got {self.key_tolerance}")
        if self.masks is not None and self.mask_source not in ("auto", "given"):
            raise UserError(f"--masks was given but --mask-source is '{self.mask_source}': drop "
                            "one of them")
