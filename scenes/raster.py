"""An independent triangle-mesh renderer for ground truth: a numpy z-buffer rasteriser.

It shares no code with recon4d's surfel renderer. Pixels are sampled at their centres
(pixel (i, j) covers [j, j+1) x [i, i+1), centre (j+0.5, i+0.5), as the project's ``Ks``
assume); anti-aliasing is ``ssaa``-fold supersampling with an odd factor, so the centre
sub-sample of each block IS the pixel centre: depth, normals and the hard mask come from it and
agree exactly with a ray cast through the pixel centre, while colour and the soft mask average
all sub-samples.

Depth is camera z (OpenCV, +z forward) of the first surface hit: for a planar triangle
1/z is affine in screen space, so z = 1 / sum(b_i / z_i) with screen-space barycentrics b_i is
the exact ray-triangle intersection depth (perspective-correct interpolation).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

NEAR = 1e-3


@dataclass
class Fragments:
    """Per-pixel visibility of one view.

    Attributes:
        face: (H, W) int64 visible face index, -1 for background.
        bary: (H, W, 3) float64 perspective-correct barycentrics of the hit (0 on background).
        depth: (H, W) float64 camera z of the hit, 0 on background.
    """

    face: np.ndarray
    bary: np.ndarray
    depth: np.ndarray

    @property
    def mask(self) -> np.ndarray:
        return self.face >= 0


def rasterize(verts_cam: np.ndarray, faces: np.ndarray, K: np.ndarray, width: int,
              height: int) -> Fragments:
    """Z-buffer rasterisation of a triangle mesh given in camera coordinates.

    Args:
        verts_cam: (V, 3) vertices in OpenCV camera coordinates (z forward).
        faces: (M, 3) vertex indices; both windings are drawn (no culling), so the z-buffer
            alone decides visibility.
        K: (3, 3) pixel intrinsics.
        width, height: image size.
    """
    verts_cam = np.asarray(verts_cam, np.float64)
    faces = np.asarray(faces, np.int64)
    z = verts_cam[:, 2]
    safe_z = np.where(z > NEAR, z, 1.0)
    u = K[0, 0] * verts_cam[:, 0] / safe_z + K[0, 1] * verts_cam[:, 1] / safe_z + K[0, 2]
    v = K[1, 1] * verts_cam[:, 1] / safe_z + K[1, 2]

    fz = z[faces]
    # Triangles crossing the near plane are dropped (the scenes keep objects well in front).
    ok = (fz > NEAR).all(axis=1)
    fu, fv = u[faces], v[faces]
    # Pixel j is inside the triangle's box when its centre j + 0.5 lies in [min, max].
    x0 = np.clip(np.ceil(fu.min(1) - 0.5), 0, width).astype(np.int64)
    x1 = np.clip(np.floor(fu.max(1) - 0.5), -1, width - 1).astype(np.int64)
    y0 = np.clip(np.ceil(fv.min(1) - 0.5), 0, height).astype(np.int64)
    y1 = np.clip(np.floor(fv.max(1) - 0.5), -1, height - 1).astype(np.int64)
    nx, ny = x1 - x0 + 1, y1 - y0 + 1
    ok &= (nx > 0) & (ny > 0)
    area2 = (fu[:, 1] - fu[:, 0]) * (fv[:, 2] - fv[:, 0]) - (fu[:, 2] - fu[:, 0]) * (fv[:, 1] - fv[:, 0])
    ok &= np.abs(area2) > 1e-14
    tri = np.nonzero(ok)[0]

    face_buf = np.full(height * width, -1, np.int64)
    bary_buf = np.zeros((height * width, 3))
    depth_buf = np.zeros(height * width)
    if len(tri) == 0:
        return Fragments(face_buf.reshape(height, width), bary_buf.reshape(height, width, 3),
                         depth_buf.reshape(height, width))

    # Enumerate (triangle, pixel) candidate pairs over each triangle's pixel box, in chunks to
    # bound memory on large images.
    counts = (nx[tri] * ny[tri])
    best_z = np.full(height * width, np.inf)
    chunk_tris = _chunks(counts, 4_000_000)
    for sel in chunk_tris:
        t_ids = tri[sel]
        c = counts[sel]
        pair_tri = np.repeat(t_ids, c)
        start = np.repeat(np.cumsum(c) - c, c)
        local = np.arange(len(pair_tri)) - start
        w = nx[pair_tri]
        px = x0[pair_tri] + local % w
        py = y0[pair_tri] + local // w
        cx, cy = px + 0.5, py + 0.5
        u0, u1, u2 = fu[pair_tri, 0], fu[pair_tri, 1], fu[pair_tri, 2]
        v0, v1, v2 = fv[pair_tri, 0], fv[pair_tri, 1], fv[pair_tri, 2]
        a = area2[pair_tri]
        # Screen-space barycentrics from edge functions (sign-normalised by the area).
        b0 = ((u1 - cx) * (v2 - cy) - (u2 - cx) * (v1 - cy)) / a
        b1 = ((u2 - cx) * (v0 - cy) - (u0 - cx) * (v2 - cy)) / a
        b2 = 1.0 - b0 - b1
        inside = (b0 >= 0) & (b1 >= 0) & (b2 >= 0)
        pair_tri, px, py = pair_tri[inside], px[inside], py[inside]
        b = np.stack([b0[inside], b1[inside], b2[inside]], axis=1)
        inv_z = (b / fz[pair_tri]).sum(axis=1)
        depth = 1.0 / inv_z
        pix = py * width + px
        # Nearest hit per pixel: sort by depth, keep the first occurrence of each pixel.
        order = np.argsort(depth, kind="stable")
        pix_sorted = pix[order]
        _, first = np.unique(pix_sorted, return_index=True)
        winners = order[first]
        wp = pix[winners]
        closer = depth[winners] < best_z[wp]
        winners, wp = winners[closer], wp[closer]
        best_z[wp] = depth[winners]
        face_buf[wp] = pair_tri[winners]
        persp = b[winners] / fz[pair_tri[winners]] / inv_z[winners, None]
        bary_buf[wp] = persp
        depth_buf[wp] = depth[winners]
    return Fragments(face_buf.reshape(height, width), bary_buf.reshape(height, width, 3),
                     depth_buf.reshape(height, width))


def _chunks(counts: np.ndarray, budget: int) -> list[np.ndarray]:
    """Split triangle indices into consecutive groups whose pair counts stay near ``budget``."""
    bounds = np.cumsum(counts)
    groups, start = [], 0
    while start < len(counts):
        base = bounds[start - 1] if start else 0
        stop = int(np.searchsorted(bounds, base + budget, side="right"))
        stop = max(stop, start + 1)
        groups.append(np.arange(start, min(stop, len(counts))))
        start = stop
    return groups


@dataclass
class View:
    """One rendered view at the output resolution.

    Attributes:
        rgb: (H, W, 3) float32 colour over the background, anti-aliased.
        coverage: (H, W) float32 fraction of sub-samples covered (the soft mask).
        hard_mask: (H, W) bool: the pixel centre hits the mesh.
        depth: (H, W) float32 camera z at the pixel centre, 0 on background.
        normal: (H, W, 3) float32 unit world-space normal (smooth, interpolated), 0 on background.
    """

    rgb: np.ndarray
    coverage: np.ndarray
    hard_mask: np.ndarray
    depth: np.ndarray
    normal: np.ndarray


def render_view(verts_world: np.ndarray, faces: np.ndarray, normals_world: np.ndarray,
                rest_verts: np.ndarray, texture: Callable[[np.ndarray], np.ndarray],
                viewmat: np.ndarray, K: np.ndarray, width: int, height: int, ssaa: int = 3,
                background=(1.0, 1.0, 1.0), shading: float = 0.0) -> View:
    """Render a textured mesh from one camera.

    Args:
        verts_world: (V, 3) posed vertices, world frame.
        faces: (M, 3).
        normals_world: (V, 3) unit vertex normals of the posed mesh, world frame.
        rest_verts: (V, 3) rest-pose vertices: the texture is evaluated at the interpolated rest
            position, so it sticks to the surface.
        texture: (N, 3) rest points -> (N, 3) RGB in [0, 1].
        viewmat: (4, 4) world-to-camera, OpenCV. K: (3, 3) pixels at the output resolution.
        ssaa: odd supersampling factor (1 = none).
        shading: 0 = unlit albedo; s > 0 multiplies by (1 - s) + s * max(0, n . l) with a light
            from the camera (a headlight), for scenes that want some shading.
    """
    if ssaa < 1 or ssaa % 2 == 0:
        raise ValueError(f"ssaa: must be an odd positive integer, got {ssaa}")
    viewmat = np.asarray(viewmat, np.float64)
    verts_cam = verts_world @ viewmat[:3, :3].T + viewmat[:3, 3]
    K_hi = np.asarray(K, np.float64).copy()
    K_hi[:2] *= ssaa  # pixel centres map to block centres: (j + 0.5) * s = s*j + (s-1)/2 + 0.5
    frag = rasterize(verts_cam, faces, K_hi, width * ssaa, height * ssaa)
    hit = frag.mask
    tri = faces[frag.face[hit]]
    bary = frag.bary[hit]
    rest_p = (rest_verts[tri] * bary[..., None]).sum(axis=1)
    colour = texture(rest_p)
    nrm = (normals_world[tri] * bary[..., None]).sum(axis=1)
    nrm /= np.maximum(np.linalg.norm(nrm, axis=1, keepdims=True), 1e-12)
    if shading > 0:
        # Headlight: light along the viewing ray towards the camera.
        cam_center = -viewmat[:3, :3].T @ viewmat[:3, 3]
        world_p = (verts_world[tri] * bary[..., None]).sum(axis=1)
        to_cam = cam_center - world_p
        to_cam /= np.linalg.norm(to_cam, axis=1, keepdims=True)
        lambert = np.abs((nrm * to_cam).sum(axis=1))
        colour = colour * ((1 - shading) + shading * lambert)[:, None]
    H, W, s = height, width, ssaa
    rgb_hi = np.empty((H * s, W * s, 3))
    rgb_hi[:] = np.asarray(background, np.float64)
    rgb_hi[hit] = colour
    rgb = rgb_hi.reshape(H, s, W, s, 3).mean(axis=(1, 3))
    coverage = hit.reshape(H, s, W, s).mean(axis=(1, 3))
    c = s // 2
    centre = (slice(c, None, s), slice(c, None, s))
    hard = hit[centre]
    depth = frag.depth[centre]
    normal_hi = np.zeros((H * s, W * s, 3))
    normal_hi[hit] = nrm
    normal = normal_hi[centre]
    return View(rgb.astype(np.float32), coverage.astype(np.float32), hard,
                depth.astype(np.float32), normal.astype(np.float32))
