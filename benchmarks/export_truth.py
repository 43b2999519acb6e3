"""Animation truth of a run's exported GLBs: validator, independent evaluator, Blender.

Usage::

    python benchmarks/export_truth.py RUN_DIR      # after 'recon4d export RUN_DIR --format glb-skin glb-morph'

For each of export/model_skin.glb and model_morph.glb: the Khronos validator's error/warning
counts (node tools/node/validate_gltf.mjs), the vertex error at every keyframe of
recon4d.export.gltf_eval against the fitted model's own warp of the same vertices (mapped into
the asset frame with the recorded world_to_asset), as mean and max fractions of the canonical
mesh's bounding-box diagonal, and, where Debian's blender is installed, Blender's keyframe count
and its largest difference from gltf_eval. Prints a table, writes
benchmarks/results/export_truth.json.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    import torch

    from recon4d.export import gltf_eval
    from recon4d.model import load_run
    from recon4d.utils.atomic import atomic_write_json

    run = Path(sys.argv[1])
    export = run / "export"
    provenance = json.loads((export / "provenance.json").read_text())
    g = np.asarray(provenance.get("world_to_asset", np.eye(4).tolist()))
    g_inv = np.linalg.inv(g)
    model = load_run(run)
    rows = []
    for name in ("model_skin.glb", "model_morph.glb"):
        path = export / name
        if not path.is_file():
            continue
        row = {"file": name}
        validator = ROOT / "tools" / "node" / "validate_gltf.mjs"
        if shutil.which("node") and (ROOT / "tools" / "node" / "node_modules").is_dir():
            out = subprocess.run(["node", str(validator), str(path)], capture_output=True, text=True)
            report = json.loads(out.stdout)[0]
            row.update(errors=report["numErrors"], warnings=report["numWarnings"])
        doc = gltf_eval.load(path)
        [ev] = gltf_eval.evaluate(doc)
        base = gltf_eval.read_accessor(doc, doc.meshes[0].primitives[0].attributes.POSITION)
        canonical = base @ g_inv[:3, :3].T + g_inv[:3, 3]  # asset -> canonical (scene) frame
        with torch.no_grad():
            truth = np.stack([model.warp_points(torch.tensor(canonical, dtype=torch.float32),
                                                float(t)).double().numpy()
                              for t in model.frame_times])
        truth = truth @ g[:3, :3].T + g[:3, 3]
        diag = float(np.linalg.norm(base.max(0) - base.min(0)))
        err = np.linalg.norm(ev.positions - truth, axis=-1)
        row.update(frames=len(ev.times), vertices=len(base), mean_rel=float(err.mean() / diag),
                   max_rel=float(err.max() / diag))
        if shutil.which("blender"):
            with tempfile.TemporaryDirectory() as tmp:
                report = Path(tmp) / "blender.json"
                subprocess.run(["blender", "-b", "--factory-startup", "--python-exit-code", "1",
                                "--python", str(ROOT / "benchmarks" / "blender_import.py"), "--",
                                str(path), str(report)], capture_output=True, check=True, cwd=tmp)
                blender = json.loads(report.read_text())
            positions = np.asarray(blender["positions"])
            row.update(blender_keyframes=len(blender["keyframes"]),
                       blender_vs_eval=float(np.abs(positions - ev.positions).max())
                       if positions.shape == ev.positions.shape else None)
        rows.append(row)
    print(f"{'file':<18} {'errors':>6} {'warn':>5} {'frames':>6} {'mean err':>9} {'max err':>9} "
          f"{'blender frames':>14} {'blender-eval':>12}")
    for r in rows:
        print(f"{r['file']:<18} {r.get('errors', '-'):>6} {r.get('warnings', '-'):>5} "
              f"{r['frames']:>6} {100 * r['mean_rel']:>8.4f}% {100 * r['max_rel']:>8.4f}% "
              f"{r.get('blender_keyframes', '-'):>14} {r.get('blender_vs_eval', '-')!s:>12}")
    out = ROOT / "benchmarks" / "results" / "export_truth.json"
    atomic_write_json(out, {"run": str(run.resolve()), "step": provenance.get("step"),
                            "rows": rows})
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
