"""Run-level evaluation (docs/design.md §6): ``evaluate_run(run_dir, gt_dir=None) -> dict``.

What it measures:

- held-out frames (index % 4 == 2) rendered from the fitted input cameras over white, against
  the input frame put over white with its mask (its own background replaced,
  ``metrics.replace_background``): PSNR, SSIM, mask IoU;
- with ground truth (a synthetic scene, ``gt_dir`` or ``RUN_DIR/dataset/gt``): novel-view
  PSNR/SSIM from the held-out cameras; per-frame meshes (``extract_frame_mesh``) against the
  ground-truth meshes: Chamfer-L1 / bbox diagonal, normal consistency, F-score at 1%; the
  fixed-topology animated mesh (canonical mesh + ``animated_vertices``): its Chamfer-L1 at the
  same frames and its temporal jitter (with the ground truth's own jitter for reference).

The fitted world may drift from the ground-truth world when cameras are refined; comparisons
are made relative to the input camera of the same frame (``T_f = inv(V_gt_f) @ V_fit_f`` maps
fitted world to ground-truth world), the only frame a monocular fit can observe.

Results go to ``RUN_DIR/metrics.json`` under the key ``"eval"`` (per-frame lists and means,
``eval.summary`` holds the headline numbers) and plots to ``RUN_DIR/renders/eval_metrics.png``
(metrics over time) and ``RUN_DIR/renders/eval_heldout.png`` (ground truth | render).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from recon4d.errors import UserError

from . import geometry, metrics

WHITE = (1.0, 1.0, 1.0)

RenderFn = Callable[[Any, float, Any], tuple[np.ndarray, np.ndarray]]
"""(scene, t, Cameras) -> (rgb (C, H, W, 3) over white, alpha (C, H, W)), numpy float."""


@dataclass
class EvalOptions:
    """Knobs of :func:`evaluate_run` (defaults = the published protocol)."""

    backend: str = "auto"
    """Renderer backend for held-out and novel views."""
    geometry_frames: str = "test"
    """Frames for mesh metrics: "test" (index % 4 == 2), "all", or "none"."""
    samples: int = 50_000
    """Surface samples per mesh for Chamfer / normal consistency / F-score."""
    fscore_threshold: float = 0.01
    """F-score distance as a fraction of the ground-truth bbox diagonal."""
    mesh_kwargs: dict = field(default_factory=dict)
    """Passed to ``extract_frame_mesh`` (resolution, views, image_size, ...)."""
    animated: bool = True
    """Also evaluate the fixed-topology animated mesh (Chamfer and jitter)."""
    animated_faces: int = 20000
    """Face budget of the canonical mesh of the animated mesh."""
    plot: bool = True
    write: bool = True
    """Merge the results into metrics.json and write the PNGs."""


def default_render_fn(backend: str = "auto") -> RenderFn:
    """Render with recon4d's surfel renderer over a white background."""

    def render_fn(scene, t, cameras):
        import torch

        from recon4d.render import render

        with torch.no_grad():
            surfels = scene.surfels_at(float(t))
            cams = cameras.to(device=surfels.device, dtype=surfels.dtype)
            background = torch.ones(3, dtype=surfels.dtype, device=surfels.device)
            out = render(surfels, cams, backend=backend, background=background)
        # Clipped like an image file (and the fit's own held-out PSNR): over-bright splats
        # (up to 1.09 seen) would be scored against a target that cannot exceed 1.
        return out.rgb.clamp(0, 1).cpu().double().numpy(), out.alpha.cpu().double().numpy()

    return render_fn


def default_frame_mesh_fn(**kwargs) -> Callable[[Any, float], Any]:
    """``extract_frame_mesh(scene, t, **kwargs)`` from the exporter (a world-space Trimesh)."""
    from recon4d.export.mesh_seq import extract_frame_mesh

    return lambda scene, t: extract_frame_mesh(scene, t, **kwargs)


AnimatedFn = Callable[[Any, list[float]], tuple[np.ndarray, np.ndarray]]
"""(scene, times) -> (vertices (F, V, 3) world, faces (M, 3)) of a fixed-topology mesh."""


def default_animated_fn(faces: int = 20000, **mesh_kwargs) -> AnimatedFn:
    """(scene, times) -> (vertices (F, V, 3) world, faces (M, 3)) of the fixed-topology mesh:
    the exporter's canonical mesh (fused with ``mesh_kwargs`` settings) pushed through the warp
    by ``animated_vertices``."""
    from recon4d.export.animated_mesh import animated_vertices, canonical_mesh
    from recon4d.export.mesh_seq import FusionSettings

    settings = FusionSettings(**mesh_kwargs)

    def fn(scene, times):
        mesh = canonical_mesh(scene, faces=faces, settings=settings)
        verts = animated_vertices(scene, np.asarray(mesh.vertices), times)
        return np.asarray(verts), np.asarray(mesh.faces)

    return fn


# --------------------------------------------------------------------------------------------
def _find_dataset(run) -> Path:
    from recon4d.data.dataset import is_dataset_dir

    if is_dataset_dir(run.dataset):
        return run.dataset
    config = run.read_config()
    for key in ("dataset", "dataset_dir", "input", "input_or_dataset"):
        value = config.get(key)
        if isinstance(value, str) and is_dataset_dir(value):
            return Path(value)
    raise UserError(f"run '{run.root}' has no dataset (no {run.dataset}): fit it again with "
                    "'recon4d fit', which copies the dataset into the run")


def _align(gt_viewmat: np.ndarray, fit_viewmat: np.ndarray) -> np.ndarray:
    """(4, 4) fitted world -> ground-truth world, agreeing on this frame's input camera."""
    return np.linalg.inv(gt_viewmat) @ fit_viewmat


def _transform(points: np.ndarray, mat: np.ndarray) -> np.ndarray:
    return np.asarray(points, np.float64) @ mat[:3, :3].T + mat[:3, 3]


def _mean(values) -> float | None:
    """Mean of per-frame figures, or None when there are none or any frame failed (None or
    non-finite: an empty mesh, a NaN render). Leaving failed frames out would make the mean
    look better the more frames fail; callers that skip frames on purpose (the interpolation
    baseline's, which lack a neighbour) pass only the frames that count."""
    values = list(values)
    if not values or any(v is None or not np.isfinite(v) for v in values):
        return None
    return float(np.mean(values))


def _failed(frames, values) -> list[int]:
    """The frames whose figure is None or non-finite."""
    return [int(f) for f, v in zip(frames, values) if v is None or not np.isfinite(v)]


def _finite(value):
    """JSON-safe: inf/nan -> None, numpy scalars -> float."""
    if value is None:
        return None
    value = float(value)
    return value if np.isfinite(value) else None


def evaluate_run(run_dir: str | Path, gt_dir: str | Path | None = None, *,
                 options: EvalOptions | None = None, scene=None,
                 render_fn: RenderFn | None = None,
                 frame_mesh_fn: Callable[[Any, float], Any] | None = None,
                 animated_fn: AnimatedFn | None = None,
                 ) -> dict:
    """Evaluate a fitted run; returns the ``eval`` dict also merged into metrics.json.

    Args:
        run_dir: a ``recon4d fit`` run directory.
        gt_dir: a synthetic scene dir (or its gt/ folder); default: the run's dataset's gt/.
        options: see :class:`EvalOptions`.
        scene: a DynamicScene to evaluate instead of ``load_run(run_dir)`` (tests, live fits).
        render_fn, frame_mesh_fn, animated_fn: replacements for the renderer, the per-frame mesh
            extractor and the animated-mesh builder (defaults: recon4d's own).
    """
    from recon4d.data.dataset import load_dataset
    from recon4d.rundir import RunDir
    from recon4d.utils.console import info, track, warn

    opts = options or EvalOptions()
    start = time.monotonic()
    run = RunDir(run_dir).require()
    data = load_dataset(_find_dataset(run))
    if scene is None:
        from recon4d.model import load_run

        scene = load_run(run.root, device="cpu")
    render_fn = render_fn or default_render_fn(opts.backend)
    gt = None
    if gt_dir is not None or data.gt_dir is not None:
        from recon4d.scenes import load_ground_truth

        gt = load_ground_truth(gt_dir if gt_dir is not None else data.root)
        if gt.num_frames != data.num_frames:
            raise UserError(f"ground truth '{gt.root}' has {gt.num_frames} frames but the run's "
                            f"dataset has {data.num_frames}: pass the scene the run was fitted on")
        if len(gt.viewmats) != gt.num_frames:
            raise UserError(f"ground truth '{gt.root}' has no input cameras (no manifest.json "
                            "beside its gt/ folder): pass the scene folder itself, not a copy "
                            "of gt/")

    times = [float(t) for t in scene.frame_times.detach().cpu().numpy()]
    if len(times) != data.num_frames:
        raise UserError(f"the fitted model has {len(times)} frames but its dataset has "
                        f"{data.num_frames}: fit the run again")
    cams = scene.input_cameras()
    fit_viewmats = cams.viewmats.detach().cpu().double().numpy()
    if (cams.width, cams.height) != (data.width, data.height):
        raise UserError(f"the fitted cameras are {cams.width}x{cams.height} but the dataset is "
                        f"{data.width}x{data.height}: fit the run again")
    result: dict[str, Any] = {"protocol": {
        "heldout_rule": "index % 4 == 2", "background": [1.0, 1.0, 1.0],
        "ssim": "gaussian window 11x11, sigma 1.5, data_range 1",
        "chamfer": "L1 (mean Euclidean) between area-uniform surface samples, / gt bbox diagonal",
        "fscore_threshold": opts.fscore_threshold, "samples": opts.samples,
        "alignment": "fitted world mapped to gt world through each frame's input camera"}}

    # Held-out frames --------------------------------------------------------------------
    test = data.test_indices()
    held = {"frames": test, "times": [times[i] for i in test], "psnr": [], "ssim": [], "mask_iou": [],
            "interp_psnr": []}
    pairs = []
    for i in track(test, description="eval: held-out frames"):
        rgb, alpha = render_fn(scene, times[i], cams[i])
        target = metrics.replace_background(data.frames[i], data.masks[i], data.background)
        held["psnr"].append(metrics.psnr(rgb[0], target))
        held["ssim"].append(metrics.ssim(rgb[0], target))
        held["mask_iou"].append(metrics.mask_iou(alpha[0], data.masks[i]))
        held["interp_psnr"].append(_interpolation_baseline(data, i, target))
        pairs.append((target, rgb[0]))
    for key in ("psnr", "ssim", "mask_iou"):
        held[f"{key}_mean"] = _mean(held[key])
    held["failed_frames"] = _failed(test, held["psnr"])
    if held["failed_frames"]:
        warn(f"held-out frames {held['failed_frames']} rendered non-finite values: the held-out "
             "means are left empty (the model holds NaN: fit it again)")
    # The baseline and the fit compared on the same frames (those with two neighbours).
    both = [k for k, v in enumerate(held["interp_psnr"]) if v is not None]
    held["interp_psnr_mean"] = _mean([held["interp_psnr"][k] for k in both])
    held["psnr_mean_interp_frames"] = _mean([held["psnr"][k] for k in both])
    if _trained_on_every_frame(run):
        held["trained_on"] = True
        warn("this fit trained on every frame (--all-frames): its 'held-out' frames were "
             "training frames, so those figures say how well it fits, not how it generalises")
    result["heldout"] = held

    if gt is not None:
        result["gt_dir"] = str(gt.root)
        result["cameras"] = _camera_drift(gt, fit_viewmats, cams.Ks.detach().cpu().double().numpy())
        result["novel_view"] = _novel_views(gt, scene, times, fit_viewmats, render_fn, track)
        ratio = result["cameras"].get("focal_ratio_mean", 1.0)
        if abs(ratio - 1.0) > 0.01:
            # Diagnostic: the same views with the fit's focal factor, i.e. how consistent the
            # fitted shape is across views up to the focal/depth ambiguity of one camera.
            result["novel_view_fitted_focal"] = _novel_views(gt, scene, times, fit_viewmats, render_fn,
                                                             track, focal_ratio=ratio)
        geo_frames = {"test": test, "all": list(range(data.num_frames)), "none": []}.get(opts.geometry_frames)
        if geo_frames is None:
            raise UserError(f"geometry frames '{opts.geometry_frames}' is not one of test, all, none")
        result["geometry"] = _geometry(gt, scene, times, fit_viewmats, geo_frames, opts,
                                       frame_mesh_fn, track, warn)
        if opts.animated:
            result.update(_animated(gt, scene, times, fit_viewmats, geo_frames, opts, animated_fn, warn))
    elif opts.animated:
        result.update(_animated(None, scene, times, fit_viewmats, [], opts, animated_fn, warn))

    result["summary"] = _summary(result)
    result["seconds"] = round(time.monotonic() - start, 2)
    if opts.write:
        run.renders.mkdir(parents=True, exist_ok=True)
        if opts.plot:
            from .plot import plot_eval, save_pairs

            plot = plot_eval(result, run.renders / "eval_metrics.png")
            sheet = save_pairs(pairs, run.renders / "eval_heldout.png")
            result["plot"] = str(plot.relative_to(run.root))
            result["heldout_images"] = str(sheet.relative_to(run.root))
        run.update_metrics({"eval": _jsonable(result)})
        info(f"eval: {', '.join(f'{k} {v:.4g}' for k, v in result['summary'].items() if v is not None)}")
    return _jsonable(result)


def _trained_on_every_frame(run) -> bool:
    """Whether the run's recorded fit config has ``all_frames`` (False when unreadable)."""
    try:
        return bool(run.read_config().get("all_frames", False))
    except (UserError, OSError, ValueError):  # an old or foreign config.json: the protocol's rule
        return False


def _interpolation_baseline(data, index: int, target: np.ndarray) -> float | None:
    """PSNR of a held-out frame predicted from its two neighbouring input frames alone (DIS-flow
    midpoint, :func:`recon4d.data.flow.midpoint_frame`), or None at the clip's ends.

    Why: how far a held-out frame follows from its neighbours sets what any method can
    interpolate there; a generated clip's one-frame jerks make some frames unpredictable.
    """
    from recon4d.data.flow import midpoint_frame

    if index < 1 or index + 1 >= data.num_frames:
        return None
    before, after = (metrics.replace_background(data.frames[k], data.masks[k], data.background)
                     for k in (index - 1, index + 1))
    return metrics.psnr(midpoint_frame(before, after), target)


def _camera_drift(gt, fit_viewmats: np.ndarray, fit_Ks: np.ndarray) -> dict:
    """How far the fitted input cameras moved from the ground truth's (diagnostics).

    A focal ratio away from 1 changes the fitted world by more than the rigid alignment can
    undo (monocular depth and focal trade off), which shows up in novel views and geometry.
    """
    if len(gt.viewmats) == 0:
        return {}
    rel = np.stack([_align(g, f) for g, f in zip(gt.viewmats, fit_viewmats)])
    cos = np.clip((np.trace(rel[:, :3, :3], axis1=1, axis2=2) - 1) / 2, -1, 1)
    focal = fit_Ks[:, 0, 0] / gt.Ks[: len(fit_Ks), 0, 0]
    return {"focal_ratio": [float(v) for v in focal],
            "focal_ratio_mean": float(focal.mean()),
            "rotation_drift_deg_max": float(np.degrees(np.arccos(cos)).max()),
            "translation_drift_max": float(np.linalg.norm(rel[:, :3, 3], axis=1).max())}


def _novel_views(gt, scene, times, fit_viewmats, render_fn, track, focal_ratio: float = 1.0) -> dict:
    import torch

    from recon4d.render.types import Cameras

    K = len(gt.novel_viewmats)
    Ks = gt.novel_Ks.copy()
    Ks[:, :2, :2] *= focal_ratio
    out = {"cameras": K, "focal_ratio": focal_ratio, "frames": [int(f) for f in gt.novel_frames],
           "psnr": [], "ssim": []}
    for j, f in enumerate(track(list(gt.novel_frames), description="eval: novel views")):
        f = int(f)
        align = _align(gt.viewmats[f], fit_viewmats[f]) if len(gt.viewmats) else np.eye(4)
        viewmats = np.stack([vm @ align for vm in gt.novel_viewmats])
        cams = Cameras(torch.as_tensor(viewmats, dtype=torch.float32),
                       torch.as_tensor(Ks, dtype=torch.float32), gt.width, gt.height)
        rgb, _ = render_fn(scene, times[f], cams)
        row_p, row_s = [], []
        for c in range(K):
            # The scene's renderer drew these over white already.
            target = metrics.replace_background(gt.novel_images[c, j], gt.novel_masks[c, j],
                                                WHITE)
            row_p.append(metrics.psnr(rgb[c], target))
            row_s.append(metrics.ssim(rgb[c], target))
        out["psnr"].append(row_p)
        out["ssim"].append(row_s)
    out["psnr_per_frame"] = [float(np.mean(r)) for r in out["psnr"]]
    out["ssim_per_frame"] = [float(np.mean(r)) for r in out["ssim"]]
    out["psnr_mean"] = _mean(out["psnr_per_frame"])
    out["ssim_mean"] = _mean(out["ssim_per_frame"])
    return out


def _compare(verts, faces, gt, f, opts, about_camera: bool = False) -> dict:
    """compare_meshes at frame f; ``about_camera`` adds the depth-scaled Chamfer about frame
    f's input camera."""
    diag = gt.frame_bbox_diagonal(f)
    viewmat = gt.viewmats[f]
    centre = -viewmat[:3, :3].T @ viewmat[:3, 3] if about_camera else None
    return geometry.compare_meshes(verts, faces, gt.vertices[f], gt.faces, diag=diag,
                                   samples=opts.samples, threshold=opts.fscore_threshold, seed=f,
                                   camera_centre=centre)


def _geometry(gt, scene, times, fit_viewmats, frames, opts, frame_mesh_fn, track, warn) -> dict:
    keys = ("chamfer_l1", "accuracy", "completeness", "normal_consistency", "precision", "recall", "fscore")
    out: dict[str, Any] = {"frames": list(frames), **{k: [] for k in keys}, "faces": []}
    if not frames:
        return out
    # One fixed input camera leaves the depth-scale gauge open: also score the shape with it
    # taken out (the scaling about the camera that fits best). Checked here rather than with
    # model.init.cameras_fixed, which would bring torch into the evaluator's import.
    fixed_camera = len(gt.viewmats) > 0 and bool(np.allclose(gt.viewmats, gt.viewmats[:1],
                                                             atol=1e-6))
    if fixed_camera:
        out.update(chamfer_l1_depth_scaled=[], depth_scale=[])
    if frame_mesh_fn is None:
        try:
            frame_mesh_fn = default_frame_mesh_fn(**opts.mesh_kwargs)
        except ImportError as exc:
            warn(f"per-frame mesh metrics skipped: the mesh exporter is unavailable ({exc})")
            out["skipped"] = f"mesh exporter unavailable: {exc}"
            return out
    for f in track(frames, description="eval: per-frame meshes"):
        mesh = frame_mesh_fn(scene, times[f])
        verts = _transform(mesh.vertices, _align(gt.viewmats[f], fit_viewmats[f]))
        m = _compare(verts, np.asarray(mesh.faces), gt, f, opts, about_camera=fixed_camera)
        for k in keys:
            out[k].append(_finite(m[k]))
        out["faces"].append(int(len(mesh.faces)))
        if fixed_camera:
            out["chamfer_l1_depth_scaled"].append(_finite(m["chamfer_l1_depth_scaled"]))
            out["depth_scale"].append(m["depth_scale"])
    out["failed_frames"] = _failed(frames, out["chamfer_l1"])
    if out["failed_frames"]:
        # Every mean, not only Chamfer's: an empty mesh's F-score (0) is finite but no figure.
        warn(f"the per-frame meshes of frames {out['failed_frames']} are empty or not finite: "
             "the geometry means are left empty rather than taken over the other frames")
    means = list(keys) + (["chamfer_l1_depth_scaled", "depth_scale"] if fixed_camera else [])
    for k in means:
        out[f"{k}_mean"] = None if out["failed_frames"] else _mean(out[k])
    return out


def _animated(gt, scene, times, fit_viewmats, frames, opts, animated_fn, warn) -> dict:
    if animated_fn is None:
        try:
            animated_fn = default_animated_fn(opts.animated_faces, **opts.mesh_kwargs)
        except ImportError as exc:
            warn(f"animated-mesh metrics skipped: the exporter is unavailable ({exc})")
            return {"temporal": {"skipped": f"exporter unavailable: {exc}"}}
    verts, faces = animated_fn(scene, times)
    verts = np.asarray(verts, np.float64)
    temporal: dict[str, Any] = {"vertices": int(verts.shape[1]), "faces": int(len(faces))}
    if gt is not None:
        aligned = np.stack([_transform(verts[f], _align(gt.viewmats[f], fit_viewmats[f]))
                            for f in range(len(verts))])
        diag = gt.bbox_diagonal
    else:
        aligned = verts
        diag = geometry.bbox_diagonal(verts)
    out: dict[str, Any] = {}
    if len(aligned) >= 3 and diag > 0:
        jit = geometry.temporal_jitter(aligned, diag, faces)
        temporal.update(jitter=jit["mean"], jitter_per_frame=jit["per_frame"],
                        velocity_mean=jit["velocity_mean"])
        if gt is not None:
            ref = geometry.temporal_jitter(gt.vertices, diag, gt.faces)
            temporal.update(jitter_gt=ref["mean"], jitter_gt_per_frame=ref["per_frame"])
    out["temporal"] = temporal
    if gt is not None and frames:
        cham = {"frames": list(frames), "chamfer_l1": [], "normal_consistency": [], "fscore": []}
        for f in frames:
            m = _compare(aligned[f], faces, gt, f, opts)
            for k in ("chamfer_l1", "normal_consistency", "fscore"):
                cham[k].append(_finite(m[k]))
        for k in ("chamfer_l1", "normal_consistency", "fscore"):
            cham[f"{k}_mean"] = _mean(cham[k])
        out["animated"] = cham
    return out


def _summary(result: dict) -> dict:
    s = {"psnr_heldout": result["heldout"].get("psnr_mean"),
         "ssim_heldout": result["heldout"].get("ssim_mean"),
         "mask_iou_heldout": result["heldout"].get("mask_iou_mean"),
         "psnr_heldout_interp_baseline": result["heldout"].get("interp_psnr_mean")}
    if "novel_view" in result:
        s["psnr_novel"] = result["novel_view"].get("psnr_mean")
        s["ssim_novel"] = result["novel_view"].get("ssim_mean")
    if "novel_view_fitted_focal" in result:
        s["psnr_novel_fitted_focal"] = result["novel_view_fitted_focal"].get("psnr_mean")
    if result.get("cameras", {}).get("focal_ratio_mean") is not None:
        s["focal_ratio"] = result["cameras"]["focal_ratio_mean"]
    geo = result.get("geometry", {})
    for k in ("chamfer_l1", "normal_consistency", "fscore"):
        if geo.get(f"{k}_mean") is not None:
            s[k] = geo[f"{k}_mean"]
    for k in ("chamfer_l1_depth_scaled", "depth_scale"):
        if geo.get(f"{k}_mean") is not None:
            s[k] = geo[f"{k}_mean"]
    if result.get("animated", {}).get("chamfer_l1_mean") is not None:
        s["chamfer_l1_animated"] = result["animated"]["chamfer_l1_mean"]
    temporal = result.get("temporal", {})
    for k in ("jitter", "jitter_gt"):
        if temporal.get(k) is not None:
            s[k] = temporal[k]
    return s


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return _finite(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    return obj
