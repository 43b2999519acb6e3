"""Geometry metrics on numpy arrays: surface sampling, Chamfer-L1, normal consistency,
F-score and temporal jitter (docs/design.md §6).

Distances are Euclidean in scene units, reported *normalised* by the ground truth's
bounding-box diagonal ``diag`` (so 0.01 = 1% of the object's size). Chamfer compares points
sampled uniformly on the two surfaces (not vertices), so it does not depend on tessellation.
"""

from __future__ import annotations

import numpy as np


def sample_surface(vertices: np.ndarray, faces: np.ndarray, count: int,
                   seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Area-uniform random points on a triangle mesh.

    Args:
        vertices: (V, 3); faces: (M, 3) int.
        count: number of samples.
        seed: the same mesh and seed give the same samples.
    Returns:
        points (count, 3) and their faces' unit normals (count, 3), both float64.
    """
    v = np.asarray(vertices, np.float64)
    f = np.asarray(faces, np.int64)
    if len(f) == 0 or count <= 0:
        return np.zeros((0, 3)), np.zeros((0, 3))
    a, b, c = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]
    cross = np.cross(b - a, c - a)
    area = 0.5 * np.linalg.norm(cross, axis=1)
    total = area.sum()
    if not np.isfinite(total) or total <= 0:
        return np.zeros((0, 3)), np.zeros((0, 3))
    rng = np.random.default_rng(seed)
    tri = rng.choice(len(f), size=count, p=area / total)
    # Uniform on a triangle: fold the unit square onto the simplex.
    r1, r2 = rng.random(count), rng.random(count)
    flip = r1 + r2 > 1
    r1[flip], r2[flip] = 1 - r1[flip], 1 - r2[flip]
    points = a[tri] + r1[:, None] * (b[tri] - a[tri]) + r2[:, None] * (c[tri] - a[tri])
    normals = cross[tri] / np.maximum(np.linalg.norm(cross[tri], axis=1, keepdims=True), 1e-30)
    return points, normals


def bbox_diagonal(points: np.ndarray) -> float:
    p = np.asarray(points, np.float64).reshape(-1, 3)
    return float(np.linalg.norm(p.max(0) - p.min(0))) if len(p) else 0.0


def compare_point_sets(pred_points: np.ndarray, pred_normals: np.ndarray | None,
                       gt_points: np.ndarray, gt_normals: np.ndarray | None, diag: float,
                       threshold: float = 0.01) -> dict:
    """Chamfer-L1, normal consistency and F-score between two sampled surfaces.

    Args:
        pred_points, gt_points: (N, 3), (M, 3); normals likewise (unit) or None.
        diag: the ground truth's bounding-box diagonal; distances are divided by it.
        threshold: F-score distance as a fraction of ``diag`` (0.01 = 1%).
    Returns:
        ``chamfer_l1`` = (accuracy + completeness) / 2 with accuracy = mean distance of predicted
        samples to the nearest ground-truth sample and completeness the reverse (all / diag);
        ``normal_consistency`` = mean |cos| between each sample's normal and its nearest
        neighbour's, averaged over both directions (None without normals); ``precision``,
        ``recall``, ``fscore`` at ``threshold``.
    """
    from scipy.spatial import cKDTree

    if diag <= 0:
        raise ValueError(f"diag: must be positive, got {diag}")
    if len(pred_points) == 0 or len(gt_points) == 0:
        return {"chamfer_l1": float("inf"), "accuracy": float("inf"), "completeness": float("inf"),
                "normal_consistency": 0.0, "precision": 0.0, "recall": 0.0, "fscore": 0.0}
    d_pred, i_pred = cKDTree(gt_points).query(pred_points, k=1)   # pred -> gt
    d_gt, i_gt = cKDTree(pred_points).query(gt_points, k=1)       # gt -> pred
    d_pred, d_gt = d_pred / diag, d_gt / diag
    accuracy, completeness = float(d_pred.mean()), float(d_gt.mean())
    precision = float((d_pred <= threshold).mean())
    recall = float((d_gt <= threshold).mean())
    fscore = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
    out = {"chamfer_l1": 0.5 * (accuracy + completeness), "accuracy": accuracy,
           "completeness": completeness, "precision": precision, "recall": recall,
           "fscore": float(fscore), "normal_consistency": None}
    if pred_normals is not None and gt_normals is not None:
        cos_a = np.abs((pred_normals * gt_normals[i_pred]).sum(1))
        cos_b = np.abs((gt_normals * pred_normals[i_gt]).sum(1))
        out["normal_consistency"] = float(0.5 * (cos_a.mean() + cos_b.mean()))
    return out


def compare_meshes(pred_vertices: np.ndarray, pred_faces: np.ndarray, gt_vertices: np.ndarray,
                   gt_faces: np.ndarray, diag: float | None = None, samples: int = 100_000,
                   threshold: float = 0.01, seed: int = 0,
                   camera_centre: np.ndarray | None = None) -> dict:
    """:func:`compare_point_sets` on ``samples`` area-uniform points of each mesh.

    ``diag`` defaults to the ground-truth mesh's bounding-box diagonal. Both meshes are sampled
    with the same ``seed``, so identical meshes give identical samples: Chamfer 0, F-score 1.
    With ``camera_centre`` (3,) the same samples also give ``chamfer_l1_depth_scaled`` and
    ``depth_scale`` (:func:`depth_scaled_chamfer`).
    """
    diag = bbox_diagonal(gt_vertices) if diag is None else float(diag)
    pp, pn = sample_surface(pred_vertices, pred_faces, samples, seed)
    gp, gn = sample_surface(gt_vertices, gt_faces, samples, seed)
    out = compare_point_sets(pp, pn, gp, gn, diag, threshold)
    out["diag"] = diag
    if camera_centre is not None:
        out["chamfer_l1_depth_scaled"], out["depth_scale"] = depth_scaled_chamfer(
            pp, gp, camera_centre, diag, seed=seed)
    return out


def depth_scaled_chamfer(pred_points: np.ndarray, gt_points: np.ndarray, camera_centre: np.ndarray,
                         diag: float, low: float = 0.8, high: float = 1.25, step: float = 0.01,
                         search_points: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """Chamfer-L1 after the best uniform scaling of the prediction about the camera centre.

    One fixed camera cannot tell a larger object farther away from a smaller one nearer: the
    scaling is invisible from that camera. Plain Chamfer mixes this depth-scale gauge with the
    shape error; this figure takes the gauge out (a diagnostic beside Chamfer, not instead).

    Args:
        pred_points, gt_points: (N, 3), (M, 3) surface samples in the ground-truth world.
        camera_centre: (3,) the input camera's centre in that world.
        diag: the ground truth's bounding-box diagonal.
        low, high, step: the scales searched (a grid, then a ternary search around its best,
            on ``search_points`` samples of each set); the best one is scored on all samples.

    Returns:
        (chamfer_l1 / diag at the best scale, that scale).
    """
    from scipy.spatial import cKDTree

    if len(pred_points) == 0 or len(gt_points) == 0:
        return float("inf"), 1.0
    rng = np.random.default_rng(seed)
    centre = np.asarray(camera_centre, np.float64)

    def subset(points: np.ndarray) -> np.ndarray:
        if len(points) <= search_points:
            return points
        return points[rng.choice(len(points), search_points, replace=False)]

    def score(pred: np.ndarray, truth: np.ndarray, truth_tree, scale: float) -> float:
        scaled = centre + (pred - centre) * scale
        accuracy = truth_tree.query(scaled)[0].mean()
        completeness = cKDTree(scaled).query(truth)[0].mean()
        return 0.5 * (accuracy + completeness) / diag

    pred_all, gt_all = np.asarray(pred_points, np.float64), np.asarray(gt_points, np.float64)
    pred_s, gt_s = subset(pred_all), subset(gt_all)
    tree_s = cKDTree(gt_s)
    scales = np.arange(low, high + step / 2, step)
    best = float(scales[int(np.argmin([score(pred_s, gt_s, tree_s, s) for s in scales]))])
    # Then a ternary search within one grid step either side (the error is smooth there).
    lo, hi = best - step, best + step
    for _ in range(12):
        a, b = lo + (hi - lo) / 3, hi - (hi - lo) / 3
        if score(pred_s, gt_s, tree_s, a) < score(pred_s, gt_s, tree_s, b):
            hi = b
        else:
            lo = a
    best = 0.5 * (lo + hi)
    return float(score(pred_all, gt_all, cKDTree(gt_all), best)), best


def temporal_jitter(vertices: np.ndarray, diag: float) -> dict:
    """Frame-to-frame jitter of a fixed-topology vertex sequence.

    The jitter of interior frame t is the mean over vertices of the second difference
    ``|x[t+1] - 2 x[t] + x[t-1]|`` (an acceleration: zero for motion at constant velocity), divided
    by ``diag``. Compare a reconstruction's value with the ground truth's own (its motion is
    smooth but not uniform).

    Args:
        vertices: (F, V, 3) positions at consecutive, evenly spaced frames (F >= 3).
    Returns:
        ``{"mean": float, "per_frame": [F-2 floats for frames 1..F-2], "velocity_mean": float}``
        with ``velocity_mean`` the mean first difference / diag, for scale.
    """
    v = np.asarray(vertices, np.float64)
    if v.ndim != 3 or v.shape[-1] != 3:
        raise ValueError(f"vertices: expected (F, V, 3), got {v.shape}")
    if v.shape[0] < 3:
        raise ValueError(f"vertices: jitter needs at least 3 frames, got {v.shape[0]}")
    accel = np.linalg.norm(v[2:] - 2 * v[1:-1] + v[:-2], axis=-1).mean(axis=1) / diag
    velocity = np.linalg.norm(v[1:] - v[:-1], axis=-1).mean() / diag
    return {"mean": float(accel.mean()), "per_frame": accel.tolist(), "velocity_mean": float(velocity)}
