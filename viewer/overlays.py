"""3D overlays drawn by the browser on top of the server render: bones and their motion trails,
the input cameras, and the exported mesh at the current time.

The overlays live in world space (the frame of the cameras, OpenCV axes). The server render is
sent with a depth map, so the browser hides overlay parts that are behind the rendered surface.
"""

from __future__ import annotations

import numpy as np

from .cameras import camera_to_pose
from .modes import bone_palette


def bone_positions(scene, times) -> np.ndarray:
    """(T, B, 3) world positions of each bone's rest centre moved to each of ``times``."""
    import torch

    centers = scene.bone_centers()
    out = []
    with torch.no_grad():
        for t in times:
            transforms = scene.bone_transforms(float(t))  # (B, 4, 4) canonical -> world
            moved = torch.einsum("bij,bj->bi", transforms[:, :3, :3], centers) + transforms[:, :3, 3]
            out.append(moved.float().cpu().numpy())
    return np.stack(out) if out else np.zeros((0, 0, 3), np.float32)


def trail_segments(positions: np.ndarray) -> np.ndarray:
    """(T, B, 3) positions over time -> (B * (T - 1), 2, 3) line segments, bone-major."""
    if positions.shape[0] < 2:
        return np.zeros((0, 2, 3), np.float32)
    per_bone = positions.transpose(1, 0, 2)  # (B, T, 3)
    return np.stack([per_bone[:, :-1], per_bone[:, 1:]], axis=2).reshape(-1, 2, 3).astype(np.float32)


def scene_extent(scene) -> tuple[np.ndarray, float]:
    """(centre (3,), radius) of the canonical surfel centres: sizes markers and the home view."""
    means = scene.canonical_surfels().means.detach().float().cpu().numpy()
    if len(means) == 0:
        return np.zeros(3, np.float32), 1.0
    lo, hi = np.percentile(means, 2, axis=0), np.percentile(means, 98, axis=0)
    return (lo + hi) / 2, float(max(np.linalg.norm(hi - lo) / 2, 1e-3))


class Overlays:
    """The overlay scene nodes of one viser scene (server-wide: every client sees them).

    Args:
        scene_api: ``server.scene``.
        source: the :class:`~recon4d.viewer.source.ViewerSource` shown.
        trail_samples: how many times along the clip the bone trails are sampled at.
    """

    def __init__(self, scene_api, source, trail_samples: int = 48):
        self.api = scene_api
        self.source = source
        scene = source.scene
        _, radius = scene_extent(scene)
        self.radius = radius
        self.trail_samples = trail_samples
        self.bones = self.trails = self.mesh = None
        self.cameras: list = []
        if scene.num_bones > 0:
            times = np.linspace(float(scene.frame_times[0]), float(scene.frame_times[-1]),
                                trail_samples)
            colours = (bone_palette(scene.num_bones) * 255).astype(np.uint8)
            positions = bone_positions(scene, times)
            self.bones = scene_api.add_point_cloud(
                "/overlays/bones/joints", positions[0], colours, point_size=radius * 0.06,
                point_shape="circle", precision="float32")
            segment_colours = np.repeat(colours, max(len(times) - 1, 0), axis=0)
            segment_colours = np.stack([segment_colours, segment_colours], axis=1)
            self.trails = scene_api.add_line_segments(
                "/overlays/bones/trails", trail_segments(positions), segment_colours,
                thickness=2.0, thickness_units="screen")
        self._add_cameras()
        if source.mesh is not None:
            self.mesh = scene_api.add_mesh_simple(
                "/overlays/mesh", source.mesh.at(float(scene.frame_times[0])).astype(np.float32),
                source.mesh.faces.astype(np.uint32), color=(180, 190, 205), opacity=0.6,
                flat_shading=False, side="double", visible=False)

    def replace_scene(self, scene) -> None:
        """Recompute the bone trails for a new version of the scene (live fitting)."""
        self.source.scene = scene
        if self.trails is not None and scene.num_bones > 0:
            times = np.linspace(float(scene.frame_times[0]), float(scene.frame_times[-1]),
                                self.trail_samples)
            positions = bone_positions(scene, times)
            if positions.shape[1] * (len(times) - 1) == len(self.trails.points):
                self.trails.points = trail_segments(positions)

    def _add_cameras(self) -> None:
        cams = self.source.scene.input_cameras()
        viewmats = cams.viewmats.detach().double().cpu().numpy()
        Ks = cams.Ks.detach().double().cpu().numpy()
        frames = self.source.frames
        for i in range(len(viewmats)):
            pose = camera_to_pose(viewmats[i], Ks[i], cams.height)
            image = None
            if frames is not None and i < len(frames):
                image = self._small(frames[i])
            handle = self.api.add_camera_frustum(
                f"/overlays/cameras/{i:03d}", fov=pose.fov_y, aspect=cams.width / cams.height,
                scale=self.radius * 0.15, color=(90, 90, 90), image=image,
                thickness=1.5, thickness_units="screen",
                wxyz=pose.wxyz, position=pose.position)
            self.cameras.append(handle)

    @staticmethod
    def _small(frame: np.ndarray, side: int = 64) -> np.ndarray:
        """A uint8 thumbnail of a float frame with its longest side ``side`` px."""
        h, w = frame.shape[:2]
        step = max(1, int(np.ceil(max(h, w) / side)))
        return (np.clip(frame[::step, ::step], 0, 1) * 255 + 0.5).astype(np.uint8)

    def set_time(self, t: float) -> None:
        """Move the bone markers and the mesh to time ``t``."""
        if self.bones is not None:
            self.bones.points = bone_positions(self.source.scene, [t])[0]
        if self.mesh is not None and self.mesh.visible:
            self.mesh.vertices = self.source.mesh.at(t).astype(np.float32)

    def show(self, bones: bool | None = None, cameras: bool | None = None,
             mesh: bool | None = None, t: float | None = None) -> None:
        """Toggle overlay groups (None leaves a group as it is)."""
        if bones is not None:
            for handle in (self.bones, self.trails):
                if handle is not None:
                    handle.visible = bones
        if cameras is not None:
            for handle in self.cameras:
                handle.visible = cameras
        if mesh is not None and self.mesh is not None:
            self.mesh.visible = mesh
            if mesh and t is not None:
                self.mesh.vertices = self.source.mesh.at(t).astype(np.float32)
