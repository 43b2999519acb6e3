"""Ingest: inputs (video, GIF, frames, RGBA, transforms.json) to a versioned dataset directory.

The on-disk format and its reader live in :mod:`recon4d.data.dataset`.
"""
