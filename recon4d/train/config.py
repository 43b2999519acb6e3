"""Fit configuration: light dataclasses, presets, JSON round trip.

Everything that changes what a fit does is data here (stages, learning rates, loss weights and
their schedules, densification), so ablations are config edits, not code branches. Lengths are
in units of the object's extent (its half-size from the init), so one preset fits any scale.

Presets: ``cpu-fast`` (default without a GPU), ``gpu-quality`` (default with one) and ``test``
(a few steps at tiny sizes, for tests).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Union

Weight = Union[float, list]

PRESETS = ("cpu-fast", "gpu-quality", "test")


@dataclass
class ModelConfig:
    """What the model is made of."""

    num_surfels: int = 4000
    """Surfels at the start of the full stage (densification may add more)."""
    sh_degree: int = 0
    """SH degree of the colours (0: view-independent; a fixed camera cannot see more)."""
    num_bones: int = 25
    """Gaussian bones of the warp (0: root poses only)."""
    blend: str = "dqs"
    """Bone blending: 'dqs' (dual quaternions) or 'lbs' (linear blend)."""
    time_freqs: int = 0
    """Fourier frequencies of the bone MLP's time encoding (sets the fastest motion: frequency
    k has a period of 2 / k of the clip). 0: chosen from the clip when the fit starts, see
    :func:`auto_time_freqs`."""
    mlp_hidden: int = 64
    refine_freqs: int = 3
    """Temporal frequencies of the ΔR/ΔS refinement (0 turns it off)."""
    bone_rot_scale: float = 1.0
    bone_trans_scale: float = 0.3
    """Bone translation output multiplier, in units of the object extent."""
    init_grid: int = 64
    """Voxels along the object's box for the mask-based init."""
    init_profile: str = "auto"
    """Cross-section of the fixed-camera init's inflated silhouette: 'round' (a limb of
    half-width R gets a circular section), 'linear' (half-thickness = distance to the
    silhouette border, a diamond section) or 'auto': round without user depth maps, where the
    hidden side keeps much of the init's shape (default scene: Chamfer 5.0 -> 4.4 %), linear
    with them, where the map shapes the front and the round init's extra volume lingers at
    the sides (novel views -1.4 dB; docs/fit.md)."""
    depth_hint: float = 2.7
    """Object depth (scene units) when the dataset's cameras do not place the object."""
    root_init: str = "auto"
    """Where the root poses start: 'identity' (no motion; the fit finds it), 'tracks' (rigid
    structure from motion on DIS point tracks before the fit, fixed cameras only: for objects
    that turn far, which the photometric fit leaves to the bones; docs/fit.md, Sessions 17-18)
    or 'auto' (tracks when, on a fixed camera, they show the object turning at least
    ``root_auto_turn_deg``; else the identity: the shared clips turn 5-28 degrees and keep it,
    the tumbling and turntable scenes take the tracks)."""
    root_auto_turn_deg: float = 45.0
    """The turn (degrees, largest over the frames) from which 'auto' keeps the tracked poses."""
    hull_resultant: float = 0.5
    """With tracked root poses that show the object from around it (their
    :meth:`~recon4d.model.root_from_tracks.RootEstimate.view_resultant` at most this; a
    half turn gives 0.61, a full turn about 0), the init is a visual hull carved through the
    frames' cameras moved with the object instead of the inflated first silhouette. 0: never."""


@dataclass
class LearningRates:
    """Adam learning rates. ``means``, ``bone_centers`` and ``root_offsets`` are in units of
    the object extent per step; the rest are in their parameter's own units."""

    means: float = 2e-3
    means_final: float = 2e-4
    quats: float = 3e-3
    log_scales: float = 1e-2
    opacity: float = 3e-2
    sh_dc: float = 1e-2
    sh_rest: float = 5e-4
    skin_logits: float = 1e-2
    refine: float = 2e-3
    bone_mlp: float = 2e-3
    bone_centers: float = 1e-3
    bone_shape: float = 3e-3
    root_rot: float = 3e-3
    root_offsets: float = 3e-3
    focal: float = 2e-5
    """Small on purpose: with a fixed camera, focal length and object size trade off almost
    freely, and Adam turns that flat direction into a steady drift at any larger rate."""
    final_ratio: float = 0.1
    """Every rate but ``means`` (see ``means_final``) and ``focal`` decays exponentially to this
    fraction of itself over the full stage."""



LR_GROUPS = tuple(f.name for f in dataclasses.fields(LearningRates)
                  if f.name not in ("means_final", "final_ratio"))
"""The optimizer's parameter groups, each with its rate in :class:`LearningRates`."""

@dataclass
class StrategyConfig:
    """Densification and pruning (progress is the fraction of the full stage)."""

    enabled: bool = True
    start: float = 0.1
    stop: float = 0.7
    every: int = 100
    grow_fraction: float = 0.08
    """Each densify step clones/splits this fraction of surfels with the largest positional
    gradients (ranked, so no scene-dependent threshold)."""
    max_surfels: int = 8000
    split_scale: float = 1.5
    """Surfels larger than this x the median scale are split in two; smaller ones are cloned."""
    prune_opacity: float = 0.02
    prune_scale: float = 0.5
    """Surfels larger than this x the object extent are pruned."""


@dataclass
class StageConfig:
    """One optimisation stage."""

    steps: int = 1000
    resolution: float = 1.0
    """Image scale relative to the dataset (0.5: half resolution)."""
    frames_per_step: int = 1
    train_canonical: bool = True
    """Update the surfels themselves (off: only warp, cameras, colours' neighbours move)."""
    train_refine: bool = True
    losses: dict[str, Weight] = field(default_factory=dict)
    """Loss name -> weight or [[progress, weight], ...] schedule. Names: photo, mask, normal,
    distortion, rigidity, bone_smooth, root_smooth, skin_smooth, flow, depth, between (bone-warped
    centres between training frames against their keyframes' prediction, gated by
    ``FitConfig.between_still``; docs/fit.md), symmetry (the canonical shape against its mirror
    image through an upright plane estimated from the first training frame; meant for fixed
    cameras with user depth, docs/fit.md), depth_gauge, root_prior (the root poses' offsets
    against the point tracks' estimate they started from, when they did)."""
    ssim_weight: float = 0.2
    lr_scale: float = 1.0
    lr_scales: dict[str, float] = field(default_factory=dict)
    """Per-group multipliers of the learning rates in this stage (group names as in
    :class:`LearningRates`, e.g. ``{"root_rot": 10}``), on top of ``lr_scale``."""


def _full_losses() -> dict[str, Weight]:
    return {
        "photo": 1.0,
        "mask": 0.2,
        "normal": [[0.0, 0.0], [0.3, 0.0], [0.5, 0.05]],
        # Over the object's half-size squared: 4 is 10 in scene units at the default scene's 0.64.
        "distortion": [[0.0, 0.0], [0.3, 0.0], [0.5, 4.0]],
        "rigidity": [[0.0, 0.3], [1.0, 0.05]],
        "bone_smooth": 0.1,
        "root_smooth": 0.1,
        "skin_smooth": 0.01,
        "flow": 0.0,
        # Acts only when the dataset carries user depth maps (ingest --depth).
        "depth": 0.1,
        # Mirror symmetry about an upright plane found from the view; off by default (docs/fit.md).
        "symmetry": 0.0,
        # Parts that hold still between two training frames stay still between them
        # (FitConfig.between_still gates it).
        "between": 100.0,
        # Holds the object's depth at the reference frame where the init put it (the fixed
        # camera's depth-scale gauge); off by default (docs/fit.md, Session 17).
        "depth_gauge": 0.0,
        # Holds the root poses' offsets near the point tracks' estimate where the fit started
        # from one (the tracks fix each frame's depth, which images alone leave free).
        "root_prior": 1.0,
    }


def _coarse_losses() -> dict[str, Weight]:
    return {"photo": 1.0, "mask": 1.0, "rigidity": 3.0, "bone_smooth": 0.3, "root_smooth": 0.3,
            "skin_smooth": 0.05, "depth": 0.1, "depth_gauge": 0.0, "root_prior": 1.0}



LOSS_NAMES = frozenset(_full_losses()) | frozenset(_coarse_losses())
"""The loss terms a stage's ``losses`` may weight."""

@dataclass
class FitConfig:
    """A whole fit: model, coarse initialisation stage, full stage, bookkeeping."""

    preset: str = "cpu-fast"
    model: ModelConfig = field(default_factory=ModelConfig)
    coarse: StageConfig = field(default_factory=lambda: StageConfig(
        steps=200, resolution=0.5, frames_per_step=2, train_refine=False, losses=_coarse_losses()))
    coarse_surfels: int = 800
    """Surfels of the coarse stage (few and large); 0 skips the initialisation stage."""
    full: StageConfig = field(default_factory=lambda: StageConfig(steps=900, losses=_full_losses()))
    lr: LearningRates = field(default_factory=LearningRates)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    depth_edge_px: int = 2
    """User depth (ingest --depth) is ignored within this many pixels of each mask's border,
    where estimated maps blend object and background."""
    rigidity_samples: int = 1024
    between_still: float = 0.01
    """Gate of the ``between`` loss. Above 0 (default): only surfels that hold still between the
    two training frames are pulled, toward the straight line between their positions there,
    with weight exp(-(d / (between_still * extent))^2) for a move d: a part that holds still
    between two frames is held still between them, a moving one is left to the time MLP
    (hiphop_parrot +0.4 dB held-out, pecking_blue_jay_rgba +0.3 dB over two seeds; docs/fit.md).
    0: every sampled surfel is pulled toward the cubic spline through its four nearest keys
    (session 7's version, which cost the parrot 0.8-1.3 dB at weight 100)."""
    knn: int = 8
    robust_frames: bool = True
    """Per-frame robust weights (down-weight frames that stay much worse than the median)."""
    robust_tolerance: float = 3.0
    """Frames up to this multiple of the median photometric loss keep full weight (hard but
    genuine frames must not be starved; only artefact frames are far above the median)."""
    backend: str = "auto"
    device: str = "auto"
    """'auto' (CUDA when available), 'cpu' or 'cuda'."""
    seed: int = 0
    all_frames: bool = False
    """Train on the held-out frames (index % 4 == 2) too."""
    log_every: int = 10
    checkpoint_every: int = 200
    eval_every: int = 0
    """Held-out PSNR every this many steps (0: only at the end)."""
    resolution_scaling: float = 2.0
    """Largest factor by which full-stage steps and surfel counts grow with the image area
    beyond 128 x 128 (detail needs surfels and steps); 1 disables. Applied once when the fit
    starts (config.json records the scaled values and 1 here). ``recon4d fit --detail`` sets
    it: 3 gave 256^2 clips of rigid, sharp subjects 1.4-1.7 dB more held-out PSNR at about
    twice the fit time, and non-rigid ones no gain (docs/fit.md, session 13)."""
    frames_scaling: float = 2.0
    """Largest factor by which full-stage steps grow with the training frames beyond
    :data:`FRAMES_REFERENCE` (one frame per step: a long clip's frames would each be visited
    too rarely); 1 disables. Applied once when the fit starts, like ``resolution_scaling``."""
    scaling_budget: float = 4.0
    """Largest product of the two factors above. The frames factor is taken whole (each frame
    must be visited) and the resolution factor gets what is left, so a long, large clip is not
    scaled twice over (wave_hello, 70 frames at 256^2: 2x for the frames leaves 2x for the
    area, its fit stays under the 15-minute budget)."""
    num_threads: int = 0
    """CPU threads for torch and the native renderer (0: torch's default). 1 is faster on an
    oversubscribed machine, where spinning thread pools fight each other."""
    max_bad_steps: int = 20
    """Consecutive non-finite steps after which the fit stops with an error."""
    time_budget_s: float = 0.0
    """Wall-clock seconds the fit may take from its start (0: no limit; ``recon4d fit
    --time-budget MINUTES``). After a few timed full-stage steps the full stage is shortened
    once, never lengthened, to the steps predicted to fit (recon4d/train/budget.py);
    config.json then records the shortened stage."""

    @property
    def total_steps(self) -> int:
        return (self.coarse.steps if self.coarse_surfels > 0 else 0) + self.full.steps


def _weight_values(weight: Weight) -> list:
    """The numbers of a loss weight: a plain weight, or every weight of a schedule."""
    if isinstance(weight, list):
        return [entry[1] if isinstance(entry, (list, tuple)) and len(entry) == 2 else entry
                for entry in weight]
    return [weight]


def config_problem(config: FitConfig) -> str | None:
    """What in ``config`` cannot work, as one line naming the setting, or None.

    Checked before a fit starts (CLI options and Python overrides alike), so a bad value stops
    the run at once instead of as a traceback minutes in or as NaN losses.
    """
    def bad_number(value, smallest: float) -> bool:
        return (isinstance(value, bool) or not isinstance(value, (int, float))
                or not math.isfinite(value) or value < smallest)

    def bad_whole(value, smallest: int) -> bool:
        return isinstance(value, bool) or not isinstance(value, int) or value < smallest

    if bad_whole(config.seed, 0):
        return f"seed must be a whole number 0 or more, got {config.seed!r}"
    if bad_whole(config.num_threads, 0):
        return f"num_threads must be 1 or more (0: torch's default), got {config.num_threads!r}"
    device = config.device
    if not (device in ("auto", "cpu", "cuda") or (isinstance(device, str) and
                                                   device.startswith("cuda:") and
                                                   device[5:].isdigit())):
        return f"device must be auto, cpu, cuda or cuda:N, got {device!r}"
    model = config.model
    if model.blend not in ("dqs", "lbs"):
        return f"model.blend must be dqs or lbs, got {model.blend!r}"
    if model.root_init not in ("identity", "tracks", "auto"):
        return f"model.root_init must be identity, tracks or auto, got {model.root_init!r}"
    if model.init_profile not in ("auto", "round", "linear"):
        return f"model.init_profile must be auto, round or linear, got {model.init_profile!r}"
    for name, smallest in (("num_surfels", 1), ("num_bones", 0), ("time_freqs", 0),
                           ("mlp_hidden", 1), ("refine_freqs", 0), ("init_grid", 8)):
        value = getattr(model, name)
        if bad_whole(value, smallest):
            return f"model.{name} must be a whole number {smallest} or more, got {value!r}"
    if bad_number(config.time_budget_s, 0.0):
        return f"time_budget_s must be a number of seconds 0 or more, got {config.time_budget_s!r}"
    for name in ("resolution_scaling", "frames_scaling", "scaling_budget"):
        if bad_number(getattr(config, name), 1.0):
            return f"{name} must be a number 1 or more, got {getattr(config, name)!r}"
    for stage_name in ("coarse", "full"):
        stage: StageConfig = getattr(config, stage_name)
        if bad_whole(stage.steps, 0):
            return f"{stage_name}.steps must be a whole number 0 or more, got {stage.steps!r}"
        if bad_number(stage.resolution, 1e-6) or stage.resolution > 1:
            return f"{stage_name}.resolution must be in (0, 1], got {stage.resolution!r}"
        if bad_whole(stage.frames_per_step, 1):
            return (f"{stage_name}.frames_per_step must be a whole number 1 or more, "
                    f"got {stage.frames_per_step!r}")
        for loss, weight in stage.losses.items():
            if loss not in LOSS_NAMES:
                return (f"{stage_name}.losses.{loss} is not a loss (known: "
                        f"{', '.join(sorted(LOSS_NAMES))})")
            if any(bad_number(value, 0.0) for value in _weight_values(weight)):
                return f"{stage_name}.losses.{loss} must be a number 0 or more, got {weight!r}"
        if bad_number(stage.lr_scale, 0.0):
            return f"{stage_name}.lr_scale must be a number 0 or more, got {stage.lr_scale!r}"
        for group, scale in stage.lr_scales.items():
            if group not in LR_GROUPS:
                return (f"{stage_name}.lr_scales.{group} is not a parameter group (known: "
                        f"{', '.join(LR_GROUPS)})")
            if bad_number(scale, 0.0):
                return f"{stage_name}.lr_scales.{group} must be a number 0 or more, got {scale!r}"
    for group in LR_GROUPS + ("means_final", "final_ratio"):
        if bad_number(getattr(config.lr, group), 0.0):
            return f"lr.{group} must be a number 0 or more, got {getattr(config.lr, group)!r}"
    # Cadences: a 0 here would divide by zero some steps into the fit.
    for name in ("log_every", "checkpoint_every", "knn", "max_bad_steps"):
        if bad_whole(getattr(config, name), 1):
            return f"{name} must be a whole number 1 or more, got {getattr(config, name)!r}"
    if bad_whole(config.eval_every, 0):
        return f"eval_every must be a whole number 0 or more (0: off), got {config.eval_every!r}"
    if bad_whole(config.strategy.every, 1):
        return f"strategy.every must be a whole number 1 or more, got {config.strategy.every!r}"
    return None


def preset(name: str) -> FitConfig:
    """The named preset (see :data:`PRESETS`)."""
    if name == "cpu-fast":
        return FitConfig(preset=name)
    if name == "gpu-quality":
        return FitConfig(
            preset=name,
            model=ModelConfig(num_surfels=40000, sh_degree=1, refine_freqs=4),
            coarse=StageConfig(steps=500, resolution=0.5, frames_per_step=4, train_refine=False,
                               losses=_coarse_losses()),
            coarse_surfels=3000,
            full=StageConfig(steps=5000, frames_per_step=4, losses=_full_losses()),
            strategy=StrategyConfig(max_surfels=150000, every=200),
            checkpoint_every=1000, log_every=50)
    if name == "test":
        return FitConfig(
            preset=name,
            model=ModelConfig(num_surfels=300, num_bones=4, time_freqs=4, mlp_hidden=16,
                              refine_freqs=2, init_grid=24),
            coarse=StageConfig(steps=2, resolution=0.5, frames_per_step=1, train_refine=False,
                               losses=_coarse_losses()),
            coarse_surfels=100,
            full=StageConfig(steps=4, losses=_full_losses()),
            strategy=StrategyConfig(start=0.0, every=2, max_surfels=600),
            rigidity_samples=64, log_every=1, checkpoint_every=2)
    raise ValueError(f"preset: must be one of {', '.join(PRESETS)}, got {name!r}")


def scale_for_resolution(config: FitConfig, width: int, height: int,
                         by_frames: float = 1.0) -> FitConfig:
    """``config`` with full-stage steps and surfel budgets grown by
    clamp(width * height / 128^2, 1, min(resolution_scaling, scaling_budget / by_frames)),
    and resolution_scaling set to 1. ``by_frames`` is what :func:`frames_factor` gives the
    same clip (1 when the clip is not longer than the reference)."""
    room = config.scaling_budget / max(by_frames, 1.0)
    factor = min(max(width * height / 128 ** 2, 1.0), max(config.resolution_scaling, 1.0),
                 max(room, 1.0))
    if factor == 1.0:
        return dataclasses.replace(config, resolution_scaling=1.0)
    return dataclasses.replace(
        config, resolution_scaling=1.0,
        full=dataclasses.replace(config.full, steps=round(config.full.steps * factor)),
        model=dataclasses.replace(config.model, num_surfels=round(config.model.num_surfels * factor)),
        strategy=dataclasses.replace(config.strategy,
                                     max_surfels=round(config.strategy.max_surfels * factor)))


FRAMES_REFERENCE = 24
"""Training frames the presets' step counts were tuned for (a 32-frame clip's 24)."""


def scale_for_frames(config: FitConfig, num_frames: int) -> FitConfig:
    """``config`` with full-stage steps grown by clamp(training frames / FRAMES_REFERENCE, 1,
    frames_scaling), and frames_scaling set to 1 (wave_hello, 53 training frames: 1800 -> 3600
    steps, held-out 27.3 -> 28.0 dB)."""
    factor = frames_factor(config, num_frames)
    return dataclasses.replace(
        config, frames_scaling=1.0,
        full=dataclasses.replace(config.full, steps=round(config.full.steps * factor)))


def frames_factor(config: FitConfig, num_frames: int) -> float:
    """clamp(training frames / FRAMES_REFERENCE, 1, frames_scaling) for a clip of
    ``num_frames`` frames (1 once the config has been scaled: frames_scaling is then 1)."""
    from recon4d.data.dataset import train_frame_indices

    train = len(train_frame_indices(num_frames, config.all_frames))
    return min(max(train / FRAMES_REFERENCE, 1.0), max(config.frames_scaling, 1.0))


def auto_time_freqs(num_frames: int) -> int:
    """max(8, ceil(frames / 3)): the fastest representable motion then has a period of about
    6 frames whatever the clip's length (8 frequencies over 70 frames could not follow a waving
    hand: wave_hello held-out 26.8 dB with 8, 27.3 dB with 24), and never fewer than the 8
    that short clips were tuned with."""
    return max(8, -(-int(num_frames) // 3))


def resolve_for_dataset(config: FitConfig, width: int, height: int, num_frames: int) -> FitConfig:
    """``config`` with the settings that depend on the dataset fixed: budgets scaled for the
    resolution (:func:`scale_for_resolution`) and the clip length (:func:`scale_for_frames`),
    and ``model.time_freqs`` 0 replaced by :func:`auto_time_freqs`. config.json records the
    result, which resolves to itself (a resumed run does not grow again)."""
    by_frames = frames_factor(config, num_frames)
    config = scale_for_frames(scale_for_resolution(config, width, height, by_frames), num_frames)
    if config.model.time_freqs <= 0:
        config = dataclasses.replace(config, model=dataclasses.replace(
            config.model, time_freqs=auto_time_freqs(num_frames)))
    return config


def default_preset_name() -> str:
    """gpu-quality with a CUDA GPU, cpu-fast otherwise."""
    import torch

    return "gpu-quality" if torch.cuda.is_available() else "cpu-fast"


def config_from_dict(data: dict[str, Any]) -> FitConfig:
    """Rebuild a FitConfig from its JSON form (config.json's ``config``); unknown keys are an
    error naming the key, missing keys take the defaults of the recorded preset. A recorded
    dict setting (a stage's losses, lr_scales) is taken whole, not merged into the preset's:
    a fit run without some loss resumes without it."""
    base = preset(data.get("preset", "cpu-fast")) if data.get("preset") in PRESETS else FitConfig()
    return _merge(base, data, "config", whole_dicts=True)


def _merge(obj: Any, data: dict[str, Any], where: str, whole_dicts: bool = False) -> Any:
    names = {f.name: f for f in dataclasses.fields(obj)}
    updates = {}
    for key, value in data.items():
        if key not in names:
            raise ValueError(f"{where}.{key}: unknown setting")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current) and isinstance(value, dict):
            updates[key] = _merge(current, value, f"{where}.{key}", whole_dicts)
        elif (dataclasses.is_dataclass(current) or isinstance(current, dict)) and not isinstance(
                value, dict):
            # A group of settings replaced by a plain value failed later on its attributes.
            raise ValueError(f"{where}.{key} must be an object of settings, got {value!r}")
        elif isinstance(current, dict) and isinstance(value, dict) and not whole_dicts:
            updates[key] = {**current, **value}  # an override of one loss weight of a stage
        else:
            updates[key] = value
    return dataclasses.replace(obj, **updates)


def apply_overrides(config: FitConfig, overrides: dict[str, Any]) -> FitConfig:
    """Set dotted keys, e.g. ``{"full.steps": 200, "model.blend": "lbs"}`` (ablations, CLI)."""
    data: dict[str, Any] = {}
    for dotted, value in overrides.items():
        node = data
        parts = dotted.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return _merge(config, data, "config")


def get_setting(config: FitConfig, dotted: str) -> Any:
    """The value at a dotted key (``"model.blend"``), or None where the key names nothing."""
    node: Any = config
    for part in dotted.split("."):
        if isinstance(node, dict):
            node = node.get(part)
        else:
            node = getattr(node, part, None)
        if node is None:
            return None
    return node
