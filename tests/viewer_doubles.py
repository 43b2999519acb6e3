"""A small stand-in for a fitted run, for the viewer tests (no training needed).

``CapsuleScene`` implements :class:`recon4d.model.protocol.DynamicScene`: a few hundred surfels on
a capsule along the world y axis (OpenCV world: y points down), two bones (lower half fixed, upper
half bending about the middle joint by up to 60 degrees over the clip), linear blend skinning with
softmax-of-distance weights, and a ring of input cameras looking at the origin. The colour bands
along the capsule make motion visible in renders.

``write_tiny_run`` writes a run directory with a real dataset (frames rendered from the double
with the project's renderer) and a metrics log, so ``recon4d view`` code paths that read the run
folder are exercised without a fit.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from recon4d.render.types import Cameras, Surfels


def _axis_angle_matrix(axis: Tensor, angle: float) -> Tensor:
    """(3, 3) rotation about the unit ``axis`` by ``angle`` radians (Rodrigues)."""
    axis = axis / axis.norm()
    x, y, z = axis.tolist()
    skew = torch.tensor([[0.0, -z, y], [z, 0.0, -x], [-y, x, 0.0]])
    return torch.eye(3) + math.sin(angle) * skew + (1 - math.cos(angle)) * skew @ skew


def _matrix_to_quat(rot: Tensor) -> Tensor:
    """(N, 3, 3) rotation matrices -> (N, 4) wxyz quaternions (Shepperd's method, w >= 0)."""
    m = rot
    trace = m[:, 0, 0] + m[:, 1, 1] + m[:, 2, 2]
    candidates = torch.stack([
        torch.stack([1 + trace, m[:, 2, 1] - m[:, 1, 2], m[:, 0, 2] - m[:, 2, 0], m[:, 1, 0] - m[:, 0, 1]], -1),
        torch.stack([m[:, 2, 1] - m[:, 1, 2], 1 + m[:, 0, 0] - m[:, 1, 1] - m[:, 2, 2], m[:, 0, 1] + m[:, 1, 0], m[:, 0, 2] + m[:, 2, 0]], -1),
        torch.stack([m[:, 0, 2] - m[:, 2, 0], m[:, 0, 1] + m[:, 1, 0], 1 - m[:, 0, 0] + m[:, 1, 1] - m[:, 2, 2], m[:, 1, 2] + m[:, 2, 1]], -1),
        torch.stack([m[:, 1, 0] - m[:, 0, 1], m[:, 0, 2] + m[:, 2, 0], m[:, 1, 2] + m[:, 2, 1], 1 - m[:, 0, 0] - m[:, 1, 1] + m[:, 2, 2]], -1),
    ], 1)  # (N, 4 candidates, 4)
    diag = torch.stack([trace, m[:, 0, 0], m[:, 1, 1], m[:, 2, 2]], -1)
    best = diag.argmax(-1)
    q = candidates[torch.arange(m.shape[0]), best]
    q = q / q.norm(dim=-1, keepdim=True)
    return q * torch.where(q[:, :1] < 0, -1.0, 1.0)


def _look_at_viewmat(eye: Tensor, target: Tensor, down: Tensor) -> Tensor:
    """(4, 4) OpenCV world-to-camera for a camera at ``eye`` looking at ``target``."""
    z = target - eye
    z = z / z.norm()
    x = torch.linalg.cross(down, z)
    x = x / x.norm()
    y = torch.linalg.cross(z, x)
    rot = torch.stack([x, y, z], 0)  # rows: camera axes in world
    view = torch.eye(4)
    view[:3, :3] = rot
    view[:3, 3] = -rot @ eye
    return view


class CapsuleScene:
    """A two-bone capsule that bends over time; see the module docstring.

    Args:
        num_surfels: about how many surfels (rounded to the grid).
        num_frames: F input frames at times linspace(0, 1, F).
        image_size: width = height of the input cameras in pixels.
        sweep_deg: azimuth range of the input cameras (0 = one fixed camera).
    """

    def __init__(self, num_surfels: int = 400, num_frames: int = 8, image_size: int = 64,
                 sweep_deg: float = 40.0):
        torch.manual_seed(0)
        rings = max(4, int(round(math.sqrt(num_surfels / 2))))
        per_ring = max(8, num_surfels // rings)
        self.radius, self.half_length = 0.25, 0.5
        ys = torch.linspace(-self.half_length - self.radius * 0.8,
                            self.half_length + self.radius * 0.8, rings)
        phis = torch.arange(per_ring) * (2 * math.pi / per_ring)
        y, phi = torch.meshgrid(ys, phis, indexing="ij")
        y, phi = y.reshape(-1), phi.reshape(-1)
        # Radius shrinks over the caps so the ends are rounded.
        overhang = (y.abs() - self.half_length).clamp_min(0) / self.radius
        r = self.radius * torch.sqrt((1 - overhang ** 2).clamp_min(0.05))
        normals = torch.stack([torch.cos(phi), torch.zeros_like(phi), torch.sin(phi)], -1)
        self._means = torch.stack([r * torch.cos(phi), y, r * torch.sin(phi)], -1)
        # Disc frame: tangent around the ring, tangent along y, normal outwards.
        tangent_u = torch.stack([-torch.sin(phi), torch.zeros_like(phi), torch.cos(phi)], -1)
        tangent_v = torch.linalg.cross(normals, tangent_u)
        self._quats = _matrix_to_quat(torch.stack([tangent_u, tangent_v, normals], -1))
        n = self._means.shape[0]
        ring_gap = 2 * math.pi * self.radius / per_ring
        row_gap = float(ys[1] - ys[0])
        self._scales = torch.tensor([ring_gap * 0.7, row_gap * 0.7]).expand(n, 2).clone()
        self._opacities = torch.full((n,), 0.95)
        band = ((y + 1.0) * 4).floor().long() % 3
        palette = torch.tensor([[0.85, 0.25, 0.2], [0.2, 0.6, 0.85], [0.95, 0.85, 0.3]])
        rgb = palette[band] * (0.75 + 0.25 * torch.cos(phi)).unsqueeze(-1)
        self._canonical = Surfels.from_rgb(self._means, self._quats, self._scales,
                                           self._opacities, rgb.clamp(0, 1))
        self._bone_centers = torch.tensor([[0.0, 0.35, 0.0], [0.0, -0.35, 0.0]])
        self._times = torch.linspace(0, 1, num_frames)
        self._image_size = image_size
        self._sweep = math.radians(sweep_deg)

    # DynamicScene -----------------------------------------------------------------------
    @property
    def num_bones(self) -> int:
        return 2

    @property
    def frame_times(self) -> Tensor:
        return self._times.clone()

    def input_cameras(self) -> Cameras:
        count = len(self._times)
        views = []
        for i in range(count):
            azimuth = (i / max(count - 1, 1) - 0.5) * self._sweep
            eye = torch.tensor([2.6 * math.sin(azimuth), -0.3, -2.6 * math.cos(azimuth)])
            views.append(_look_at_viewmat(eye, torch.zeros(3), torch.tensor([0.0, 1.0, 0.0])))
        size = self._image_size
        focal = size * 1.2
        K = torch.tensor([[focal, 0, size / 2], [0, focal, size / 2], [0, 0, 1.0]])
        return Cameras(torch.stack(views), K.expand(count, 3, 3).clone(), size, size)

    def canonical_surfels(self) -> Surfels:
        return self._canonical

    def bone_centers(self) -> Tensor:
        return self._bone_centers.clone()

    def skinning_weights(self, points: Tensor) -> Tensor:
        dist2 = ((points[:, None, :] - self._bone_centers[None]) ** 2).sum(-1)
        return torch.softmax(-dist2 / 0.02, dim=-1)

    def bone_angle(self, t: float) -> float:
        """Bend of the upper bone at time ``t``, radians (0 at t = 0)."""
        return math.radians(60.0) * math.sin(math.pi * float(t))

    def bone_transforms(self, t: float) -> Tensor:
        joint = torch.zeros(3)
        bend = _axis_angle_matrix(torch.tensor([0.0, 0.0, 1.0]), self.bone_angle(t))
        upper = torch.eye(4)
        upper[:3, :3] = bend
        upper[:3, 3] = joint - bend @ joint
        return torch.stack([torch.eye(4), upper])

    def warp_points(self, points: Tensor, t: float) -> Tensor:
        weights = self.skinning_weights(points)
        transforms = self.bone_transforms(t)
        moved = torch.einsum("bij,mj->mbi", transforms[:, :3, :3], points) + transforms[:, :3, 3]
        return (weights.unsqueeze(-1) * moved).sum(1)

    def surfels_at(self, t: float) -> Surfels:
        weights = self.skinning_weights(self._means)
        transforms = self.bone_transforms(t)
        means = self.warp_points(self._means, t)
        # Rotation of the dominant bone (enough for a test double; the real warp blends).
        dominant = weights.argmax(-1)
        from recon4d.render.camera_space import quat_to_rotmat

        rot = transforms[dominant, :3, :3] @ quat_to_rotmat(self._quats)
        return Surfels(means, _matrix_to_quat(rot), self._scales.clone(),
                       self._opacities.clone(), self._canonical.sh.clone())


def write_tiny_run(root: str | Path, scene: CapsuleScene | None = None,
                   losses: list[float] | None = None) -> Path:
    """A run directory for ``scene``: config.json, dataset/ rendered from the scene, metrics log.

    There is no checkpoint: callers pass the scene object itself to the viewer.
    """
    from recon4d.data.dataset import CameraSet, write_dataset
    from recon4d.render import render
    from recon4d.rundir import RunDir

    scene = scene or CapsuleScene()
    run = RunDir(root).create()
    run.write_config({"note": "viewer test double"}, kind="fit")
    cams = scene.input_cameras()
    frames, masks = [], []
    with torch.no_grad():
        for i, t in enumerate(scene.frame_times.tolist()):
            out = render(scene.surfels_at(t), cams[i], backend="reference",
                         background=torch.ones(3))
            frames.append(out.rgb[0].clamp(0, 1).numpy())
            masks.append(out.alpha[0].clamp(0, 1).numpy())
    write_dataset(run.dataset, np.stack(frames), np.stack(masks), scene.frame_times.tolist(),
                  CameraSet(cams.viewmats.double().numpy(), cams.Ks.double().numpy(), "synthetic"),
                  source={"type": "test-double"}, masks_from="synthetic")
    for step, loss in enumerate(losses or [0.5, 0.3, 0.2, 0.15]):
        run.log_metrics({"step": step, "loss": loss})
    return run.root


def capsule_mesh_animation(scene: CapsuleScene, count: int = 12):
    """A triangle capsule matching the double's surface, moved by its warp to every frame time
    (stands in for the exporter's fixed-topology mesh)."""
    import trimesh

    from recon4d.viewer.source import MeshAnimation

    capsule = trimesh.creation.capsule(height=2 * scene.half_length, radius=scene.radius,
                                       count=[count, count])
    # trimesh builds it along z; the double's axis is y.
    capsule.apply_transform(trimesh.transformations.rotation_matrix(math.pi / 2, [1, 0, 0]))
    rest = torch.as_tensor(capsule.vertices, dtype=torch.float32)
    with torch.no_grad():
        frames = np.stack([scene.warp_points(rest, float(t)).numpy() for t in scene.frame_times])
    return MeshAnimation(capsule.faces.astype(np.int32), frames.astype(np.float32),
                         scene.frame_times.numpy(), None, "capsule")
