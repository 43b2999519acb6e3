"""Native CUDA rasteriser kernels (cuda/rasterize_cuda.cu) against the torch reference.

Same scenes and tolerances as tests/test_render_native.py (CPU kernels), run where a CUDA GPU
exists (``cuda`` marker; skipped elsewhere). Also covers tile lists longer than one shared-memory
batch (128 surfels), which the small reference scenes do not reach, against the CPU kernels.
"""

from __future__ import annotations

import pytest
import torch

from recon4d.render.native import native_available, rasterize_core_native

from test_render_native import (EDGE_CASES, INPUT_NAMES, _run, _upstream, assert_grad_close,
                                assert_outputs_close, check_against_reference, random_scene)

pytestmark = pytest.mark.cuda


@pytest.fixture(scope="module", autouse=True)
def native_cuda():
    ok, reason = native_available("cuda")
    assert ok, reason


@pytest.mark.parametrize("case", list(EDGE_CASES))
def test_native_cuda_matches_reference_float64(case):
    check_against_reference(EDGE_CASES[case](), torch.float64,
                            seed=list(EDGE_CASES).index(case), device="cuda")


def test_native_cuda_matches_reference_float32():
    check_against_reference(random_scene(11, 2, 150, 45, 38), torch.float32, seed=3,
                            device="cuda")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_native_cuda_matches_cpu_on_long_tile_lists(dtype):
    """Hundreds of surfels per tile: several shared-memory batches per tile, forward and back."""
    scene = random_scene(21, 2, 1500, 70, 50, scale=(0.05, 0.3), opacity=(0.02, 0.3))
    ga, gm = _upstream(scene, 5)
    acc_g, med_g, grads_g = _run(rasterize_core_native, scene, dtype, ga, gm, device="cuda")
    acc_c, med_c, grads_c = _run(rasterize_core_native, scene, dtype, ga, gm, device="cpu")
    assert float(acc_c[..., 3].mean()) > 0.5
    assert_outputs_close(acc_g, acc_c, 1e-4, "accum")
    assert_outputs_close(med_g, med_c, 1e-4, "median_depth")
    for name, a, b in zip(INPUT_NAMES, grads_g, grads_c):
        assert_grad_close(a, b, f"d/d {name}")


def test_render_backend_native_on_cuda():
    from recon4d.render import Cameras, Surfels, render

    gen = torch.Generator().manual_seed(22)
    n, dt = 200, torch.float32
    surfels = Surfels((torch.rand(n, 3, generator=gen) - 0.5), torch.randn(n, 4, generator=gen),
                      0.03 + 0.1 * torch.rand(n, 2, generator=gen),
                      0.2 + 0.8 * torch.rand(n, generator=gen),
                      0.3 * torch.randn(n, 1, 3, generator=gen))
    viewmats = torch.eye(4).unsqueeze(0).clone()
    viewmats[0, 2, 3] = 3.0
    Ks = torch.tensor([[[60.0, 0, 32], [0, 60.0, 24], [0, 0, 1]]])
    cams = Cameras(viewmats, Ks, 64, 48)
    out_cpu = render(surfels, cams, backend="reference")
    out_gpu = render(surfels.to("cuda"), cams.to("cuda"), backend="native")
    assert out_gpu.rgb.is_cuda
    for field in ("rgb", "alpha", "depth", "median_depth", "normal"):
        assert_outputs_close(getattr(out_gpu, field).cpu(), getattr(out_cpu, field), 1e-4, field)
