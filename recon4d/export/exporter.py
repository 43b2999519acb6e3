"""Orchestrates every export of a fitted scene: ``export_run`` for a run directory,
``export_scene`` for any object implementing :class:`recon4d.model.protocol.DynamicScene`.

Layout written (``RUN_DIR/export`` unless told otherwise; videos in ``RUN_DIR/renders``)::

    export/model_skin.glb        glb-skin: skinned, keyframed (+ baked texture with --texture)
    export/model_morph.glb       glb-morph: one morph target per frame
    export/model.usdc            usd: time-sampled points (usd-core)
    export/canonical_mesh.ply    the fixed-topology mesh in canonical space (any of the above)
    export/meshes/frame_XXXX.ply mesh-seq: TSDF mesh per input frame (scene frame)
    export/splats/               splats: per-frame 3DGS PLYs, canonical.ply, warp.npz
    export/provenance.json       run, step, settings, files, measured skinning error
    renders/*.mp4                video: input views, orbit, normals, depth, alpha, side by side

GLB/USD use an engine frame by default (``frame="y-up"``: Y up, the first input camera looking
down -Z, the object centred on the origin and standing on y = 0); mesh-seq and splats stay in
the scene's own frame (OpenCV axes) so they compare directly with ground truth and splat
viewers. The transform used is recorded as ``world_to_asset`` in the provenance.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from recon4d.errors import UserError
from recon4d.utils.console import info, warn

FORMATS = ("glb-skin", "glb-morph", "mesh-seq", "usd", "splats", "video", "web")
DEFAULT_FORMATS = ("glb-skin", "video")


@dataclass
class ExportOptions:
    """Export settings (the CLI exposes them as flags).

    Attributes:
        faces: triangle budget of the animated mesh (quadric decimation).
        texture: bake a UV texture (xatlas) into the GLBs besides vertex colours.
        texture_size: side of the baked texture, pixels.
        fps: playback rate of the animations and videos (default: the dataset's, else 24).
        resolution: TSDF voxels along the object's longest side.
        views: virtual cameras fused per mesh.
        image_size: side of each virtual view, pixels.
        backend: renderer backend.
        mesh_format: "ply" or "obj" for mesh-seq.
        frame: "y-up" (engine frame) or "scene" (raw scene coordinates) for GLB/USD.
        refine_skin: fit per-frame joint corrections and per-vertex weights (4 of the warp
            field's 6 largest bones) so linear blend skinning follows the warp closely.
        orbit_frames: frames of the orbit video.
        orbit_size: side of the orbit video, pixels.
    """

    faces: int = 20000
    texture: bool = False
    texture_size: int = 1024
    fps: float | None = None
    resolution: int = 128
    views: int = 24
    image_size: int = 256
    backend: str = "auto"
    mesh_format: str = "ply"
    frame: str = "y-up"
    refine_skin: bool = True
    orbit_frames: int = 48
    orbit_size: int = 256


def check_formats(formats) -> list[str]:
    """Validate and de-duplicate format names (UserError on an unknown one)."""
    out = []
    for name in formats:
        if name not in FORMATS:
            raise UserError(f"unknown export format '{name}': choose from {', '.join(FORMATS)}")
        if name not in out:
            out.append(name)
    if not out:
        raise UserError(f"no export format given: choose from {', '.join(FORMATS)}")
    return out


def engine_frame(scene, vertices0: np.ndarray) -> np.ndarray:
    """(4, 4) world->asset transform: the first input camera's axes with y and z flipped (so
    image-up is +Y and the camera looks down -Z, glTF's convention), translated so that
    ``vertices0`` (frame 0's world positions) is centred in x/z and rests on y = 0."""
    viewmat = scene.input_cameras().viewmats[0].detach().cpu().double().numpy()
    flip = np.diag([1.0, -1.0, -1.0])
    g = np.eye(4)
    g[:3, :3] = flip @ viewmat[:3, :3]
    moved = vertices0 @ g[:3, :3].T
    lo, hi = moved.min(0), moved.max(0)
    g[:3, 3] = [-(lo[0] + hi[0]) / 2, -lo[1], -(lo[2] + hi[2]) / 2]
    return g


def _fusion(options: ExportOptions):
    from .mesh_seq import FusionSettings

    return FusionSettings(resolution=options.resolution, views=options.views,
                          image_size=options.image_size, backend=options.backend)


def build_asset_mesh(scene, options: ExportOptions):
    """(AnimatedMesh in the asset frame, world->asset (4, 4), canonical trimesh)."""
    from .animated_mesh import build_animated_mesh, canonical_mesh

    info("extracting the canonical mesh (TSDF of the canonical surfels)")
    mesh = canonical_mesh(scene, options.faces, _fusion(options))
    if len(mesh.faces) == 0:
        raise UserError("the canonical surfels gave an empty mesh (the fit may have failed): "
                        "check the run's renders, or fit again")
    animated = build_animated_mesh(scene, mesh, refine=options.refine_skin,
                                   fit_weights=options.refine_skin)
    if options.texture:
        from .texture import bake_texture, texture_available

        if texture_available():
            animated = bake_texture(animated, scene.canonical_surfels(), options.texture_size)
        else:
            warn("xatlas is not installed: --texture skipped, vertex colours only "
                 "(pip install xatlas)")
    if options.frame == "y-up":
        g = engine_frame(scene, animated.frames[0])
    elif options.frame == "scene":
        g = np.eye(4)
    else:
        raise UserError(f"unknown frame '{options.frame}': use 'y-up' or 'scene'")
    return animated.transformed(g), g, mesh


def export_scene(scene, out_dir: str | Path, formats=DEFAULT_FORMATS,
                 options: ExportOptions | None = None, renders_dir: str | Path | None = None,
                 dataset=None, run_dir: str | Path | None = None,
                 step: int | None = None) -> dict[str, object]:
    """Write ``formats`` of ``scene`` into ``out_dir`` (videos into ``renders_dir``, default
    ``out_dir/../renders``). Returns {format: path or list/dict of paths} plus "provenance"."""
    from .mesh_seq import write_mesh, write_mesh_sequence
    from .provenance import gltf_extras, make_provenance, write_provenance

    options = options or ExportOptions()
    formats = check_formats(formats)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    renders_dir = Path(renders_dir) if renders_dir is not None else out_dir.parent / "renders"
    fps = float(options.fps or (dataset.fps if dataset is not None else None) or 24.0)
    settings = dict(asdict(options), fps=fps, formats=formats)
    written: dict[str, object] = {}
    stats: dict = {}
    record = make_provenance(run_dir, step, settings)

    if any(f in formats for f in ("glb-skin", "glb-morph", "usd")):
        animated, g, canonical = build_asset_mesh(scene, options)
        stats = dict(animated.stats, vertices=len(animated.vertices), faces=len(animated.faces),
                     frames=len(animated.times), bones=animated.num_bones)
        record = make_provenance(run_dir, step, settings,
                                 {"world_to_asset": g.tolist(), "mesh": stats})
        written["canonical_mesh"] = write_mesh(canonical, out_dir / "canonical_mesh.ply")
        extras = gltf_extras(record)
        if "glb-skin" in formats:
            from .gltf_skin import write_skin_glb

            written["glb-skin"] = write_skin_glb(animated, out_dir / "model_skin.glb", fps, extras)
        if "glb-morph" in formats:
            from .gltf_morph import write_morph_glb

            written["glb-morph"] = write_morph_glb(animated, out_dir / "model_morph.glb", fps, extras)
        if "usd" in formats:
            from .usd import usd_available, write_usd

            if usd_available():
                written["usd"] = write_usd(animated, out_dir / "model.usdc", fps, record)
            else:
                warn("usd-core is not installed: USD export skipped (pip install usd-core)")
    if "mesh-seq" in formats:
        if options.mesh_format not in ("ply", "obj"):
            raise UserError(f"unknown mesh format '{options.mesh_format}': use 'ply' or 'obj'")
        info("per-frame meshes (TSDF fusion per input frame)")
        written["mesh-seq"] = write_mesh_sequence(scene, out_dir / "meshes", options.mesh_format,
                                                  _fusion(options))
    if "splats" in formats:
        from .splats import write_splats

        written["splats"] = write_splats(scene, out_dir / "splats")
    if "video" in formats:
        from .video import write_videos

        written["video"] = write_videos(scene, renders_dir, fps, dataset, options.backend,
                                        options.orbit_frames, options.orbit_size)
    if "web" in formats:
        written["web"] = _web(run_dir, out_dir / "web")
    written["provenance"] = write_provenance(out_dir / "provenance.json", record, written)
    return written


def _web(run_dir, out_dir: Path):
    if run_dir is None:
        raise UserError("format 'web' needs a run directory: use 'recon4d export RUN_DIR'")
    try:
        from recon4d.viewer.web_export import write_web
    except ImportError as exc:
        raise UserError("format 'web' needs the web viewer (recon4d.viewer.web_export), which "
                        "this installation lacks: export the other formats") from exc
    return write_web(run_dir, out_dir)


def export_run(run_dir: str | Path, formats=DEFAULT_FORMATS,
               options: ExportOptions | None = None) -> dict[str, object]:
    """Export the fitted run in ``run_dir`` into ``RUN_DIR/export`` (videos: ``RUN_DIR/renders``).

    Raises:
        UserError: when ``run_dir`` is not a fitted run, or a format is unknown.
    """
    from recon4d.model import load_run
    from recon4d.rundir import RunDir

    formats = check_formats(formats)
    run = RunDir(run_dir).require()
    scene = load_run(run.root, device="cpu")
    dataset = None
    if run.dataset.is_dir():
        from recon4d.data.dataset import load_dataset

        try:
            dataset = load_dataset(run.dataset)
        except UserError as exc:
            warn(f"dataset of the run unreadable ({exc}): videos without the input frames")
    step = getattr(scene, "fit_step", None)
    return export_scene(scene, run.export, formats, options, renders_dir=run.renders,
                        dataset=dataset, run_dir=run.root, step=step)
