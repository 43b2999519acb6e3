"""The interactive 4D viewer: a viser web app that renders the scene on the server.

Layout of the page: the render fills the 3D canvas (sent as a background image with depth, so the
3D overlays occlude correctly); the side panel has the time controls (slider, play/pause, speed,
loop, frame stepping), the input frame at the current time, the view controls (render mode,
resolution, snap to an input camera, reset) and the overlay switches; in live mode also the loss
curve.

Threads: viser runs its own server thread and calls GUI/camera callbacks from a pool; those only
update state and set ``_wake``. One render thread (``_loop``) advances playback and renders each
connected client's view when it changed, small while the view moves and at full size once it
rests (see :class:`~recon4d.viewer.timeline.AdaptiveResolution`).
"""

from __future__ import annotations

import contextlib
import io
import math
import sys
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from .cameras import ViewPose, camera_to_pose, matrix_to_quat_wxyz, render_size
from .engine import RenderedView, SceneRenderer
from .modes import RENDER_MODES
from .overlays import Overlays, scene_extent
from .source import ViewerSource
from .timeline import AdaptiveResolution, Playback

STILL_AFTER_S = 0.25
"""A view counts as resting this long after its last camera or time change."""


@dataclass
class _ClientView:
    """Render bookkeeping of one browser tab."""

    client: object
    last_change: float = 0.0
    last_key: tuple | None = None
    last_side: int = 0
    last_view: RenderedView | None = None
    renders: int = 0
    history: list = field(default_factory=list)


class ViewerApp:
    """Serve one scene to web browsers.

    Args:
        source: the scene and what goes with it (:func:`recon4d.viewer.source.open_run`).
        host: interface to bind; 127.0.0.1 (default) keeps the viewer on this machine.
        port: TCP port; 0 picks a free one.
        backend: renderer backend for ``recon4d.render.render``.
        full_side: longest side of the render when the view rests, pixels.
        budget_s: target seconds per render while the view moves (sets the moving resolution).
        render_share: at most this fraction of wall time is spent rendering (None: no cap). The
            live viewer caps it so the fit beside it keeps its speed.
        verbose: let viser print its own banner.
    """

    def __init__(self, source: ViewerSource, host: str = "127.0.0.1", port: int = 8080,
                 backend: str = "auto", full_side: int = 512, budget_s: float = 0.1,
                 render_share: float | None = None, verbose: bool = False):
        import viser

        # Bind-test the host first: viser retries the next port forever when the host itself
        # cannot be bound, which would hang here instead of failing.
        free = _free_port(host)
        port = free if port == 0 else port
        self.source = source
        scene = source.scene
        self.renderer = SceneRenderer(scene, backend=backend, background=source.background)
        self.playback = Playback(scene.frame_times.detach().cpu().numpy(), fps=source.fps)
        self.resolution = AdaptiveResolution(full_side=full_side, budget_s=budget_s)
        self.mode = "RGB"
        self._lock = threading.RLock()
        self._views: dict[int, _ClientView] = {}
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._shown_frame = -1
        self._synced_t: float | None = None
        self._pending_scene = None
        self._render_share = render_share
        self._next_render = 0.0
        self.render_seconds = 0.0
        self.render_errors: list[str] = []

        cams = scene.input_cameras()
        self._viewmats = cams.viewmats.detach().double().cpu().numpy()
        self._Ks = cams.Ks.detach().double().cpu().numpy()
        self._cam_height, self._cam_width = int(cams.height), int(cams.width)
        self.center, self.radius = scene_extent(scene)

        with contextlib.redirect_stdout(sys.stdout if verbose else io.StringIO()):
            # viser prints a banner with rich; the CLI prints its own one-line URL instead.
            self.server = viser.ViserServer(host=host, port=port,
                                            label=f"recon4d: {source.name}", verbose=verbose)
        self.host, self.port = host, int(self.server.get_port())
        # No share button: it would open a public tunnel to a third-party relay.
        self.server.gui.configure_theme(show_share_button=False, control_width="medium")
        self.server.scene.set_up_direction(tuple(float(x) for x in self.input_pose(0).up()))
        self._set_initial_camera(self.home_pose())
        self._build_gui()
        self.overlays = Overlays(self.server.scene, source)
        self.overlays.show(bones=self.gui_bones.value, cameras=self.gui_cameras.value)
        self.server.on_client_connect(self._on_connect)
        self.server.on_client_disconnect(self._on_disconnect)
        self._thread = threading.Thread(target=self._loop, name="recon4d-viewer", daemon=True)
        self._thread.start()

    # Public API ---------------------------------------------------------------------------
    @property
    def url(self) -> str:
        host = "localhost" if self.host in ("127.0.0.1", "0.0.0.0", "::") else self.host
        return f"http://{host}:{self.port}"

    def set_time(self, t: float) -> None:
        """Move the clip to time ``t`` (as if the slider were dragged)."""
        self.gui_time.value = float(self.playback.seek(t))

    def set_mode(self, mode: str) -> None:
        """Switch the render mode (one of RENDER_MODES)."""
        self.gui_mode.value = mode

    def input_pose(self, index: int) -> ViewPose:
        """The viser pose of input camera ``index``."""
        return camera_to_pose(self._viewmats[index], self._Ks[index], self._cam_height)

    def home_pose(self) -> ViewPose:
        """A three-quarter view: input camera 0 swung 35 degrees around the object and raised
        15 degrees, a little further out, so the object, the bones and the cameras all show."""
        pose = self.input_pose(0)
        up = pose.up()
        offset = (pose.position - self.center) * 1.3
        offset = _rotate(offset, up, math.radians(35.0))
        side = np.cross(up, offset)
        side /= max(np.linalg.norm(side), 1e-9)
        offset = _rotate(offset, side, math.radians(15.0))
        eye = self.center + offset
        forward = -offset / max(np.linalg.norm(offset), 1e-9)
        right = np.cross(forward, up)
        right /= max(np.linalg.norm(right), 1e-9)
        down = np.cross(forward, right)
        rot = np.stack([right, down, forward], axis=1)  # columns: camera x, y, z in world
        return ViewPose(matrix_to_quat_wxyz(rot), eye, pose.fov_y)

    def replace_scene(self, scene) -> None:
        """Show another version of the scene (live fitting); same frames and cameras assumed.

        Returns at once: the swap (cache reset, new bone trails) happens in the render thread
        before its next render, so the caller (the training loop) never waits for a render.
        """
        self._pending_scene = scene
        self._wake.set()

    def _apply_pending_scene(self) -> None:
        scene, self._pending_scene = self._pending_scene, None
        if scene is None:
            return
        self.renderer.replace_scene(scene)
        self.source.scene = scene
        self.overlays.replace_scene(scene)
        self._synced_t = None  # bone markers move with the new scene
        self._touch_all(force=True)

    def client_ids(self) -> list[int]:
        with self._lock:
            return list(self._views)

    def last_view(self, client_id: int) -> RenderedView | None:
        """The latest image sent to a client (tests and screenshots read it)."""
        with self._lock:
            view = self._views.get(client_id)
            return None if view is None else view.last_view

    def render_count(self, client_id: int) -> int:
        with self._lock:
            view = self._views.get(client_id)
            return 0 if view is None else view.renders

    def stop(self) -> None:
        """Stop the render thread and the web server."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=10)
        with contextlib.redirect_stdout(io.StringIO()):  # viser prints "Server stopped"
            self.server.stop()

    # GUI ----------------------------------------------------------------------------------
    def _set_initial_camera(self, pose: ViewPose) -> None:
        initial = self.server.initial_camera
        initial.position = tuple(float(x) for x in pose.position)
        distance = float(np.linalg.norm(self.center - pose.position)) or 1.0
        initial.look_at = tuple(float(x) for x in pose.position + pose.forward() * distance)
        initial.up = tuple(float(x) for x in self.input_pose(0).up())  # orbit about world up
        initial.fov = float(pose.fov_y)

    def _build_gui(self) -> None:
        gui = self.server.gui
        pb = self.playback
        count = len(pb.frame_times)
        with gui.add_folder("Time"):
            step = 1.0 / max(10 * (count - 1), 100)
            self.gui_time = gui.add_slider("t", min=pb.start, max=max(pb.end, pb.start + 1e-3),
                                           step=step, initial_value=pb.t)
            self.gui_frame = gui.add_markdown(self._frame_text())
            self.gui_play = gui.add_button("Play", icon=None)
            self.gui_prev = gui.add_button("Previous frame")
            self.gui_next = gui.add_button("Next frame")
            self.gui_speed = gui.add_slider("Speed", min=0.1, max=4.0, step=0.1, initial_value=1.0)
            self.gui_loop = gui.add_checkbox("Loop", initial_value=True)
        self.gui_thumb = None
        if self.source.frames is not None:
            with gui.add_folder("Input frame"):
                self.gui_thumb = gui.add_image(self._thumbnail(0), label="input frame",
                                               format="jpeg")
        with gui.add_folder("View"):
            self.gui_mode = gui.add_dropdown("Render mode", RENDER_MODES, initial_value="RGB")
            self.gui_res = gui.add_slider("Resolution", min=128, max=2048, step=64,
                                          initial_value=self.resolution.full_side)
            self.gui_snap_index = gui.add_slider("Input camera", min=0, max=max(count - 1, 1),
                                                 step=1, initial_value=0,
                                                 disabled=count < 2)
            self.gui_snap = gui.add_button("Snap to input camera")
            self.gui_reset = gui.add_button("Reset view")
            self.gui_stats = gui.add_markdown("")
        with gui.add_folder("Overlays"):
            self.gui_bones = gui.add_checkbox("Bones + trails", initial_value=True,
                                              disabled=self.source.scene.num_bones == 0)
            self.gui_cameras = gui.add_checkbox("Input cameras", initial_value=True)
            self.gui_mesh = gui.add_checkbox("Exported mesh", initial_value=False,
                                             disabled=self.source.mesh is None,
                                             hint=None if self.source.mesh is not None else
                                             "run 'recon4d export' to get a mesh")
            self.gui_occlude = gui.add_checkbox(
                "Hide behind surface", initial_value=False,
                hint="send the render's depth so overlays behind the surface are hidden")
        self.gui_loss = None
        if self.source.metrics:
            with gui.add_folder("Training"):
                self.gui_loss = self._add_loss_plot(self.source.metrics)

        self.gui_time.on_update(lambda event: self._on_time(self.gui_time.value))
        self.gui_play.on_click(lambda event: self._toggle_play())
        self.gui_prev.on_click(lambda event: self.set_time(pb.step(-1)))
        self.gui_next.on_click(lambda event: self.set_time(pb.step(+1)))
        self.gui_speed.on_update(lambda event: setattr(pb, "speed", float(self.gui_speed.value)))
        self.gui_loop.on_update(lambda event: setattr(pb, "loop", bool(self.gui_loop.value)))
        self.gui_mode.on_update(lambda event: self._on_view_setting())
        self.gui_res.on_update(lambda event: self._on_view_setting())
        self.gui_snap.on_click(lambda event: self._snap(event.client, int(self.gui_snap_index.value)))
        self.gui_reset.on_click(lambda event: self._snap(event.client, -1))
        self.gui_bones.on_update(lambda event: self.overlays.show(bones=self.gui_bones.value))
        self.gui_cameras.on_update(lambda event: self.overlays.show(cameras=self.gui_cameras.value))
        self.gui_mesh.on_update(lambda event: self.overlays.show(mesh=self.gui_mesh.value,
                                                                 t=self.playback.t))
        self.gui_occlude.on_update(lambda event: self._touch_all(force=True))

    def _add_loss_plot(self, metrics: list):
        from viser import uplot

        steps, losses = _loss_series(metrics)
        return self.server.gui.add_uplot(
            data=(steps, losses),
            series=(uplot.Series(label="step"),
                    uplot.Series(label="loss", stroke="#d9480f", width=2)),
            scales={"x": uplot.Scale(time=False, auto=True), "y": uplot.Scale(auto=True)},
            title="loss", aspect=1.6)

    def update_metrics(self, metrics: list) -> None:
        """Redraw the loss curve from the full metrics list (live mode)."""
        if self.gui_loss is None:
            with self.server.gui.add_folder("Training"):
                self.gui_loss = self._add_loss_plot(metrics)
        else:
            self.gui_loss.data = _loss_series(metrics)

    def _frame_text(self) -> str:
        index = self.playback.frame_index()
        return f"frame {index + 1} / {len(self.playback.frame_times)} · t = {self.playback.t:.3f}"

    def _thumbnail(self, index: int) -> np.ndarray:
        frame = self.source.frames[min(index, len(self.source.frames) - 1)]
        h, w = frame.shape[:2]
        step = max(1, int(np.ceil(max(h, w) / 256)))
        return (np.clip(frame[::step, ::step], 0, 1) * 255 + 0.5).astype(np.uint8)

    # Callbacks (viser threads) ------------------------------------------------------------
    def _on_time(self, value: float) -> None:
        self.playback.seek(value)
        self._touch_all()

    def _toggle_play(self) -> None:
        pb = self.playback
        if not pb.playing and not pb.loop and pb.t >= pb.end:
            pb.seek(pb.start)
        pb.playing = not pb.playing
        self.gui_play.label = "Pause" if pb.playing else "Play"
        self._touch_all()

    def _on_view_setting(self) -> None:
        self.mode = str(self.gui_mode.value)
        self.resolution.full_side = int(self.gui_res.value)
        self._touch_all()

    def _snap(self, client, index: int) -> None:
        """Move ``client``'s camera (all clients when None) onto input camera ``index``;
        index -1 is the home view (reset)."""
        pose = self.input_pose(max(index, 0))
        targets = [client] if client is not None else list(self.server.get_clients().values())
        distance = float(np.linalg.norm(self.center - pose.position)) or 1.0
        up = pose.up()
        if index < 0:
            pose = self.home_pose()
            distance = float(np.linalg.norm(self.center - pose.position)) or 1.0
        for target in targets:
            with target.atomic():
                target.camera.fov = float(pose.fov_y)
                target.camera.position = pose.position
                target.camera.look_at = pose.position + pose.forward() * distance
                target.camera.up_direction = up
        if index >= 0 and len(self.playback.frame_times) > 1:
            # An input camera belongs to one input frame: show that moment.
            self.set_time(float(self.playback.frame_times[index]))
        self._touch_all()

    def _on_connect(self, client) -> None:
        with self._lock:
            self._views[client.client_id] = _ClientView(client, last_change=time.perf_counter())
        client.camera.on_update(lambda camera, cid=client.client_id: self._touch(cid))
        self._wake.set()

    def _on_disconnect(self, client) -> None:
        with self._lock:
            self._views.pop(client.client_id, None)

    def _touch(self, client_id: int) -> None:
        with self._lock:
            view = self._views.get(client_id)
            if view is not None:
                view.last_change = time.perf_counter()
        self._wake.set()

    def _touch_all(self, force: bool = False) -> None:
        now = time.perf_counter()
        with self._lock:
            for view in self._views.values():
                view.last_change = now
                if force:
                    view.last_key = None
        self._wake.set()

    # Render thread ------------------------------------------------------------------------
    def _loop(self) -> None:
        last_tick = time.perf_counter()
        while not self._stop.is_set():
            now = time.perf_counter()
            if self._render_share and now < self._next_render:
                # Capped (live mode): nothing at all until the next render is due, not even
                # playback ticks, which would send overlay and GUI updates to the browser.
                self._wake.wait(timeout=self._next_render - now)
                self._wake.clear()
                continue
            self._apply_pending_scene()
            pb = self.playback
            if pb.playing:
                pb.advance(now - last_tick)
                self.gui_time.value = round(pb.t, 4)
                if not pb.playing:
                    self.gui_play.label = "Play"
            last_tick = now
            self._sync_time_widgets()
            with self._lock:
                views = list(self._views.values())
            for view in views:
                if self._stop.is_set() or time.perf_counter() < self._next_render:
                    break
                try:
                    self._render_client(view)
                except Exception as exc:  # keep serving; show the error instead of dying
                    message = f"{type(exc).__name__}: {exc}"
                    if message not in self.render_errors:
                        self.render_errors.append(message)
                    self.gui_stats.content = f"render failed: `{message}`"
            wait = 1 / 30 if pb.playing else 0.1
            wait = max(wait, self._next_render - time.perf_counter())
            self._wake.wait(timeout=wait)
            self._wake.clear()

    def _sync_time_widgets(self, force: bool = False) -> None:
        """Thumbnail, frame label and overlays follow the current time (only when it moved:
        each update is a message to every browser)."""
        t = self.playback.t
        if t == self._synced_t and not force:
            return
        self._synced_t = t
        index = self.playback.frame_index()
        self.gui_frame.content = self._frame_text()
        if index != self._shown_frame:
            self._shown_frame = index
            if self.gui_thumb is not None:
                self.gui_thumb.image = self._thumbnail(index)
        self.overlays.set_time(t)

    def _render_client(self, view: _ClientView) -> None:
        camera = view.client.camera
        if camera.update_timestamp == 0.0 or camera.image_height <= 0:
            return  # no camera message from this tab yet
        pose = ViewPose(np.array(camera.wxyz), np.array(camera.position), float(camera.fov))
        aspect = camera.image_width / camera.image_height
        now = time.perf_counter()
        moving = self.playback.playing or (now - view.last_change) < STILL_AFTER_S
        side = self.resolution.side(moving)
        key = (tuple(np.round(pose.wxyz, 5)), tuple(np.round(pose.position, 5)),
               round(pose.fov_y, 5), round(aspect, 3), round(self.playback.t, 5), self.mode)
        if key == view.last_key and side <= view.last_side:
            return  # this view is already on screen at this size or larger
        width, height = render_size(aspect, side)
        rendered = self.renderer.render(pose, width, height, self.playback.t, self.mode)
        self.resolution.record(width * height, rendered.seconds)
        self.render_seconds += rendered.seconds
        if self._render_share:
            # Rendering r seconds, then idling r * (1 - s) / s, keeps the share at s.
            self._next_render = (time.perf_counter()
                                 + rendered.seconds * (1 - self._render_share) / self._render_share)
        depth = rendered.depth if self.gui_occlude.value else None
        with self._lock:
            if view.client.client_id not in self._views:
                return  # the tab closed while we rendered
        view.client.scene.set_background_image(rendered.image, format="jpeg", jpeg_quality=90,
                                               depth=depth)
        with self._lock:
            view.last_key, view.last_side, view.last_view = key, side, rendered
            view.renders += 1
        fps = 1.0 / max(rendered.seconds, 1e-6)
        self.gui_stats.content = (f"{width}×{height} px · {rendered.seconds * 1000:.0f} ms "
                                  f"({fps:.1f} fps) · {'moving' if moving else 'still'}")


def _rotate(vector: np.ndarray, axis: np.ndarray, angle: float) -> np.ndarray:
    """``vector`` rotated by ``angle`` radians about the unit ``axis`` (Rodrigues)."""
    axis = axis / max(np.linalg.norm(axis), 1e-12)
    return (vector * math.cos(angle) + np.cross(axis, vector) * math.sin(angle)
            + axis * np.dot(axis, vector) * (1 - math.cos(angle)))


def _loss_series(metrics: list) -> tuple[np.ndarray, np.ndarray]:
    """(steps, losses) float64 arrays from metrics records that have both keys."""
    rows = [(float(r["step"]), float(r["loss"])) for r in metrics
            if isinstance(r, dict) and "step" in r and isinstance(r.get("loss"), (int, float))]
    if not rows:
        return np.zeros(0), np.zeros(0)
    array = np.asarray(rows, np.float64)
    return array[:, 0], array[:, 1]


def _free_port(host: str) -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host if host not in ("", "0.0.0.0") else "127.0.0.1", 0))
        return int(sock.getsockname()[1])
