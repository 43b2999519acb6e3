"""A small Adam over named parameter groups, with row-editable state.

Why not ``torch.optim.Adam``: constructing any torch optimizer imports ``torch._dynamo``, which
costs seconds on a small CPU machine at every fit and every test; and the densify/prune strategy
needs to edit per-row moments, which is simplest on state we own. The update is the textbook
Adam (Kingma & Ba) with bias correction, applied group by group.

State layout (``state_dict``, tensors and numbers only, so checkpoints stay weights-only):
``{"groups": [{"name", "lr", "base_lr", "step"}...], "moments": [[(exp_avg, exp_avg_sq) per
param] per group]}``.
"""

from __future__ import annotations

import torch
from torch import Tensor


class Adam:
    """Adam over ``param_groups`` (dicts with "name", "params", "lr", optional "base_lr").

    Attributes mirror torch's where the trainer and strategy use them: ``param_groups`` and
    ``state`` (param -> {"exp_avg", "exp_avg_sq"}); the step count lives per group.
    """

    def __init__(self, groups: list[dict], betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-15):
        self.param_groups = []
        for g in groups:
            self.param_groups.append({"name": g["name"], "params": list(g["params"]),
                                      "lr": float(g["lr"]), "base_lr": float(g.get("base_lr", g["lr"])),
                                      "step": 0})
        self.betas = betas
        self.eps = eps
        self.state: dict[Tensor, dict[str, Tensor]] = {}

    def zero_grad(self, set_to_none: bool = True) -> None:
        for g in self.param_groups:
            for p in g["params"]:
                p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        b1, b2 = self.betas
        for g in self.param_groups:
            params = [p for p in g["params"] if p.grad is not None]
            if not params:
                continue
            g["step"] += 1
            c1 = 1 - b1 ** g["step"]
            c2 = 1 - b2 ** g["step"]
            for p in params:
                st = self.state.get(p)
                if st is None:
                    st = self.state[p] = {"exp_avg": torch.zeros_like(p),
                                          "exp_avg_sq": torch.zeros_like(p)}
                m, v = st["exp_avg"], st["exp_avg_sq"]
                m.mul_(b1).add_(p.grad, alpha=1 - b1)
                v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
                denom = (v / c2).sqrt_().add_(self.eps)
                p.addcdiv_(m, denom, value=-g["lr"] / c1)

    def state_dict(self) -> dict:
        moments = []
        for g in self.param_groups:
            rows = []
            for p in g["params"]:
                st = self.state.get(p)
                rows.append([st["exp_avg"], st["exp_avg_sq"]] if st else [])
            moments.append(rows)
        groups = [{k: g[k] for k in ("name", "lr", "base_lr", "step")} for g in self.param_groups]
        return {"groups": groups, "moments": moments}

    def load_state_dict(self, state: dict) -> None:
        """Restore from :meth:`state_dict`; groups must match by name, order and size."""
        if [g["name"] for g in state["groups"]] != [g["name"] for g in self.param_groups]:
            raise ValueError("optimizer groups differ from the checkpoint's")
        for g, saved, rows in zip(self.param_groups, state["groups"], state["moments"]):
            g["lr"], g["base_lr"], g["step"] = float(saved["lr"]), float(saved["base_lr"]), int(saved["step"])
            for p, row in zip(g["params"], rows):
                if row:
                    if row[0].shape != p.shape:
                        raise ValueError(f"optimizer state of {g['name']} has shape "
                                         f"{tuple(row[0].shape)}, parameter {tuple(p.shape)}")
                    self.state[p] = {"exp_avg": row[0].to(p).clone(), "exp_avg_sq": row[1].to(p).clone()}
