"""Initial surfels and bones from the masks alone (never from ground truth).

Two regimes, picked from the cameras:

- Cameras that move (orbit, transforms.json): a visual hull. Voxels of a cube around the object
  are kept when they project inside the mask in (almost) every view.
- A fixed camera (the usual generated clip): one view cannot bound depth, so the silhouette of
  the reference frame is "inflated": a voxel is kept when it projects inside the mask and lies
  within the local half-thickness of the silhouette (its distance to the mask border, converted
  to scene units at the object's depth) in front of or behind the object's centre plane. Thin
  parts become tubes and the body a rounded blob: a far better start than a sphere.

The object's depth along the reference camera's axis is the world origin's depth when the origin
lies in front of the camera (datasets centre the object there), else ``depth_hint``.
Surfels are sampled on the surface of the kept voxels, facing outwards, coloured from the
reference frame. Bones are k-means centres of the kept voxels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

from recon4d.errors import UserError


@dataclass
class InitResult:
    """Initial geometry, canonical frame = world frame of the reference frame.

    Attributes:
        points: (N, 3) surfel centres; normals: (N, 3) outward unit normals;
        colors: (N, 3) RGB in [0, 1]; scale: surfel std (scene units);
        occupied: (V, 3) centres of the kept voxels (bones and rigidity use them);
        center: (3,) object centre; extent: object half-size (scene units).
    """

    points: np.ndarray
    normals: np.ndarray
    colors: np.ndarray
    scale: float
    occupied: np.ndarray
    center: np.ndarray
    extent: float


def object_depth(viewmat: np.ndarray, depth_hint: float) -> float:
    """Camera z at which a fit assumes the object's centre: the world origin's depth in the
    camera ``viewmat`` (4, 4) when the origin lies in front of it, else ``depth_hint`` (a fixed
    camera at the world origin)."""
    origin_depth = float(viewmat[2, 3])
    return origin_depth if origin_depth > 0.1 else float(depth_hint)


def project_points(points: np.ndarray, viewmat: np.ndarray, K: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, 3) world points -> ((N, 2) pixel coordinates, (N,) camera z)."""
    cam = points @ viewmat[:3, :3].T + viewmat[:3, 3]
    z = cam[:, 2]
    safe = np.where(z > 1e-6, z, 1e-6)
    u = K[0, 0] * cam[:, 0] / safe + K[0, 2]
    v = K[1, 1] * cam[:, 1] / safe + K[1, 2]
    return np.stack([u, v], 1), z


def sample_nearest(image: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Nearest-pixel lookup with pixel centres at +0.5; outside the image -> 0."""
    h, w = image.shape[:2]
    x = np.floor(uv[:, 0]).astype(np.int64)
    y = np.floor(uv[:, 1]).astype(np.int64)
    inside = (x >= 0) & (x < w) & (y >= 0) & (y < h)
    out = np.zeros((uv.shape[0],) + image.shape[2:], image.dtype)
    out[inside] = image[y[inside], x[inside]]
    return out


def cameras_fixed(viewmats: np.ndarray, Ks: np.ndarray) -> bool:
    return bool(np.allclose(viewmats, viewmats[:1], atol=1e-6) and np.allclose(Ks, Ks[:1], atol=1e-6))


def local_radius(mask: np.ndarray, dist: np.ndarray | None = None,
                 sampling: tuple[float, float] | None = None) -> np.ndarray:
    """(H, W) bool silhouette -> (H, W) float32 radius (pixels) of the largest disc inside the
    silhouette that covers each pixel (0 outside): a limb's half-width, a body's half-height.

    A pixel lies in a disc of radius r inside the mask exactly when it survives the mask's
    morphological opening by that disc; the opening is an erosion (distance to the border >= r)
    followed by a dilation (distance to the eroded set <= r), two distance transforms per radius.
    Radii are tried on a geometric ladder (steps of about 5 %), enough for a thickness prior.
    ``sampling`` (row, column) is a pixel's height and width in the distances' unit (square
    pixels by default).
    """
    mask = np.asarray(mask, bool)
    if dist is None:
        dist = ndimage.distance_transform_edt(mask, sampling=sampling)
    radius = np.zeros(mask.shape, np.float32)
    largest, r = float(dist.max()), 1.0
    while r <= largest:  # the eroded core (dist >= r) is not empty
        covered = ndimage.distance_transform_edt(dist < r, sampling=sampling) <= r
        radius[covered & mask] = r
        r = max(r + 1.0, r * 1.05)
    return radius


def inflation_half_thickness(mask: np.ndarray, profile: str = "round",
                             sampling: tuple[float, float] | None = None) -> np.ndarray:
    """(H, W) bool silhouette -> (H, W) float32 half-thickness (pixels) of the inflated volume.

    ``sampling`` (row, column): a pixel's height and width, for non-square pixels (distances
    are then in those units; :func:`_inflated_volume` passes them in pixels of the mean
    focal length, so that a ball's elliptical silhouette inflates round).

    ``"linear"``: the distance d to the border (a ridge: tubes get a diamond cross-section).
    ``"round"``: ``sqrt(d (2 R - d))`` with R the local radius (:func:`local_radius`): a tube of
    radius R seen side-on gets its circular cross-section back, and the centre line keeps the
    linear profile's value (d = R there).
    """
    mask = np.asarray(mask, bool)
    dist = ndimage.distance_transform_edt(mask, sampling=sampling).astype(np.float32)
    if profile == "linear":
        return dist
    if profile != "round":
        raise ValueError(f"profile: expected 'round' or 'linear', got {profile!r}")
    radius = np.maximum(local_radius(mask, dist, sampling), dist)
    return np.sqrt(np.maximum(dist * (2 * radius - dist), 0.0)).astype(np.float32)


def _inflated_silhouette(uv: np.ndarray, z: np.ndarray, mask: np.ndarray, thickness: np.ndarray,
                         depth: float, voxel_px: float | None = None,
                         voxel: float | None = None) -> np.ndarray:
    """(N,) bool: which points, at pixels ``uv`` (N, 2) and camera depths ``z`` (N,) of the fixed
    camera, lie inside the silhouette ``mask`` (H, W) and within ``thickness`` (N,) (scene units)
    of camera depth ``depth``.

    ``voxel`` (scene units, ``voxel_px`` in pixels), when given, widens the silhouette by half a
    voxel and keeps at least half a voxel of thickness, so every voxel column under a thin part
    is filled.
    """
    if voxel is not None:
        mask = ndimage.binary_dilation(mask, iterations=max(int(np.ceil(0.5 * voxel_px)), 1))
        thickness = np.maximum(thickness, 0.51 * voxel)
    inside = sample_nearest(mask.astype(np.float32), uv) > 0.5
    return inside & (np.abs(z - depth) <= thickness) & (z > 1e-3)


def _inflated_volume(points: np.ndarray, grid: int, voxel: float, view: np.ndarray,
                     K: np.ndarray, mask: np.ndarray, depth: float, profile: str) -> np.ndarray:
    """(grid^3,) bool occupancy of the reference silhouette ``mask`` (H, W) inflated about camera
    depth ``depth`` on the reference camera's grid (``points`` from :func:`_grid_points`, index
    order i = x, j = y, k = depth; view (4, 4) world-to-camera, K (3, 3)).

    A part thinner than a voxel (a pole, a string, a tail) falls between the voxel centres.
    A second pass gives such parts one voxel of width and depth, and its voxels are kept in the
    pixel columns (i, j) where the first pass kept none and none of the 8 neighbouring columns
    either: a thin part beside the body is kept, while the body's outline is not widened."""
    # Distances in pixels of the mean focal length: a pixel is focal/fy high and focal/fx wide
    # in them, so non-square pixels (fx != fy) measure a round part round.
    focal = float(np.sqrt(K[0, 0] * K[1, 1]))
    half_thickness = inflation_half_thickness(mask, profile, (focal / K[1, 1], focal / K[0, 0]))
    uv, z = project_points(points, view, K)
    # Pixels -> scene units at the object's depth (each voxel's own z made the front thinner
    # than the back, R D / (f + R) against R D / (f - R), so the volume leant away from the
    # camera).
    thickness = sample_nearest(half_thickness, uv) * depth / focal
    regular = _inflated_silhouette(uv, z, mask, thickness, depth)
    thin = _inflated_silhouette(uv, z, mask, thickness, depth, voxel * focal / depth, voxel)
    columns = regular.reshape(grid, grid, grid).any(axis=2)
    near_body = ndimage.binary_dilation(columns, structure=np.ones((3, 3), bool))
    added = thin.reshape(grid, grid, grid) & ~near_body[:, :, None]
    return regular | added.reshape(-1)


def init_from_masks(frames: np.ndarray, masks: np.ndarray, viewmats: np.ndarray, Ks: np.ndarray,
                    num_surfels: int, reference: int = 0, grid: int = 64,
                    depth_hint: float = 2.7, seed: int = 0,
                    profile: str = "round", object_poses: np.ndarray | None = None,
                    hull_margin: float = 1.3) -> InitResult:
    """Initial surfels from the masks of the given frames.

    Args:
        frames: (F, H, W, 3) float RGB in [0, 1]; masks: (F, H, W) in [0, 1].
        viewmats: (F, 4, 4) world-to-camera; Ks: (F, 3, 3) pixel intrinsics.
        num_surfels: how many surfels to sample on the surface.
        reference: the frame whose state the canonical shape takes (colours, inflation).
        grid: voxels along the longest side of the object's box.
        profile: the fixed-camera inflation's cross-section, "round" or "linear"
            (:func:`inflation_half_thickness`).
        object_poses: (F, 4, 4) the object's rigid motion per frame (canonical -> world, the
            reference frame's the identity), e.g. root poses from point tracks. When given, the
            object's turning is what shows it from other sides: the volume is a visual hull
            carved through every frame's camera moved with the object (viewmat @ pose), as for
            moving cameras, instead of the reference silhouette inflated.
        hull_margin: with ``object_poses``, the carved box's size over the reference
            silhouette's at least; a visual hull's box grows further where a coarse carve
            finds the object reaching past it (:func:`_hull_half_size`).
    Raises:
        UserError: when the reference mask is empty (nothing to reconstruct).
    """
    rng = np.random.default_rng(seed)
    mask0 = masks[reference] > 0.5
    if mask0.sum() < 4:
        raise UserError("the first training frame's mask is empty: check the input's masks "
                        "(recon4d ingest writes a contact sheet to look at)")
    view0, K0 = viewmats[reference].astype(np.float64), Ks[reference].astype(np.float64)
    depth = object_depth(view0, depth_hint)
    ys, xs = np.nonzero(mask0)
    # Object box from the silhouette at the object's depth (reference camera frame).
    u0, u1 = xs.min(), xs.max() + 1.0
    v0, v1 = ys.min(), ys.max() + 1.0
    fx, fy, cx, cy = K0[0, 0], K0[1, 1], K0[0, 2], K0[1, 2]
    centre_cam = np.array([((u0 + u1) / 2 - cx) / fx * depth, ((v0 + v1) / 2 - cy) / fy * depth, depth])
    half = np.array([(u1 - u0) / 2 / fx * depth, (v1 - v0) / 2 / fy * depth])
    extent = float(max(half.max(), 1e-3)) * 1.15 * (hull_margin if object_poses is not None else 1.0)
    cam2world = np.linalg.inv(view0)
    centre = cam2world[:3, :3] @ centre_cam + cam2world[:3, 3]

    rotation = cam2world[:3, :3]
    carve_views = None
    if object_poses is not None:
        carve_views = viewmats.astype(np.float64) @ np.asarray(object_poses, np.float64)
    elif not cameras_fixed(viewmats, Ks):
        carve_views = viewmats
    if carve_views is not None:
        extent = _hull_half_size(extent, grid, rotation, centre, carve_views, Ks, masks)
    voxel = 2 * extent / grid
    # The grid is axis-aligned with the reference camera so the inflation is per pixel column.
    points = _grid_points(extent, grid, rotation, centre)

    if carve_views is not None:
        occupied = _hull(points, carve_views, Ks, masks)
    else:
        occupied = _inflated_volume(points, grid, voxel, view0, K0, mask0, depth, profile)
    occ = occupied.reshape(grid, grid, grid)
    if occ.sum() < 8:
        raise UserError("the masks leave no common volume for the object (visual hull is empty): "
                        "check the cameras (--camera fixed for a fixed-camera clip) and the masks")

    # Surface voxels: occupied with an empty 6-neighbour.
    eroded = ndimage.binary_erosion(occ, structure=ndimage.generate_binary_structure(3, 1),
                                    border_value=0)
    surface = np.argwhere(occ & ~eroded)
    # Padded with empty space: at the grid's faces the filter's default reflection left no
    # gradient, and those surfels fell back to facing the camera, on the back face too.
    pad = 4
    smooth = ndimage.gaussian_filter(np.pad(occ, pad).astype(np.float32), sigma=1.0)
    grads = np.stack(np.gradient(smooth), -1)                  # (G+2p, G+2p, G+2p, 3), grid axes
    normals_local = -grads[surface[:, 0] + pad, surface[:, 1] + pad, surface[:, 2] + pad]
    norms = np.linalg.norm(normals_local, axis=1, keepdims=True)
    normals_local = np.where(norms > 1e-8, normals_local / np.maximum(norms, 1e-8),
                             np.array([0.0, 0.0, -1.0]))
    pick = rng.choice(len(surface), size=num_surfels, replace=len(surface) < num_surfels)
    jitter = rng.uniform(-0.5, 0.5, size=(num_surfels, 3))
    local_pts = (surface[pick] + 0.5 + jitter) * voxel - extent
    pts = local_pts @ cam2world[:3, :3].T + centre
    nrm = normals_local[pick] @ cam2world[:3, :3].T
    area = len(surface) * voxel * voxel
    scale = float(0.6 * np.sqrt(area / num_surfels))

    uv, _ = project_points(pts, view0, K0)
    colors = sample_nearest(frames[reference].astype(np.float32), uv)
    fallback = sample_nearest(mask0.astype(np.float32), uv) < 0.5
    if fallback.any():
        colors[fallback] = frames[reference][mask0].mean(0)
    occ_pts = (np.argwhere(occ) + 0.5) * voxel - extent
    occ_pts = occ_pts @ cam2world[:3, :3].T + centre
    return InitResult(pts.astype(np.float32), nrm.astype(np.float32), colors.astype(np.float32),
                      scale, occ_pts.astype(np.float32), centre.astype(np.float32), extent)


def _grid_points(extent: float, grid: int, rotation: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """(grid^3, 3) world voxel centres of a cube of half-size ``extent`` about ``centre``, its
    axes the reference camera's (``rotation``: camera-to-world (3, 3)); index order i, j, k."""
    voxel = 2 * extent / grid
    axis = (np.arange(grid) + 0.5) * voxel - extent
    gx, gy, gz = np.meshgrid(axis, axis, axis, indexing="ij")
    return np.stack([gx, gy, gz], -1).reshape(-1, 3) @ rotation.T + centre


def _hull_half_size(extent: float, grid: int, rotation: np.ndarray, centre: np.ndarray,
                    viewmats: np.ndarray, Ks: np.ndarray, masks: np.ndarray,
                    reach: float = 3.0) -> float:
    """The half-size of the carving cube: ``extent`` (from the reference silhouette), or more
    where a coarse carve in a cube ``reach`` times larger finds the hull reaching past it. An
    object seen end-on in the reference frame is deeper than it is wide there, and a cube
    sized from that silhouette cut its far end off (a flat face with wrong normals)."""
    coarse = max(grid // 2, 16)
    big = extent * reach
    points = _grid_points(big, coarse, rotation, centre)
    occupied = _hull(points, viewmats, Ks, masks)
    if not occupied.any():
        return extent
    reached = float(np.abs((points[occupied] - centre) @ rotation).max()) + 2 * big / coarse
    return max(extent, min(reached, big))


def _hull(points: np.ndarray, viewmats: np.ndarray, Ks: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """(V,) which of the (V, 3) points project inside the mask in at least 85 % of the views
    (a few views' mask errors or moving limbs do not carve the body away)."""
    votes = np.zeros(points.shape[0], np.float32)
    for view, K, mask in zip(viewmats, Ks, masks):
        uv, z = project_points(points, view.astype(np.float64), K.astype(np.float64))
        votes += (sample_nearest((mask > 0.5).astype(np.float32), uv) > 0.5) & (z > 1e-3)
    return votes >= max(1.0, 0.85 * len(masks))


def kmeans_bones(points: np.ndarray, num_bones: int, iters: int = 15, seed: int = 0
                 ) -> tuple[np.ndarray, float]:
    """(B, 3) bone centres by k-means over ``points`` (V, 3) and a bone radius (scene units):
    0.6 x the mean distance between a centre and its nearest other centre.

    Each centre ends on its cluster's member nearest the cluster mean: the mean of a curved
    cluster (an arc of a ring, a bent tail) can lie outside the object, where a bone would pull
    on the surfels of both sides of the gap."""
    rng = np.random.default_rng(seed)
    if len(points) > 20000:  # k-means needs the shape, not every voxel
        points = points[rng.choice(len(points), 20000, replace=False)]
    b = min(num_bones, len(points))
    # k-means++-like start: farthest-point sampling spreads bones over the whole shape.
    centres = [points[rng.integers(len(points))]]
    dist = np.linalg.norm(points - centres[0], axis=1)
    for _ in range(1, b):
        centres.append(points[int(dist.argmax())])
        dist = np.minimum(dist, np.linalg.norm(points - centres[-1], axis=1))
    centres = np.stack(centres)
    for _ in range(iters):
        assign = np.argmin(((points[:, None] - centres[None]) ** 2).sum(-1), axis=1)
        for k in range(b):
            members = points[assign == k]
            if len(members):
                centres[k] = members.mean(0)
    assign = np.argmin(((points[:, None] - centres[None]) ** 2).sum(-1), axis=1)
    for k in range(b):
        members = points[assign == k]
        if len(members):
            centres[k] = members[np.argmin(((members - centres[k]) ** 2).sum(-1))]
    if b > 1:
        d = np.linalg.norm(centres[:, None] - centres[None], axis=-1)
        np.fill_diagonal(d, np.inf)
        radius = 0.6 * float(d.min(1).mean())
    else:
        radius = float(np.linalg.norm(points - centres[0], axis=1).mean())
    return centres.astype(np.float32), max(radius, 1e-3)


def to_torch(array: np.ndarray, device="cpu") -> torch.Tensor:
    return torch.as_tensor(np.ascontiguousarray(array), dtype=torch.float32, device=device)
