"""Export fidelity: animated mesh (skin / morph) vs per-frame TSDF meshes against ground truth.

Usage::

    python benchmarks/export_fidelity.py RUN_DIR [RUN_DIR ...]   # runs fitted on scenes with gt
    python benchmarks/export_fidelity.py --double                # the analytic capsule double

A run's ground truth is RUN_DIR/dataset/gt (scenes made by 'recon4d scenes make'). Prints a
table and writes benchmarks/results/export_fidelity.json. Target (issue 7): the animated mesh's
Chamfer-L1 within 1.5x of the per-frame TSDF meshes'.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _double():
    sys.path.insert(0, str(ROOT / "tests"))
    import torch
    import trimesh
    from scene_doubles import CapsuleScene

    scene = CapsuleScene(num_surfels=6000, num_frames=8)
    mesh = trimesh.creation.capsule(height=2 * scene.half_length, radius=scene.radius,
                                    count=[48, 48])
    mesh.apply_transform(trimesh.transformations.rotation_matrix(np.pi / 2, [0, 1, 0]))
    pts = torch.tensor(mesh.vertices, dtype=torch.float32)
    gt = np.stack([scene.warp_points(pts, float(t)).numpy() for t in scene.frame_times])
    return "capsule-double", scene, gt, np.asarray(mesh.faces)


def _run(run_dir: Path):
    from recon4d.model import load_run
    from recon4d.scenes import load_ground_truth

    gt = load_ground_truth(run_dir / "dataset")
    return run_dir.name, load_run(run_dir), gt.vertices, gt.faces


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="*", type=Path)
    parser.add_argument("--double", action="store_true", help="use the analytic capsule double")
    parser.add_argument("--frames", type=int, default=4, help="frames compared per scene")
    parser.add_argument("--faces", type=int, default=20000)
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--views", type=int, default=24)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "export_fidelity.json")
    args = parser.parse_args()
    from recon4d.export.fidelity import export_fidelity
    from recon4d.export.mesh_seq import FusionSettings

    cases = ([_double()] if args.double else []) + [_run(r) for r in args.runs]
    if not cases:
        parser.error("give RUN_DIRs or --double")
    settings = FusionSettings(resolution=args.resolution, views=args.views,
                              image_size=args.image_size)
    results = []
    for name, scene, gt_vertices, gt_faces in cases:
        count = len(gt_vertices)
        frames = sorted(set(np.linspace(0, count - 1, min(args.frames, count)).round().astype(int).tolist()))
        start = time.perf_counter()
        out = export_fidelity(scene, gt_vertices, gt_faces, frames, args.faces, settings)
        out.update(name=name, seconds=time.perf_counter() - start)
        results.append(out)
    header = f"{'scene':<20} {'skin CD':>9} {'morph CD':>9} {'TSDF CD':>9} {'skin/TSDF':>9} {'skin err mean/max':>18}"
    print(header)
    for r in results:
        m, e = r["mean_chamfer_l1"], r["skin_error"]
        print(f"{r['name']:<20} {100 * m['skin']:>8.3f}% {100 * m['morph']:>8.3f}% {100 * m['tsdf']:>8.3f}% "
              f"{r['skin_vs_tsdf_ratio']:>9.2f} {100 * e['mean_rel']:>8.3f}%/{100 * e['max_rel']:.3f}%")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    from recon4d.utils.atomic import atomic_write_json

    atomic_write_json(args.out, {"machine": platform.platform(), "processor": platform.processor(),
                                 "settings": vars(args) | {"out": str(args.out), "runs": [str(r) for r in args.runs]},
                                 "results": results})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
