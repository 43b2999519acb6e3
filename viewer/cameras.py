"""Conversions between a viser browser camera and recon4d :class:`~recon4d.render.types.Cameras`.

viser reports each client's camera as ``T_world_camera`` in the OpenCV convention (+z forward,
+y down, +x right): ``wxyz`` is the camera-to-world rotation, ``position`` the camera centre, and
``fov`` the VERTICAL field of view in radians. recon4d wants world-to-camera ``viewmats`` and pixel
intrinsics, so the conversion is one matrix inverse and a pinhole from the fov; no axis flips.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# Shared numpy rotation helpers (one implementation for the exporter and the viewer).
from recon4d.export.transforms import matrix_to_quat_wxyz, quat_wxyz_to_matrix  # noqa: F401


@dataclass
class ViewPose:
    """A viewing camera as viser holds it.

    Attributes:
        wxyz: (4,) camera-to-world rotation, OpenCV axes.
        position: (3,) camera centre, world units.
        fov_y: vertical field of view, radians.
    """

    wxyz: np.ndarray
    position: np.ndarray
    fov_y: float

    def cam2world(self) -> np.ndarray:
        """(4, 4) camera-to-world."""
        pose = np.eye(4)
        pose[:3, :3] = quat_wxyz_to_matrix(self.wxyz)
        pose[:3, 3] = self.position
        return pose

    def forward(self) -> np.ndarray:
        """(3,) unit viewing direction (camera +z) in world space."""
        return quat_wxyz_to_matrix(self.wxyz)[:, 2]

    def up(self) -> np.ndarray:
        """(3,) unit image-up direction (camera -y) in world space."""
        return -quat_wxyz_to_matrix(self.wxyz)[:, 1]


def render_size(aspect: float, max_side: int) -> tuple[int, int]:
    """(width, height) with the browser's ``aspect`` = width / height, longest side ``max_side``."""
    aspect = aspect if math.isfinite(aspect) and aspect > 0 else 1.0
    if aspect >= 1.0:
        return max_side, max(1, int(round(max_side / aspect)))
    return max(1, int(round(max_side * aspect))), max_side


def pose_to_cameras(pose: ViewPose, width: int, height: int, device="cpu"):
    """One recon4d camera (C = 1) that sees what the browser sees, at ``width`` x ``height`` px.

    Square pixels, principal point at the image centre, focal length from the vertical fov.
    """
    import torch

    from recon4d.render.types import Cameras

    focal = 0.5 * height / math.tan(0.5 * pose.fov_y)
    K = np.array([[focal, 0.0, 0.5 * width], [0.0, focal, 0.5 * height], [0.0, 0.0, 1.0]])
    viewmat = np.linalg.inv(pose.cam2world())
    return Cameras(torch.as_tensor(viewmat[None], dtype=torch.float32, device=device),
                   torch.as_tensor(K[None], dtype=torch.float32, device=device),
                   int(width), int(height))


def camera_to_pose(viewmat: np.ndarray, K: np.ndarray, height: int) -> ViewPose:
    """The viser pose of an input camera: (4, 4) world-to-camera ``viewmat``, (3, 3) ``K``."""
    cam2world = np.linalg.inv(np.asarray(viewmat, np.float64))
    fov_y = 2.0 * math.atan(0.5 * height / float(K[1][1]))
    return ViewPose(matrix_to_quat_wxyz(cam2world[:3, :3]), cam2world[:3, 3].copy(), fov_y)
