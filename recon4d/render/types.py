"""Renderer data types: what goes in (cameras, surfels at one time) and what comes out.

Conventions (docs/design.md §2): OpenCV cameras (x right, y down, z forward); ``viewmats`` are
world-to-camera; ``Ks`` in pixels; quaternions wxyz; images float32 in [0,1]; depth in scene
units along the camera's +z; normals in WORLD space.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

SH_C0 = 0.28209479177387814
"""Constant of the degree-0 real spherical harmonic; colour = 0.5 + SH_C0 * c0 + ... (3DGS)."""


def _check(cond: bool, name: str, message: str) -> None:
    if not cond:
        raise ValueError(f"{name}: {message}")


@dataclass
class Cameras:
    """A batch of C pinhole cameras sharing one image size.

    Attributes:
        viewmats: (C, 4, 4) world-to-camera (``world2cam``), OpenCV axes.
        Ks: (C, 3, 3) intrinsics in pixels (fx, fy, cx, cy; pixel centres at +0.5).
        width, height: image size in pixels.
    """

    viewmats: Tensor
    Ks: Tensor
    width: int
    height: int

    def __len__(self) -> int:
        return int(self.viewmats.shape[0])

    def __getitem__(self, index) -> "Cameras":
        """A sub-batch (an int keeps the batch dimension)."""
        if isinstance(index, int):
            index = slice(index, index + 1) if index != -1 else slice(-1, None)
        return replace(self, viewmats=self.viewmats[index], Ks=self.Ks[index])

    def to(self, device=None, dtype=None) -> "Cameras":
        return replace(self, viewmats=self.viewmats.to(device=device, dtype=dtype),
                       Ks=self.Ks.to(device=device, dtype=dtype))

    @property
    def device(self) -> torch.device:
        return self.viewmats.device

    def cam2world(self) -> Tensor:
        """(C, 4, 4) camera-to-world."""
        return torch.linalg.inv(self.viewmats)

    def centers(self) -> Tensor:
        """(C, 3) camera centres in world space."""
        rot = self.viewmats[:, :3, :3]
        trans = self.viewmats[:, :3, 3]
        return -(rot.transpose(1, 2) @ trans.unsqueeze(-1)).squeeze(-1)

    def validate(self) -> None:
        """Raise ValueError naming the field that is wrong."""
        _check(isinstance(self.viewmats, Tensor), "viewmats", "must be a torch.Tensor")
        _check(isinstance(self.Ks, Tensor), "Ks", "must be a torch.Tensor")
        _check(self.viewmats.ndim == 3 and self.viewmats.shape[1:] == (4, 4), "viewmats",
               f"expected shape (C, 4, 4), got {tuple(self.viewmats.shape)}")
        _check(self.Ks.ndim == 3 and self.Ks.shape[1:] == (3, 3), "Ks",
               f"expected shape (C, 3, 3), got {tuple(self.Ks.shape)}")
        _check(self.Ks.shape[0] == self.viewmats.shape[0], "Ks",
               f"{self.Ks.shape[0]} intrinsics for {self.viewmats.shape[0]} viewmats")
        _check(self.viewmats.is_floating_point(), "viewmats", f"must be float, got {self.viewmats.dtype}")
        _check(self.Ks.dtype == self.viewmats.dtype, "Ks",
               f"dtype {self.Ks.dtype} differs from viewmats {self.viewmats.dtype}")
        _check(self.Ks.device == self.viewmats.device, "Ks", "must be on the same device as viewmats")
        _check(int(self.width) > 0 and int(self.height) > 0, "width/height",
               f"must be positive, got {self.width}x{self.height}")
        _check(bool(torch.isfinite(self.viewmats).all()), "viewmats", "contains NaN or Inf")
        _check(bool(torch.isfinite(self.Ks).all()), "Ks", "contains NaN or Inf")


@dataclass
class Surfels:
    """N 2D Gaussian surfels in world space, at one time.

    Attributes:
        means: (N, 3) centres, world space.
        quats: (N, 4) rotations, wxyz; need not be normalised (the renderer normalises). The
            disc spans the first two columns of the rotation; the normal is the third column.
        scales: (N, 2) standard deviations along the two tangent axes, world units, > 0
            (NOT log-scales).
        opacities: (N,) in [0, 1] (after the sigmoid).
        sh: (N, K, 3) spherical-harmonic colour coefficients, K = (degree+1)^2 with degree 0..3;
            colour = clamp(0.5 + sum_k sh_k * Y_k(view direction), min=0) as in 3DGS/gsplat, the
            view direction running from the camera centre to the surfel centre.
    """

    means: Tensor
    quats: Tensor
    scales: Tensor
    opacities: Tensor
    sh: Tensor

    def __len__(self) -> int:
        return int(self.means.shape[0])

    @property
    def sh_degree(self) -> int:
        return {1: 0, 4: 1, 9: 2, 16: 3}[int(self.sh.shape[1])]

    @property
    def device(self) -> torch.device:
        return self.means.device

    @property
    def dtype(self) -> torch.dtype:
        return self.means.dtype

    def to(self, device=None, dtype=None) -> "Surfels":
        return Surfels(*(t.to(device=device, dtype=dtype) for t in
                         (self.means, self.quats, self.scales, self.opacities, self.sh)))

    def detach(self) -> "Surfels":
        return Surfels(*(t.detach() for t in
                         (self.means, self.quats, self.scales, self.opacities, self.sh)))

    def index(self, rows) -> "Surfels":
        """The surfels selected by ``rows`` (mask or indices)."""
        return Surfels(*(t[rows] for t in
                         (self.means, self.quats, self.scales, self.opacities, self.sh)))

    @staticmethod
    def from_rgb(means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor,
                 rgb: Tensor) -> "Surfels":
        """Surfels with view-independent colour ``rgb`` (N, 3) in [0, 1] (SH degree 0)."""
        sh = ((rgb - 0.5) / SH_C0).unsqueeze(1)
        return Surfels(means, quats, scales, opacities, sh)

    def validate(self) -> None:
        """Raise ValueError naming the field that is wrong."""
        for name in ("means", "quats", "scales", "opacities", "sh"):
            _check(isinstance(getattr(self, name), Tensor), name, "must be a torch.Tensor")
        n = self.means.shape[0] if self.means.ndim == 2 else -1
        _check(self.means.ndim == 2 and self.means.shape[1] == 3, "means",
               f"expected shape (N, 3), got {tuple(self.means.shape)}")
        _check(self.means.is_floating_point(), "means", f"must be float, got {self.means.dtype}")
        expected = {"quats": (n, 4), "scales": (n, 2), "opacities": (n,)}
        for name, shape in expected.items():
            got = tuple(getattr(self, name).shape)
            _check(got == shape, name, f"expected shape {shape}, got {got}")
        _check(self.sh.ndim == 3 and self.sh.shape[0] == n and self.sh.shape[2] == 3
               and self.sh.shape[1] in (1, 4, 9, 16), "sh",
               f"expected shape (N, K, 3) with K in 1, 4, 9, 16, got {tuple(self.sh.shape)}")
        for name in ("quats", "scales", "opacities", "sh"):
            tensor = getattr(self, name)
            _check(tensor.dtype == self.means.dtype, name,
                   f"dtype {tensor.dtype} differs from means {self.means.dtype}")
            _check(tensor.device == self.means.device, name, "must be on the same device as means")


@dataclass
class RenderOutput:
    """What :func:`recon4d.render.render` returns for C cameras of H x W pixels.

    Every backend composites, per pixel, the depth-sorted surfels front to back with weights
    w_i = alpha_i * T_i (T_i the transmittance before surfel i; early termination when T would
    drop below 1e-4) and a per-pixel depth z_i: the camera z of the ray-surfel intersection, or
    the surfel centre's z where the screen-space low-pass fallback is used (docs/render.md).
    Writing S1 = sum w_i z_i and S2 = sum w_i z_i^2:

    Attributes:
        rgb: (C, H, W, 3) sum w_i c_i + (1 - alpha) * background (black when None).
        alpha: (C, H, W) accumulated opacity sum w_i = 1 - final transmittance.
        depth: (C, H, W) expected camera-space z: S1 / alpha, 0 where alpha < 1e-6.
        median_depth: (C, H, W) z_i of the first added surfel after which the transmittance
            is below 0.5 (0 where it never drops below 0.5).
        normal: (C, H, W, 3) WORLD-space surfel normals accumulated with the compositing weights
            (sum w_i n_i; not renormalised), each n_i flipped to face the camera.
        normal_from_depth: (C, H, W, 3) WORLD-space unit normals from central differences of the
            expected depth unprojected with K and cam2world, oriented towards the camera; 0 on the
            1-pixel image border and where alpha < 1e-6.
        distortion: (C, H, W) depth distortion 2 * (alpha * S2 - S1^2) = sum_{i,j} w_i w_j
            (z_i - z_j)^2 (squared variant, clamped >= 0; the same z_i as ``depth``). The gsplat
            backend returns gsplat's L1 variant sum w_i w_j |z_i - z_j| on centre depths instead.
    """

    rgb: Tensor
    alpha: Tensor
    depth: Tensor
    median_depth: Tensor
    normal: Tensor
    normal_from_depth: Tensor
    distortion: Tensor
