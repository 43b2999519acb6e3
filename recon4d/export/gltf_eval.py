"""An independent glTF 2.0 animation evaluator in numpy: vertex positions at any time.

It reads a GLB/glTF with pygltflib and follows the specification, not recon4d's writers:
accessors (strides, normalised integers), node hierarchies (matrix or TRS), animation samplers
(STEP, LINEAR with quaternion slerp, CUBICSPLINE), morph targets (node, mesh or animated
weights) and skins (``sum_k w_k * world(joint_k) @ inverseBind_k @ p``; the skinned mesh node's
own transform is ignored, as the spec says). The tests use it to check what an engine would play
against the scene's own warp.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pygltflib as gl

_DTYPES = {5120: np.int8, 5121: np.uint8, 5122: np.int16, 5123: np.uint16, 5125: np.uint32,
           5126: np.float32}
_WIDTH = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4, "MAT2": 4, "MAT3": 9, "MAT4": 16}


@dataclass
class EvaluatedMesh:
    """Positions of one mesh node's first primitive.

    Attributes:
        node: index of the mesh node.
        faces: (T, 3) triangle indices.
        times: (K,) seconds at which positions were evaluated.
        positions: (K, V, 3) float64 world positions.
    """

    node: int
    faces: np.ndarray
    times: np.ndarray
    positions: np.ndarray


def load(path: str | Path) -> gl.GLTF2:
    """Load a .glb or .gltf with pygltflib."""
    path = Path(path)
    return gl.GLTF2.load_binary(str(path)) if path.suffix.lower() == ".glb" else gl.GLTF2.load(str(path))


def read_accessor(doc: gl.GLTF2, index: int) -> np.ndarray:
    """Accessor ``index`` as float64 (count, width) (normalised integers mapped to [0, 1] or
    [-1, 1]); matrices come back as (count, 4, 4) row-major."""
    acc = doc.accessors[index]
    if acc.sparse is not None:
        raise NotImplementedError("sparse accessors are not supported by this evaluator")
    dtype = np.dtype(_DTYPES[acc.componentType])
    width = _WIDTH[acc.type]
    view = doc.bufferViews[acc.bufferView]
    blob = doc.binary_blob() if doc.buffers[view.buffer].uri is None else None
    if blob is None:
        raise NotImplementedError("external buffers are not supported by this evaluator")
    start = (view.byteOffset or 0) + (acc.byteOffset or 0)
    element = dtype.itemsize * width
    stride = view.byteStride or element
    raw = np.frombuffer(blob, dtype=np.uint8, count=view.byteLength - (acc.byteOffset or 0),
                        offset=start)
    rows = np.lib.stride_tricks.as_strided(raw, shape=(acc.count, element), strides=(stride, 1))
    values = np.ascontiguousarray(rows).view(dtype).reshape(acc.count, width).astype(np.float64)
    if acc.normalized and dtype.kind in "iu":
        info = np.iinfo(dtype)
        values = values / info.max if dtype.kind == "u" else np.maximum(values / info.max, -1.0)
    if acc.type == "MAT4":
        return values.reshape(acc.count, 4, 4).transpose(0, 2, 1)  # stored column-major
    return values


def _quat_xyzw_matrix(q: np.ndarray) -> np.ndarray:
    x, y, z, w = np.asarray(q, dtype=np.float64) / np.linalg.norm(q)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def _slerp(a: np.ndarray, b: np.ndarray, u: float) -> np.ndarray:
    dot = float(np.dot(a, b))
    if dot < 0:
        b, dot = -b, -dot
    if dot > 0.9995:
        out = a + u * (b - a)
    else:
        theta = np.arccos(np.clip(dot, -1.0, 1.0))
        out = (np.sin((1 - u) * theta) * a + np.sin(u * theta) * b) / np.sin(theta)
    return out / np.linalg.norm(out)


def sample(inputs: np.ndarray, outputs: np.ndarray, interpolation: str, path: str,
           time: float) -> np.ndarray:
    """Value of one animation sampler at ``time`` (clamped to its range).

    ``outputs`` is (K * n, width) for n values per keyframe (n > 1 for morph weights), or
    three times that for CUBICSPLINE (in-tangent, value, out-tangent per keyframe).
    """
    inputs = inputs.reshape(-1)
    count = len(inputs)
    per_key = outputs.reshape(count, -1) if interpolation != "CUBICSPLINE" else \
        outputs.reshape(count, 3, -1)
    if time <= inputs[0]:
        i, u = 0, 0.0
    elif time >= inputs[-1]:
        i, u = count - 1, 0.0
    else:
        i = int(np.searchsorted(inputs, time, side="right") - 1)
        u = float((time - inputs[i]) / (inputs[i + 1] - inputs[i]))
    if interpolation == "CUBICSPLINE":
        if u == 0.0:
            value = per_key[i, 1]
        else:
            dt = inputs[i + 1] - inputs[i]
            p0, m0 = per_key[i, 1], dt * per_key[i, 2]
            p1, m1 = per_key[i + 1, 1], dt * per_key[i + 1, 0]
            u2, u3 = u * u, u * u * u
            value = ((2 * u3 - 3 * u2 + 1) * p0 + (u3 - 2 * u2 + u) * m0
                     + (-2 * u3 + 3 * u2) * p1 + (u3 - u2) * m1)
        return value / np.linalg.norm(value) if path == "rotation" else value
    if interpolation == "STEP" or u == 0.0:
        return per_key[i]
    if path == "rotation":
        return _slerp(per_key[i], per_key[i + 1], u)
    return (1 - u) * per_key[i] + u * per_key[i + 1]


def _local_matrices(doc: gl.GLTF2, animation: int | None, time: float) -> tuple[list, dict]:
    """Per-node local 4x4 matrices at ``time`` and the animated morph weights per node."""
    trs = []
    for node in doc.nodes:
        if node.matrix is not None:
            trs.append({"matrix": np.array(node.matrix, dtype=np.float64).reshape(4, 4).T})
        else:
            trs.append({"translation": np.array(node.translation or [0, 0, 0], dtype=np.float64),
                        "rotation": np.array(node.rotation or [0, 0, 0, 1], dtype=np.float64),
                        "scale": np.array(node.scale or [1, 1, 1], dtype=np.float64)})
    weights = {}
    if animation is not None:
        anim = doc.animations[animation]
        for channel in anim.channels:
            sampler = anim.samplers[channel.sampler]
            value = sample(read_accessor(doc, sampler.input), read_accessor(doc, sampler.output),
                           sampler.interpolation or "LINEAR", channel.target.path, time)
            if channel.target.path == "weights":
                weights[channel.target.node] = value
            else:
                trs[channel.target.node][channel.target.path] = value
    matrices = []
    for entry in trs:
        if "matrix" in entry:
            matrices.append(entry["matrix"])
            continue
        m = np.eye(4)
        m[:3, :3] = _quat_xyzw_matrix(entry["rotation"]) * entry["scale"][None, :]
        m[:3, 3] = entry["translation"]
        matrices.append(m)
    return matrices, weights


def world_matrices(doc: gl.GLTF2, animation: int | None = 0, time: float = 0.0) -> list:
    """(4, 4) world matrix of every node at ``time`` (roots from every scene)."""
    local, _ = _local_matrices(doc, animation, time)
    world: list = [None] * len(doc.nodes)
    children = {i: list(n.children or []) for i, n in enumerate(doc.nodes)}
    has_parent = {c for cs in children.values() for c in cs}
    stack = [(i, np.eye(4)) for i in range(len(doc.nodes)) if i not in has_parent]
    while stack:
        index, parent = stack.pop()
        world[index] = parent @ local[index]
        stack.extend((c, world[index]) for c in children[index])
    return world


def keyframe_times(doc: gl.GLTF2, animation: int = 0) -> np.ndarray:
    """Sorted union of the keyframe times (seconds) of ``animation``."""
    anim = doc.animations[animation]
    times = np.concatenate([read_accessor(doc, s.input).reshape(-1) for s in anim.samplers])
    return np.unique(times)


def evaluate(path_or_doc, times=None, animation: int | None = 0) -> list[EvaluatedMesh]:
    """Positions of every mesh node's first primitive at ``times`` (seconds; default: every
    keyframe of ``animation``, or the rest pose when the file has no animation)."""
    doc = path_or_doc if isinstance(path_or_doc, gl.GLTF2) else load(path_or_doc)
    if animation is not None and not doc.animations:
        animation = None
    if times is None:
        times = keyframe_times(doc, animation) if animation is not None else np.zeros(1)
    times = np.asarray(times, dtype=np.float64).reshape(-1)
    results = []
    for node_index, node in enumerate(doc.nodes):
        if node.mesh is None:
            continue
        mesh = doc.meshes[node.mesh]
        prim = mesh.primitives[0]
        base = read_accessor(doc, prim.attributes.POSITION)
        faces = read_accessor(doc, prim.indices).astype(np.int64).reshape(-1, 3) \
            if prim.indices is not None else np.arange(len(base)).reshape(-1, 3)
        deltas = []
        for target in prim.targets or []:  # pygltflib gives dicts after loading a file
            index = target.get("POSITION") if isinstance(target, dict) else \
                getattr(target, "POSITION", None)
            deltas.append(read_accessor(doc, index) if index is not None else np.zeros_like(base))
        default_w = np.array(getattr(node, "weights", None) if getattr(node, "weights", None) is not None else
                             (mesh.weights or [0.0] * len(deltas)), dtype=np.float64)
        skin = doc.skins[node.skin] if node.skin is not None else None
        if skin is not None:
            joints = read_accessor(doc, prim.attributes.JOINTS_0).astype(np.int64)
            weights = read_accessor(doc, prim.attributes.WEIGHTS_0)
            ibm = read_accessor(doc, skin.inverseBindMatrices) \
                if skin.inverseBindMatrices is not None else np.tile(np.eye(4), (len(skin.joints), 1, 1))
        frames = []
        for time in times:
            world = world_matrices(doc, animation, float(time))
            _, anim_weights = _local_matrices(doc, animation, float(time))
            morph_w = anim_weights.get(node_index, default_w)
            pos = base.copy()
            for w, delta in zip(morph_w, deltas):
                pos += w * delta
            homo = np.concatenate([pos, np.ones((len(pos), 1))], 1)
            if skin is not None:
                joint_mats = np.stack([world[j] for j in skin.joints]) @ ibm  # (J, 4, 4)
                blended = np.einsum("vk,vkij->vij", weights, joint_mats[joints])
                out = np.einsum("vij,vj->vi", blended, homo)[:, :3]
            else:
                out = homo @ world[node_index].T
                out = out[:, :3]
            frames.append(out)
        results.append(EvaluatedMesh(node_index, faces, times, np.stack(frames)))
    return results
