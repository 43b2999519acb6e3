"""TSDF fusion of rendered depth, alpha and colour in torch, and marching cubes to a clean mesh.

The volume is a regular grid of cubic voxels over an axis-aligned box in world space. Each view
updates every voxel it sees (projective signed distance, truncated):

- a voxel that projects onto background is free space: value +1. Background is what lies
  outside the view's silhouette (alpha >= threshold) with its holes filled: gaps between
  surfels inside the silhouette carry no depth and must not carve the interior;
- a voxel in front of or just behind the rendered surface (median depth) gets
  ``clamp((depth - z) / trunc, max=1)``; voxels more than ``trunc`` behind it are occluded and
  keep their value;
- voxels no view ever updated lie behind the surface from every side: inside, value -1.

Values are positive outside, negative inside. Marching cubes (scikit-image) extracts the zero
level set; :func:`clean_mesh` keeps the large components, drops degenerate faces and orients every
component outwards. Colours are fused with the same weights near the surface and sampled
trilinearly at the vertices.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from recon4d.render.types import Cameras


@dataclass
class TSDFVolume:
    """A fused truncated signed distance volume.

    Attributes:
        tsdf: (X, Y, Z) float32 in [-1, 1]; positive outside, negative inside.
        weight: (X, Y, Z) float32, number of views that updated each voxel.
        color: (X, Y, Z, 3) float32 in [0, 1], weighted mean colour near the surface.
        color_weight: (X, Y, Z) float32.
        origin: (3,) world position of voxel (0, 0, 0)'s centre.
        voxel_size: edge length of a voxel, world units.
        trunc: truncation distance, world units.
    """

    tsdf: Tensor
    weight: Tensor
    color: Tensor
    color_weight: Tensor
    origin: np.ndarray
    voxel_size: float
    trunc: float

    @staticmethod
    def empty(lo: np.ndarray, hi: np.ndarray, resolution: int = 128,
              trunc_voxels: float = 3.0) -> "TSDFVolume":
        """A volume over the box [lo, hi] (world, (3,) each) with ``resolution`` voxels along its
        longest side."""
        lo, hi = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
        voxel = float((hi - lo).max()) / max(int(resolution) - 1, 1)
        dims = tuple(int(n) for n in np.maximum(np.ceil((hi - lo) / voxel).astype(int) + 1, 2))
        return TSDFVolume(
            tsdf=torch.zeros(dims), weight=torch.zeros(dims), color=torch.zeros(dims + (3,)),
            color_weight=torch.zeros(dims), origin=lo, voxel_size=voxel,
            trunc=trunc_voxels * voxel)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.tsdf.shape)  # type: ignore[return-value]

    def voxel_centers(self) -> Tensor:
        """(X*Y*Z, 3) world positions of the voxel centres, in C order."""
        axes = [torch.arange(n, dtype=torch.float64) * self.voxel_size + float(o)
                for n, o in zip(self.shape, self.origin)]
        grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1)
        return grid.reshape(-1, 3).float()

    @torch.no_grad()
    def integrate(self, depth: Tensor, alpha: Tensor, rgb: Tensor | None, cameras: Cameras,
                  alpha_threshold: float = 0.5) -> None:
        """Fuse C views.

        Args:
            depth: (C, H, W) camera-space z of the surface per pixel (median depth; 0 = none).
            alpha: (C, H, W) opacity in [0, 1]; below ``alpha_threshold`` a pixel is background.
            rgb: (C, H, W, 3) colours in [0, 1], or None for geometry only.
            cameras: the C cameras (OpenCV world-to-camera, intrinsics in pixels).
        """
        # Gather/scatter over a few million voxels gains little from intra-op threads and
        # slows down by 10-30x when the cores are shared with other work (measured): one thread.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            self._integrate(depth, alpha, rgb, cameras, alpha_threshold)
        finally:
            torch.set_num_threads(threads)

    def _integrate(self, depth: Tensor, alpha: Tensor, rgb: Tensor | None, cameras: Cameras,
                   alpha_threshold: float) -> None:
        points = self.voxel_centers()
        flat_tsdf, flat_w = self.tsdf.view(-1), self.weight.view(-1)
        flat_col, flat_cw = self.color.view(-1, 3), self.color_weight.view(-1)
        viewmats = cameras.viewmats.detach().float().cpu()
        ks = cameras.Ks.detach().float().cpu()
        height, width = cameras.height, cameras.width
        for c in range(len(cameras)):
            cam = points @ viewmats[c, :3, :3].T + viewmats[c, :3, 3]
            z = cam[:, 2]
            safe_z = torch.where(z > 1e-6, z, torch.ones_like(z))
            u = ks[c, 0, 0] * cam[:, 0] / safe_z + ks[c, 0, 2]
            v = ks[c, 1, 1] * cam[:, 1] / safe_z + ks[c, 1, 2]
            col, row = torch.floor(u).long(), torch.floor(v).long()
            seen = (z > 1e-6) & (col >= 0) & (col < width) & (row >= 0) & (row < height)
            idx = torch.nonzero(seen).squeeze(1)
            pix = row[idx] * width + col[idx]
            depth_c = depth[c].detach().float().cpu()
            alpha_c = alpha[c].detach().float().cpu()
            d = depth_c.reshape(-1)[pix]
            surface = (alpha_c.reshape(-1)[pix] >= alpha_threshold) & (d > 0)
            background = torch.from_numpy(_background(alpha_c.numpy() >= alpha_threshold))
            free = background.reshape(-1)[pix]
            sdf = (d - z[idx]) / self.trunc
            value = torch.where(surface, sdf.clamp(max=1.0), torch.ones_like(sdf))
            # Update free-space voxels and those in front of / just behind the surface; skip
            # occluded ones and pixels inside the silhouette without depth (holes).
            update = free | (surface & (sdf >= -1.0))
            vox = idx[update]
            w_old = flat_w[vox]
            flat_tsdf[vox] = (flat_tsdf[vox] * w_old + value[update]) / (w_old + 1.0)
            flat_w[vox] = w_old + 1.0
            if rgb is not None:
                near = surface & (sdf.abs() < 1.0)
                cvox = idx[near]
                colors = rgb[c].detach().float().cpu().reshape(-1, 3)[pix[near]]
                cw_old = flat_cw[cvox]
                flat_col[cvox] = (flat_col[cvox] * cw_old[:, None] + colors) / (cw_old[:, None] + 1)
                flat_cw[cvox] = cw_old + 1.0

    def values(self) -> np.ndarray:
        """(X, Y, Z) float32 TSDF with never-seen voxels set inside (-1)."""
        tsdf = self.tsdf.clone()
        tsdf[self.weight == 0] = -1.0
        return tsdf.numpy()

    def extract_mesh(self, min_component_ratio: float = 0.05, colors: bool = True):
        """Marching cubes of the zero level, cleaned (see :func:`clean_mesh`), world space.

        Returns a ``trimesh.Trimesh`` (empty if nothing was fused) with vertex colours when
        ``colors``.
        """
        import trimesh
        from skimage.measure import marching_cubes

        values = np.pad(self.values(), 1, constant_values=1.0)  # close surfaces at the box edge
        if values.min() >= 0 or values.max() <= 0:
            return trimesh.Trimesh(np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64))
        verts, faces, _, _ = marching_cubes(values, level=0.0)
        verts = (verts - 1.0) * self.voxel_size + self.origin
        mesh = clean_mesh(verts, faces, min_component_ratio)
        if colors and len(mesh.vertices):
            rgb = self.sample_colors(mesh.vertices)
            mesh.visual.vertex_colors = np.concatenate(
                [np.round(rgb * 255), np.full((len(rgb), 1), 255)], 1).astype(np.uint8)
        return mesh

    def sample_colors(self, points: np.ndarray) -> np.ndarray:
        """(M, 3) world points -> (M, 3) fused colours in [0, 1] (trilinear, weight-normalised).

        Colour is fused only in a thin band about the surface each view saw; a point whose
        neighbourhood holds none (a crease, a part no view saw head-on) takes the colour of the
        nearest voxel that has one (grey only when nothing was fused at all)."""
        from scipy.ndimage import map_coordinates
        from scipy.spatial import cKDTree

        coords = ((np.asarray(points, dtype=np.float64) - self.origin) / self.voxel_size).T
        cw = self.color_weight.numpy()
        colour = self.color.numpy()
        out = np.zeros((coords.shape[1], 3))
        wsum = map_coordinates(cw, coords, order=1, mode="nearest")
        weighted = colour * cw[..., None]
        for ch in range(3):
            out[:, ch] = map_coordinates(weighted[..., ch], coords, order=1, mode="nearest")
        good = wsum > 1e-6
        out[good] /= wsum[good, None]
        if not good.all():
            if not (cw > 0).any():
                out[~good] = 0.5
            else:
                coloured = np.argwhere(cw > 0)                       # (K, 3) voxel indices
                _, nearest = cKDTree(coloured).query(coords[:, ~good].T)
                out[~good] = colour[tuple(coloured[nearest].T)]
        return np.clip(out, 0.0, 1.0)


def _background(foreground: np.ndarray) -> np.ndarray:
    """(H, W) bool foreground -> bool background: outside the silhouette once its holes (and
    one-pixel cracks) are closed."""
    from scipy.ndimage import binary_closing, binary_fill_holes

    closed = binary_closing(foreground, structure=np.ones((3, 3), bool), iterations=1,
                            border_value=0)
    return ~binary_fill_holes(closed | foreground)


def clean_mesh(vertices: np.ndarray, faces: np.ndarray, min_component_ratio: float = 0.05):
    """A marching-cubes surface -> a clean ``trimesh.Trimesh``.

    Merges duplicate vertices, drops degenerate (zero-area) faces and unreferenced vertices,
    orients the whole surface so that the largest component has positive volume (faces
    counter-clockwise seen from outside; marching cubes orients every component alike), then
    drops components of negative volume (cavities: closed bubbles inside the object that no
    outside view can see, artefacts of the fusion) and components with fewer than
    ``min_component_ratio`` of the largest one's faces (floaters).
    """
    import trimesh

    mesh = trimesh.Trimesh(np.asarray(vertices, dtype=np.float64), np.asarray(faces), process=True)
    mesh.update_faces(mesh.nondegenerate_faces())
    mesh.remove_unreferenced_vertices()
    if len(mesh.faces) == 0:
        return mesh
    parts = mesh.split(only_watertight=False)
    if len(parts) == 0:
        return mesh
    biggest = max(parts, key=lambda p: len(p.faces))
    if biggest.volume < 0:
        for part in parts:
            part.invert()
    largest = len(biggest.faces)
    kept = [p for p in parts if len(p.faces) >= min_component_ratio * largest and p.volume > 0]
    if not kept:
        return trimesh.Trimesh(np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64))
    merged = trimesh.util.concatenate(kept) if len(kept) > 1 else kept[0]
    return trimesh.Trimesh(merged.vertices, merged.faces, process=True)


def box_around(points: np.ndarray, margin: float = 0.08) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) of the bounding box of ``points`` (M, 3) grown by ``margin`` of its diagonal."""
    points = np.asarray(points, dtype=np.float64)
    lo, hi = points.min(0), points.max(0)
    pad = margin * float(np.linalg.norm(hi - lo)) + 1e-6
    return lo - pad, hi + pad
