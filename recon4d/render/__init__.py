"""Differentiable 2D Gaussian surfel renderer (docs/render.md).

Public API: :func:`render` -> :class:`RenderOutput`, with the input types :class:`Surfels` and
:class:`Cameras`. ``rasterize_core_reference`` is the torch twin that native kernels test against.
"""

from .api import BACKENDS, backend_problem, render, require_backend, resolve_backend
from .camera_space import quat_to_rotmat, to_camera_space
from .reference import rasterize_core_reference
from .types import SH_C0, Cameras, RenderOutput, Surfels

__all__ = [
    "BACKENDS",
    "SH_C0",
    "backend_problem",
    "require_backend",
    "Cameras",
    "RenderOutput",
    "Surfels",
    "quat_to_rotmat",
    "rasterize_core_reference",
    "render",
    "resolve_backend",
    "to_camera_space",
]
