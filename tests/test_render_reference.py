"""The torch reference rasteriser against independent oracles, and its gradients.

Oracles: the dense float64 per-pixel walk in ``recon4d.render.brute_force`` (Cramer's rule with
determinants, explicit transmittance loop), closed-form values for hand-built scenes, and
finite differences (torch.autograd.gradcheck in float64).
"""

from __future__ import annotations

import math

import pytest
import torch

from recon4d.render import (Cameras, Surfels, rasterize_core_reference, render,
                            to_camera_space)
from recon4d.render.brute_force import rasterize_core_brute_force

F64 = torch.float64


def _look_at(eye, target, up=(0.0, -1.0, 0.0)) -> torch.Tensor:
    """World-to-camera (4, 4), OpenCV axes (z towards the target, y down)."""
    eye, target, up = (torch.tensor(v, dtype=F64) for v in (eye, target, up))
    z = target - eye
    z = z / z.norm()
    x = torch.linalg.cross(-up, z)  # right-handed with y pointing down
    x = x / x.norm()
    y = torch.linalg.cross(z, x)
    rot = torch.stack([x, y, z])  # rows: camera axes in world coordinates
    view = torch.eye(4, dtype=F64)
    view[:3, :3] = rot
    view[:3, 3] = -rot @ eye
    return view


def _intrinsics(width: int, height: int, focal: float) -> torch.Tensor:
    return torch.tensor([[focal, 0.0, width / 2.0], [0.0, focal, height / 2.0], [0.0, 0.0, 1.0]],
                        dtype=F64)


def _random_surfels(n: int, seed: int, degree: int = 1, spread: float = 0.5,
                    scale: tuple[float, float] = (0.03, 0.3)) -> Surfels:
    gen = torch.Generator().manual_seed(seed)
    means = torch.randn(n, 3, generator=gen, dtype=F64) * spread
    quats = torch.randn(n, 4, generator=gen, dtype=F64)
    scales = torch.rand(n, 2, generator=gen, dtype=F64) * (scale[1] - scale[0]) + scale[0]
    opacities = torch.rand(n, generator=gen, dtype=F64) * 0.9 + 0.1
    sh = torch.randn(n, (degree + 1) ** 2, 3, generator=gen, dtype=F64) * 0.3
    return Surfels(means, quats, scales, opacities, sh)


def _two_cameras(width: int, height: int, focal: float) -> Cameras:
    views = torch.stack([_look_at((0.0, 0.0, -2.5), (0.0, 0.0, 0.0)),
                         _look_at((1.4, -0.6, -2.0), (0.1, 0.0, 0.0))])
    ks = torch.stack([_intrinsics(width, height, focal), _intrinsics(width, height, focal * 1.1)])
    return Cameras(views, ks, width, height)


def _core_args(surfels: Surfels, cameras: Cameras):
    cs = to_camera_space(surfels, cameras)
    return (cs.means_c, cs.tu_c, cs.tv_c, cs.opacities, cs.colors, cs.normals, cameras.Ks,
            cameras.width, cameras.height)


def _assert_rel_close(actual: torch.Tensor, expected: torch.Tensor, rel: float) -> None:
    scale = expected.abs().max().clamp_min(1e-12)
    err = (actual - expected).abs().max()
    assert err <= rel * scale, f"max error {err:.3e} > {rel} * {scale:.3e}"


def _edge_case_surfels() -> Surfels:
    """Random surfels plus the awkward ones: behind the camera, straddling the near plane,
    edge-on, tiny (sub-pixel), huge, and on tile borders."""
    base = _random_surfels(30, seed=7, degree=2)
    extra_means = torch.tensor([
        [0.0, 0.0, -3.0],    # behind camera 0 (which sits at z = -2.5)
        [0.1, 0.1, -2.45],   # straddles camera 0's near plane
        [0.2, -0.1, 0.0],    # edge-on for camera 0 (normal along x)
        [-0.3, 0.2, 0.1],    # tiny
        [0.0, 0.0, 0.8],     # huge, behind the rest
        [0.0, 0.0, 0.0],     # centred: on the tile border of a 32-wide image
    ], dtype=F64)
    half = math.sqrt(0.5)
    extra_quats = torch.tensor([
        [1.0, 0.0, 0.0, 0.0],
        [1.0, 0.0, 0.0, 0.0],
        [half, 0.0, half, 0.0],  # 90 degrees about y: the disc contains the view direction
        [1.0, 0.0, 0.0, 0.0],
        [1.0, 0.0, 0.0, 0.0],
        [0.9, 0.1, 0.2, 0.0],
    ], dtype=F64)
    extra_scales = torch.tensor([[0.3, 0.3], [0.2, 0.2], [0.15, 0.1], [1e-3, 2e-3], [2.0, 1.5],
                                 [0.1, 0.05]], dtype=F64)
    extra_opac = torch.tensor([0.9, 0.8, 0.95, 0.9, 0.7, 0.9], dtype=F64)
    extra_sh = torch.zeros(6, base.sh.shape[1], 3, dtype=F64)
    extra_sh[:, 0] = torch.rand(6, 3, generator=torch.Generator().manual_seed(3), dtype=F64)
    return Surfels(torch.cat([base.means, extra_means]), torch.cat([base.quats, extra_quats]),
                   torch.cat([base.scales, extra_scales]),
                   torch.cat([base.opacities, extra_opac]), torch.cat([base.sh, extra_sh]))


@pytest.mark.parametrize("size", [(37, 29), (32, 32)])
def test_reference_matches_brute_force(size):
    width, height = size
    surfels = _edge_case_surfels()
    cameras = _two_cameras(width, height, focal=30.0)
    args = _core_args(surfels, cameras)
    accum, median = rasterize_core_reference(*args)
    accum_bf, median_bf = rasterize_core_brute_force(*args)
    assert accum.shape == (2, height, width, 9) and median.shape == (2, height, width)
    assert (accum_bf[..., 3] > 0.5).float().mean() > 0.2, "scene should cover the image"
    for channel in range(9):
        _assert_rel_close(accum[..., channel], accum_bf[..., channel], 1e-5)
    _assert_rel_close(median, median_bf, 1e-5)


def test_reference_independent_of_tile_size():
    surfels = _edge_case_surfels()
    cameras = _two_cameras(45, 23, focal=28.0)
    args = _core_args(surfels, cameras)
    accum16, median16 = rasterize_core_reference(*args, tile_size=16)
    for tile in (5, 64):
        accum, median = rasterize_core_reference(*args, tile_size=tile)
        torch.testing.assert_close(accum, accum16, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(median, median16, rtol=0, atol=1e-12)


def _fronto_parallel(centres, sigma, opacities, colours) -> Surfels:
    n = len(centres)
    quats = torch.tensor([[1.0, 0.0, 0.0, 0.0]] * n, dtype=F64)
    scales = torch.tensor([[s, s] for s in sigma], dtype=F64)
    return Surfels.from_rgb(torch.tensor(centres, dtype=F64), quats, scales,
                            torch.tensor(opacities, dtype=F64), torch.tensor(colours, dtype=F64))


def _identity_camera(width: int, height: int, focal: float) -> Cameras:
    return Cameras(torch.eye(4, dtype=F64)[None], _intrinsics(width, height, focal)[None],
                   width, height)


def test_single_fronto_parallel_surfel_closed_form():
    """One axis-aligned disc at depth 2: alpha is the Gaussian of the ray's hit point."""
    width, height, focal = 24, 18, 20.0
    centre, sigma, opac = (0.05, -0.02, 2.0), 0.15, 0.8
    surfels = _fronto_parallel([centre], [sigma], [opac], [[0.2, 0.6, 0.9]])
    out = render(surfels, _identity_camera(width, height, focal), backend="reference")
    xs = (torch.arange(width, dtype=F64) + 0.5 - width / 2) / focal
    ys = (torch.arange(height, dtype=F64) + 0.5 - height / 2) / focal
    hit_x = xs[None, :] * centre[2] - centre[0]
    hit_y = ys[:, None] * centre[2] - centre[1]
    rho3d = (hit_x ** 2 + hit_y ** 2) / sigma ** 2
    qx, qy = focal * centre[0] / centre[2] + width / 2, focal * centre[1] / centre[2] + height / 2
    px, py = torch.arange(width, dtype=F64) + 0.5, torch.arange(height, dtype=F64) + 0.5
    rho2d = 2 * ((px[None, :] - qx) ** 2 + (py[:, None] - qy) ** 2)
    rho = torch.minimum(rho3d, rho2d)
    alpha = (opac * torch.exp(-0.5 * rho)).clamp(max=0.99)
    alpha = torch.where((rho <= 9) & (alpha >= 1 / 255), alpha, torch.zeros_like(alpha))
    torch.testing.assert_close(out.alpha[0], alpha, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(out.rgb[0], alpha[..., None] * torch.tensor([0.2, 0.6, 0.9],
                                                                           dtype=F64))
    covered = alpha > 0
    assert covered.sum() > 20
    torch.testing.assert_close(out.depth[0][covered], torch.full_like(alpha[covered], 2.0))
    assert (out.depth[0][~covered] == 0).all()
    assert (out.distortion[0].abs() < 1e-12).all()
    torch.testing.assert_close(out.median_depth[0], torch.where(alpha > 0.5, 2.0, 0.0).to(F64))
    # World normal faces the camera (camera looks along +z, so the normal is -z).
    normal = out.normal[0][covered] / alpha[covered][:, None]
    torch.testing.assert_close(normal, torch.tensor([0.0, 0.0, -1.0], dtype=F64).expand_as(normal))


def test_stack_early_termination_median_and_distortion_closed_form():
    """Stacked discs at the image centre: weights follow front-to-back compositing with early
    termination, and median depth and distortion follow from them."""
    width, height, focal = 16, 16, 16.0
    big = 5.0  # rho3d ~ 0 near the centre pixel
    # Pixel (8, 8) has its centre 0.5 px off the principal point; with sigma = 5 m at depth
    # 2-5 m the Gaussian there is exp(-tiny), so alpha = min(0.99, opacity * ~1).
    surfels = _fronto_parallel(
        [(0.0, 0.0, 2.0), (0.0, 0.0, 3.0), (0.0, 0.0, 4.0), (0.0, 0.0, 5.0)],
        [big] * 4, [0.3, 0.6, 1.0, 1.0],
        [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 1.0, 1.0]])
    out = render(surfels, _identity_camera(width, height, focal), backend="reference")
    y, x = 8, 8
    d = torch.tensor([(x + 0.5 - 8) / focal, (y + 0.5 - 8) / focal], dtype=F64)
    g = [torch.exp(-0.5 * (d * z).pow(2).sum() / big ** 2) for z in (2.0, 3.0, 4.0, 5.0)]
    a = [min(0.99, float(o * gi)) for o, gi in zip((0.3, 0.6, 1.0, 1.0), g)]
    # T: 1 -> 0.7 -> 0.28 -> 0.0028 -> (0.0028 * 0.01 = 2.8e-5 < 1e-4: the 4th is not added)
    w = [a[0], a[1] * (1 - a[0]), a[2] * (1 - a[0]) * (1 - a[1])]
    assert (1 - a[0]) * (1 - a[1]) * (1 - a[2]) * (1 - a[3]) < 1e-4
    zs = (2.0, 3.0, 4.0)
    expected_rgb = torch.tensor([w[0], w[1], w[2]], dtype=F64)
    torch.testing.assert_close(out.rgb[0, y, x], expected_rgb)
    torch.testing.assert_close(out.alpha[0, y, x], torch.tensor(sum(w), dtype=F64))
    expected_depth = sum(wi * zi for wi, zi in zip(w, zs)) / sum(w)
    torch.testing.assert_close(out.depth[0, y, x], torch.tensor(expected_depth, dtype=F64))
    # T after the first disc is 0.7 >= 0.5, after the second 0.28 < 0.5: the median is z = 3.
    assert float(out.median_depth[0, y, x]) == pytest.approx(3.0)
    expected_dist = sum(w[i] * w[j] * (zs[i] - zs[j]) ** 2 for i in range(3) for j in range(3))
    torch.testing.assert_close(out.distortion[0, y, x], torch.tensor(expected_dist, dtype=F64))


def test_edge_on_surfel_uses_low_pass_fallback():
    """A disc seen exactly edge-on is invisible to the ray test; the screen-space low-pass
    keeps it as a small blob at its projected centre, with the centre's depth."""
    width, height, focal = 20, 20, 20.0
    half = math.sqrt(0.5)
    surfels = Surfels.from_rgb(torch.tensor([[0.0, 0.0, 2.0]], dtype=F64),
                               torch.tensor([[half, 0.0, half, 0.0]], dtype=F64),  # normal -> x
                               torch.tensor([[0.2, 0.2]], dtype=F64),
                               torch.tensor([0.9], dtype=F64),
                               torch.tensor([[1.0, 1.0, 1.0]], dtype=F64))
    out = render(surfels, _identity_camera(width, height, focal), backend="reference")
    # Projected centre at (10, 10): the four pixels around it are at 0.5 px in x and y.
    expected = 0.9 * math.exp(-0.5 * 2 * 0.5)
    torch.testing.assert_close(out.alpha[0, 9:11, 9:11], torch.full((2, 2), expected, dtype=F64))
    torch.testing.assert_close(out.depth[0, 9:11, 9:11], torch.full((2, 2), 2.0, dtype=F64))
    assert out.alpha[0].sum() < 3.0  # a small blob, not a 0.4 m wide disc


def test_surfels_behind_camera_are_culled():
    cameras = _identity_camera(24, 20, 20.0)
    front = _fronto_parallel([(0.0, 0.0, 2.0)], [0.3], [0.9], [[0.5, 0.5, 0.5]])
    both = _fronto_parallel([(0.0, 0.0, 2.0), (0.0, 0.0, -1.0), (0.0, 0.0, 0.005)],
                            [0.3, 0.5, 0.5], [0.9, 0.9, 0.9],
                            [[0.5, 0.5, 0.5], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    out_front = render(front, cameras, backend="reference")
    out_both = render(both, cameras, backend="reference")
    for name in ("rgb", "alpha", "depth", "median_depth", "normal"):
        torch.testing.assert_close(getattr(out_both, name), getattr(out_front, name))


def test_empty_and_transparent_scenes_show_the_background():
    cameras = _two_cameras(21, 19, 20.0)
    background = torch.tensor([[0.1, 0.2, 0.3], [0.9, 0.8, 0.7]], dtype=F64)
    empty = Surfels(torch.zeros(0, 3, dtype=F64), torch.zeros(0, 4, dtype=F64),
                    torch.zeros(0, 2, dtype=F64), torch.zeros(0, dtype=F64),
                    torch.zeros(0, 1, 3, dtype=F64))
    transparent = _random_surfels(10, seed=2)
    transparent.opacities = torch.full_like(transparent.opacities, 0.003)  # alpha < 1/255
    for surfels in (empty, transparent):
        out = render(surfels, cameras, backend="reference", background=background)
        assert out.rgb.shape == (2, 19, 21, 3)
        torch.testing.assert_close(out.rgb, background[:, None, None, :].expand_as(out.rgb))
        for name in ("alpha", "depth", "median_depth", "distortion"):
            assert (getattr(out, name) == 0).all(), name
        assert (out.normal == 0).all() and (out.normal_from_depth == 0).all()


def test_empty_scene_backward_gives_zero_gradients():
    """A fit that pruned every surfel (or culled all of them) must still be able to step."""
    cameras = _identity_camera(17, 13, 15.0)
    for surfels in (Surfels(*(torch.zeros(shape, dtype=F64) for shape in
                              ((0, 3), (0, 4), (0, 2), (0,), (0, 1, 3)))),
                    _fronto_parallel([(0.0, 0.0, -1.0)], [0.3], [0.9], [[0.5, 0.5, 0.5]])):
        leaves = [t.clone().requires_grad_(True) for t in
                  (surfels.means, surfels.quats, surfels.scales, surfels.opacities, surfels.sh)]
        out = render(Surfels(*leaves), cameras, backend="reference", background=torch.ones(3,
                     dtype=F64))
        (out.rgb.sum() + out.alpha.sum() + out.median_depth.sum()).backward()
        for leaf in leaves:
            assert leaf.grad is not None and (leaf.grad == 0).all()


def _gradcheck_render(degree: int, seed: int) -> None:
    width, height = 20, 16
    surfels = _random_surfels(5, seed=seed, degree=degree, spread=0.25, scale=(0.12, 0.3))
    surfels.opacities = surfels.opacities * 0.6 + 0.2  # away from the 0.99 clamp
    cameras = _identity_camera(width, height, 18.0)
    cameras.viewmats[0, 2, 3] = 2.5
    background = torch.tensor([0.2, 0.5, 0.9], dtype=F64)

    def fn(means, quats, scales, opacities, sh, viewmats):
        out = render(Surfels(means, quats, scales, opacities, sh),
                     Cameras(viewmats, cameras.Ks, width, height), backend="reference",
                     background=background)
        return (out.rgb, out.alpha, out.depth, out.median_depth, out.normal,
                out.normal_from_depth, out.distortion)

    inputs = [t.clone().requires_grad_(True) for t in
              (surfels.means, surfels.quats, surfels.scales, surfels.opacities, surfels.sh,
               cameras.viewmats)]
    assert fn(*inputs)[1].sum() > 5.0, "surfels must be visible for the check to mean anything"
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-4, fast_mode=True)


@pytest.mark.parametrize("degree,seed", [(3, 3), (0, 11), (2, 5)])
def test_render_gradcheck(degree, seed):
    """Means, quats, scales, opacities, SH (degree 0..3) and the world-to-camera matrix."""
    _gradcheck_render(degree, seed)


def test_core_gradcheck_all_inputs():
    """The core itself w.r.t. every differentiable input (what the native twin must match)."""
    surfels = _random_surfels(6, seed=21, degree=0, spread=0.3, scale=(0.12, 0.3))
    cameras = _two_cameras(18, 14, 16.0)
    args = _core_args(surfels, cameras)
    tensors = [t.detach().clone().requires_grad_(True) for t in args[:6]]

    def fn(means_c, tu_c, tv_c, opacities, colors, normals):
        return rasterize_core_reference(means_c, tu_c, tv_c, opacities, colors, normals,
                                        *args[6:])

    assert fn(*tensors)[0][..., 3].sum() > 5.0
    assert torch.autograd.gradcheck(fn, tensors, eps=1e-6, atol=1e-5, rtol=1e-4, fast_mode=True)


def test_float32_reference_close_to_float64_oracle():
    surfels = _random_surfels(25, seed=9, degree=1)
    cameras = _two_cameras(33, 26, 30.0)
    args64 = _core_args(surfels, cameras)
    args32 = [a.float() if isinstance(a, torch.Tensor) else a for a in args64]
    accum32, _ = rasterize_core_reference(*args32)
    accum_bf, _ = rasterize_core_brute_force(*args64)
    # Single-precision rounding can flip a pixel across a threshold (3-sigma cut, 1/255), which
    # moves that pixel by up to ~0.01 of one surfel's weight; everything else agrees to ~1e-5.
    err = (accum32.double() - accum_bf).abs()
    assert err.max() < 2e-2
    assert err.median() < 1e-6


def test_blocking_and_checkpointing_do_not_change_results(monkeypatch):
    """Splitting tiles into many small blocks, and recomputing blocks in backward (activation
    checkpointing, used for big renders), give the same outputs and gradients."""
    import recon4d.render.reference as reference

    surfels = _random_surfels(40, seed=4, degree=1)
    cameras = _two_cameras(40, 30, 30.0)

    def run():
        leaves = [t.clone().requires_grad_(True) for t in
                  (surfels.means, surfels.quats, surfels.scales, surfels.opacities, surfels.sh)]
        out = render(Surfels(*leaves), cameras, backend="reference")
        gen = torch.Generator().manual_seed(0)
        loss = sum((x * torch.randn(x.shape, generator=gen, dtype=F64)).sum()
                   for x in (out.rgb, out.depth, out.normal, out.distortion))
        loss.backward()
        return [out.rgb, out.depth, out.median_depth] + [t.grad for t in leaves]

    plain = run()
    monkeypatch.setattr(reference, "BLOCK_ELEMENTS", 4096)
    monkeypatch.setattr(reference, "CHECKPOINT_ELEMENTS", 0)
    blocked = run()
    for a, b in zip(blocked, plain):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
