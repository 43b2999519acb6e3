"""Playback state and adaptive render resolution: the viewer's clocks, free of any GUI code.

Time is the normalised clip time t in [0, 1] (docs/design.md §2); the input frames sit at
``frame_times``. Playback speed is a multiple of the clip's nominal frame rate, so speed 1 shows
one input frame per 1/fps seconds whatever the number of frames.
"""

from __future__ import annotations

import math

import numpy as np


class Playback:
    """Time slider state: current t, play/pause, speed, loop, frame stepping.

    Args:
        frame_times: (F,) normalised times of the input frames, non-decreasing.
        fps: nominal frame rate of the clip (input frames per second at speed 1).
    """

    def __init__(self, frame_times, fps: float = 12.0):
        times = np.asarray(frame_times, np.float64).reshape(-1)
        if times.size == 0:
            raise ValueError("frame_times: need at least one frame")
        self.frame_times = times
        self.fps = float(fps)
        self.t = float(times[0])
        self.playing = False
        self.speed = 1.0
        self.loop = True

    @property
    def start(self) -> float:
        return float(self.frame_times[0])

    @property
    def end(self) -> float:
        return float(self.frame_times[-1])

    def seek(self, t: float) -> float:
        """Set t, clamped to the clip; returns the new t."""
        self.t = float(min(max(float(t), self.start), self.end))
        return self.t

    def frame_index(self, t: float | None = None) -> int:
        """Index of the input frame nearest to ``t`` (default: the current t)."""
        t = self.t if t is None else float(t)
        return int(np.argmin(np.abs(self.frame_times - t)))

    def step(self, frames: int) -> float:
        """Move ``frames`` input frames forward (negative: back) from the nearest frame."""
        count = len(self.frame_times)
        index = self.frame_index() + int(frames)
        index = index % count if self.loop else min(max(index, 0), count - 1)
        self.t = float(self.frame_times[index])
        return self.t

    def advance(self, seconds: float) -> float:
        """Advance a playing clock by ``seconds`` of wall time; wraps when looping, else stops."""
        if not self.playing or self.end <= self.start:
            return self.t
        span = self.end - self.start
        per_second = self.speed * self.fps * span / max(len(self.frame_times) - 1, 1)
        t = self.t + seconds * per_second
        if t > self.end:
            if self.loop:
                t = self.start + math.fmod(t - self.start, span)
            else:
                t, self.playing = self.end, False
        self.t = float(t)
        return self.t


class AdaptiveResolution:
    """Pick the render size: small while the view moves, full when it rests.

    The moving size is chosen so one render takes about ``budget_s`` seconds, from a running
    estimate of seconds per pixel; the size is quantised to multiples of 16 px (renderer tiles)
    so it does not jitter frame to frame.

    Args:
        full_side: longest image side when the view is still, pixels.
        min_side: never render smaller than this while moving.
        budget_s: target time of one interactive render.
    """

    def __init__(self, full_side: int = 512, min_side: int = 64, budget_s: float = 0.1):
        self.full_side = int(full_side)
        self.min_side = int(min(min_side, full_side))
        self.budget_s = float(budget_s)
        self.seconds_per_pixel: float | None = None

    def record(self, pixels: int, seconds: float) -> None:
        """Feed back the cost of a finished render (exponential moving average)."""
        if pixels <= 0 or not math.isfinite(seconds) or seconds <= 0:
            return
        sample = seconds / pixels
        if self.seconds_per_pixel is None:
            self.seconds_per_pixel = sample
        else:
            self.seconds_per_pixel = 0.7 * self.seconds_per_pixel + 0.3 * sample

    def side(self, moving: bool) -> int:
        """Longest side to render now (square-image budget; callers apply the aspect ratio)."""
        if not moving or self.seconds_per_pixel is None:
            return self.full_side if not moving else max(self.min_side, self.full_side // 2)
        side = math.sqrt(self.budget_s / self.seconds_per_pixel)
        side = int(side // 16 * 16)
        return int(min(max(side, self.min_side), self.full_side))
