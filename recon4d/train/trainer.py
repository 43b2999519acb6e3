"""The trainer: stages, optimisation steps, logging, checkpoints, resume, divergence handling.

A fit runs a global step counter over two stages:

1. ``coarse`` (the initialisation stage): few large surfels from the mask-based init, low
   resolution, strong rigidity and mask weights: root poses and bones find the motion before
   fine detail exists to be explained away by surfels drifting.
2. ``full``: each coarse surfel is split into smaller children (every extra follows), all
   parameters train at full resolution with the full loss set, densification and pruning run.

Checkpoints (every ``checkpoint_every`` steps and at the end) hold the model, the optimizer
moments, the strategy's accumulators, the robust frame weights and all RNG states, so a run
killed at any point resumes to (nearly) the same result as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import asdict
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from recon4d.data.dataset import Dataset
from recon4d.data.depth import inner_masks
from recon4d.data.tracks import point_tracks
from recon4d.errors import Interrupted, UserError
from recon4d.losses import geometry, motion, photometric, priors
from recon4d.losses.robust import FrameWeights
from recon4d.losses.schedule import weights_at
from recon4d.model.canonical import CanonicalSurfels
from recon4d.model.init import (cameras_fixed, init_from_masks, kmeans_bones, object_depth,
                                to_torch)
from recon4d.model.refine import EXTRA_NAME as REFINE_EXTRA
from recon4d.model.root_from_tracks import estimate_root_poses_from_init
from recon4d.model.rotations import quat_rotate
from recon4d.model.scene import SKIN_EXTRA, DynamicSurfelModel
from recon4d.model.symmetry import (MirrorPlane, estimate_mirror_plane, mirror_loss,
                                    mirror_plane_from_map)
from recon4d.model.warp import GaussianBoneSkinning
from recon4d.render import render, resolve_backend
from recon4d.rundir import RunDir, to_jsonable
from recon4d.train.budget import PROBE_SKIP, PROBE_STEPS, Growth, plan_full_steps
from recon4d.train.config import FitConfig, StageConfig
from recon4d.train.optim import Adam
from recon4d.train.stop import StopRequests
from recon4d.train.strategy import DensifyPrune, upsample
from recon4d.utils import console
from recon4d.utils.checkpoint import load_newest_readable, save_checkpoint

StepCallback = Callable[[int, DynamicSurfelModel, dict], None]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name} was asked for but no CUDA GPU is available: use "
                        "--device cpu")
    return torch.device(name)


def _weight_used(config: FitConfig, name: str) -> bool:
    """Whether loss ``name`` has a non-zero weight anywhere in either stage's schedule."""
    for stage in (config.coarse, config.full):
        w = stage.losses.get(name, 0.0)
        if (isinstance(w, (int, float)) and w > 0) or (isinstance(w, list) and any(v > 0 for _, v in w)):
            return True
    return False


class ResumeMismatch(UserError):
    """The run's checkpoint does not fit the settings a resume was given (the optimizer's
    parameter groups differ): the resume stops before anything is trained or written."""


class Trainer:
    """Fits a :class:`DynamicSurfelModel` to a dataset, writing into a run directory."""

    def __init__(self, dataset: Dataset, run: RunDir, config: FitConfig,
                 on_step: StepCallback | None = None):
        self.dataset = dataset
        self.run = run
        self.config = config
        self.on_step = on_step
        self.device = resolve_device(config.device)
        # Depth distortion is counted in object sizes: gsplat's variant is |dz|, the spec's dz^2.
        self._distortion_power = 1 if resolve_backend(config.backend, self.device) == "gsplat" else 2
        self.train_frames = dataset.train_indices(config.all_frames)
        self._train_set = set(self.train_frames)
        if len(self.train_frames) < 1:
            raise UserError("the dataset has no training frames: ingest more frames")
        self.background = torch.as_tensor(dataset.background, dtype=torch.float32, device=self.device)
        self.frames = torch.as_tensor(dataset.frames, device=self.device)
        self.masks = torch.as_tensor(dataset.masks, device=self.device)
        # The frames already show the background they were shot over (the dataset's): the
        # targets are the frames with that background cleaned, not composited again.
        self.targets = photometric.replace_background(self.frames, self.masks, self.background,
                                                      self.background)
        self.times = torch.as_tensor(dataset.times, dtype=torch.float32)
        self.flow: Tensor | None = None
        if _weight_used(config, "flow"):
            loaded = dataset.load_flow()
            if loaded is None:
                console.warn("the flow prior is on but the dataset has no flow (ingest with "
                             "--flow); fitting without it")
            else:
                self.flow = torch.as_tensor(loaded[0], device=self.device)  # (F-1, H, W, 2)
        # User depth is optional data: the prior acts only when the dataset carries maps.
        self.depth: Tensor | None = None
        self.depth_kind = "disparity"
        if _weight_used(config, "depth"):
            loaded_depth = dataset.load_depth()
            if loaded_depth is not None:
                maps = loaded_depth[0] * inner_masks(dataset.masks, config.depth_edge_px)
                self.depth = torch.as_tensor(maps, device=self.device)  # (F, H, W), 0 = unknown
                self.depth_kind = loaded_depth[1]
                console.info(f"depth prior on: the dataset's {self.depth_kind} maps")
        self.generator = torch.Generator().manual_seed(config.seed)
        self._frame_queue: list[int] = []
        self.robust = FrameWeights(dataset.num_frames, tolerance=config.robust_tolerance)
        self.model: DynamicSurfelModel | None = None
        self.optimizer: Adam | None = None
        self.strategy: DensifyPrune | None = None
        self.extent = 1.0
        self.step = 0
        self.stage_name = ""
        self.bad_steps = 0
        self._scaled: dict[float, tuple[Tensor, Tensor]] = {}
        self._scaled_depth: dict[float, Tensor] = {}
        self._neighbours: Tensor | None = None
        self._gauge_depth: Tensor | None = None
        # (K, 3) root offsets of the tracked estimate the fit started from (root_prior).
        self._root_anchor: Tensor | None = None
        # Upright mirror plane of the subject, found once when the symmetry term first acts.
        self.mirror_plane: MirrorPlane | None = None
        self._plane_searched = False

    # Stages -------------------------------------------------------------------------------
    @property
    def coarse_steps(self) -> int:
        return self.config.coarse.steps if self.config.coarse_surfels > 0 else 0

    def stage_at(self, step: int) -> tuple[str, StageConfig, float]:
        """(name, config, progress in [0, 1] within the stage) of a global step."""
        if step < self.coarse_steps:
            return "coarse", self.config.coarse, step / max(self.coarse_steps, 1)
        local = step - self.coarse_steps
        return "full", self.config.full, local / max(self.config.full.steps, 1)

    # Setup --------------------------------------------------------------------------------
    def initialise(self) -> None:
        """A fresh model from the masks (coarse surfels when the coarse stage is on)."""
        cfg = self.config
        torch.manual_seed(cfg.seed)
        ds, train = self.dataset, self.train_frames
        count = cfg.coarse_surfels if self.coarse_steps > 0 else cfg.model.num_surfels
        profile = cfg.model.init_profile
        if profile == "auto":
            profile = "linear" if self.depth is not None else "round"

        def init_volume(object_poses=None):
            # Training frames only: a held-out frame's mask must not shape the model either.
            return init_from_masks(ds.frames[train], ds.masks[train], ds.cameras.viewmats[train],
                                   ds.cameras.Ks[train], count, reference=0,
                                   grid=cfg.model.init_grid, depth_hint=cfg.model.depth_hint,
                                   seed=cfg.seed, profile=profile, object_poses=object_poses)

        init = init_volume()
        estimate = self._root_from_tracks(init) if cfg.model.root_init != "identity" else None
        if estimate is not None and cfg.model.hull_resultant > 0:
            resultant = estimate.view_resultant(ds.cameras.viewmats[train], init.center)
            if resultant <= cfg.model.hull_resultant:
                # The object shows itself from around: carve it like an orbit clip.
                console.info(f"the tracked turn shows the object from around it (view "
                             f"resultant {resultant:.2f}): init from a visual hull through it")
                self.run.log_metrics({"step": 0, "init_hull": {"view_resultant": round(resultant, 3)}})
                init = init_volume(estimate.transforms())
        self.extent = float(init.extent)
        canonical = CanonicalSurfels.from_points(to_torch(init.points), to_torch(init.normals),
                                                 to_torch(init.colors), init.scale,
                                                 opacity=0.7, sh_degree=cfg.model.sh_degree)
        num_bones = cfg.model.num_bones
        centers, radius = (None, 1.0)
        if num_bones > 0:
            bone_pts, radius = kmeans_bones(init.occupied, num_bones, seed=cfg.seed)
            centers = to_torch(bone_pts)
            num_bones = centers.shape[0]
        key_times = self.times[self.train_frames]
        cams = ds.cameras
        self.model = DynamicSurfelModel.build(
            canonical, self.times, key_times, to_torch(cams.viewmats), to_torch(cams.Ks),
            ds.width, ds.height, num_bones=num_bones, bone_centers=centers, bone_radius=radius,
            blend=cfg.model.blend, num_freqs=cfg.model.time_freqs, hidden=cfg.model.mlp_hidden,
            rot_scale=cfg.model.bone_rot_scale, trans_scale=cfg.model.bone_trans_scale * self.extent,
            refine_freqs=cfg.model.refine_freqs).to(self.device)
        self.model.spec["extent"] = self.extent
        if estimate is not None:
            root = self.model.warp.root
            with torch.no_grad():
                # Key times are the training frames' times in order, the tracks' frame order.
                root.rotvecs.copy_(torch.as_tensor(estimate.rotvecs, dtype=torch.float32))
                root.offsets.copy_(torch.as_tensor(
                    estimate.offsets_about(root.pivot.cpu().numpy()), dtype=torch.float32))
            self._root_anchor = root.offsets.detach().clone()
        # The gauge is the init's object centre (the dataset's depth), not its surfels'
        # centroid, which moves with the shape (a hull's carve, a silhouette's uneven parts).
        ref_view = ds.cameras.viewmats[train[0]]
        self._gauge_depth = torch.tensor(float(ref_view[2, :3] @ init.center + ref_view[2, 3]),
                                         device=self.device)
        self.strategy = DensifyPrune(cfg.strategy, self.extent, seed=cfg.seed)
        self.step = 0
        self._enter_stage(self.stage_at(0)[0], fresh=True)

    def _root_from_tracks(self, init):
        """The rigid motion the point tracks show (fixed cameras), as a RootEstimate, or None
        where it cannot be had or ('auto') where the object hardly turns."""
        ds, train, mode = self.dataset, self.train_frames, self.config.model.root_init
        if not cameras_fixed(ds.cameras.viewmats, ds.cameras.Ks):
            if mode == "tracks":
                console.warn("model.root_init 'tracks' is for a fixed camera and this dataset's "
                             "cameras move: the root poses start at the identity")
            return None
        tracks = point_tracks(ds.frames[train], ds.masks[train])
        if tracks.num_tracks < 6:
            console.warn(f"model.root_init '{mode}': only {tracks.num_tracks} point tracks on "
                         "the object, too few for its motion: the root poses start at the identity")
            return None
        estimate = estimate_root_poses_from_init(tracks, ds.cameras.viewmats[train],
                                                 ds.cameras.Ks[train], init, ds.height, ds.width,
                                                 times=np.asarray(ds.times)[train])
        turn = float(estimate.turn_degrees().max())
        used = mode == "tracks" or turn >= self.config.model.root_auto_turn_deg
        self.run.log_metrics({"step": 0, "root_init": {
            "tracks": estimate.num_tracks, "observations": estimate.num_observations,
            "residual_px": round(estimate.residual_px, 3), "max_turn_deg": round(turn, 2),
            "depth_held": estimate.depth_held, "used": used}})
        if not used:
            console.info(f"point tracks show a turn of at most {turn:.0f} degrees: the root poses "
                         "start at the identity")
            return None
        console.info(f"root poses from {estimate.num_tracks} point tracks: turns up to "
                     f"{turn:.0f} degrees, median reprojection error {estimate.residual_px:.2f} px")
        return estimate

    def _enter_stage(self, name: str, fresh: bool) -> None:
        if name == "full" and not fresh and self.coarse_steps > 0:
            # Coarse -> full: split every coarse surfel into smaller children.
            upsample(self.model.canonical, self.config.model.num_surfels, self.generator)
            self.model.canonical.to(self.device)
        self.stage_name = name
        self.optimizer = self._build_optimizer(self.stage_at(self.step)[1])
        self._neighbours = None
        if self.strategy is not None:
            self.strategy.reset(len(self.model.canonical), self.device)

    def _build_optimizer(self, stage: StageConfig) -> Adam:
        """Adam with one named group per parameter kind (order is fixed: checkpoints rely on it)."""
        lr, m, ext = self.config.lr, self.model, self.extent
        s = stage.lr_scale
        c = m.canonical
        groups = []

        def add(name, params, value):
            params = [p for p in params if p is not None]
            value = value * stage.lr_scales.get(name, 1.0)
            if params and value > 0:
                groups.append({"name": name, "params": params, "lr": value * s, "base_lr": value * s})

        geometry_lr = 1.0 if stage.train_canonical else 0.0
        add("means", [c.means], lr.means * ext * geometry_lr)
        add("quats", [c.quats], lr.quats * geometry_lr)
        add("log_scales", [c.log_scales], lr.log_scales * geometry_lr)
        add("opacity", [c.opacity_logits], lr.opacity)
        add("sh_dc", [c.sh_dc], lr.sh_dc)
        if c.sh_rest.shape[1] > 0:
            add("sh_rest", [c.sh_rest], lr.sh_rest)
        if SKIN_EXTRA in c.extra_names:
            add("skin_logits", [getattr(c, SKIN_EXTRA)], lr.skin_logits)
        if REFINE_EXTRA in c.extra_names and stage.train_refine:
            add("refine", [getattr(c, REFINE_EXTRA)], lr.refine)
        bones = m.warp.bones
        if isinstance(bones, GaussianBoneSkinning):
            add("bone_mlp", list(bones.mlp.parameters()), lr.bone_mlp)
            add("bone_centers", [bones.centers], lr.bone_centers * ext)
            add("bone_shape", [bones.rest_quats, bones.log_radii], lr.bone_shape)
        add("root_rot", [m.warp.root.rotvecs], lr.root_rot)
        add("root_offsets", [m.warp.root.offsets], lr.root_offsets * ext)
        add("focal", [m.log_focal], lr.focal)
        return Adam(groups, eps=1e-15)

    def _set_learning_rates(self, progress: float) -> None:
        """Exponential decay over the full stage: means to ``means_final``, every other group
        (focal excepted: it is already tiny) to ``final_ratio`` of its rate. Without the decay
        the last frames seen win: with one frame per step, constant rates leave the shared
        parameters tuned to whichever frames came last."""
        if self.stage_name != "full":
            return
        lr = self.config.lr
        means_decay = lr.means_final / lr.means
        for group in self.optimizer.param_groups:
            if group["name"] == "means":
                group["lr"] = group["base_lr"] * means_decay ** progress
            elif group["name"] != "focal":
                group["lr"] = group["base_lr"] * lr.final_ratio ** progress

    # Data ---------------------------------------------------------------------------------
    def _size_at(self, scale: float) -> tuple[int, int]:
        """(h, w) of the images at ``scale`` x the dataset size (the cameras round the same way)."""
        return max(1, round(self.dataset.height * scale)), max(1, round(self.dataset.width * scale))

    def _scaled_data(self, scale: float) -> tuple[Tensor, Tensor]:
        """(targets (F, h, w, 3), masks (F, h, w)) at ``scale`` x the dataset size (cached)."""
        if scale not in self._scaled:
            if scale == 1.0:
                self._scaled[scale] = (self.targets, self.masks)
            else:
                h, w = self._size_at(scale)
                img = F.interpolate(self.targets.permute(0, 3, 1, 2), size=(h, w), mode="area")
                msk = F.interpolate(self.masks[:, None], size=(h, w), mode="area")
                self._scaled[scale] = (img.permute(0, 2, 3, 1).contiguous(), msk[:, 0].contiguous())
        return self._scaled[scale]

    def _depth_at(self, scale: float) -> Tensor:
        """(F, h, w) user maps at ``scale`` (cached): nearest sampling, so no pixel blends an
        object depth with a background one."""
        if scale not in self._scaled_depth:
            if scale == 1.0:
                self._scaled_depth[scale] = self.depth
            else:
                scaled = F.interpolate(self.depth[:, None], size=self._size_at(scale), mode="nearest")
                self._scaled_depth[scale] = scaled[:, 0].contiguous()
        return self._scaled_depth[scale]

    def _sample_frames(self, count: int) -> list[int]:
        """The next ``count`` training frames of a shuffled pass over all of them (epochs, not
        independent draws): every frame is visited equally often, so no frame's root pose or
        appearance is left behind by chance near the end of the fit."""
        picked: list[int] = []
        while len(picked) < min(count, len(self.train_frames)):
            if not self._frame_queue:
                order = torch.randperm(len(self.train_frames), generator=self.generator)
                self._frame_queue = [self.train_frames[int(i)] for i in order]
            frame = self._frame_queue.pop()
            if frame not in picked:  # at an epoch boundary a frame may come up twice in a step
                picked.append(frame)
        return picked

    # One step -----------------------------------------------------------------------------
    def compute_losses(self, frames: list[int], stage: StageConfig, progress: float
                       ) -> tuple[Tensor, dict[str, float], Tensor]:
        """(total loss, per-term values, (len(frames),) per-frame photometric losses)."""
        model, cfg = self.model, self.config
        weights = weights_at(stage.losses, progress)
        targets, masks = self._scaled_data(stage.resolution)
        robust = self.robust.weights(frames) if cfg.robust_frames else torch.ones(len(frames))
        terms: dict[str, Tensor] = {}

        def add(name: str, value: Tensor) -> None:
            terms[name] = terms.get(name, 0) + value / len(frames)

        photo_values = []
        psnrs = []
        n = len(model.canonical)
        need_rigid = weights.get("rigidity", 0) > 0 and n > 1
        # Skinning smoothness compares sampled surfels with their neighbours too.
        need_rows = (need_rigid or weights.get("skin_smooth", 0) > 0) and n > 1
        if need_rows:
            if self._neighbours is None or self._neighbours.shape[0] != n:
                self._neighbours = motion.knn(model.canonical.means, cfg.knn)
            rows = self._sample_rows()
        for k, f in enumerate(frames):
            t = self.times[f]
            surfels, warp_q = model.warped_state(t, refine=stage.train_refine)
            out = render(surfels, model.cameras([f], stage.resolution), backend=cfg.backend,
                         background=self.background)
            target, mask = targets[f:f + 1], masks[f:f + 1]
            photo = photometric.photometric_per_image(out.rgb, target, stage.ssim_weight)
            photo_values.append(photo.detach())
            psnrs.append(photometric.psnr(out.rgb, target))
            # A frame's robust weight scales every term that compares with that frame's data
            # (image, mask, flow, depth map): a distorted generated frame's mask is distorted
            # too. The render's own regularisers (normals, distortion) keep full weight.
            trust = robust[k].to(photo)
            add("photo", photo.sum() * trust)
            if weights.get("mask", 0) > 0:
                add("mask", geometry.mask_loss(out, mask).sum() * trust)
            if weights.get("normal", 0) > 0:
                add("normal", geometry.normal_consistency(out, mask).sum())
            if weights.get("distortion", 0) > 0:
                # In units of the object's half-size, like the other geometric terms, so one
                # weight fits any scene scale.
                add("distortion", geometry.distortion_loss(out).sum() / self.extent ** self._distortion_power)
            # Flow into a held-out frame would carry that frame's pixels into training.
            if (weights.get("flow", 0) > 0 and self.flow is not None and f + 1 < len(self.times)
                    and f + 1 in self._train_set):
                add("flow", self._flow_term(surfels, f, stage.resolution, mask[0]) * trust)
            if weights.get("depth", 0) > 0 and self.depth is not None:
                user = self._depth_at(stage.resolution)[f]
                # Trust the map on the object only, where the render covers it too.
                trusted = mask[0] * (out.alpha[0].detach() > 0.5).to(mask)
                add("depth", priors.depth_prior_loss(out.depth[0], user, trusted, self.depth_kind)
                    * trust)
            if need_rigid:
                rows_d = rows.to(self.device)
                add("rigidity", motion.rigidity_loss(model.canonical.means, surfels.means, warp_q,
                                                     rows_d, self._neighbours[rows_d]) / self.extent)
        bones = model.warp.bones
        if isinstance(bones, GaussianBoneSkinning):
            if weights.get("bone_smooth", 0) > 0:
                dt = 1.0 / max(len(self.times) - 1, 1)
                # t - dt and t + dt both inside the clip: a clamped end would make steady
                # motion look like a stop and pull it towards one.
                inner = 1.0 - 2 * dt
                t = dt + inner * float(torch.rand((), generator=self.generator)) if inner > 0 else 0.5
                samples = [bones.motion_params(t + d) for d in (-dt, 0.0, dt)]
                rot = motion.trajectory_smoothness(*(s[0] for s in samples))
                trans = motion.trajectory_smoothness(*(s[1] for s in samples)) / self.extent ** 2
                terms["bone_smooth"] = rot + trans
            if weights.get("skin_smooth", 0) > 0 and need_rows:
                rows_d = rows.to(self.device)
                residual = getattr(model.canonical, SKIN_EXTRA)
                means = model.canonical.means.detach()
                nb = self._neighbours[rows_d]
                w_rows = bones.skinning_weights(means[rows_d], residual[rows_d])
                w_nb = bones.skinning_weights(means[nb].reshape(-1, 3), residual[nb].reshape(-1, residual.shape[1]))
                terms["skin_smooth"] = motion.skinning_smoothness(w_rows, w_nb.reshape(nb.shape + (-1,)))
        if weights.get("symmetry", 0) > 0:
            plane = self._find_mirror_plane()
            if plane is not None:
                terms["symmetry"] = mirror_loss(model.canonical.means, self._sample_rows().to(self.device),
                                                plane, self.extent)
        if weights.get("between", 0) > 0 and len(self.train_frames) >= 2:
            terms["between"] = self._between_term() / self.extent ** 2
        if weights.get("root_prior", 0) > 0 and self._root_anchor is not None:
            # One camera cannot tell a larger object farther away from a smaller one nearer;
            # the tracks' structure from motion settled each frame's depth, the prior keeps it.
            shift = model.warp.root.offsets - self._root_anchor
            terms["root_prior"] = shift.square().sum(1).mean() / self.extent ** 2
        if weights.get("depth_gauge", 0) > 0 and self._gauge_depth is not None:
            drift = self._reference_depth() - self._gauge_depth
            terms["depth_gauge"] = drift ** 2 / self.extent ** 2
        if weights.get("root_smooth", 0) > 0:
            root = model.warp.root
            # Keys sit on the training frames only: a held-out frame leaves a double gap.
            terms["root_smooth"] = (motion.keyframe_smoothness(root.rotvecs, root.key_times)
                                    + motion.keyframe_smoothness(root.offsets, root.key_times)
                                    / self.extent ** 2)
        total = sum(weights.get(name, 0.0) * value for name, value in terms.items())
        values = {name: float(value.detach()) for name, value in terms.items()}
        values["psnr"] = float(np.mean(psnrs))
        return total, values, torch.cat(photo_values)

    def _reference_depth(self) -> Tensor:
        """Camera depth of the surfels' centroid at the reference (first training) frame.

        A fixed camera cannot tell a larger object farther away from a smaller one nearer; the
        init settles that gauge (the object's centre at the dataset's depth in the reference
        frame) and the ``depth_gauge`` loss holds it there. Bones and root pose are both
        applied: either could carry the whole object away in depth. Every surfel counts (a
        sample's centroid would move from step to step and the term would never settle).
        """
        ref = self.train_frames[0]
        t = self.times[ref]
        rows = torch.arange(len(self.model.canonical), device=self.device)
        q, shift = self.model.warp.root.rt_at(t)
        centre = quat_rotate(q, self.model.deformed_means(rows, t).mean(0)) + shift
        viewmat = self.model.base_viewmats[ref]
        return viewmat[2, :3] @ centre + viewmat[2, 3]

    def _sample_rows(self) -> Tensor:
        """(S,) random canonical rows (with repeats), S = ``rigidity_samples`` or all surfels,
        drawn from the trainer's generator so that a resumed fit draws the same ones."""
        n = len(self.model.canonical)
        return torch.randint(0, n, (min(self.config.rigidity_samples, n),), generator=self.generator)

    def _between_term(self) -> Tensor:
        """Bone-warped positions (object frame) of sampled surfels at a random time between two
        consecutive training frames (where held-out frames lie) against their prediction from
        the keyframes (detached): without it the time MLP is free to wiggle between the frames
        it is fitted on. With ``between_still`` > 0 (default) only surfels that hold still
        between the two frames count, against the chord; with 0 every surfel counts, against
        the cubic spline through the four nearest training frames. The root pose is left out: its
        keyframes are interpolated by rule, and pulling them toward the spline fed back into the
        next step's spline until the fit diverged (jay, parrot: 12 dB)."""
        model, train = self.model, self.train_frames
        j = int(torch.randint(0, len(train) - 1, (), generator=self.generator))
        keys = [train[max(j - 1, 0)], train[j], train[j + 1], train[min(j + 2, len(train) - 1)]]
        key_times = self.times[keys]
        t_a, t_b = float(key_times[1]), float(key_times[2])
        t = t_a + float(torch.rand((), generator=self.generator)) * (t_b - t_a)
        rows = self._sample_rows().to(self.device)
        gate = self.config.between_still
        if gate > 0:
            # Still parts only, toward the chord: a held-out frame between two frames that agree
            # should agree with them, whatever the frames around do. Only the bracketing keys.
            with torch.no_grad():
                x_a, x_b = (model.deformed_means(rows, v) for v in (t_a, t_b))
            moved = (x_b - x_a).norm(dim=-1) / (gate * self.extent)
            predicted = torch.lerp(x_a, x_b, (t - t_a) / (t_b - t_a))
            return motion.between_frames_loss(model.deformed_means(rows, t), predicted,
                                              torch.exp(-moved ** 2))
        with torch.no_grad():
            keyed = torch.stack([model.deformed_means(rows, float(k)) for k in key_times])
        predicted = motion.hermite_between(keyed, key_times, t)
        return motion.between_frames_loss(model.deformed_means(rows, t), predicted)

    @torch.no_grad()
    def _find_mirror_plane(self) -> MirrorPlane | None:
        """The subject's upright mirror plane in the canonical frame, found once (see
        recon4d.model.symmetry) from the first training frame and its mask.

        Its direction comes from the user's map of that frame where the dataset has maps: they
        exist before the fit has a shape, so the term can shape the coarse stage too (where the
        hidden side takes shape); a depth map's unknown scale does not turn the plane, a
        disparity map's unknown offset is searched (recon4d.model.symmetry). Without maps it
        comes from the model's rendered depth, and not before the full stage: the coarse model
        is the init's flat volume, whose plane faces the camera. How far from the camera the
        plane lies is not taken from the depth (a map's scale and the fit's visible surface are
        both uncertain along the view): it is held through the object centre the fit assumes,
        then taken back to the canonical frame through that frame's root pose (docs/fit.md has
        the figures). None until found, and for good when there is too little depth."""
        if self._plane_searched:
            return self.mirror_plane
        from_map = self.depth is not None
        if not from_map and self.stage_name == "coarse":
            return None
        self._plane_searched = True
        f = self.train_frames[0]
        cams = self.model.cameras([f])
        mask = self.dataset.masks[f]
        viewmat, K = cams.viewmats[0].cpu().numpy(), cams.Ks[0].cpu().numpy()
        if from_map:
            source = f"the {self.depth_kind} map"
            found = mirror_plane_from_map(self.depth[f].cpu().numpy(), self.depth_kind, mask,
                                          viewmat, K, seed=self.config.seed)
        else:
            source = "the rendered depth"
            out = render(self.model.surfels_at(self.times[f]), cams, backend=self.config.backend)
            found = estimate_mirror_plane(out.depth[0].cpu().numpy() * (mask > 0.5), mask, viewmat,
                                          K, seed=self.config.seed)
        if found is None:
            console.warn(f"symmetry term off: {source} of the first training frame covers too "
                         "little of the mask")
            return None
        centre = self._assumed_centre(f)
        world = MirrorPlane(found.normal, float(np.dot(found.normal, centre)), found.violation)
        q, t = self.model.warp.root.rt_at(self.times[f])
        self.mirror_plane = world.pulled_back(q.cpu(), t.cpu())
        n = world.normal
        console.info(f"mirror plane from {source}: normal ({n[0]:.3f}, {n[1]:.3f}, {n[2]:.3f}), "
                     f"offset {world.offset:.3f}, violation {world.violation:.4f}")
        return self.mirror_plane

    def _assumed_centre(self, f: int) -> np.ndarray:
        """(3,) world point the fit assumes the object is centred on: on frame f's optical
        axis at the depth the init places it (the world origin's depth, else the hint)."""
        view = np.asarray(self.dataset.cameras.viewmats[f], dtype=np.float64)
        depth = object_depth(view, self.config.model.depth_hint)
        cam2world = np.linalg.inv(view)
        return cam2world[:3, :3] @ np.array([0.0, 0.0, depth]) + cam2world[:3, 3]

    def _flow_term(self, surfels, f: int, scale: float, mask: Tensor) -> Tensor:
        """Rendered flow f -> f+1 against the dataset's (DIS) flow: the robust end-point error
        in pixels of the dataset's frames, whatever the stage's ``scale`` (in the stage's own
        pixels the coarse stage at 0.5 scored half, so one weight meant two strengths)."""
        from recon4d.losses.priors import flow_loss
        from recon4d.train.flow import render_flow

        means_next = self.model.surfels_at(self.times[f + 1], refine=False).means
        cams = self.model.cameras([f], scale)
        flow, _ = render_flow(surfels, means_next, cams, self.config.backend,
                              cameras_j=self.model.cameras([f + 1], scale))
        target = self.flow[f]
        if target.shape[:2] != flow.shape[:2]:
            target = F.interpolate(target.permute(2, 0, 1)[None], size=flow.shape[:2],
                                   mode="bilinear", align_corners=False)[0].permute(1, 2, 0) * scale
        return flow_loss(flow / scale, target / scale, mask)

    def _clear_gradients(self) -> None:
        """Drop every gradient, also of parameters the optimizer leaves out (a stage that
        freezes the surfels): theirs would pile up over steps and feed the densification's
        gradient statistics."""
        self.optimizer.zero_grad(set_to_none=True)
        self.model.zero_grad(set_to_none=True)

    def train_step(self) -> dict:
        """One optimisation step at ``self.step``; returns the record it logs."""
        name, stage, progress = self.stage_at(self.step)
        if name != self.stage_name:
            self._enter_stage(name, fresh=False)
        self._set_learning_rates(progress)
        frames = self._sample_frames(stage.frames_per_step)
        self._clear_gradients()
        total, values, photo = self.compute_losses(frames, stage, progress)
        record = {"step": self.step, "stage": name, "frames": frames}
        finite = bool(torch.isfinite(total))
        if finite:
            total.backward()
            finite = all(bool(torch.isfinite(p.grad).all()) for g in self.optimizer.param_groups
                         for p in g["params"] if p.grad is not None)
        if not finite:
            # Skip the update entirely: no optimizer step, no strategy statistics.
            self._clear_gradients()
            self.bad_steps += 1
            record["skipped"] = "non-finite loss or gradient"
            console.warn(f"step {self.step}: non-finite loss or gradient, step skipped")
            if self.bad_steps >= self.config.max_bad_steps:
                self.run.log_metrics(record)
                raise UserError(f"the fit diverged ({self.bad_steps} non-finite steps in a row at "
                                f"step {self.step}): check the input frames and masks or lower "
                                "the learning rates, then fit again into another --out (this "
                                "run's checkpoints may hold the diverging state)")
            return record
        self.bad_steps = 0
        self.robust.update(frames, photo)
        if name == "full":
            self.strategy.after_backward(self.model.canonical)
        self.optimizer.step()
        if name == "full":
            local = self.step - self.coarse_steps
            if self.strategy.step(self.model.canonical, self.optimizer, local, progress):
                self._neighbours = None
        record.update({"loss": float(total.detach()), **values, "num_surfels": len(self.model.canonical)})
        return record

    # Evaluation ---------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, indices: list[int]) -> float | None:
        """Mean PSNR (dB) over ``indices`` at full resolution, input cameras, over white: the
        evaluation protocol's held-out metric (`recon4d eval`), whatever background the frames
        were shot over (the fit itself trains over the dataset's)."""
        if not indices:
            return None
        white = torch.ones(3, device=self.device)
        values = []
        for f in indices:
            surfels = self.model.surfels_at(self.times[f])
            out = render(surfels, self.model.cameras([f]), backend=self.config.backend,
                         background=white)
            target = photometric.replace_background(self.frames[f:f + 1], self.masks[f:f + 1],
                                                    self.background, white)
            values.append(photometric.psnr(out.rgb.clamp(0, 1), target))
        return float(np.mean(values))

    # Checkpoints --------------------------------------------------------------------------
    def state(self) -> dict:
        return {
            "step": self.step,
            "stage": self.stage_name,
            "extent": self.extent,
            "bad_steps": self.bad_steps,
            "model_spec": self.model.full_spec(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "strategy": self.strategy.state_dict(),
            "robust": self.robust.state_dict(),
            "rng": self.generator.get_state(),
            "frame_queue": list(self._frame_queue),
            "torch_rng": torch.get_rng_state(),
            "config": to_jsonable(self.config),
            # Neighbour lists are rebuilt only when rows change; saving them keeps a resumed
            # run on exactly the same rigidity pairs as an uninterrupted one.
            "neighbours": self._neighbours,
            "mirror_plane": None if self.mirror_plane is None else asdict(self.mirror_plane),
            "plane_searched": self._plane_searched,
            "gauge_depth": self._gauge_depth,
            "root_anchor": self._root_anchor,
            # Which input the run fits: a resume onto another clip's dataset is refused.
            "dataset_sha256": self.dataset.manifest.get("source", {}).get("sha256"),
            "dataset_frames": self.dataset.num_frames,
        }

    def save(self) -> None:
        save_checkpoint(self.run.checkpoints, self.step, self.state())

    def restore(self) -> bool:
        """Load the newest readable checkpoint of the run; False when there is none."""
        found = load_newest_readable(self.run.checkpoints, map_location=str(self.device))
        if found is None:
            return False
        _, state = found
        source = self.dataset.manifest.get("source", {})
        recorded = state.get("dataset_sha256")
        if (state.get("dataset_frames", self.dataset.num_frames) != self.dataset.num_frames
                or (recorded is not None and source.get("sha256") not in (None, recorded))):
            raise ResumeMismatch(f"the run's checkpoints were fitted to another input than "
                                 f"'{source.get('path', self.dataset.root)}': resume with the "
                                 "run's own input, or fit this one into another --out")
        self.model = DynamicSurfelModel.from_state(state["model_spec"], state["model"]).to(self.device)
        self.extent = float(state["extent"])
        self._gauge_depth = state.get("gauge_depth")
        self._root_anchor = state.get("root_anchor")
        self.step = int(state["step"])
        self.bad_steps = int(state.get("bad_steps", 0))
        self.strategy = DensifyPrune(self.config.strategy, self.extent, seed=self.config.seed)
        self.stage_name = str(state["stage"])
        # The optimizer of the stage the checkpoint was taken in (same groups, same order).
        stage = self.config.coarse if self.stage_name == "coarse" else self.config.full
        self.optimizer = self._build_optimizer(stage)
        rates = {group["name"]: group["base_lr"] for group in self.optimizer.param_groups}
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except ValueError as exc:
            raise ResumeMismatch(f"the checkpoint in '{self.run.checkpoints}' cannot take the "
                                 f"settings given now ({exc}): resume without the changed "
                                 "settings, or fit again into a new --out") from exc
        # Rates given on resume apply from here (the checkpoint's moments stay): the group's
        # rate keeps its place in the decay, scaled to the new base.
        for group in self.optimizer.param_groups:
            new_base = rates[group["name"]]
            if group["base_lr"] != new_base and group["base_lr"] > 0:
                group["lr"] *= new_base / group["base_lr"]
                group["base_lr"] = new_base
        self.strategy.load_state_dict(state["strategy"])
        self.robust.load_state_dict(state["robust"])
        # RNG states are CPU byte tensors whatever device the checkpoint was mapped to.
        self.generator.set_state(state["rng"].cpu())
        self._frame_queue = [int(f) for f in state.get("frame_queue", [])]
        torch.set_rng_state(state["torch_rng"].cpu())
        self._neighbours = state.get("neighbours")
        plane = state.get("mirror_plane")
        self.mirror_plane = None if plane is None else MirrorPlane(**{**plane, "normal": tuple(plane["normal"])})
        self._plane_searched = bool(state.get("plane_searched", False))
        return True

    # The loop -----------------------------------------------------------------------------
    def fit(self, resume: bool = False) -> DynamicSurfelModel:
        cfg = self.config
        previous_threads = torch.get_num_threads()
        if cfg.num_threads > 0:
            torch.set_num_threads(cfg.num_threads)
        try:
            return self._fit(resume)
        finally:
            torch.set_num_threads(previous_threads)

    def _run_steps(self, until: int, start: float, cpu_start: float, stop: StopRequests,
                   of_total: int | None = None) -> None:
        """Steps from ``self.step`` to ``until`` of a fit of ``of_total`` steps (default
        ``until``): log, report, checkpoint; stop cleanly on a signal (a checkpoint at the step
        reached, then :class:`Interrupted`)."""
        cfg = self.config
        total = until if of_total is None else of_total
        report_every = max(1, total // 10)
        for _ in console.track(range(self.step, until), total=until - self.step, description="fit"):
            record = self.train_step()
            self.step += 1
            record["time_s"] = round(time.monotonic() - start, 3)
            record["cpu_s"] = round(time.process_time() - cpu_start, 3)
            if "skipped" in record or record["step"] % cfg.log_every == 0 or self.step == total:
                self.run.log_metrics(record)
            if self.on_step is not None:
                self.on_step(record["step"], self.model, record)
            if "loss" in record and (self.step % report_every == 0):
                console.info(f"step {self.step}/{total} [{record['stage']}] loss {record['loss']:.4f} "
                             f"psnr {record['psnr']:.2f} dB, {record['num_surfels']} surfels")
            if cfg.eval_every and self.step % cfg.eval_every == 0:
                held = self.evaluate(self.dataset.test_indices())
                if held is not None:
                    self.run.log_metrics({"step": self.step, "heldout_psnr": held})
            # No checkpoint of a state whose steps are being skipped: the kept ones rotate, and
            # a diverging run would otherwise push out its last good one.
            saved = (self.step % cfg.checkpoint_every == 0 and self.step < total
                     and self.bad_steps == 0)
            if saved:
                self.save()
            if stop.signum is not None and self.step < total:
                if not saved:
                    self.save()
                raise Interrupted(f"stopped at step {self.step} of {total} with a checkpoint",
                                  exit_code=128 + stop.signum)

    def _apply_time_budget(self, step_seconds: float, elapsed: float) -> None:
        """Shorten the full stage (once, at the probe) so the fit ends within its time budget;
        config.json and later checkpoints record the shortened stage."""
        cfg = self.config
        done = self.step - self.coarse_steps
        # The end of the fit renders every frame once more (train and held-out PSNR) and saves.
        reserve = 2.0 + step_seconds * self.dataset.num_frames
        strategy = cfg.strategy
        growth = Growth(cap=strategy.max_surfels if strategy.enabled else 0, every=strategy.every,
                        fraction=strategy.grow_fraction, start=strategy.start, stop=strategy.stop)
        plan = plan_full_steps(cfg.full.steps, done, step_seconds, len(self.model.canonical),
                               growth, cfg.time_budget_s - elapsed - reserve)
        self.run.log_metrics({"step": self.step, "time_budget": {
            "budget_s": cfg.time_budget_s, "elapsed_s": round(elapsed, 2),
            "step_s": round(step_seconds, 4), "planned_full_steps": plan.planned,
            "full_steps": plan.steps, "predicted_rest_s": round(plan.predicted_seconds, 1)}})
        budget = console.format_duration(cfg.time_budget_s)
        if not plan.shortened:
            console.info(f"time budget {budget}: the planned {plan.planned} full-stage steps fit "
                         f"({step_seconds:.2f} s a step now)")
            return
        console.warn(f"time budget {budget}: the full stage is shortened from {plan.planned} to "
                     f"{plan.steps} steps ({step_seconds:.2f} s a step now, more as surfels are "
                     "added); a longer budget gives a sharper fit")
        self.config = dataclasses.replace(cfg, full=dataclasses.replace(cfg.full, steps=plan.steps))
        self.run.write_config(self.config, kind="fit")

    def _fit(self, resume: bool) -> DynamicSurfelModel:
        cfg = self.config
        if not (resume and self.restore()):
            if resume:
                # A fit stopped before its first checkpoint: its config is there, no weights.
                console.info(f"no checkpoint in '{self.run.checkpoints}' yet: starting from step 0")
            self.initialise()
        total = cfg.total_steps
        if self.step >= total:
            console.info(f"fit already complete at step {self.step}")
            if "fit" not in self.run.read_metrics():
                # Stopped between the final checkpoint and the summary: write it now (the
                # timing of the process that stopped is lost).
                self._finish(None, None)
            return self.model
        console.info(f"fitting {len(self.train_frames)} frames "
                     f"({self.dataset.width}x{self.dataset.height}) for {total} steps "
                     f"from step {self.step} on {self.device}, backend {cfg.backend}")
        start = time.monotonic()
        cpu_start = time.process_time()
        with StopRequests() as stop:
            # Time a few full-stage steps, then shorten the stage once if it would not fit. A
            # run resumed inside or past that window without a decision times the steps from
            # where it resumed (they were run in the process that stopped).
            probe_from = max(self.coarse_steps + PROBE_SKIP, self.step)
            probe_to = probe_from + PROBE_STEPS
            decided = self.step > 0 and any("time_budget" in record
                                            for record in self.run.read_metrics_log())
            if cfg.time_budget_s > 0 and not decided and probe_to < total:
                self._run_steps(probe_from, start, cpu_start, stop, of_total=total)
                probe_start = time.monotonic()
                self._run_steps(probe_to, start, cpu_start, stop, of_total=total)
                self._apply_time_budget((time.monotonic() - probe_start) / PROBE_STEPS,
                                        time.monotonic() - start)
                total = self.config.total_steps
            self._run_steps(total, start, cpu_start, stop)
        self.save()
        # CPU seconds of this process: on a shared machine wall time measures the neighbours.
        self._finish(time.monotonic() - start, time.process_time() - cpu_start)
        return self.model

    def _finish(self, elapsed: float | None, cpu_seconds: float | None) -> None:
        """The fit's summary (steps, timing, train and held-out PSNR) into metrics.json and the
        log; ``elapsed`` / ``cpu_seconds`` None when the steps ran in an earlier process."""
        summary = {"steps": self.step,
                   "fit_seconds": None if elapsed is None else round(elapsed, 1),
                   "cpu_seconds": None if cpu_seconds is None else round(cpu_seconds, 1),
                   "threads": torch.get_num_threads(),
                   "num_surfels": len(self.model.canonical),
                   "train_psnr": self.evaluate(self.train_frames)}
        if not self.config.all_frames:
            summary["heldout_psnr"] = self.evaluate(self.dataset.test_indices())
        self.run.log_metrics({"step": self.step, "final": True, **{k: v for k, v in summary.items()
                                                                   if v is not None}})
        self.run.update_metrics({"fit": summary})
        console.info("fit done{}: train PSNR {:.2f} dB{}".format(
            "" if elapsed is None else f" in {elapsed:.0f}s", summary["train_psnr"] or math.nan,
            f", held-out PSNR {summary['heldout_psnr']:.2f} dB" if summary.get("heldout_psnr") else ""))
