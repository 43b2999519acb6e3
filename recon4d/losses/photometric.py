"""Photometric terms: L1, SSIM, PSNR on (C, H, W, 3) images in [0, 1]."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from recon4d.eval.metrics import BACKGROUND_ALPHA


def _gaussian_window(size: int, sigma: float, device, dtype) -> Tensor:
    x = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(x ** 2) / (2 * sigma ** 2))
    return g / g.sum()


def ssim_map(pred: Tensor, target: Tensor, window: int = 11, sigma: float = 1.5) -> Tensor:
    """(C, H, W, 3) x2 -> (C, H, W) SSIM (Gaussian window, 'same' zero padding as in 3DGS),
    averaged over the colour channels."""
    x = pred.permute(0, 3, 1, 2)
    y = target.permute(0, 3, 1, 2)
    channels = x.shape[1]
    g = _gaussian_window(window, sigma, x.device, x.dtype)
    # Separable blur: a row then a column convolution, per channel.
    wx = g.reshape(1, 1, 1, -1).repeat(channels, 1, 1, 1)
    wy = g.reshape(1, 1, -1, 1).repeat(channels, 1, 1, 1)

    def blur(img: Tensor) -> Tensor:
        img = F.conv2d(img, wx, padding=(0, window // 2), groups=channels)
        return F.conv2d(img, wy, padding=(window // 2, 0), groups=channels)

    mu_x, mu_y = blur(x), blur(y)
    sxx = blur(x * x) - mu_x ** 2
    syy = blur(y * y) - mu_y ** 2
    sxy = blur(x * y) - mu_x * mu_y
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    num = (2 * mu_x * mu_y + c1) * (2 * sxy + c2)
    den = (mu_x ** 2 + mu_y ** 2 + c1) * (sxx + syy + c2)
    return (num / den).mean(dim=1)


def l1_per_image(pred: Tensor, target: Tensor) -> Tensor:
    """(C,) mean absolute error per image."""
    return (pred - target).abs().flatten(1).mean(1)


def photometric_per_image(pred: Tensor, target: Tensor, ssim_weight: float = 0.2) -> Tensor:
    """(C,) (1 - λ) L1 + λ (1 - SSIM) per image; λ = ``ssim_weight``."""
    l1 = l1_per_image(pred, target)
    if ssim_weight <= 0:
        return l1
    dssim = 1 - ssim_map(pred, target).flatten(1).mean(1)
    return (1 - ssim_weight) * l1 + ssim_weight * dssim


def psnr(pred: Tensor, target: Tensor) -> float:
    """PSNR in dB over all pixels and channels (images in [0, 1])."""
    mse = float(((pred.detach() - target) ** 2).mean())
    return 10 * math.log10(1.0 / max(mse, 1e-12))


def replace_background(frames: Tensor, masks: Tensor, frame_background: Tensor,
                       background: Tensor) -> Tensor:
    """(C, H, W, 3) frames shot over ``frame_background`` (3,), moved onto ``background`` (3,):
    the training targets (the same rule as the evaluation's,
    :func:`recon4d.eval.metrics.replace_background`: edge pixels keep their own mix of object
    and background, pixels with a mask below 0.01 become ``background`` exactly)."""
    m = masks.unsqueeze(-1)
    moved = (frames + (1 - m) * (background - frame_background)).clamp(0, 1)
    return torch.where(m < BACKGROUND_ALPHA, background.expand_as(frames), moved)
