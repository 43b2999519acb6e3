"""Motion for the synthetic scenes: skinned skeletons, non-rigid breathing, rigid paths, cameras.

Everything here maps rest-pose vertices (V, 3) and a normalised time t in [0, 1] to posed
vertices, in the model frame (y up). :data:`MODEL2WORLD` turns the model frame into the world
frame of the cameras (OpenCV-like: y down), a proper rotation of 180 degrees about x.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

MODEL2WORLD = np.diag([1.0, -1.0, -1.0])
"""(3, 3) model frame (y up, +z towards the default camera) -> world frame (y down, camera at -z)."""


def rotation(axis, angle: float) -> np.ndarray:
    """(3, 3) rotation by ``angle`` radians about ``axis`` (Rodrigues)."""
    axis = np.asarray(axis, np.float64)
    axis = axis / np.linalg.norm(axis)
    x, y, z = axis
    k = np.array([[0, -z, y], [z, 0, -x], [-y, x, 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * (k @ k)


def rigid(rot: np.ndarray, trans) -> np.ndarray:
    out = np.eye(4)
    out[:3, :3] = rot
    out[:3, 3] = trans
    return out


def apply(transform: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ transform[:3, :3].T + transform[:3, 3]


# --------------------------------------------------------------------------------------------
# Skeletons and linear blend skinning
# --------------------------------------------------------------------------------------------
@dataclass
class Bone:
    """One bone of a skeleton, rest pose in the model frame.

    The bone rotates about ``joint`` by ``amplitude * sin(2 pi (cycles t + phase))`` radians about
    ``axis`` (in its parent's frame); ``segment`` (2, 3) is the part of the body it carries,
    used for skinning weights, with ``radius`` its thickness.
    """

    name: str
    parent: int
    joint: np.ndarray
    segment: np.ndarray
    radius: float
    axis: np.ndarray = field(default_factory=lambda: np.array([0.0, 0.0, 1.0]))
    amplitude: float = 0.0
    phase: float = 0.0
    cycles: float = 1.0


@dataclass
class Skeleton:
    """Bones (parents before children) plus a root motion, skinned by LBS."""

    bones: list[Bone]
    root_yaw: float = 0.0
    """Amplitude (radians) of a slow turn of the whole body about the model y axis."""
    root_bob: float = 0.0
    """Amplitude (units) of a vertical bob at twice the gait frequency."""
    root_sway: float = 0.0
    """Amplitude (units) of a side-to-side shift along model x."""
    root_spin: float = 0.0
    """Angle (radians) the whole body turns about the model y axis from t = 0 to t = 1, at a
    steady rate: an object on a turntable in front of a fixed camera."""
    sharpness: float = 4.0
    """Skinning falloff: weights ~ exp(-sharpness * (distance / radius)^2) per bone."""

    def weights(self, rest: np.ndarray) -> np.ndarray:
        """(V, B) skinning weights, rows summing to 1, from distances to each bone's segment."""
        cost = np.stack([(_segment_distance(rest, b.segment[0], b.segment[1]) / b.radius) ** 2
                         for b in self.bones], axis=1) * self.sharpness
        cost -= cost.min(axis=1, keepdims=True)
        w = np.exp(-cost)
        return w / w.sum(axis=1, keepdims=True)

    def bone_transforms(self, t: float) -> np.ndarray:
        """(B, 4, 4) rest-to-posed transforms of each bone at time t (model frame)."""
        out = np.empty((len(self.bones), 4, 4))
        for i, b in enumerate(self.bones):
            angle = b.amplitude * np.sin(2 * np.pi * (b.cycles * t + b.phase))
            local = rigid(rotation(b.axis, angle), b.joint - rotation(b.axis, angle) @ b.joint)
            out[i] = local if b.parent < 0 else out[b.parent] @ local
        yaw = self.root_yaw * np.sin(2 * np.pi * t) + self.root_spin * t
        root = rigid(rotation([0, 1, 0], yaw),
                     [self.root_sway * np.sin(2 * np.pi * t),
                      self.root_bob * np.sin(4 * np.pi * t), 0.0])
        return root[None] @ out

    def pose(self, rest: np.ndarray, weights: np.ndarray, t: float) -> np.ndarray:
        """(V, 3) posed vertices by linear blend skinning."""
        mats = self.bone_transforms(t)
        blended = np.einsum("vb,bij->vij", weights, mats)
        return np.einsum("vij,vj->vi", blended[:, :3, :3], rest) + blended[:, :3, 3]


def _segment_distance(p: np.ndarray, a, b) -> np.ndarray:
    a, b = np.asarray(a, float), np.asarray(b, float)
    ab = b - a
    h = np.clip(((p - a) @ ab) / max(ab @ ab, 1e-12), 0.0, 1.0)
    return np.linalg.norm(p - a - h[:, None] * ab, axis=1)


# --------------------------------------------------------------------------------------------
# Non-rigid breathing and rigid paths
# --------------------------------------------------------------------------------------------
@dataclass
class Breathing:
    """Radial displacement of a star-shaped surface: smooth low-frequency waves over time.

    r(dir, t) = r_rest * (1 + breath * sin(2 pi t)) + sum_k amp_k * sin(2 pi t + phi_k)
    * cos(freq_k * dir . d_k + psi_k), applied along the rest direction from the centre.
    """

    breath: float
    amplitudes: np.ndarray
    phases: np.ndarray
    directions: np.ndarray
    frequencies: np.ndarray
    offsets: np.ndarray

    @staticmethod
    def random(rng: np.random.Generator, breath: float = 0.06, amplitude: float = 0.05,
               waves: int = 4) -> "Breathing":
        d = rng.normal(size=(waves, 3))
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        return Breathing(breath, np.full(waves, amplitude / np.sqrt(waves) * 1.5),
                         rng.uniform(0, 2 * np.pi, waves), d, rng.uniform(2.0, 3.5, waves),
                         rng.uniform(0, 2 * np.pi, waves))

    def pose(self, rest: np.ndarray, t: float) -> np.ndarray:
        radius = np.linalg.norm(rest, axis=1, keepdims=True)
        unit = rest / np.maximum(radius, 1e-12)
        wave = (self.amplitudes * np.sin(2 * np.pi * t + self.phases)
                * np.cos(unit @ self.directions.T * self.frequencies + self.offsets)).sum(axis=1)
        return unit * (radius * (1 + self.breath * np.sin(2 * np.pi * t)) + wave[:, None])


@dataclass
class RigidPath:
    """A rigid motion: tumble about a tilted axis plus a smooth Lissajous translation."""

    axis: np.ndarray
    turn: float
    """Total rotation over the clip (radians)."""
    amplitude: np.ndarray
    """(3,) translation amplitudes (units) along model x, y, z."""

    def transform(self, t: float) -> np.ndarray:
        rot = rotation(self.axis, self.turn * (t - 0.5))
        trans = self.amplitude * np.array([np.sin(2 * np.pi * t), np.sin(4 * np.pi * t) * 0.5,
                                           np.sin(2 * np.pi * t + 1.0) * 0.5])
        return rigid(rot, trans)


# --------------------------------------------------------------------------------------------
# Cameras (OpenCV world-to-camera; world y down, object at the origin)
# --------------------------------------------------------------------------------------------
def look_at(eye, target=(0.0, 0.0, 0.0), down=(0.0, 1.0, 0.0)) -> np.ndarray:
    """(4, 4) OpenCV world-to-camera of a camera at ``eye`` looking at ``target``."""
    eye, target, down = (np.asarray(v, np.float64) for v in (eye, target, down))
    z = target - eye
    z /= np.linalg.norm(z)
    x = np.cross(down, z)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    rot = np.stack([x, y, z])
    return rigid(rot, -rot @ eye)


def orbit_eye(distance: float, azimuth_deg: float, elevation_deg: float) -> np.ndarray:
    """Camera centre on a sphere around the origin; azimuth 0 = in front (world -z), positive
    elevation = above (world -y)."""
    a, e = np.radians(azimuth_deg), np.radians(elevation_deg)
    return distance * np.array([np.sin(a) * np.cos(e), -np.sin(e), -np.cos(a) * np.cos(e)])


def intrinsics(width: int, height: int, fov_deg: float) -> np.ndarray:
    """(3, 3) pinhole intrinsics with horizontal field of view ``fov_deg``, centred."""
    f = 0.5 * width / np.tan(np.radians(fov_deg) / 2)
    return np.array([[f, 0.0, width / 2.0], [0.0, f, height / 2.0], [0.0, 0.0, 1.0]])
