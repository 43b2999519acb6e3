"""A small GLB (binary glTF 2.0) builder over pygltflib, shared by the skin and morph writers.

It packs arrays into one binary buffer (each view 4-byte aligned, as the spec requires for
vertex attributes), writes accessors with the min/max the spec demands for positions and
animation inputs, builds the mesh primitive with vertex colours and an optional baked texture,
and saves atomically with the provenance record in ``asset.extras``.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pygltflib as gl

from recon4d.utils.atomic import atomic_write_bytes

from .colour import srgb_to_linear

COMPONENT = {np.dtype(np.float32): gl.FLOAT, np.dtype(np.uint8): gl.UNSIGNED_BYTE,
             np.dtype(np.uint16): gl.UNSIGNED_SHORT, np.dtype(np.uint32): gl.UNSIGNED_INT}
TYPE = {1: gl.SCALAR, 2: gl.VEC2, 3: gl.VEC3, 4: gl.VEC4, 16: gl.MAT4}


class GlbBuilder:
    """Accumulates a glTF document and its binary chunk."""

    def __init__(self, generator: str = "recon4d"):
        self.gltf = gl.GLTF2(asset=gl.Asset(version="2.0", generator=generator))
        self.gltf.scenes = [gl.Scene(nodes=[])]
        self.gltf.scene = 0
        self.blob = bytearray()

    # Buffers ------------------------------------------------------------------------------
    def add_view(self, data: bytes, target: int | None = None) -> int:
        """Append ``data`` as a new bufferView (4-byte aligned); returns its index."""
        while len(self.blob) % 4:
            self.blob += b"\x00"
        view = gl.BufferView(buffer=0, byteOffset=len(self.blob), byteLength=len(data))
        if target is not None:
            view.target = target
        self.blob += data
        self.gltf.bufferViews.append(view)
        return len(self.gltf.bufferViews) - 1

    def add_accessor(self, array: np.ndarray, target: int | None = None,
                     normalized: bool = False, minmax: bool = False) -> int:
        """Append ``array`` ((count,) or (count, n) or (count, 4, 4)) as an accessor.

        Matrices are stored column-major as glTF requires. ``minmax`` records per-component
        bounds (required for POSITION and animation inputs).
        """
        array = np.ascontiguousarray(array)
        count = array.shape[0]
        if array.ndim == 3:  # (count, 4, 4) row-major -> column-major flat
            flat = np.ascontiguousarray(np.swapaxes(array, 1, 2)).reshape(count, 16)
        else:
            flat = array.reshape(count, -1)
        width = flat.shape[1]
        view = self.add_view(flat.tobytes(), target)
        accessor = gl.Accessor(bufferView=view, componentType=COMPONENT[flat.dtype], count=count,
                               type=TYPE[width])
        if normalized:
            accessor.normalized = True
        if minmax:
            accessor.min = [float(v) if flat.dtype.kind == "f" else int(v) for v in flat.min(0)]
            accessor.max = [float(v) if flat.dtype.kind == "f" else int(v) for v in flat.max(0)]
        self.gltf.accessors.append(accessor)
        return len(self.gltf.accessors) - 1

    # Mesh ---------------------------------------------------------------------------------
    def add_material(self, texture_png: bytes | None = None) -> int:
        """A matte material; with ``texture_png`` its base colour comes from that image."""
        pbr = gl.PbrMetallicRoughness(baseColorFactor=[1.0, 1.0, 1.0, 1.0], metallicFactor=0.0,
                                      roughnessFactor=1.0)
        if texture_png is not None:
            view = self.add_view(texture_png)
            self.gltf.images.append(gl.Image(bufferView=view, mimeType="image/png"))
            self.gltf.samplers.append(gl.Sampler(magFilter=gl.LINEAR,
                                                 minFilter=gl.LINEAR_MIPMAP_LINEAR,
                                                 wrapS=gl.CLAMP_TO_EDGE, wrapT=gl.CLAMP_TO_EDGE))
            self.gltf.textures.append(gl.Texture(sampler=len(self.gltf.samplers) - 1,
                                                 source=len(self.gltf.images) - 1))
            pbr.baseColorTexture = gl.TextureInfo(index=len(self.gltf.textures) - 1)
        self.gltf.materials.append(gl.Material(name="recon4d", pbrMetallicRoughness=pbr,
                                               doubleSided=False))
        return len(self.gltf.materials) - 1

    def add_primitive_attributes(self, positions: np.ndarray, faces: np.ndarray,
                                 colors: np.ndarray | None = None,
                                 normals: np.ndarray | None = None,
                                 uv: np.ndarray | None = None) -> tuple[gl.Attributes, int]:
        """Vertex attributes and the index accessor of one triangle list."""
        attrs = gl.Attributes(POSITION=self.add_accessor(positions.astype(np.float32),
                                                         gl.ARRAY_BUFFER, minmax=True))
        if normals is not None:
            attrs.NORMAL = self.add_accessor(normals.astype(np.float32), gl.ARRAY_BUFFER)
        if colors is not None:
            # glTF's COLOR_0 is linear (it multiplies the base colour before lighting); the
            # fitted colours are the video's sRGB values. 16-bit keeps the dark steps; RGBA
            # because a vertex attribute's elements must be 4-byte aligned.
            linear = srgb_to_linear(np.asarray(colors)[:, :3].astype(np.float64) / 255.0)
            rgba = np.concatenate([linear, np.ones((len(linear), 1))], 1)
            attrs.COLOR_0 = self.add_accessor(np.round(rgba * 65535).astype(np.uint16),
                                              gl.ARRAY_BUFFER, normalized=True)
        if uv is not None:
            attrs.TEXCOORD_0 = self.add_accessor(uv.astype(np.float32), gl.ARRAY_BUFFER)
        index_type = np.uint16 if len(positions) < 65535 else np.uint32
        indices = self.add_accessor(np.asarray(faces).reshape(-1).astype(index_type),
                                    gl.ELEMENT_ARRAY_BUFFER)
        return attrs, indices

    def add_node(self, node: gl.Node, root: bool = False) -> int:
        self.gltf.nodes.append(node)
        index = len(self.gltf.nodes) - 1
        if root:
            self.gltf.scenes[0].nodes.append(index)
        return index

    # Output -------------------------------------------------------------------------------
    def to_bytes(self, extras: dict | None = None) -> bytes:
        while len(self.blob) % 4:
            self.blob += b"\x00"
        self.gltf.buffers = [gl.Buffer(byteLength=len(self.blob))]
        if extras:
            self.gltf.asset.extras = extras
        self.gltf.set_binary_blob(bytes(self.blob))
        data = self.gltf.save_to_bytes()
        return b"".join(data) if isinstance(data, list) else bytes(data)

    def save(self, path: str | Path, extras: dict | None = None) -> Path:
        """Write the GLB atomically."""
        return atomic_write_bytes(path, self.to_bytes(extras))


def png_bytes(image: np.ndarray) -> bytes:
    """(H, W, 3|4) uint8 -> PNG bytes."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def keyframe_seconds(times: np.ndarray, fps: float) -> np.ndarray:
    """Normalised times (F,) in [0, 1] -> strictly increasing keyframe times in seconds.

    A clip of F frames at ``fps`` lasts (F - 1) / fps seconds; t maps linearly onto that.
    """
    times = np.asarray(times, dtype=np.float64)
    count = len(times)
    duration = max(count - 1, 1) / float(fps)
    seconds = (times * duration).astype(np.float32)
    # glTF demands strictly increasing inputs: nudge repeats (exact, or equal once stored as
    # float32) a microsecond up, or to the next float32 where that rounds away (late in a long
    # clip); never to a subnormal step that a viewer may flush to zero.
    for i in range(1, count):
        if seconds[i] <= seconds[i - 1]:
            seconds[i] = max(np.nextafter(seconds[i - 1], np.float32(np.inf)),
                             np.float32(seconds[i - 1] + np.float32(1e-6)))
    return seconds
