"""Metric functions against hand-computed cases and against scikit-image."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from recon4d.eval import geometry, metrics


def _square(n: int = 40, size: float = 1.0):
    """A flat square in the z = 0 plane, (n+1)^2 vertices, 2 n^2 triangles."""
    g = np.linspace(0, size, n + 1)
    x, y = np.meshgrid(g, g, indexing="ij")
    verts = np.stack([x.ravel(), y.ravel(), np.zeros(x.size)], 1)
    idx = np.arange((n + 1) ** 2).reshape(n + 1, n + 1)
    a, b, c, d = idx[:-1, :-1].ravel(), idx[1:, :-1].ravel(), idx[1:, 1:].ravel(), idx[:-1, 1:].ravel()
    faces = np.concatenate([np.stack([a, b, c], 1), np.stack([a, c, d], 1)])
    return verts, faces


def _sphere(radius: float):
    import trimesh

    m = trimesh.creation.icosphere(subdivisions=4, radius=radius)
    return np.asarray(m.vertices), np.asarray(m.faces)


# ---------------------------------------------------------------------------------- images
def test_psnr_matches_scikit_image():
    rng = np.random.default_rng(0)
    a = rng.random((37, 53, 3))
    b = np.clip(a + rng.normal(scale=0.05, size=a.shape), 0, 1)
    assert metrics.psnr(b, a) == pytest.approx(peak_signal_noise_ratio(a, b, data_range=1.0), abs=1e-4)


def test_psnr_hand_computed_and_masked():
    a = np.zeros((10, 10, 3))
    b = np.full((10, 10, 3), 0.1)  # MSE 0.01 -> 20 dB
    assert metrics.psnr(b, a) == pytest.approx(20.0, abs=1e-9)
    mask = np.zeros((10, 10))
    mask[:5] = 1
    b2 = b.copy()
    b2[5:] = 0.5  # errors outside the mask do not count
    assert metrics.psnr(b2, a, mask=mask) == pytest.approx(20.0, abs=1e-9)
    assert metrics.psnr(a, a) == metrics.PSNR_CAP_DB


@pytest.mark.parametrize("shape", [(48, 64, 3), (33, 40)])
def test_ssim_matches_scikit_image(shape):
    rng = np.random.default_rng(1)
    base = rng.random(shape)
    from scipy.ndimage import gaussian_filter

    a = gaussian_filter(base, 1.0)  # some structure, not white noise
    b = np.clip(a + rng.normal(scale=0.04, size=shape), 0, 1)
    ref = structural_similarity(a, b, data_range=1.0, gaussian_weights=True, sigma=1.5,
                                use_sample_covariance=False,
                                channel_axis=-1 if len(shape) == 3 else None)
    assert metrics.ssim(b, a) == pytest.approx(ref, abs=1e-4)
    assert metrics.ssim(a, a) == pytest.approx(1.0, abs=1e-12)


def test_composite_over_white_and_mask_iou():
    img = np.zeros((4, 4, 3))
    mask = np.zeros((4, 4))
    mask[1:3, 1:3] = 1.0
    mask[0, 0] = 0.25
    out = metrics.composite(img, mask)
    assert out[1, 1].tolist() == [0, 0, 0] and out[3, 3].tolist() == [1, 1, 1]
    assert out[0, 0] == pytest.approx([0.75] * 3)
    other = np.zeros((4, 4))
    other[1:3, 1:4] = 1  # 4 shared pixels of 6
    assert metrics.mask_iou(other, mask) == pytest.approx(4 / 6)


def test_a_frame_goes_onto_white_with_its_own_background_taken_out_once():
    """A frame already shows its background at the edges (c a + B (1 - a)). Compositing it again
    with its mask mixed the background in twice; the scene's own frames over white scored
    37.5 dB against themselves that way (default scene, 128 px)."""
    rng = np.random.default_rng(0)
    colour = rng.random((16, 16, 3))
    alpha = np.clip(rng.random((16, 16)) * 1.6 - 0.3, 0, 1)            # soft, with 0s and 1s
    alpha[alpha < metrics.BACKGROUND_ALPHA] = 0.0    # below it counts as background anyway
    grey = np.array([0.9, 0.85, 0.8])
    over_white = metrics.composite(colour, alpha)                       # what a renderer shows
    over_grey = metrics.composite(colour, alpha, grey) + 0.004 * (alpha[..., None] < 0.01)
    assert metrics.replace_background(over_white, alpha, (1, 1, 1)) == pytest.approx(over_white)
    assert metrics.replace_background(over_grey, alpha, grey) == pytest.approx(over_white)
    assert metrics.psnr(metrics.composite(over_white, alpha), over_white) < 40.0
    # The training targets follow the same rule (torch).
    import torch

    from recon4d.losses.photometric import replace_background

    torch_out = replace_background(torch.as_tensor(over_grey[None], dtype=torch.float64),
                                   torch.as_tensor(alpha[None]), torch.as_tensor(grey),
                                   torch.ones(3, dtype=torch.float64))
    assert torch_out[0].numpy() == pytest.approx(over_white)


# -------------------------------------------------------------------------------- geometry
def test_identical_meshes_give_zero_chamfer_and_unit_fscore():
    v, f = _sphere(0.5)
    m = geometry.compare_meshes(v, f, v, f, samples=20_000)
    assert m["chamfer_l1"] < 1e-7 and m["fscore"] == 1.0
    assert m["normal_consistency"] == pytest.approx(1.0)
    assert m["diag"] == pytest.approx(np.sqrt(3.0), rel=1e-3)  # bbox of a radius-0.5 sphere


def test_square_shifted_along_its_normal_gives_the_offset():
    # Every sample lies d from the other square's surface.
    v, f = _square()
    d = 0.03
    shifted = v + [0.0, 0.0, d]
    m = geometry.compare_meshes(shifted, f, v, f, samples=20_000)
    diag = np.sqrt(2.0)
    assert m["chamfer_l1"] == pytest.approx(d / diag, rel=1e-5)
    assert m["accuracy"] == pytest.approx(d / diag, rel=1e-5)
    assert m["normal_consistency"] == pytest.approx(1.0)
    # 1% of the diagonal is 0.01414 < d: nothing is within the F-score threshold.
    assert m["fscore"] == 0.0
    near = geometry.compare_meshes(v + [0, 0, 0.01], f, v, f, samples=20_000)
    assert near["fscore"] == 1.0


def _subdivided(v: np.ndarray, f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The same surface with each triangle split into four at its edges' midpoints (the
    midpoints are not shared: a different tessellation is all this needs)."""
    a, b, c = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]
    ab, bc, ca = (a + b) / 2, (b + c) / 2, (c + a) / 2
    corners = np.stack([a, ab, ca, ab, b, bc, ca, bc, c, ab, bc, ca], 1).reshape(-1, 3)
    return corners, np.arange(len(corners)).reshape(-1, 3)


def test_two_meshings_of_one_surface_score_zero():
    """Distances went to the other mesh's nearest sample, so the same surface meshed twice
    scored about 0.18 % of the diagonal (what a TSDF mesh, which never shares the truth's
    triangles, carried in every figure); they now go to the surface itself."""
    v, f = _sphere(0.5)
    fine_v, fine_f = _subdivided(v, f)
    m = geometry.compare_meshes(fine_v, fine_f, v, f, samples=50_000)
    assert m["chamfer_l1"] < 1e-6 and m["fscore"] == 1.0
    assert m["normal_consistency"] == pytest.approx(1.0)
    points, _ = geometry.sample_surface(fine_v, fine_f, 50_000, 1)
    truth, _ = geometry.sample_surface(v, f, 50_000, 0)
    by_samples = geometry.compare_point_sets(points, None, truth, None, m["diag"])["chamfer_l1"]
    assert by_samples > 1e-3  # the floor the sample-to-sample distance had


def test_closest_points_on_a_triangle_in_every_region():
    a, b, c = np.array([0.0, 0, 0]), np.array([1.0, 0, 0]), np.array([0.0, 1, 0])
    queries = {(0.2, 0.2, 1.0): (0.2, 0.2, 0), (-1, -1, 0): (0, 0, 0), (2, -0.5, 0): (1, 0, 0),
               (-0.5, 2, 0): (0, 1, 0), (0.5, -1, 0.5): (0.5, 0, 0), (-1, 0.5, 0): (0, 0.5, 0),
               (1, 1, 0): (0.5, 0.5, 0)}
    p = np.array(list(queries), float)
    got = geometry.closest_points_on_triangles(p, a, b, c)
    assert got == pytest.approx(np.array(list(queries.values()), float))


def test_concentric_spheres_give_the_radius_gap():
    # Two icospheres (polyhedra, not spheres): the gap is the radial one up to the facets.
    v1, f1 = _sphere(0.5)
    v2, f2 = _sphere(0.55)
    m = geometry.compare_meshes(v2, f2, v1, f1, samples=50_000, seed=3)
    diag = np.sqrt(3.0)
    assert m["chamfer_l1"] == pytest.approx(0.05 / diag, rel=0.04)
    assert m["precision"] == 0.0 and m["recall"] == 0.0  # 0.05 > 1% of 1.73


def test_depth_scaled_chamfer_takes_out_a_scaling_about_the_camera_only():
    v, f = _sphere(0.5)
    points, _ = geometry.sample_surface(v + [0, 0, 3.0], f, 20_000, 1)
    camera = np.zeros(3)
    diag = np.sqrt(3.0)
    # Larger and farther by 10 % about the camera: invisible from it, far in plain Chamfer.
    scaled = camera + (points - camera) * 1.1
    plain = geometry.compare_point_sets(scaled, None, points, None, diag)["chamfer_l1"]
    fixed, scale = geometry.depth_scaled_chamfer(scaled, points, camera, diag)
    assert plain > 0.05 and fixed < 1e-3
    assert scale == pytest.approx(1 / 1.1, abs=0.005)
    # A change of shape stays: a sphere 10 % wider about its own centre keeps most of its error.
    wider = (points - [0, 0, 3.0]) * 1.1 + [0, 0, 3.0]
    plain = geometry.compare_point_sets(wider, None, points, None, diag)["chamfer_l1"]
    fixed, _ = geometry.depth_scaled_chamfer(wider, points, camera, diag)
    assert fixed > 0.5 * plain > 0.005


def test_the_depth_scale_search_stays_in_its_range():
    """The refinement around the grid's best went a step past the range's ends (1.26 for a
    true 1.3; 0.79 for 0.78)."""
    v, f = _sphere(0.5)
    points, _ = geometry.sample_surface(v + [0, 0, 3.0], f, 5_000, 1)
    camera = np.zeros(3)
    for true_scale in (1.3, 0.78):
        smaller = camera + (points - camera) / true_scale  # scaling back by true_scale fits
        _, scale = geometry.depth_scaled_chamfer(smaller, points, camera, np.sqrt(3.0),
                                                 search_points=2_000)
        assert 0.8 <= scale <= 1.25 and scale == pytest.approx(min(max(true_scale, 0.8), 1.25), abs=1e-3)


def test_sample_surface_is_area_uniform_and_on_the_surface():
    v, f = _square(n=4, size=2.0)
    pts, nrm = geometry.sample_surface(v, f, 50_000, seed=0)
    assert np.all(np.abs(pts[:, 2]) < 1e-12) and np.allclose(np.abs(nrm[:, 2]), 1.0)
    # Quarter of the area -> quarter of the samples.
    frac = np.mean((pts[:, 0] < 1.0) & (pts[:, 1] < 1.0))
    assert frac == pytest.approx(0.25, abs=0.01)


def test_temporal_jitter_hand_computed():
    rng = np.random.default_rng(0)
    base = rng.random((50, 3))
    t = np.arange(6)[:, None, None]
    steady = base[None] + t * np.array([0.1, 0.0, 0.0])  # constant velocity: no jitter
    assert geometry.temporal_jitter(steady, diag=1.0)["mean"] == pytest.approx(0.0, abs=1e-12)
    shaky = steady.copy()
    shaky[3] += [0.0, 0.02, 0.0]  # one frame displaced by 0.02
    j = geometry.temporal_jitter(shaky, diag=2.0)
    # Second differences at frames 2, 3, 4: 0.02, 0.04, 0.02 (/ diag 2) -> mean over 4 interior frames.
    assert j["per_frame"] == pytest.approx([0.0, 0.01, 0.02, 0.01])
    assert j["mean"] == pytest.approx(0.01)
    with pytest.raises(ValueError, match="at least 3 frames"):
        geometry.temporal_jitter(steady[:2], 1.0)


def test_temporal_jitter_weighs_vertices_by_their_area():
    """A plain mean over vertices counted a densely meshed part's motion more: a tiny shaking
    triangle beside a large still one made half the jitter."""
    big = np.array([[0.0, 0, 0], [1, 0, 0], [0, 1, 0]])
    tiny = np.array([[2.0, 0, 0], [2.01, 0, 0], [2, 0.01, 0]])
    frames = np.repeat(np.concatenate([big, tiny])[None], 5, axis=0)
    frames[2, 3:] += [0.0, 0.0, 0.1]  # the tiny triangle jumps at frame 2
    faces = np.array([[0, 1, 2], [3, 4, 5]])
    plain = geometry.temporal_jitter(frames, 1.0)["mean"]
    weighted = geometry.temporal_jitter(frames, 1.0, faces)["mean"]
    assert plain > 0.05 and weighted < 1e-3 * plain
    assert geometry.vertex_areas(big, faces[:1]) == pytest.approx([1 / 3] * 3)


def test_plot_writes_a_png(tmp_path):
    from PIL import Image

    from recon4d.eval.plot import Panel, plot_panels

    path = plot_panels([Panel("PSNR", series={"a": ([0, 1, 2], [20.0, None, 22.5])}),
                        Panel("empty")], tmp_path / "p.png", title="t")
    img = np.asarray(Image.open(path))
    assert img.shape[0] > 100 and (img < 128).any()  # something drawn
