"""The public renderer entry point: validation, backend choice, the shared torch steps.

``render(surfels, cameras)`` runs spec steps 1-5 (docs/render.md):
1. validate inputs (ValueError naming the argument) before any kernel runs;
2-3. SH colours and camera-space surfel frames (``camera_space.py``, plain torch);
4. the rasteriser core of the chosen backend (``reference`` torch, ``native`` C++/CUDA);
5. assembly of the RenderOutput (``assemble.py``, plain torch).
The ``gsplat`` backend replaces steps 2-4 with ``gsplat.rasterization_2dgs`` (CUDA only).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from ..utils.console import warn
from .assemble import assemble
from .camera_space import to_camera_space
from .reference import rasterize_core_reference
from .types import Cameras, RenderOutput, Surfels

BACKENDS = ("auto", "reference", "native", "gsplat")

_native_state: dict = {}
"""Per device type, the cached result of the one native build/import attempt:
{"cpu": {"core": fn or None, "reason": str, "warned": bool}, ...}."""


def _load_native(device: torch.device) -> tuple[Callable | None, str]:
    """The native core function for ``device``, or None and why it is unavailable (tried once)."""
    key = device.type
    if key not in _native_state:
        try:
            from .native import native_available, rasterize_core_native

            ok, reason = native_available(device)
            state = {"core": rasterize_core_native if ok else None, "reason": str(reason)}
        except Exception as exc:  # missing module, failed build: the reference takes over
            state = {"core": None, "reason": f"{type(exc).__name__}: {exc}"}
        _native_state[key] = state
    return _native_state[key]["core"], _native_state[key]["reason"]


def _gsplat_importable() -> bool:
    try:
        import gsplat  # noqa: F401
    except Exception:
        return False
    return True


def resolve_backend(backend: str, device: torch.device) -> str:
    """The concrete backend ("reference", "native" or "gsplat") that ``backend`` means here.

    ``auto``: native when it builds (CPU or CUDA); on CUDA gsplat when native is unavailable;
    otherwise reference, with a one-time warning that names the native build error.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend: must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend != "auto":
        return backend
    core, reason = _load_native(device)
    if core is not None:
        return "native"
    if device.type == "cuda" and _gsplat_importable():
        return "gsplat"
    state = _native_state[device.type]
    if not state.get("warned"):
        state["warned"] = True
        warn(f"native renderer unavailable ({reason}); using the slower torch reference backend")
    return "reference"


def backend_problem(backend: str, device: torch.device | str) -> str | None:
    """Why ``backend`` cannot render on ``device`` here, or None when it can.

    "auto" and "reference" always can; "native" needs its kernels to build for the device type;
    "gsplat" needs a CUDA device and an importable gsplat.
    """
    device = torch.device(device)
    if backend not in BACKENDS:
        return f"unknown backend {backend!r} (one of {', '.join(BACKENDS)})"
    if backend == "native":
        core, reason = _load_native(device)
        return None if core is not None else reason
    if backend == "gsplat":
        from .gsplat_backend import gsplat_available

        if device.type != "cuda":
            return f"it renders on CUDA only and this work runs on {device.type}"
        ok, reason = gsplat_available()
        return None if ok else reason
    return None


def require_backend(backend: str, device: torch.device | str) -> None:
    """Raise a one-line :class:`~recon4d.errors.UserError` when ``backend`` cannot run on
    ``device`` (checked before any work, so a run does not die at its first render)."""
    from ..errors import UserError

    problem = backend_problem(backend, device)
    if problem is not None:
        raise UserError(f"--backend {backend} cannot run here ({problem}): use --backend auto")


def _validate(surfels: Surfels, cameras: Cameras, background: Tensor | None,
              tile_size: int) -> None:
    if not isinstance(surfels, Surfels):
        raise ValueError(f"surfels: must be a recon4d.render.Surfels, got {type(surfels).__name__}")
    if not isinstance(cameras, Cameras):
        raise ValueError(f"cameras: must be a recon4d.render.Cameras, got {type(cameras).__name__}")
    surfels.validate()
    cameras.validate()
    if cameras.viewmats.shape[0] < 1:
        raise ValueError("cameras: need at least one camera")
    if cameras.viewmats.dtype != surfels.dtype:
        raise ValueError(f"cameras: dtype {cameras.viewmats.dtype} differs from surfels "
                         f"{surfels.dtype}")
    if cameras.device != surfels.device:
        raise ValueError(f"cameras: on {cameras.device}, surfels on {surfels.device}")
    if background is not None:
        if not isinstance(background, Tensor):
            raise ValueError("background: must be a torch.Tensor or None")
        num_cams = cameras.viewmats.shape[0]
        if tuple(background.shape) not in ((3,), (num_cams, 3)):
            raise ValueError(f"background: expected shape (3,) or ({num_cams}, 3), "
                             f"got {tuple(background.shape)}")
        if background.dtype != surfels.dtype or background.device != surfels.device:
            raise ValueError(f"background: must be {surfels.dtype} on {surfels.device}, got "
                             f"{background.dtype} on {background.device}")
    if isinstance(tile_size, bool) or not isinstance(tile_size, int) or tile_size < 1:
        raise ValueError(f"tile_size: must be a positive int, got {tile_size!r}")


def render(surfels: Surfels, cameras: Cameras, backend: str = "auto",
           background: Tensor | None = None, tile_size: int = 16) -> RenderOutput:
    """Render N surfels into C cameras; differentiable w.r.t. surfels and camera poses.

    Args:
        surfels: N surfels in world space (means, quats wxyz, scales (N, 2) std-devs, opacities
            in [0, 1], SH (N, K, 3) with K in 1, 4, 9, 16).
        cameras: C OpenCV cameras (viewmats world-to-camera (C, 4, 4), Ks (C, 3, 3), one size).
        backend: "auto", "reference", "native" or "gsplat" (CUDA only).
        background: None (black), (3,) or (C, 3) colour composited under the surfels.
        tile_size: tile edge in pixels (the images do not depend on it).
    Returns:
        RenderOutput with (C, H, W[, 3]) maps; see its docstring for the exact definitions.
    Raises:
        ValueError naming the argument for bad inputs; RuntimeError when an explicitly
        requested backend cannot run here.
    """
    if not isinstance(backend, str):
        raise ValueError(f"backend: must be a string, got {type(backend).__name__}")
    _validate(surfels, cameras, background, tile_size)
    name = resolve_backend(backend, surfels.device)
    width, height = int(cameras.width), int(cameras.height)

    if name == "gsplat":
        from .gsplat_backend import render_gsplat

        return render_gsplat(surfels, cameras, background=background, tile_size=tile_size)

    if name == "native":
        core, reason = _load_native(surfels.device)
        if core is None:
            raise RuntimeError(f"native renderer unavailable: {reason}")
    else:
        core = rasterize_core_reference

    cs = to_camera_space(surfels, cameras)
    accum, median = core(cs.means_c, cs.tu_c, cs.tv_c, cs.opacities, cs.colors, cs.normals,
                         cameras.Ks, width, height, tile_size)
    return assemble(accum, median, cameras, background)
