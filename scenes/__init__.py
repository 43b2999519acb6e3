"""Synthetic dynamic scenes with exact ground truth, and scene definitions (``definitions/``).

Installed as ``recon4d.scenes``.
"""

from pathlib import Path

DEFINITIONS_DIR = Path(__file__).resolve().parent / "definitions"
