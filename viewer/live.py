"""Live mode: watch a fit while it trains (``recon4d fit ... --viewer``).

The trainer calls :meth:`LiveViewer.on_step` after every step. That call must stay cheap, so it
only (a) appends the metrics record to a list and (b) every ``snapshot_every_s`` seconds, and only
while a browser is connected, takes a detached copy of the model (``copy.deepcopy`` with gradients
off: the fit keeps changing its own parameters, the viewer renders the copy). Everything else runs
in other threads: the viewer starts in a background thread at the first step, the loss curve is
redrawn by a timer, and renders happen in the viewer's render thread with a cap on the share of
wall time spent rendering (``render_share``), so the fit keeps its speed (bench_viewer.py measures
the slowdown).

Usage::

    viewer = LiveViewer(run_dir="runs/clip", port=8080)
    print(viewer.url)
    fit(..., on_step=viewer.on_step)
    viewer.close()
"""

from __future__ import annotations

import copy
import threading
import time
from pathlib import Path

import numpy as np


def snapshot_scene(model):
    """A copy of ``model`` that later training steps do not change, with gradients off.

    Works for any DynamicScene that deep-copies (an ``nn.Module`` does); the copy lives on the
    model's device.
    """
    import torch

    with torch.no_grad():
        frozen = copy.deepcopy(model)
    params = frozen.parameters() if hasattr(frozen, "parameters") else []
    for param in params:
        param.requires_grad_(False)
        param.grad = None
    if hasattr(frozen, "eval"):
        frozen.eval()
    return frozen


class LiveViewer:
    """A viewer that follows a running fit.

    Args:
        run_dir: the fit's run folder: its dataset gives the thumbnails and background (read
            once, in the background, when the first step arrives). Optional.
        host, port: where to listen (port 0 picks a free one now, so ``url`` is known at once).
        backend: renderer backend.
        snapshot_every_s: minimum seconds between two model copies.
        render_share: cap on the fraction of wall time the viewer spends rendering.
        full_side: render size when the view rests (kept small: the fit owns the machine).
        plot_every_s: how often the loss curve is redrawn.
    """

    def __init__(self, run_dir: str | Path | None = None, host: str = "127.0.0.1",
                 port: int = 8080, backend: str = "auto", snapshot_every_s: float = 2.0,
                 render_share: float = 0.05, full_side: int = 256, plot_every_s: float = 2.0):
        from .app import _free_port

        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.host = host
        self.port = _free_port(host) if port == 0 else int(port)
        self.backend = backend
        self.snapshot_every_s = float(snapshot_every_s)
        self.render_share = float(render_share)
        self.full_side = int(full_side)
        self.plot_every_s = float(plot_every_s)
        self.metrics: list[dict] = []
        self.app = None
        self.snapshots = 0
        self.snapshot_seconds = 0.0
        self.on_step_seconds = 0.0
        self.error: str | None = None
        self._last_snapshot = -1e9
        self._starting: threading.Thread | None = None
        self._closed = threading.Event()
        self._plotter = threading.Thread(target=self._plot_loop, name="recon4d-live-plot",
                                         daemon=True)

    @property
    def url(self) -> str:
        if self.app is not None:  # the port actually bound (viser moves on if it was taken)
            return self.app.url
        host = "localhost" if self.host in ("127.0.0.1", "0.0.0.0", "::") else self.host
        return f"http://{host}:{self.port}"

    # Called by the trainer ----------------------------------------------------------------
    def on_step(self, step: int, model, metrics: dict) -> None:
        """Record ``metrics``; now and then hand a detached copy of ``model`` to the viewer."""
        start = time.perf_counter()
        try:
            record = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str))}
            record.setdefault("step", int(step))
            self.metrics.append(record)
            if self._closed.is_set() or self.error is not None:
                return
            if self.app is None and self._starting is None:
                first = snapshot_scene(model)
                self._last_snapshot = time.perf_counter()
                self._starting = threading.Thread(target=self._start, args=(first,),
                                                  name="recon4d-live-start", daemon=True)
                self._starting.start()
                return
            if (self.app is not None and self.app.client_ids()
                    and time.perf_counter() - self._last_snapshot >= self.snapshot_every_s):
                t0 = time.perf_counter()
                scene = snapshot_scene(model)
                self.snapshot_seconds += time.perf_counter() - t0
                self.snapshots += 1
                self._last_snapshot = time.perf_counter()
                # Swapping is quick (the heavy work is the next render, in the render thread).
                self.app.replace_scene(scene)
        finally:
            self.on_step_seconds += time.perf_counter() - start

    # Background ---------------------------------------------------------------------------
    def _start(self, scene) -> None:
        from .app import ViewerApp
        from .source import ViewerSource

        try:
            frames, background = None, np.ones(3, np.float32)
            if self.run_dir is not None and (self.run_dir / "dataset").is_dir():
                from recon4d.data.dataset import load_dataset

                dataset = load_dataset(self.run_dir / "dataset")
                frames, background = dataset.frames, dataset.background
            name = f"live fit {self.run_dir.name}" if self.run_dir else "live fit"
            source = ViewerSource(scene=scene, frames=frames, background=background,
                                  metrics=list(self.metrics), name=name, run_dir=self.run_dir)
            if self._closed.is_set():
                return
            self.app = ViewerApp(source, host=self.host, port=self.port, backend=self.backend,
                                 full_side=self.full_side, render_share=self.render_share)
            self._plotter.start()
        except Exception as exc:  # the fit must go on without its viewer
            self.error = f"{type(exc).__name__}: {exc}"
            from recon4d.utils.console import warn

            warn(f"live viewer stopped: {self.error}")

    def _plot_loop(self) -> None:
        shown = 0
        while not self._closed.wait(self.plot_every_s):
            if self.app is not None and len(self.metrics) != shown:
                shown = len(self.metrics)
                self.app.update_metrics(list(self.metrics))

    def wait_started(self, timeout: float = 60.0) -> bool:
        """Block until the viewer serves (tests); False on timeout or failure."""
        deadline = time.monotonic() + timeout
        while self.app is None and self.error is None and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.app is not None

    def close(self) -> None:
        """Stop serving (the fit's result is unaffected)."""
        self._closed.set()
        if self._starting is not None:
            self._starting.join(timeout=30)
        if self.app is not None:
            self.app.stop()

    def __enter__(self) -> "LiveViewer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
