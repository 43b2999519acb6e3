"""Morph-target GLB: the canonical mesh with one morph target per frame (exact positions).

The base positions are the canonical vertices; target f holds ``frames[f] - base`` (computed
from the float32 base, so base + delta reproduces the frame to float32 precision) and the
change of the vertex normals. Colours are COLOR_0 (linear), or the texture alone when baked. The
animation keys the morph weights to a one-hot vector per frame (LINEAR), so at every keyframe
the mesh is exactly that frame; between keyframes it blends the two neighbours linearly. The
mesh's default weights select frame 0 for viewers that do not play animations.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pygltflib as gl

from .animated_mesh import AnimatedMesh
from .glb import GlbBuilder, keyframe_seconds, png_bytes


def build_morph_glb(mesh: AnimatedMesh, fps: float = 24.0, name: str = "recon4d") -> GlbBuilder:
    """A GlbBuilder holding the mesh with per-frame morph targets and their animation."""
    builder = GlbBuilder()
    gltf = builder.gltf
    base = mesh.vertices.astype(np.float32)
    texture = png_bytes(mesh.texture) if mesh.texture is not None else None
    material = builder.add_material(texture)
    base_normals = mesh.normals().astype(np.float32)
    # A textured mesh takes its colour from the texture alone (COLOR_0 would multiply it).
    attrs, indices = builder.add_primitive_attributes(
        base, mesh.faces, colors=mesh.colors if mesh.texture is None else None,
        normals=base_normals, uv=mesh.uv if mesh.texture is not None else None)
    frames = len(mesh.times)
    targets = []
    for f in range(frames):
        delta = (mesh.frames[f] - base.astype(np.float64)).astype(np.float32)
        # Without normals a viewer shades flat (glTF 3.7.2.1); each frame's normals as deltas.
        normal_delta = (mesh.normals(f) - base_normals).astype(np.float32)
        targets.append(gl.Attributes(
            POSITION=builder.add_accessor(delta, gl.ARRAY_BUFFER, minmax=True),
            NORMAL=builder.add_accessor(normal_delta, gl.ARRAY_BUFFER)))
    primitive = gl.Primitive(attributes=attrs, indices=indices, material=material,
                             mode=gl.TRIANGLES, targets=targets)
    default = np.zeros(frames)
    if frames:
        default[0] = 1.0
    gltf.meshes.append(gl.Mesh(name=name, primitives=[primitive], weights=default.tolist(),
                               extras={"targetNames": [f"frame_{f:04d}" for f in range(frames)]}))
    node = builder.add_node(gl.Node(name=name, mesh=0), root=True)
    if frames:
        seconds = keyframe_seconds(mesh.times, fps)
        weights = np.eye(frames, dtype=np.float32).reshape(-1)  # keyframe k: one-hot k
        sampler = gl.AnimationSampler(input=builder.add_accessor(seconds, minmax=True),
                                      output=builder.add_accessor(weights), interpolation="LINEAR")
        gltf.animations.append(gl.Animation(name="recon4d", samplers=[sampler], channels=[
            gl.AnimationChannel(sampler=0, target=gl.AnimationChannelTarget(node=node,
                                                                             path="weights"))]))
    return builder


def write_morph_glb(mesh: AnimatedMesh, path: str | Path, fps: float = 24.0,
                    extras: dict | None = None) -> Path:
    """Write the morph-target GLB to ``path`` atomically; ``extras`` go in asset.extras."""
    return build_morph_glb(mesh, fps).save(path, extras)
