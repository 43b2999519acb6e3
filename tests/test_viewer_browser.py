"""The viewer in a real browser: Debian's headless Chromium opens the page, we take screenshots.

Skipped with the reason when Chromium is missing (``apt-get install chromium``; scripts/setup.sh
--dev installs it). WebGL runs on Chromium's software rasteriser, so the 3D canvas (server render
shown as the scene background, plus the overlays) is really drawn. Servers bind to 127.0.0.1 on a
free port; every test stops its server and browser itself.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from viewer_browser import HeadlessChromium, find_chromium
from viewer_doubles import CapsuleScene, capsule_mesh_animation, write_tiny_run

WIDTH, HEIGHT = 800, 600
CANVAS = (slice(160, HEIGHT - 60), slice(0, WIDTH - 360))
"""Screenshot region of the 3D canvas left of the floating GUI panel, below the notification."""


@pytest.fixture(scope="module")
def chromium() -> str:
    path = find_chromium()
    if path is None:
        pytest.skip("headless Chromium not found: apt-get install chromium (scripts/setup.sh "
                    "--dev installs it)")
    return path


@pytest.fixture(scope="module")
def double_run(tmp_path_factory) -> tuple[Path, CapsuleScene]:
    scene = CapsuleScene(num_surfels=400, num_frames=8, image_size=64)
    return write_tiny_run(tmp_path_factory.mktemp("viewer") / "run", scene), scene


@pytest.fixture(scope="module")
def trained_run(double_run, tmp_path_factory) -> Path:
    """A real (tiny) fit of the double's frames: the 'test' preset, a few steps."""
    from recon4d.train.api import fit

    root, _ = double_run
    return fit(root / "dataset", tmp_path_factory.mktemp("viewer") / "fit", preset="test")


def _wait(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _not_blank(region: np.ndarray) -> float:
    """Fraction of pixels that differ from the page's white background by a visible amount."""
    return float((np.abs(region.astype(int) - 255).max(-1) > 40).mean())


def _settled_screenshot(browser: HeadlessChromium, timeout: float = 20.0) -> np.ndarray:
    """A screenshot taken once two in a row (0.4 s apart) agree on the canvas region."""
    previous = browser.screenshot_array()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.4)
        current = browser.screenshot_array()
        if np.abs(current[CANVAS].astype(int) - previous[CANVAS]).mean() < 0.05:
            return current
        previous = current
    return previous


def test_viewer_page_renders_and_follows_the_time_slider(double_run, chromium, tmp_path):
    from PIL import Image

    from recon4d.data.dataset import load_dataset
    from recon4d.rundir import RunDir
    from recon4d.viewer.app import ViewerApp
    from recon4d.viewer.source import ViewerSource

    root, scene = double_run
    dataset = load_dataset(root / "dataset")
    source = ViewerSource(scene, frames=dataset.frames, background=dataset.background,
                          metrics=RunDir(root).read_metrics_log(), name="double")
    app = ViewerApp(source, host="127.0.0.1", port=0, full_side=256, backend="reference")
    try:
        assert app.server.get_host() == "127.0.0.1"
        with HeadlessChromium(chromium, WIDTH, HEIGHT) as browser:
            browser.open(app.url)
            client = _wait(lambda: app.client_ids(), 30, "the page to connect")[0]

            def full_render_at(t):
                view = app.last_view(client)
                key = app._views[client].last_key
                return (view is not None and key is not None and abs(key[4] - t) < 1e-4
                        and max(view.image.shape[:2]) == 256)

            _wait(lambda: full_render_at(0.0), 60, "the first full-size render")
            before = _settled_screenshot(browser)
            served_before = app.last_view(client).image.copy()
            app.set_time(0.5)  # the server-side equivalent of dragging the time slider
            assert app.gui_time.value == pytest.approx(0.5)
            _wait(lambda: full_render_at(0.5), 60, "the render at t = 0.5")
            after = _settled_screenshot(browser)
            served_after = app.last_view(client).image
            # Snap to input camera 5: the browser's camera moves there, time jumps to frame 5.
            handle = app._views[client].client
            app._snap(handle, 5)
            target = scene.input_cameras().centers()[5].numpy()
            _wait(lambda: np.allclose(handle.camera.position, target, atol=1e-3), 30,
                  "the browser camera to reach input camera 5")
            forward = scene.input_cameras().viewmats[5, 2, :3].numpy()
            from recon4d.viewer.cameras import quat_wxyz_to_matrix

            seen = quat_wxyz_to_matrix(np.asarray(handle.camera.wxyz))
            assert np.allclose(seen[:, 2], forward, atol=1e-3)  # looks where camera 5 looks
            assert app.playback.t == pytest.approx(float(scene.frame_times[5]))
        Image.fromarray(before).save(tmp_path / "viewer_t0.png")
        Image.fromarray(after).save(tmp_path / "viewer_t05.png")
    finally:
        app.stop()
    # The canvas shows the object (the render), not an empty page.
    assert _not_blank(before[CANVAS]) > 0.02, "the 3D canvas is blank"
    assert before[CANVAS].std() > 10
    # Moving the time slider bends the capsule: the served render and the page both change.
    assert np.abs(served_after.astype(int) - served_before).mean() > 2.0
    changed = np.abs(after[CANVAS].astype(int) - before[CANVAS]).max(-1) > 40
    assert changed.mean() > 0.01, "the page did not change when the time moved"
    assert not app.render_errors


def test_view_command_serves_a_trained_run(trained_run, chromium):
    """``recon4d view RUN --port 0`` prints its URL and the page shows the fitted scene."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    process = subprocess.Popen(
        [sys.executable, "-m", "recon4d", "view", str(trained_run), "--port", "0",
         "--resolution", "256"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=env)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(process.stdout.readline, "")),
                              daemon=True)
    reader.start()
    try:
        def url_line():
            assert process.poll() is None, "recon4d view exited early:\n" + "".join(lines)
            return next((line for line in list(lines) if "http://" in line), None)

        url = re.search(r"http://\S+", _wait(url_line, 120, "the URL line")).group(0)
        assert url.startswith("http://localhost:")
        with HeadlessChromium(chromium, WIDTH, HEIGHT) as browser:
            browser.open(url)
            time.sleep(2.0)
            shots: list[np.ndarray] = []

            def drawn() -> bool:
                shots.append(_settled_screenshot(browser))
                return _not_blank(shots[-1][CANVAS]) > 0.01

            _wait(drawn, 60, "the fitted scene on the canvas")
            shot = shots[-1]
        assert shot[CANVAS].std() > 5
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


def test_web_page_plays_the_animation_without_python(double_run, chromium, tmp_path):
    """The exported folder's index.html, opened from disk, animates the mesh."""
    from recon4d.viewer.source import ViewerSource
    from recon4d.viewer.web_export import write_web

    root, scene = double_run
    out = write_web(root, tmp_path / "web", fps=4.0,
                    source=ViewerSource(scene, mesh=capsule_mesh_animation(scene)))
    with HeadlessChromium(chromium, WIDTH, HEIGHT) as browser:
        browser.open((out / "index.html").as_uri())
        time.sleep(2.0)
        shots = []
        for _ in range(5):  # the loop lasts 2 s (8 frames at 4 fps): sample it 5 times
            shots.append(browser.screenshot_array()[160:HEIGHT - 60].astype(int))
            time.sleep(0.35)
    assert max(_not_blank(s.astype(np.uint8)) for s in shots) > 0.01, "nothing drawn"
    spread = max(np.abs(a - b).max(-1).__gt__(40).mean() for a in shots for b in shots)
    assert spread > 0.005, "the recorded animation does not move"


def test_open_run_animates_the_exported_mesh(trained_run, tmp_path):
    """A canonical mesh in RUN/export is moved by the fitted warp and shown as an overlay."""
    import shutil

    import torch
    import trimesh

    from recon4d.viewer.app import ViewerApp
    from recon4d.viewer.source import open_run

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    rest = trimesh.creation.icosphere(subdivisions=2, radius=0.3)
    rest.export(run / "export" / "canonical_mesh.ply")
    source = open_run(run)
    scene = source.scene
    assert source.mesh is not None and source.mesh.faces.shape == rest.faces.shape
    times = scene.frame_times.tolist()
    with torch.no_grad():
        expected = scene.warp_points(torch.as_tensor(rest.vertices, dtype=torch.float32),
                                     times[-1]).numpy()
    assert np.allclose(source.mesh.vertices[-1], expected, atol=1e-4)
    app = ViewerApp(source, port=0)
    try:
        assert not app.gui_mesh.disabled
        app.gui_mesh.value = True
        app.set_time(times[-1])
        app._sync_time_widgets()
        assert app.overlays.mesh.visible
        assert np.allclose(app.overlays.mesh.vertices, expected, atol=1e-4)
    finally:
        app.stop()


def test_view_command_rejects_an_unusable_host(trained_run, capsys):
    from recon4d.cli.main import main

    assert main(["view", str(trained_run), "--host", "999.1.1.1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--host '999.1.1.1'" in err[0]
