"""How faithful the exported animated mesh is: Chamfer-L1 against ground truth, next to the
per-frame TSDF meshes' (the fidelity reference), plus the skinning error against the warp.

Used by ``benchmarks/export_fidelity.py``; the issue's target is that the fixed-topology
animated mesh stays within 1.5x of the per-frame TSDF meshes' Chamfer-L1.
"""

from __future__ import annotations

import numpy as np

from .animated_mesh import build_animated_mesh, canonical_mesh, linear_blend
from .mesh_seq import FusionSettings, surfels_to_mesh


def export_fidelity(scene, gt_vertices: np.ndarray, gt_faces: np.ndarray, frames: list[int],
                    faces: int = 20000, settings: FusionSettings | None = None,
                    samples: int = 50_000, diag: float | None = None) -> dict:
    """Per-frame Chamfer-L1 (normalised by ``diag``, default: the ground truth's bbox diagonal
    over all frames) of the skinned mesh (what the skin GLB plays), the morph mesh (exact warp)
    and the per-frame TSDF mesh, against ground-truth meshes, all in the scene's world frame.

    Args:
        scene: a DynamicScene.
        gt_vertices: (F, V, 3) ground-truth vertices per input frame; gt_faces: (M, 3).
        frames: which frame indices to compare (TSDF per frame is the slow part).
    """
    from recon4d.eval.geometry import bbox_diagonal, compare_meshes

    settings = settings or FusionSettings()
    diag = bbox_diagonal(gt_vertices) if diag is None else float(diag)
    canonical = canonical_mesh(scene, faces, settings)
    animated = build_animated_mesh(scene, canonical)
    skinned = linear_blend(animated.vertices, animated.joints, animated.weights,
                           animated.bone_transforms)
    times = scene.frame_times.detach().cpu().numpy()
    rows = []
    for f in frames:
        tsdf = surfels_to_mesh(scene.surfels_at(float(times[f])), settings)
        row = {"frame": int(f)}
        for name, verts, tris in (("skin", skinned[f], animated.faces),
                                  ("morph", animated.frames[f], animated.faces),
                                  ("tsdf", np.asarray(tsdf.vertices), np.asarray(tsdf.faces))):
            metrics = compare_meshes(verts, tris, gt_vertices[f], gt_faces, diag=diag,
                                     samples=samples)
            row[name] = {k: metrics[k] for k in ("chamfer_l1", "fscore", "normal_consistency")}
        rows.append(row)
    mean = {name: float(np.mean([r[name]["chamfer_l1"] for r in rows]))
            for name in ("skin", "morph", "tsdf")}
    return {"frames": rows, "mean_chamfer_l1": mean,
            "skin_vs_tsdf_ratio": mean["skin"] / max(mean["tsdf"], 1e-12),
            "morph_vs_tsdf_ratio": mean["morph"] / max(mean["tsdf"], 1e-12),
            "skin_error": animated.stats.get("skin_error"),
            "skin_error_scene_bones": animated.stats.get("skin_error_scene_bones"),
            "mesh": {"vertices": len(animated.vertices), "faces": len(animated.faces)},
            "diag": diag}
