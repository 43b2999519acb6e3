"""Bilateral symmetry: find an upright mirror plane from one view, and pull the shape onto it.

One camera sees one side of an object; most subjects of generated clips (animals, people,
robots) are mirror-symmetric about an upright plane. Reflecting the seen side through that
plane gives the unseen side. The plane is found from what the view shows, with no prior on
where it lies: every candidate plane reflects the visible surface points (back-projected from
a depth map) somewhere, and a correct plane never sends them where the view says nothing can be,
namely outside the silhouette or in front of the visible surface; reflections that land on the
visible surface must land near a visible point; reflections that land behind it are unseen and
free. The candidate with the smallest such violation wins.

The search can be held to planes through a given point. One fixed view does not fix how far
away the object is (a depth map's scale is unknown, a fit's visible surface can sit a few percent
too deep), while the best direction does not depend on that scale: scaling the visible points
about the camera keeps every projection and every in-front/behind relation. So a fit takes the
direction from a free search and puts the plane through the object centre it assumes (default
scene with exact depth maps, the term from the first step: novel views 23.9 -> 27.1 dB over
three seeds; with the offset found from the map instead, 25.1 dB; docs/fit.md). A relative
(disparity) map also has an unknown offset, which bends the back-projected shape:
:func:`mirror_plane_from_disparity` searches it.

Frames: everything is in one frame's world coordinates (OpenCV cameras, world-to-camera
``viewmat``). "Upright" means the plane contains the world's y axis (for a fixed camera the
camera's own vertical; for the orbit and synthetic cameras the world up).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from recon4d.model.init import project_points, sample_nearest
from recon4d.model.rotations import quat_to_rotmat


@dataclass(frozen=True)
class MirrorPlane:
    """Points x with ``normal . x = offset``; ``normal`` (3,) unit (horizontal, y = 0, as
    estimated in the world; any direction once pulled back into a canonical frame).
    ``violation`` is the estimate's score, in units of the visible points' extent."""

    normal: tuple[float, float, float]
    offset: float
    violation: float

    def pulled_back(self, quat: Tensor, trans: Tensor) -> "MirrorPlane":
        """The plane in the frame a rigid motion x -> R(quat) y + trans maps from: for a plane
        found in the world, its place on the canonical shape (wxyz ``quat`` (4,), ``trans`` (3,))."""
        rot = quat_to_rotmat(quat.detach().double().reshape(1, 4))[0]
        n = torch.tensor(self.normal, dtype=torch.float64)
        normal = rot.T @ n
        offset = self.offset - float(n @ trans.detach().double().reshape(3))
        return MirrorPlane(tuple(float(v) for v in normal), offset, self.violation)

    def reflect(self, points: Tensor) -> Tensor:
        """(N, 3) -> (N, 3) mirror images through the plane."""
        n = points.new_tensor(self.normal)
        return points - 2 * ((points @ n) - self.offset)[:, None] * n


def backproject(depth: np.ndarray, mask: np.ndarray, viewmat: np.ndarray, K: np.ndarray
                ) -> np.ndarray:
    """(H, W) camera z and (H, W) mask -> (P, 3) world points of the masked pixel centres."""
    ys, xs = np.nonzero((mask > 0.5) & (depth > 0))
    z = depth[ys, xs].astype(np.float64)
    cam = np.stack([(xs + 0.5 - K[0, 2]) / K[0, 0] * z, (ys + 0.5 - K[1, 2]) / K[1, 1] * z, z], 1)
    cam2world = np.linalg.inv(viewmat.astype(np.float64))
    return cam @ cam2world[:3, :3].T + cam2world[:3, 3]


def _violation(points: np.ndarray, tree, normal: np.ndarray, offset: float, depth: np.ndarray,
               inside: np.ndarray, viewmat: np.ndarray, K: np.ndarray, tolerance: float) -> float:
    """Mean violation (scene units) of the points' reflections; see the module docstring."""
    mirrored = points - 2 * ((points @ normal) - offset)[:, None] * normal
    uv, z = project_points(mirrored, viewmat, K)
    seen = sample_nearest(depth, uv)                       # 0 off the image
    covered = (sample_nearest(inside, uv) > 0.5) & (seen > 0)
    cost = np.zeros(len(points))
    # Outside the silhouette: the view would show it. Cost: its distance to the visible points.
    outside = ~covered
    if outside.any():
        cost[outside] = tree.query(mirrored[outside])[0]
    # In front of the visible surface: it would hide what the view shows.
    front = covered & (z < seen - tolerance)
    cost[front] = seen[front] - z[front]
    # On the visible surface: it must be one of the visible points.
    on_surface = covered & (np.abs(z - seen) <= tolerance)
    if on_surface.any():
        cost[on_surface] = tree.query(mirrored[on_surface])[0]
    return float(cost.mean())


def estimate_mirror_plane(depth: np.ndarray, mask: np.ndarray, viewmat: np.ndarray, K: np.ndarray,
                          through: np.ndarray | None = None, samples: int = 3000,
                          azimuths: int = 60, offsets: int = 21, seed: int = 0) -> MirrorPlane | None:
    """The upright mirror plane most consistent with one view (see the module docstring).

    Args:
        depth: (H, W) camera z of the visible surface (0 = nothing); mask: (H, W) in [0, 1].
        viewmat: (4, 4) world-to-camera; K: (3, 3) pixel intrinsics.
        through: (3,) a world point the plane must contain, or None to search its offset too.
        samples: visible points tested per candidate.
        azimuths, offsets: coarse grid over the normal's direction in the horizontal plane
            (half a turn) and the plane's offset (+-40 % of the extent about the centroid; one
            offset with ``through``); the best cell is then refined on a 5x finer grid around it.
    Returns: the plane, or None when fewer than 50 pixels have depth.
    """
    from scipy.spatial import cKDTree

    points = backproject(depth, mask, viewmat, K)
    if len(points) < 50:
        return None
    rng = np.random.default_rng(seed)
    tree = cKDTree(points)
    probe = points[rng.choice(len(points), min(samples, len(points)), replace=False)]
    extent = float(np.linalg.norm(points - points.mean(0), axis=1).max())
    # Offsets are searched about the centroid, or fixed to the plane through ``through``.
    centre = points.mean(0) if through is None else np.asarray(through, dtype=np.float64).reshape(3)
    inside = (mask > 0.5).astype(np.float32)
    tolerance = 0.03 * extent
    viewmat = viewmat.astype(np.float64)
    K = K.astype(np.float64)

    def score(phi: float, shift: float) -> float:
        normal = np.array([np.cos(phi), 0.0, np.sin(phi)])
        return _violation(probe, tree, normal, float(normal @ centre) + shift, depth, inside,
                          viewmat, K, tolerance)

    phi_step = np.pi / azimuths
    if through is None:
        shift_step = 0.8 * extent / (offsets - 1)
        shifts, fine = np.linspace(-0.4, 0.4, offsets) * extent, range(-5, 6)
    else:
        shift_step, shifts, fine = 0.0, [0.0], [0]
    _, phi0, shift0 = min((score(phi, shift), phi, shift)
                          for phi in np.arange(azimuths) * phi_step for shift in shifts)
    best, phi, shift = min((score(phi0 + a * phi_step / 5, shift0 + b * shift_step / 5),
                            phi0 + a * phi_step / 5, shift0 + b * shift_step / 5)
                           for a in range(-5, 6) for b in fine)
    normal = (float(np.cos(phi)), 0.0, float(np.sin(phi)))
    return MirrorPlane(normal, float(np.dot(normal, centre) + shift), best / extent)


def mirror_plane_from_disparity(disparity: np.ndarray, mask: np.ndarray, viewmat: np.ndarray,
                                K: np.ndarray, shifts: tuple[float, ...] = (-0.4, -0.2, 0.0, 0.1,
                                                                            0.2, 0.3, 0.4, 0.5),
                                seed: int = 0) -> MirrorPlane | None:
    """The upright mirror plane from a relative (disparity) map, ``a / z + b`` with unknown
    a > 0 and b: the scale a does not turn the plane (see :func:`estimate_mirror_plane`), the
    offset b bends the back-projected shape. Each candidate b (``shifts`` x the map's smallest
    value on the mask) gives a shape ``1 / (disparity - b)``; the plane of the shape whose
    reflection violates the view least wins (default scene, frames 0 and 1: b found within
    0.13 of the truth, normal 0.5 and 4 degrees off; b = 0: 2.2 and 6.4 degrees). Shifts past
    half the smallest value are left out: as b nears it the shape collapses to a thin shell
    whose violation drops again. Offsets are in the arbitrary scale: use the normal.

    Args: disparity, mask: (H, W), disparity 0 = unknown; viewmat (4, 4), K (3, 3).
    Returns: the plane, or None when fewer than 50 pixels have a value.
    """
    known = (mask > 0.5) & (disparity > 0)
    if known.sum() < 50:
        return None
    smallest = float(disparity[known].min())
    best = None
    for shift in shifts:
        shifted = disparity - shift * smallest
        depth = np.where(known & (shifted > 0), 1.0 / np.maximum(shifted, 1e-9), 0.0)
        plane = estimate_mirror_plane(depth, mask, viewmat, K, samples=1000, seed=seed)
        if plane is not None and (best is None or plane.violation < best[0].violation):
            best = (plane, depth)
    if best is None:
        return None
    # The winner again with the full probe set, for a finer direction.
    return estimate_mirror_plane(best[1], mask, viewmat, K, seed=seed)


def mirror_plane_from_map(values: np.ndarray, kind: str, mask: np.ndarray, viewmat: np.ndarray,
                          K: np.ndarray, seed: int = 0) -> MirrorPlane | None:
    """The upright mirror plane from a user map of ``kind`` "depth" (scale unknown: searched
    as it is) or "disparity" (offset unknown too: :func:`mirror_plane_from_disparity`).
    values, mask: (H, W), 0 = unknown; viewmat (4, 4), K (3, 3). Use the normal: the offset is
    in the map's arbitrary scale."""
    if kind == "disparity":
        return mirror_plane_from_disparity(values, mask, viewmat, K, seed=seed)
    return estimate_mirror_plane(values, mask, viewmat, K, seed=seed)


def mirror_plane_of_points(points: np.ndarray, azimuths: int = 360, stride: int = 5) -> MirrorPlane:
    """The upright plane through the centroid of ``points`` (N, 3) that maps them onto
    themselves best, by brute force over ``azimuths`` directions (half a turn), scoring every
    ``stride``-th point's reflection by its distance to the nearest point. On a whole
    ground-truth mesh (every side, which no single view has) this is the reference the one-view
    estimates are measured against; ``violation`` is that mean distance (scene units)."""
    from scipy.spatial import cKDTree

    tree, centre, best = cKDTree(points), points.mean(0), None
    for phi in np.linspace(0, np.pi, azimuths, endpoint=False):
        n = np.array([np.cos(phi), 0.0, np.sin(phi)])
        mirrored = points - 2 * ((points - centre) @ n)[:, None] * n
        err = float(tree.query(mirrored[::stride])[0].mean())
        if best is None or err < best[0]:
            best = (err, n)
    err, n = best
    return MirrorPlane(tuple(float(v) for v in n), float(n @ centre), err)


def mirror_loss(points: Tensor, rows: Tensor, plane: MirrorPlane, extent: float) -> Tensor:
    """Mean distance from the mirror images of ``points[rows]`` to the nearest of ``points``
    (N, 3), / ``extent``: zero for a shape symmetric about ``plane``; gradients move both the
    reflected points and their nearest partners."""
    mirrored = plane.reflect(points[rows])
    nearest = torch.cdist(mirrored.detach(), points.detach()).argmin(dim=1)
    return (mirrored - points[nearest]).norm(dim=-1).mean() / extent
