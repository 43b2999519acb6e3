"""Scene builders: a definition (dict from ``definitions/*.json``) and a seed -> animated geometry.

Each builder returns a :class:`SceneGeometry`: one rest mesh of fixed topology in the model frame
(y up), a function posing it at time t, and a solid texture over rest positions. The generator
(:mod:`recon4d.scenes.generate`) turns that into frames, masks, depth, normals and cameras.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from . import animate, meshes


@dataclass
class SceneGeometry:
    """Animated textured geometry in the model frame.

    Attributes:
        rest: (V, 3) rest-pose vertices (the texture is defined over them).
        faces: (M, 3) int64, outward winding, fixed over time.
        pose: t in [0, 1] -> (V, 3) posed vertices, model frame.
        texture: (N, 3) rest points -> (N, 3) RGB in [0, 1].
        info: builder facts recorded in gt.json (bone count, motion amplitudes, ...).
    """

    rest: np.ndarray
    faces: np.ndarray
    pose: Callable[[float], np.ndarray]
    texture: meshes.SolidTexture
    info: dict


def _texture(defn: dict, rng: np.random.Generator, surface: np.ndarray) -> meshes.SolidTexture:
    tex = defn.get("texture", {})
    return meshes.SolidTexture.random(
        rng, tex.get("colors", [[0.85, 0.55, 0.25], [0.45, 0.25, 0.15], [0.95, 0.9, 0.75]]),
        waves=int(tex.get("waves", 6)), min_wavelength=float(tex.get("min_wavelength", 0.18)),
        max_wavelength=float(tex.get("max_wavelength", 0.6)), spots=int(tex.get("spots", 10)),
        spot_radius=float(tex.get("spot_radius", 0.07)), surface=surface,
        stripe_wavelength=float(tex.get("stripe_wavelength", 0.22)))


def build_creature(defn: dict, rng: np.random.Generator) -> SceneGeometry:
    """A four-legged critter (body, neck, head, legs, tail) skinned to 8 bones: a walk cycle.

    One closed surface from a smooth union of ellipsoids and capsules; legs swing about the hips
    in diagonal pairs, the head nods, the tail wags, the body bobs and turns a little (and, with
    ``motion.spin_deg``, turns steadily as on a turntable).
    """
    motion = defn.get("motion", {})
    leg_r = float(defn.get("leg_radius", 0.07))
    hips = {"fl": (0.24, -0.02, 0.12), "fr": (0.24, -0.02, -0.12),
            "bl": (-0.24, -0.02, 0.12), "br": (-0.24, -0.02, -0.12)}
    foot_y = -0.42
    parts = [
        meshes.sdf_ellipsoid((0.0, 0.05, 0.0), (0.40, 0.21, 0.21)),
        meshes.sdf_capsule((0.28, 0.10, 0.0), (0.44, 0.24, 0.0), 0.10),
        meshes.sdf_ellipsoid((0.52, 0.27, 0.0), (0.16, 0.13, 0.13)),
        meshes.sdf_capsule((-0.34, 0.10, 0.0), (-0.58, 0.28, 0.0), 0.05),
    ]
    parts += [meshes.sdf_capsule(h, (h[0], foot_y, h[2]), leg_r) for h in hips.values()]
    sdf = meshes.smooth_union(parts, k=0.06)
    rest, faces = meshes.mesh_from_sdf(sdf, (-0.72, -0.56, -0.3), (0.74, 0.46, 0.3),
                                       int(defn.get("mesh_resolution", 56)))
    swing = np.radians(float(motion.get("leg_swing_deg", 24.0)))
    z = np.array([0.0, 0.0, 1.0])
    bones = [animate.Bone("body", -1, np.array([0.0, 0.05, 0.0]),
                          np.array([[-0.28, 0.05, 0.0], [0.28, 0.05, 0.0]]), 0.21)]
    for name, h in hips.items():
        phase = 0.0 if name in ("fl", "br") else 0.5  # diagonal pairs, as a walk
        bones.append(animate.Bone(f"leg_{name}", 0, np.array(h),
                                  np.array([[h[0], h[1] - 0.06, h[2]], [h[0], foot_y, h[2]]]),
                                  leg_r, z, swing, phase))
    bones.append(animate.Bone("neck", 0, np.array([0.30, 0.12, 0.0]),
                              np.array([[0.36, 0.17, 0.0], [0.60, 0.28, 0.0]]), 0.12, z,
                              np.radians(float(motion.get("head_nod_deg", 12.0))), 0.25, 2.0))
    bones.append(animate.Bone("tail", 0, np.array([-0.34, 0.10, 0.0]),
                              np.array([[-0.40, 0.14, 0.0], [-0.60, 0.29, 0.0]]), 0.05,
                              np.array([0.0, 1.0, 0.0]),
                              np.radians(float(motion.get("tail_wag_deg", 30.0))), 0.0, 2.0))
    skeleton = animate.Skeleton(
        bones, root_yaw=np.radians(float(motion.get("turn_deg", 12.0))),
        root_bob=float(motion.get("bob", 0.03)), root_sway=float(motion.get("sway", 0.0)),
        root_spin=np.radians(float(motion.get("spin_deg", 0.0))))
    weights = skeleton.weights(rest)
    # Face the camera three-quarters on so the legs' swing is visible.
    facing = animate.rotation([0, 1, 0], np.radians(float(defn.get("facing_deg", -35.0))))

    def pose(t: float) -> np.ndarray:
        return skeleton.pose(rest, weights, t) @ facing.T

    info = {"bones": [b.name for b in bones], "vertices": len(rest), "faces": len(faces)}
    return SceneGeometry(rest, faces, pose, _texture(defn, rng, rest), info)


def build_blob(defn: dict, rng: np.random.Generator) -> SceneGeometry:
    """A breathing, wobbling blob: an ellipsoidal icosphere with smooth radial waves."""
    unit, faces = meshes.icosphere(int(defn.get("subdivisions", 4)))
    radii = np.asarray(defn.get("radii", [0.48, 0.4, 0.44]), np.float64)
    rest = unit * radii
    motion = defn.get("motion", {})
    breathing = animate.Breathing.random(rng, breath=float(motion.get("breath", 0.07)),
                                         amplitude=float(motion.get("wobble", 0.06)))

    def pose(t: float) -> np.ndarray:
        return breathing.pose(rest, t)

    info = {"vertices": len(rest), "faces": len(faces)}
    return SceneGeometry(rest, faces, pose, _texture(defn, rng, rest), info)


def _toy_sdf():
    """A static toy: a rounded body, a ring around it and a knob on top (one surface)."""
    return meshes.smooth_union([
        meshes.sdf_ellipsoid((0.0, -0.05, 0.0), (0.36, 0.30, 0.36)),
        meshes.sdf_torus((0.0, -0.08, 0.0), 0.36, 0.08),
        meshes.sdf_capsule((0.0, 0.15, 0.0), (0.0, 0.33, 0.0), 0.09),
        meshes.sdf_ellipsoid((0.0, 0.38, 0.0), (0.16, 0.08, 0.16)),
        meshes.sdf_round_box((0.0, -0.38, 0.0), (0.26, 0.06, 0.26), 0.04),
    ], k=0.05)


def build_orbit_object(defn: dict, rng: np.random.Generator) -> SceneGeometry:
    """A static textured toy; the cameras do the moving (a 360-degree orbit)."""
    rest, faces = meshes.mesh_from_sdf(_toy_sdf(), (-0.5, -0.5, -0.5), (0.5, 0.5, 0.5),
                                       int(defn.get("mesh_resolution", 56)))

    def pose(t: float) -> np.ndarray:
        return rest

    return SceneGeometry(rest, faces, pose, _texture(defn, rng, rest),
                         {"vertices": len(rest), "faces": len(faces)})


def build_rigid(defn: dict, rng: np.random.Generator) -> SceneGeometry:
    """A rigid rounded box with a dome, tumbling and drifting in front of a fixed camera."""
    sdf = meshes.smooth_union([
        meshes.sdf_round_box((0.0, -0.05, 0.0), (0.30, 0.22, 0.24), 0.07),
        meshes.sdf_ellipsoid((0.0, 0.18, 0.0), (0.20, 0.14, 0.18)),
    ], k=0.05)
    rest, faces = meshes.mesh_from_sdf(sdf, (-0.4, -0.35, -0.35), (0.4, 0.4, 0.35),
                                       int(defn.get("mesh_resolution", 48)))
    rest = rest * float(defn.get("scale", 1.0))
    motion = defn.get("motion", {})
    axis = np.asarray(motion.get("axis", [0.3, 1.0, 0.2]), np.float64)
    path = animate.RigidPath(axis / np.linalg.norm(axis), np.radians(float(motion.get("turn_deg", 120))),
                             np.asarray(motion.get("amplitude", [0.22, 0.12, 0.15]), np.float64))

    def pose(t: float) -> np.ndarray:
        return animate.apply(path.transform(t), rest)

    return SceneGeometry(rest, faces, pose, _texture(defn, rng, rest),
                         {"vertices": len(rest), "faces": len(faces)})


BUILDERS: dict[str, Callable[[dict, np.random.Generator], SceneGeometry]] = {
    "creature": build_creature,
    "blob": build_blob,
    "orbit_object": build_orbit_object,
    "rigid": build_rigid,
}
