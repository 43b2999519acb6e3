"""Animated GLB export: skin and morph files checked by the Khronos validator and by an
independent glTF evaluator against the scene's own warp, frame by frame.

The scene is the analytic bending capsule of ``scene_doubles`` (dual-quaternion warp, root
motion) and the canonical mesh an analytic capsule, so no renderer or training is involved.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pygltflib
import pytest
import torch
import trimesh

from recon4d.export import gltf_eval
from recon4d.export.animated_mesh import build_animated_mesh
from recon4d.export.exporter import engine_frame
from recon4d.export.gltf_morph import write_morph_glb
from recon4d.export.gltf_skin import write_skin_glb
from recon4d.export.texture import bake_texture, texture_available
from scene_doubles import CapsuleScene

REPO = Path(__file__).resolve().parents[1]
NODE_TOOLS = REPO / "tools" / "node"
FRAMES = 10


def capsule_mesh(sections: int = 24) -> trimesh.Trimesh:
    """An analytic capsule along x matching CapsuleScene's shape (canonical frame)."""
    mesh = trimesh.creation.capsule(height=2 * CapsuleScene.half_length,
                                    radius=CapsuleScene.radius, count=[sections, sections])
    mesh.apply_transform(trimesh.transformations.rotation_matrix(np.pi / 2, [0, 1, 0]))
    colors = np.zeros((len(mesh.vertices), 4), dtype=np.uint8)
    colors[:, 0] = np.clip(128 + 100 * mesh.vertices[:, 0], 0, 255)
    colors[:, 1:] = 200
    mesh.visual.vertex_colors = colors
    return mesh


def truth(scene, vertices: np.ndarray, times: np.ndarray) -> np.ndarray:
    """(F, V, 3) positions straight from the scene's warp (not via the exporter)."""
    pts = torch.tensor(vertices, dtype=torch.float32)
    return np.stack([scene.warp_points(pts, float(t)).double().numpy() for t in times])


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("glb")
    scene = CapsuleScene(num_frames=FRAMES, blend="dqs", num_surfels=1500)
    mesh = capsule_mesh()
    animated = build_animated_mesh(scene, mesh)
    provenance = {"recon4d": {"run": "test-double", "step": 7}}
    skin = write_skin_glb(animated, folder / "skin.glb", fps=12.0, extras=provenance)
    morph = write_morph_glb(animated, folder / "morph.glb", fps=12.0, extras=provenance)
    g = engine_frame(scene, animated.frames[0])
    skin_yup = write_skin_glb(animated.transformed(g), folder / "skin_yup.glb", fps=12.0)
    textured = skin_tex = morph_tex = None
    if texture_available():  # xatlas comes with the dev extras
        textured = bake_texture(animated, scene.canonical_surfels(), size=128)
        skin_tex = write_skin_glb(textured, folder / "skin_tex.glb", fps=12.0)
        morph_tex = write_morph_glb(textured, folder / "morph_tex.glb", fps=12.0)
    return {"scene": scene, "mesh": mesh, "animated": animated, "skin": skin, "morph": morph,
            "skin_yup": skin_yup, "g": g, "skin_tex": skin_tex, "morph_tex": morph_tex,
            "textured": textured}


def _diag(vertices: np.ndarray) -> float:
    return float(np.linalg.norm(vertices.max(0) - vertices.min(0)))


def test_skinned_glb_follows_the_dqs_warp_at_every_frame(exported):
    scene, mesh = exported["scene"], exported["mesh"]
    [evaluated] = gltf_eval.evaluate(exported["skin"])
    times = scene.frame_times.numpy()
    assert evaluated.positions.shape == (FRAMES, len(mesh.vertices), 3)
    expected = truth(scene, np.asarray(mesh.vertices), times)
    err = np.linalg.norm(evaluated.positions - expected, axis=-1)
    diag = _diag(np.asarray(mesh.vertices))
    assert err.mean() <= 0.002 * diag, f"mean skin error {err.mean() / diag:.4%} of the diagonal"
    assert err.max() <= 0.01 * diag, f"max skin error {err.max() / diag:.4%} of the diagonal"
    # The motion is real: frames differ from the rest pose by far more than the error.
    assert np.linalg.norm(expected - np.asarray(mesh.vertices), axis=-1).mean() > 20 * err.mean()


def test_morph_glb_matches_the_warp_to_float_precision(exported):
    scene, mesh = exported["scene"], exported["mesh"]
    [evaluated] = gltf_eval.evaluate(exported["morph"])
    expected = truth(scene, np.asarray(mesh.vertices), scene.frame_times.numpy())
    err = np.abs(evaluated.positions - expected).max()
    assert err <= 4 * np.finfo(np.float32).eps * np.abs(expected).max()


def test_engine_frame_is_the_same_motion_rotated(exported):
    scene, mesh, g = exported["scene"], exported["mesh"], exported["g"]
    [evaluated] = gltf_eval.evaluate(exported["skin_yup"])
    expected = truth(scene, np.asarray(mesh.vertices), scene.frame_times.numpy())
    expected = expected @ g[:3, :3].T + g[:3, 3]
    err = np.linalg.norm(evaluated.positions - expected, axis=-1)
    diag = _diag(np.asarray(mesh.vertices))
    assert err.mean() <= 0.002 * diag
    # Y up: the true frame-0 surface stands on y = 0, centred on the origin in x and z.
    assert abs(expected[0][:, 1].min()) < 1e-6
    assert np.allclose(expected[0][:, [0, 2]].max(0) + expected[0][:, [0, 2]].min(0), 0, atol=1e-6)
    # The image's up (-y of the OpenCV camera) is the asset's +y.
    cam = exported["scene"].input_cameras().viewmats[0].double().numpy()
    assert np.allclose(g[:3, :3] @ cam[:3, :3].T @ np.array([0, -1.0, 0]), [0, 1, 0], atol=1e-9)
    assert np.allclose(g[:3, :3] @ g[:3, :3].T, np.eye(3), atol=1e-9)


def test_skin_structure_weights_and_topology(exported):
    scene, mesh = exported["scene"], exported["mesh"]
    doc = pygltflib.GLTF2.load_binary(str(exported["skin"]))
    [skin] = doc.skins
    assert len(skin.joints) == scene.num_bones + 1  # root + one per bone
    ibm = gltf_eval.read_accessor(doc, skin.inverseBindMatrices)
    assert ibm.shape == (scene.num_bones + 1, 4, 4)
    prim = doc.meshes[0].primitives[0]
    joints = gltf_eval.read_accessor(doc, prim.attributes.JOINTS_0).astype(int)
    weights = gltf_eval.read_accessor(doc, prim.attributes.WEIGHTS_0)
    assert np.allclose(weights.sum(1), 1.0, atol=1e-6)
    # The stored weights are the animated mesh's (fitted over the frames from the warp
    # field's), and stay close to the warp field's own where 3 bones describe the motion.
    expected = scene.skinning_weights(torch.tensor(mesh.vertices, dtype=torch.float32)).numpy()
    dense = np.zeros((len(weights), scene.num_bones + 1))
    np.add.at(dense, (np.arange(len(weights))[:, None].repeat(4, 1), joints), weights)
    assert np.abs(dense[:, 0]).max() == 0  # nothing hangs on the root joint
    animated = exported["animated"]
    stored = np.zeros_like(dense)
    np.add.at(stored, (np.arange(len(weights))[:, None].repeat(4, 1), animated.joints + 1),
              animated.weights)
    assert np.allclose(dense, stored, atol=1e-6)
    assert np.abs(dense[:, 1:] - expected).mean() < 0.05
    # One keyframe per frame on every channel; the root joint carries motion.
    [animation] = doc.animations
    counts = {doc.accessors[s.input].count for s in animation.samplers}
    assert counts == {FRAMES}
    root = skin.joints[0]
    assert {c.target.path for c in animation.channels if c.target.node == root} == {
        "translation", "rotation"}
    # Fixed topology: one face list, identical to the canonical mesh.
    [evaluated] = gltf_eval.evaluate(doc)
    assert np.array_equal(evaluated.faces, np.asarray(mesh.faces))
    assert doc.asset.extras["recon4d"]["step"] == 7


def test_lbs_scene_is_reproduced_exactly_without_refinement():
    """With an LBS warp and <= 4 bones the skin is exact: a check of joints, bind matrices and
    keyframes that no tolerance can hide."""
    scene = CapsuleScene(num_frames=5, blend="lbs", num_surfels=200)
    mesh = capsule_mesh(12)
    animated = build_animated_mesh(scene, mesh, refine=False, fit_weights=False)
    # Unrefined weights are the warp field's at each vertex (top 4 of 3 bones = all).
    expected = scene.skinning_weights(torch.tensor(mesh.vertices, dtype=torch.float32)).numpy()
    assert np.allclose(np.take_along_axis(expected, animated.joints[:, :3], 1),
                       animated.weights[:, :3], atol=1e-6)
    doc_path = Path(__import__("tempfile").mkdtemp()) / "lbs.glb"
    try:
        write_skin_glb(animated, doc_path)
        [evaluated] = gltf_eval.evaluate(doc_path)
        expected = truth(scene, np.asarray(mesh.vertices), scene.frame_times.numpy())
        assert np.abs(evaluated.positions - expected).max() < 1e-5
    finally:
        shutil.rmtree(doc_path.parent)


def test_evaluator_on_a_hand_written_gltf(tmp_path):
    """The evaluator itself, on a file built by hand: two joints, joint 1 turned 90 degrees
    about z at t = 1 s, vertices 0 and 2 fully on joint 1, vertex 1 half on each; positions by hand."""
    g = pygltflib
    positions = np.array([[1.0, 0, 0], [1.0, 0, 0], [0, 1.0, 0]], dtype=np.float32)
    joints = np.array([[1, 0, 0, 0], [0, 1, 0, 0], [1, 0, 0, 0]], dtype=np.uint8)
    weights = np.array([[1, 0, 0, 0], [0.5, 0.5, 0, 0], [1, 0, 0, 0]], dtype=np.float32)
    ibm = np.stack([np.eye(4), np.eye(4)]).astype(np.float32)
    ibm[1, 0, 3] = -1.0  # joint 1 sits at x = 1 at bind: inverse bind translates by -1
    times = np.array([0.0, 1.0], dtype=np.float32)
    s = np.sqrt(0.5)
    rotations = np.array([[0, 0, 0, 1], [0, 0, s, s]], dtype=np.float32)  # xyzw
    chunks = [positions, joints, weights, np.ascontiguousarray(ibm.transpose(0, 2, 1)), times,
              rotations]
    blob, views, offset = b"", [], 0
    for chunk in chunks:
        data = chunk.tobytes()
        views.append(g.BufferView(buffer=0, byteOffset=offset, byteLength=len(data)))
        blob += data
        offset += len(data)
    acc = [g.Accessor(bufferView=0, componentType=g.FLOAT, count=3, type=g.VEC3,
                      min=[0, 0, 0], max=[1, 1, 0]),
           g.Accessor(bufferView=1, componentType=g.UNSIGNED_BYTE, count=3, type=g.VEC4),
           g.Accessor(bufferView=2, componentType=g.FLOAT, count=3, type=g.VEC4),
           g.Accessor(bufferView=3, componentType=g.FLOAT, count=2, type=g.MAT4),
           g.Accessor(bufferView=4, componentType=g.FLOAT, count=2, type=g.SCALAR, min=[0], max=[1]),
           g.Accessor(bufferView=5, componentType=g.FLOAT, count=2, type=g.VEC4)]
    doc = g.GLTF2(
        scene=0, scenes=[g.Scene(nodes=[0, 1])],
        nodes=[g.Node(mesh=0, skin=0), g.Node(children=[2]), g.Node(translation=[1.0, 0, 0])],
        meshes=[g.Mesh(primitives=[g.Primitive(attributes=g.Attributes(
            POSITION=0, JOINTS_0=1, WEIGHTS_0=2))])],
        skins=[g.Skin(joints=[1, 2], inverseBindMatrices=3)],
        animations=[g.Animation(samplers=[g.AnimationSampler(input=4, output=5)], channels=[
            g.AnimationChannel(sampler=0, target=g.AnimationChannelTarget(node=2, path="rotation"))])],
        accessors=acc, bufferViews=views, buffers=[g.Buffer(byteLength=len(blob))])
    doc.set_binary_blob(blob)
    path = tmp_path / "hand.glb"
    doc.save_binary(str(path))
    [ev] = gltf_eval.evaluate(path, times=[0.0, 1.0, 0.5])
    # t=0: rest. t=1: joint 1 (at x=1) turned +90 deg about z: (1,0,0) stays (on the pivot),
    # (0,1,0) -> (1,0,0) + Rz90 (-1,1,0) = (0,-1,0).
    assert np.allclose(ev.positions[0], positions, atol=1e-6)
    assert np.allclose(ev.positions[1], [[1, 0, 0], [1, 0, 0], [0, -1, 0]], atol=1e-6)
    # t=0.5: slerp to 45 degrees; vertex 2 = (1,0,0) + Rz45 (-1,1,0) = (1 - sqrt2, 0, 0).
    assert np.allclose(ev.positions[2][2], [1 - np.sqrt(2), 0, 0], atol=1e-6)


def test_texture_bake_keeps_motion_and_colours(exported):
    if exported["textured"] is None:
        pytest.skip("xatlas is not installed (pip install xatlas): no texture baking")
    textured, animated = exported["textured"], exported["animated"]
    assert textured.texture.shape == (128, 128, 3) and textured.uv.shape == (len(textured.vertices), 2)
    assert textured.frames.shape[1] == len(textured.vertices)  # seams re-indexed consistently
    [ev] = gltf_eval.evaluate(exported["skin_tex"])
    err = np.linalg.norm(ev.positions - textured.frames, axis=-1)
    assert err.mean() <= 0.002 * animated.bbox_diagonal()
    # The texture shows the scene's stripes: texels at vertices' UVs match their surfel colour.
    from recon4d.export.texture import surfel_colors

    texel = np.clip((textured.uv * 128).astype(int), 0, 127)
    sampled = textured.texture[texel[:, 1], texel[:, 0]] / 255.0
    expected = surfel_colors(textured.vertices, exported["scene"].canonical_surfels())
    assert np.median(np.abs(sampled - expected).max(1)) < 0.1


def _attributes(path: Path):
    doc = gltf_eval.load(path)
    return doc, doc.meshes[0].primitives[0]


def test_vertex_colours_are_linear_and_a_texture_is_not_multiplied_by_them(exported):
    """glTF's COLOR_0 is linear light and multiplies the base colour: the sRGB bytes of the
    fit were written as they were (a mid grey showed washed out), and a textured primitive kept
    them, so viewers showed texture x vertex colour."""
    animated = exported["animated"]
    for key in ("skin", "morph"):
        doc, primitive = _attributes(exported[key])
        colour = gltf_eval.read_accessor(doc, primitive.attributes.COLOR_0)
        srgb = animated.colors[:, :3] / 255.0
        linear = np.where(srgb <= 0.04045, srgb / 12.92, ((srgb + 0.055) / 1.055) ** 2.4)
        np.testing.assert_allclose(colour[:, :3], linear, atol=1e-4)
        assert np.abs(colour[:, :3] - srgb).max() > 0.1  # the stored values did change
    for key in ("skin_tex", "morph_tex"):
        if exported[key] is None:
            continue
        doc, primitive = _attributes(exported[key])
        assert primitive.attributes.COLOR_0 is None, key
        assert doc.materials[primitive.material].pbrMetallicRoughness.baseColorTexture is not None


def test_normals_are_smooth_across_uv_seams_and_follow_the_morph(exported):
    """Seam copies summed only their own side's faces (normals 10-15 degrees apart across every
    seam of the textured mesh), and the morph GLB had no NORMAL (viewers then shade flat)."""
    if exported["textured"] is not None:
        textured, animated = exported["textured"], exported["animated"]
        normals = textured.normals()
        _, group = np.unique(textured.vertices, axis=0, return_inverse=True)
        group = group.reshape(-1)
        assert np.bincount(group).max() > 1  # there are seams
        for g in np.flatnonzero(np.bincount(group) > 1)[:50]:
            copies = normals[group == g]
            assert np.abs(copies - copies[0]).max() < 1e-9
        # And they equal the unsplit mesh's normals at the same positions.
        unsplit = dict(zip(map(tuple, animated.vertices), animated.normals()))
        expected = np.stack([unsplit[tuple(v)] for v in textured.vertices])
        assert np.degrees(np.arccos(np.clip((normals * expected).sum(1), -1, 1))).max() < 0.5
    doc, primitive = _attributes(exported["morph"])
    base = gltf_eval.read_accessor(doc, primitive.attributes.NORMAL)
    animated = exported["animated"]
    np.testing.assert_allclose(base, animated.normals(), atol=1e-6)
    last = len(animated.times) - 1
    delta = gltf_eval.read_accessor(doc, primitive.targets[last]["NORMAL"])
    np.testing.assert_allclose(base + delta, animated.normals(last), atol=1e-5)
    assert np.abs(delta).max() > 0.1  # the capsule bends: its normals turn


def test_keyframe_times_stay_strictly_increasing_in_float32():
    from recon4d.export.glb import keyframe_seconds

    times = np.linspace(0.0, 1.0, 601)
    times[400:] = times[400]  # a run of repeated times late in a 25-second clip
    seconds = keyframe_seconds(times, fps=24.0)
    assert seconds.dtype == np.float32 and (np.diff(seconds) > 0).all()
    # Repeats at 0 step a microsecond, not to a subnormal a viewer may flush to zero.
    start = keyframe_seconds(np.array([0.0, 0.0, 0.0, 1.0]), fps=24.0)
    assert start[1] >= 9e-7 and start[2] > start[1]


def test_every_glb_loads_in_trimesh_and_pygltflib(exported):
    for key in ("skin", "morph", "skin_yup", "skin_tex", "morph_tex"):
        if exported[key] is None:
            continue
        loaded = trimesh.load(exported[key], force="mesh")
        assert len(loaded.faces) > 0, key
        doc = pygltflib.GLTF2.load_binary(str(exported[key]))
        assert len(doc.animations) == 1, key


def node_validator() -> Path:
    script = NODE_TOOLS / "validate_gltf.mjs"
    if shutil.which("node") is None:
        pytest.skip("node is not installed: the Khronos glTF validator runs on node")
    if not (NODE_TOOLS / "node_modules" / "gltf-validator").is_dir():
        pytest.skip("tools/node/node_modules is missing: run 'bash scripts/setup.sh --dev' "
                    "(npm install in tools/node) to get the glTF validator")
    return script


def test_every_glb_passes_the_khronos_validator(exported):
    script = node_validator()
    files = [str(exported[k]) for k in ("skin", "morph", "skin_yup", "skin_tex", "morph_tex")
             if exported[k] is not None]
    result = subprocess.run(["node", str(script), *files], capture_output=True, text=True,
                            timeout=120)
    reports = json.loads(result.stdout)
    assert len(reports) == len(files)
    for report in reports:
        errors = [m for m in report["messages"] if m["severity"] == 0]
        assert report["numErrors"] == 0, (report["file"], errors)
        assert report["info"]["animationCount"] == 1
    assert result.returncode == 0
