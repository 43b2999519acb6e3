"""Ingest: inputs (video, GIF, frames, RGBA, transforms.json) to a versioned dataset directory.

Modules: ``dataset`` (on-disk format, writer, validating reader), ``options`` (IngestOptions),
``readers`` (video / GIF / frame folder / mask inputs), ``nerfstudio`` (transforms.json in and
out), ``masks`` (keying, GrabCut, checks), ``normalize`` (crop, pad, resize, times),
``cameras`` (fixed / orbit init, OpenGL <-> OpenCV), ``flow`` (DIS optical flow),
``contact_sheet`` and ``ingest`` (the pipeline: :func:`recon4d.data.ingest.ingest`,
:func:`recon4d.data.ingest.ensure_dataset`). Nothing here imports torch.
"""
