"""The dynamic surfel model: canonical surfels, warp fields, refinement, initialisation.

``load_run`` and ``DynamicSurfelModel`` are exported lazily so importing the package stays
cheap (no torch until used).
"""

from __future__ import annotations

__all__ = ["load_run", "DynamicSurfelModel", "CanonicalSurfels"]


def __getattr__(name: str):
    if name == "load_run":
        from recon4d.model.load import load_run

        return load_run
    if name == "DynamicSurfelModel":
        from recon4d.model.scene import DynamicSurfelModel

        return DynamicSurfelModel
    if name == "CanonicalSurfels":
        from recon4d.model.canonical import CanonicalSurfels

        return CanonicalSurfels
    raise AttributeError(f"module 'recon4d.model' has no attribute {name!r}")
