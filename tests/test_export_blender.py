"""Headless Blender imports the exported GLBs and plays them like recon4d's own evaluator.

Marked ``blender``; skipped where Debian's ``blender`` (with python3-numpy) is not installed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from recon4d.export import gltf_eval
from recon4d.export.animated_mesh import build_animated_mesh
from recon4d.export.gltf_morph import write_morph_glb
from recon4d.export.gltf_skin import write_skin_glb
from scene_doubles import CapsuleScene
from test_export_gltf import capsule_mesh

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "blender_import.py"
FRAMES = 6

pytestmark = pytest.mark.blender


def blender_report(glb: Path, tmp_path: Path) -> dict:
    if shutil.which("blender") is None:
        pytest.skip("Debian's blender is not installed (apt-get install blender python3-numpy)")
    report = tmp_path / f"{glb.stem}.json"
    result = subprocess.run(["blender", "-b", "--factory-startup", "--python-exit-code", "1",
                             "--python", str(SCRIPT), "--", str(glb), str(report)],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    if result.returncode != 0 and "No module named 'numpy'" in result.stdout + result.stderr:
        pytest.skip("Blender's glTF importer needs numpy (apt-get install python3-numpy)")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return json.loads(report.read_text())


def test_blender_plays_skin_and_morph_glbs(tmp_path):
    scene = CapsuleScene(num_frames=FRAMES, num_surfels=300)
    animated = build_animated_mesh(scene, capsule_mesh(16))
    for kind, writer in (("skin", write_skin_glb), ("morph", write_morph_glb)):
        glb = writer(animated, tmp_path / f"{kind}.glb", fps=24.0)
        report = blender_report(glb, tmp_path)
        assert len(report["keyframes"]) == FRAMES, kind  # every frame is a keyframe in Blender
        if kind == "skin":
            assert report["armatures"] == 1 and report["bones"] == scene.num_bones + 1
        [ours] = gltf_eval.evaluate(glb)
        blender = np.asarray(report["positions"])
        assert blender.shape == ours.positions.shape, kind
        assert np.abs(blender - ours.positions).max() < 1e-4, kind
        # ... and both follow the scene's warp.
        assert np.linalg.norm(blender - animated.frames, axis=-1).mean() < 0.002 * animated.bbox_diagonal()
