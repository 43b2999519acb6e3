"""Reading a synthetic scene's ground truth (``DATASET/gt``) back into numpy arrays."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .generate import GT_KIND, GT_SCHEMA_VERSION


@dataclass
class GroundTruth:
    """Exact geometry and held-out views of a synthetic scene. World frame = dataset cameras.

    Attributes:
        root: the gt folder.
        times: (F,) normalised times of the dataset frames.
        faces: (M, 3) int64, fixed over time.
        vertices: (F, V, 3) float32 world-space vertices per frame.
        rest_vertices: (V, 3) rest pose (model frame) the texture is defined on.
        vertex_colors: (V, 3) float32 texture sampled at the vertices.
        depth: (F, H, W) float32 camera z of the input views at pixel centres, 0 = background.
        normals: (F, H, W, 3) float32 unit world-space normals of the input views, 0 = background.
        viewmats, Ks: (F, 4, 4), (F, 3, 3) the input cameras (OpenCV world-to-camera, pixels).
        novel_viewmats, novel_Ks: (K, 4, 4), (K, 3, 3) held-out cameras.
        novel_frames: (Fn,) frame indices at which the novel views were rendered.
        novel_images: (K, Fn, H, W, 3) float32 in [0, 1], over white.
        novel_masks: (K, Fn, H, W) float32 coverage in [0, 1].
        novel_depth: (K, Fn, H, W) float32; novel_normals (K, Fn, H, W, 3) float32.
        meta: the parsed gt.json.
    """

    root: Path
    times: np.ndarray
    faces: np.ndarray
    vertices: np.ndarray
    rest_vertices: np.ndarray
    vertex_colors: np.ndarray
    depth: np.ndarray
    normals: np.ndarray
    viewmats: np.ndarray
    Ks: np.ndarray
    novel_viewmats: np.ndarray
    novel_Ks: np.ndarray
    novel_frames: np.ndarray
    novel_images: np.ndarray
    novel_masks: np.ndarray
    novel_depth: np.ndarray
    novel_normals: np.ndarray
    meta: dict = field(default_factory=dict)

    @property
    def num_frames(self) -> int:
        return int(self.vertices.shape[0])

    @property
    def width(self) -> int:
        return int(self.meta["width"])

    @property
    def height(self) -> int:
        return int(self.meta["height"])

    @property
    def bbox_diagonal(self) -> float:
        """Diagonal of the bounding box of all frames' vertices: the unit of the temporal
        jitter. Chamfer-L1 and F-score take each frame's own (:meth:`frame_bbox_diagonal`,
        docs/scenes_eval.md), which a moving subject's clip-wide box would inflate."""
        return float(self.meta["bbox_diagonal"])

    def frame_bbox_diagonal(self, frame: int) -> float:
        """Diagonal of frame ``frame``'s vertices' bounding box: the unit of that frame's
        Chamfer-L1 and F-score threshold."""
        v = self.vertices[frame]
        return float(np.linalg.norm(v.max(0) - v.min(0)))

    def mesh(self, frame: int):
        """The ground-truth mesh of ``frame`` as a trimesh.Trimesh (world frame)."""
        import trimesh

        return trimesh.Trimesh(self.vertices[frame], self.faces, process=False)


def load_ground_truth(path) -> GroundTruth:
    """Load ``path/gt`` (``path`` a scene dataset dir) or ``path`` itself when it is a gt folder.

    Raises:
        UserError: when there is no ground truth or a file is missing or malformed.
    """
    from PIL import Image

    from recon4d.errors import UserError
    from recon4d.utils.atomic import read_json

    path = Path(path)
    root = path / "gt" if (path / "gt" / "gt.json").is_file() else path
    meta_path = root / "gt.json"
    if not meta_path.is_file():
        raise UserError(f"'{path}' has no ground truth (no gt/gt.json): pass a scene made with "
                        "'recon4d scenes make NAME --out DIR'")
    meta = read_json(meta_path)
    if meta.get("kind") != GT_KIND or meta.get("schema_version") != GT_SCHEMA_VERSION:
        raise UserError(f"{meta_path} is not recon4d ground truth of schema {GT_SCHEMA_VERSION}: "
                        "make the scene again with this version")
    try:
        with np.load(root / "mesh.npz") as m:
            faces = m["faces"].astype(np.int64)
            vertices, rest, colours = m["vertices"], m["rest_vertices"], m["vertex_colors"]
            times = m["times"]
        with np.load(root / "depth.npz") as d:
            depth = d["depth"]
        with np.load(root / "normals.npz") as n:
            normals = n["normals"].astype(np.float32)
        with np.load(root / "novel" / "depth.npz") as nv:
            novel_depth, novel_normals = nv["depth"], nv["normals"].astype(np.float32)
    except (OSError, KeyError, ValueError) as exc:
        raise UserError(f"ground truth in '{root}' is incomplete ({exc}): make the scene again") from exc
    novel = meta["novel"]
    frames = np.asarray(novel["frames"], np.int64)
    num_cams = len(novel["viewmats"])
    images = np.empty((num_cams, len(frames), meta["height"], meta["width"], 3), np.float32)
    masks = np.empty((num_cams, len(frames), meta["height"], meta["width"]), np.float32)
    for c in range(num_cams):
        for j, f in enumerate(frames):
            for key, target, mode in (("images", images, "RGB"), ("masks", masks, "L")):
                file = root / novel[key].format(cam=c, frame=int(f))
                if not file.is_file():
                    raise UserError(f"ground truth file {file} is missing: make the scene again")
                target[c, j] = np.asarray(Image.open(file).convert(mode), np.float32) / 255.0
    manifest = path / "manifest.json" if root != path else root.parent / "manifest.json"
    if manifest.is_file():
        cams = read_json(manifest)["cameras"]
        viewmats, Ks = np.asarray(cams["viewmats"]), np.asarray(cams["Ks"])
    else:
        viewmats = Ks = np.zeros((0,))
    return GroundTruth(root, times, faces, vertices, rest, colours, depth, normals, viewmats, Ks,
                       np.asarray(novel["viewmats"], np.float64), np.asarray(novel["Ks"], np.float64),
                       frames, images, masks, novel_depth, novel_normals, meta)
