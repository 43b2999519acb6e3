"""Image metrics on numpy arrays: PSNR and SSIM, and compositing over a background.

Images are float arrays in [0, 1], (H, W, 3) or (H, W). The evaluation protocol
(docs/design.md §6) puts the ground-truth frame over white with its mask (its own background
replaced, :func:`replace_background`) and compares it with a render over white; both metrics
are computed on the whole frame.
"""

from __future__ import annotations

import numpy as np

PSNR_CAP_DB = 100.0
"""PSNR of identical images is infinite; it is reported as this cap so metrics stay valid JSON."""


BACKGROUND_ALPHA = 0.01
"""Mask values below this are background: such pixels become the new background exactly."""


def composite(image: np.ndarray, mask: np.ndarray, background=(1.0, 1.0, 1.0)) -> np.ndarray:
    """(H, W, 3) ``image * mask + background * (1 - mask)``; ``mask`` (H, W) in [0, 1]: for an
    image whose colours are the object's alone (a render's, straight alpha). A video frame
    already shows its background; :func:`replace_background` is the one for frames."""
    image = np.asarray(image, np.float64)
    alpha = np.asarray(mask, np.float64)[..., None]
    return image * alpha + np.asarray(background, np.float64) * (1.0 - alpha)


def replace_background(frame: np.ndarray, mask: np.ndarray, frame_background,
                       background=(1.0, 1.0, 1.0)) -> np.ndarray:
    """A frame shot (or rendered) over ``frame_background`` (3,), moved onto ``background``:
    ``frame + (1 - mask) * (background - frame_background)``, and ``background`` exactly where
    the mask is below :data:`BACKGROUND_ALPHA`.

    A frame's edge pixel already mixes object and background, ``c a + B (1 - a)``; compositing it
    again with its mask (``composite``) mixes the background in twice, ``c a^2 + ...``, which
    thins every soft edge (a frame over white scored 37.5-40 dB against itself that way). Here a
    frame over white goes onto white unchanged, and the background's own noise is gone.
    Shapes: frame (H, W, 3), mask (H, W) in [0, 1]."""
    frame = np.asarray(frame, np.float64)
    alpha = np.asarray(mask, np.float64)[..., None]
    background = np.asarray(background, np.float64)
    moved = frame + (1.0 - alpha) * (background - np.asarray(frame_background, np.float64))
    return np.where(alpha < BACKGROUND_ALPHA, background, np.clip(moved, 0.0, 1.0))


def psnr(pred: np.ndarray, target: np.ndarray, mask: np.ndarray | None = None,
         data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB: ``10 log10(data_range^2 / MSE)``.

    Args:
        pred, target: same shape, (H, W[, C]) floats.
        mask: optional (H, W) weights in [0, 1]: the MSE is the mask-weighted mean (over pixels
            and channels) instead of the mean over the whole frame.
    Returns:
        dB, capped at :data:`PSNR_CAP_DB` for (near-)identical images.
    """
    pred, target = np.asarray(pred, np.float64), np.asarray(target, np.float64)
    if pred.shape != target.shape:
        raise ValueError(f"pred: shape {pred.shape} differs from target {target.shape}")
    err = (pred - target) ** 2
    if mask is None:
        mse = float(err.mean())
    else:
        w = np.asarray(mask, np.float64)
        if err.ndim == 3:
            w = np.broadcast_to(w[..., None], err.shape)
        total = float(w.sum())
        if total <= 0:
            raise ValueError("mask: is empty, PSNR over no pixels is undefined")
        mse = float((err * w).sum() / total)
    if mse <= data_range ** 2 * 10 ** (-PSNR_CAP_DB / 10):
        return PSNR_CAP_DB
    return float(10.0 * np.log10(data_range ** 2 / mse))


def ssim(pred: np.ndarray, target: np.ndarray, data_range: float = 1.0, sigma: float = 1.5,
         return_map: bool = False):
    """Structural similarity (Wang et al. 2004) with an 11x11 Gaussian window (sigma 1.5).

    Local means, variances and covariance come from Gaussian filtering (scipy, reflected
    borders, truncated at 3.5 sigma = radius 5), population (not sample) covariances,
    K1 = 0.01, K2 = 0.03. The mean is taken over the image without a border of 5 pixels (where
    the window leaves the image) and over channels, which is how scikit-image's
    ``structural_similarity(..., gaussian_weights=True, use_sample_covariance=False)`` reports it.

    Args:
        pred, target: (H, W) or (H, W, C), H and W >= 11.
    Returns:
        The mean SSIM, or (mean, (H, W[, C]) map) with ``return_map``.
    """
    from scipy.ndimage import gaussian_filter

    pred, target = np.asarray(pred, np.float64), np.asarray(target, np.float64)
    if pred.shape != target.shape:
        raise ValueError(f"pred: shape {pred.shape} differs from target {target.shape}")
    if min(pred.shape[:2]) < 11:
        raise ValueError(f"pred: SSIM needs images of at least 11x11 pixels, got {pred.shape[:2]}")
    squeeze = pred.ndim == 2
    if squeeze:
        pred, target = pred[..., None], target[..., None]
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    radius = int(3.5 * sigma + 0.5)

    def blur(x):
        return gaussian_filter(x, sigma=sigma, truncate=3.5, mode="reflect")

    maps = np.empty_like(pred)
    for c in range(pred.shape[-1]):
        x, y = pred[..., c], target[..., c]
        mx, my = blur(x), blur(y)
        vx = blur(x * x) - mx * mx
        vy = blur(y * y) - my * my
        cxy = blur(x * y) - mx * my
        maps[..., c] = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    inner = maps[radius:-radius, radius:-radius] if radius else maps
    value = float(inner.mean(axis=(0, 1)).mean())
    if return_map:
        return value, (maps[..., 0] if squeeze else maps)
    return value


def mask_iou(pred_mask: np.ndarray, target_mask: np.ndarray, threshold: float = 0.5) -> float:
    """Intersection over union of two (H, W) masks binarised at ``threshold`` (1 if both empty)."""
    a = np.asarray(pred_mask) >= threshold
    b = np.asarray(target_mask) >= threshold
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)
