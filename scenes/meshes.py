"""Procedural meshes of fixed topology and procedural solid textures for the synthetic scenes.

Shapes are built in a *model frame* (y up, +x the creature's front, units ~1 across) as signed
distance functions (smooth unions of ellipsoids, capsules, tori, rounded boxes) and turned into
one closed triangle mesh by marching cubes, so a shape is a single surface with no interior
parts (surface samples for Chamfer never land inside the object). Colours are a *solid texture*:
a function of the rest-pose (canonical) position, evaluated per pixel by the renderer, so the
texture has detail without a UV map and moves with the surface.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

SDF = Callable[[np.ndarray], np.ndarray]
"""(N, 3) model-frame points -> (N,) signed distance (negative inside)."""


# --------------------------------------------------------------------------------------------
# Signed distance primitives (exact or conservative; smooth union for organic joins)
# --------------------------------------------------------------------------------------------
def sdf_ellipsoid(center, radii) -> SDF:
    """Approximate ellipsoid distance (the usual bound k0 * (k0 - 1) / k1)."""
    center, radii = np.asarray(center, float), np.asarray(radii, float)

    def f(p):
        q = (p - center) / radii
        k0 = np.linalg.norm(q, axis=-1)
        k1 = np.linalg.norm(q / radii, axis=-1)
        return k0 * (k0 - 1.0) / np.maximum(k1, 1e-12)

    return f


def sdf_capsule(a, b, radius: float) -> SDF:
    a, b = np.asarray(a, float), np.asarray(b, float)
    ab = b - a

    def f(p):
        h = np.clip(((p - a) @ ab) / (ab @ ab), 0.0, 1.0)
        return np.linalg.norm(p - a - h[:, None] * ab, axis=-1) - radius

    return f


def sdf_torus(center, major: float, minor: float) -> SDF:
    """Torus around the model y axis."""
    center = np.asarray(center, float)

    def f(p):
        q = p - center
        ring = np.hypot(q[:, 0], q[:, 2]) - major
        return np.hypot(ring, q[:, 1]) - minor

    return f


def sdf_round_box(center, half_extents, radius: float) -> SDF:
    center, half = np.asarray(center, float), np.asarray(half_extents, float)

    def f(p):
        q = np.abs(p - center) - (half - radius)
        outside = np.linalg.norm(np.maximum(q, 0.0), axis=-1)
        inside = np.minimum(q.max(axis=-1), 0.0)
        return outside + inside - radius

    return f


def smooth_union(sdfs: list[SDF], k: float) -> SDF:
    """Polynomial smooth minimum of several distances (blend width ``k`` in scene units)."""

    def f(p):
        d = sdfs[0](p)
        for g in sdfs[1:]:
            e = g(p)
            h = np.clip(0.5 + 0.5 * (e - d) / k, 0.0, 1.0)
            d = e * (1 - h) + d * h - k * h * (1 - h)
        return d

    return f


def mesh_from_sdf(sdf: SDF, lo, hi, resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """Marching cubes of ``sdf`` over the box [lo, hi] with ``resolution`` cells on the long side.

    Returns:
        vertices (V, 3) float64 model frame, faces (M, 3) int64 with outward (counter-clockwise
        seen from outside) winding; the largest connected component only.
    """
    from skimage.measure import marching_cubes

    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    step = float((hi - lo).max()) / resolution
    counts = np.ceil((hi - lo) / step).astype(int) + 1
    axes = [lo[i] + step * np.arange(counts[i]) for i in range(3)]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    values = sdf(grid).reshape(counts)
    verts, faces, _, _ = marching_cubes(values, level=0.0, spacing=(step, step, step))
    verts = verts + lo
    # skimage orders triangles so that their normals point along the gradient (to increasing
    # values, i.e. outward for an SDF) with the opposite winding; flip to counter-clockwise.
    faces = faces[:, ::-1]
    verts, faces = _largest_component(verts, faces)
    if signed_volume(verts, faces) < 0:  # guarantee outward winding whatever the library does
        faces = faces[:, ::-1]
    return verts.astype(np.float64), np.ascontiguousarray(faces, dtype=np.int64)


def _largest_component(verts: np.ndarray, faces: np.ndarray):
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(verts)
    rows = np.concatenate([faces[:, 0], faces[:, 1], faces[:, 2]])
    cols = np.concatenate([faces[:, 1], faces[:, 2], faces[:, 0]])
    graph = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    keep_label = np.bincount(labels[faces[:, 0]]).argmax()
    keep_faces = faces[labels[faces[:, 0]] == keep_label]
    used = np.unique(keep_faces)
    remap = -np.ones(n, np.int64)
    remap[used] = np.arange(len(used))
    return verts[used], remap[keep_faces]


def icosphere(subdivisions: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit icosphere: vertices (V, 3), outward faces (M, 3) (M = 20 * 4**subdivisions)."""
    import trimesh

    mesh = trimesh.creation.icosphere(subdivisions=subdivisions, radius=1.0)
    return np.asarray(mesh.vertices, np.float64), np.asarray(mesh.faces, np.int64)


def signed_volume(verts: np.ndarray, faces: np.ndarray) -> float:
    """Volume enclosed by a closed mesh; positive when faces wind outward."""
    a, b, c = (verts[faces[:, i]] for i in range(3))
    return float(np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6.0)


def vertex_normals(verts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """(V, 3) unit area-weighted vertex normals of a mesh with outward winding."""
    a, b, c = (verts[faces[:, i]] for i in range(3))
    face_n = np.cross(b - a, c - a)  # length = 2 * area: area weighting for free
    normals = np.zeros_like(verts, dtype=np.float64)
    for i in range(3):
        np.add.at(normals, faces[:, i], face_n)
    return normals / np.maximum(np.linalg.norm(normals, axis=-1, keepdims=True), 1e-12)


# --------------------------------------------------------------------------------------------
# Solid textures
# --------------------------------------------------------------------------------------------
@dataclass
class SolidTexture:
    """A smooth procedural colour field over rest-pose positions.

    colour(p) = palette blend driven by a sum of random plane waves (a band-limited noise) plus
    soft spots; wavelengths are at least ``min_wavelength`` scene units so a 128² render stays
    free of aliasing and a surfel fit can reproduce it.

    Attributes:
        colors: (3, 3) RGB palette in [0, 1] (base, secondary, accent).
        directions: (K, 3) unit wave directions; frequencies (K,) rad per unit; phases (K,).
        spot_centers: (S, 3) points on/near the surface; spot_radius: their soft radius.
    """

    colors: np.ndarray
    directions: np.ndarray
    frequencies: np.ndarray
    phases: np.ndarray
    spot_centers: np.ndarray
    spot_radius: float
    stripe_axis: np.ndarray
    stripe_frequency: float

    @staticmethod
    def random(rng: np.random.Generator, colors, waves: int = 6, min_wavelength: float = 0.18,
               max_wavelength: float = 0.6, spots: int = 10, spot_radius: float = 0.07,
               surface: np.ndarray | None = None, extent: float = 0.5,
               stripe_wavelength: float = 0.22) -> "SolidTexture":
        """A random texture; spots are centred on ``surface`` points (rest vertices) when given,
        else uniformly in a cube of half-side ``extent``."""
        dirs = rng.normal(size=(waves, 3))
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        wavelengths = rng.uniform(min_wavelength, max_wavelength, size=waves)
        axis = rng.normal(size=3)
        axis /= np.linalg.norm(axis)
        return SolidTexture(
            colors=np.asarray(colors, np.float64).reshape(3, 3),
            directions=dirs, frequencies=2 * np.pi / wavelengths,
            phases=rng.uniform(0, 2 * np.pi, size=waves),
            spot_centers=(surface[rng.choice(len(surface), size=spots, replace=False)]
                          if surface is not None and len(surface) >= spots
                          else rng.uniform(-extent, extent, size=(spots, 3))),
            spot_radius=float(spot_radius), stripe_axis=axis,
            stripe_frequency=2 * np.pi / stripe_wavelength)

    def __call__(self, points: np.ndarray) -> np.ndarray:
        """(N, 3) rest-pose points -> (N, 3) RGB in [0, 1]."""
        p = np.asarray(points, np.float64)
        noise = np.sin(p @ (self.directions * self.frequencies[:, None]).T + self.phases)
        n = noise.mean(axis=1) * 2.5  # spread over roughly [-1.5, 1.5]
        blend = 0.5 + 0.5 * np.tanh(2.0 * n)
        base, second, accent = self.colors
        col = base[None] * (1 - blend[:, None]) + second[None] * blend[:, None]
        # Soft stripes modulate brightness a little: detail without hard edges.
        stripes = 0.5 + 0.5 * np.sin(p @ self.stripe_axis * self.stripe_frequency)
        col = col * (0.72 + 0.28 * stripes[:, None])
        # Soft spots in the accent colour.
        if len(self.spot_centers):
            d2 = ((p[:, None, :] - self.spot_centers[None]) ** 2).sum(-1)
            spot = np.exp(-d2 / (2 * self.spot_radius ** 2)).max(axis=1)
            spot = np.clip(spot * 1.2, 0, 1)
            col = col * (1 - spot[:, None]) + accent[None] * spot[:, None]
        return np.clip(col, 0.0, 1.0)
