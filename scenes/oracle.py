"""User depth maps made from a scene's ground truth, to measure what the depth prior can do.

A real user's maps come from an estimator run elsewhere; here the scene's exact depth (from the
independent renderer) stands in for one, degraded the way estimators are wrong in bulk: a
different unknown scale per frame (metric estimators, ``kind="depth"``) or a different unknown
scale and offset of inverse depth per frame (relative estimators, ``kind="disparity"``).
Figures from these maps are upper bounds for what a real estimator gives, and are labelled so.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def oracle_maps(depth: np.ndarray, kind: str, seed: int = 0) -> np.ndarray:
    """(F, H, W) ground-truth camera depth (0 = background) -> maps of ``kind`` with a random
    per-frame scale (depth: x U(0.5, 2)) or affine (disparity: U(5, 20) / depth + U(0.5, 3))."""
    from recon4d.data.options import DEPTH_KINDS

    if kind not in DEPTH_KINDS:
        raise ValueError(f"kind: expected one of {DEPTH_KINDS}, got {kind!r}")
    rng = np.random.default_rng(seed)
    out = np.zeros_like(depth, dtype=np.float32)
    for i, frame in enumerate(np.asarray(depth, np.float64)):
        known = frame > 0
        if kind == "depth":
            out[i][known] = frame[known] * rng.uniform(0.5, 2.0)
        else:
            out[i][known] = rng.uniform(5.0, 20.0) / frame[known] + rng.uniform(0.5, 3.0)
    return out


def attach_oracle_depth(scene_dir: str | Path, kind: str, seed: int = 0) -> Path:
    """Give the scene dataset at ``scene_dir`` maps made from its own ground-truth depth."""
    from recon4d.data.depth import attach_depth

    scene_dir = Path(scene_dir)
    with np.load(scene_dir / "gt" / "depth.npz") as data:
        truth = data["depth"]
    return attach_depth(scene_dir, oracle_maps(truth, kind, seed), kind,
                        source=f"oracle: ground-truth depth, random per-frame "
                               f"{'scale' if kind == 'depth' else 'affine of inverse depth'}")
