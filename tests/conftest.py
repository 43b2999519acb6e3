"""Shared test fixtures and markers.

- ``shared_clips``: ../shared/data/clips beside the checkout; tests that need it skip with a
  reason when it is absent.
- ``cuda`` marker: skipped without a CUDA GPU (CI never has one).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = Path(os.environ.get("RECON4D_SHARED", REPO_ROOT.parent / "shared"))
CLIPS_DIR = SHARED_DIR / "data" / "clips"


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:  # torch missing would fail elsewhere anyway
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; none on this machine")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def clips_dir() -> Path:
    """The shared sample clips; skips the test when ../shared is not beside the checkout."""
    if not CLIPS_DIR.is_dir():
        pytest.skip(f"shared clips not found at {CLIPS_DIR} (set RECON4D_SHARED or place ../shared)")
    return CLIPS_DIR


@pytest.fixture(autouse=True)
def _no_ci_progress(monkeypatch):
    """Tests run quiet and deterministic regardless of the caller's terminal."""
    monkeypatch.setenv("CI", os.environ.get("CI", "1"))
    yield
