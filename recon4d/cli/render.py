"""``recon4d render``: render a fitted run from its input cameras or an orbit, to MP4 or PNG."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import tyro


@dataclass
class Config:
    """Render a fitted run at any time from its input cameras or a 360-degree orbit.

    MP4 (default): with --camera input, every input frame from its own camera (or, with --time,
    every input camera at that one time); with --camera orbit, one turn while time plays (or
    frozen at --time). PNG: one image at --time (default 0) from the nearest input frame's camera
    or the orbit's first view.
    """

    run_dir: tyro.conf.Positional[Path]
    """The run directory of a finished 'recon4d fit'."""
    camera: Literal["input", "orbit"] = "input"
    """Which cameras: the fitted input cameras or an orbit around the object."""
    time: Optional[float] = None
    """Normalised time in [0, 1] to freeze (default: time plays / 0 for a PNG)."""
    out: Optional[Path] = None
    """Output .mp4 or .png (default RUN_DIR/renders/render_<camera>.mp4)."""
    frames: int = 48
    """Frames of an orbit video."""
    size: int = 256
    """Side of the orbit views in pixels (input views keep the input size)."""
    fps: Optional[float] = None
    """Frame rate of the video (default: the clip's own, so time plays at its real speed; 24
    for a frozen --time or an input without a rate)."""
    backend: Literal["auto", "reference", "native", "gsplat"] = "auto"
    """Renderer backend."""


def run(config: Config) -> int:
    from recon4d.errors import UserError

    out = config.out or Path(config.run_dir) / "renders" / f"render_{config.camera}.mp4"
    suffix = out.suffix.lower()
    if suffix not in (".mp4", ".png"):
        raise UserError(f"--out '{out}' must end in .mp4 or .png")
    if config.time is not None and not 0.0 <= config.time <= 1.0:
        raise UserError(f"--time {config.time} is outside [0, 1]: times are normalised over the clip")
    if config.frames < 1 or config.size < 8:
        raise UserError("--frames must be >= 1 and --size >= 8")
    if config.fps is not None and not (math.isfinite(config.fps) and config.fps > 0):
        raise UserError(f"--fps must be a positive number of frames per second, got {config.fps}")
    from recon4d.render import require_backend

    require_backend(config.backend, "cpu")  # runs load on the CPU (load_run below)
    if config.out is not None:  # the default lies in the run directory, checked when it loads
        from recon4d.utils.output_location import require_writable_output

        require_writable_output(out, is_file=True)

    import numpy as np
    import torch

    from recon4d.export.video import to_uint8, write_mp4
    from recon4d.export.views import bounding_sphere, orbit_cameras
    from recon4d.model import load_run
    from recon4d.render import render
    from recon4d.utils.atomic import atomic_path
    from recon4d.utils.console import info, track

    scene = load_run(config.run_dir, device="cpu")
    times = scene.frame_times.detach().cpu().numpy()
    inputs = scene.input_cameras()
    background = torch.ones(3)
    jobs: list[tuple[float, object]] = []  # (time, one camera)
    if config.camera == "input":
        if suffix == ".png":
            t = float(config.time or 0.0)
            jobs = [(t, inputs[int(np.argmin(np.abs(times - t)))])]
        elif config.time is None:
            jobs = [(float(t), inputs[i]) for i, t in enumerate(times)]
        else:
            jobs = [(float(config.time), inputs[i]) for i in range(len(inputs))]
    else:
        t0 = float(config.time or 0.0)
        first = scene.surfels_at(t0).means.detach().cpu().double().numpy()
        center, radius = bounding_sphere(first, quantile=0.99)
        cam2world = torch.linalg.inv(inputs.viewmats[:1].double())[0].numpy()
        count = 1 if suffix == ".png" else config.frames
        orbit = orbit_cameras(center, radius * 1.05, -cam2world[:3, 1], cam2world[:3, 3], count,
                              config.size)
        play = np.linspace(0.0, 1.0, count) if config.time is None else np.full(count, t0)
        jobs = [(float(play[i]) if suffix != ".png" else t0, orbit[i]) for i in range(count)]

    images = []
    with torch.no_grad():
        for t, cam in track(jobs, description="rendering"):
            out_maps = render(scene.surfels_at(t).detach(), cam, backend=config.backend,
                              background=background)
            images.append(to_uint8(out_maps.rgb[0].cpu().numpy()))
    if suffix == ".png":
        from PIL import Image

        with atomic_path(out) as tmp:
            Image.fromarray(images[0]).save(tmp, format="PNG")
    else:
        write_mp4(images, out, config.fps or _playback_fps(config, len(times), len(images)))
    info(f"wrote {out}")
    return 0


def _playback_fps(config: Config, clip_frames: int, video_frames: int) -> float:
    """Frames per second at which the video's time runs as fast as the clip's: the clip's rate
    for its input views; for an orbit, its frames spread over the clip's duration."""
    from recon4d.data.dataset import run_fps
    from recon4d.export.video import clip_paced_fps

    rate = run_fps(config.run_dir)
    if rate is None or config.time is not None or clip_frames < 2:
        return 24.0
    if config.camera == "input":
        return rate
    return clip_paced_fps(video_frames, clip_frames, rate)
