"""One fixed-topology mesh moved per frame by the scene's warp field.

The canonical mesh is extracted once (TSDF fusion of the canonical surfels), decimated to a face
budget, and pushed through ``scene.warp_points`` for every frame: those positions are the truth
that the morph-target GLB stores exactly and the skinned GLB approximates with linear blend
skinning (top-4 weights from ``scene.skinning_weights``, joint transforms from
``scene.bone_transforms``, optionally refined per frame to absorb the DQS-vs-LBS difference).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import torch

from recon4d.utils.console import info, warn

from .mesh_seq import FusionSettings, fuse_surfels


@dataclass
class AnimatedMesh:
    """A mesh of fixed topology with its motion. Positions in scene units (world = cameras' frame).

    Attributes:
        vertices: (V, 3) float64 canonical positions.
        faces: (T, 3) int64 triangles, counter-clockwise seen from outside.
        colors: (V, 4) uint8 RGBA vertex colours.
        times: (F,) normalised times in [0, 1] of the frames.
        frames: (F, V, 3) float64 world positions at each time (``scene.warp_points``).
        joints: (V, 4) int64 bone indices of the 4 largest skinning weights.
        weights: (V, 4) float64 those weights, renormalised to sum to 1.
        bone_centers: (B, 3) canonical bone rest centres.
        bone_transforms: (F, B, 4, 4) float64 canonical->world rigid transform of each bone per
            frame (root pose included), as used for skinning.
        uv: optional (V, 2) texture coordinates in [0, 1] (glTF convention: v down).
        texture: optional (H, W, 3) uint8 baked colour texture.
        stats: figures measured while building (skinning error etc.).
    """

    vertices: np.ndarray
    faces: np.ndarray
    colors: np.ndarray
    times: np.ndarray
    frames: np.ndarray
    joints: np.ndarray
    weights: np.ndarray
    bone_centers: np.ndarray
    bone_transforms: np.ndarray
    uv: np.ndarray | None = None
    texture: np.ndarray | None = None
    stats: dict = field(default_factory=dict)

    @property
    def num_bones(self) -> int:
        return int(self.bone_centers.shape[0])

    def normals(self, frame: int | None = None) -> np.ndarray:
        """(V, 3) unit area-weighted vertex normals (canonical, or of ``frame``).

        Vertices at one position (a UV seam's copies) share one normal over all their faces:
        each copy summing only its own side's faces left a shading crease along every seam."""
        verts = self.vertices if frame is None else self.frames[frame]
        tri = verts[self.faces]
        face_n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
        group = self._position_groups
        normals = np.zeros((int(group.max()) + 1 if len(group) else 0, 3))
        for corner in range(3):
            np.add.at(normals, group[self.faces[:, corner]], face_n)
        normals = normals[group]
        norm = np.linalg.norm(normals, axis=1, keepdims=True)
        fallback = np.array([0.0, 0.0, 1.0])
        return np.where(norm > 1e-12, normals / np.maximum(norm, 1e-12), fallback)

    @cached_property
    def _position_groups(self) -> np.ndarray:
        """(V,) index of each vertex's position among the distinct canonical positions, found
        once per mesh (the morph export asks for every frame's normals; copies made with
        ``replace`` start without it)."""
        _, group = np.unique(self.vertices, axis=0, return_inverse=True)
        return group.reshape(-1)

    def transformed(self, world2asset: np.ndarray) -> "AnimatedMesh":
        """The same animated mesh expressed in another frame: ``world2asset`` (4, 4) rigid maps
        world (and canonical) points to the asset's frame; skinning stays exact because the bone
        transforms are conjugated (``G T G^-1``)."""
        from dataclasses import replace

        g = np.asarray(world2asset, dtype=np.float64)
        g_inv = np.linalg.inv(g)

        def move(points: np.ndarray) -> np.ndarray:
            return points @ g[:3, :3].T + g[:3, 3]

        return replace(self, vertices=move(self.vertices), frames=move(self.frames),
                       bone_centers=move(self.bone_centers),
                       bone_transforms=g @ self.bone_transforms @ g_inv, stats=dict(self.stats))

    def bbox_diagonal(self) -> float:
        """Diagonal of the canonical mesh's bounding box (the error scale; it leaves out the
        root motion, so it is the stricter choice)."""
        return float(np.linalg.norm(self.vertices.max(0) - self.vertices.min(0)))


def decimate(mesh, faces: int):
    """``mesh`` reduced to about ``faces`` triangles by quadric decimation (fast-simplification);
    returned unchanged when it is already small enough or the package is missing."""
    if faces <= 0 or len(mesh.faces) <= faces:
        return mesh
    try:
        reduced = mesh.simplify_quadric_decimation(face_count=int(faces))
    except (ImportError, ModuleNotFoundError):
        warn("fast-simplification is not installed: the mesh keeps all "
             f"{len(mesh.faces)} faces (pip install fast-simplification)")
        return mesh
    reduced.update_faces(reduced.nondegenerate_faces())
    reduced.remove_unreferenced_vertices()
    if reduced.volume < 0:
        reduced.invert()
    return reduced


def canonical_mesh(scene, faces: int = 20000, settings: FusionSettings | None = None):
    """The canonical (rest) mesh of ``scene``: TSDF of the canonical surfels, cleaned, decimated
    to about ``faces`` triangles, vertex colours from the fused colour volume."""
    settings = settings or FusionSettings()
    volume = fuse_surfels(scene.canonical_surfels(), settings)
    mesh = volume.extract_mesh(settings.min_component_ratio, colors=False)
    if len(mesh.faces) == 0:
        return mesh
    mesh = decimate(mesh, faces)
    rgb = volume.sample_colors(mesh.vertices)
    mesh.visual.vertex_colors = np.concatenate(
        [np.round(rgb * 255), np.full((len(rgb), 1), 255)], 1).astype(np.uint8)
    return mesh


def animated_vertices(scene, vertices: np.ndarray, times) -> np.ndarray:
    """(V, 3) canonical vertices -> (F, V, 3) float64 world positions via ``scene.warp_points``."""
    pts = torch.as_tensor(np.asarray(vertices), dtype=torch.float32)
    device = scene.frame_times.device
    with torch.no_grad():
        out = [scene.warp_points(pts.to(device), float(t)).detach().cpu().double().numpy()
               for t in times]
    return np.stack(out) if out else np.zeros((0,) + pts.shape)


def top_k_weights(weights: np.ndarray, k: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """(V, B) skinning weights -> (V, k) joint indices and (V, k) weights summing to 1.

    Fewer than k bones: the extra slots get joint 0 with weight 0. Indices are sorted by weight,
    largest first.
    """
    weights = np.clip(np.asarray(weights, dtype=np.float64), 0.0, None)
    count, bones = weights.shape
    take = min(k, bones)
    order = np.argsort(-weights, axis=1, kind="stable")[:, :take]
    top = np.take_along_axis(weights, order, 1)
    total = top.sum(1, keepdims=True)
    top = np.where(total > 0, top / np.maximum(total, 1e-30), np.eye(1, take).repeat(count, 0))
    joints = np.zeros((count, k), dtype=np.int64)
    out = np.zeros((count, k))
    joints[:, :take], out[:, :take] = order, top
    return joints, out


def linear_blend(vertices: np.ndarray, joints: np.ndarray, weights: np.ndarray,
                 transforms: np.ndarray) -> np.ndarray:
    """LBS: (V, 3) canonical, (V, k) joints and weights, (F, B, 4, 4) -> (F, V, 3)."""
    blended = np.einsum("vk,fvkij->fvij", weights, transforms[:, joints])  # (F, V, 4, 4)
    return np.einsum("fvij,vj->fvi", blended[..., :3, :3], vertices) + blended[..., :3, 3]


def _skew(vectors: np.ndarray) -> np.ndarray:
    """(..., 3) -> (..., 3, 3) cross-product matrices: skew(a) @ b == cross(a, b)."""
    x, y, z = np.moveaxis(vectors, -1, 0)
    zero = np.zeros_like(x)
    return np.stack([np.stack([zero, -z, y], -1), np.stack([z, zero, -x], -1),
                     np.stack([-y, x, zero], -1)], -2)


def _rotation_vector_matrix(omega: np.ndarray) -> np.ndarray:
    """(..., 3) rotation vectors -> (..., 3, 3) rotations (Rodrigues)."""
    theta = np.linalg.norm(omega, axis=-1)[..., None, None]
    k = _skew(omega / np.maximum(theta[..., 0], 1e-30))
    return np.eye(3) + np.sin(theta) * k + (1 - np.cos(theta)) * (k @ k)


def refine_bone_transforms(vertices: np.ndarray, joints: np.ndarray, weights: np.ndarray,
                           targets: np.ndarray, init: np.ndarray, iterations: int = 4,
                           damping: float = 1e-6) -> np.ndarray:
    """Per-frame rigid corrections of the bone transforms so that LBS with the fixed top-k
    weights best matches ``targets`` (F, V, 3) in the least-squares sense.

    The scene's own warp (dual quaternions, more than k bones) differs from k-weight LBS; moving
    each joint a little per frame absorbs most of that difference while the weights stay the
    warp field's. Gauss-Newton on a small rotation and translation per bone (rotation about the
    bone's weighted vertex centroid, so the two are well conditioned), Levenberg damping keeps
    bones that few vertices use in place. Returns (F, B, 4, 4) rigid transforms.
    """
    from .transforms import make_rigid

    vertices = np.asarray(vertices, dtype=np.float64)
    joints = np.asarray(joints)
    weights = np.asarray(weights, dtype=np.float64)
    out = np.array(init, dtype=np.float64, copy=True)
    frames, bones = out.shape[:2]
    count, k = joints.shape
    # Canonical pivot per bone: the weighted centroid of the vertices it moves.
    mass = np.bincount(joints.ravel(), weights.ravel(), minlength=bones)
    pivot = np.stack([np.bincount(joints.ravel(), (weights[..., None] * vertices[:, None])[..., a]
                                  .ravel(), minlength=bones) for a in range(3)], 1)
    pivot = pivot / np.maximum(mass, 1e-12)[:, None]
    scale = np.sqrt(weights.sum() / max(bones, 1))
    size = bones * 6
    slots = np.arange(6)
    for f in range(frames):
        for _ in range(iterations):
            moved = np.einsum("vkij,vj->vki", out[f][joints][..., :3, :3], vertices) \
                + out[f][joints][..., :3, 3]  # (V, k, 3)
            residual = targets[f] - (weights[..., None] * moved).sum(1)  # (V, 3)
            world_pivot = np.einsum("bij,bj->bi", out[f, :, :3, :3], pivot) + out[f, :, :3, 3]
            lever = moved - world_pivot[joints]  # (V, k, 3)
            # Per vertex and slot, d(position)/d(omega, shift) = w * [-skew(lever), I]: (V, 3, k, 6).
            jac = np.concatenate([-_skew(lever), np.broadcast_to(np.eye(3), lever.shape + (3,))], -1)
            jac = jac * weights[..., None, None]
            jac = jac.transpose(0, 2, 1, 3)  # (V, 3, k, 6)
            cols = (joints[..., None] * 6 + slots).reshape(count, k * 6)  # (V, k*6)
            flat = jac.reshape(count, 3, k * 6)
            # Normal equations assembled from per-vertex blocks (each vertex touches k bones).
            blocks = np.einsum("via,vib->vab", flat, flat)  # (V, k*6, k*6)
            index = cols[:, :, None] * size + cols[:, None, :]
            normal = np.bincount(index.ravel(), blocks.ravel(), minlength=size * size)
            normal = normal.reshape(size, size)
            rhs = np.bincount(cols.ravel(), np.einsum("via,vi->va", flat, residual).ravel(),
                              minlength=size)
            normal[np.diag_indices_from(normal)] += damping * scale * scale + 1e-12
            step = np.linalg.solve(normal, rhs).reshape(bones, 6)
            rot = _rotation_vector_matrix(step[:, :3])
            correction = make_rigid(rot, world_pivot - np.einsum("bij,bj->bi", rot, world_pivot)
                                    + step[:, 3:])
            out[f] = correction @ out[f]
    return out


def refine_weights(vertices: np.ndarray, joints: np.ndarray, weights: np.ndarray,
                   targets: np.ndarray, transforms: np.ndarray, ridge: float = 1e-3,
                   passes: int = 3) -> np.ndarray:
    """Re-fit each vertex's k weights (same k bones) to ``targets`` (F, V, 3) over all frames.

    With many bones the warp field's weights spread beyond the top k, and truncating them
    loses part of the motion; solving ``min_w sum_f |sum_k w_k T_fk v - x_fv|^2 +
    mu |w - w0|^2`` subject to ``sum w = 1`` and ``w >= 0`` (active set: negative weights are
    pinned to zero and the rest re-solved) recovers most of it. ``mu`` is ``ridge`` times the
    mean diagonal of each vertex's normal matrix, which keeps vertices whose bones move alike
    near the warp field's own weights. Returns (V, k) weights summing to 1.
    """
    vertices = np.asarray(vertices, dtype=np.float64)
    w0 = np.asarray(weights, dtype=np.float64)
    count, k = w0.shape
    t = np.asarray(transforms, dtype=np.float64)[:, joints]  # (F, V, k, 4, 4)
    posed = np.einsum("fvkij,vj->fvki", t[..., :3, :3], vertices) + t[..., :3, 3]
    gram = np.einsum("fvki,fvli->vkl", posed, posed)
    rhs = np.einsum("fvki,fvi->vk", posed, np.asarray(targets, dtype=np.float64))
    mu = ridge * np.trace(gram, axis1=1, axis2=2) / k + 1e-12
    pinned = w0 <= 0
    w = w0
    for _ in range(passes):
        big = 1e6 * mu[:, None] * pinned  # pinned weights are held at zero
        system = np.zeros((count, k + 1, k + 1))
        system[:, :k, :k] = 2 * (gram + (mu[:, None] + big)[..., None] * np.eye(k))
        system[:, :k, k] = 1.0
        system[:, k, :k] = 1.0
        right = np.concatenate([2 * (rhs + mu[:, None] * np.where(pinned, 0.0, w0)),
                                np.ones((count, 1))], 1)
        w = np.linalg.solve(system, right[..., None])[..., 0][:, :k]
        negative = (w < 0) & ~pinned
        if not negative.any():
            break
        pinned = pinned | negative
    w = np.where(pinned, 0.0, np.clip(w, 0.0, None))  # pinned slots exactly zero
    return w / np.maximum(w.sum(1, keepdims=True), 1e-12)


def skin_errors(mesh: AnimatedMesh) -> dict:
    """LBS of ``mesh`` vs its true frames: mean and max vertex error, absolute and as a fraction
    of the bounding-box diagonal."""
    pred = linear_blend(mesh.vertices, mesh.joints, mesh.weights, mesh.bone_transforms)
    err = np.linalg.norm(pred - mesh.frames, axis=-1)
    diag = mesh.bbox_diagonal()
    return {"mean": float(err.mean()), "max": float(err.max()),
            "mean_rel": float(err.mean() / diag), "max_rel": float(err.max() / diag)}


def build_animated_mesh(scene, mesh, times=None, refine: bool = True,
                        refine_iterations: int = 2, fit_weights: bool = True,
                        candidates: int = 6) -> AnimatedMesh:
    """Attach ``scene``'s motion to the canonical ``mesh`` (a ``trimesh.Trimesh``).

    ``times`` defaults to the scene's frame times. Weights start as the top 4 of the warp
    field's at each vertex. With ``refine`` the joint transforms are adjusted per frame (see
    :func:`refine_bone_transforms`); with ``fit_weights`` each vertex's 4 bones are chosen among
    the warp field's ``candidates`` largest and their weights fitted over all frames
    (:func:`refine_weights`), the joints adjusted again. ``stats`` records the skinning error
    after each stage. With many bones (the fit's default is 25) the warp field's weights spread
    well beyond 4 and plain truncation loses visible motion; the fitted weights stay close to
    the warp field's where 4 bones suffice.
    """
    times = scene.frame_times.detach().cpu().double().numpy() if times is None else np.asarray(times, dtype=np.float64)
    vertices = np.asarray(mesh.vertices, dtype=np.float64)
    faces = np.asarray(mesh.faces, dtype=np.int64)
    colors = getattr(mesh.visual, "vertex_colors", None)
    if colors is None or len(colors) != len(vertices):
        colors = np.full((len(vertices), 4), 200, dtype=np.uint8)
        colors[:, 3] = 255
    frames = animated_vertices(scene, vertices, times)
    with torch.no_grad():
        pts = torch.as_tensor(vertices, dtype=torch.float32, device=scene.frame_times.device)
        weights = scene.skinning_weights(pts).detach().cpu().double().numpy()
        bones = np.stack([scene.bone_transforms(float(t)).detach().cpu().double().numpy()
                          for t in times])
        centers = scene.bone_centers().detach().cpu().double().numpy()
    from .transforms import orthonormalize

    bones[..., :3, :3] = orthonormalize(bones[..., :3, :3])
    joints, top = top_k_weights(weights, 4)
    result = AnimatedMesh(vertices, faces, np.asarray(colors, dtype=np.uint8), times, frames,
                          joints, top, centers, bones)
    result.stats["skin_error_scene_bones"] = skin_errors(result)
    if refine and len(times):
        result.bone_transforms = refine_bone_transforms(vertices, joints, top, frames, bones,
                                                        refine_iterations)
        result.stats["skin_error_refined"] = skin_errors(result)
    if fit_weights and len(times):
        # Pick each vertex's 4 bones among the warp field's 6 largest by a least-squares fit
        # over all frames, fit their weights, then alternate joints and weights once more
        # (each solve is convex given the other).
        cand_joints, cand_weights = top_k_weights(weights, candidates)
        fitted = refine_weights(vertices, cand_joints, cand_weights, frames,
                                result.bone_transforms)
        order = np.argsort(-fitted, axis=1, kind="stable")[:, :4]
        result.joints = np.take_along_axis(cand_joints, order, 1)
        start = np.take_along_axis(fitted, order, 1)
        start = start / np.maximum(start.sum(1, keepdims=True), 1e-12)
        result.weights = refine_weights(vertices, result.joints, start, frames,
                                        result.bone_transforms)
        if refine:
            result.bone_transforms = refine_bone_transforms(
                vertices, result.joints, result.weights, frames, result.bone_transforms, 1)
            result.weights = refine_weights(vertices, result.joints, result.weights, frames,
                                            result.bone_transforms)
        result.stats["skin_error_fitted_weights"] = skin_errors(result)
    final = skin_errors(result)
    result.stats["skin_error"] = final
    info(f"skinning error vs the scene's warp: mean {100 * final['mean_rel']:.3f}% / max "
         f"{100 * final['max_rel']:.3f}% of the bbox diagonal")
    return result
