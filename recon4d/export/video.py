"""Videos of a fitted scene (H.264 MP4 through PyAV): input-view replay, a 360-degree orbit
while time plays, normals, depth, alpha, and input | render side by side.

Colour maps: normals are world-space unit vectors shown as ``0.5 + 0.5 * n``; depth is the
median depth normalised over the clip's foreground (near = bright) through OpenCV's TURBO map;
alpha is grey. Backgrounds are the dataset's background colour (white by default).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from recon4d.render.types import Cameras
from recon4d.utils.atomic import atomic_path
from recon4d.utils.console import track

from .views import bounding_sphere, orbit_cameras


def to_uint8(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) float in [0, 1] -> uint8."""
    return np.clip(np.round(np.asarray(image, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)


def write_mp4(frames: Iterable[np.ndarray], path: str | Path, fps: float = 24.0,
              crf: int = 18) -> Path:
    """Encode (H, W, 3) uint8 frames as H.264 (yuv420p) MP4 at ``path``, atomically.

    Odd sizes are padded by one pixel (edge colour) since yuv420p needs even dimensions.
    """
    import av
    from fractions import Fraction

    path = Path(path)
    with atomic_path(path) as tmp:
        container = av.open(str(tmp), mode="w")
        stream = None
        try:
            for frame in frames:
                frame = np.asarray(frame, dtype=np.uint8)
                pad_h, pad_w = frame.shape[0] % 2, frame.shape[1] % 2
                if pad_h or pad_w:
                    frame = np.pad(frame, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
                if stream is None:
                    stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
                    stream.width, stream.height = frame.shape[1], frame.shape[0]
                    stream.pix_fmt = "yuv420p"
                    stream.options = {"crf": str(crf), "preset": "medium"}
                picture = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
                container.mux(stream.encode(picture))
            if stream is None:
                raise ValueError("frames: no frames to encode")
            container.mux(stream.encode(None))
        finally:
            container.close()
    return path


def read_mp4(path: str | Path) -> np.ndarray:
    """(F, H, W, 3) uint8 frames of a video (for tests and tools)."""
    import av

    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def normal_image(normal: np.ndarray, alpha: np.ndarray, background: np.ndarray) -> np.ndarray:
    """(H, W, 3) accumulated world normals and (H, W) alpha -> (H, W, 3) float colours."""
    n = normal / np.maximum(np.linalg.norm(normal, axis=-1, keepdims=True), 1e-8)
    rgb = 0.5 + 0.5 * n
    a = alpha[..., None]
    return rgb * a + background * (1 - a)


def depth_image(depth: np.ndarray, alpha: np.ndarray, near: float, far: float) -> np.ndarray:
    """(H, W) median depth -> (H, W, 3) float TURBO colours (near bright), black background."""
    import cv2

    valid = (depth > 0) & (alpha > 0.5)
    scaled = np.clip((far - depth) / max(far - near, 1e-8), 0, 1)
    coloured = cv2.applyColorMap(to_uint8(np.repeat(scaled[..., None], 3, -1))[..., 0],
                                 cv2.COLORMAP_TURBO)[..., ::-1] / 255.0
    return np.where(valid[..., None], coloured, 0.0)


def _render(scene, t: float, cameras: Cameras, background, backend: str):
    from recon4d.render import render

    with torch.no_grad():
        surfels = scene.surfels_at(float(t)).detach()
        bg = torch.as_tensor(background, dtype=surfels.dtype, device=surfels.device)
        return render(surfels, cameras.to(device=surfels.device, dtype=surfels.dtype),
                      backend=backend, background=bg)


def render_input_views(scene, backend: str = "auto", background=(1.0, 1.0, 1.0),
                       scale: float = 1.0) -> dict[str, np.ndarray]:
    """Render every input frame from its own camera: rgb (F, H, W, 3), alpha (F, H, W),
    median_depth (F, H, W), normal (F, H, W, 3), as numpy float32."""
    cameras = scene.input_cameras()
    if scale != 1.0:
        cameras = _scaled(cameras, scale)
    maps: dict[str, list] = {"rgb": [], "alpha": [], "median_depth": [], "normal": []}
    times = scene.frame_times.detach().cpu().tolist()
    for index, t in track(list(enumerate(times)), description="input-view renders"):
        out = _render(scene, t, cameras[index], background, backend)
        for key in maps:
            maps[key].append(getattr(out, key)[0].detach().cpu().float().numpy())
    return {key: np.stack(value) for key, value in maps.items()}


def _scaled(cameras: Cameras, scale: float) -> Cameras:
    ks = cameras.Ks.clone()
    ks[:, :2] *= scale
    return Cameras(cameras.viewmats, ks, max(1, round(cameras.width * scale)),
                   max(1, round(cameras.height * scale)))


def orbit_frames(scene, count: int = 48, size: int = 256, backend: str = "auto",
                 background=(1.0, 1.0, 1.0)) -> np.ndarray:
    """(count, size, size, 3) uint8: one turn around the object, time running 0 -> 1."""
    first = scene.surfels_at(float(scene.frame_times[0])).means.detach().cpu().double().numpy()
    center, radius = bounding_sphere(first, quantile=0.99)
    cams = scene.input_cameras()
    cam2world = torch.linalg.inv(cams.viewmats[:1].double().cpu())[0].numpy()
    up = -cam2world[:3, 1]  # image y runs down: the camera's -y is the world's up
    orbit = orbit_cameras(center, radius * 1.05, up, cam2world[:3, 3], count, size)
    times = np.linspace(0.0, 1.0, count)
    out = []
    for i in track(range(count), description="orbit renders"):
        rendered = _render(scene, float(times[i]), orbit[i], background, backend)
        out.append(to_uint8(rendered.rgb[0].cpu().numpy()))
    return np.stack(out)


def clip_paced_fps(video_frames: int, clip_frames: int, clip_fps: float) -> float:
    """Frame rate at which ``video_frames`` frames whose time runs over the whole clip (an orbit
    while time plays) last as long as the clip: ``clip_frames`` frames at ``clip_fps``."""
    if clip_frames < 2 or video_frames < 2:
        return float(clip_fps)
    return (video_frames - 1) / ((clip_frames - 1) / float(clip_fps))


def write_videos(scene, out_dir: str | Path, fps: float = 24.0, dataset=None,
                 backend: str = "auto", orbit_count: int = 48, orbit_size: int = 256,
                 kinds: tuple[str, ...] = ("input", "orbit", "normals", "depth", "alpha",
                                           "side_by_side")) -> dict[str, Path]:
    """Write the requested MP4s into ``out_dir``; returns {kind: path}.

    ``dataset`` (a :class:`recon4d.data.dataset.Dataset`) supplies the input frames for the
    side-by-side video (skipped without it) and the background colour.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    background = np.asarray(dataset.background if dataset is not None else (1.0, 1.0, 1.0),
                            dtype=np.float32)
    written: dict[str, Path] = {}
    if any(k in kinds for k in ("input", "normals", "depth", "alpha", "side_by_side")):
        maps = render_input_views(scene, backend, background)
        alpha = maps["alpha"]
        if "input" in kinds:
            written["input"] = write_mp4((to_uint8(f) for f in maps["rgb"]),
                                         out_dir / "input_views.mp4", fps)
        if "normals" in kinds:
            written["normals"] = write_mp4(
                (to_uint8(normal_image(n, a, background)) for n, a in zip(maps["normal"], alpha)),
                out_dir / "normals.mp4", fps)
        if "depth" in kinds:
            fg = maps["median_depth"][(maps["median_depth"] > 0) & (alpha > 0.5)]
            near, far = (np.quantile(fg, 0.01), np.quantile(fg, 0.99)) if fg.size else (0.0, 1.0)
            written["depth"] = write_mp4(
                (to_uint8(depth_image(d, a, near, far)) for d, a in zip(maps["median_depth"], alpha)),
                out_dir / "depth.mp4", fps)
        if "alpha" in kinds:
            written["alpha"] = write_mp4((to_uint8(np.repeat(a[..., None], 3, -1)) for a in alpha),
                                         out_dir / "alpha.mp4", fps)
        if "side_by_side" in kinds and dataset is not None:
            if dataset.frames.shape[1:3] == maps["rgb"].shape[1:3]:
                written["side_by_side"] = write_mp4(
                    (to_uint8(np.concatenate([src, ren], 1))
                     for src, ren in zip(dataset.frames, maps["rgb"])),
                    out_dir / "input_vs_render.mp4", fps)
    if "orbit" in kinds:
        # Its own frame count, time running over the whole clip: paced to last as long.
        orbit_fps = clip_paced_fps(orbit_count, len(scene.frame_times), fps)
        written["orbit"] = write_mp4(orbit_frames(scene, orbit_count, orbit_size, backend,
                                                  background), out_dir / "orbit.mp4", orbit_fps)
    return written
