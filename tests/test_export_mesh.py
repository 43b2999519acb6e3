"""TSDF fusion, mesh cleanup and per-frame mesh extraction.

Fusion is checked on ray-cast depth maps of an analytic sphere (independent of the surfel
renderer); extraction through the real renderer on the bending capsule test double.
"""

from __future__ import annotations

import numpy as np
import torch
import trimesh

from recon4d.export.mesh_seq import extract_frame_mesh, write_mesh
from recon4d.export.tsdf import TSDFVolume, box_around, clean_mesh
from recon4d.export.views import look_at, sphere_cameras
from scene_doubles import CapsuleScene


def cast_sphere(cameras, center, radius):
    """Exact depth (camera z), alpha and colour (red for x > centre, blue else) of a sphere."""
    h, w = cameras.height, cameras.width
    cam2world = torch.linalg.inv(cameras.viewmats.double())
    ks = cameras.Ks.double()
    rows, cols = torch.meshgrid(torch.arange(h).double() + 0.5, torch.arange(w).double() + 0.5,
                                indexing="ij")
    depth = torch.zeros(len(cameras), h, w)
    alpha = torch.zeros_like(depth)
    rgb = torch.zeros(len(cameras), h, w, 3)
    c = torch.tensor(center, dtype=torch.float64)
    for i in range(len(cameras)):
        d_cam = torch.stack([(cols - ks[i, 0, 2]) / ks[i, 0, 0], (rows - ks[i, 1, 2]) / ks[i, 1, 1],
                             torch.ones_like(cols)], -1)  # z = 1: ray parameter is camera z
        d = d_cam @ cam2world[i, :3, :3].T
        o = cam2world[i, :3, 3]
        oc = o - c
        a, b, cc = (d * d).sum(-1), 2 * (d * oc).sum(-1), (oc * oc).sum() - radius ** 2
        disc = b * b - 4 * a * cc
        hit = disc > 0
        z = (-b - torch.sqrt(disc.clamp(min=0))) / (2 * a)
        depth[i] = torch.where(hit, z, 0.0).float()
        alpha[i] = hit.float()
        point = o + z[..., None] * d
        red = (point[..., 0] > c[0]).float()
        rgb[i] = (torch.stack([red, torch.zeros_like(red), 1 - red], -1) * hit[..., None]).float()
    return depth, alpha, rgb


def test_tsdf_of_a_ray_cast_sphere_is_the_sphere():
    center, radius = np.array([0.2, -0.1, 0.3]), 0.5
    cameras = sphere_cameras(center, 1.2 * radius, count=12, size=80)
    depth, alpha, rgb = cast_sphere(cameras, center, radius)
    lo, hi = box_around(np.stack([center - radius, center + radius]))
    volume = TSDFVolume.empty(lo, hi, resolution=48)
    volume.integrate(depth, alpha, rgb, cameras)
    mesh = volume.extract_mesh()
    dist = np.linalg.norm(mesh.vertices - center, axis=1)
    assert abs(dist.mean() - radius) < 0.5 * volume.voxel_size
    assert np.abs(dist - radius).max() < 2.0 * volume.voxel_size
    assert mesh.is_watertight and mesh.volume > 0  # closed, faces wound outwards
    assert abs(mesh.volume / (4 / 3 * np.pi * radius ** 3) - 1) < 0.05
    colors = mesh.visual.vertex_colors[:, :3].astype(float) / 255
    right = mesh.vertices[:, 0] > center[0] + 0.1
    left = mesh.vertices[:, 0] < center[0] - 0.1
    assert colors[right, 0].mean() > 0.9 and colors[left, 2].mean() > 0.9


def test_clean_mesh_drops_floaters_cavities_degenerates_and_orients_outwards():
    big = trimesh.creation.icosphere(subdivisions=3, radius=1.0)
    small = trimesh.creation.icosphere(subdivisions=1, radius=0.05)
    small.apply_translation([3, 0, 0])
    second = trimesh.creation.icosphere(subdivisions=3, radius=0.8)
    second.apply_translation([0, 4, 0])
    cavity = trimesh.creation.icosphere(subdivisions=2, radius=0.5)
    cavity.invert()  # a bubble inside the big sphere, wound like a marching-cubes cavity
    soup = trimesh.util.concatenate([big, small, second, cavity])
    soup.invert()  # the whole surface comes inside out, as marching cubes may give it
    faces = np.concatenate([soup.faces, [[0, 0, 1], [2, 3, 2]]])  # two degenerate faces
    cleaned = clean_mesh(soup.vertices, faces, min_component_ratio=0.2)
    parts = cleaned.split(only_watertight=False)
    assert len(parts) == 2  # the floater and the cavity are gone
    assert all(p.volume > 0 for p in parts)  # flipped back outwards
    assert len(cleaned.faces) == len(big.faces) + len(second.faces)
    assert cleaned.area_faces.min() > 0
    assert (cleaned.vertices[:, 0] < 2).all()
    assert np.linalg.norm(cleaned.vertices, axis=1).min() > 0.9  # no vertex of the cavity left


def test_look_at_is_opencv():
    eye = np.array([[0.0, 0.0, -3.0]])
    view = look_at(eye, np.zeros(3), up=np.array([0.0, -1.0, 0.0]))[0]
    # The target is straight ahead (+z), world -y (up) is image up (camera -y).
    assert np.allclose(view[:3, :3] @ np.zeros(3) + view[:3, 3], [0, 0, 3])
    assert np.allclose(view[:3, :3] @ np.array([0, -1.0, 0]), [0, -1, 0])


def test_extract_frame_mesh_follows_the_moving_surfels(tmp_path):
    scene = CapsuleScene(num_surfels=1500, num_frames=4)
    t = float(scene.frame_times[1])
    mesh = extract_frame_mesh(scene, t, resolution=48, views=8, image_size=64,
                              backend="auto")
    assert len(mesh.faces) > 100 and mesh.volume > 0
    assert mesh.area_faces.min() > 0
    surf = scene.surfels_at(t).means.numpy()
    diag = float(np.linalg.norm(surf.max(0) - surf.min(0)))
    from scipy.spatial import cKDTree

    to_surf, _ = cKDTree(surf).query(mesh.vertices)
    to_mesh, _ = cKDTree(mesh.vertices).query(surf)
    # Surfels are discs with a visible rim: the fused surface sits within a few % of them.
    assert np.mean(to_surf) < 0.03 * diag and np.mean(to_mesh) < 0.03 * diag
    # It is the bent pose at t, not the rest pose.
    rest = scene.canonical_surfels().means.numpy()
    to_rest, _ = cKDTree(rest).query(mesh.vertices)
    assert np.mean(to_rest) > 2 * np.mean(to_surf)
    for suffix in (".ply", ".obj"):
        path = write_mesh(mesh, tmp_path / f"frame{suffix}")
        back = trimesh.load(path, force="mesh")
        assert len(back.faces) == len(mesh.faces)


def test_a_white_object_meshes_white_to_its_silhouettes_and_creases():
    """Surfels all of one colour give a mesh of that colour everywhere. The fusion took the
    render composited over black, so silhouette pixels (alpha 0.5-1) fused darker, and vertices
    with no fused colour within a voxel came out flat grey (128)."""
    from recon4d.export.mesh_seq import FusionSettings, surfels_to_mesh
    from recon4d.render.types import Surfels

    surfels = CapsuleScene(num_frames=2, num_surfels=3000).canonical_surfels()
    white = Surfels.from_rgb(surfels.means, surfels.quats, surfels.scales, surfels.opacities,
                             torch.ones(len(surfels), 3))
    mesh = surfels_to_mesh(white, FusionSettings(resolution=64, views=12, image_size=128,
                                                 backend="auto"))
    colours = mesh.visual.vertex_colors[:, :3].astype(np.float64)
    assert len(colours) > 500
    assert colours.min() >= 250, np.percentile(colours.mean(1), [0, 1, 5])


def test_vertices_beyond_the_fused_colour_band_take_the_nearest_colour():
    volume = TSDFVolume.empty(np.zeros(3), np.ones(3), 10)
    volume.color[2, 2, 2] = torch.tensor([1.0, 0.0, 0.0])
    volume.color_weight[2, 2, 2] = 1.0
    volume.color[8, 8, 8] = torch.tensor([0.0, 0.0, 1.0])
    volume.color_weight[8, 8, 8] = 1.0
    near_red = np.array([[0.05, 0.05, 0.05]]) + volume.origin
    near_blue = volume.origin + 9.5 * volume.voxel_size
    rgb = volume.sample_colors(np.vstack([near_red, near_blue]))
    np.testing.assert_allclose(rgb, [[1, 0, 0], [0, 0, 1]], atol=1e-6)
    assert (TSDFVolume.empty(np.zeros(3), np.ones(3), 4).sample_colors(near_red) == 0.5).all()
