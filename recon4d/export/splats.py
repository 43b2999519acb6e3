"""Splat export: 3DGS-compatible PLY files of the surfels, per frame, plus the canonical set
with the warp parameters.

Each vertex of the PLY has the standard 3D Gaussian splatting properties: ``x y z``,
``nx ny nz`` (the surfel normal), ``f_dc_0..2`` and ``f_rest_*`` (SH, channel-major as 3DGS
stores them), ``opacity`` (logit), ``scale_0..2`` (log standard deviations; the third is a
near-zero thickness so standard splat viewers draw a flat disc) and ``rot_0..3`` (quaternion
wxyz). Positions are in the scene's world frame (OpenCV axes), as 3DGS viewers expect.

``canonical.ply`` + ``warp.npz`` hold what is needed to re-pose the surfels in another tool:
canonical surfels, their skinning weights (N, B), bone centres (B, 3), frame times (F,) and the
bone transforms (F, B, 4, 4) canonical->world (linear blend of these reproduces the motion up to
the DQS-vs-LBS difference; the per-frame PLYs are exact).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch

from recon4d.render.types import Surfels
from recon4d.utils.atomic import atomic_path, atomic_write_bytes

THICKNESS = 1e-6
"""Standard deviation of the flat axis, world units (log-scale about -13.8)."""


def surfels_to_ply_bytes(surfels: Surfels) -> bytes:
    """Binary little-endian PLY bytes of ``surfels`` in the 3DGS layout."""
    s = surfels.detach().to(device="cpu", dtype=torch.float32)
    n = len(s)
    quats = s.quats / s.quats.norm(dim=1, keepdim=True).clamp(min=1e-12)
    w, x, y, z = quats.unbind(1)
    normals = torch.stack([2 * (x * z + w * y), 2 * (y * z - w * x), 1 - 2 * (x * x + y * y)], 1)
    sh = s.sh
    dc = sh[:, 0, :]
    rest = sh[:, 1:, :].transpose(1, 2).reshape(n, -1)  # channel-major, as 3DGS writes it
    opacity = torch.logit(s.opacities.clamp(1e-6, 1 - 1e-6))
    scales = torch.cat([s.scales.clamp(min=1e-12).log(),
                        torch.full((n, 1), float(np.log(THICKNESS)))], 1)
    columns = [("x", s.means[:, 0]), ("y", s.means[:, 1]), ("z", s.means[:, 2]),
               ("nx", normals[:, 0]), ("ny", normals[:, 1]), ("nz", normals[:, 2])]
    columns += [(f"f_dc_{i}", dc[:, i]) for i in range(3)]
    columns += [(f"f_rest_{i}", rest[:, i]) for i in range(rest.shape[1])]
    columns += [("opacity", opacity)]
    columns += [(f"scale_{i}", scales[:, i]) for i in range(3)]
    columns += [(f"rot_{i}", quats[:, i]) for i in range(4)]
    dtype = np.dtype([(name, "<f4") for name, _ in columns])
    data = np.empty(n, dtype=dtype)
    for name, values in columns:
        data[name] = values.numpy()
    header = ["ply", "format binary_little_endian 1.0", f"element vertex {n}"]
    header += [f"property float {name}" for name, _ in columns]
    header += ["end_header"]
    buffer = io.BytesIO()
    buffer.write(("\n".join(header) + "\n").encode("ascii"))
    buffer.write(data.tobytes())
    return buffer.getvalue()


def read_splat_ply(path: str | Path) -> dict[str, np.ndarray]:
    """The properties of a binary 3DGS PLY as a dict of (N,) float32 arrays."""
    raw = Path(path).read_bytes()
    end = raw.index(b"end_header\n") + len(b"end_header\n")
    names, count = [], 0
    for line in raw[:end].decode("ascii").splitlines():
        parts = line.split()
        if parts[:2] == ["element", "vertex"]:
            count = int(parts[2])
        elif parts[:1] == ["property"]:
            names.append(parts[2])
    data = np.frombuffer(raw, dtype=np.dtype([(n, "<f4") for n in names]), count=count, offset=end)
    return {n: np.asarray(data[n]) for n in names}


def write_splat_ply(surfels: Surfels, path: str | Path) -> Path:
    return atomic_write_bytes(path, surfels_to_ply_bytes(surfels))


def write_splats(scene, out_dir: str | Path, times=None) -> dict[str, object]:
    """Per-frame ``frame_XXXX.ply``, ``canonical.ply`` and ``warp.npz`` in ``out_dir``."""
    from recon4d.utils.console import track

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    times = scene.frame_times.detach().cpu().tolist() if times is None else list(times)
    frames = []
    with torch.no_grad():
        for index, t in track(list(enumerate(times)), description="splat PLYs"):
            frames.append(write_splat_ply(scene.surfels_at(float(t)), out_dir / f"frame_{index:04d}.ply"))
        canonical = scene.canonical_surfels()
        write_splat_ply(canonical, out_dir / "canonical.ply")
        weights = scene.skinning_weights(canonical.means).detach().cpu().numpy().astype(np.float32)
        bones = np.stack([scene.bone_transforms(float(t)).detach().cpu().numpy() for t in times]) \
            if times else np.zeros((0, scene.num_bones, 4, 4))
        centers = scene.bone_centers().detach().cpu().numpy()
    warp = out_dir / "warp.npz"
    with atomic_path(warp) as tmp:
        np.savez_compressed(tmp, skinning_weights=weights, bone_centers=centers.astype(np.float32),
                            frame_times=np.asarray(times, dtype=np.float32),
                            bone_transforms=bones.astype(np.float32))
    return {"frames": frames, "canonical": out_dir / "canonical.ply", "warp": warp}
