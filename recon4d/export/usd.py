"""USD export: the fixed-topology mesh with time-sampled points (needs usd-core).

One ``UsdGeom.Mesh`` at ``/recon4d/mesh`` in whatever frame the AnimatedMesh is in (the
exporter passes the Y-up engine frame, and the stage says upAxis Y), with ``points`` sampled at
time codes 0..F-1, ``timeCodesPerSecond`` = fps, vertex colours as the
``displayColor`` primvar, and the provenance record in the stage's custom layer data.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from recon4d.utils.atomic import atomic_path

from .animated_mesh import AnimatedMesh
from .colour import srgb_to_linear


def usd_available() -> bool:
    """True when usd-core (``pxr``) can be imported."""
    try:
        import pxr.Usd  # noqa: F401
    except ImportError:
        return False
    return True


def write_usd(mesh: AnimatedMesh, path: str | Path, fps: float = 24.0,
              provenance: dict | None = None) -> Path:
    """Write ``mesh`` and its per-frame points to ``path`` (.usd, .usda or .usdc) atomically.

    Raises:
        ImportError: when usd-core is not installed.
    """
    from pxr import Gf, Usd, UsdGeom, Vt

    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.unlink()  # USD refuses to create a layer over an existing file
        stage = Usd.Stage.CreateNew(str(tmp))
        frames = len(mesh.times)
        stage.SetStartTimeCode(0)
        stage.SetEndTimeCode(max(frames - 1, 0))
        stage.SetTimeCodesPerSecond(float(fps))
        stage.SetFramesPerSecond(float(fps))
        UsdGeom.SetStageMetersPerUnit(stage, 1.0)
        UsdGeom.SetStageUpAxis(stage, UsdGeom.Tokens.y)
        root = UsdGeom.Xform.Define(stage, "/recon4d")
        stage.SetDefaultPrim(root.GetPrim())
        geom = UsdGeom.Mesh.Define(stage, "/recon4d/mesh")
        geom.CreateFaceVertexCountsAttr(Vt.IntArray([3] * len(mesh.faces)))
        geom.CreateFaceVertexIndicesAttr(Vt.IntArray(mesh.faces.reshape(-1).tolist()))
        geom.CreateOrientationAttr(UsdGeom.Tokens.rightHanded)  # counter-clockwise = front
        geom.CreateSubdivisionSchemeAttr(UsdGeom.Tokens.none)
        points = geom.CreatePointsAttr()
        extent = geom.CreateExtentAttr()
        rest = Vt.Vec3fArray.FromNumpy(mesh.vertices.astype(np.float32))
        points.Set(rest)
        for f in range(frames):
            frame = mesh.frames[f].astype(np.float32)
            points.Set(Vt.Vec3fArray.FromNumpy(frame), Usd.TimeCode(f))
            extent.Set(Vt.Vec3fArray([Gf.Vec3f(*frame.min(0).tolist()),
                                      Gf.Vec3f(*frame.max(0).tolist())]), Usd.TimeCode(f))
        colors = geom.CreateDisplayColorPrimvar(UsdGeom.Tokens.vertex)
        # displayColor is linear, as glTF's COLOR_0; the fitted colours are sRGB.
        linear = srgb_to_linear(mesh.colors[:, :3] / 255.0)
        colors.Set(Vt.Vec3fArray.FromNumpy(linear.astype(np.float32)))
        if provenance:
            stage.GetRootLayer().customLayerData = {"recon4d": json.dumps(provenance)}
        stage.GetRootLayer().Save()
        del stage
    return path


def read_usd_points(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(F, V, 3) time-sampled points and (T, 3) faces of ``/recon4d/mesh`` (for tests/tools)."""
    from pxr import Usd, UsdGeom

    stage = Usd.Stage.Open(str(path))
    geom = UsdGeom.Mesh(stage.GetPrimAtPath("/recon4d/mesh"))
    attr = geom.GetPointsAttr()
    samples = attr.GetTimeSamples()
    frames = np.stack([np.asarray(attr.Get(Usd.TimeCode(t)), dtype=np.float64) for t in samples])
    faces = np.asarray(geom.GetFaceVertexIndicesAttr().Get(), dtype=np.int64).reshape(-1, 3)
    return frames, faces
