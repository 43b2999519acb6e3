"""recon4d: one video of a moving object in, a 4D asset out.

Importing the package is cheap (no torch); heavy modules load inside the stage that needs them.
Stages, in the direction dependencies run: ``data`` (ingest) -> ``model`` -> ``render`` ->
``losses`` -> ``train`` -> ``export`` / ``eval`` -> ``cli``; ``recon4d.viewer`` sits on the
public API.
"""

__version__ = "0.1.0"
