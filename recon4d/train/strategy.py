"""Densification and pruning as a strategy object.

Every change of rows goes through :func:`edit_rows`, which rebuilds EVERY row-aligned tensor of
the canonical surfels (surfel parameters and registered extras alike) and the Adam state
(``exp_avg``, ``exp_avg_sq``) of each, so extras and optimizer moments never drift out of
alignment with the surfels. New rows start with zero moments.

Densification ranks surfels by their accumulated positional-gradient norm and grows the top
``grow_fraction``: small ones are cloned, large ones split in two along their disc. Pruning drops
nearly transparent and oversized surfels. Gradient ranking (rather than a fixed threshold) keeps
the strategy independent of the scene's scale and the renderer's gradient magnitudes.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from recon4d.model.canonical import CanonicalSurfels
from recon4d.model.rotations import quat_to_rotmat
from recon4d.train.config import StrategyConfig


def _find_group(optimizer: Any, param: Tensor):
    for group in optimizer.param_groups:
        for i, p in enumerate(group["params"]):
            if p is param:
                return group, i
    return None, -1


def edit_rows(canonical: CanonicalSurfels, optimizer: Any | None,
              select: Tensor, appended: dict[str, Tensor] | None = None) -> None:
    """Keep rows ``select`` (indices, in that order) of every row-aligned tensor and append
    ``appended[name]`` rows (same set of names; new rows get zero Adam moments)."""
    for name, param in canonical.row_parameters().items():
        old = param.detach()
        extra = appended[name] if appended else old[:0]
        new_value = torch.cat([old[select], extra.to(old)], dim=0)
        new_param = canonical.set_row_parameter(name, new_value)
        if optimizer is None:
            continue
        group, i = _find_group(optimizer, param)
        if group is None:
            continue
        state = optimizer.state.pop(param, None)
        group["params"][i] = new_param
        if state:
            for key in ("exp_avg", "exp_avg_sq"):
                if key in state and state[key].shape == old.shape:
                    moment = state[key]
                    state[key] = torch.cat([moment[select], torch.zeros_like(extra, dtype=moment.dtype)])
            optimizer.state[new_param] = state


def split_rows(canonical: CanonicalSurfels, rows: Tensor, children: int,
               shrink: float, generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """New rows: ``children`` copies of each row in ``rows``, centres scattered on the parent's
    disc (Gaussian with the parent's stds), log-scales reduced by log(``shrink``)."""
    params = {name: p.detach()[rows] for name, p in canonical.row_parameters().items()}
    out = {name: value.repeat_interleave(children, dim=0) for name, value in params.items()}
    if len(rows) == 0:
        return out
    rot = quat_to_rotmat(params["quats"]).repeat_interleave(children, dim=0)  # (M, 3, 3)
    std = torch.exp(params["log_scales"]).repeat_interleave(children, dim=0)   # (M, 2)
    noise = torch.randn(std.shape, generator=generator).to(std) * std
    out["means"] = out["means"] + (rot[:, :, :2] @ noise.unsqueeze(-1)).squeeze(-1)
    out["log_scales"] = out["log_scales"] - math.log(shrink)
    return out


class DensifyPrune:
    """Grow where the fit is under-resolved, drop what does not contribute.

    Hooks, called by the trainer: :meth:`after_backward` (accumulate gradients) and
    :meth:`step` (maybe edit rows; returns True when the rows changed, so caches such as
    neighbour lists are rebuilt).
    """

    def __init__(self, config: StrategyConfig, extent: float, seed: int = 0):
        self.config = config
        self.extent = float(extent)
        self.generator = torch.Generator().manual_seed(seed)
        self.grad_sum: Tensor | None = None
        self.count: Tensor | None = None

    def reset(self, num_surfels: int, device=None) -> None:
        self.grad_sum = torch.zeros(num_surfels, device=device)
        self.count = torch.zeros(num_surfels, device=device)

    def after_backward(self, canonical: CanonicalSurfels) -> None:
        grad = canonical.means.grad
        if grad is None:
            return
        if self.grad_sum is None or self.grad_sum.shape[0] != grad.shape[0]:
            self.reset(grad.shape[0], grad.device)
        norm = grad.detach().norm(dim=-1)
        self.grad_sum += norm
        self.count += (norm > 0).to(self.count.dtype)

    def step(self, canonical: CanonicalSurfels, optimizer: Any | None,
             step: int, progress: float) -> bool:
        cfg = self.config
        if not cfg.enabled or step <= 0 or step % cfg.every != 0:
            return False
        if not (cfg.start <= progress <= cfg.stop):
            return False
        changed = self.prune(canonical, optimizer)
        changed = self.densify(canonical, optimizer) or changed
        self.reset(len(canonical), canonical.means.device)
        return changed

    def prune(self, canonical: CanonicalSurfels, optimizer) -> bool:
        cfg = self.config
        with torch.no_grad():
            drop = canonical.opacities < cfg.prune_opacity
            drop |= canonical.scales.max(dim=1).values > cfg.prune_scale * self.extent
        keep = torch.nonzero(~drop).squeeze(1)
        # Never prune the model away: keep at least half of it (a lone surfel stays).
        if drop.sum() == 0 or 2 * len(keep) < len(canonical):
            return False
        if self.grad_sum is not None and len(self.grad_sum) == len(canonical):
            self.grad_sum, self.count = self.grad_sum[keep], self.count[keep]
        edit_rows(canonical, optimizer, keep)
        return True

    def densify(self, canonical: CanonicalSurfels, optimizer) -> bool:
        cfg = self.config
        n = len(canonical)
        if self.grad_sum is None or len(self.grad_sum) != n:
            return False
        room = cfg.max_surfels - n
        grow = min(int(cfg.grow_fraction * n), room)
        if grow <= 0:
            return False
        mean_grad = self.grad_sum / self.count.clamp_min(1)
        chosen = torch.topk(mean_grad, grow).indices
        chosen = chosen[mean_grad[chosen] > 0]
        if len(chosen) == 0:
            return False
        with torch.no_grad():
            size = canonical.scales.max(dim=1).values
            large = size[chosen] > cfg.split_scale * size.median()
        split, clone = chosen[large], chosen[~large]
        # Split parents are replaced by two children; clones add one copy beside the original.
        keep_mask = torch.ones(n, dtype=torch.bool, device=canonical.means.device)
        keep_mask[split] = False
        keep = torch.nonzero(keep_mask).squeeze(1)
        children = split_rows(canonical, split, 2, 1.6, self.generator)
        clones = {name: p.detach()[clone] for name, p in canonical.row_parameters().items()}
        appended = {name: torch.cat([children[name], clones[name]]) for name in clones}
        edit_rows(canonical, optimizer, keep, appended)
        return True

    def state_dict(self) -> dict:
        return {"grad_sum": self.grad_sum, "count": self.count,
                "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.grad_sum = state.get("grad_sum")
        self.count = state.get("count")
        if state.get("generator") is not None:
            self.generator.set_state(state["generator"].cpu())


def upsample(canonical: CanonicalSurfels, target: int, generator: torch.Generator | None = None) -> None:
    """Replace each surfel by about ``target / N`` smaller children on its disc (coarse -> full
    stage), keeping every extra aligned. No optimizer: the full stage builds a fresh one."""
    n = len(canonical)
    children = max(1, math.ceil(target / max(n, 1)))
    if children == 1:
        # Already at or above the target: one "child" per surfel would only jitter the fit.
        return
    rows = torch.arange(n, device=canonical.means.device)
    shrink = math.sqrt(children) / 1.2  # children overlap a little, as the parent covered its disc
    new = split_rows(canonical, rows, children, max(shrink, 1.0), generator)
    edit_rows(canonical, None, rows[:0], new)
