"""``recon4d demo``: the whole pipeline on the built-in default scene, no download needed.

Generates the synthetic default scene (with ground truth), fits it, exports the skinned GLB and
the videos, evaluates against the ground truth, and prints where everything is.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional


@dataclass
class Config:
    """Run ingest -> fit -> export -> eval on the built-in default scene and print the outputs."""

    out: Path = Path("runs/demo")
    """Folder for the demo: the scene dataset goes to OUT/scene, the run to OUT/run."""
    preset: Optional[str] = None
    """Fit preset (default: cpu-fast without a GPU, gpu-quality with one)."""
    backend: str = "auto"
    """Renderer backend: auto, native, reference or gsplat."""
    steps: Optional[int] = None
    """Override the preset's number of fit steps (fewer for a quicker, rougher demo)."""
    overwrite: bool = False
    """Replace an existing demo folder instead of stopping."""


def run(config: Config) -> int:
    import shutil
    import time

    from recon4d.errors import UserError
    from recon4d.utils.console import info
    from recon4d.utils.output_location import require_writable_output

    out = Path(config.out)
    if config.steps is not None and config.steps < 1:
        raise UserError(f"--steps must be at least 1, got {config.steps}")
    from recon4d.render import require_backend

    require_backend(config.backend, "cpu")  # the export and the evaluation render on the CPU
    require_writable_output(out)
    if out.exists():
        if not config.overwrite:
            raise UserError(f"demo folder '{out}' already exists: pass --overwrite or choose another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    from recon4d.scenes import make_scene

    start = time.monotonic()
    info("demo 1/4: generating the built-in default scene (synthetic, with ground truth)")
    scene_dir = make_scene("default", out / "scene")

    info("demo 2/4: fitting dynamic Gaussian surfels")
    from recon4d.train import fit

    overrides = {"backend": config.backend}
    if config.steps is not None:
        overrides["full.steps"] = int(config.steps)
    run_dir = Path(fit(scene_dir, out / "run", preset=config.preset, overrides=overrides))

    info("demo 3/4: exporting the skinned GLB and the videos")
    from recon4d.export.exporter import export_run

    written = export_run(run_dir, ["glb-skin", "video"])

    info("demo 4/4: evaluating against the ground truth")
    from recon4d.eval import evaluate_run

    from recon4d.eval.evaluate import EvalOptions

    evaluation = evaluate_run(run_dir, gt_dir=scene_dir, options=EvalOptions(backend=config.backend))
    metrics = evaluation.get("summary", {})
    elapsed = time.monotonic() - start

    def show(value: object) -> str:
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    print(f"\nrecon4d demo finished in {elapsed / 60:.1f} min")
    print(f"  run directory : {run_dir}")
    for name, path in sorted(_flatten(written)):
        print(f"  {name:<14}: {path}")
    print(f"  metrics       : {run_dir / 'metrics.json'}")
    labels = {"psnr_heldout": "held-out PSNR (dB)", "ssim_heldout": "held-out SSIM",
              "psnr_heldout_interp_baseline": "held-out, flow interp.",
              "psnr_novel": "novel-view PSNR (dB)", "chamfer_l1": "Chamfer-L1 (/ diag)",
              "chamfer_l1_depth_scaled": "Chamfer, depth-scaled",
              "normal_consistency": "normal consistency", "fscore": "F-score @1% diag"}
    for key, label in labels.items():
        if metrics.get(key) is not None:
            print(f"    {label:<22} {show(metrics[key])}")
    print(f"  view it       : recon4d view {run_dir}")
    return 0


def _flatten(written: dict, prefix: str = "") -> list[tuple[str, str]]:
    items = []
    for key, value in written.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            items += _flatten(value, prefix=f"{name}.")
        elif isinstance(value, (list, tuple)):
            if value:
                items.append((name, f"{value[0]} (+{len(value) - 1} more)" if len(value) > 1 else str(value[0])))
        else:
            items.append((name, str(value)))
    return items
