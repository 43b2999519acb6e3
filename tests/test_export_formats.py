"""Splat PLYs, USD, videos, provenance, and ``recon4d export`` / ``recon4d render`` on a run
directory holding a real (tiny, randomly posed) DynamicSurfelModel checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from recon4d.cli.main import main
from recon4d.export import gltf_eval
from recon4d.export.animated_mesh import build_animated_mesh, linear_blend
from recon4d.export.splats import read_splat_ply, write_splats
from recon4d.export.usd import read_usd_points, usd_available, write_usd
from recon4d.export.video import read_mp4, write_mp4, write_videos
from recon4d.render.types import SH_C0
from scene_doubles import CapsuleScene


def test_splat_ply_round_trip_and_warp_params(tmp_path):
    scene = CapsuleScene(num_surfels=400, num_frames=3, blend="lbs")
    written = write_splats(scene, tmp_path / "splats")
    assert len(written["frames"]) == 3
    t = float(scene.frame_times[2])
    surfels = scene.surfels_at(t)
    ply = read_splat_ply(written["frames"][2])
    xyz = np.stack([ply["x"], ply["y"], ply["z"]], 1)
    assert np.allclose(xyz, surfels.means.numpy(), atol=1e-6)
    # 3DGS conventions: log-scales (third near zero thickness), logit opacity, wxyz rotation.
    assert np.allclose(np.exp(ply["scale_0"]), surfels.scales[:, 0].numpy(), rtol=1e-5)
    assert np.all(np.exp(ply["scale_2"]) < 1e-4 * np.exp(ply["scale_0"]))
    assert np.allclose(1 / (1 + np.exp(-ply["opacity"])), surfels.opacities.numpy(), atol=1e-5)
    rgb = 0.5 + SH_C0 * np.stack([ply[f"f_dc_{i}"] for i in range(3)], 1)
    assert np.allclose(rgb, scene._rgb.numpy(), atol=1e-5)
    rot = np.stack([ply[f"rot_{i}"] for i in range(4)], 1)
    q = surfels.quats.numpy() / np.linalg.norm(surfels.quats.numpy(), axis=1, keepdims=True)
    assert np.allclose(np.abs((rot * q).sum(1)), 1.0, atol=1e-5)
    canon = read_splat_ply(written["canonical"])
    normal = np.stack([canon["nx"], canon["ny"], canon["nz"]], 1)
    pts = np.stack([canon["x"], canon["y"], canon["z"]], 1)
    axis = np.clip(pts[:, 0], -scene.half_length, scene.half_length)
    outward = pts - np.stack([axis, 0 * axis, 0 * axis], 1)  # capsule: away from its axis
    assert np.mean((normal * outward).sum(1) > 0) > 0.99
    # canonical.ply + warp.npz re-pose the surfels (exactly, for an LBS scene).
    with np.load(written["warp"], allow_pickle=False) as warp:
        pts = pts.astype(np.float64)
        w = warp["skinning_weights"].astype(np.float64)
        joints = np.tile(np.arange(w.shape[1]), (len(w), 1))
        posed = linear_blend(pts, joints, w, warp["bone_transforms"].astype(np.float64))
        assert np.allclose(posed[2], xyz, atol=1e-4)
        assert np.allclose(warp["frame_times"], scene.frame_times.numpy())


@pytest.mark.skipif(not usd_available(), reason="usd-core is not installed (pip install usd-core)")
def test_usd_time_samples_match_frames(tmp_path):
    import trimesh

    scene = CapsuleScene(num_surfels=100, num_frames=4)
    mesh = trimesh.creation.icosphere(subdivisions=2, radius=0.3)
    animated = build_animated_mesh(scene, mesh, refine=False)
    path = write_usd(animated, tmp_path / "mesh.usdc", fps=12, provenance={"run": "x"})
    frames, faces = read_usd_points(path)
    assert frames.shape == animated.frames.shape
    assert np.allclose(frames, animated.frames, atol=1e-6)
    assert np.array_equal(faces, mesh.faces)
    from pxr import Usd

    stage = Usd.Stage.Open(str(path))
    assert stage.GetTimeCodesPerSecond() == 12 and stage.GetEndTimeCode() == 3
    assert "recon4d" in stage.GetRootLayer().customLayerData
    # displayColor holds linear light; the fitted colours are sRGB bytes.
    from pxr import UsdGeom

    shown = np.asarray(UsdGeom.Mesh(stage.GetPrimAtPath("/recon4d/mesh")).GetDisplayColorAttr().Get())
    srgb = animated.colors[:, :3] / 255.0
    linear = np.where(srgb <= 0.04045, srgb / 12.92, ((srgb + 0.055) / 1.055) ** 2.4)
    np.testing.assert_allclose(shown, linear, atol=1e-5)
    assert np.abs(shown - srgb).max() > 0.05


def test_mp4_round_trip(tmp_path):
    frames = np.zeros((5, 33, 47, 3), dtype=np.uint8)  # odd sizes get padded to even
    for i in range(5):
        frames[i, :, : 8 * (i + 1)] = (200, 30, 30)
    path = write_mp4(list(frames), tmp_path / "a.mp4", fps=10)
    back = read_mp4(path)
    assert back.shape == (5, 34, 48, 3)
    red = back[..., 0].astype(int) > 128
    assert [int(r[16].sum()) for r in red] == [pytest.approx(8 * (i + 1), abs=2) for i in range(5)]
    with pytest.raises(ValueError):
        write_mp4([], tmp_path / "b.mp4")
    assert not (tmp_path / "b.mp4").exists()


def test_videos_of_a_scene(tmp_path):
    scene = CapsuleScene(num_surfels=800, num_frames=3, image_size=48)
    written = write_videos(scene, tmp_path, fps=8, backend="auto", orbit_count=4,
                           orbit_size=48)
    assert set(written) == {"input", "orbit", "normals", "depth", "alpha"}  # no dataset: no side by side
    for kind, path in written.items():
        video = read_mp4(path)
        assert video.shape[0] == (4 if kind == "orbit" else 3), kind
    alpha = read_mp4(written["alpha"])[..., 0]
    normals = read_mp4(written["normals"])
    assert 0.05 < (alpha > 128).mean() < 0.9  # the object covers part of the view
    fg = normals[alpha > 200]
    assert fg.std(0).mean() > 20  # normals vary over the curved surface


def _tiny_run(run_dir: Path, step: int = 5) -> None:
    """A run directory with a real DynamicSurfelModel checkpoint (random bone motion)."""
    from recon4d.model.canonical import CanonicalSurfels
    from recon4d.model.scene import DynamicSurfelModel
    from recon4d.rundir import RunDir
    from recon4d.utils.checkpoint import save_checkpoint

    double = CapsuleScene(num_surfels=700, num_frames=4, image_size=48)
    surf = double.canonical_surfels()
    normals = torch.tensor(np.asarray(double._rots[:, :, 2]), dtype=torch.float32)
    canonical = CanonicalSurfels.from_points(surf.means, normals, double._rgb, float(surf.scales[0, 0]),
                                             opacity=0.95)
    cams = double.input_cameras()
    torch.manual_seed(0)
    model = DynamicSurfelModel.build(canonical, double.frame_times, double.frame_times,
                                     cams.viewmats, cams.Ks, cams.width, cams.height, num_bones=3,
                                     bone_centers=double.bone_centers(), bone_radius=0.4)
    with torch.no_grad():
        for p in model.warp.parameters():
            p.add_(0.1 * torch.randn_like(p))  # bones turn up to ~25 degrees apart: a real warp
    run = RunDir(run_dir).create()
    run.write_config({"note": "export test"})
    save_checkpoint(run.checkpoints, step, {"step": step, "model_spec": model.full_spec(),
                                            "model": model.state_dict()})


def test_cli_export_on_a_run_dir(tmp_path):
    from recon4d.model import load_run

    run_dir = tmp_path / "run"
    _tiny_run(run_dir, step=5)
    rc = main(["export", str(run_dir), "--format", "glb-skin", "glb-morph", "splats", "--faces",
               "600", "--resolution", "40", "--views", "6", "--image-size", "48",
               "--frame", "scene", "--quiet"])
    assert rc == 0
    export = run_dir / "export"
    provenance = json.loads((export / "provenance.json").read_text())
    assert provenance["step"] == 5 and provenance["run"] == str(run_dir.resolve())
    assert provenance["settings"]["faces"] == 600
    assert sorted(p.name for p in (export / "splats").glob("frame_*.ply")) == [
        f"frame_{i:04d}.ply" for i in range(4)]
    # The skinned GLB follows the real model's warp (dual quaternions, 3 bones, root poses).
    model = load_run(run_dir)
    [skin] = gltf_eval.evaluate(export / "model_skin.glb")
    [morph] = gltf_eval.evaluate(export / "model_morph.glb")
    doc = gltf_eval.load(export / "model_skin.glb")
    base = gltf_eval.read_accessor(doc, doc.meshes[0].primitives[0].attributes.POSITION)
    with torch.no_grad():
        expected = np.stack([model.warp_points(torch.tensor(base, dtype=torch.float32), float(t))
                             .double().numpy() for t in model.frame_times])
    diag = float(np.linalg.norm(base.max(0) - base.min(0)))
    assert np.linalg.norm(expected - base, axis=-1).mean() > 0.01 * diag  # it does move
    err = np.linalg.norm(skin.positions - expected, axis=-1)
    assert err.mean() <= 0.002 * diag and err.max() <= 0.01 * diag
    assert np.abs(morph.positions - expected).max() <= 1e-5 * max(1.0, np.abs(expected).max())
    assert doc.asset.extras["recon4d"]["step"] == 5


def test_animations_play_at_the_clips_own_rate(clips_dir, tmp_path):
    """green_robot.mp4 is 10 fps, 21 frames (2 s). Four frames kept of it (source frames 0, 7,
    13, 20: one every 20/3) play at 1.5 fps, so the skinned GLB's animation lasts the clip's 2 s;
    the exporter looked for a manifest key no dataset has and played every clip at 24 fps."""
    import shutil

    from recon4d.data.dataset import load_dataset
    from recon4d.data.ingest import IngestOptions, ingest

    run_dir = tmp_path / "run"
    _tiny_run(run_dir)
    shutil.rmtree(run_dir / "dataset", ignore_errors=True)
    ingest(clips_dir / "green_robot.mp4", run_dir / "dataset",
           IngestOptions(resolution=48, max_frames=4, flow=False))
    assert load_dataset(run_dir / "dataset").fps == pytest.approx(1.5)
    assert main(["export", str(run_dir), "--format", "glb-skin", "--faces", "300",
                 "--resolution", "32", "--views", "4", "--image-size", "32", "--quiet"]) == 0
    doc = gltf_eval.load(run_dir / "export" / "model_skin.glb")
    times = gltf_eval.read_accessor(doc, doc.animations[0].samplers[0].input)
    assert float(times.max()) == pytest.approx(2.0, abs=1e-4)
    provenance = json.loads((run_dir / "export" / "provenance.json").read_text())
    assert provenance["settings"]["fps"] == pytest.approx(1.5)
    # The export's orbit.mp4 (48 frames, time over the whole clip) lasts the clip's 2 s too.
    assert main(["export", str(run_dir), "--format", "video", "--views", "4", "--image-size",
                 "32", "--quiet"]) == 0
    import av

    with av.open(str(run_dir / "renders" / "orbit.mp4")) as container:
        stream = container.streams.video[0]
        assert float(stream.average_rate) == pytest.approx(47 / 2.0, rel=1e-3)
    # recon4d render: the input views replay at 1.5 fps, a 7-frame orbit spreads over 2 s.

    for camera, frames, rate in (("input", "4", 1.5), ("orbit", "7", 3.0)):
        out = tmp_path / f"{camera}.mp4"
        assert main(["render", str(run_dir), "--camera", camera, "--frames", frames, "--size",
                     "32", "--out", str(out), "--quiet"]) == 0
        with av.open(str(out)) as container:
            assert float(container.streams.video[0].average_rate) == pytest.approx(rate), camera
    # The viewer's playback speed 1 is the same rate (it read the source's, ignoring the
    # kept frames' spacing).
    from viewer.source import open_run

    assert open_run(run_dir).fps == pytest.approx(1.5)


def test_a_strided_clip_plays_at_its_source_rate_over_the_stride(clips_dir, tmp_path):
    from recon4d.data.dataset import load_dataset
    from recon4d.data.ingest import IngestOptions, ingest

    every = load_dataset(ingest(clips_dir / "green_robot.mp4", tmp_path / "a",
                                IngestOptions(resolution=32, max_frames=3, stride=1, flow=False)))
    strided = load_dataset(ingest(clips_dir / "green_robot.mp4", tmp_path / "b",
                                  IngestOptions(resolution=32, stride=4, flow=False)))
    assert every.fps == pytest.approx(10 * 2 / 20)       # source frames 0, 10, 20
    assert strided.fps == pytest.approx(10 / 4)          # source frames 0, 4, ..., 20


def test_cli_export_bad_input_is_one_line_exit_2(tmp_path, capsys):
    assert main(["export", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not exist" in err[0]
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text(json.dumps(
        {"schema_version": 1, "kind": "fit", "config": {}}))
    assert main(["export", str(tmp_path / "empty")]) == 2
    assert "no checkpoint" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "empty"), "--format", "fbx"]) == 2
    assert not (tmp_path / "empty" / "export" / "provenance.json").exists()


def test_cli_render_orbit_and_input(tmp_path):
    run_dir = tmp_path / "run"
    _tiny_run(run_dir)
    out = tmp_path / "orbit.mp4"
    assert main(["render", str(run_dir), "--camera", "orbit", "--frames", "3", "--size", "40",
                 "--out", str(out), "--quiet"]) == 0
    assert read_mp4(out).shape[:3] == (3, 40, 40)
    png = tmp_path / "frame.png"
    assert main(["render", str(run_dir), "--camera", "input", "--time", "0.5", "--out", str(png),
                 "--quiet"]) == 0
    from PIL import Image

    image = np.asarray(Image.open(png))
    assert image.shape == (48, 48, 3) and (image < 200).any()  # something drawn on white
    assert main(["render", str(run_dir), "--time", "1.5", "--out", str(png)]) == 2
