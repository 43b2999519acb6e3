"""Point tracks through a clip: DIS optical flow chained frame to frame, checked both ways.

A track starts on a regular pixel grid inside the object's mask and follows the forward flow to
the next frame for as long as the backward flow brings it back to where it came from (within
``tolerance_px``) and it lands inside the next frame's mask. Where the object shows new surface
(it turns, or a track was lost) new tracks start on the grid cells no live track covers, so the
whole visible object stays covered. Classical flow, no model weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recon4d.data.flow import dis_flow


@dataclass
class PointTracks:
    """Tracks over F frames.

    Attributes:
        uv: (T, F, 2) float64 pixel coordinates (x, y; pixel centres at +0.5), NaN where the
            track is not seen.
        valid: (T, F) bool, True where the track is seen.
    """

    uv: np.ndarray
    valid: np.ndarray

    @property
    def num_tracks(self) -> int:
        return int(self.uv.shape[0])

    @property
    def num_observations(self) -> int:
        return int(self.valid.sum())


REMAP_COLUMNS = 1024
"""Width of the coordinate maps handed to cv2.remap (see :func:`sample_bilinear`)."""


def sample_bilinear(field: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """(H, W, C) float image at (N, 2) pixel coordinates (pixel centres at +0.5) -> (N, C);
    coordinates outside take the nearest border value."""
    import cv2

    # cv2.remap takes maps of fewer than 32767 rows (SHRT_MAX): the points are laid out as a
    # (rows, REMAP_COLUMNS) map instead of one column, so a 1024-px clip's tens of thousands
    # of tracks pass too.
    count = len(uv)
    rows = max(1, -(-count // REMAP_COLUMNS))
    x = np.full(rows * REMAP_COLUMNS, -1.0, np.float32)
    y = np.full(rows * REMAP_COLUMNS, -1.0, np.float32)
    x[:count] = uv[:, 0] - 0.5
    y[:count] = uv[:, 1] - 0.5
    x, y = x.reshape(rows, REMAP_COLUMNS), y.reshape(rows, REMAP_COLUMNS)
    channels = [cv2.remap(np.ascontiguousarray(field[..., c], dtype=np.float32), x, y,
                          cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE).reshape(-1)[:count]
                for c in range(field.shape[2])]
    return np.stack(channels, 1).astype(np.float64).reshape(count, field.shape[2])


def point_tracks(frames: np.ndarray, masks: np.ndarray, stride: int = 4,
                 tolerance_px: float = 1.0, min_length: int = 3,
                 preset: str = "medium", flow_size: int = 256) -> PointTracks:
    """Track grid points on the object through consecutive frames.

    Args:
        frames: (F, H, W, 3) RGB, float in [0, 1] or uint8, in time order, F >= 2.
        masks: (F, H, W) object masks in [0, 1] (> 0.5 is the object).
        stride: grid spacing in pixels of the tracks' starting points.
        tolerance_px: largest forward-backward flow disagreement a track survives.
        min_length: tracks seen in fewer frames are dropped.
        preset: OpenCV DIS preset ("ultrafast", "fast", "medium").
        flow_size: frames whose longer side is smaller are enlarged by the whole factor that
            brings them to at least this size before the flow, and the tracks brought back to
            the input's pixels (``stride`` stays in the input's pixels, ``tolerance_px`` applies
            at the flow's size). DIS needs the detail: on the 128x128 turntable scene the root
            estimate from tracks at 128 px loses 40 degrees at the end-on view, from tracks at
            256 px at most 10 over the whole turn (docs/fit.md, Session 18). 0: never.

    Returns:
        :class:`PointTracks` with tracks seen in at least ``min_length`` frames.
    """
    count, height, width = masks.shape
    if count < 2:
        raise ValueError("point_tracks needs at least two frames")
    if frames.dtype != np.uint8:
        frames = (np.clip(frames, 0, 1) * 255 + 0.5).astype(np.uint8)
    factor = max(1, -(-flow_size // max(height, width)))
    if factor > 1:
        import cv2

        # cv2.resize keeps pixel centres aligned: with centres at +0.5, input u = enlarged u / factor.
        big_frames = np.stack([cv2.resize(f, (width * factor, height * factor),
                                          interpolation=cv2.INTER_CUBIC) for f in frames])
        big_masks = np.stack([cv2.resize(np.asarray(m, np.float32), (width * factor, height * factor),
                                         interpolation=cv2.INTER_LINEAR) for m in masks])
        tracks = point_tracks(big_frames, big_masks, stride * factor, tolerance_px, min_length,
                              preset, flow_size=0)
        return PointTracks(tracks.uv / factor, tracks.valid)
    forward, backward = dis_flow(frames, preset)                # (F-1, H, W, 2) each
    inside = masks > 0.5
    gy, gx = np.mgrid[stride // 2:height:stride, stride // 2:width:stride]
    grid = np.stack([gx.ravel(), gy.ravel()], 1)                # (G, 2) integer pixels
    cells = (height + stride - 1) // stride, (width + stride - 1) // stride

    live_ids = np.zeros(0, np.int64)
    live_uv = np.zeros((0, 2))
    total = 0

    def start_tracks(k: int) -> tuple[np.ndarray, np.ndarray]:
        """Grid points inside mask k whose cell holds no live track."""
        taken = np.zeros(cells, bool)
        if len(live_uv):
            cx = np.clip((live_uv[:, 0] // stride).astype(int), 0, cells[1] - 1)
            cy = np.clip((live_uv[:, 1] // stride).astype(int), 0, cells[0] - 1)
            taken[cy, cx] = True
        free = inside[k][grid[:, 1], grid[:, 0]] & ~taken[grid[:, 1] // stride, grid[:, 0] // stride]
        return np.arange(total, total + int(free.sum())), grid[free] + 0.5

    rows: list[tuple[int, np.ndarray, np.ndarray]] = []          # (frame, ids, uv)
    for k in range(count):  # the flow above carries the progress display
        if k > 0 and len(live_uv):
            moved = live_uv + sample_bilinear(forward[k - 1], live_uv)
            back = moved + sample_bilinear(backward[k - 1], moved)
            px = np.floor(moved).astype(int)
            keep = ((np.linalg.norm(back - live_uv, axis=1) < tolerance_px)
                    & (px[:, 0] >= 0) & (px[:, 0] < width) & (px[:, 1] >= 0) & (px[:, 1] < height))
            keep[keep] = inside[k][px[keep, 1], px[keep, 0]]
            live_ids, live_uv = live_ids[keep], moved[keep]
        new_ids, new_uv = start_tracks(k)
        total += len(new_ids)
        live_ids = np.concatenate([live_ids, new_ids])
        live_uv = np.concatenate([live_uv, new_uv])
        rows.append((k, live_ids, live_uv))  # never modified in place: new arrays each frame

    uv = np.full((total, count, 2), np.nan)
    valid = np.zeros((total, count), bool)
    for k, ids, points in rows:
        uv[ids, k] = points
        valid[ids, k] = True
    keep = valid.sum(1) >= min_length
    return PointTracks(uv[keep], valid[keep])
