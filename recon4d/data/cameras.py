"""Camera initialisation for the fit, and the OpenGL <-> OpenCV conversion for transforms.json.

Project convention: OpenCV camera axes (x right, y down, z forward); ``viewmats`` are
world-to-camera 4x4; ``Ks`` are 3x3 in pixels with pixel centres at (i + 0.5, j + 0.5).

- ``fixed``: one still camera at the world origin looking down +z (viewmat = identity), so world
  axes are that camera's axes. The object is assumed centred on the optical axis at ``distance``
  scene units, which gives the fit a scale.
- ``orbit``: the object sits at the world origin; the camera circles it at ``distance`` with the
  given elevation, its azimuth sweeping ``sweep_deg`` from the first to the last frame (by
  normalised time). World "up" is -y, so azimuth 0 / elevation 0 is the fixed camera's pose moved
  back by ``distance`` (viewmat = translation (0, 0, distance)).
"""

from __future__ import annotations

import numpy as np

from recon4d.data.dataset import CameraSet

# OpenGL camera axes (x right, y up, z backward) <-> OpenCV (x right, y down, z forward).
GL_TO_CV = np.diag([1.0, -1.0, -1.0, 1.0])


def intrinsics_from_fov(fov_deg: float, width: int, height: int | None = None) -> np.ndarray:
    """(3, 3) pinhole K with the horizontal field of view ``fov_deg`` and a centred principal point."""
    height = width if height is None else height
    focal = 0.5 * width / np.tan(0.5 * np.radians(fov_deg))
    return np.array([[focal, 0.0, 0.5 * width], [0.0, focal, 0.5 * height], [0.0, 0.0, 1.0]])


def object_radius_guess(fov_deg: float, distance: float, extent_fraction: float) -> float:
    """Radius (scene units) of an object spanning ``extent_fraction`` of the frame at ``distance``."""
    return float(distance * np.tan(0.5 * np.radians(fov_deg)) * extent_fraction)


def fixed_cameras(num_frames: int, resolution: int, fov_deg: float, distance: float,
                  extent_fraction: float = 0.8) -> CameraSet:
    """Identity viewmats and a field-of-view K for every frame (see module docstring)."""
    K = intrinsics_from_fov(fov_deg, resolution)
    params = {
        "fov_deg": float(fov_deg), "distance": float(distance),
        "object_center": [0.0, 0.0, float(distance)],
        "object_radius": object_radius_guess(fov_deg, distance, extent_fraction),
        "world": "the fixed camera's frame (OpenCV: x right, y down, z forward)",
    }
    return CameraSet(np.tile(np.eye(4), (num_frames, 1, 1)), np.tile(K, (num_frames, 1, 1)),
                     "fixed", params)


def look_at_viewmat(center: np.ndarray, target: np.ndarray, down: np.ndarray) -> np.ndarray:
    """(4, 4) OpenCV world-to-camera for a camera at ``center`` looking at ``target``.

    ``down`` is the world direction that should appear as image-down (+y).
    """
    forward = target - center
    forward = forward / np.linalg.norm(forward)
    right = np.cross(down, forward)
    right = right / np.linalg.norm(right)
    image_down = np.cross(forward, right)
    rotation = np.stack([right, image_down, forward])
    viewmat = np.eye(4)
    viewmat[:3, :3] = rotation
    viewmat[:3, 3] = -rotation @ center
    return viewmat


def orbit_cameras(times: np.ndarray, resolution: int, fov_deg: float, distance: float,
                  sweep_deg: float = 360.0, elevation_deg: float = 0.0,
                  start_azimuth_deg: float = 0.0, direction: str = "ccw",
                  extent_fraction: float = 0.8) -> CameraSet:
    """Cameras circling the origin; azimuth = start + sign * sweep * t (t in [0, 1]).

    ``ccw`` (sign +1) moves the camera counter-clockwise seen from above (toward its own right
    at the start); camera centre = distance * (sin az cos el, -sin el, -cos az cos el).
    """
    sign = 1.0 if direction == "ccw" else -1.0
    azimuths = np.radians(start_azimuth_deg + sign * sweep_deg * np.asarray(times, np.float64))
    elevation = np.radians(elevation_deg)
    down = np.array([0.0, 1.0, 0.0])
    viewmats = []
    for az in azimuths:
        center = distance * np.array([np.sin(az) * np.cos(elevation), -np.sin(elevation),
                                      -np.cos(az) * np.cos(elevation)])
        viewmats.append(look_at_viewmat(center, np.zeros(3), down))
    K = intrinsics_from_fov(fov_deg, resolution)
    params = {
        "fov_deg": float(fov_deg), "distance": float(distance), "sweep_deg": float(sweep_deg),
        "elevation_deg": float(elevation_deg), "start_azimuth_deg": float(start_azimuth_deg),
        "direction": direction, "object_center": [0.0, 0.0, 0.0],
        "object_radius": object_radius_guess(fov_deg, distance, extent_fraction),
        "world": "object at the origin, up = -y (OpenCV-style world)",
    }
    return CameraSet(np.stack(viewmats), np.tile(K, (len(azimuths), 1, 1)), "orbit", params)


def opengl_c2w_to_viewmat(c2w: np.ndarray) -> np.ndarray:
    """nerfstudio/OpenGL camera-to-world (..., 4, 4) -> OpenCV world-to-camera (..., 4, 4)."""
    c2w = np.asarray(c2w, np.float64)
    return np.linalg.inv(c2w @ GL_TO_CV)


def viewmat_to_opengl_c2w(viewmat: np.ndarray) -> np.ndarray:
    """OpenCV world-to-camera (..., 4, 4) -> nerfstudio/OpenGL camera-to-world (..., 4, 4)."""
    return np.linalg.inv(np.asarray(viewmat, np.float64)) @ GL_TO_CV


def transform_intrinsics(Ks: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Intrinsics after an image-space affine map (crop/scale): K' = A @ K, for (..., 3, 3)."""
    return np.asarray(affine, np.float64) @ np.asarray(Ks, np.float64)
