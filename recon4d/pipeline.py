"""One input, end to end: fit + export + eval into one run directory.

This is what ``recon4d fit``, ``recon4d export`` and ``recon4d eval`` do one after the other,
packaged as one function so the batch runner (:mod:`recon4d.batch`) can run it per manifest row
in a worker process or a Ray task. Heavy imports stay inside the function.
"""

from __future__ import annotations

import time
from pathlib import Path


def run_job(input_path: str | Path, run_dir: str | Path, overrides: dict | None = None, *,
            export_options=None, eval_options=None) -> dict:
    """Fit ``input_path`` into ``run_dir``, export it and evaluate it.

    Resumes from the run's latest checkpoint when there is one (a re-run after a crash or a
    timeout continues instead of starting over).

    Args:
        input_path: video, GIF, frame folder, transforms.json or dataset directory.
        run_dir: the run directory to create or resume.
        overrides: optional ``preset`` (fit preset name), ``resolution`` (side of the square
            ingested frames, pixels: ``IngestOptions.resolution``), ``formats`` (export formats,
            default: the exporter's, ``glb-skin`` and ``video``), ``gt`` (ground-truth folder for
            evaluation), ``depth`` / ``depth_kind`` (depth maps for ingest: ``IngestOptions``),
            ``time_budget`` (minutes the fit may take: ``recon4d fit --time-budget``).
        export_options: :class:`recon4d.export.exporter.ExportOptions` (default: the exporter's).
        eval_options: :class:`recon4d.eval.evaluate.EvalOptions` (default: the published protocol).

    Returns:
        ``{"metrics": headline figures, "outputs": [checkpoint, exported files, config.json,
        metrics.json], "exports": what the exporter returned}``. The headline figures are flat
        (one summary column each): the fit's scalars as ``fit_*``, the evaluation summary
        (``psnr_heldout``, ``ssim_heldout``, ...; geometry figures with ground truth) and the
        seconds of each stage as ``seconds_fit`` / ``seconds_export`` / ``seconds_eval``; all
        details stay in metrics.json. The batch runner records the outputs' sizes to decide
        later whether the job is still finished.

    Raises:
        UserError: the input is missing or unusable (the batch reports it and never retries it).
    """
    from recon4d.errors import UserError
    from recon4d.eval import evaluate_run
    from recon4d.export.exporter import DEFAULT_FORMATS, export_run
    from recon4d.rundir import RunDir
    from recon4d.train import fit
    from recon4d.utils.checkpoint import latest_checkpoint

    overrides = dict(overrides or {})
    input_path = Path(input_path)
    if not input_path.exists():
        raise UserError(f"input '{input_path}' does not exist: fix the path in the manifest")
    run = RunDir(run_dir)
    resume = latest_checkpoint(run.checkpoints) is not None
    ingest_options = None
    ingest_keys = {"resolution": int, "depth": Path, "depth_kind": str}
    if any(overrides.get(key) for key in ingest_keys):
        from recon4d.data.options import IngestOptions

        ingest_options = IngestOptions(**{key: cast(overrides[key]) for key, cast in
                                          ingest_keys.items() if overrides.get(key)})
    seconds = {}
    start = time.monotonic()
    # On resume fit reuses the run's recorded config; the batch wipes a run whose row changed.
    fit_overrides = ({"time_budget_s": 60.0 * float(overrides["time_budget"])}
                     if overrides.get("time_budget") else None)
    fit(input_path, run.root, preset=overrides.get("preset"), resume=resume,
        ingest_options=ingest_options, overrides=fit_overrides)
    seconds["seconds_fit"] = time.monotonic() - start

    start = time.monotonic()
    formats = list(overrides.get("formats") or DEFAULT_FORMATS)
    exports = export_run(run.root, formats, export_options)
    seconds["seconds_export"] = time.monotonic() - start

    start = time.monotonic()
    evaluation = evaluate_run(run.root, gt_dir=overrides.get("gt"), options=eval_options)
    seconds["seconds_eval"] = time.monotonic() - start

    checkpoint = latest_checkpoint(run.checkpoints)
    if checkpoint is None:
        raise RuntimeError(f"fit finished without a checkpoint in {run.checkpoints}")
    fit_summary = run.read_metrics().get("fit") or {}
    metrics = {(k if k.startswith("fit_") else f"fit_{k}"): v for k, v in fit_summary.items()
               if _is_scalar(v)}
    metrics.update({k: v for k, v in (evaluation.get("summary") or {}).items() if _is_scalar(v)})
    metrics.update({k: round(v, 2) for k, v in seconds.items()})
    outputs = _files_inside(run.root, exports) + [checkpoint, run.config_path, run.metrics_path]
    return {"metrics": metrics, "outputs": [str(p) for p in outputs], "exports": exports}


def _is_scalar(value) -> bool:
    return value is None or isinstance(value, (int, float, str, bool))


def _files_inside(root: Path, exports) -> list[Path]:
    """Existing files named in the exporter's result that lie inside the run directory."""
    root = root.resolve()
    files = []
    for item in _paths(exports):
        path = Path(item)
        path = (path if path.is_absolute() else root / path).resolve()
        if path.is_file() and path.is_relative_to(root):
            files.append(path)
    return files


def _paths(value) -> list[str]:
    """Every path-like leaf of the exporter's (possibly nested) result."""
    if isinstance(value, dict):
        return [p for v in value.values() for p in _paths(v)]
    if isinstance(value, (list, tuple)):
        return [p for v in value for p in _paths(v)]
    if isinstance(value, (str, Path)):
        return [str(value)]
    return []
