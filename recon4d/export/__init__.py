"""Export of fitted scenes: animated GLBs (skin, morph), per-frame meshes, USD, splats, videos.

Entry points (docs/export.md): :func:`recon4d.export.exporter.export_run` (a run directory)
and :func:`recon4d.export.exporter.export_scene` (any DynamicScene). Building blocks:
``tsdf`` (fusion + marching cubes), ``mesh_seq`` (per-frame meshes, ``extract_frame_mesh``),
``animated_mesh`` (fixed-topology mesh + motion + skin fitting), ``gltf_skin`` /
``gltf_morph`` (writers), ``gltf_eval`` (an independent glTF animation evaluator), ``usd``,
``splats``, ``video``, ``texture``, ``provenance``. Submodules import torch, so this package
imports nothing by itself.
"""
