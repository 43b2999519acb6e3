"""Run-level evaluation on a synthetic scene with a test double of a fitted model.

The double implements the DynamicScene protocol with surfels sampled on the ground-truth mesh of
the nearest frame (rendered by recon4d's renderer), optionally displaced by a known rigid
transform, so the expected metrics are known: exact geometry -> Chamfer 0 and F-score 1; a
shift -> a bounded Chamfer and a lower PSNR; a rigid change of world frame applied to cameras
and scene together -> the same figures (the evaluation aligns through the input cameras).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from recon4d.cli.main import main
from recon4d.errors import UserError
from recon4d.data.dataset import load_dataset
from recon4d.eval import evaluate_run
from recon4d.eval.evaluate import EvalOptions
from recon4d.render.types import Cameras, Surfels
from recon4d.rundir import RunDir
from recon4d.scenes import load_ground_truth, make_scene

SIZE, FRAMES = 96, 8


def _rot_to_quat_wxyz(rot: np.ndarray) -> np.ndarray:
    """(N, 3, 3) rotations -> (N, 4) unit quaternions wxyz (Shepperd's method, branch-free
    enough for tests: pick the largest diagonal term per row)."""
    m = rot
    tr = np.trace(m, axis1=1, axis2=2)
    cands = np.stack([
        np.stack([1 + tr, m[:, 2, 1] - m[:, 1, 2], m[:, 0, 2] - m[:, 2, 0], m[:, 1, 0] - m[:, 0, 1]], 1),
        np.stack([m[:, 2, 1] - m[:, 1, 2], 1 + 2 * m[:, 0, 0] - tr, m[:, 0, 1] + m[:, 1, 0], m[:, 0, 2] + m[:, 2, 0]], 1),
        np.stack([m[:, 0, 2] - m[:, 2, 0], m[:, 0, 1] + m[:, 1, 0], 1 + 2 * m[:, 1, 1] - tr, m[:, 1, 2] + m[:, 2, 1]], 1),
        np.stack([m[:, 1, 0] - m[:, 0, 1], m[:, 0, 2] + m[:, 2, 0], m[:, 1, 2] + m[:, 2, 1], 1 + 2 * m[:, 2, 2] - tr], 1),
    ], 1)
    pick = np.argmax(np.stack([tr, m[:, 0, 0], m[:, 1, 1], m[:, 2, 2]], 1), axis=1)
    q = cands[np.arange(len(m)), pick]
    return q / np.linalg.norm(q, axis=1, keepdims=True)


class MeshSurfelScene:
    """A DynamicScene double: surfels on the ground-truth mesh.

    ``displace`` (4x4) moves the geometry only (a wrong reconstruction); ``world`` (4x4) is a
    change of world frame applied to geometry and cameras alike (nothing observable changes).
    """

    def __init__(self, gt, viewmats, Ks, size, world=np.eye(4), displace=np.eye(4), count=1000,
                 seed=0):
        self.gt = gt
        self.world = np.asarray(world, np.float64) @ np.asarray(displace, np.float64)
        rng = np.random.default_rng(seed)
        f = gt.faces
        area = np.linalg.norm(np.cross(*(gt.vertices[0][f[:, k]] - gt.vertices[0][f[:, 0]]
                                         for k in (1, 2))), axis=1)
        self.tri = rng.choice(len(f), size=count, p=area / area.sum())
        r1, r2 = rng.random(count), rng.random(count)
        flip = r1 + r2 > 1
        r1[flip], r2[flip] = 1 - r1[flip], 1 - r2[flip]
        self.bary = np.stack([1 - r1 - r2, r1, r2], 1)
        # Disc size ~0.6 x the sample spacing: overlapping discs, not a blur of huge ones.
        self.scale = float(np.sqrt(area.sum() / 2 / count)) * 0.6
        self.colors = (gt.vertex_colors[f[self.tri]] * self.bary[..., None]).sum(1)
        # Cameras expressed in the moved world: x_cam = V x_gt = V W^-1 x_world.
        self.viewmats = np.asarray(viewmats) @ np.linalg.inv(world)
        self.Ks, self.size = np.asarray(Ks), size

    # DynamicScene ------------------------------------------------------------------------
    num_bones = 0

    @property
    def frame_times(self):
        return torch.as_tensor(self.gt.times, dtype=torch.float32)

    def input_cameras(self):
        return Cameras(torch.as_tensor(self.viewmats, dtype=torch.float32),
                       torch.as_tensor(self.Ks, dtype=torch.float32), self.size, self.size)

    def frame(self, t: float) -> int:
        return int(np.argmin(np.abs(self.gt.times - t)))

    def world_vertices(self, f: int) -> np.ndarray:
        v = self.gt.vertices[f].astype(np.float64)
        return v @ self.world[:3, :3].T + self.world[:3, 3]

    def surfels_at(self, t: float) -> Surfels:
        v = self.world_vertices(self.frame(t))
        tri = v[self.gt.faces[self.tri]]
        means = (tri * self.bary[..., None]).sum(1)
        e1 = tri[:, 1] - tri[:, 0]
        n = np.cross(e1, tri[:, 2] - tri[:, 0])
        n /= np.linalg.norm(n, axis=1, keepdims=True)
        u = e1 / np.linalg.norm(e1, axis=1, keepdims=True)
        rot = np.stack([u, np.cross(n, u), n], axis=2)
        as_t = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32)  # noqa: E731
        return Surfels.from_rgb(as_t(means), as_t(_rot_to_quat_wxyz(rot)),
                                torch.full((len(means), 2), self.scale), torch.full((len(means),), 0.98),
                                as_t(self.colors))

    def canonical_surfels(self) -> Surfels:
        return self.surfels_at(0.0)

    def warp_points(self, points, t):
        return points

    def skinning_weights(self, points):
        return torch.zeros((len(points), 0))

    def bone_transforms(self, t):
        return torch.zeros((0, 4, 4))

    def bone_centers(self):
        return torch.zeros((0, 3))

    # Injected exporter functions (exact meshes of the double) -----------------------------
    def frame_mesh(self, scene, t):
        import trimesh

        return trimesh.Trimesh(self.world_vertices(self.frame(t)), self.gt.faces, process=False)

    def animated(self, scene, times):
        return np.stack([self.world_vertices(self.frame(t)) for t in times]), self.gt.faces


@pytest.fixture(scope="module")
def scene_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    scene_dir = make_scene("default", root / "scene", seed=0, resolution=SIZE, frames=FRAMES)
    run = RunDir(root / "run").create()
    run.write_config({"preset": "test-double"})
    shutil.copytree(scene_dir, run.dataset)
    return scene_dir, run


def _double(scene_dir, world=np.eye(4), displace=np.eye(4)):
    gt = load_ground_truth(scene_dir)
    data = load_dataset(scene_dir)
    return MeshSurfelScene(gt, data.cameras.viewmats, data.cameras.Ks, SIZE, world=world,
                           displace=displace)


def _evaluate(run, double, **kwargs):
    return evaluate_run(run.root, options=EvalOptions(samples=20_000, **kwargs), scene=double,
                        frame_mesh_fn=double.frame_mesh, animated_fn=double.animated)


def _shift(offset):
    w = np.eye(4)
    w[:3, 3] = offset
    return w


@pytest.fixture(scope="module")
def exact_result(scene_run):
    scene_dir, run = scene_run
    return _evaluate(run, _double(scene_dir))


def test_exact_geometry_scores_perfectly(scene_run, exact_result):
    r = exact_result
    assert r["heldout"]["frames"] == [2, 6]
    geo = r["geometry"]
    assert geo["frames"] == [2, 6]
    # Exact up to the float32 storage of the ground truth.
    assert max(geo["chamfer_l1"]) < 1e-6 and geo["fscore"] == [1.0, 1.0]
    # A sample on an edge is as near the neighbouring triangle, whose normal may win the tie.
    assert geo["normal_consistency_mean"] == pytest.approx(1.0, abs=1e-4)
    assert r["animated"]["chamfer_l1_mean"] < 1e-6
    # The double's vertices are the ground truth's: the same jitter.
    assert r["temporal"]["jitter"] == pytest.approx(r["temporal"]["jitter_gt"], rel=1e-6)
    assert r["temporal"]["jitter"] > 0


def test_surfels_on_the_true_surface_render_close_to_ground_truth(exact_result):
    r = exact_result
    # Coarse discs on the exact surface: close, not perfect (edges are soft at 96 px).
    assert r["summary"]["psnr_heldout"] > 20.0
    assert r["summary"]["ssim_heldout"] > 0.8
    assert r["summary"]["mask_iou_heldout"] > 0.8
    novel = r["novel_view"]
    assert novel["cameras"] == 4 and novel["frames"] == [0, 3, 6]
    assert np.array(novel["psnr"]).shape == (3, 4)
    assert r["summary"]["psnr_novel"] > 20.0
    assert r["summary"]["focal_ratio"] == pytest.approx(1.0, abs=1e-6)
    assert r["cameras"]["rotation_drift_deg_max"] < 1e-3


def test_heldout_frames_carry_the_flow_interpolation_baseline(scene_run, exact_result):
    """Each held-out frame is also predicted from its two neighbouring input frames alone (DIS
    flow midpoint); the figure is the recomputed one and is summarised beside the fit's."""
    from recon4d.data.flow import midpoint_frame
    from recon4d.eval.metrics import psnr, replace_background

    scene_dir, _ = scene_run
    data = load_dataset(scene_dir)
    held = exact_result["heldout"]
    expected = []
    for i in held["frames"]:
        before, target, after = (replace_background(data.frames[k], data.masks[k], data.background)
                                 for k in (i - 1, i, i + 1))
        expected.append(psnr(midpoint_frame(before, after), target))
    assert held["interp_psnr"] == pytest.approx(expected, abs=1e-6)
    assert 15.0 < min(expected) < 60.0
    assert exact_result["summary"]["psnr_heldout_interp_baseline"] == pytest.approx(np.mean(expected))
    assert held["psnr_mean_interp_frames"] == pytest.approx(held["psnr_mean"])


def test_metrics_json_and_plots_are_written(scene_run, exact_result):
    from PIL import Image

    _, run = scene_run
    stored = json.loads(run.metrics_path.read_text())["eval"]
    assert stored["summary"]["psnr_heldout"] == pytest.approx(exact_result["summary"]["psnr_heldout"])
    assert stored["heldout"]["psnr"] == pytest.approx(exact_result["heldout"]["psnr"])
    for key in ("plot", "heldout_images"):
        png = run.root / stored[key]
        assert png.is_file() and png.parent == run.renders
        assert Image.open(png).size[0] > 100


def test_a_shifted_reconstruction_scores_worse_by_the_known_amount(scene_run, exact_result):
    scene_dir, run = scene_run
    d = 0.05
    r = _evaluate(run, _double(scene_dir, displace=_shift([d, 0, 0])), plot=False)
    diag = load_ground_truth(scene_dir).frame_bbox_diagonal(2)
    cham = r["geometry"]["chamfer_l1"][0]
    # Nearest surface points are at most the shift away, and a shift of 3% of the diagonal
    # cannot be hidden by the surface sliding along itself everywhere.
    assert 0.3 * d / diag < cham <= d / diag * 1.02
    assert r["geometry"]["fscore_mean"] < 0.8
    assert r["summary"]["psnr_heldout"] < exact_result["summary"]["psnr_heldout"] - 2.0


def test_a_scaling_about_the_fixed_camera_is_reported_apart_from_the_shape(scene_run,
                                                                            exact_result):
    """Larger and farther about the input camera: Chamfer sees it, the depth-scaled Chamfer
    (the fixed camera's depth-scale gauge taken out) does not, and names the scale."""
    scene_dir, run = scene_run
    viewmat = load_dataset(scene_dir).cameras.viewmats[0]
    centre = -viewmat[:3, :3].T @ viewmat[:3, 3]
    scale = np.eye(4)
    scale[:3, :3] *= 1.08
    scale[:3, 3] = centre - 1.08 * centre
    r = _evaluate(run, _double(scene_dir, displace=scale), plot=False)
    geo = r["geometry"]
    assert geo["chamfer_l1_mean"] > 0.02
    assert geo["chamfer_l1_depth_scaled_mean"] < 0.003
    assert geo["depth_scale_mean"] == pytest.approx(1 / 1.08, abs=0.005)
    assert r["summary"]["chamfer_l1_depth_scaled"] == pytest.approx(geo["chamfer_l1_depth_scaled_mean"])
    assert max(exact_result["geometry"]["chamfer_l1_depth_scaled"]) < 1e-4
    assert exact_result["geometry"]["depth_scale"] == pytest.approx([1.0, 1.0], abs=1e-3)


def test_a_change_of_world_frame_is_aligned_through_the_cameras(scene_run, exact_result):
    # Moving scene AND cameras by the same rigid transform changes nothing observable.
    from recon4d.scenes.animate import rigid, rotation

    scene_dir, run = scene_run
    world = rigid(rotation([0.3, 1.0, 0.2], 0.4), [0.2, -0.1, 0.3])
    r = _evaluate(run, _double(scene_dir, world=world), plot=False)
    assert r["summary"]["psnr_heldout"] == pytest.approx(exact_result["summary"]["psnr_heldout"], abs=0.05)
    assert r["summary"]["psnr_novel"] == pytest.approx(exact_result["summary"]["psnr_novel"], abs=0.05)
    assert max(r["geometry"]["chamfer_l1"]) < 1e-6
    assert r["cameras"]["rotation_drift_deg_max"] == pytest.approx(np.degrees(0.4), abs=1e-3)
    assert r["temporal"]["jitter"] == pytest.approx(exact_result["temporal"]["jitter"], rel=1e-5)


def test_focal_drift_is_reported_with_a_diagnostic_novel_view(scene_run):
    scene_dir, run = scene_run
    double = _double(scene_dir)
    double.Ks = double.Ks.copy()
    double.Ks[:, :2, :2] *= 0.9  # the "fit" moved its focal length by -10%
    r = evaluate_run(run.root, options=EvalOptions(plot=False, geometry_frames="none", animated=False),
                     scene=double)
    assert r["summary"]["focal_ratio"] == pytest.approx(0.9, abs=1e-6)
    assert r["novel_view_fitted_focal"]["focal_ratio"] == pytest.approx(0.9, abs=1e-6)
    # The diagnostic renders with the scaled focal length, so its images (and PSNR) differ.
    assert abs(r["summary"]["psnr_novel_fitted_focal"] - r["summary"]["psnr_novel"]) > 0.1


def test_eval_without_ground_truth_reports_image_metrics_only(tmp_path, scene_run):
    scene_dir, _ = scene_run
    run = RunDir(tmp_path / "run").create()
    run.write_config({"preset": "test-double"})
    shutil.copytree(scene_dir, run.dataset, ignore=shutil.ignore_patterns("gt"))
    double = _double(scene_dir)
    r = evaluate_run(run.root, options=EvalOptions(plot=False), scene=double,
                     animated_fn=double.animated)
    assert "novel_view" not in r and "geometry" not in r
    assert r["summary"]["psnr_heldout"] > 20.0
    assert r["temporal"]["jitter"] > 0 and "jitter_gt" not in r["temporal"]


def test_a_frame_whose_mesh_fails_empties_the_means_instead_of_flattering_them(
        scene_run, capsys):
    """An empty per-frame mesh (Chamfer inf) used to drop out of the Chamfer mean while its
    F-score 0 stayed in: the more frames failed, the better the headline looked."""
    import trimesh

    scene_dir, run = scene_run
    double = _double(scene_dir)
    broken = double.frame(double.gt.times[6])

    def frame_mesh(scene, t):
        if double.frame(t) == broken:
            return trimesh.Trimesh(np.zeros((0, 3)), np.zeros((0, 3), np.int64), process=False)
        return double.frame_mesh(scene, t)

    capsys.readouterr()
    r = evaluate_run(run.root, options=EvalOptions(samples=5_000, plot=False, animated=False),
                     scene=double, frame_mesh_fn=frame_mesh)
    geo = r["geometry"]
    assert geo["frames"] == [2, 6] and geo["failed_frames"] == [6]
    assert geo["chamfer_l1"][0] < 1e-3 and geo["chamfer_l1"][1] is None
    assert geo["chamfer_l1_mean"] is None and geo["fscore_mean"] is None
    assert "chamfer_l1" not in r["summary"]
    assert "per-frame meshes of frames [6] are empty" in capsys.readouterr().err


def test_eval_of_a_fit_on_every_frame_says_its_held_out_frames_were_trained_on(
        tmp_path, scene_run, capsys):
    scene_dir, _ = scene_run
    run = RunDir(tmp_path / "run").create()
    run.write_config({"preset": "test-double", "all_frames": True})
    shutil.copytree(scene_dir, run.dataset)
    capsys.readouterr()
    r = evaluate_run(run.root, options=EvalOptions(plot=False, geometry_frames="none",
                                                   animated=False), scene=_double(scene_dir))
    assert r["heldout"]["trained_on"] is True
    assert "trained on every frame (--all-frames)" in capsys.readouterr().err


def test_ground_truth_without_its_cameras_is_a_one_line_error(tmp_path, scene_run):
    scene_dir, run = scene_run
    shutil.copytree(Path(scene_dir) / "gt", tmp_path / "gt_copy")   # no manifest.json beside it
    with pytest.raises(UserError, match="has no input cameras .* not a copy of gt/"):
        evaluate_run(run.root, tmp_path / "gt_copy", options=EvalOptions(plot=False),
                     scene=_double(scene_dir))


def test_cli_eval_errors_are_one_line(tmp_path, capsys):
    assert main(["eval", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    run = RunDir(tmp_path / "run").create()
    run.write_config({})
    assert main(["eval", str(run.root)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "recon4d: error:" in err[0]


def test_cli_eval_on_a_real_tiny_fit(tmp_path, scene_run, capsys):
    """End to end with the real model loader and renderer: a few-step fit, then `recon4d eval`.

    The fit logs its own held-out PSNR; the evaluator's, computed independently from the saved
    checkpoint, must agree with it (same protocol, same frames).
    """
    from recon4d.train import fit

    scene_dir, _ = scene_run
    run_dir = fit(scene_dir, tmp_path / "run", preset="test")
    rc = main(["eval", str(run_dir), "--geometry-frames", "none", "--no-animated", "--json"])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    stored = json.loads((run_dir / "metrics.json").read_text())
    ev = stored["eval"]
    assert ev["heldout"]["frames"] == [2, 6]
    assert printed["psnr_heldout"] == pytest.approx(ev["summary"]["psnr_heldout"])
    assert 5.0 < ev["summary"]["psnr_heldout"] < 60.0
    assert len(ev["novel_view"]["psnr"]) == 3 and "geometry" in ev and ev["geometry"]["frames"] == []
    fit_psnr = stored.get("fit", {}).get("heldout_psnr")
    if fit_psnr is not None:
        assert ev["summary"]["psnr_heldout"] == pytest.approx(fit_psnr, abs=0.5)
    assert (run_dir / "renders" / "eval_metrics.png").is_file()
