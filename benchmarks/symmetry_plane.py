"""How far off the symmetry term's mirror plane comes out from imperfect depth maps.

One command::

    .venv/bin/python benchmarks/symmetry_plane.py            # ~2 minutes on 2 CPU cores

Makes the default scene (128 px, its first frames) in a temporary folder, takes the ground-truth
mirror plane from the whole mesh (brute force over upright planes, every side of it), and for
each map kind (``depth``: random scale; ``disparity``: random affine of inverse depth, as
``recon4d.scenes.oracle`` makes them) and each degradation (exact; blurred by 1.5 px so the
silhouette mixes with the background, times 1 + a smooth random field of 3 % or 10 %), runs the
fit's plane search on one frame's map (2 px border ignored, as the fit does) and reports the
angle between the found and the true direction. Prints a table, writes
``benchmarks/results/symmetry_plane.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import subprocess
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEGRADATIONS = {"exact": 0.0, "blur 1.5 px + 3 %": 0.03, "blur 1.5 px + 10 %": 0.10}


def degrade(values: np.ndarray, mask: np.ndarray, noise: float, rng, edge_px: int) -> np.ndarray:
    """(H, W) map -> the map an estimator might give: blurred across the silhouette and off by a
    smooth relative error; 0 (unknown) within ``edge_px`` of the silhouette, as the fit does."""
    import cv2

    from recon4d.data.depth import inner_masks

    out = values.astype(np.float64)
    if noise > 0:
        out = cv2.GaussianBlur(out, (0, 0), 1.5)
        field = cv2.resize(rng.normal(size=(4, 4)), out.shape[::-1], interpolation=cv2.INTER_CUBIC)
        out = out * (1 + noise * field)
    return out * inner_masks(mask[None], edge_px)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=2, help="frames of the scene measured")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "symmetry_plane.json")
    args = parser.parse_args()

    from recon4d.data.dataset import load_dataset
    from recon4d.model.symmetry import mirror_plane_from_map, mirror_plane_of_points
    from recon4d.train.config import FitConfig
    from recon4d.scenes import load_ground_truth, make_scene
    from recon4d.scenes.oracle import oracle_maps

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        scene = make_scene("default", Path(tmp) / "scene", resolution=128, frames=max(args.frames, 2))
        data, gt = load_dataset(scene), load_ground_truth(scene)
        rng = np.random.default_rng(args.seed)
        for kind in ("depth", "disparity"):
            maps = oracle_maps(gt.depth[:args.frames], kind, seed=args.seed)
            for f in range(args.frames):
                truth = np.array(mirror_plane_of_points(gt.vertices[f].astype(np.float64)).normal)
                mask = data.masks[f]
                for label, noise in DEGRADATIONS.items():
                    values = degrade(maps[f], mask, noise, rng, FitConfig().depth_edge_px)
                    plane = mirror_plane_from_map(values, kind, mask, gt.viewmats[f], gt.Ks[f],
                                                  seed=args.seed)
                    angle = None if plane is None else math.degrees(
                        math.acos(min(1.0, abs(float(np.dot(plane.normal, truth))))))
                    rows.append({"kind": kind, "frame": f, "map": label, "angle_deg": angle})
                    print(f"{kind:9s} frame {f}  {label:18s}  "
                          f"{'no plane' if angle is None else f'{angle:5.1f} deg'}", flush=True)

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                            text=True).stdout.strip()
    result = {"commit": commit, "machine": platform.platform(), "seed": args.seed,
              "command": "python benchmarks/symmetry_plane.py", "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = args.out.with_suffix(".json.tmp")
    tmp_out.write_text(json.dumps(result, indent=2))
    tmp_out.replace(args.out)
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
