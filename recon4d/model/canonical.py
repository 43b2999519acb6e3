"""Canonical Gaussian surfels: the object's rest shape, as row-aligned trainable tensors.

Every per-surfel tensor (the surfel's own parameters and any registered "extra" such as skinning
residuals or refinement coefficients) has N rows, one per surfel, in the same order. The
densify/prune strategy (:mod:`recon4d.train.strategy`) edits all of them together through
:meth:`CanonicalSurfels.row_parameters` and :meth:`CanonicalSurfels.set_row_parameter`, so
extras never drift out of alignment with the surfels they belong to.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from recon4d.render.types import SH_C0, Surfels

BASE_ROWS = ("means", "quats", "log_scales", "opacity_logits", "sh_dc", "sh_rest")


def num_sh_coeffs(degree: int) -> int:
    """K = (degree + 1)^2 spherical-harmonic coefficients per colour channel."""
    if degree not in (0, 1, 2, 3):
        raise ValueError(f"sh_degree: must be 0..3, got {degree}")
    return (degree + 1) ** 2


def rgb_to_sh_dc(rgb: Tensor) -> Tensor:
    """(N, 3) colour in [0, 1] -> (N, 1, 3) degree-0 SH coefficient (inverse of 0.5 + C0 * c)."""
    return ((rgb - 0.5) / SH_C0).unsqueeze(1)


def inverse_sigmoid(x: Tensor) -> Tensor:
    x = x.clamp(1e-6, 1 - 1e-6)
    return torch.log(x / (1 - x))


class CanonicalSurfels(nn.Module):
    """N canonical 2D Gaussian surfels plus registered per-surfel extras.

    Parameters (all with N rows, canonical frame, scene units):
        means: (N, 3) centres.
        quats: (N, 4) rotations wxyz (not necessarily unit; normalised on use). The disc spans the
            first two rotation columns, the normal is the third.
        log_scales: (N, 2) log standard deviations along the two tangent axes.
        opacity_logits: (N,) opacity before the sigmoid.
        sh_dc: (N, 1, 3) degree-0 SH colour coefficient.
        sh_rest: (N, K-1, 3) higher-degree SH coefficients (K-1 = 0 for degree 0).
    Extras: any (N, ...) tensors registered with :meth:`register_extra` (e.g. skinning logits).
    """

    def __init__(self, means: Tensor, quats: Tensor, log_scales: Tensor, opacity_logits: Tensor,
                 sh_dc: Tensor, sh_degree: int = 0):
        super().__init__()
        n = means.shape[0]
        k = num_sh_coeffs(sh_degree)
        self.sh_degree = int(sh_degree)
        self.means = nn.Parameter(means.detach().clone().float())
        self.quats = nn.Parameter(quats.detach().clone().float())
        self.log_scales = nn.Parameter(log_scales.detach().clone().float())
        self.opacity_logits = nn.Parameter(opacity_logits.detach().clone().float())
        self.sh_dc = nn.Parameter(sh_dc.detach().clone().float().reshape(n, 1, 3))
        self.sh_rest = nn.Parameter(torch.zeros(n, k - 1, 3, dtype=torch.float32, device=means.device))
        self._extra_names: list[str] = []

    # Construction ------------------------------------------------------------------------
    @classmethod
    def from_points(cls, points: Tensor, normals: Tensor, colors: Tensor, scale: float | Tensor,
                    opacity: float = 0.8, sh_degree: int = 0) -> "CanonicalSurfels":
        """Surfels at ``points`` (N, 3) facing ``normals`` (N, 3), coloured ``colors`` (N, 3) in
        [0, 1], isotropic std ``scale`` (scalar or (N,)), all with opacity ``opacity``."""
        n = points.shape[0]
        quats = quat_from_normal(normals)
        scale = torch.as_tensor(scale, dtype=torch.float32, device=points.device).expand(n)
        log_scales = torch.log(scale).unsqueeze(1).repeat(1, 2)
        logits = torch.full((n,), math.log(opacity / (1 - opacity)), device=points.device)
        return cls(points, quats, log_scales, logits, rgb_to_sh_dc(colors.clamp(0, 1)), sh_degree)

    @classmethod
    def empty_like_state(cls, state: dict[str, Tensor], prefix: str = "") -> "CanonicalSurfels":
        """A module whose row count and extras match a saved ``state_dict`` (for loading)."""
        means = state[prefix + "means"]
        n = means.shape[0]
        k = state[prefix + "sh_rest"].shape[1] + 1
        degree = int(round(math.sqrt(k))) - 1
        module = cls(torch.zeros(n, 3), torch.zeros(n, 4), torch.zeros(n, 2), torch.zeros(n),
                     torch.zeros(n, 1, 3), degree)
        for key, value in state.items():
            if key.startswith(prefix):
                name = key[len(prefix):]
                if "." not in name and name not in BASE_ROWS:
                    module.register_extra(name, torch.zeros_like(value))
        return module

    # Extras ------------------------------------------------------------------------------
    def register_extra(self, name: str, value: Tensor) -> None:
        """Register a trainable per-surfel tensor ``value`` (N, ...) that densify/prune keeps
        row-aligned with the surfels."""
        if value.shape[0] != self.num_surfels:
            raise ValueError(f"{name}: expected {self.num_surfels} rows, got {value.shape[0]}")
        if name in BASE_ROWS or hasattr(self, name) and name not in self._extra_names:
            raise ValueError(f"{name}: name already used")
        if name not in self._extra_names:
            self._extra_names.append(name)
        setattr(self, name, nn.Parameter(value.detach().clone().float()))

    @property
    def extra_names(self) -> tuple[str, ...]:
        return tuple(self._extra_names)

    def row_names(self) -> tuple[str, ...]:
        return BASE_ROWS + tuple(self._extra_names)

    def row_parameters(self) -> dict[str, nn.Parameter]:
        """Every row-aligned parameter by name (surfel parameters first, then extras)."""
        return {name: getattr(self, name) for name in self.row_names()}

    def set_row_parameter(self, name: str, value: Tensor) -> nn.Parameter:
        """Replace a row-aligned parameter (the strategy calls this for every name at once)."""
        if name not in self.row_names():
            raise KeyError(name)
        param = nn.Parameter(value.detach().float())
        setattr(self, name, param)
        return param

    # Views -------------------------------------------------------------------------------
    @property
    def num_surfels(self) -> int:
        return int(self.means.shape[0])

    def __len__(self) -> int:
        return self.num_surfels

    @property
    def sh(self) -> Tensor:
        """(N, K, 3) all SH coefficients."""
        return torch.cat([self.sh_dc, self.sh_rest], dim=1)

    @property
    def scales(self) -> Tensor:
        """(N, 2) standard deviations (scene units)."""
        return torch.exp(self.log_scales)

    @property
    def opacities(self) -> Tensor:
        """(N,) opacity in [0, 1]."""
        return torch.sigmoid(self.opacity_logits)

    def normalized_quats(self) -> Tensor:
        return torch.nn.functional.normalize(self.quats, dim=-1)

    def to_surfels(self) -> Surfels:
        """The canonical surfels as renderer input (differentiable)."""
        return Surfels(self.means, self.normalized_quats(), self.scales, self.opacities, self.sh)


def quat_from_normal(normals: Tensor) -> Tensor:
    """(N, 3) unit normals -> (N, 4) wxyz quaternions whose rotation maps +z to the normal.

    Uses the shortest arc from +z; for normals close to -z a rotation of pi about x.
    """
    n = torch.nn.functional.normalize(normals, dim=-1)
    w = 1.0 + n[:, 2]
    quats = torch.stack([w, -n[:, 1], n[:, 0], torch.zeros_like(w)], dim=-1)
    flipped = w < 1e-6
    if flipped.any():
        quats[flipped] = quats.new_tensor([0.0, 1.0, 0.0, 0.0])
    return torch.nn.functional.normalize(quats, dim=-1)
