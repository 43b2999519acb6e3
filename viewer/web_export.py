"""Static share: a folder that plays the animated mesh in a web browser, no Python needed.

``write_web(run_dir, out_dir)`` records a viser scene in which one mesh per input frame is
shown in turn (fixed topology: the canonical mesh pushed through the warp, the same positions
the morph-target GLB stores), then writes::

    OUT/
      index.html     self-contained page (viser client + recording embedded): open it from disk
      scene.viser    the same recording as a file, for a web server (player.html?playbackPath=)
      player.html    viser's client page, which plays a .viser file given by URL
      web.json       what was written: frames, fps, vertex and face counts, viser version

The recording is made with viser's state serializer (``ViserServer.get_scene_serializer``:
messages recorded with ``insert_sleep`` between frames, played back with a timeline by the
client). The page loops the clip, has a timeline with pause and speed controls, and lets the
visitor orbit freely.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np

from .cameras import camera_to_pose
from .overlays import scene_extent
from .source import MeshAnimation


def canonical_mesh_animation(scene, faces: int = 8000) -> MeshAnimation:
    """Extract the canonical mesh with the exporter and move it to every frame time."""
    from recon4d.errors import UserError

    try:
        from recon4d.export.animated_mesh import animated_vertices, canonical_mesh
    except ImportError as exc:
        raise UserError("the web export needs recon4d's mesh exporter (recon4d.export), which is "
                        "not installed: install the complete package") from exc
    mesh = canonical_mesh(scene, faces=faces)
    if len(mesh.faces) == 0:
        raise UserError("the fitted scene gave an empty mesh (too few opaque surfels): fit "
                        "longer, then export again")
    times = scene.frame_times.detach().cpu().numpy()
    frames = animated_vertices(scene, np.asarray(mesh.vertices, np.float64), times)
    colors = np.asarray(mesh.visual.vertex_colors)[:, :3].astype(np.uint8)
    return MeshAnimation(np.asarray(mesh.faces, np.int32), np.asarray(frames, np.float32),
                         np.asarray(times, np.float32), colors, "canonical mesh")


def record_mesh_animation(mesh: MeshAnimation, fps: float, camera=None, up=None,
                          title: str = "recon4d") -> tuple[bytes, str]:
    """Record ``mesh`` playing at ``fps`` frames per second.

    Args:
        mesh: the animation (one recorded mesh per row of ``mesh.vertices``).
        fps: playback frame rate.
        camera: optional (position (3,), look_at (3,), up (3,), fov_y radians) starting view.
        up: optional (3,) world up direction.
        title: page title.

    Returns:
        (the .viser recording bytes, a self-contained HTML page that embeds it).
    """
    import trimesh
    import viser

    from .app import _free_port

    with contextlib.redirect_stdout(io.StringIO()):  # viser's banner
        server = viser.ViserServer(host="127.0.0.1", port=_free_port("127.0.0.1"),
                                   label=title, verbose=False)
    try:
        if up is not None:
            server.scene.set_up_direction(tuple(float(x) for x in up))
        if camera is not None:
            position, look_at, cam_up, fov = camera
            server.initial_camera.position = tuple(float(x) for x in position)
            server.initial_camera.look_at = tuple(float(x) for x in look_at)
            server.initial_camera.up = tuple(float(x) for x in cam_up)
            server.initial_camera.fov = float(fov)
        serializer = server.get_scene_serializer()
        colors = mesh.colors if mesh.colors is not None else np.full(
            (mesh.vertices.shape[1], 3), 200, np.uint8)
        handles = []
        for i, verts in enumerate(mesh.vertices):
            tm = trimesh.Trimesh(vertices=verts, faces=mesh.faces, vertex_colors=colors,
                                 process=False)
            handles.append(server.scene.add_mesh_trimesh(f"/mesh/frame_{i:04d}", tm,
                                                         visible=i == 0))
        # One pass through the clip; the player loops it. Hide-then-show keeps one frame visible.
        count = len(handles)
        for i in range(count):
            serializer.insert_sleep(1.0 / fps)
            if count > 1:
                handles[i].visible = False
                handles[(i + 1) % count].visible = True
        recording = _embed(serializer)
    finally:
        with contextlib.redirect_stdout(io.StringIO()):
            server.stop()
    return recording


def _embed(serializer) -> tuple[bytes, str]:
    """(recording bytes, standalone HTML) from one serializer (serialize() may run only once)."""
    import base64
    from pathlib import Path as _Path

    import viser

    data = serializer.serialize()
    client = (_Path(viser.__file__).parent / "client" / "build" / "index.html").read_text()
    inject = ("<script>window.__VISER_EMBED_DATA__=\"" + base64.b64encode(data).decode("ascii")
              + "\";window.__VISER_EMBED_CONFIG__={darkMode:false};</script>")
    head_end = client.index("</head>")
    return data, client[:head_end] + inject + client[head_end:]


def write_web(run_dir: str | Path, out_dir: str | Path | None = None, faces: int = 8000,
              fps: float | None = None, overwrite: bool = True, source=None) -> Path:
    """Write the static web player of a run (see the module docstring).

    Args:
        run_dir: the fitted run.
        out_dir: destination folder (default RUN_DIR/export/web).
        faces: triangle budget when the canonical mesh has to be extracted here.
        fps: playback rate (default: the clip's, else 12).
        overwrite: replace an existing ``out_dir`` (atomically, after the new one is complete).
        source: an already opened :class:`~recon4d.viewer.source.ViewerSource` (tests, callers
            that hold the scene); default: :func:`~recon4d.viewer.source.open_run`.

    Returns:
        The output folder.
    """
    import viser

    from recon4d.errors import UserError
    from recon4d.utils.atomic import atomic_directory, atomic_write_json

    from .source import open_run

    run_dir = Path(run_dir)
    out_dir = Path(out_dir) if out_dir is not None else run_dir / "export" / "web"
    if out_dir.exists() and not overwrite:
        raise UserError(f"'{out_dir}' already exists: remove it or allow overwriting")
    source = source or open_run(run_dir)
    scene = source.scene
    mesh = source.mesh or canonical_mesh_animation(scene, faces=faces)
    fps = float(fps or source.fps or 12.0)
    if not fps > 0:
        raise UserError(f"fps must be positive, got {fps}")

    cams = scene.input_cameras()
    pose = camera_to_pose(cams.viewmats[0].detach().double().cpu().numpy(),
                          cams.Ks[0].detach().double().cpu().numpy(), cams.height)
    center, radius = scene_extent(scene)
    distance = float(np.linalg.norm(center - pose.position)) or 1.0
    start = pose.position - pose.forward() * 0.5 * distance  # a little further back than camera 0
    camera = (start, start + pose.forward() * 1.5 * distance, pose.up(), pose.fov_y)
    data, html = record_mesh_animation(mesh, fps, camera=camera, up=pose.up(),
                                       title=f"recon4d: {run_dir.name}")
    client_page = (Path(viser.__file__).parent / "client" / "build" / "index.html").read_bytes()
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        (tmp / "index.html").write_text(html, encoding="utf-8")
        (tmp / "scene.viser").write_bytes(data)
        (tmp / "player.html").write_bytes(client_page)
        atomic_write_json(tmp / "web.json", {
            "frames": int(mesh.vertices.shape[0]),
            "fps": fps,
            "vertices": int(mesh.vertices.shape[1]),
            "faces": int(mesh.faces.shape[0]),
            "mesh_source": mesh.source,
            "viser_version": viser.__version__,
            "recording_bytes": len(data),
            "pages": {"index.html": "open directly (recording embedded)",
                      "player.html?playbackPath=scene.viser": "serve the folder over HTTP"},
        })
    return out_dir
