"""Root poses from point tracks: the object's rigid motion, estimated before the photometric fit.

Why: an object that turns far in front of a fixed camera is a poor fit for gradient descent on
images alone. The surfels and the bones explain each frame's few degrees of turn before the root
pose does (docs/fit.md, Session 16: a 120-degree tumble ended with a 30-degree root). Tracks see
the turn directly, so the root is estimated from them first, as rigid structure from motion:

1. Chain: frame by frame, a track first seen in frame k is lifted to 3D at the depth of the
   initial surface posed at k; frame k+1's pose is the rigid motion that best reprojects the
   known points onto their positions in k+1 (robust Huber loss on pixel error), and then the
   last few frames' poses and points are adjusted together, so that points on sides the
   first frame never saw get their depth from parallax before the chain leans on them.
2. Bundle adjustment: every track becomes one canonical 3D point, and all poses and points are
   refined together against every observation. Several frames fix what one pair cannot (depth
   against rotation); the first frame's pose stays the identity (the canonical frame).

The final adjustment runs twice from the chain's result: free, and with a prior that the pivot
keeps its first camera depth. One fixed camera cannot see a scaling of the whole solution about
its centre (points and poses scaled together reproject the same), so the free solution's scale
is whatever the first lift onto the init's inflated front gave (rigid scene: 3.5 % too large),
and the chain's drift adds to it (turntable: the object up to 20 % too deep). The prior picks
the scale at which the object turns about a pivot that stays at its depth -- exact for a subject
turning in place -- and straightens the drift. An object that really moves in depth pays for
the prior in reprojection error, so the held solution is kept only while its median error is
within ``DEPTH_HOLD_SLACK`` of the free one's (docs/fit.md, Session 19).

Frames: poses map canonical points to world, x -> R (x - pivot) + pivot + d, the convention of
:class:`recon4d.model.warp.RootPoses`. Cameras are OpenCV world-to-camera with pixel intrinsics.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.spatial import cKDTree

from recon4d.data.tracks import PointTracks
from recon4d.model.init import project_points
from recon4d.model.rotations import axis_angle_to_quat, quat_to_rotmat
from recon4d.utils import console

WINDOW_FRAMES = 5
"""Frames in the chain's running bundle adjustment (the newest and the ones before it)."""
WINDOW_ITERATIONS = 30
WINDOW_POINTS = 300
DEPTH_HOLD = 10.0
"""Weight of the final adjustment's prior that the pivot keeps its first camera depth: the
squared change in depth, in units of the object's extent, against the mean Huber loss in px."""
DEPTH_HOLD_SLACK = 1.5
"""The held solution is kept while its median reprojection error is at most this many times
the free one's; beyond it the object really moves in depth and the prior would bend the turn."""


@dataclass
class RootEstimate:
    """Rigid motion of the object at each tracked frame.

    Attributes:
        rotvecs: (F, 3) rotation vectors (radians); rotvecs[0] = 0.
        offsets: (F, 3) translations of the pivot (world units); offsets[0] = 0.
        residual_px: median reprojection error over all observations after adjustment.
        num_tracks, num_observations: the data the estimate rests on.
        pivot: (3,) the point the rotations turn about.
        points: (T, 3) each track's adjusted 3D point in the canonical frame, or None.
        depth_held: whether the pivot-depth prior shaped the final adjustment.
    """

    rotvecs: np.ndarray
    offsets: np.ndarray
    residual_px: float
    num_tracks: int
    num_observations: int
    pivot: np.ndarray
    points: np.ndarray | None = None
    depth_held: bool = False

    def transforms(self) -> np.ndarray:
        """(F, 4, 4) canonical-to-world rigid transforms, x -> R (x - pivot) + pivot + offset."""
        rots = _rotmats(torch.as_tensor(self.rotvecs, dtype=torch.float64)).numpy()
        out = np.tile(np.eye(4), (len(rots), 1, 1))
        out[:, :3, :3] = rots
        out[:, :3, 3] = self.pivot + self.offsets - rots @ self.pivot
        return out

    def offsets_about(self, pivot: np.ndarray) -> np.ndarray:
        """(F, 3) the same poses' offsets written about another pivot."""
        transforms = self.transforms()
        pivot = np.asarray(pivot, np.float64)
        return transforms[:, :3, :3] @ pivot + transforms[:, :3, 3] - pivot

    def view_resultant(self, viewmats: np.ndarray, centre: np.ndarray) -> float:
        """How one-sided the object is seen: the mean of the unit directions from ``centre``
        (canonical frame) to each frame's camera, moved into the canonical frame by the
        inverse pose; its length is 1 when every frame sees the same side and near 0 when the
        object turns all the way round (a 120-degree sweep: 0.81, 180: 0.61, a full turn: about 0)."""
        transforms = self.transforms()
        cams = np.linalg.inv(np.asarray(viewmats, np.float64))[:, :3, 3]     # world centres
        local = np.einsum("fji,fj->fi", transforms[:, :3, :3], cams - transforms[:, :3, 3])
        directions = local - np.asarray(centre, np.float64)
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        return float(np.linalg.norm(directions.mean(0)))

    def turn_degrees(self) -> np.ndarray:
        """(F,) angle of each pose's rotation, degrees."""
        return np.degrees(np.linalg.norm(self.rotvecs, axis=1))


def _rotmats(rotvecs: torch.Tensor) -> torch.Tensor:
    """(..., 3) rotation vectors -> (..., 3, 3) matrices (smooth at zero)."""
    return quat_to_rotmat(axis_angle_to_quat(rotvecs))


def _project(points: torch.Tensor, viewmats: torch.Tensor, Ks: torch.Tensor) -> torch.Tensor:
    """(M, 3) world points seen by (M, 4, 4) cameras with (M, 3, 3) intrinsics -> (M, 2) pixels."""
    cam = torch.einsum("mij,mj->mi", viewmats[:, :3, :3], points) + viewmats[:, :3, 3]
    z = cam[:, 2:3].clamp_min(1e-6)
    return cam[:, :2] / z * torch.stack([Ks[:, 0, 0], Ks[:, 1, 1]], 1) + Ks[:, :2, 2]


def _robust(residual_px: torch.Tensor) -> torch.Tensor:
    """Mean Huber loss of pixel errors (quadratic under 1 px, linear beyond: flow outliers)."""
    return torch.nn.functional.huber_loss(residual_px, torch.zeros_like(residual_px), delta=1.0)


def _pose_points(points: np.ndarray, rotvec: np.ndarray, offset: np.ndarray,
                 pivot: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rot = _rotmats(torch.as_tensor(rotvec, dtype=torch.float64)).numpy()
    return (points - pivot) @ rot.T + pivot + offset, rot


def surface_depth(pixels: np.ndarray, points: np.ndarray, normals: np.ndarray,
                  viewmat: np.ndarray, K: np.ndarray, height: int, width: int,
                  tolerance: float) -> np.ndarray:
    """Camera depth of a surface sample cloud at given pixels.

    Args:
        pixels: (M, 2) pixel coordinates; points, normals: (N, 3) world surface samples.
        viewmat: (4, 4) world-to-camera; K: (3, 3); tolerance: depth band (world units) kept
            behind the nearest sample of each 2x2 pixel block (the visible front layer).

    Returns:
        (M,) depth: the mean depth of the 4 nearest visible samples in the image.
    """
    uv, z = project_points(points, viewmat, K)
    centre = -viewmat[:3, :3].T @ viewmat[:3, 3]
    facing = ((centre - points) * normals).sum(1) > 0
    block = np.clip(np.floor(uv / 2).astype(int), 0, [(width - 1) // 2, (height - 1) // 2])
    nearest = np.full(((height + 1) // 2, (width + 1) // 2), np.inf)
    np.minimum.at(nearest, (block[facing, 1], block[facing, 0]), z[facing])
    front = facing & (z <= nearest[block[:, 1], block[:, 0]] + tolerance)
    if front.sum() < 4:
        front = facing if facing.sum() >= 4 else np.ones_like(facing)
    _, index = cKDTree(uv[front]).query(pixels, k=4)
    return z[front][index].mean(1)


def _lift(pixels: np.ndarray, depth: np.ndarray, viewmat: np.ndarray, K: np.ndarray) -> np.ndarray:
    """(M, 2) pixels at (M,) camera depths -> (M, 3) world points."""
    rays = np.concatenate([(pixels - K[:2, 2]) / np.diag(K)[:2], np.ones((len(pixels), 1))], 1)
    return (rays * depth[:, None] - viewmat[:3, 3]) @ viewmat[:3, :3]


def _fit_pose(canonical: np.ndarray, pixels: np.ndarray, viewmat: np.ndarray, K: np.ndarray,
              pivot: np.ndarray, rotvec: np.ndarray, offset: np.ndarray,
              iterations: int) -> tuple[np.ndarray, np.ndarray]:
    """The pose (rotvec, offset) reprojecting (M, 3) canonical points onto (M, 2) pixels,
    searched from (rotvec, offset)."""
    rv = torch.tensor(rotvec, dtype=torch.float64, requires_grad=True)
    off = torch.tensor(offset, dtype=torch.float64, requires_grad=True)
    pts = torch.as_tensor(canonical, dtype=torch.float64)
    target = torch.as_tensor(pixels, dtype=torch.float64)
    piv = torch.as_tensor(pivot, dtype=torch.float64)
    vm = torch.as_tensor(viewmat, dtype=torch.float64).expand(len(pts), 4, 4)
    k = torch.as_tensor(K, dtype=torch.float64).expand(len(pts), 3, 3)
    opt = torch.optim.LBFGS([rv, off], lr=1, max_iter=iterations, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        world = (pts - piv) @ _rotmats(rv).T + piv + off
        loss = _robust((_project(world, vm, k) - target).norm(dim=1))
        loss.backward()
        return loss

    opt.step(closure)
    return rv.detach().numpy(), off.detach().numpy()


def estimate_root_poses(tracks: PointTracks, viewmats: np.ndarray, Ks: np.ndarray,
                        surface_points: np.ndarray, surface_normals: np.ndarray,
                        pivot: np.ndarray, extent: float, height: int, width: int,
                        iterations: int = 400, times: np.ndarray | None = None,
                        depth_hold: float = DEPTH_HOLD) -> RootEstimate:
    """Rigid root poses of the tracked frames.

    Args:
        tracks: tracks over F frames (:func:`recon4d.data.tracks.point_tracks`).
        viewmats: (F, 4, 4) world-to-camera of those frames; Ks: (F, 3, 3) intrinsics.
        surface_points, surface_normals: (N, 3) the initial surface in the canonical frame
            (= world at frame 0): it gives each track its starting depth.
        pivot: (3,) the root poses' pivot; extent: object half-size (world units).
        height, width: the frames' size in pixels.
        iterations: L-BFGS iterations of the bundle adjustment.
        times: (F,) the frames' times; each pose's search then starts from the motion of the
            two frames before it carried on at the same speed (default: from the pose before).
        depth_hold: weight of the final adjustment's prior that the pivot stays at its frame-0
            camera depth, kept when it costs little reprojection error (0: no prior; the
            solution's scale about the camera is then the first lift's).

    Returns:
        :class:`RootEstimate` for the F frames.
    """
    count = tracks.valid.shape[1]
    viewmats = np.asarray(viewmats, np.float64)
    Ks = np.asarray(Ks, np.float64)
    points = np.asarray(surface_points, np.float64)
    normals = np.asarray(surface_normals, np.float64)
    pivot = np.asarray(pivot, np.float64)
    band = 0.05 * extent
    canonical = np.zeros((tracks.num_tracks, 3))
    rotvecs, offsets = np.zeros((count, 3)), np.zeros((count, 3))

    def lift_tracks(k: int, which: np.ndarray) -> np.ndarray:
        """Canonical 3D of tracks ``which`` from their pixels in frame k and pose k."""
        world, rot = _pose_points(points, rotvecs[k], offsets[k], pivot)
        depth = surface_depth(tracks.uv[which, k], world, normals @ rot.T, viewmats[k], Ks[k],
                              height, width, band)
        lifted = _lift(tracks.uv[which, k], depth, viewmats[k], Ks[k])
        return (lifted - offsets[k] - pivot) @ rot + pivot

    known = np.zeros(tracks.num_tracks, bool)
    for k in console.track(range(count), description="root poses from tracks"):
        if k > 0:
            guess = _carry_on(rotvecs, offsets, times, k)
            seen = np.nonzero(tracks.valid[:, k] & known)[0]
            if len(seen) >= 6:
                rotvecs[k], offsets[k] = _fit_pose(canonical[seen], tracks.uv[seen, k],
                                                   viewmats[k], Ks[k], pivot, *guess,
                                                   iterations=60)
            else:
                rotvecs[k], offsets[k] = guess
        new = np.nonzero(tracks.valid[:, k] & ~known)[0]
        if len(new):
            canonical[new] = lift_tracks(k, new)
            known[new] = True
        if k > 0:
            # The recent frames' poses and points refined together before the next frame is
            # posed from them: a point lifted onto the init's guessed surface gets its depth
            # from the parallax of a few frames, which keeps the chain on course where the
            # object shows sides the first frame never saw (a turntable's half turn).
            window = np.arange(max(0, k - WINDOW_FRAMES + 1), k + 1)
            _adjust(tracks, viewmats, Ks, canonical, pivot, rotvecs, offsets, extent, window,
                    WINDOW_ITERATIONS, max_points=WINDOW_POINTS)
    console.info(f"root poses: bundle adjustment of {tracks.num_observations} track observations")

    def final_adjustment(hold: float):
        """The chain's result adjusted over all frames, on copies: (points, rotvecs, offsets)
        and the median reprojection error."""
        state = (canonical.copy(), rotvecs.copy(), offsets.copy())
        residual = _adjust(tracks, viewmats, Ks, state[0], pivot, state[1], state[2], extent,
                           np.arange(count), iterations, depth_hold=hold)
        return state, residual

    (points, rots, offs), residual = final_adjustment(0.0)
    held = False
    if depth_hold > 0:
        held_state, held_residual = final_adjustment(depth_hold)
        held = bool(held_residual <= DEPTH_HOLD_SLACK * residual)
        if held:
            (points, rots, offs), residual = held_state, held_residual
        else:
            console.info(f"root poses: the object moves in depth (holding it costs "
                         f"{held_residual:.2f} px against {residual:.2f} px); depth left free")
    return RootEstimate(rots, offs, residual, tracks.num_tracks, tracks.num_observations,
                        pivot, points, depth_held=held)


def estimate_root_poses_from_init(tracks: PointTracks, viewmats: np.ndarray, Ks: np.ndarray,
                                  init, height: int, width: int,
                                  times: np.ndarray | None = None) -> RootEstimate:
    """:func:`estimate_root_poses` with the tracks lifted onto an
    :class:`~recon4d.model.init.InitResult`'s surface, turning about its surfels' centroid, in
    units of its extent: what the fit runs before it starts (and the benchmark measures)."""
    return estimate_root_poses(tracks, viewmats, Ks, init.points, init.normals,
                               init.points.mean(0), init.extent, height, width,
                               times=None if times is None else np.asarray(times, np.float64))


def _carry_on(rotvecs: np.ndarray, offsets: np.ndarray, times: np.ndarray | None,
              k: int) -> tuple[np.ndarray, np.ndarray]:
    """Pose k predicted from poses k-2 and k-1 at constant speed (rotation vectors and offsets
    extrapolated linearly in time), or pose k-1 without times or a second earlier pose."""
    if times is None or k < 2 or times[k - 1] <= times[k - 2]:
        return rotvecs[k - 1].copy(), offsets[k - 1].copy()
    ratio = (times[k] - times[k - 1]) / (times[k - 1] - times[k - 2])
    return (rotvecs[k - 1] + ratio * (rotvecs[k - 1] - rotvecs[k - 2]),
            offsets[k - 1] + ratio * (offsets[k - 1] - offsets[k - 2]))


def _adjust(tracks: PointTracks, viewmats: np.ndarray, Ks: np.ndarray, canonical: np.ndarray,
            pivot: np.ndarray, rotvecs: np.ndarray, offsets: np.ndarray, extent: float,
            frames: np.ndarray, iterations: int, max_points: int = 0,
            depth_hold: float = 0.0) -> float:
    """Bundle adjustment over ``frames`` (ascending; the first one's pose held): their poses
    and the points seen at least twice among them are refined in place. Returns the median
    reprojection error (px) afterwards, or NaN when too few points take part.

    ``depth_hold`` > 0 adds that weight times the mean squared change of the pivot's camera
    depth from the first frame's, over the extent squared: the gauge prior of the module doc.

    Unknowns are scaled so that each one's curvature is about the same (a diagonal
    preconditioner): translations and points in units of the object's extent, and each point
    in a unit sqrt(frame observations / its observations) times larger, because a frame's pose
    is pulled by every track seen there and a point only by its own few frames. Unscaled,
    L-BFGS spends most of its iterations on that imbalance. ``max_points`` > 0 keeps an evenly
    spaced subset of the points (a window's refinement needs a few hundred, not thousands).
    """
    valid = tracks.valid[:, frames]
    points = np.nonzero(valid.sum(1) >= 2)[0]
    if 0 < max_points < len(points):
        points = points[np.linspace(0, len(points) - 1, max_points).round().astype(int)]
    if len(points) < 6:
        return float("nan")
    point_index, frame_index = np.nonzero(valid[points])
    target = torch.as_tensor(tracks.uv[points[point_index], frames[frame_index]], dtype=torch.float64)
    ti, fi = torch.as_tensor(point_index), torch.as_tensor(frame_index)
    vm = torch.as_tensor(viewmats[frames], dtype=torch.float64)[fi]
    k = torch.as_tensor(Ks[frames], dtype=torch.float64)[fi]
    piv = torch.as_tensor(pivot, dtype=torch.float64)
    held_rv = torch.as_tensor(rotvecs[frames[:1]], dtype=torch.float64)
    held_off = torch.as_tensor(offsets[frames[:1]] / extent, dtype=torch.float64)
    rv = torch.tensor(rotvecs[frames[1:]], dtype=torch.float64, requires_grad=True)
    off = torch.tensor(offsets[frames[1:]] / extent, dtype=torch.float64, requires_grad=True)
    observed = valid[points]
    unit = np.sqrt(observed.sum(0).mean() / observed.sum(1))[:, None]   # (P, 1)
    pts = torch.tensor((canonical[points] - pivot) / extent / unit, dtype=torch.float64,
                       requires_grad=True)
    unit = torch.as_tensor(unit, dtype=torch.float64)
    # (W, 4) row 2 of each frame's world-to-camera: a world point's camera depth.
    depth_row = torch.as_tensor(viewmats[frames][:, 2], dtype=torch.float64)

    def residuals() -> torch.Tensor:
        rots = _rotmats(torch.cat([held_rv, rv]))[fi]
        local = (pts * unit)[ti]
        world = (torch.einsum("mij,mj->mi", rots, local) + torch.cat([held_off, off])[fi]) * extent + piv
        return (_project(world, vm, k) - target).norm(dim=1)

    opt = torch.optim.LBFGS([rv, off, pts], lr=1, max_iter=iterations,
                            line_search_fn="strong_wolfe")

    def depth_change() -> torch.Tensor:
        """(W-1,) the pivot's camera depth at each later frame minus at the first / extent."""
        centre = torch.cat([held_off, off]) * extent + piv                       # (W, 3) world
        depth = (depth_row[:, :3] * centre).sum(1) + depth_row[:, 3]
        return (depth[1:] - depth[0]) / extent

    def closure():
        opt.zero_grad()
        loss = _robust(residuals())
        if depth_hold > 0:
            loss = loss + depth_hold * depth_change().square().mean()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        rotvecs[frames[1:]] = rv.numpy()
        offsets[frames[1:]] = off.numpy() * extent
        canonical[points] = (pts * unit).numpy() * extent + pivot
        return float(residuals().median())
