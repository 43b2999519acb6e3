"""The public ``render`` API: validation, backend choice, background, batching, world normals."""

from __future__ import annotations

import math

import pytest
import torch

from recon4d.render import Cameras, Surfels, render
from recon4d.render import api as render_api

F32 = torch.float32


def _plane_surfels(n_side: int = 12, extent: float = 1.0, dtype=F32) -> Surfels:
    """A square grid of overlapping opaque discs in the world plane z = 0 (normal +-z)."""
    coords = torch.linspace(-extent, extent, n_side, dtype=dtype)
    ys, xs = torch.meshgrid(coords, coords, indexing="ij")
    means = torch.stack([xs.reshape(-1), ys.reshape(-1), torch.zeros(n_side * n_side,
                                                                       dtype=dtype)], -1)
    n = means.shape[0]
    quats = torch.tensor([[1.0, 0.0, 0.0, 0.0]], dtype=dtype).expand(n, 4).clone()
    spacing = 2 * extent / (n_side - 1)
    scales = torch.full((n, 2), spacing * 0.8, dtype=dtype)
    rgb = torch.rand(n, 3, generator=torch.Generator().manual_seed(0)).to(dtype)
    return Surfels.from_rgb(means, quats, scales, torch.full((n,), 0.98, dtype=dtype), rgb)


def _camera_on_sphere(azimuth_deg: float, elevation_deg: float, roll_deg: float,
                      distance: float = 2.5) -> torch.Tensor:
    """World-to-camera looking at the origin from the -z half space, with a roll about the
    viewing axis (OpenCV axes)."""
    az, el, roll = (math.radians(a) for a in (azimuth_deg, elevation_deg, roll_deg))
    eye = torch.tensor([distance * math.sin(az) * math.cos(el), distance * math.sin(el),
                        -distance * math.cos(az) * math.cos(el)])
    z = -eye / eye.norm()
    x = torch.linalg.cross(torch.tensor([0.0, 1.0, 0.0]), z)
    x = x / x.norm()
    y = torch.linalg.cross(z, x)
    rot = torch.stack([x, y, z])
    c, s = math.cos(roll), math.sin(roll)
    rot = torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]) @ rot
    view = torch.eye(4)
    view[:3, :3] = rot
    view[:3, 3] = -rot @ eye
    return view


def _cameras(views: list[torch.Tensor], width: int = 40, height: int = 30) -> Cameras:
    k = torch.tensor([[36.0, 0.0, width / 2], [0.0, 36.0, height / 2], [0.0, 0.0, 1.0]])
    return Cameras(torch.stack(views), k.expand(len(views), 3, 3).clone(), width, height)


# --- validation -------------------------------------------------------------------------------

def _bad_inputs():
    good = _plane_surfels(4)
    cams = _cameras([_camera_on_sphere(0, 0, 0)])

    def surfels_with(**changes) -> Surfels:
        fields = dict(means=good.means, quats=good.quats, scales=good.scales,
                      opacities=good.opacities, sh=good.sh)
        fields.update(changes)
        return Surfels(**fields)

    yield "means", dict(surfels=surfels_with(means=good.means[:, :2]))
    yield "quats", dict(surfels=surfels_with(quats=good.quats[:-1]))
    yield "scales", dict(surfels=surfels_with(scales=torch.ones(16, 3)))
    yield "opacities", dict(surfels=surfels_with(opacities=good.opacities.double()))
    yield "sh", dict(surfels=surfels_with(sh=torch.zeros(16, 5, 3)))
    yield "viewmats", dict(cameras=Cameras(torch.eye(3)[None], cams.Ks, 40, 30))
    yield "Ks", dict(cameras=Cameras(cams.viewmats, cams.Ks.repeat(2, 1, 1), 40, 30))
    yield "width/height", dict(cameras=Cameras(cams.viewmats, cams.Ks, 0, 30))
    yield "cameras", dict(cameras=cams.to(dtype=torch.float64))
    yield "cameras", dict(cameras="not cameras")
    yield "surfels", dict(surfels={"means": good.means})
    yield "background", dict(background=torch.zeros(4))
    yield "background", dict(background=torch.zeros(2, 3))
    yield "background", dict(background=torch.zeros(3, dtype=torch.float64))
    yield "backend", dict(backend="opengl")
    yield "tile_size", dict(tile_size=0)
    yield "viewmats", dict(cameras=Cameras(cams.viewmats * float("nan"), cams.Ks, 40, 30))


@pytest.mark.parametrize("name,changes", list(_bad_inputs()),
                         ids=[f"{i}-{n}" for i, (n, _) in enumerate(_bad_inputs())])
def test_validation_error_names_the_argument(name, changes):
    kwargs = dict(surfels=_plane_surfels(4), cameras=_cameras([_camera_on_sphere(0, 0, 0)]),
                  backend="reference")
    kwargs.update(changes)
    with pytest.raises(ValueError) as info:
        render(**kwargs)
    assert str(info.value).startswith(name), str(info.value)


def test_validation_runs_before_any_backend(monkeypatch):
    """A bad input fails the same way whatever the backend, before a kernel is touched."""
    calls = []
    monkeypatch.setattr(render_api, "rasterize_core_reference", lambda *a: calls.append(a))
    bad = _plane_surfels(4)
    bad.sh = torch.zeros(16, 2, 3)
    for backend in ("reference", "native", "gsplat", "auto"):
        with pytest.raises(ValueError, match="^sh"):
            render(bad, _cameras([_camera_on_sphere(0, 0, 0)]), backend=backend)
    assert calls == []


# --- backends ---------------------------------------------------------------------------------

def test_gsplat_backend_refuses_cpu_tensors():
    with pytest.raises(RuntimeError, match="CUDA"):
        render(_plane_surfels(4), _cameras([_camera_on_sphere(0, 0, 0)]), backend="gsplat")


def test_auto_falls_back_to_reference_with_one_warning(monkeypatch, capsys):
    """When the native build fails, auto renders with the reference and warns once, naming
    the build error."""
    monkeypatch.setattr(render_api, "_native_state",
                        {"cpu": {"core": None, "reason": "g++ exploded: no such compiler"}})
    surfels, cams = _plane_surfels(6), _cameras([_camera_on_sphere(10, 5, 0)])
    assert render_api.resolve_backend("auto", torch.device("cpu")) == "reference"
    out_auto = render(surfels, cams, backend="auto")
    render(surfels, cams, backend="auto")
    out_ref = render(surfels, cams, backend="reference")
    torch.testing.assert_close(out_auto.rgb, out_ref.rgb)
    err = capsys.readouterr().err
    assert err.count("native renderer unavailable") == 1
    assert "g++ exploded" in err
    with pytest.raises(RuntimeError, match="g\\+\\+ exploded"):
        render(surfels, cams, backend="native")


# --- semantics --------------------------------------------------------------------------------

def test_background_compositing():
    surfels = _plane_surfels(8)
    cams = _cameras([_camera_on_sphere(0, 0, 0), _camera_on_sphere(20, 10, 30)])
    black = render(surfels, cams, backend="reference")
    assert ((black.alpha > 0.05) & (black.alpha < 0.95)).any(), "need partially covered pixels"
    bg = torch.tensor([0.25, 0.5, 1.0])
    out = render(surfels, cams, backend="reference", background=bg)
    torch.testing.assert_close(out.rgb, black.rgb + (1 - black.alpha[..., None]) * bg)
    per_cam = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    out2 = render(surfels, cams, backend="reference", background=per_cam)
    torch.testing.assert_close(out2.rgb, black.rgb + (1 - black.alpha[..., None])
                               * per_cam[:, None, None, :])
    for name in ("alpha", "depth", "normal", "distortion"):
        torch.testing.assert_close(getattr(out2, name), getattr(black, name))


def test_batched_cameras_equal_separate_renders():
    surfels = _plane_surfels(10)
    surfels.sh = torch.cat([surfels.sh, 0.2 * torch.randn(surfels.sh.shape[0], 3, 3,
                                                          generator=torch.Generator()
                                                          .manual_seed(1))], 1)  # degree 1
    views = [_camera_on_sphere(0, 0, 0), _camera_on_sphere(35, -20, 15)]
    cams = _cameras(views, width=37, height=29)
    both = render(surfels, cams, backend="reference")
    assert not torch.allclose(both.rgb[0], both.rgb[1])
    for i in range(2):
        single = render(surfels, cams[i], backend="reference")
        for name in ("rgb", "alpha", "depth", "median_depth", "normal", "normal_from_depth",
                     "distortion"):
            torch.testing.assert_close(getattr(both, name)[i:i + 1], getattr(single, name),
                                       msg=name)


def test_normals_are_world_space():
    """A fixed plane seen by rotated and rolled cameras keeps the same world normal (facing the
    cameras, which all sit in the z < 0 half space); normal-from-depth agrees with it."""
    surfels = _plane_surfels(16, extent=1.5)
    views = [_camera_on_sphere(0, 0, 0), _camera_on_sphere(30, 0, 0),
             _camera_on_sphere(-20, 25, 40), _camera_on_sphere(10, -15, -70)]
    out = render(surfels, _cameras(views, width=48, height=40), backend="reference")
    expected = torch.tensor([0.0, 0.0, -1.0])
    for i in range(len(views)):
        solid = out.alpha[i] > 0.99
        assert solid.sum() > 200, "the plane should fill much of the view"
        normal = out.normal[i][solid] / out.alpha[i][solid][:, None]
        torch.testing.assert_close(normal, expected.expand_as(normal), atol=1e-4, rtol=0)
        interior = solid.clone()
        interior[[0, -1], :] = False
        interior[:, [0, -1]] = False
        # Inside the solid region the expected depth is that of the plane itself (up to the
        # small spread of compositing weights), so the normal from depth agrees.
        nfd = out.normal_from_depth[i][interior]
        cos = (nfd * expected).sum(-1)
        assert cos.median() > 0.999
        assert (nfd.norm(dim=-1) - 1).abs().max() < 1e-4
    # The camera-space normal differs between the views: the output is not camera space.
    rot = torch.stack(views)[:, :3, :3]
    cam_normals = rot @ expected
    assert (cam_normals[0] - cam_normals[2]).norm() > 0.3


def test_normal_from_depth_is_not_taken_across_a_silhouette():
    """A small plane inside the view: every pixel with a normal from depth has the plane's
    normal. An empty neighbour (depth 0, the camera centre once unprojected) made the
    central difference at the silhouette point sideways (z +0.28 where -1 is right)."""
    surfels = _plane_surfels(6, extent=0.4)
    for backend in ("reference", "auto"):
        out = render(surfels, _cameras([_camera_on_sphere(10, 5, 0)], width=40, height=36),
                     backend=backend)
        nfd = out.normal_from_depth[0]
        has = nfd.norm(dim=-1) > 0
        assert has.sum() > 100 and (out.alpha[0] >= 1e-6).sum() > has.sum()
        cos = (nfd[has] * torch.tensor([0.0, 0.0, -1.0])).sum(-1)
        assert cos.min() > 0.99, (backend, cos.min())


def test_render_is_differentiable_wrt_pose_and_surfels():
    surfels = _plane_surfels(8)
    cams = _cameras([_camera_on_sphere(5, 5, 0)])
    for t in (surfels.means, surfels.quats, surfels.scales, surfels.opacities, surfels.sh,
              cams.viewmats):
        t.requires_grad_(True)
    out = render(surfels, cams, backend="reference", background=torch.ones(3))
    loss = (out.rgb.mean() + out.depth.mean() + out.normal.mean() + out.distortion.mean()
            + out.normal_from_depth.mean())
    loss.backward()
    for name, t in [("means", surfels.means), ("quats", surfels.quats),
                    ("scales", surfels.scales), ("opacities", surfels.opacities),
                    ("sh", surfels.sh), ("viewmats", cams.viewmats)]:
        assert t.grad is not None and torch.isfinite(t.grad).all(), name
        assert t.grad.abs().sum() > 0, name
