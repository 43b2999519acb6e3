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
    try:
        ensure_dataset(source, run_dataset, options)
    except UserError as exc:
        if "--masks" not in str(exc) and "--mask-source" not in str(exc):
            raise
        # Those are options of ingest, which fit does not take.
        raise UserError(f"{exc} (options of 'recon4d ingest {source} --out DATASET'; then "
                        "'recon4d fit DATASET')") from exc


def _check_run_location(source: Path, run, resume: bool) -> None:
    """Refuse, before anything is written, an --out that would mix the run (a RunDir) into
    other files: inside (or equal to) the input folder (the dataset's copy recursed into
    itself), a damaged run, or an existing folder with other files (a dataset, the current
    folder)."""
    if source.is_dir() and run.root.resolve().is_relative_to(source.resolve()):
        raise UserError(f"--out '{run.root}' lies inside the input folder '{source}': choose an "
                        "--out outside it")
    run.check_folders()
    if run.root.is_dir() and not (resume and run.config_path.is_file()):
        # A resumed run may hold what export, render or eval wrote beside it.
        others = sorted(entry.name for entry in run.root.iterdir()
                        if entry.name not in run.entry_names and not entry.name.startswith("."))
        if others:
            raise UserError(f"--out '{run.root}' already holds other files ({', '.join(others[:3])}"
                            f"{', ...' if len(others) > 3 else ''}) and is not a run: choose a new "
                            "or empty --out")


def _check_resumed_input(source: Path, run_dataset: Path) -> None:
    """A resume continues the run's own clip: refuse another input (it used to be ignored, or,
    with the run's dataset gone, ingested into the run, which then failed for good).

    Raw inputs are compared by the sha256 the run's manifest records; dataset folders by their
    manifests (the run's dataset is a copy of one).
    """
    from recon4d.data.dataset import is_dataset_dir
    from recon4d.data.ingest import input_sha256
    from recon4d.utils.atomic import read_json

    if not is_dataset_dir(run_dataset) or not source.exists():
        return
    if source.resolve() == run_dataset.resolve():
        return
    manifest = read_json(run_dataset / "manifest.json")
    recorded = manifest.get("source", {})
    try:
        if is_dataset_dir(source):
            theirs = read_json(source / "manifest.json")
            ours_sha, theirs_sha = recorded.get("sha256"), theirs.get("source", {}).get("sha256")
            same = ours_sha == theirs_sha if ours_sha and theirs_sha else theirs == manifest
        elif recorded.get("sha256"):
            same = input_sha256(source) == recorded["sha256"]
        else:
            same = True  # a dataset made from nothing we can hash again
    except (OSError, ValueError, UserError):
        return  # unreadable inputs are reported where they are read
    if not same:
        raise UserError(f"the run in '{run_dataset.parent}' was fitted on "
                        f"'{recorded.get('path') or run_dataset}', not '{source}': resume with "
                        "that input, or fit this one into another --out")


SCALED_AT_START = {"full.steps", "model.num_surfels", "strategy.max_surfels", "model.time_freqs",
                   "resolution_scaling", "frames_scaling", "scaling_budget"}
"""The budgets the dataset scales when a run starts (``resolve_for_dataset``); config.json holds
the scaled values, so a number given again on --resume cannot be applied to them as it stands."""

FIXED_AT_START = SCALED_AT_START | {"model.blend", "seed", "all_frames", "coarse_surfels"}
"""Settings a run takes once, when it starts: the scaled budgets, the model's shape and random
state, the training frames."""


def _settings_a_resume_takes(config, overrides: dict[str, Any] | None,
                             requested: dict | None) -> tuple[dict[str, Any], list[str]]:
    """(the overrides a resume applies, the fixed settings given with another value).

    A fixed setting given again with the value the run started with (the same command line
    plus --resume) is already in the recorded config and is dropped: ``--steps 900`` on a
    256x256 clip was scaled to 1800 steps, and applying 900 again ended the fit early. Without
    a record (runs made before it), an unscaled setting still compares with the config.
    """
    from recon4d.train.config import get_setting

    kept, fixed = {}, []
    for key, value in (overrides or {}).items():
        if key not in FIXED_AT_START:
            kept[key] = value  # rates, losses, threads, backend, a time budget: they apply
            continue
        if requested is not None and key in requested:
            same = requested[key] == value
        else:
            same = key not in SCALED_AT_START and get_setting(config, key) == value
        if not same:
            fixed.append(f"{key} {value}")
    return kept, sorted(fixed)


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
    source = Path(input_or_dataset)
    _check_run_location(source, run, resume)
    if resume and run.config_path.is_file():
        try:
            config = config_from_dict(run.read_config())
        except ValueError as exc:
            raise UserError(f"{run.config_path} cannot be resumed ({exc}): restore the file or "
                            "fit again into another --out") from exc
        overrides, fixed = _settings_a_resume_takes(config, overrides, run.read_requested())
        if preset is not None and preset != config.preset:
            fixed.insert(0, f"preset {preset}")
        if fixed:
            # The model's shape, its random state and the preset come from the checkpoint;
            # config.json would record settings the resumed fit never ran with.
            raise UserError(f"{', '.join(fixed)} cannot change on --resume (the run's checkpoint "
                            "fixes them): resume without them, or fit again into another --out")
        _check_resumed_input(source, run.dataset)
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
    made_dataset = not (resume and run.dataset.is_dir())
    if made_dataset:
        _prepare_dataset(input_or_dataset, run.dataset, ingest_options)
    dataset = load_dataset(run.dataset)
    config = resolve_for_dataset(config, dataset.width, dataset.height, dataset.num_frames)
    recorded = run.config_path.read_bytes() if resume else None
    # A new fit records what it was asked for, before the dataset scaled it (a resume compares).
    requested = None if resume else {key: value for key, value in (overrides or {}).items()
                                     if key in FIXED_AT_START}
    run.write_config(config, kind="fit", requested=requested)
    try:
        Trainer(dataset, run, config, on_step=on_step).fit(resume=resume)
    except ResumeMismatch:
        # The settings given now never ran: the run keeps the ones its checkpoints were made
        # with (and no dataset made for another input), so a plain --resume still works.
        atomic_write_bytes(run.config_path, recorded)
        if made_dataset:
            shutil.rmtree(run.dataset, ignore_errors=True)
        raise
    return run.root
