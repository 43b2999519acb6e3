"""Loss weights and their schedules as data: piecewise-linear in training progress.

A weight is a number (constant) or a list of ``[progress, value]`` breakpoints with progress in
[0, 1] of the stage; values are interpolated linearly and held outside the breakpoints. E.g.
``[[0, 0], [0.3, 0], [0.5, 0.05]]`` switches a term on between 30% and 50% of the stage.
"""

from __future__ import annotations

from typing import Sequence, Union

Weight = Union[float, Sequence[Sequence[float]]]


def weight_at(weight: Weight, progress: float) -> float:
    """The value of ``weight`` at ``progress`` in [0, 1]."""
    if isinstance(weight, (int, float)):
        return float(weight)
    points = sorted((float(p), float(v)) for p, v in weight)
    if not points:
        return 0.0
    if progress <= points[0][0]:
        return points[0][1]
    for (p0, v0), (p1, v1) in zip(points, points[1:]):
        if progress <= p1:
            a = 0.0 if p1 == p0 else (progress - p0) / (p1 - p0)
            return v0 + a * (v1 - v0)
    return points[-1][1]


def weights_at(weights: dict[str, Weight], progress: float) -> dict[str, float]:
    return {name: weight_at(w, progress) for name, w in weights.items()}
