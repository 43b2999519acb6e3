"""Loss terms against independent implementations and hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from recon4d.losses.motion import (between_frames_loss, hermite_between, keyframe_smoothness, knn,
                                   rigidity_loss, skinning_smoothness, trajectory_smoothness)
from recon4d.losses.photometric import photometric_per_image, psnr, ssim_map
from recon4d.losses.priors import depth_prior_loss, flow_loss
from recon4d.losses.robust import FrameWeights
from recon4d.losses.schedule import weight_at
from recon4d.model.rotations import axis_angle_to_quat, quat_rotate


def _images(seed=0, size=40):
    rng = np.random.default_rng(seed)
    a = rng.random((size, size, 3)).astype(np.float32)
    b = np.clip(a + rng.normal(0, 0.1, a.shape), 0, 1).astype(np.float32)
    return a, b


def test_ssim_matches_scikit_image_in_the_interior():
    from skimage.metrics import structural_similarity

    a, b = _images()
    _, full = structural_similarity(a, b, channel_axis=2, data_range=1.0, gaussian_weights=True,
                                    sigma=1.5, use_sample_covariance=False, full=True)
    ours = ssim_map(torch.from_numpy(a)[None], torch.from_numpy(b)[None])[0].numpy()
    # Borders differ by padding convention (zeros here, reflection there); the interior must not.
    np.testing.assert_allclose(ours[6:-6, 6:-6], full.mean(-1)[6:-6, 6:-6], atol=1e-4)


def test_psnr_matches_scikit_image():
    from skimage.metrics import peak_signal_noise_ratio

    a, b = _images(1)
    ours = psnr(torch.from_numpy(b), torch.from_numpy(a))
    assert abs(ours - peak_signal_noise_ratio(a, b, data_range=1.0)) < 1e-3


def test_photometric_is_zero_for_identical_images_and_grows_with_noise():
    a, b = _images(2)
    ta, tb = torch.from_numpy(a)[None], torch.from_numpy(b)[None]
    assert float(photometric_per_image(ta, ta)) < 1e-6
    assert float(photometric_per_image(ta, tb)) > 0.05


def test_rigidity_is_zero_for_rigid_motion_only():
    g = torch.Generator().manual_seed(0)
    canon = torch.randn(300, 3, generator=g)
    neighbours = knn(canon, 6)
    rows = torch.arange(300)
    q = axis_angle_to_quat(torch.tensor([0.4, -0.2, 0.9])).expand(300, 4)
    moved = quat_rotate(q, canon) + torch.tensor([1.0, 2.0, 3.0])
    assert float(rigidity_loss(canon, moved, q, rows, neighbours)) < 1e-5
    stretched = moved * torch.tensor([1.5, 1.0, 1.0])
    assert float(rigidity_loss(canon, stretched, q, rows, neighbours)) > 0.05


def test_knn_excludes_self_and_finds_the_nearest():
    pts = torch.tensor([[0.0, 0, 0], [1.0, 0, 0], [3.0, 0, 0], [3.5, 0, 0]])
    assert knn(pts, 1).flatten().tolist() == [1, 0, 3, 2]


def test_keyframe_smoothness_reads_uneven_key_spacing():
    """Root keys sit on the training frames (every 4th frame, from 2, is held out): steady
    motion across a double gap costs nothing, evenly spaced keys give the plain second
    difference whatever their spacing."""
    frames = torch.tensor([f for f in range(12) if f % 4 != 2], dtype=torch.float32)
    times = frames / 11
    steady = times.unsqueeze(1) * torch.tensor([[0.6, -0.2, 0.1]])
    assert float(keyframe_smoothness(steady, times)) < 1e-10
    assert float(keyframe_smoothness(steady)) > 1e-4  # read as evenly spaced, it "accelerates"
    values = torch.randn(7, 3, generator=torch.Generator().manual_seed(0))
    even = torch.linspace(0, 1, 7)
    assert torch.allclose(keyframe_smoothness(values, even), keyframe_smoothness(values), rtol=1e-5)
    assert torch.allclose(keyframe_smoothness(values, 0.1 * even), keyframe_smoothness(values),
                          rtol=1e-5)


def test_smoothness_terms():
    t = torch.linspace(0, 1, 5).unsqueeze(1) * torch.tensor([[1.0, -2.0, 0.5]])
    assert float(keyframe_smoothness(t)) < 1e-10  # linear in time: no acceleration
    assert float(trajectory_smoothness(t[0], t[1], t[2])) < 1e-10
    bumped = t.clone()
    bumped[2] += 1.0
    assert float(keyframe_smoothness(bumped)) > 0.5
    w = torch.softmax(torch.randn(10, 4), -1)
    assert float(skinning_smoothness(w, w.unsqueeze(1).expand(10, 3, 4))) == 0.0
    assert float(skinning_smoothness(w, w.flip(0).unsqueeze(1).expand(10, 3, 4))) > 0


def test_between_frame_prediction_keeps_still_points_still_and_follows_arcs():
    # Uneven key spacing, as around a held-out frame: keys at 0.1, 0.2, 0.4, 0.5.
    times = torch.tensor([0.1, 0.2, 0.4, 0.5])
    rng = np.random.default_rng(0)
    still = torch.as_tensor(rng.normal(size=(1, 6, 3)), dtype=torch.float32).expand(4, -1, -1)
    assert torch.allclose(hermite_between(still, times, 0.3), still[0], atol=1e-6)
    # Uniform motion is reproduced exactly between the keys.
    velocity = torch.tensor([1.0, -2.0, 0.5])
    moving = times[:, None, None] * velocity + still
    assert torch.allclose(hermite_between(moving, times, 0.27), 0.27 * velocity + still[0], atol=1e-5)
    # A point turning on a unit circle: the spline's midpoint lies near the arc, the chord cuts
    # inside it.
    angle = 2.0 * times
    circle = torch.stack([torch.cos(angle), torch.sin(angle), torch.zeros(4)], -1)[:, None]
    truth = torch.tensor([[math.cos(0.6), math.sin(0.6), 0.0]])
    spline_error = float(between_frames_loss(hermite_between(circle, times, 0.3), truth))
    chord_error = float(between_frames_loss(0.5 * (circle[1] + circle[2]), truth))
    assert spline_error < 0.05 * chord_error
    assert float(between_frames_loss(truth + 0.1, truth)) == pytest.approx(0.03, rel=1e-5)


def test_depth_prior_ignores_scale_and_shift():
    g = torch.Generator().manual_seed(0)
    depth = torch.rand(16, 16, generator=g) + 2.0
    mask = torch.ones(16, 16)
    # Metric depth: any scale (the scene's), but an offset changes the shape.
    assert float(depth_prior_loss(depth, 0.5 * depth, mask)) < 1e-4
    assert float(depth_prior_loss(depth, depth + 3.0, mask)) > 0.3
    assert float(depth_prior_loss(depth, torch.rand(16, 16, generator=g), mask)) > 0.5
    # Disparity: scale and offset are both free.
    assert float(depth_prior_loss(depth, 0.5 / depth + 3.0, mask, kind="disparity")) < 1e-4
    # Relative: the same for a scene ten times larger.
    far = depth_prior_loss(10 * depth, torch.rand(16, 16, generator=g.manual_seed(1)), mask)
    near = depth_prior_loss(depth, torch.rand(16, 16, generator=g.manual_seed(1)), mask)
    assert math.isclose(float(far), float(near), rel_tol=1e-4)


def test_depth_prior_compares_disparity_in_inverse_depth_and_skips_unknown_pixels():
    g = torch.Generator().manual_seed(0)
    depth = torch.rand(16, 16, generator=g) + 1.0
    mask = torch.ones(16, 16)
    disparity = 3.0 / depth + 0.2
    assert float(depth_prior_loss(depth, disparity, mask, kind="disparity")) < 1e-4
    assert float(depth_prior_loss(depth, disparity, mask, kind="depth")) > 1e-3
    # Pixels without user depth (0) or outside the mask never count.
    holed = disparity.clone()
    holed[:8] = 0.0
    assert float(depth_prior_loss(depth, holed, mask, kind="disparity")) < 1e-4
    garbage = disparity.clone()
    garbage[:, :8] = torch.rand(16, 8, generator=g) * 50
    half = mask.clone()
    half[:, :8] = 0.0
    assert float(depth_prior_loss(depth, garbage, half, kind="disparity")) < 1e-4
    assert float(depth_prior_loss(depth, garbage, mask, kind="disparity")) > 0.05
    # A flat render (every surfel at one depth) is far from any shaped map: the prior must never
    # reward flattening the object.
    flat = torch.full((16, 16), 2.5) + 1e-4 * torch.rand(16, 16, generator=g)
    assert float(depth_prior_loss(flat, disparity, mask, kind="disparity")) > 0.5
    assert float(depth_prior_loss(flat, depth, mask, kind="depth")) > 0.9
    # The gradient reaches the rendered depth.
    rendered = depth.clone().requires_grad_(True)
    depth_prior_loss(rendered, torch.rand(16, 16, generator=g) + 0.5, mask, kind="disparity").backward()
    assert rendered.grad is not None and float(rendered.grad.abs().sum()) > 0


def test_flow_loss_clips_and_masks():
    target = torch.zeros(8, 8, 2)
    rendered = torch.zeros(8, 8, 2)
    rendered[0, 0] = torch.tensor([100.0, 0.0])
    mask = torch.ones(8, 8)
    assert math.isclose(float(flow_loss(rendered, target, mask, max_px=20.0)), 20.0 / 64, rel_tol=1e-6)
    mask[0, 0] = 0
    assert float(flow_loss(rendered, target, mask)) == 0.0


def test_robust_weights_down_weight_only_the_outlier_frame():
    weights = FrameWeights(6, momentum=0.0)
    weights.update([0, 1, 2, 3, 4, 5], torch.tensor([0.1, 0.11, 0.09, 0.1, 0.5, 0.1]))
    w = weights.weights([0, 1, 2, 3, 4, 5])
    assert torch.allclose(w[[0, 1, 2, 3, 5]], torch.ones(5))
    assert math.isclose(float(w[4]), (1.5 * 0.1 / 0.5) ** 2, rel_tol=1e-4)


def test_schedule_interpolates_and_holds():
    sched = [[0.0, 0.0], [0.3, 0.0], [0.5, 1.0]]
    assert weight_at(sched, 0.1) == 0.0
    assert math.isclose(weight_at(sched, 0.4), 0.5)
    assert weight_at(sched, 0.9) == 1.0
    assert weight_at(0.25, 0.7) == 0.25
