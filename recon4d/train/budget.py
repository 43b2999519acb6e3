"""A wall-clock budget for a fit: how many full-stage steps fit in the time that is left.

``recon4d fit --time-budget MINUTES`` times a few full-stage steps, then shortens the full stage
once (never lengthens it) so that the fit ends within the budget. Densification and every
schedule run on the stage's progress (step / steps), so a shortened stage still grows its
surfels, decays its learning rates and switches on its late losses, only over fewer steps.

Steps get slower as densification adds surfels, so the time of the remaining steps is
predicted, not extrapolated: a step at N surfels is taken to cost ``rate * (fixed + (1 - fixed)
* N / N_now)`` (image-sized work does not grow with N, the warp and the rasteriser's per-surfel
work do), with N following the strategy's own growth rule (:func:`surfel_counts`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PROBE_SKIP = 5
"""Full-stage steps left untimed (the stage switch, the first densification bookkeeping)."""
PROBE_STEPS = 20
"""Full-stage steps timed for the rate."""
FIXED_SHARE = 0.5
"""Share of a step's time that does not grow with the surfel count (image losses, SSIM, the
rasteriser's per-pixel setup): about half on the CPU at 16k surfels and 256x256."""


@dataclass(frozen=True)
class BudgetPlan:
    """The decision: ``steps`` full-stage steps in all (``planned`` if they fit)."""

    planned: int
    steps: int
    predicted_seconds: float
    """Predicted time of the remaining steps of the chosen plan."""

    @property
    def shortened(self) -> bool:
        return self.steps < self.planned


@dataclass(frozen=True)
class Growth:
    """The densification the rest of the stage will do (the strategy's settings)."""

    cap: int
    every: int
    fraction: float
    start: float
    stop: float


def surfel_counts(steps: int, done: int, surfels: int, growth: Growth) -> np.ndarray:
    """(steps - done,) predicted surfel counts at full-stage steps ``done .. steps - 1`` when
    the stage has ``steps``: each densification (every ``growth.every`` steps inside its
    progress window) adds ``fraction`` of the surfels, up to the cap; pruning is left out, so
    the prediction errs on the slow side."""
    counts = np.full(max(steps - done, 0), float(surfels))
    if growth.cap <= surfels or growth.every <= 0 or growth.fraction <= 0 or steps <= done:
        return counts
    current = surfels
    # The strategy runs after step `event` (a multiple of `every`, not 0) has rendered, so the
    # new surfels first cost time at step event + 1.
    first = max(growth.every, -(-done // growth.every) * growth.every)
    for event in range(first, steps, growth.every):
        if not growth.start <= event / steps <= growth.stop:
            continue
        current = min(growth.cap, current + int(growth.fraction * current))
        counts[event - done + 1:] = current
        if current >= growth.cap:
            break
    return counts


def remaining_seconds(steps: int, done: int, step_seconds: float, surfels: int,
                      growth: Growth) -> float:
    """Predicted seconds of full-stage steps ``done .. steps - 1`` when the stage has ``steps``."""
    counts = surfel_counts(steps, done, surfels, growth)
    per_step = step_seconds * (FIXED_SHARE + (1.0 - FIXED_SHARE) * counts / max(surfels, 1))
    return float(per_step.sum())


def plan_full_steps(planned: int, done: int, step_seconds: float, surfels: int, growth: Growth,
                    seconds_left: float) -> BudgetPlan:
    """The most full-stage steps (at most ``planned``, at least ``done + 1``) whose remaining
    steps are predicted to take at most ``seconds_left``.

    Args:
        planned: the stage's planned steps; done: steps of it already taken.
        step_seconds: measured seconds of a full-stage step now, at ``surfels`` surfels.
        growth: the densification still to come.
        seconds_left: the budget minus the time spent and a reserve for the end of the fit.
    """
    def cost(steps: int) -> float:
        return remaining_seconds(steps, done, step_seconds, surfels, growth)

    whole = cost(planned)
    if whole <= seconds_left:
        return BudgetPlan(planned, planned, whole)
    low, high = done + 1, planned  # cost(high) is over the budget; find the last step count under it
    low_cost = cost(low)
    if low_cost > seconds_left:
        return BudgetPlan(planned, low, low_cost)
    while high - low > 1:
        middle = (low + high) // 2
        middle_cost = cost(middle)
        if middle_cost <= seconds_left:
            low, low_cost = middle, middle_cost
        else:
            high = middle
    return BudgetPlan(planned, low, low_cost)
