"""``recon4d.train.fit``: the Python entry point of a fit (the CLI calls it too)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Callable

from recon4d.errors import UserError


def _prepare_dataset(input_or_dataset: str | Path, run_dataset: Path, ingest_options=None) -> None:
    """Copy a dataset dir into the run, or ingest a raw input straight into it."""
    from recon4d.data.dataset import is_dataset_dir
    from recon4d.utils.atomic import atomic_directory

    source = Path(input_or_dataset)
    if not source.exists():
        raise UserError(f"input '{source}' does not exist: check the path")
    if is_dataset_dir(source):
        if source.resolve() == run_dataset.resolve():
            return
        with atomic_directory(run_dataset, overwrite=True) as tmp:
            shutil.copytree(source, tmp, dirs_exist_ok=True)
        return
    try:
        from recon4d.data.ingest import ensure_dataset
        from recon4d.data.options import IngestOptions
    except ImportError as exc:
        raise UserError(f"'{source}' is not a recon4d dataset and ingest is unavailable here: run "
                        "'recon4d ingest' first and pass the dataset folder") from exc
    options = ingest_options if ingest_options is not None else IngestOptions()
    ensure_dataset(source, run_dataset, options)


def fit(input_or_dataset: str | Path, run_dir: str | Path, config=None, preset: str | None = None,
        resume: bool = False, on_step: Callable[[int, Any, dict], None] | None = None,
        overrides: dict[str, Any] | None = None, ingest_options=None) -> Path:
    """Fit dynamic Gaussian surfels to a video (or a dataset directory); returns the run dir.

    Args:
        input_or_dataset: a dataset directory (``recon4d ingest`` output) or a raw input (video,
            GIF, frame folder, transforms.json), ingested into ``RUN_DIR/dataset``.
        run_dir: the run directory to write (config.json, dataset/, checkpoints/, logs/).
        config: a :class:`recon4d.train.config.FitConfig` (default: the preset's).
        preset: preset name when ``config`` is None (default: gpu-quality with CUDA, else cpu-fast).
        resume: continue from the run's latest checkpoint with its recorded config.
        on_step: called as ``on_step(step, model, metrics)`` after every step (live viewer).
        overrides: dotted settings applied on top, e.g. ``{"full.steps": 300}``.
    """
    from recon4d.data.dataset import load_dataset
    from recon4d.rundir import RunDir
    from recon4d.train.config import (FitConfig, apply_overrides, config_from_dict, config_problem,
                                      default_preset_name, resolve_for_dataset)
    from recon4d.train.config import preset as make_preset
    from recon4d.train.trainer import ResumeMismatch, Trainer
    from recon4d.utils import console
    from recon4d.utils.atomic import atomic_write_bytes

    run = RunDir(run_dir)
    if resume and run.config_path.is_file():
        try:
            config = config_from_dict(run.read_config())
        except ValueError as exc:
            raise UserError(f"{run.config_path} cannot be resumed ({exc}): fit again without "
                            "--resume") from exc
    else:
        if resume:
            console.info(f"nothing to resume in '{run.root}' (no config.json): starting a new fit")
        resume = False
        if config is None:
            try:
                config = make_preset(preset or default_preset_name())
            except ValueError as exc:
                raise UserError(f"{exc}: pick one with --preset") from exc
        elif not isinstance(config, FitConfig):
            raise UserError("config must be a recon4d.train.config.FitConfig")
    if overrides:
        try:
            config = apply_overrides(config, overrides)
        except ValueError as exc:
            raise UserError(f"{exc}: check the option name") from exc
    problem = config_problem(config)
    if problem is not None:
        raise UserError(f"{problem}: fix the option")
    from recon4d.render import require_backend
    from recon4d.train.trainer import resolve_device

    device = resolve_device(config.device)
    require_backend(config.backend, device)
    if config.preset == "gpu-quality" and device.type == "cpu" and not resume:
        # Said before the ingest: the preset's 5500+ steps of up to 150k surfels take hours on a
        # laptop CPU (the progress line's estimate would say so only after the first steps).
        console.warn("the gpu-quality preset is running on the CPU: expect hours, not minutes "
                     "(--preset cpu-fast is the CPU preset; gpu-quality is meant for a CUDA GPU)")
    from recon4d.utils.checkpoint import latest_checkpoint

    if not resume and latest_checkpoint(run.checkpoints) is not None:
        raise UserError(f"'{run.root}' already holds a fit: pass --resume to continue it or choose "
                        "another --out")
    run.create()
    if not (resume and run.dataset.is_dir()):
        _prepare_dataset(input_or_dataset, run.dataset, ingest_options)
    dataset = load_dataset(run.dataset)
    config = resolve_for_dataset(config, dataset.width, dataset.height, dataset.num_frames)
    recorded = run.config_path.read_bytes() if resume else None
    run.write_config(config, kind="fit")
    try:
        Trainer(dataset, run, config, on_step=on_step).fit(resume=resume)
    except ResumeMismatch:
        # The settings given now never ran: the run keeps the ones its checkpoints were made
        # with, so a plain --resume still works.
        atomic_write_bytes(run.config_path, recorded)
        raise
    return run.root
