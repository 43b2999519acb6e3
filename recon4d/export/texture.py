"""UV atlas (xatlas) and a baked colour texture for the animated mesh.

xatlas cuts the mesh into charts and packs them; vertices on seams are duplicated, so every
per-vertex array (frames, skin weights, colours) is re-indexed with its vertex mapping. Each
texel covered by a triangle gets the canonical surface point under it, whose colour is the
Gaussian-weighted mean of the nearest canonical surfels' base colours (SH degree 0), so the
texture keeps detail finer than the mesh's vertices. Empty texels take the colour of the nearest
covered texel, which hides seams under mip-mapping.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from recon4d.render.types import SH_C0, Surfels

from .animated_mesh import AnimatedMesh


def texture_available() -> bool:
    try:
        import xatlas  # noqa: F401
    except ImportError:
        return False
    return True


def surfel_colors(points: np.ndarray, surfels: Surfels, neighbours: int = 8) -> np.ndarray:
    """(M, 3) points -> (M, 3) colours in [0, 1] from nearby surfels (Gaussian in distance,
    weighted by opacity)."""
    from scipy.spatial import cKDTree

    means = surfels.means.detach().cpu().double().numpy()
    base = np.clip(0.5 + SH_C0 * surfels.sh[:, 0, :].detach().cpu().double().numpy(), 0, 1)
    opacity = surfels.opacities.detach().cpu().double().numpy()
    sigma = float(surfels.scales.detach().cpu().double().mean()) + 1e-9
    k = min(neighbours, len(means))
    dist, idx = cKDTree(means).query(points, k=k)
    dist, idx = dist.reshape(len(points), k), idx.reshape(len(points), k)
    weight = np.exp(-0.5 * (dist / (2 * sigma)) ** 2) * opacity[idx] + 1e-12
    return (weight[..., None] * base[idx]).sum(1) / weight.sum(1, keepdims=True)


def bake_texture(mesh: AnimatedMesh, canonical: Surfels, size: int = 1024) -> AnimatedMesh:
    """A copy of ``mesh`` with a UV atlas (``uv``) and a (size, size, 3) uint8 ``texture``.

    Raises:
        ImportError: when xatlas is not installed.
    """
    import cv2
    import xatlas
    from scipy.ndimage import distance_transform_edt

    vmap, faces, uv = xatlas.parametrize(mesh.vertices.astype(np.float32),
                                         mesh.faces.astype(np.uint32))
    vmap = vmap.astype(np.int64)
    faces = faces.astype(np.int64)
    uv = uv.astype(np.float64)
    verts = mesh.vertices[vmap]

    # Which triangle covers each texel (ids + 1; 0 = empty). Texel (row, col) centre = uv * size.
    ids = np.zeros((size, size), dtype=np.float32)
    pix = uv * size - 0.5
    for index, tri in enumerate(faces):
        pts = np.round(pix[tri] * 16).astype(np.int32)  # 4 fractional bits for sub-pixel edges
        cv2.fillConvexPoly(ids, pts, float(index + 1), lineType=cv2.LINE_8, shift=4)
    rows, cols = np.nonzero(ids)
    tri = faces[ids[rows, cols].astype(np.int64) - 1]
    # Barycentric coordinates of the texel centre in its triangle (clamped: edge texels).
    p = np.stack([cols, rows], 1).astype(np.float64)
    a, b, c = pix[tri[:, 0]], pix[tri[:, 1]], pix[tri[:, 2]]
    v0, v1, v2 = b - a, c - a, p - a
    den = v0[:, 0] * v1[:, 1] - v1[:, 0] * v0[:, 1]
    den = np.where(np.abs(den) < 1e-12, 1e-12, den)
    l1 = (v2[:, 0] * v1[:, 1] - v1[:, 0] * v2[:, 1]) / den
    l2 = (v0[:, 0] * v2[:, 1] - v2[:, 0] * v0[:, 1]) / den
    bary = np.clip(np.stack([1 - l1 - l2, l1, l2], 1), 0, 1)
    bary /= bary.sum(1, keepdims=True)
    points = np.einsum("mk,mkj->mj", bary, verts[tri])
    image = np.zeros((size, size, 3))
    image[rows, cols] = surfel_colors(points, canonical)
    empty = ids == 0
    if empty.any() and (~empty).any():
        _, (near_r, near_c) = distance_transform_edt(empty, return_indices=True)
        image = image[near_r, near_c]
    texture = np.clip(np.round(image * 255), 0, 255).astype(np.uint8)
    colors = mesh.colors[vmap]
    return replace(mesh, vertices=verts, faces=faces, colors=colors, frames=mesh.frames[:, vmap],
                   joints=mesh.joints[vmap], weights=mesh.weights[vmap], uv=uv.astype(np.float32),
                   texture=texture, stats=dict(mesh.stats))
