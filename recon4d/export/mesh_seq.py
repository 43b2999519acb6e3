"""Per-frame meshes: render surfels from virtual views, fuse the depth (TSDF), marching cubes.

These meshes are the fidelity reference for the fixed-topology animated mesh and a debugging
aid; they are also how the canonical mesh is made (the same fusion on the canonical surfels).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from recon4d.render.types import Surfels
from recon4d.utils.atomic import atomic_path

from .tsdf import TSDFVolume, box_around
from .views import bounding_sphere, sphere_cameras


@dataclass
class FusionSettings:
    """How surfels become a mesh.

    Attributes:
        resolution: voxels along the longest side of the object's box.
        views: virtual cameras on a sphere around the object.
        image_size: side of each square virtual view, pixels.
        batch: cameras rendered per renderer call (memory vs speed).
        backend: renderer backend ("auto", "reference", "native", "gsplat").
        min_opacity: surfels below this opacity are ignored when sizing the box.
        min_component_ratio: components smaller than this share of the largest are dropped.
    """

    resolution: int = 128
    views: int = 24
    image_size: int = 256
    batch: int = 4
    backend: str = "auto"
    min_opacity: float = 0.05
    min_component_ratio: float = 0.05


def surfel_box(surfels: Surfels, min_opacity: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """World (lo, hi) box holding the visible surfels (outlier quantiles trimmed), with margin."""
    keep = surfels.opacities.detach().cpu() >= min_opacity
    means = surfels.means.detach().cpu().double()[keep].numpy()
    if len(means) == 0:
        means = surfels.means.detach().cpu().double().numpy()
    if len(means) > 200:  # ignore stray floaters when sizing the volume
        lo, hi = np.quantile(means, 0.002, axis=0), np.quantile(means, 0.998, axis=0)
    else:
        lo, hi = means.min(0), means.max(0)
    extent = float(surfels.scales.detach().max()) * 3.0 if len(surfels) else 0.0
    lo, hi = box_around(np.stack([lo, hi]), margin=0.08)
    return lo - extent, hi + extent


def fuse_surfels(surfels: Surfels, settings: FusionSettings | None = None,
                 up: np.ndarray | None = None) -> TSDFVolume:
    """Render ``surfels`` (world space) from ``settings.views`` cameras around them and fuse the
    median depth, alpha and colour into a TSDF volume."""
    from recon4d.render import render

    settings = settings or FusionSettings()
    surfels = surfels.detach().to(dtype=torch.float32)
    lo, hi = surfel_box(surfels, settings.min_opacity)
    center, _ = bounding_sphere(np.stack([lo, hi]))
    radius = 0.5 * float(np.linalg.norm(hi - lo))
    cameras = sphere_cameras(center, radius, settings.views, settings.image_size, up=up)
    cameras = cameras.to(device=surfels.device)
    volume = TSDFVolume.empty(lo, hi, settings.resolution)
    with torch.no_grad():
        for start in range(0, len(cameras), settings.batch):
            sub = cameras[start:start + settings.batch]
            out = render(surfels, sub, backend=settings.backend)
            # The render is composited over black (sum w_i c_i): divided by alpha it is the
            # surface's own colour, which silhouette pixels (alpha 0.5-1) fused too dark.
            colour = (out.rgb / out.alpha.clamp_min(1e-6).unsqueeze(-1)).clamp(0, 1)
            volume.integrate(out.median_depth, out.alpha, colour, sub)
    return volume


def surfels_to_mesh(surfels: Surfels, settings: FusionSettings | None = None):
    """World-space ``trimesh.Trimesh`` (vertex colours, outward faces) of ``surfels``."""
    settings = settings or FusionSettings()
    volume = fuse_surfels(surfels, settings)
    return volume.extract_mesh(settings.min_component_ratio)


def extract_frame_mesh(scene, t: float, resolution: int = 128, views: int = 24,
                       image_size: int = 256, backend: str = "auto", **kwargs):
    """The mesh of ``scene`` (a DynamicScene) at time ``t``, world space (``trimesh.Trimesh``)."""
    settings = FusionSettings(resolution=resolution, views=views, image_size=image_size,
                              backend=backend, **kwargs)
    return surfels_to_mesh(scene.surfels_at(float(t)), settings)


def write_mesh(mesh, path: str | Path) -> Path:
    """Write ``mesh`` as PLY (binary, vertex colours) or OBJ (by suffix), atomically."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".ply", ".obj"):
        raise ValueError(f"path: mesh files must end in .ply or .obj, got '{path.name}'")
    with atomic_path(path) as tmp:
        mesh.export(tmp, file_type=suffix[1:])
    return path


def write_mesh_sequence(scene, out_dir: str | Path, fmt: str = "ply",
                        settings: FusionSettings | None = None, times=None) -> list[Path]:
    """One mesh per input frame (or per ``times``) as ``frame_0000.ply`` ... in ``out_dir``."""
    from recon4d.utils.console import track

    times = scene.frame_times.tolist() if times is None else list(times)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = settings or FusionSettings()
    paths = []
    for index, t in track(list(enumerate(times)), description="per-frame meshes"):
        mesh = surfels_to_mesh(scene.surfels_at(float(t)), settings)
        paths.append(write_mesh(mesh, out_dir / f"frame_{index:04d}.{fmt}"))
    return paths
