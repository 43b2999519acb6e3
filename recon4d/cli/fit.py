"""``recon4d fit``: fit dynamic Gaussian surfels to a video or a dataset directory."""

from __future__ import annotations

import math
import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import tyro


@dataclass
class Config:
    """Fit canonical surfels, a bone warp field, root poses and refinements to every frame.

    Writes RUN_DIR/{config.json, dataset/, checkpoints/, logs/metrics.jsonl, metrics.json}.
    Held-out frames (index % 4 == 2) are kept out of training unless --all-frames.
    """

    input: tyro.conf.Positional[Path]
    """A dataset directory ('recon4d ingest' output) or a raw input (video, GIF, frame folder,
    transforms.json), ingested into RUN_DIR/dataset on the way."""
    out: Path = Path("runs/fit")
    """The run directory to write."""
    preset: Optional[Literal["cpu-fast", "gpu-quality", "test"]] = None
    """Settings preset (default: gpu-quality with a CUDA GPU, cpu-fast otherwise)."""
    backend: Literal["auto", "reference", "native", "gsplat"] = "auto"
    """Renderer backend ('auto': native kernels when they build, else the torch reference)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where to fit ('auto': CUDA when available)."""
    steps: Optional[int] = None
    """Override the number of full-stage steps of the preset."""
    resume: bool = False
    """Continue from RUN_DIR's latest checkpoint (after a crash or kill) with its recorded config."""
    all_frames: bool = False
    """Also train on the held-out frames (no held-out evaluation then)."""
    no_init_stage: bool = False
    """Skip the coarse initialisation stage (for ablations)."""
    blend: Optional[Literal["dqs", "lbs"]] = None
    """Bone blending: dual quaternions (preset default) or linear blend skinning."""
    seed: Optional[int] = None
    """Random seed (default 0)."""
    symmetry: Optional[float] = None
    """Weight of the mirror-symmetry term (0 = off, the default; try 1): fills in the side a
    fixed camera never sees from the side it sees, for mirror-symmetric subjects of clips
    ingested with --depth (docs/fit.md). Sets it in both stages."""
    root_init: Optional[Literal["auto", "tracks", "identity"]] = None
    """Where the root poses start. 'auto' (default): on a fixed camera, at the object's rigid
    motion estimated from point tracks when that turns 45 degrees or more (a tumbling object,
    a turntable; docs/fit.md, Sessions 17-18), else at rest; costs 3-6 s before the fit on the
    shared clips at 256x256. 'tracks': always from the tracks. 'identity': at rest."""
    root_from_tracks: bool = False
    """Same as --root-init tracks."""
    detail: Optional[float] = None
    """How many times the preset's steps and surfels may grow for frames larger than 128x128
    (default 2; 3: sharper fits of rigid subjects at 256x256 for about twice the time)."""
    threads: Optional[int] = None
    """CPU threads (default: torch's; 1 can be faster on a busy machine)."""
    time_budget: Optional[float] = None
    """Minutes the fit may take: after timing a few steps the full stage is shortened, once,
    to the steps predicted to fit (never lengthened; default: no limit)."""
    viewer: bool = False
    """Show the fit live in the viewer while it runs (when the viewer is installed)."""


MAX_STEPS = 10_000_000
"""More full-stage steps than any fit needs (gpu-quality runs 5000): a typo, not a request."""


def max_threads() -> int:
    """The most CPU threads --threads takes: 4 per core (torch failed to start 100000)."""
    return 4 * (os.cpu_count() or 1)


def _live_viewer(run_dir: Path):
    """A started-on-first-step live viewer (``recon4d.viewer.live``), or None if unavailable."""
    from recon4d.utils.console import info, warn

    try:
        from recon4d.viewer.live import LiveViewer  # optional: needs the viewer's extras (viser)
        viewer = LiveViewer(run_dir=run_dir, port=0)
    except Exception as exc:  # missing viser or a port problem must not stop the fit
        warn(f"--viewer: the live viewer is unavailable ({type(exc).__name__}: {exc}); fitting "
             "without it")
        return None
    info(f"live viewer: {viewer.url}")
    return viewer


def run(config: Config) -> int:
    from recon4d.errors import UserError
    from recon4d.train.api import fit
    from recon4d.utils.console import info
    from recon4d.utils.output_location import require_writable_output

    overrides = {"backend": config.backend, "device": config.device}
    if config.steps is not None:
        if not 1 <= config.steps <= MAX_STEPS:
            raise UserError(f"--steps must be between 1 and {MAX_STEPS:,}, got {config.steps}")
        overrides["full.steps"] = config.steps
    if config.all_frames:
        overrides["all_frames"] = True
    if config.no_init_stage:
        overrides["coarse_surfels"] = 0
    if config.blend is not None:
        overrides["model.blend"] = config.blend
    if config.threads is not None:
        most = max_threads()
        if not 1 <= config.threads <= most:
            raise UserError(f"--threads must be between 1 and {most} (4 per CPU core here; leave it "
                            f"out for torch's default), got {config.threads}")
        overrides["num_threads"] = config.threads
    if config.seed is not None:
        if not 0 <= config.seed < 2 ** 63:
            raise UserError(f"--seed must be between 0 and 2**63 - 1, got {config.seed}")
        overrides["seed"] = config.seed
    if config.detail is not None:
        if not (math.isfinite(config.detail) and config.detail >= 1):
            raise UserError(f"--detail must be 1 or more (1: no growth with the frame size), "
                            f"got {config.detail}")
        overrides["resolution_scaling"] = config.detail
    if config.time_budget is not None:
        if not (math.isfinite(config.time_budget) and config.time_budget > 0):
            raise UserError(f"--time-budget must be a positive number of minutes, got "
                            f"{config.time_budget}")
        overrides["time_budget_s"] = 60.0 * config.time_budget
    if config.root_from_tracks and config.root_init not in (None, "tracks"):
        raise UserError(f"--root-from-tracks contradicts --root-init {config.root_init}: pass one")
    if config.root_init is not None:
        overrides["model.root_init"] = config.root_init
    if config.root_from_tracks:
        overrides["model.root_init"] = "tracks"
    if config.symmetry is not None:
        if not (math.isfinite(config.symmetry) and config.symmetry >= 0):
            raise UserError(f"--symmetry must be 0 or more, got {config.symmetry}")
        # Both stages: with depth maps the plane is known from the start (the coarse stage is
        # where the hidden side takes shape); without them the trainer waits for the full stage.
        overrides["coarse.losses.symmetry"] = config.symmetry
        overrides["full.losses.symmetry"] = config.symmetry
    require_writable_output(config.out)
    viewer = _live_viewer(config.out) if config.viewer else None
    try:
        run_dir = fit(config.input, config.out, preset=config.preset, resume=config.resume,
                      on_step=viewer.on_step if viewer is not None else None, overrides=overrides)
    except KeyboardInterrupt as exc:  # Ctrl+C or SIGTERM (Interrupted: after a checkpoint)
        from recon4d.errors import Interrupted
        from recon4d.utils.checkpoint import latest_checkpoint

        code = getattr(exc, "exit_code", 130)
        if latest_checkpoint(config.out / "checkpoints") is None:
            raise Interrupted("no checkpoint was written yet; run the same command again to "
                              "start over", code) from None
        done = f"{exc}; " if str(exc) else ""
        raise Interrupted(f"{done}continue with: recon4d fit {shlex.quote(str(config.input))} "
                          f"--out {shlex.quote(str(config.out))} --resume", code) from None
    finally:
        if viewer is not None:
            viewer.close()
    info(f"run written to {run_dir} (next: recon4d export {shlex.quote(str(run_dir))})")
    return 0
