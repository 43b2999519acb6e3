"""Training: configs and presets, densify/prune strategy, the trainer, and ``fit``.

``fit`` is exported lazily so ``import recon4d.train`` stays cheap.
"""

from __future__ import annotations

__all__ = ["fit"]


def __getattr__(name: str):
    if name == "fit":
        from recon4d.train.api import fit

        return fit
    raise AttributeError(f"module 'recon4d.train' has no attribute {name!r}")
