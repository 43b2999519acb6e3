"""Server-side rendering of a :class:`~recon4d.model.protocol.DynamicScene` for the viewer.

One :class:`SceneRenderer` per open scene. It renders through the project's public
``recon4d.render.render`` (the active backend: native on CPU, gsplat/native on CUDA, reference as
the fallback), caches the warped surfels of the last few times (the warp costs about as much as a
small render), and serialises renders with a lock so several browser tabs do not fight over the
CPU cores.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from .cameras import ViewPose, pose_to_cameras
from .modes import RENDER_MODES, bone_palette, to_image

FAR_DEPTH = 100.0
"""Depth (scene units) given to the browser where nothing was rendered, so overlays show there."""


@dataclass
class RenderedView:
    """What the browser gets for one view.

    Attributes:
        image: (H, W, 3) uint8 RGB.
        depth: (H, W) float32 camera z per pixel, FAR_DEPTH where alpha < 0.5 (for compositing
            the 3D overlays against the render).
        seconds: wall time of the render call (warp excluded when it came from the cache).
    """

    image: np.ndarray
    depth: np.ndarray
    seconds: float


class SceneRenderer:
    """Render one scene from viewer poses.

    Args:
        scene: any object implementing the DynamicScene protocol.
        backend: passed to ``recon4d.render.render`` ("auto", "native", "reference", "gsplat").
        background: RGB in [0, 1] behind the object.
        cache_size: how many times' warped surfels to keep.
    """

    def __init__(self, scene, backend: str = "auto", background=(1.0, 1.0, 1.0),
                 cache_size: int = 16):
        self.scene = scene
        self.backend = backend
        self.background = np.asarray(background, np.float32)
        self._cache: OrderedDict[float, object] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()
        self._dominant = None

    def replace_scene(self, scene) -> None:
        """Render ``scene`` from now on (drops the caches of the old one)."""
        with self._lock:
            self.scene = scene
            self._cache.clear()
            self._dominant = None

    @property
    def device(self):
        return self.scene.canonical_surfels().means.device

    def surfels(self, t: float):
        """World-space surfels at time ``t``, detached (cached by t rounded to 1e-4)."""
        import torch

        key = round(float(t), 4)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        with torch.no_grad():
            surfels = self.scene.surfels_at(key).detach()
        self._cache[key] = surfels
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return surfels

    def dominant_bones(self):
        """(N,) index of each canonical surfel's strongest bone (all 0 without bones)."""
        import torch

        if self._dominant is None:
            canonical = self.scene.canonical_surfels()
            if self.scene.num_bones == 0:
                self._dominant = torch.zeros(len(canonical), dtype=torch.long,
                                             device=canonical.means.device)
            else:
                with torch.no_grad():
                    self._dominant = self.scene.skinning_weights(canonical.means).argmax(-1)
        return self._dominant

    def bone_coloured(self, surfels):
        """``surfels`` with their colour replaced by the palette colour of their dominant bone."""
        import torch

        from recon4d.render.types import Surfels

        palette = torch.as_tensor(bone_palette(max(self.scene.num_bones, 1)),
                                  device=surfels.means.device, dtype=surfels.means.dtype)
        return Surfels.from_rgb(surfels.means, surfels.quats, surfels.scales, surfels.opacities,
                                palette[self.dominant_bones()])

    def render(self, pose: ViewPose, width: int, height: int, t: float,
               mode: str = "RGB") -> RenderedView:
        """Render the scene at time ``t`` from ``pose`` at ``width`` x ``height`` pixels."""
        import torch

        from recon4d.render import render

        if mode not in RENDER_MODES:
            raise ValueError(f"mode: expected one of {RENDER_MODES}, got {mode!r}")
        with self._lock, torch.no_grad():
            surfels = self.surfels(t)
            if mode == "Bones":
                surfels = self.bone_coloured(surfels)
            cameras = pose_to_cameras(pose, width, height, device=surfels.means.device)
            background = torch.as_tensor(self.background, device=surfels.means.device)
            start = time.perf_counter()
            out = render(surfels, cameras, backend=self.backend, background=background)
            seconds = time.perf_counter() - start
            rgb = out.rgb[0].float().cpu().numpy()
            alpha = out.alpha[0].float().cpu().numpy()
            depth = out.depth[0].float().cpu().numpy()
            normal = out.normal[0].float().cpu().numpy() if mode == "Normals" else None
        image = to_image(mode, rgb, alpha, depth, normal, self.background)
        composite_depth = np.where(alpha > 0.5, depth, FAR_DEPTH).astype(np.float32)
        return RenderedView((image * 255.0 + 0.5).astype(np.uint8), composite_depth, seconds)
