"""``recon4d eval RUN_DIR [--gt SCENE_DIR]``: evaluate a fitted run."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import tyro


@dataclass
class Config:
    """Evaluate a fitted run (the protocol of docs/design.md §6).

    Held-out frames (index % 4 == 2) are rendered from the fitted input cameras over white and
    compared with the input (PSNR, SSIM, mask IoU). With ground truth (a scene from
    `recon4d scenes make`, found automatically when the run was fitted on one): novel-view
    PSNR/SSIM, per-frame mesh Chamfer-L1 / bbox diagonal, normal consistency, F-score at 1%, and
    the animated mesh's Chamfer and temporal jitter. Results are merged into RUN_DIR/metrics.json
    (key "eval"); plots go to RUN_DIR/renders/eval_metrics.png and eval_heldout.png.
    """

    run_dir: tyro.conf.Positional[Path]
    """The run directory of a `recon4d fit`."""

    gt: Optional[Path] = None
    """Scene directory with ground truth (default: the run's dataset's gt/ if it has one)."""

    backend: Literal["auto", "reference", "native", "gsplat"] = "auto"
    """Renderer backend."""

    geometry_frames: Literal["test", "all", "none"] = "test"
    """Frames whose meshes are compared with the ground truth."""

    samples: int = 50000
    """Surface samples per mesh for the geometry metrics."""

    mesh_resolution: int = 128
    """TSDF voxels along the object's longest side for the per-frame meshes."""

    mesh_views: int = 24
    """Virtual cameras fused per per-frame mesh."""

    mesh_image_size: int = 256
    """Side of each virtual view of the mesh fusion, pixels."""

    animated: bool = True
    """Also evaluate the fixed-topology animated mesh (Chamfer and temporal jitter)."""

    json: bool = False
    """Print the summary as JSON."""


def run(config: Config) -> int:
    from recon4d.errors import UserError
    from recon4d.eval.evaluate import EvalOptions, evaluate_run

    if config.samples < 100:
        raise UserError(f"--samples {config.samples} is too few: use at least 100")
    if config.mesh_resolution < 16 or config.mesh_views < 4 or config.mesh_image_size < 32:
        raise UserError("--mesh-resolution >= 16, --mesh-views >= 4 and --mesh-image-size >= 32 "
                        "are needed for a usable per-frame mesh: raise them")
    from recon4d.render import require_backend

    require_backend(config.backend, "cpu")  # evaluation renders on the CPU (evaluate.load_run)
    options = EvalOptions(backend=config.backend, geometry_frames=config.geometry_frames,
                          samples=config.samples, animated=config.animated,
                          mesh_kwargs={"resolution": config.mesh_resolution, "views": config.mesh_views,
                                       "image_size": config.mesh_image_size,
                                       "backend": config.backend})
    result = evaluate_run(config.run_dir, config.gt, options=options)
    summary = result["summary"]
    if config.json:
        import json

        print(json.dumps(summary, indent=2))
    else:
        width = max(len(k) for k in summary)
        for key, value in summary.items():
            print(f"{key:<{width}}  {'-' if value is None else f'{value:.4f}'}")
        print(f"metrics: {Path(config.run_dir) / 'metrics.json'}")
    return 0
