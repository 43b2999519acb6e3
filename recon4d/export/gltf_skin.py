"""Skinned GLB: the canonical mesh, a root joint plus one joint per bone, keyframed per frame.

Skeleton (glTF nodes):

- ``root``: a scene root node; its world transform at frame f is the rigid motion that best
  fits the whole mesh (canonical -> world, Kabsch), times its bind pose (a translation to the
  mesh centroid). It carries the root motion, so engines can read the object's path from it.
- ``bone_NN``: children of ``root``; bind pose = translation to the bone's rest centre; world
  transform at frame f = ``bone_transforms[f, b] @ bind_b``, stored as the local transform
  ``inverse(root_world) @ world`` (translation + rotation keyframes, LINEAR).

Inverse bind matrices are the inverses of the bind poses, so the skinned position of a vertex is
``sum_k w_k * bone_transforms[f, j_k] @ v``: linear blend skinning with the scene's (refined)
bone transforms. The root joint is in the skin (index 0) with zero weight everywhere.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pygltflib as gl

from .animated_mesh import AnimatedMesh
from .glb import GlbBuilder, keyframe_seconds, png_bytes
from .transforms import (kabsch, matrix_to_quat_wxyz, orthonormalize, rigid_inverse,
                         translation_matrix, wxyz_to_xyzw)


def _trs(local: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(F, 4, 4) rigid -> (F, 3) translations and (F, 4) xyzw quaternions, sign-continuous so
    that linear interpolation between keyframes takes the short way."""
    quats = matrix_to_quat_wxyz(orthonormalize(local[:, :3, :3]))
    for f in range(1, len(quats)):
        if np.dot(quats[f], quats[f - 1]) < 0:
            quats[f] = -quats[f]
    return local[:, :3, 3], wxyz_to_xyzw(quats)


def _normalized_weights(weights: np.ndarray) -> np.ndarray:
    """(V, 4) -> float32 weights summing to exactly 1 in any precision.

    Each weight is rounded to a multiple of 2^-20 (exact in float32, and sums of four stay
    exact), and the largest takes ``1 - sum(others)``, so the validator's normalisation check
    holds however it adds them up.
    """
    w = np.clip(np.asarray(weights, dtype=np.float64), 0.0, None)
    w = w / np.maximum(w.sum(1, keepdims=True), 1e-30)
    step = 2.0 ** -20
    w = np.round(w / step) * step
    largest = np.argmax(w, 1)
    rows = np.arange(len(w))
    w[rows, largest] = 0.0
    w[rows, largest] = 1.0 - w.sum(1)
    return w.astype(np.float32)


def root_motion(mesh: AnimatedMesh) -> np.ndarray:
    """(F, 4, 4) rigid canonical->world transform best fitting all vertices at each frame."""
    return np.stack([kabsch(mesh.vertices, frame) for frame in mesh.frames])


def build_skin_glb(mesh: AnimatedMesh, fps: float = 24.0, name: str = "recon4d") -> GlbBuilder:
    """A GlbBuilder holding the skinned, animated mesh (see the module docstring)."""
    builder = GlbBuilder()
    gltf = builder.gltf
    bones = mesh.num_bones
    centroid = mesh.vertices.mean(0)
    root_bind = translation_matrix(centroid)
    bone_bind = translation_matrix(mesh.bone_centers)  # (B, 4, 4)

    # Mesh primitive: canonical positions, skin attributes.
    texture = png_bytes(mesh.texture) if mesh.texture is not None else None
    material = builder.add_material(texture)
    attrs, indices = builder.add_primitive_attributes(
        mesh.vertices, mesh.faces, colors=mesh.colors if mesh.texture is None else None,
        normals=mesh.normals(),
        uv=mesh.uv if mesh.texture is not None else None)
    joint_type = np.uint8 if bones + 1 <= 255 else np.uint16
    weights = _normalized_weights(mesh.weights)
    joints = (mesh.joints + 1).astype(joint_type)  # skin joint 0 is the root
    joints[weights == 0] = 0  # unweighted slots point at the root (the validator's preference)
    attrs.JOINTS_0 = builder.add_accessor(joints, gl.ARRAY_BUFFER)
    attrs.WEIGHTS_0 = builder.add_accessor(weights, gl.ARRAY_BUFFER)
    gltf.meshes.append(gl.Mesh(name=name, primitives=[
        gl.Primitive(attributes=attrs, indices=indices, material=material, mode=gl.TRIANGLES)]))

    # Nodes: the skinned mesh node and the skeleton are both scene roots (glTF rule).
    mesh_node = builder.add_node(gl.Node(name=name, mesh=0, skin=0), root=True)
    root_node = builder.add_node(gl.Node(name="root", translation=centroid.tolist()), root=True)
    bone_nodes = []
    for b in range(bones):
        offset = (mesh.bone_centers[b] - centroid).tolist()
        bone_nodes.append(builder.add_node(gl.Node(name=f"bone_{b:02d}", translation=offset)))
    gltf.nodes[root_node].children = bone_nodes
    ibm = np.concatenate([rigid_inverse(root_bind)[None], rigid_inverse(bone_bind)])
    ibm[:, 3] = [0.0, 0.0, 0.0, 1.0]  # exact last row (validator checks it)
    gltf.skins.append(gl.Skin(name="skeleton", skeleton=root_node,
                              joints=[root_node] + bone_nodes,
                              inverseBindMatrices=builder.add_accessor(ibm.astype(np.float32))))
    assert mesh_node == 0

    # Animation: one keyframe per frame.
    if len(mesh.times):
        seconds = keyframe_seconds(mesh.times, fps)
        time_acc = builder.add_accessor(seconds, minmax=True)
        root_world = root_motion(mesh) @ root_bind  # (F, 4, 4)
        locals_ = {root_node: root_world}
        inv_root = rigid_inverse(root_world)
        for b, node in enumerate(bone_nodes):
            locals_[node] = inv_root @ mesh.bone_transforms[:, b] @ bone_bind[b]
        animation = gl.Animation(name="recon4d", samplers=[], channels=[])
        for node, local in locals_.items():
            translation, rotation = _trs(local)
            for path, values in (("translation", translation), ("rotation", rotation)):
                output = builder.add_accessor(values.astype(np.float32))
                animation.samplers.append(gl.AnimationSampler(input=time_acc, output=output,
                                                              interpolation="LINEAR"))
                animation.channels.append(gl.AnimationChannel(
                    sampler=len(animation.samplers) - 1,
                    target=gl.AnimationChannelTarget(node=node, path=path)))
        gltf.animations.append(animation)
    return builder


def write_skin_glb(mesh: AnimatedMesh, path: str | Path, fps: float = 24.0,
                   extras: dict | None = None) -> Path:
    """Write the skinned GLB to ``path`` atomically; ``extras`` (provenance) go in asset.extras."""
    return build_skin_glb(mesh, fps).save(path, extras)
