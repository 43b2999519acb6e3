"""Small numpy rigid-transform helpers for the exporters (float64 inside, any float outside).

Conventions: quaternions are wxyz inside recon4d (docs/design.md §2); glTF stores xyzw, so the
writers convert with :func:`wxyz_to_xyzw` at the file boundary only. Matrices are 4x4 homogeneous,
acting on column vectors (``x' = M @ x``).
"""

from __future__ import annotations

import numpy as np


def orthonormalize(rotations: np.ndarray) -> np.ndarray:
    """(..., 3, 3) nearest proper rotations (SVD), to clean float noise before a quaternion."""
    u, _, vt = np.linalg.svd(np.asarray(rotations, dtype=np.float64))
    det = np.linalg.det(u @ vt)
    fix = np.ones(u.shape[:-1])
    fix[..., -1] = np.sign(det)  # reflect the last axis where the product is improper
    return (u * fix[..., None, :]) @ vt


def matrix_to_quat_wxyz(rotations: np.ndarray) -> np.ndarray:
    """(..., 3, 3) rotation matrices -> (..., 4) unit quaternions wxyz with w >= 0."""
    r = np.asarray(rotations, dtype=np.float64)
    shape = r.shape[:-2]
    r = r.reshape(-1, 3, 3)
    m00, m11, m22 = r[:, 0, 0], r[:, 1, 1], r[:, 2, 2]
    # Four candidate formulas; each is stable where its diagonal term is the largest (Shepperd).
    candidates = np.stack([
        np.stack([1 + m00 + m11 + m22, r[:, 2, 1] - r[:, 1, 2], r[:, 0, 2] - r[:, 2, 0],
                  r[:, 1, 0] - r[:, 0, 1]], -1),
        np.stack([r[:, 2, 1] - r[:, 1, 2], 1 + m00 - m11 - m22, r[:, 0, 1] + r[:, 1, 0],
                  r[:, 0, 2] + r[:, 2, 0]], -1),
        np.stack([r[:, 0, 2] - r[:, 2, 0], r[:, 0, 1] + r[:, 1, 0], 1 - m00 + m11 - m22,
                  r[:, 1, 2] + r[:, 2, 1]], -1),
        np.stack([r[:, 1, 0] - r[:, 0, 1], r[:, 0, 2] + r[:, 2, 0], r[:, 1, 2] + r[:, 2, 1],
                  1 - m00 - m11 + m22], -1),
    ], 1)  # (n, 4 candidates, 4)
    pick = np.argmax(np.stack([1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22,
                               1 - m00 - m11 + m22], -1), -1)
    q = candidates[np.arange(len(r)), pick]
    q /= np.linalg.norm(q, axis=-1, keepdims=True)
    q *= np.where(q[:, :1] < 0, -1.0, 1.0)
    return q.reshape(*shape, 4)


def quat_wxyz_to_matrix(quats: np.ndarray) -> np.ndarray:
    """(..., 4) quaternions wxyz (normalised here) -> (..., 3, 3) rotation matrices."""
    q = np.asarray(quats, dtype=np.float64)
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    w, x, y, z = np.moveaxis(q, -1, 0)
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
        np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
        np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
    ], -2)


def wxyz_to_xyzw(quats: np.ndarray) -> np.ndarray:
    """(..., 4) wxyz -> xyzw (glTF's order)."""
    q = np.asarray(quats)
    return np.concatenate([q[..., 1:], q[..., :1]], -1)


def make_rigid(rotation: np.ndarray, translation: np.ndarray) -> np.ndarray:
    """(..., 3, 3) and (..., 3) -> (..., 4, 4) homogeneous transforms."""
    rotation = np.asarray(rotation, dtype=np.float64)
    out = np.zeros(rotation.shape[:-2] + (4, 4))
    out[..., :3, :3] = rotation
    out[..., :3, 3] = translation
    out[..., 3, 3] = 1.0
    return out


def translation_matrix(offset: np.ndarray) -> np.ndarray:
    """(..., 3) -> (..., 4, 4) pure translations."""
    offset = np.asarray(offset, dtype=np.float64)
    eye = np.broadcast_to(np.eye(3), offset.shape[:-1] + (3, 3))
    return make_rigid(eye, offset)


def rigid_inverse(transforms: np.ndarray) -> np.ndarray:
    """(..., 4, 4) rigid transforms -> their inverses (R^T, -R^T t)."""
    t = np.asarray(transforms, dtype=np.float64)
    rot_t = np.swapaxes(t[..., :3, :3], -1, -2)
    return make_rigid(rot_t, -(rot_t @ t[..., :3, 3:4])[..., 0])


def kabsch(source: np.ndarray, target: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """The rigid (4, 4) transform minimising sum w |R s + t - target|^2 over (M, 3) point pairs."""
    src = np.asarray(source, dtype=np.float64)
    dst = np.asarray(target, dtype=np.float64)
    w = np.ones(len(src)) if weights is None else np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    mu_s, mu_d = w @ src, w @ dst
    cov = ((dst - mu_d) * w[:, None]).T @ (src - mu_s)
    u, _, vt = np.linalg.svd(cov)
    d = np.sign(np.linalg.det(u @ vt))
    rot = u @ np.diag([1.0, 1.0, d]) @ vt
    return make_rigid(rot, mu_d - rot @ mu_s)
