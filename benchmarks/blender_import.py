"""Headless Blender import check of an exported GLB (skin or morph).

Run inside Blender (Debian's ``blender`` package)::

    blender -b --factory-startup --python-exit-code 1 --python benchmarks/blender_import.py -- \
        RUN_DIR/export/model_skin.glb report.json

Imports the file with Blender's own glTF importer, then steps through every keyframe of the
imported animation and writes JSON: the number of armatures and bones, the action names, the
keyframe frames, and the evaluated (deformed) world positions of the first mesh's vertices at
each keyframe, converted back from Blender's Z-up to glTF's Y-up axes. ``tests/test_export_blender.py``
compares those with recon4d's own evaluator; run by hand it shows that Blender plays the
animation with the right frame count.
"""

import json
import sys

import bpy  # noqa: E402  (only inside Blender)


def _numpy_aliases() -> None:
    """Debian's Blender 3.4 glTF add-on uses ``np.bool``, which numpy >= 1.24 removed."""
    import numpy

    if "bool" not in numpy.__dict__:
        numpy.bool = bool


def main() -> None:
    _numpy_aliases()
    argv = sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else []
    if len(argv) != 2:
        raise SystemExit("usage: blender -b --python blender_import.py -- FILE.glb REPORT.json")
    glb, report = argv
    bpy.ops.wm.read_factory_settings(use_empty=True)
    bpy.ops.import_scene.gltf(filepath=glb)
    armatures = [o for o in bpy.data.objects if o.type == "ARMATURE"]
    meshes = [o for o in bpy.data.objects if o.type == "MESH"]
    frames = sorted({kp.co.x for action in bpy.data.actions for curve in action.fcurves
                     for kp in curve.keyframe_points})
    result = {
        "blender": bpy.app.version_string,
        "armatures": len(armatures),
        "bones": len(armatures[0].data.bones) if armatures else 0,
        "actions": [a.name for a in bpy.data.actions],
        "keyframes": frames,
        "fps": bpy.context.scene.render.fps,
        "vertices": len(meshes[0].data.vertices) if meshes else 0,
        "positions": [],
    }
    scene = bpy.context.scene
    for frame in frames:
        whole = int(frame // 1)
        scene.frame_set(whole, subframe=float(frame - whole))
        depsgraph = bpy.context.evaluated_depsgraph_get()
        obj = meshes[0].evaluated_get(depsgraph)
        mesh = obj.to_mesh()
        points = []
        for vertex in mesh.vertices:
            x, y, z = obj.matrix_world @ vertex.co
            points.append([x, z, -y])  # Blender Z-up -> glTF Y-up
        obj.to_mesh_clear()
        result["positions"].append(points)
    with open(report, "w", encoding="utf-8") as handle:
        json.dump(result, handle)


main()
