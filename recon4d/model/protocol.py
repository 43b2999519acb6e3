"""What a fitted 4D scene offers to the exporter, viewer, evaluator and batch runner.

Frames: "canonical" is the object's rest frame, where the canonical surfels live; "world" is the
frame of the cameras. At time t the warp takes canonical to world: per-bone SE(3) blended by the
skinning weights, then the per-frame root pose. Consumers use only this protocol (never
``isinstance`` on warp types), so any warp field (identity, skinning, composed) plugs in.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import Tensor

from recon4d.render.types import Cameras, Surfels


@runtime_checkable
class DynamicScene(Protocol):
    """A fitted dynamic scene. All tensors on the scene's device, float32 unless stated."""

    @property
    def num_bones(self) -> int:
        """B, the number of bones (0 for a warp without bones)."""

    @property
    def frame_times(self) -> Tensor:
        """(F,) normalised times in [0, 1] of the input frames."""

    def input_cameras(self) -> Cameras:
        """(F cameras) the fitted cameras of the input frames, OpenCV world-to-camera."""

    def canonical_surfels(self) -> Surfels:
        """The surfels in the canonical (rest) frame."""

    def surfels_at(self, t: float) -> Surfels:
        """The surfels in world space at time ``t`` (warp, refinement and root pose applied)."""

    def warp_points(self, points: Tensor, t: float) -> Tensor:
        """(M, 3) canonical points -> (M, 3) world points at time ``t``.

        The same rigid per-point transform the surfel centres get (skinning blend + root pose),
        without the per-surfel refinement (which only changes rotation and scale).
        """

    def skinning_weights(self, points: Tensor) -> Tensor:
        """(M, 3) canonical points -> (M, B) skinning weights, rows summing to 1."""

    def bone_transforms(self, t: float) -> Tensor:
        """(B, 4, 4) canonical-to-world transform of each bone at time ``t``, root pose included.

        Linear blend skinning with these is ``x_world = sum_b w_b * T_b(t) @ x_canonical``;
        the scene's own warp may blend differently (dual quaternions), which is what exporters
        measure against.
        """

    def bone_centers(self) -> Tensor:
        """(B, 3) bone rest centres in the canonical frame (joints, overlays)."""
