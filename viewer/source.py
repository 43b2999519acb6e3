"""What the viewer shows: a fitted scene plus whatever the run folder has beside it.

:class:`ViewerSource` bundles the scene (any DynamicScene), the input frames for the thumbnail,
the loss curve from ``logs/metrics.jsonl`` and, when ``recon4d export`` has run, the exported mesh
animated over the clip. Everything but the scene is optional, so the viewer also opens a bare
scene object (tests, live fitting).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from recon4d.errors import UserError


@dataclass
class MeshAnimation:
    """A fixed-topology mesh moving over the clip.

    Attributes:
        faces: (M, 3) int32 vertex indices.
        vertices: (T, V, 3) float32 world-space positions at ``times``.
        times: (T,) normalised times of the rows of ``vertices``.
        colors: (V, 3) uint8 vertex colours, or None.
        source: where it came from (file name), for the GUI.
    """

    faces: np.ndarray
    vertices: np.ndarray
    times: np.ndarray
    colors: np.ndarray | None = None
    source: str = ""

    def at(self, t: float) -> np.ndarray:
        """(V, 3) vertices at ``t``, linearly interpolated between the stored times."""
        if len(self.times) == 1:
            return self.vertices[0]
        i = int(np.clip(np.searchsorted(self.times, t) - 1, 0, len(self.times) - 2))
        span = max(float(self.times[i + 1] - self.times[i]), 1e-9)
        w = float(np.clip((t - self.times[i]) / span, 0.0, 1.0))
        return (1 - w) * self.vertices[i] + w * self.vertices[i + 1]


@dataclass
class ViewerSource:
    """A scene and its surroundings.

    Attributes:
        scene: the fitted DynamicScene.
        frames: (F, H, W, 3) float32 input frames in [0, 1] for the thumbnail, or None.
        background: (3,) RGB in [0, 1] to render over.
        metrics: the metrics log records (``{"step", "loss", ...}``), oldest first.
        mesh: the exported mesh animated over the clip, or None.
        fps: nominal frame rate of the clip (playback speed 1).
        name: shown in the GUI title.
        run_dir: the run folder, when opened from one.
    """

    scene: object
    frames: np.ndarray | None = None
    background: np.ndarray = field(default_factory=lambda: np.ones(3, np.float32))
    metrics: list = field(default_factory=list)
    mesh: MeshAnimation | None = None
    fps: float = 12.0
    name: str = "recon4d"
    run_dir: Path | None = None


def find_export_mesh(export_dir: Path) -> Path | None:
    """The canonical (rest-frame) mesh ``recon4d export`` wrote (``canonical_mesh.ply``), if any.

    Only meshes in the canonical frame qualify: the viewer moves them with the scene's warp.
    """
    for name in ("canonical_mesh.ply", "canonical_mesh.obj"):
        path = Path(export_dir) / name
        if path.is_file():
            return path
    return None


def load_animated_mesh(scene, mesh_path: Path, times: np.ndarray) -> MeshAnimation | None:
    """Load a canonical-frame mesh and move it through the clip with the scene's warp.

    Uses the exporter's ``animated_vertices`` when it is installed (the same numbers the
    exported files hold), else the scene's own ``warp_points``. Returns None when the file does
    not load as a triangle mesh.
    """
    import torch
    import trimesh

    try:
        mesh = trimesh.load(mesh_path, force="mesh", process=False)
    except Exception:  # a damaged or foreign file: the overlay is optional
        return None
    if not hasattr(mesh, "faces") or len(mesh.faces) == 0:
        return None
    rest = np.asarray(mesh.vertices, np.float64)
    try:
        from recon4d.export.animated_mesh import animated_vertices

        verts = animated_vertices(scene, rest, [float(t) for t in times])
    except ImportError:  # exporter not installed: the same warp, evaluated here
        device = scene.canonical_surfels().means.device
        points = torch.as_tensor(rest, dtype=torch.float32, device=device)
        with torch.no_grad():
            verts = torch.stack([scene.warp_points(points, float(t)) for t in times]).cpu().numpy()
    colors = None
    visual = getattr(mesh, "visual", None)
    if visual is not None and getattr(visual, "kind", None) == "vertex":
        colors = np.asarray(visual.vertex_colors)[:, :3].astype(np.uint8)
    return MeshAnimation(np.asarray(mesh.faces, np.int32),
                        np.asarray(verts, np.float32),
                        np.asarray(times, np.float32), colors, mesh_path.name)


def open_run(run_dir: str | Path, device: str = "cpu") -> ViewerSource:
    """Load a run folder's latest checkpoint and its dataset, metrics and exported mesh."""
    from recon4d.rundir import RunDir

    run = RunDir(run_dir).require()
    try:
        from recon4d.model import load_run
    except ImportError as exc:
        raise UserError("this recon4d has no model loader (recon4d.model.load_run): install "
                        "the complete package") from exc
    scene = load_run(run.root, device=device)
    frames, background, fps = None, np.ones(3, np.float32), 12.0
    if run.dataset.is_dir():
        from recon4d.data.dataset import load_dataset

        dataset = load_dataset(run.dataset)
        frames, background, fps = dataset.frames, dataset.background, dataset.fps or 12.0
    mesh = None
    mesh_path = find_export_mesh(run.export)
    if mesh_path is not None:
        mesh = load_animated_mesh(scene, mesh_path, scene.frame_times.cpu().numpy())
    return ViewerSource(scene=scene, frames=frames, background=background,
                        metrics=run.read_metrics_log(), mesh=mesh, fps=fps,
                        name=run.root.name, run_dir=run.root)
