"""Generate a synthetic scene: a recon4d dataset directory plus exact ground truth under ``gt/``.

::

    DIR/                       a normal recon4d dataset (recon4d.data.dataset), masks_from="synthetic"
      manifest.json, frames/, masks/, contact_sheet.png
      gt/gt.json               what is here (schema, scene, seed, sizes, cameras, bbox, files)
      gt/mesh.npz              faces (M,3) int32; vertices (F,V,3) float32 world; rest_vertices
                               (V,3) model frame; vertex_colors (V,3); times (F,)
      gt/depth.npz             depth (F,H,W) float32 camera z at pixel centres, 0 = background
      gt/normals.npz           normals (F,H,W,3) float16 unit world-space, 0 = background
      gt/novel/images/cCC_fFFFFF.png, gt/novel/masks/cCC_fFFFFF.png
                               held-out cameras (never in the dataset) at a subset of frames
      gt/novel/depth.npz       depth (K,Fn,H,W) float32; normals (K,Fn,H,W,3) float16

World frame = the frame of the dataset cameras (OpenCV world-to-camera; y down, the object
centred at the origin, ~1 unit across, cameras ~2.7 units away).
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import numpy as np

from . import animate, meshes, raster
from .builders import BUILDERS

GT_SCHEMA_VERSION = 1
GT_KIND = "recon4d-ground-truth"
DEFINITIONS_DIR = Path(__file__).resolve().parent / "definitions"


# --------------------------------------------------------------------------------------------
# Definitions
# --------------------------------------------------------------------------------------------
def _read_definitions() -> dict[str, dict]:
    out = {}
    for path in sorted(DEFINITIONS_DIR.glob("*.json")):
        with open(path, "r", encoding="utf-8") as handle:
            defn = json.load(handle)
        defn.setdefault("name", path.stem)
        out[defn["name"]] = defn
    return out


def list_scenes() -> list[dict]:
    """Every scene definition: ``{"name", "kind" ("synthetic" | "clip"), "description", ...}``.

    Synthetic entries also give ``generator``, ``resolution``, ``frames`` and ``camera``; clip
    entries give ``path`` (resolved, with ``exists``) and suggested ``ingest`` options.
    """
    rows = []
    for name, defn in _read_definitions().items():
        row = {"name": name, "kind": defn.get("kind", "synthetic"),
               "description": defn.get("description", "")}
        if row["kind"] == "clip":
            path = resolve_clip_path(defn["path"])
            row.update(path=str(path), exists=path.exists(), ingest=defn.get("ingest", {}))
        else:
            row.update(generator=defn["generator"], resolution=defn.get("resolution", 128),
                       frames=defn.get("frames", 24), camera=defn.get("camera", {}).get("mode", "fixed"))
        rows.append(row)
    # Synthetic scenes first (default on top), then the user clips.
    rows.sort(key=lambda r: (r["kind"] != "synthetic", r["name"] != "default", r["name"]))
    return rows


def get_definition(name: str) -> dict:
    from recon4d.errors import UserError

    defs = _read_definitions()
    if name not in defs:
        raise UserError(f"unknown scene '{name}': run 'recon4d scenes list' for the names "
                        f"({', '.join(sorted(defs))})")
    return copy.deepcopy(defs[name])


def resolve_clip_path(path: str) -> Path:
    """A clip entry's path: absolute as given; relative ones against the working directory, then
    the repository checkout (``../shared`` beside it), then ``$RECON4D_SHARED``'s parent."""
    import os

    p = Path(path)
    if p.is_absolute():
        return p
    candidates = [Path.cwd() / p, DEFINITIONS_DIR.parents[1] / p]
    shared = os.environ.get("RECON4D_SHARED")
    if shared and p.parts and p.parts[0] == ".." and len(p.parts) > 1 and p.parts[1] == "shared":
        candidates.insert(0, Path(shared).joinpath(*p.parts[2:]))
    for c in candidates:
        if c.exists():
            return c.resolve()
    return candidates[-1]


def _merge(base: dict, over: dict) -> dict:
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
    return base


# --------------------------------------------------------------------------------------------
# Cameras
# --------------------------------------------------------------------------------------------
def _input_cameras(defn: dict, num: int, size: int):
    cam = defn.get("camera", {})
    dist = float(cam.get("distance", 2.7))
    elev = float(cam.get("elevation_deg", 12.0))
    azim = float(cam.get("azimuth_deg", 0.0))
    K = animate.intrinsics(size, size, float(cam.get("fov_deg", 40.0)))
    if cam.get("mode", "fixed") == "orbit":
        sweep = float(cam.get("sweep_deg", 360.0))
        # A full 360 sweep ends one step short of the start so no two frames share a view.
        steps = num if abs(sweep) >= 360 else max(num - 1, 1)
        azims = azim + sweep * np.arange(num) / steps
    else:
        azims = np.full(num, azim)
    viewmats = np.stack([animate.look_at(animate.orbit_eye(dist, a, elev)) for a in azims])
    return viewmats, np.repeat(K[None], num, axis=0)


def _novel_cameras(defn: dict, size: int):
    cam = defn.get("camera", {})
    novel = defn.get("novel_views", {})
    dist = float(cam.get("distance", 2.7))
    K = animate.intrinsics(size, size, float(cam.get("fov_deg", 40.0)))
    views = novel.get("views", [[25.0, 12.0], [-25.0, 12.0], [0.0, 35.0], [15.0, -5.0]])
    viewmats = np.stack([animate.look_at(animate.orbit_eye(dist, float(a), float(e)))
                         for a, e in views])
    return viewmats, np.repeat(K[None], len(views), axis=0), [[float(a), float(e)] for a, e in views]


# --------------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------------
def make_scene(name: str, out_dir: str | Path, seed: int = 0, overwrite: bool = False,
               **overrides) -> Path:
    """Generate scene ``name`` into ``out_dir`` (a dataset dir with ``gt/``); returns the path.

    Args:
        name: a synthetic scene from :func:`list_scenes`.
        seed: texture and motion randomness; the same seed gives identical files.
        overrides: top-level definition keys to replace, e.g. ``resolution=64, frames=8``,
            or nested dicts merged key by key (``camera={"elevation_deg": 20}``).
    """
    from recon4d.data.dataset import CameraSet, write_dataset
    from recon4d.errors import UserError
    from recon4d.utils.console import info, track

    defn = get_definition(name)
    if defn.get("kind", "synthetic") == "clip":
        ingest = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in defn.get("ingest", {}).items())
        raise UserError(f"'{name}' is a user clip, not a synthetic scene: run 'recon4d ingest "
                        f"{resolve_clip_path(defn['path'])} --out {out_dir} {ingest}'".rstrip())
    overrides = {k: v for k, v in overrides.items() if v is not None}
    _merge(defn, overrides)
    size, num = int(defn.get("resolution", 128)), int(defn.get("frames", 24))
    if size < 16 or size > 2048:
        raise UserError(f"resolution {size} is out of range: use 16 to 2048 pixels")
    if num < 2 or num > 1000:
        raise UserError(f"frames {num} is out of range: use 2 to 1000 frames")
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise UserError(f"output '{out_dir}' already exists: choose another --out or pass --overwrite")

    start = time.monotonic()
    rng = np.random.default_rng(int(seed))
    geom = BUILDERS[defn["generator"]](defn, rng)
    times = np.linspace(0.0, 1.0, num)
    verts = np.stack([geom.pose(float(t)) @ animate.MODEL2WORLD.T for t in times])
    # Centre the motion's bounding box on the origin: the object sits mid-frame.
    lo, hi = verts.reshape(-1, 3).min(0), verts.reshape(-1, 3).max(0)
    verts -= (lo + hi) / 2
    normals = np.stack([meshes.vertex_normals(v, geom.faces) for v in verts])
    viewmats, Ks = _input_cameras(defn, num, size)
    nv_viewmats, nv_Ks, nv_views = _novel_cameras(defn, size)
    stride = int(defn.get("novel_views", {}).get("frame_stride", 3))
    nv_frames = list(range(0, num, max(stride, 1)))
    ssaa = int(defn.get("ssaa", 3))
    shading = float(defn.get("shading", 0.0))

    def draw(f: int, viewmat, K) -> raster.View:
        return raster.render_view(verts[f], geom.faces, normals[f], geom.rest, geom.texture,
                                  viewmat, K, size, size, ssaa=ssaa, shading=shading)

    frames = np.empty((num, size, size, 3), np.float32)
    masks = np.empty((num, size, size), np.float32)
    depth = np.empty((num, size, size), np.float32)
    nrm = np.empty((num, size, size, 3), np.float32)
    for f in track(range(num), description=f"rendering {name}"):
        view = draw(f, viewmats[f], Ks[f])
        frames[f], masks[f], depth[f], nrm[f] = view.rgb, view.coverage, view.depth, view.normal
    nv = [[draw(f, nv_viewmats[c], nv_Ks[c]) for f in nv_frames] for c in range(len(nv_viewmats))]

    world = verts.reshape(-1, 3)
    bbox_min, bbox_max = world.min(0), world.max(0)
    gt_meta = {
        "schema_version": GT_SCHEMA_VERSION,
        "kind": GT_KIND,
        "scene": name,
        "seed": int(seed),
        "definition": defn,
        "num_frames": num,
        "width": size,
        "height": size,
        "times": times.tolist(),
        "frame": "world = dataset camera frame (OpenCV cameras, y down), object centred at origin",
        "mesh": {"file": "mesh.npz", "vertices": int(verts.shape[1]),
                 "faces": int(len(geom.faces)), "fixed_topology": True},
        "depth": {"file": "depth.npz", "key": "depth",
                  "definition": "camera z at pixel centres, 0 = background"},
        "normals": {"file": "normals.npz", "key": "normals",
                    "definition": "unit world-space, 0 = background"},
        "bbox_min": bbox_min.tolist(),
        "bbox_max": bbox_max.tolist(),
        "bbox_diagonal": float(np.linalg.norm(bbox_max - bbox_min)),
        "novel": {
            "viewmats": nv_viewmats.tolist(), "Ks": nv_Ks.tolist(), "views_deg": nv_views,
            "frames": nv_frames, "images": "novel/images/c{cam:02d}_f{frame:05d}.png",
            "masks": "novel/masks/c{cam:02d}_f{frame:05d}.png", "depth": "novel/depth.npz",
            "normals": "novel/depth.npz (key normals)",
        },
        "builder": geom.info,
        "ssaa": ssaa,
        "shading": shading,
    }
    vertex_colors = geom.texture(geom.rest).astype(np.float32)

    def write_gt(tmp: Path) -> None:
        from recon4d.utils.atomic import atomic_write_json

        gt = tmp / "gt"
        (gt / "novel" / "images").mkdir(parents=True)
        (gt / "novel" / "masks").mkdir(parents=True)
        np.savez_compressed(gt / "mesh.npz", faces=geom.faces.astype(np.int32),
                            vertices=verts.astype(np.float32), rest_vertices=geom.rest.astype(np.float32),
                            vertex_colors=vertex_colors, times=times.astype(np.float32))
        np.savez_compressed(gt / "depth.npz", depth=depth)
        np.savez_compressed(gt / "normals.npz", normals=nrm.astype(np.float16))
        from PIL import Image

        for c, row in enumerate(nv):
            for f, view in zip(nv_frames, row):
                Image.fromarray(_u8(view.rgb)).save(gt / "novel" / "images" / f"c{c:02d}_f{f:05d}.png")
                Image.fromarray(_u8(view.coverage)).save(gt / "novel" / "masks" / f"c{c:02d}_f{f:05d}.png")
        np.savez_compressed(gt / "novel" / "depth.npz",
                            depth=np.stack([[v.depth for v in row] for row in nv]),
                            normals=np.stack([[v.normal for v in row] for row in nv]).astype(np.float16))
        gt_meta["generation_seconds"] = round(time.monotonic() - start, 3)
        atomic_write_json(gt / "gt.json", gt_meta)
        _contact_sheet(frames, masks).save(tmp / "contact_sheet.png")

    cameras = CameraSet(viewmats, Ks, mode="synthetic",
                        params={"scene": name, "seed": int(seed), **defn.get("camera", {})})
    source = {"type": "synthetic", "scene": name, "seed": int(seed), "generator": defn["generator"]}
    write_dataset(out_dir, frames, masks, times, cameras, source=source, masks_from="synthetic",
                  background=(1.0, 1.0, 1.0), extras={"scene": name, "seed": int(seed)},
                  overwrite=overwrite, extra_writer=write_gt)
    info(f"scene '{name}' written to {out_dir} ({num} frames, {size}x{size}, "
         f"{time.monotonic() - start:.1f}s)")
    return out_dir


def _u8(a: np.ndarray) -> np.ndarray:
    return (np.clip(a, 0, 1) * 255 + 0.5).astype(np.uint8)


def _contact_sheet(frames: np.ndarray, masks: np.ndarray, columns: int = 8):
    """Frames in a grid, mask edge tinted red, for a person to look at."""
    from PIL import Image

    num, h, w = masks.shape
    rows = (num + columns - 1) // columns
    sheet = np.ones((rows * h, columns * w, 3), np.float32)
    for i in range(num):
        img = frames[i].copy()
        m = masks[i] > 0.5
        edge = m & ~(np.roll(m, 1, 0) & np.roll(m, -1, 0) & np.roll(m, 1, 1) & np.roll(m, -1, 1))
        img[edge] = (1.0, 0.1, 0.1)
        r, c = divmod(i, columns)
        sheet[r * h:(r + 1) * h, c * w:(c + 1) * w] = img
    return Image.fromarray(_u8(sheet))
