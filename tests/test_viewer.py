"""The viewer's parts without a browser: camera conversions, render modes, playback clock,
adaptive resolution, overlays, live-mode snapshots, the static web export, the CLI's errors."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch

from recon4d.render import render
from recon4d.viewer.cameras import ViewPose, camera_to_pose, pose_to_cameras, render_size
from recon4d.viewer.engine import SceneRenderer
from recon4d.viewer.modes import bone_palette, colorize_depth
from recon4d.viewer.overlays import bone_positions, trail_segments
from recon4d.viewer.timeline import AdaptiveResolution, Playback

from viewer_doubles import CapsuleScene, capsule_mesh_animation


@pytest.fixture(scope="module")
def scene() -> CapsuleScene:
    return CapsuleScene(num_surfels=300, num_frames=8, image_size=64)


def test_input_camera_round_trips_through_the_viewer_pose(scene):
    cams = scene.input_cameras()
    for i in (0, 5):
        pose = camera_to_pose(cams.viewmats[i].double().numpy(), cams.Ks[i].double().numpy(),
                              cams.height)
        back = pose_to_cameras(pose, cams.width, cams.height)
        assert torch.allclose(back.viewmats[0], cams.viewmats[i], atol=1e-5)
        assert torch.allclose(back.Ks[0], cams.Ks[i], atol=1e-4)


def test_viewer_pose_follows_viser_opencv_convention():
    # A camera at z = -3 looking along +z (identity rotation) sees the origin at the image
    # centre; a point at +x lands right of centre, a point at +y lands below it.
    pose = ViewPose(np.array([1.0, 0, 0, 0]), np.array([0.0, 0.0, -3.0]), math.radians(60))
    cams = pose_to_cameras(pose, 100, 80)
    def project(p):
        cam = cams.viewmats[0] @ torch.tensor([*p, 1.0])
        uvw = cams.Ks[0] @ cam[:3]
        return (uvw[:2] / uvw[2]).tolist()
    assert project([0, 0, 0]) == pytest.approx([50.0, 40.0])
    assert project([0.5, 0, 0])[0] > 50 and project([0, 0.5, 0])[1] > 40
    # Vertical fov: a point at the top edge of the view maps to v = 0.
    top = 3.0 * math.tan(math.radians(30))
    assert project([0, -top, 0])[1] == pytest.approx(0.0, abs=1e-3)
    assert render_size(100 / 80, 256) == (256, 205)
    assert render_size(0.5, 256) == (128, 256)


def test_view_from_an_input_camera_matches_a_direct_render(scene):
    cams = scene.input_cameras()
    renderer = SceneRenderer(scene, backend="reference", background=(1.0, 1.0, 1.0))
    pose = camera_to_pose(cams.viewmats[3].double().numpy(), cams.Ks[3].double().numpy(),
                          cams.height)
    t = float(scene.frame_times[3])
    view = renderer.render(pose, cams.width, cams.height, t, "RGB")
    direct = render(scene.surfels_at(t), cams[3], backend="reference", background=torch.ones(3))
    expected = (direct.rgb[0].clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)
    assert view.image.shape == (cams.height, cams.width, 3)
    assert np.abs(view.image.astype(int) - expected.astype(int)).max() <= 2
    # The depth sent to the browser is the render's depth on the object, far elsewhere.
    covered = direct.alpha[0].numpy() > 0.5
    assert covered.sum() > 100
    assert np.allclose(view.depth[covered], direct.depth[0].numpy()[covered], atol=1e-4)
    assert (view.depth[~covered] > 50).all()


def test_render_modes_differ_and_bones_mode_uses_the_palette(scene):
    cams = scene.input_cameras()
    renderer = SceneRenderer(scene, backend="reference")
    pose = camera_to_pose(cams.viewmats[0].double().numpy(), cams.Ks[0].double().numpy(),
                          cams.height)
    images = {mode: renderer.render(pose, 64, 64, 0.0, mode).image
              for mode in ("RGB", "Alpha", "Depth", "Normals", "Bones")}
    for a in images:
        for b in images:
            if a < b:
                assert np.abs(images[a].astype(int) - images[b].astype(int)).mean() > 3, (a, b)
    # Bones mode: the pixel where each bone's centre projects shows that bone's colour.
    palette = (bone_palette(2) * 255).astype(int)
    for bone, centre in enumerate(scene.bone_centers()):
        cam = cams.viewmats[0] @ torch.tensor([*centre.tolist(), 1.0])
        u, v = (cams.Ks[0] @ cam[:3])[:2] / cam[2]
        pixel = images["Bones"][int(v), int(u)].astype(int)
        assert np.abs(pixel - palette[bone]).max() < 40, (bone, pixel, palette[bone])
    # Alpha mode: white on the object, black off it.
    assert images["Alpha"][32, 32].min() > 200 and images["Alpha"][2, 2].max() < 20


def test_depth_colours_run_from_near_to_far():
    depth = np.tile(np.linspace(1.0, 3.0, 50, dtype=np.float32), (4, 1))
    alpha = np.ones_like(depth)
    alpha[:, -5:] = 0.0
    colours = colorize_depth(depth, alpha)
    brightness = colours[0, :45].sum(-1)
    assert brightness[0] > brightness[-1] + 1.0  # near is bright, far is dark
    assert np.all(colours[:, -5:] == 0)  # empty pixels stay black


def test_playback_clock_steps_loops_and_stops():
    pb = Playback(np.linspace(0, 1, 13), fps=12.0)  # 12 intervals: 1 s per pass at speed 1
    assert pb.step(+1) == pytest.approx(1 / 12) and pb.frame_index() == 1
    assert pb.step(-2) == pytest.approx(1.0)  # looping: one step back from frame 0 wraps
    pb.seek(0.0)
    pb.playing = True
    assert pb.advance(0.5) == pytest.approx(0.5)
    pb.speed = 2.0
    assert pb.advance(0.75) == pytest.approx(0.0, abs=1e-9)  # 0.5 + 1.5 wraps to 0.0
    pb.loop = False
    pb.seek(0.9)
    assert pb.advance(1.0) == pytest.approx(1.0) and not pb.playing
    assert pb.seek(7.0) == 1.0 and pb.seek(-1.0) == 0.0


def test_adaptive_resolution_hits_the_time_budget():
    res = AdaptiveResolution(full_side=512, min_side=64, budget_s=0.1)
    res.record(256 * 256, 0.4)  # 0.4 s for 256^2: the budget allows a quarter of the pixels
    assert res.side(moving=True) == 128
    assert res.side(moving=False) == 512
    for _ in range(20):  # very fast renders (the average forgets the slow one): full size
        res.record(64 * 64, 1e-6)
    assert res.side(moving=True) == 512


def test_bone_overlay_positions_follow_the_bones(scene):
    # Upper bone of the double turns by 60 * sin(pi t) degrees about +z through the origin;
    # its rest centre is (0, -0.35, 0).
    positions = bone_positions(scene, [0.0, 0.5])
    assert positions.shape == (2, 2, 3)
    assert np.allclose(positions[0], scene.bone_centers().numpy(), atol=1e-6)
    angle = math.radians(60)
    expected = [0.35 * math.sin(angle), -0.35 * math.cos(angle), 0.0]
    assert np.allclose(positions[1, 1], expected, atol=1e-5)
    assert np.allclose(positions[1, 0], positions[0, 0], atol=1e-6)  # the lower bone stays
    segments = trail_segments(bone_positions(scene, np.linspace(0, 1, 5)))
    assert segments.shape == (2 * 4, 2, 3)
    assert np.allclose(segments[:3, 1], segments[1:4, 0])  # consecutive segments join


class _ModuleCapsule(torch.nn.Module, CapsuleScene):
    """The double as an nn.Module with one trainable parameter (moves the whole capsule)."""

    def __init__(self):
        torch.nn.Module.__init__(self)
        CapsuleScene.__init__(self, num_surfels=200)
        self.offset = torch.nn.Parameter(torch.zeros(3))

    def surfels_at(self, t):
        surfels = CapsuleScene.surfels_at(self, t)
        surfels.means = surfels.means + self.offset
        return surfels


def test_live_snapshot_is_detached_from_training():
    from recon4d.viewer.live import snapshot_scene

    model = _ModuleCapsule()
    model.offset.grad = torch.ones(3)
    copy = snapshot_scene(model)
    with torch.no_grad():
        model.offset += 1.0  # a later training step
    assert torch.equal(copy.offset, torch.zeros(3))
    assert not copy.offset.requires_grad and copy.offset.grad is None
    assert copy.surfels_at(0.5).means.requires_grad is False
    assert torch.allclose(copy.surfels_at(0.5).means + 1.0, model.surfels_at(0.5).means)


def test_live_viewer_starts_in_the_background_and_records_metrics():
    from recon4d.viewer.live import LiveViewer, snapshot_scene

    model = _ModuleCapsule()
    viewer = LiveViewer(port=0, snapshot_every_s=0.0)
    try:
        for step in range(3):
            viewer.on_step(step, model, {"step": step, "loss": 1.0 / (step + 1), "stage": "full"})
        assert viewer.wait_started(timeout=60), viewer.error
        assert [m["loss"] for m in viewer.metrics] == [1.0, 0.5, 1 / 3]
        assert viewer.app.url == viewer.url
        # The served copy does not move when training moves the model.
        with torch.no_grad():
            model.offset += 5.0
        served = viewer.app.renderer.scene.surfels_at(0.0).means
        assert served.abs().max() < 2.0
        # A new snapshot is swapped in by the render thread, not by the caller.
        newer = snapshot_scene(model)
        viewer.app.replace_scene(newer)
        deadline = time.monotonic() + 10
        while viewer.app.renderer.scene is not newer and time.monotonic() < deadline:
            time.sleep(0.05)
        assert viewer.app.renderer.scene is newer
    finally:
        viewer.close()


def test_web_export_writes_a_playable_recording(tmp_path, scene):
    import msgspec
    import zstandard

    from recon4d.viewer.source import MeshAnimation, ViewerSource
    from recon4d.viewer.web_export import write_web

    mesh = capsule_mesh_animation(scene)
    out = write_web(tmp_path / "run", tmp_path / "web", source=ViewerSource(scene, mesh=mesh))
    names = sorted(p.name for p in out.iterdir())
    assert names == ["index.html", "player.html", "scene.viser", "web.json"]
    data = (out / "scene.viser").read_bytes()
    inner = zstandard.ZstdDecompressor().decompress(data[8:], max_output_size=int.from_bytes(data[:8], "little"))
    header_len = int.from_bytes(inner[:8], "little")
    payload = msgspec.msgpack.decode(inner[8:8 + header_len])
    frames = len(scene.frame_times)
    assert payload["durationSeconds"] == pytest.approx(frames / 12.0)
    kinds = [message["type"] for _, message in payload["messages"]]
    assert kinds.count("GlbMessage") == frames  # one mesh per input frame
    html = (out / "index.html").read_text()
    assert "__VISER_EMBED_DATA__" in html and len(html) > len(data)
    assert isinstance(mesh, MeshAnimation)


def test_mesh_animation_interpolates_between_frames(scene):
    mesh = capsule_mesh_animation(scene)
    t0, t1 = float(mesh.times[2]), float(mesh.times[3])
    assert np.allclose(mesh.at(t0), mesh.vertices[2])
    assert np.allclose(mesh.at(0.5 * (t0 + t1)), 0.5 * (mesh.vertices[2] + mesh.vertices[3]),
                       atol=1e-6)


def test_view_command_rejects_bad_input(tmp_path, capsys):
    from recon4d.cli.main import main

    assert main(["view", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not exist" in err[0]
    assert main(["view", str(tmp_path), "--port", "70000"]) == 2
    assert "--port 70000" in capsys.readouterr().err
