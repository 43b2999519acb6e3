"""``recon4d view``: open a fitted run in the interactive 4D viewer (a local web page)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import tyro


@dataclass
class Config:
    """Serve the run's latest checkpoint to a web browser: time slider and playback, free orbit
    and input-camera views, RGB/alpha/depth/normals/bone render modes, bones, cameras and the
    exported mesh as overlays. Rendering happens on this machine; the page only shows images.
    Stop with Ctrl+C."""

    run_dir: tyro.conf.Positional[Path]
    """The --out folder of a 'recon4d fit' run."""

    port: int = 8080
    """TCP port of the web page (0 picks a free one)."""

    host: str = "127.0.0.1"
    """Interface to listen on. The default keeps the viewer private to this machine; use 0.0.0.0
    only on a trusted network (anyone who can reach the port sees the scene)."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where to keep the model and render: cuda when available with auto."""

    backend: Literal["auto", "native", "reference", "gsplat"] = "auto"
    """Renderer backend (auto: native kernels, falling back to the torch reference)."""

    resolution: int = 512
    """Longest side of the render when the view is still, pixels (lower while moving)."""


def run(config: Config) -> int:
    import socket
    import time

    from recon4d.errors import UserError
    from recon4d.utils.console import info

    if not 0 <= config.port <= 65535:
        raise UserError(f"--port {config.port} is not a TCP port: pass 0..65535")
    if config.resolution < 64:
        raise UserError(f"--resolution {config.resolution} is too small: pass 64 or more")
    try:
        import viser  # noqa: F401
    except ImportError as exc:
        raise UserError("the viewer needs the 'viser' package: pip install viser") from exc
    import torch

    from recon4d.viewer.app import ViewerApp
    from recon4d.viewer.source import open_run

    device = config.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA GPU is visible: use --device cpu")
    from recon4d.render import require_backend

    require_backend(config.backend, device)
    source = open_run(config.run_dir, device=device)
    try:
        app = ViewerApp(source, host=config.host, port=config.port, backend=config.backend,
                        full_side=config.resolution)
    except socket.gaierror as exc:  # an OSError too: check it first
        raise UserError(f"--host {config.host!r} is not an address of this machine: use "
                        "127.0.0.1") from exc
    except OSError as exc:
        raise UserError(f"cannot listen on {config.host}:{config.port} ({exc.strerror or exc}): "
                        "use --host 127.0.0.1, or another --port (0 picks a free one)") from exc
    # The URL goes to stdout (not the quiet-able info stream): it is the command's output.
    print(f"recon4d viewer: {app.url}  (Ctrl+C to stop)", flush=True)
    info(f"run {source.run_dir} · {len(source.scene.frame_times)} frames · "
         f"{source.scene.num_bones} bones · device {device}")
    try:
        while True:
            time.sleep(1.0)
    finally:
        app.stop()
