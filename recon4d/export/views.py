"""Virtual cameras around an object: a sphere of views for TSDF fusion, an orbit for videos.

All cameras are OpenCV pinhole cameras (x right, y down, z forward) returned as
:class:`recon4d.render.types.Cameras` with world-to-camera ``viewmats``.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from recon4d.render.types import Cameras


def look_at(eyes: np.ndarray, target: np.ndarray, up: np.ndarray) -> np.ndarray:
    """(C, 3) camera centres looking at ``target`` (3,) -> (C, 4, 4) world-to-camera, OpenCV.

    ``up`` (3,) is the world direction that appears upwards in the image (image y runs down).
    Where a view direction is parallel to ``up`` another helper axis is used.
    """
    eyes = np.asarray(eyes, dtype=np.float64).reshape(-1, 3)
    forward = np.asarray(target, dtype=np.float64)[None] - eyes
    forward /= np.linalg.norm(forward, axis=1, keepdims=True)
    down = -np.asarray(up, dtype=np.float64) / np.linalg.norm(up)
    down = np.broadcast_to(down, forward.shape).copy()
    parallel = np.abs((forward * down).sum(1)) > 0.999
    if parallel.any():
        helper = np.array([1.0, 0.0, 0.0]) if abs(down[0, 0]) < 0.9 else np.array([0.0, 0.0, 1.0])
        down[parallel] = helper
    right = np.cross(down, forward)
    right /= np.linalg.norm(right, axis=1, keepdims=True)
    down = np.cross(forward, right)
    cam2world = np.zeros((len(eyes), 4, 4))
    cam2world[:, :3, 0], cam2world[:, :3, 1], cam2world[:, :3, 2] = right, down, forward
    cam2world[:, :3, 3] = eyes
    cam2world[:, 3, 3] = 1.0
    return np.linalg.inv(cam2world)


def fibonacci_directions(count: int) -> np.ndarray:
    """(count, 3) unit vectors spread evenly over the sphere (golden-angle spiral)."""
    index = np.arange(count) + 0.5
    z = 1.0 - 2.0 * index / count
    radius = np.sqrt(np.clip(1.0 - z * z, 0.0, None))
    phi = index * math.pi * (3.0 - math.sqrt(5.0))
    return np.stack([radius * np.cos(phi), radius * np.sin(phi), z], 1)


def _intrinsics(count: int, size: int, fov_deg: float) -> np.ndarray:
    focal = 0.5 * size / math.tan(math.radians(fov_deg) / 2)
    k = np.array([[focal, 0.0, size / 2], [0.0, focal, size / 2], [0.0, 0.0, 1.0]])
    return np.broadcast_to(k, (count, 3, 3)).copy()


def fit_distance(radius: float, fov_deg: float, margin: float = 1.1) -> float:
    """Camera distance at which a sphere of ``radius`` fills the field of view (with margin)."""
    return margin * radius / math.sin(math.radians(fov_deg) / 2)


def sphere_cameras(center: np.ndarray, radius: float, count: int = 24, size: int = 256,
                   fov_deg: float = 40.0, up: np.ndarray | None = None) -> Cameras:
    """``count`` square cameras of ``size`` pixels on a sphere, each seeing the whole ball
    (``center`` (3,), ``radius`` world units) around which they sit."""
    up = np.array([0.0, -1.0, 0.0]) if up is None else np.asarray(up, dtype=np.float64)
    center = np.asarray(center, dtype=np.float64)
    eyes = center[None] + fit_distance(radius, fov_deg) * fibonacci_directions(count)
    viewmats = look_at(eyes, center, up)
    return Cameras(torch.tensor(viewmats, dtype=torch.float32),
                   torch.tensor(_intrinsics(count, size, fov_deg), dtype=torch.float32), size, size)


def orbit_cameras(center: np.ndarray, radius: float, up: np.ndarray, start_eye: np.ndarray,
                  count: int, size: int = 256, fov_deg: float = 40.0) -> Cameras:
    """``count`` cameras on one turn around ``up`` through ``center``, starting at the direction
    of ``start_eye`` (keeping its elevation), each framing the ball of ``radius``."""
    center = np.asarray(center, dtype=np.float64)
    up = np.asarray(up, dtype=np.float64) / np.linalg.norm(up)
    offset = np.asarray(start_eye, dtype=np.float64) - center
    norm = np.linalg.norm(offset)
    offset = offset / norm if norm > 1e-9 else np.cross(up, [1.0, 0.0, 0.0])
    height = float(offset @ up)
    planar = offset - height * up
    if np.linalg.norm(planar) < 1e-6:  # looking straight down the axis: pick any side
        planar = np.cross(up, [1.0, 0.0, 0.0] if abs(up[0]) < 0.9 else [0.0, 0.0, 1.0])
        height = 0.5
    planar /= np.linalg.norm(planar)
    side = np.cross(up, planar)
    distance = fit_distance(radius, fov_deg)
    angles = 2 * math.pi * np.arange(count) / count
    horizontal = math.sqrt(max(1.0 - height * height, 1e-6))
    dirs = (np.cos(angles)[:, None] * planar + np.sin(angles)[:, None] * side) * horizontal
    eyes = center + distance * (dirs + height * up)
    viewmats = look_at(eyes, center, up)
    return Cameras(torch.tensor(viewmats, dtype=torch.float32),
                   torch.tensor(_intrinsics(count, size, fov_deg), dtype=torch.float32), size, size)


def bounding_sphere(points: np.ndarray, quantile: float = 1.0) -> tuple[np.ndarray, float]:
    """Centre (3,) of the bounding box of ``points`` (M, 3) and the radius covering them.

    ``quantile`` < 1 ignores the farthest outliers (stray surfels) when sizing the radius.
    """
    points = np.asarray(points, dtype=np.float64)
    lo, hi = points.min(0), points.max(0)
    center = 0.5 * (lo + hi)
    dist = np.linalg.norm(points - center, axis=1)
    radius = float(np.quantile(dist, quantile)) if len(dist) else 1.0
    return center, max(radius, 1e-6)
