"""Synthetic dynamic scenes with exact ground truth, and scene definitions (``definitions/``).

Installed as ``recon4d.scenes``. Python API::

    from recon4d.scenes import list_scenes, make_scene, load_ground_truth
    path = make_scene("default", "out/default", seed=0)      # dataset dir + gt/
    gt = load_ground_truth(path)                             # numpy arrays

Heavy modules load on first use, so importing this package stays cheap.
"""

from __future__ import annotations

from pathlib import Path

DEFINITIONS_DIR = Path(__file__).resolve().parent / "definitions"

__all__ = ["DEFINITIONS_DIR", "GroundTruth", "list_scenes", "load_ground_truth", "make_scene"]


def list_scenes() -> list[dict]:
    """Every scene definition (synthetic scenes and entries pointing at user clips)."""
    from .generate import list_scenes as _list

    return _list()


def make_scene(name: str, out_dir, seed: int = 0, **overrides) -> Path:
    """Generate synthetic scene ``name`` into ``out_dir``; see :func:`generate.make_scene`."""
    from .generate import make_scene as _make

    return _make(name, out_dir, seed=seed, **overrides)


def load_ground_truth(dataset_dir):
    """Read ``DIR/gt`` (or a gt folder itself) into a :class:`GroundTruth`."""
    from .groundtruth import load_ground_truth as _load

    return _load(dataset_dir)


def __getattr__(name):
    if name == "GroundTruth":
        from .groundtruth import GroundTruth

        return GroundTruth
    raise AttributeError(name)
