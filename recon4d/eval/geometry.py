"""Geometry metrics on numpy arrays: surface sampling, Chamfer-L1, normal consistency,
F-score and temporal jitter (docs/design.md §6).

Distances are Euclidean in scene units, reported *normalised* by the ground truth's
bounding-box diagonal ``diag`` (so 0.01 = 1% of the object's size). Mesh Chamfer takes points
sampled uniformly on each surface (not vertices) and their exact distance to the *other
surface* (closest point on its triangles), so it does not depend on tessellation. Distances to
the other mesh's nearest *sample* instead carried a floor of about 0.18 % of the diagonal (the
samples' spacing) that two differently meshed copies of one surface scored.
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
    points, normals, _ = _sample_with_faces(np.asarray(vertices, np.float64),
                                            np.asarray(faces, np.int64), count, seed)
    return points, normals


def _triangle_cross(v: np.ndarray, f: np.ndarray) -> np.ndarray:
    """(M, 3) (b - a) x (c - a) of each triangle: its normal times twice its area."""
    return np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])


def _unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.maximum(np.linalg.norm(vectors, axis=-1, keepdims=True), 1e-30)


def closest_points_on_triangles(p: np.ndarray, a: np.ndarray, b: np.ndarray, c: np.ndarray
                                ) -> np.ndarray:
    """(..., 3) the point of triangle (a, b, c) nearest to p, all (..., 3), broadcast.

    Voronoi regions of the triangle (three vertices, three edges, the face), from the dot
    products of p's offsets with the two edge vectors at a; a region found earlier in the
    order vertex a, b, edge ab, vertex c, edge ac, edge bc, face wins, so the regions are
    applied in reverse, each overriding the ones after it.
    """
    ab, ac = b - a, c - a
    ap, bp, cp = p - a, p - b, p - c
    d1, d2 = (ab * ap).sum(-1), (ac * ap).sum(-1)
    d3, d4 = (ab * bp).sum(-1), (ac * bp).sum(-1)
    d5, d6 = (ab * cp).sum(-1), (ac * cp).sum(-1)
    va, vb, vc = d3 * d6 - d5 * d4, d5 * d2 - d1 * d6, d1 * d4 - d3 * d2

    def ratio(num, den):
        return np.divide(num, den, out=np.zeros_like(num), where=np.abs(den) > 1e-300)[..., None]

    total = va + vb + vc
    out = a + ab * ratio(vb, total) + ac * ratio(vc, total)                       # face
    bc_num, bc_den = d4 - d3, (d4 - d3) + (d5 - d6)
    regions = [
        ((va <= 0) & (d4 - d3 >= 0) & (d5 - d6 >= 0), b + (c - b) * ratio(bc_num, bc_den)),
        ((vb <= 0) & (d2 >= 0) & (d6 <= 0), a + ac * ratio(d2, d2 - d6)),          # edge ac
        ((d6 >= 0) & (d5 <= d6), np.broadcast_to(c, out.shape)),                   # vertex c
        ((vc <= 0) & (d1 >= 0) & (d3 <= 0), a + ab * ratio(d1, d1 - d3)),          # edge ab
        ((d3 >= 0) & (d4 <= d3), np.broadcast_to(b, out.shape)),                   # vertex b
        ((d1 <= 0) & (d2 <= 0), np.broadcast_to(a, out.shape)),                    # vertex a
    ]
    for inside, point in regions:
        out = np.where(inside[..., None], point, out)
    # A degenerate (zero-area) triangle can leave no region: its first vertex stands in.
    return np.where(np.isfinite(out), out, np.broadcast_to(a, out.shape))


class MeshSurface:
    """A triangle mesh ready for exact point-to-surface distances.

    Candidate triangles for a query are those of its ``candidates`` nearest points among every
    face's centroid and ``samples`` area-uniform points (so large and small triangles are both
    represented); the distance is the exact one to the nearest of those triangles.
    """

    def __init__(self, vertices: np.ndarray, faces: np.ndarray, samples: int = 50_000,
                 seed: int = 0, candidates: int = 16):
        from scipy.spatial import cKDTree

        self.vertices = np.asarray(vertices, np.float64)
        self.faces = np.asarray(faces, np.int64)
        self.normals = _unit(_triangle_cross(self.vertices, self.faces))
        points, _, tri = _sample_with_faces(self.vertices, self.faces, samples, seed)
        centroids = self.vertices[self.faces].mean(1)
        self._points = np.concatenate([centroids, points])
        self._tri = np.concatenate([np.arange(len(self.faces)), tri])
        self._tree = cKDTree(self._points)
        self._k = min(candidates, len(self._points))

    def scaled_about(self, centre: np.ndarray, scale: float) -> "MeshSurface":
        """The same surface scaled by ``scale`` > 0 about ``centre`` (3,): its candidate points
        scale with it (a uniform scaling keeps them area-uniform), only the tree is rebuilt."""
        from scipy.spatial import cKDTree

        out = object.__new__(MeshSurface)
        out.vertices = centre + (self.vertices - centre) * scale
        out.faces, out.normals, out._tri, out._k = self.faces, self.normals, self._tri, self._k
        out._points = centre + (self._points - centre) * scale
        out._tree = cKDTree(out._points)
        return out

    def distance(self, query: np.ndarray, chunk: int = 20_000) -> tuple[np.ndarray, np.ndarray]:
        """(Q,) distances of ``query`` (Q, 3) to the surface and (Q, 3) the unit normals of the
        triangles where they are reached."""
        query = np.asarray(query, np.float64)
        dist = np.empty(len(query))
        normals = np.empty((len(query), 3))
        for start in range(0, len(query), chunk):
            q = query[start:start + chunk]
            _, idx = self._tree.query(q, k=self._k)
            cand = self._tri[idx.reshape(len(q), -1)]                            # (q, k)
            tri = self.vertices[self.faces[cand]]                                # (q, k, 3, 3)
            near = closest_points_on_triangles(q[:, None, :], tri[..., 0, :], tri[..., 1, :],
                                               tri[..., 2, :])
            d = np.linalg.norm(near - q[:, None, :], axis=-1)
            best = d.argmin(1)
            rows = np.arange(len(q))
            dist[start:start + chunk] = d[rows, best]
            normals[start:start + chunk] = self.normals[cand[rows, best]]
        return dist, normals


def _sample_with_faces(v: np.ndarray, f: np.ndarray, count: int, seed: int
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`sample_surface` plus (count,) the face index of each sample."""
    if len(f) == 0 or count <= 0:
        return np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0, np.int64)
    a, b, c = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]
    cross = _triangle_cross(v, f)
    area = 0.5 * np.linalg.norm(cross, axis=1)
    total = area.sum()
    if not np.isfinite(total) or total <= 0:
        return np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0, np.int64)
    rng = np.random.default_rng(seed)
    tri = rng.choice(len(f), size=count, p=area / total)
    # Uniform on a triangle: fold the unit square onto the simplex.
    r1, r2 = rng.random(count), rng.random(count)
    flip = r1 + r2 > 1
    r1[flip], r2[flip] = 1 - r1[flip], 1 - r2[flip]
    points = a[tri] + r1[:, None] * (b[tri] - a[tri]) + r2[:, None] * (c[tri] - a[tri])
    return points, _unit(cross[tri]), tri


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
    cosines = None
    if pred_normals is not None and gt_normals is not None:
        cosines = (np.abs((pred_normals * gt_normals[i_pred]).sum(1)),
                   np.abs((gt_normals * pred_normals[i_gt]).sum(1)))
    return _scores(d_pred / diag, d_gt / diag, cosines, threshold)


def _scores(d_pred: np.ndarray, d_gt: np.ndarray, cosines: tuple | None, threshold: float) -> dict:
    """The metrics from (N,) predicted-to-truth and (M,) truth-to-predicted distances (in
    diagonals) and, optionally, the two directions' |cos| between matched normals."""
    accuracy, completeness = float(d_pred.mean()), float(d_gt.mean())
    precision = float((d_pred <= threshold).mean())
    recall = float((d_gt <= threshold).mean())
    fscore = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
    consistency = None if cosines is None else float(0.5 * (cosines[0].mean() + cosines[1].mean()))
    return {"chamfer_l1": 0.5 * (accuracy + completeness), "accuracy": accuracy,
            "completeness": completeness, "precision": precision, "recall": recall,
            "fscore": float(fscore), "normal_consistency": consistency}


def _compare_to_surfaces(pred_points, pred_normals, gt_surface: MeshSurface, gt_points, gt_normals,
                         pred_surface: MeshSurface, diag: float, threshold: float) -> dict:
    """:func:`_scores` with each side's samples measured to the other side's surface."""
    d_pred, at_gt = gt_surface.distance(pred_points)
    d_gt, at_pred = pred_surface.distance(gt_points)
    cosines = (np.abs((pred_normals * at_gt).sum(1)), np.abs((gt_normals * at_pred).sum(1)))
    return _scores(d_pred / diag, d_gt / diag, cosines, threshold)


def compare_meshes(pred_vertices: np.ndarray, pred_faces: np.ndarray, gt_vertices: np.ndarray,
                   gt_faces: np.ndarray, diag: float | None = None, samples: int = 100_000,
                   threshold: float = 0.01, seed: int = 0,
                   camera_centre: np.ndarray | None = None) -> dict:
    """Chamfer-L1, normal consistency and F-score (the keys of :func:`compare_point_sets`)
    between two meshes: ``samples`` area-uniform points of each, measured to the other mesh's
    surface exactly (:class:`MeshSurface`), so two meshings of one surface score 0.

    ``diag`` defaults to the ground-truth mesh's bounding-box diagonal. The two meshes are
    sampled with different seeds (identical samples would hide a distance measured to samples).
    With ``camera_centre`` (3,) also ``chamfer_l1_depth_scaled`` and ``depth_scale``: the
    scaling about the camera that fits best (:func:`depth_scaled_chamfer` on the samples),
    scored the same exact way, and never above the unscaled figure (scale 1 is a candidate).
    """
    diag = bbox_diagonal(gt_vertices) if diag is None else float(diag)
    pv, pf = np.asarray(pred_vertices, np.float64), np.asarray(pred_faces, np.int64)
    gv, gf = np.asarray(gt_vertices, np.float64), np.asarray(gt_faces, np.int64)
    pp, pn = sample_surface(pv, pf, samples, seed)
    gp, gn = sample_surface(gv, gf, samples, seed + 1)
    if len(pp) == 0 or len(gp) == 0:
        out = compare_point_sets(pp, pn, gp, gn, diag, threshold)
        out["diag"] = diag
        if camera_centre is not None:
            out["chamfer_l1_depth_scaled"], out["depth_scale"] = float("inf"), 1.0
        return out
    gt_surface = MeshSurface(gv, gf, samples, seed + 3)
    pred_surface = MeshSurface(pv, pf, samples, seed + 2)
    out = _compare_to_surfaces(pp, pn, gt_surface, gp, gn, pred_surface, diag, threshold)
    out["diag"] = diag
    if camera_centre is not None:
        centre = np.asarray(camera_centre, np.float64)
        _, scale = depth_scaled_chamfer(pp, gp, centre, diag, seed=seed)
        scaled = _compare_to_surfaces(centre + (pp - centre) * scale, pn, gt_surface, gp, gn,
                                      pred_surface.scaled_about(centre, scale), diag, threshold)
        if scaled["chamfer_l1"] < out["chamfer_l1"]:
            out["chamfer_l1_depth_scaled"], out["depth_scale"] = scaled["chamfer_l1"], scale
        else:
            out["chamfer_l1_depth_scaled"], out["depth_scale"] = out["chamfer_l1"], 1.0
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
    lo, hi = max(low, best - step), min(high, best + step)  # the documented range holds
    for _ in range(12):
        a, b = lo + (hi - lo) / 3, hi - (hi - lo) / 3
        if score(pred_s, gt_s, tree_s, a) < score(pred_s, gt_s, tree_s, b):
            hi = b
        else:
            lo = a
    best = 0.5 * (lo + hi)
    return float(score(pred_all, gt_all, cKDTree(gt_all), best)), best


def vertex_areas(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """(V,) a third of the area of each vertex's triangles, summing to 1 (weights that make a
    mean over vertices a mean over the surface)."""
    v, f = np.asarray(vertices, np.float64), np.asarray(faces, np.int64)
    area = 0.5 * np.linalg.norm(_triangle_cross(v, f), axis=1)
    weights = np.zeros(len(v))
    for corner in range(3):
        np.add.at(weights, f[:, corner], area / 3)
    total = weights.sum()
    return weights / total if total > 0 else np.full(len(v), 1.0 / max(len(v), 1))


def temporal_jitter(vertices: np.ndarray, diag: float, faces: np.ndarray | None = None) -> dict:
    """Frame-to-frame jitter of a fixed-topology vertex sequence.

    The jitter of interior frame t is the mean over the surface of the second difference
    ``|x[t+1] - 2 x[t] + x[t-1]|`` (an acceleration: zero for motion at constant velocity), divided
    by ``diag``. Compare a reconstruction's value with the ground truth's own (its motion is
    smooth but not uniform).

    Args:
        vertices: (F, V, 3) positions at consecutive, evenly spaced frames (F >= 3).
        faces: (M, 3) the triangles: vertices are weighted by their share of the first frame's
            area, so a mesh refined where it moves fast does not count that motion more (a
            plain mean over vertices when None).
    Returns:
        ``{"mean": float, "per_frame": [F-2 floats for frames 1..F-2], "velocity_mean": float}``
        with ``velocity_mean`` the mean first difference / diag, for scale.
    """
    v = np.asarray(vertices, np.float64)
    if v.ndim != 3 or v.shape[-1] != 3:
        raise ValueError(f"vertices: expected (F, V, 3), got {v.shape}")
    if v.shape[0] < 3:
        raise ValueError(f"vertices: jitter needs at least 3 frames, got {v.shape[0]}")
    weights = (np.full(v.shape[1], 1.0 / v.shape[1]) if faces is None or len(faces) == 0
               else vertex_areas(v[0], faces))
    accel = np.linalg.norm(v[2:] - 2 * v[1:-1] + v[:-2], axis=-1) @ weights / diag
    velocity = float((np.linalg.norm(v[1:] - v[:-1], axis=-1) @ weights).mean()) / diag
    return {"mean": float(accel.mean()), "per_frame": accel.tolist(), "velocity_mean": velocity}
