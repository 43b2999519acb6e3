"""Per-surfel, time-dependent rotation and scale refinement (the paper's ΔR / ΔS).

Each surfel owns coefficients (N, 2K, 5) of a small temporal basis
phi_k(t) = [sin(pi k t), 1 - cos(pi k t)] for k = 1..K; both basis functions vanish at t = 0 and
the coefficients start at zero, so the refinement starts as the identity (pure skinning) and
only learns what the bones cannot explain (texture flicker, local wobble). The 5 outputs are a
local rotation vector (3, radians, applied in the surfel's own frame after the canonical
rotation) and two log-scale offsets. Coefficients are registered as a per-surfel extra of the
canonical surfels, so densification keeps them aligned.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from recon4d.model.rotations import axis_angle_to_quat

EXTRA_NAME = "refine_coeffs"


def temporal_basis(t: Tensor, num_freqs: int) -> Tensor:
    """Scalar t -> (2K,) basis values, all zero at t = 0."""
    k = torch.arange(1, num_freqs + 1, dtype=t.dtype, device=t.device)
    phase = math.pi * k * t
    return torch.cat([torch.sin(phase), 1 - torch.cos(phase)])


class TimeRefinement(nn.Module):
    """Evaluates ΔR(t), ΔS(t) from per-surfel coefficients.

    Args:
        num_freqs: K, number of temporal frequencies (0 disables refinement).
        max_angle: bound (radians) on each component of the refinement's rotation vector,
            through tanh (so the angle stays below sqrt(3) max_angle); keeps it a correction
            rather than a second warp.
        max_log_scale: bound on the log-scale offsets.
    """

    def __init__(self, num_freqs: int = 3, max_angle: float = 0.5, max_log_scale: float = 0.5):
        super().__init__()
        self.num_freqs = int(num_freqs)
        self.max_angle = float(max_angle)
        self.max_log_scale = float(max_log_scale)

    @property
    def enabled(self) -> bool:
        return self.num_freqs > 0

    def init_coeffs(self, num_surfels: int, device=None) -> Tensor:
        """(N, 2K, 5) zeros: the identity refinement."""
        return torch.zeros(num_surfels, 2 * self.num_freqs, 5, device=device)

    def deltas(self, coeffs: Tensor, t: float | Tensor) -> tuple[Tensor, Tensor]:
        """((N, 4) local rotation quaternions wxyz, (N, 2) log-scale offsets) at time t."""
        t = torch.as_tensor(t, dtype=coeffs.dtype, device=coeffs.device).reshape(())
        num, terms, outputs = coeffs.shape
        # sum_k phi_k coeffs[:, k, :] as one (N, 2K*5) @ (2K*5, 5) product with phi (x) I_5: an
        # einsum here permuted a copy of all coefficients every call, forward and backward.
        mixing = torch.kron(temporal_basis(t, self.num_freqs).unsqueeze(1),
                            torch.eye(outputs, dtype=coeffs.dtype, device=coeffs.device))
        bounded = torch.tanh(coeffs.reshape(num, terms * outputs) @ mixing)   # (N, 5)
        rotvec = self.max_angle * bounded[:, :3]
        dlog = self.max_log_scale * bounded[:, 3:]
        return axis_angle_to_quat(rotvec), dlog
