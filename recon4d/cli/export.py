"""``recon4d export``: animated meshes for game engines, per-frame meshes, USD, splats, videos."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import tyro

Format = Literal["glb-skin", "glb-morph", "mesh-seq", "usd", "splats", "video", "web"]


@dataclass
class Config:
    """Export a fitted run into RUN_DIR/export (videos into RUN_DIR/renders).

    glb-skin: one fixed-topology mesh skinned to the warp field's bones (root + one joint per
    bone, keyframed per frame); glb-morph: the same mesh with one morph target per frame;
    mesh-seq: a TSDF mesh per frame (PLY/OBJ); usd: time-sampled points (needs usd-core);
    splats: 3DGS-compatible PLY per frame plus canonical surfels and warp parameters;
    video: input-view replay, orbit, normals, depth, alpha and input|render MP4s;
    web: the web viewer bundle (when the viewer is installed).
    Every export records its provenance in export/provenance.json and in each GLB's extras.
    """

    run_dir: tyro.conf.Positional[Path]
    """The run directory of a finished 'recon4d fit'."""
    format: tuple[Format, ...] = ("glb-skin", "video")
    """Formats to write (several allowed)."""
    faces: int = 20000
    """Triangle budget of the animated mesh."""
    texture: bool = False
    """Also bake a UV texture (xatlas) into the GLBs."""
    texture_size: int = 1024
    """Side of the baked texture in pixels."""
    fps: Optional[float] = None
    """Animation and video frame rate (default: the dataset's, else 24)."""
    resolution: int = 128
    """TSDF voxels along the object's longest side."""
    views: int = 24
    """Virtual cameras fused per mesh."""
    image_size: int = 256
    """Side of each virtual view in pixels."""
    mesh_format: Literal["ply", "obj"] = "ply"
    """File format of the per-frame meshes."""
    frame: Literal["y-up", "scene"] = "y-up"
    """Coordinates of GLB/USD: engine frame (Y up, object on the ground) or the raw scene frame."""
    backend: Literal["auto", "reference", "native", "gsplat"] = "auto"
    """Renderer backend for TSDF views and videos."""
    refine_skin: bool = True
    """Fit per-frame joint corrections and per-vertex weights so linear blend skinning follows
    the warp field closely (--no-refine-skin: the warp field's bones and top-4 weights as is)."""


def run(config: Config) -> int:
    from recon4d.errors import UserError
    from recon4d.export.exporter import ExportOptions, export_run
    from recon4d.utils.console import info

    if config.faces < 4:
        raise UserError(f"--faces {config.faces} is too small: give at least 4 (e.g. 20000)")
    if config.resolution < 16 or config.views < 4 or config.image_size < 32:
        raise UserError("--resolution >= 16, --views >= 4 and --image-size >= 32 are needed for a "
                        "usable mesh: raise them")
    if config.fps is not None and not (math.isfinite(config.fps) and config.fps > 0):
        raise UserError(f"--fps must be a positive number of frames per second, got {config.fps}")
    if config.texture and config.texture_size < 16:
        raise UserError(f"--texture-size {config.texture_size} is too small: give at least 16 "
                        "(e.g. 1024)")
    from recon4d.render import require_backend

    require_backend(config.backend, "cpu")  # export renders on the CPU (exporter.load_run)
    options = ExportOptions(faces=config.faces, texture=config.texture,
                            texture_size=config.texture_size, fps=config.fps,
                            resolution=config.resolution, views=config.views,
                            image_size=config.image_size, backend=config.backend,
                            mesh_format=config.mesh_format, frame=config.frame,
                            refine_skin=config.refine_skin)
    written = export_run(config.run_dir, list(config.format), options)
    for name, value in written.items():
        if isinstance(value, dict):
            for key, path in value.items():
                info(f"{name} {key}: {path if not isinstance(path, list) else f'{len(path)} files'}")
        elif isinstance(value, list):
            info(f"{name}: {len(value)} files in {Path(value[0]).parent if value else '-'}")
        else:
            info(f"{name}: {value}")
    return 0
