"""Per-frame robust weights: down-weight frames that stay much worse than the rest.

Generated videos contain distorted frames (a limb melts for a frame, the texture jumps). A
frame whose running photometric loss stays above ``tolerance`` x the median over frames gets
weight (tolerance x median / its loss)^power < 1, so it cannot drag the shared shape towards
the artefact; every other frame keeps weight 1. Weights are computed from detached losses.
"""

from __future__ import annotations

import torch
from torch import Tensor


class FrameWeights:
    """Running per-frame losses (EMA) and the weights derived from them.

    Args:
        num_frames: F, frames indexed by dataset index.
        momentum: EMA momentum of the per-frame loss.
        tolerance: frames up to this multiple of the median loss keep full weight.
        power: how fast the weight falls beyond the tolerance.
    """

    def __init__(self, num_frames: int, momentum: float = 0.8, tolerance: float = 1.5,
                 power: float = 2.0):
        self.momentum = float(momentum)
        self.tolerance = float(tolerance)
        self.power = float(power)
        self.ema = torch.full((num_frames,), float("nan"))

    def update(self, frames: list[int], losses: Tensor) -> None:
        for f, value in zip(frames, losses.detach().cpu().tolist()):
            old = self.ema[f]
            self.ema[f] = value if torch.isnan(old) else self.momentum * old + (1 - self.momentum) * value

    def weights(self, frames: list[int]) -> Tensor:
        """(len(frames),) weights in (0, 1]."""
        seen = self.ema[~torch.isnan(self.ema)]
        out = torch.ones(len(frames))
        if len(seen) < 3:
            return out
        limit = self.tolerance * float(seen.median())
        for i, f in enumerate(frames):
            value = float(self.ema[f])
            if value == value and value > limit:
                out[i] = (limit / value) ** self.power
        return out

    def state_dict(self) -> dict:
        return {"ema": self.ema.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.ema = state["ema"].clone()
