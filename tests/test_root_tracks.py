"""Root poses from point tracks: the tracks themselves, the rigid estimate on a tumbling object
rendered by the scenes' own (independent) renderer, the trainer's use of it, and the depth gauge."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter
from scipy.spatial.transform import Rotation

from recon4d.data.dataset import load_dataset
from recon4d.data.tracks import point_tracks, sample_bilinear
from recon4d.export.transforms import kabsch
from recon4d.model.init import init_from_masks, project_points
from recon4d.model.root_from_tracks import RootEstimate, estimate_root_poses
from recon4d.rundir import RunDir
from recon4d.scenes import load_ground_truth, make_scene
from recon4d.train.config import apply_overrides, preset, resolve_for_dataset
from recon4d.train.trainer import Trainer


def _sliding_square(frames=6, size=64, step=(2, 1)):
    """A textured 24 px square moving ``step`` pixels a frame on white: frames, masks."""
    rng = np.random.default_rng(0)
    texture = gaussian_filter(rng.random((24, 24, 3)), (1.5, 1.5, 0))
    texture = (texture - texture.min()) / np.ptp(texture)
    images = np.ones((frames, size, size, 3), np.float32)
    masks = np.zeros((frames, size, size), np.float32)
    for k in range(frames):
        x, y = 10 + step[0] * k, 12 + step[1] * k
        images[k, y:y + 24, x:x + 24] = texture
        masks[k, y:y + 24, x:x + 24] = 1
    return images, masks


def test_bilinear_sampling_takes_more_points_than_a_remap_map_has_rows():
    """cv2.remap refuses maps of 32767 rows or more; a 1024-px clip's grid has more tracks than
    that (it raised cv2.error before the points were laid out as a wide map)."""
    rng = np.random.default_rng(1)
    field = rng.random((64, 80, 2)).astype(np.float32)
    uv = rng.uniform([0.5, 0.5], [79.5, 63.5], size=(40_000, 2))
    found = sample_bilinear(field, uv)
    # Bilinear by hand: pixel centres at +0.5.
    x, y = uv[:, 0] - 0.5, uv[:, 1] - 0.5
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    x1, y1 = np.minimum(x0 + 1, 79), np.minimum(y0 + 1, 63)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    expected = ((1 - fy) * ((1 - fx) * field[y0, x0] + fx * field[y0, x1])
                + fy * ((1 - fx) * field[y1, x0] + fx * field[y1, x1]))
    assert found.shape == (40_000, 2)
    assert np.abs(found - expected).max() < 1e-3
    assert sample_bilinear(field, np.zeros((0, 2))).shape == (0, 2)


def test_point_tracks_follow_a_known_motion_and_stay_on_the_object():
    frames, masks = _sliding_square()
    tracks = point_tracks(frames, masks, stride=4, min_length=3)
    assert tracks.num_tracks >= 20 and tracks.uv.shape[1:] == (6, 2)
    assert (tracks.valid.sum(1) >= 3).all()
    # Every observation lies on the object in its frame.
    t, f = np.nonzero(tracks.valid)
    px = np.floor(tracks.uv[t, f]).astype(int)
    assert (masks[f, px[:, 1], px[:, 0]] > 0.5).all()
    # Frame-to-frame motion is the square's (2, 1) px, to a fraction of a pixel.
    both = tracks.valid[:, :-1] & tracks.valid[:, 1:]
    steps = (tracks.uv[:, 1:] - tracks.uv[:, :-1])[both]
    assert np.median(steps, 0) == pytest.approx([2.0, 1.0], abs=0.25)
    assert np.isnan(tracks.uv[~tracks.valid]).all()
    # The flow ran on the frames enlarged to 256 px (4x); tracked at their own 64 px instead,
    # the tracks are as many and move the same in the input's pixels.
    small = point_tracks(frames, masks, stride=4, min_length=3, flow_size=0)
    assert abs(small.num_tracks - tracks.num_tracks) <= 0.2 * tracks.num_tracks
    both = small.valid[:, :-1] & small.valid[:, 1:]
    assert np.median((small.uv[:, 1:] - small.uv[:, :-1])[both], 0) == pytest.approx([2.0, 1.0], abs=0.25)
    with pytest.raises(ValueError, match="two frames"):
        point_tracks(frames[:1], masks[:1])


def test_root_poses_from_tracks_follow_a_tumbling_object(tmp_path):
    """The `rigid` scene turns 120 degrees about a tilted axis in front of a fixed camera. The
    photometric fit alone ends with a 30-degree root (docs/fit.md); the track estimate follows
    the true rotation at every training frame."""
    scene = make_scene("rigid", tmp_path / "rigid", resolution=128, frames=24)
    data, gt = load_dataset(scene), load_ground_truth(scene)
    train = data.train_indices()
    init = init_from_masks(data.frames, data.masks, data.cameras.viewmats, data.cameras.Ks, 800,
                           reference=train[0])
    tracks = point_tracks(data.frames[train], data.masks[train])
    estimate = estimate_root_poses(tracks, data.cameras.viewmats[train], data.cameras.Ks[train],
                                   init.points, init.normals, init.points.mean(0), init.extent,
                                   data.height, data.width)
    truth = _truth_turns(gt, train)
    found = Rotation.from_rotvec(estimate.rotvecs)
    errors = [np.degrees((found[i] * truth[i].inv()).magnitude()) for i in range(len(train))]
    # Measured: at most 9.4 degrees (the identity is 120 degrees off at the last frame).
    assert np.degrees(truth[-1].magnitude()) > 110
    assert max(errors) < 15, np.round(errors, 1)
    assert estimate.residual_px < 1.0 and estimate.rotvecs[0] == pytest.approx(np.zeros(3))
    # The object where the truth has it in depth: measured 0.97-1.02 of the true depth with the
    # pivot-depth prior, up to 1.08 without (the camera cannot see the solution's scale).
    ratios = _depth_ratios(estimate, gt, train, data.cameras.viewmats[train])
    assert estimate.depth_held
    assert np.abs(ratios - 1).max() < 0.045, np.round(ratios, 3)
    free = estimate_root_poses(tracks, data.cameras.viewmats[train], data.cameras.Ks[train],
                               init.points, init.normals, init.points.mean(0), init.extent,
                               data.height, data.width, depth_hold=0.0)
    assert np.abs(_depth_ratios(free, gt, train, data.cameras.viewmats[train]) - 1).max() > 0.06


def test_root_poses_leave_the_depth_free_for_an_object_that_approaches(tmp_path):
    """The pivot-depth prior must not bend a turn whose object really moves in depth: the
    `rigid` scene swinging 1.2 units towards and away from the camera (its centre between 2.2
    and 3.3 units deep). Holding the depth costs reprojection error there (measured 0.70 px
    against 0.24 px free, and a 32-degree error in the turn), so the free solution is kept.
    The free solution is the truth seen at another scale about the camera: every frame's
    tracked points come out the same factor too deep (1.22-1.27; the first lift puts the
    object where the init assumes it, 2.7 units, while this swing starts at 2.26), which one
    fixed camera cannot tell apart from the truth."""
    scene = make_scene("rigid", tmp_path / "approach", resolution=128, frames=24,
                       motion={"amplitude": [0.22, 0.12, 1.2]})
    data, gt = load_dataset(scene), load_ground_truth(scene)
    train = data.train_indices()
    viewmats, Ks = data.cameras.viewmats[train], data.cameras.Ks[train]
    init = init_from_masks(data.frames[train], data.masks[train], viewmats, Ks, 800)
    tracks = point_tracks(data.frames[train], data.masks[train])
    estimate = estimate_root_poses(tracks, viewmats, Ks, init.points, init.normals,
                                   init.points.mean(0), init.extent, data.height, data.width,
                                   times=data.times[train])
    assert not estimate.depth_held
    truth = _truth_turns(gt, train)
    found = Rotation.from_rotvec(estimate.rotvecs)
    errors = [np.degrees((found[i] * truth[i].inv()).magnitude()) for i in range(len(train))]
    assert max(errors) < 8, np.round(errors, 1)   # measured 2.5
    # The estimate follows the swing in depth (measured: correlation 0.93; held anyway, 0.86).
    centre = np.append(gt.vertices[train[0]].mean(0), 1.0)
    found_depth = _camera_depths(estimate.transforms(), viewmats, centre)
    true_depth = _camera_depths(_truth_motion(gt, train), viewmats, centre)
    assert np.ptp(true_depth) > 0.9
    assert np.corrcoef(found_depth, true_depth)[0, 1] > 0.9
    # ... as a similarity of the truth: the tracked points' depth over the true depth at their
    # pixels is one factor in every frame (measured 1.223-1.272, a spread of 1.04; held anyway
    # 0.79-1.14, a spread of 1.45: the swing flattened).
    ratios = _track_depth_ratios(estimate, tracks, gt, train, viewmats)
    assert ratios.max() / ratios.min() < 1.15, np.round(ratios, 3)


def _truth_motion(gt, frames) -> np.ndarray:
    """(F, 4, 4) rigid motion of the truth's whole mesh from ``frames[0]`` to each frame (Kabsch)."""
    return np.stack([kabsch(gt.vertices[frames[0]], gt.vertices[k]) for k in frames])


def _camera_depths(transforms: np.ndarray, viewmats: np.ndarray, point: np.ndarray) -> np.ndarray:
    """(F,) camera depth of the homogeneous ``point`` (4,) moved by each of (F, 4, 4) transforms,
    seen by (F, 4, 4) world-to-camera ``viewmats``."""
    return np.einsum("fj,fj->f", viewmats[:, 2], transforms @ point)


def _depth_ratios(estimate, gt, frames, viewmats) -> np.ndarray:
    """(F,) camera depth of the truth's frame-0 centroid moved by the estimate, over its depth
    moved by the truth's rigid motion."""
    centre = np.append(gt.vertices[frames[0]].mean(0), 1.0)
    return (_camera_depths(estimate.transforms(), viewmats, centre)
            / _camera_depths(_truth_motion(gt, frames), viewmats, centre))


def _track_depth_ratios(estimate, tracks, gt, frames, viewmats) -> np.ndarray:
    """(F,) per frame, the median over the tracks seen there of the estimate's camera depth of
    the track's point over the truth's depth map at the track's pixel: a constant for an
    estimate that equals the truth up to a scaling about the (fixed) camera."""
    transforms = estimate.transforms()
    out = []
    for k, f in enumerate(frames):
        seen = np.nonzero(tracks.valid[:, k])[0]
        world = estimate.points[seen] @ transforms[k, :3, :3].T + transforms[k, :3, 3]
        found = world @ viewmats[k, 2, :3] + viewmats[k, 2, 3]
        px = np.clip(np.floor(tracks.uv[seen, k]).astype(int), 0,
                     np.array(gt.depth.shape[2:0:-1]) - 1)
        truth = gt.depth[f][px[:, 1], px[:, 0]]
        on = truth > 0
        out.append(np.median(found[on] / truth[on]))
    return np.array(out)


def _truth_turns(gt, frames) -> list:
    """Rotations of the truth's whole mesh from ``frames[0]`` to each frame."""
    return [Rotation.from_matrix(m[:3, :3]) for m in _truth_motion(gt, frames)]


def test_root_poses_from_tracks_follow_a_turntable_past_the_half_turn(tmp_path):
    """The walking creature turns a full circle in front of a fixed camera, so surface the
    first frame never saw keeps coming into view. The chain's running bundle adjustment gives
    those points their depth before the next frame leans on them; without it (session 17's
    chain) the estimate stalled at 120 degrees and flipped (180 degrees off)."""
    scene = make_scene("creature_turntable", tmp_path / "turntable", resolution=256)
    data, gt = load_dataset(scene), load_ground_truth(scene)
    train = data.train_indices()
    init = init_from_masks(data.frames[train], data.masks[train], data.cameras.viewmats[train],
                           data.cameras.Ks[train], 800)
    tracks = point_tracks(data.frames[train], data.masks[train])
    estimate = estimate_root_poses(tracks, data.cameras.viewmats[train], data.cameras.Ks[train],
                                   init.points, init.normals, init.points.mean(0), init.extent,
                                   data.height, data.width, times=data.times[train])
    truth = _truth_turns(gt, train)
    found = Rotation.from_rotvec(estimate.rotvecs)
    errors = np.array([np.degrees((found[i] * truth[i].inv()).magnitude())
                       for i in range(len(train))])
    spin = 360.0 * data.times[train] / data.times[-1]
    # Measured: at most 8 degrees up to 300 degrees of turn, then 11-18 in the last four frames
    # (the second end-on view; 15-41 without the pivot-depth prior).
    assert spin[spin <= 300].max() > 290
    assert errors[spin <= 300].max() < 15, np.round(errors, 1)
    assert estimate.turn_degrees().max() > 270
    # The pivot-depth prior keeps the object at its true depth around the turn: measured 0.97-1.045
    # of it (without the prior up to 1.07 by 300 degrees and 1.20 at the end).
    ratios = _depth_ratios(estimate, gt, train, data.cameras.viewmats[train])
    assert np.abs(ratios[spin <= 300] - 1).max() < 0.06, np.round(ratios, 3)
    # Seen from around: the directions to the camera in the object's frame nearly cancel.
    assert estimate.view_resultant(data.cameras.viewmats[train], init.center) < 0.3
    # Every track has its adjusted 3D point; a mid-clip frame's, moved by that frame's pose,
    # lands on the pixels tracked there.
    assert estimate.points.shape == (tracks.num_tracks, 3) and np.isfinite(estimate.points).all()
    k = len(train) // 2
    seen = tracks.valid[:, k]
    moved = estimate.points[seen] @ estimate.transforms()[k, :3, :3].T + estimate.transforms()[k, :3, 3]
    uv, _ = project_points(moved, data.cameras.viewmats[train][k], data.cameras.Ks[train][k])
    assert np.median(np.linalg.norm(uv - tracks.uv[seen, k], axis=1)) < 2.0


def test_root_estimate_transforms_and_view_resultant():
    """Poses about one pivot rewritten about another are the same rigid motions; a sweep's
    view resultant falls from 1 (one side seen) towards 0 (a full turn)."""
    angles = np.radians(np.linspace(0, 120, 9))
    rotvecs = np.stack([0.3 * angles, angles, 0.1 * angles], 1)
    pivot = np.array([0.1, -0.2, 2.7])
    estimate = RootEstimate(rotvecs, np.random.default_rng(0).normal(0, 0.1, (9, 3)), 0.0, 0, 0,
                            pivot)
    other = np.array([0.5, 0.3, 2.2])
    moved = RootEstimate(rotvecs, estimate.offsets_about(other), 0.0, 0, 0, other)
    assert np.allclose(moved.transforms(), estimate.transforms(), atol=1e-12)
    point = np.array([0.2, 0.1, 2.9, 1.0])
    expected = Rotation.from_rotvec(rotvecs[4]).apply(point[:3] - pivot) + pivot + estimate.offsets[4]
    assert np.allclose((estimate.transforms()[4] @ point)[:3], expected)
    views = np.tile(np.eye(4), (24, 1, 1))
    resultants = {}
    for sweep in (0, 120, 180, 360):
        turn = np.radians(np.linspace(0, sweep, 24))
        spin = RootEstimate(np.stack([0 * turn, turn, 0 * turn], 1), np.zeros((24, 3)), 0.0, 0,
                            0, pivot)
        resultants[sweep] = spin.view_resultant(views, pivot)
    assert resultants[0] == pytest.approx(1.0)
    assert resultants[120] == pytest.approx(0.81, abs=0.01)
    assert resultants[180] == pytest.approx(0.61, abs=0.01)
    assert resultants[360] < 0.1


def _trainer(scene, tmp_path, **overrides):
    data = load_dataset(scene)
    config = resolve_for_dataset(apply_overrides(preset("test"), overrides), data.width,
                                 data.height, len(data.train_indices()))
    return Trainer(data, RunDir(tmp_path / "run").create(), config)


def test_the_fit_starts_its_root_poses_from_the_tracks_and_logs_it(tmp_path):
    scene = make_scene("rigid", tmp_path / "rigid", resolution=64, frames=8)
    trainer = _trainer(scene, tmp_path, **{"model.root_init": "tracks"})
    trainer.initialise()
    turns = np.degrees(trainer.model.warp.root.rotvecs.detach().norm(dim=1).numpy())
    assert turns[0] == pytest.approx(0, abs=1e-4) and turns[-1] > 10
    record = next(r["root_init"] for r in trainer.run.read_metrics_log() if "root_init" in r)
    assert record["tracks"] > 6 and record["max_turn_deg"] == pytest.approx(turns.max(), abs=0.05)
    identity = _trainer(scene, tmp_path / "b", **{"model.root_init": "identity"})
    identity.initialise()
    assert float(identity.model.warp.root.rotvecs.detach().abs().max()) == 0.0
    assert not any("root_init" in r for r in identity.run.read_metrics_log())


def test_moving_cameras_keep_the_identity_root_with_a_warning(tmp_path, capsys):
    scene = make_scene("orbit", tmp_path / "orbit", resolution=48, frames=6)
    trainer = _trainer(scene, tmp_path, **{"model.root_init": "tracks"})
    trainer.initialise()
    assert "cameras move" in capsys.readouterr().err
    assert float(trainer.model.warp.root.rotvecs.detach().abs().max()) == 0.0


def test_depth_gauge_pulls_the_reference_frame_toward_the_init_centre(tmp_path):
    from recon4d.model.init import object_depth

    scene = make_scene("rigid", tmp_path / "rigid", resolution=48, frames=6)
    trainer = _trainer(scene, tmp_path, **{"coarse.losses.depth_gauge": 1.0})
    trainer.initialise()
    ref = trainer.train_frames[0]
    centre = object_depth(trainer.dataset.cameras.viewmats[ref], trainer.config.model.depth_hint)
    assert float(trainer._gauge_depth) == pytest.approx(centre, abs=1e-5)
    # The inflated init is deeper at the back than at the front (perspective): its centroid
    # lies behind the centre it was built around.
    start = float(trainer._reference_depth().detach())
    assert start > centre
    frames = trainer.train_frames[:1]
    _, terms, _ = trainer.compute_losses(frames, trainer.config.coarse, 0.0)
    assert terms["depth_gauge"] == pytest.approx(((start - centre) / trainer.extent) ** 2, rel=1e-4)
    # Moving the reference frame's root along the camera axis onto the centre zeroes it.
    axis = trainer.model.base_viewmats[ref][2, :3]
    with torch.no_grad():
        trainer.model.warp.root.offsets[0] -= (start - centre) * axis
    _, terms, _ = trainer.compute_losses(frames, trainer.config.coarse, 0.0)
    assert terms["depth_gauge"] == pytest.approx(0.0, abs=1e-9)


def test_fit_cli_root_from_tracks_flag(tmp_path, capsys):
    import json

    from recon4d.cli.main import main
    from recon4d.model import load_run

    scene = make_scene("rigid", tmp_path / "rigid", resolution=64, frames=8)
    out = tmp_path / "run"
    assert main(["fit", str(scene), "--out", str(out), "--preset", "test", "--steps", "1",
                 "--root-from-tracks", "--quiet"]) == 0
    saved = json.loads((out / "config.json").read_text())["config"]
    assert saved["model"]["root_init"] == "tracks"
    assert any("root_init" in r for r in RunDir(out).read_metrics_log())
    turns = np.degrees(load_run(out).warp.root.rotvecs.detach().norm(dim=1).numpy())
    assert turns[-1] > 10
    still = tmp_path / "still"
    assert main(["fit", str(scene), "--out", str(still), "--preset", "test", "--steps", "1",
                 "--root-init", "identity", "--quiet"]) == 0
    assert json.loads((still / "config.json").read_text())["config"]["model"]["root_init"] == "identity"
    assert not any("root_init" in r for r in RunDir(still).read_metrics_log())
    assert main(["fit", str(scene), "--out", str(tmp_path / "both"), "--preset", "test",
                 "--root-init", "identity", "--root-from-tracks", "--quiet"]) != 0
    assert "contradicts" in capsys.readouterr().err


def test_auto_root_init_uses_tracks_only_for_a_large_turn(tmp_path):
    """'auto' keeps the identity where the tracks show a small turn (the default scene turns
    10 degrees) and starts from them, with a hull init and the root prior, on a turntable."""
    small = make_scene("default", tmp_path / "default", resolution=64, frames=8)
    trainer = _trainer(small, tmp_path / "a", **{"model.root_init": "auto"})
    trainer.initialise()
    record = next(r["root_init"] for r in trainer.run.read_metrics_log() if "root_init" in r)
    assert record["used"] is False and record["max_turn_deg"] < 45
    assert float(trainer.model.warp.root.rotvecs.detach().abs().max()) == 0.0
    assert trainer._root_anchor is None
    assert not any("init_hull" in r for r in trainer.run.read_metrics_log())

    turning = make_scene("creature_turntable", tmp_path / "turntable", resolution=128)
    trainer = _trainer(turning, tmp_path / "b", **{"model.root_init": "auto"})
    trainer.initialise()
    record = next(r["root_init"] for r in trainer.run.read_metrics_log() if "root_init" in r)
    assert record["used"] is True and record["max_turn_deg"] > 180
    assert record["depth_held"] is True   # a subject turning in place: its depth held
    # At 128 px the tracks come from flow on frames enlarged to 256 px: the root follows the
    # whole turn (measured: at most 14 degrees off; from 128 px flow, 57).
    train = trainer.train_frames
    gt = load_ground_truth(turning)
    found = Rotation.from_rotvec(trainer.model.warp.root.rotvecs.detach().double().numpy())
    truth = _truth_turns(gt, train)
    errors = [np.degrees((found[i] * truth[i].inv()).magnitude()) for i in range(len(train))]
    assert max(errors) < 25, np.round(errors, 1)
    hull = next(r["init_hull"] for r in trainer.run.read_metrics_log() if "init_hull" in r)
    assert hull["view_resultant"] < 0.5
    root = trainer.model.warp.root
    assert torch.equal(trainer._root_anchor, root.offsets.detach())
    # The prior is zero at the estimate and grows as the offsets leave it.
    frames = trainer.train_frames[:1]
    _, terms, _ = trainer.compute_losses(frames, trainer.config.coarse, 0.0)
    assert terms["root_prior"] == pytest.approx(0.0, abs=1e-12)
    with torch.no_grad():
        root.offsets[3, 2] += 0.1 * trainer.extent
    _, terms, _ = trainer.compute_losses(frames, trainer.config.coarse, 0.0)
    assert terms["root_prior"] == pytest.approx(0.01 / len(root.offsets), rel=1e-4)
