"""User depth maps: ingest (--depth) follows the frames through selection, crop and resize; bad
maps are one clear error with nothing written; the dataset carries them to the fit."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from recon4d.cli.main import main
from recon4d.data.dataset import load_dataset
from recon4d.data.depth import attach_depth
from recon4d.data.ingest import ingest
from recon4d.data.options import IngestOptions
from test_ingest import blob_clip, write_pngs
from test_ingest_errors import fails


def ramp_maps(count: int, height: int, width: int) -> np.ndarray:
    """(count, H, W) maps whose value encodes the frame (integer part) and the column (ramp)."""
    cols = np.linspace(0.0, 0.5, width, dtype=np.float32)
    return np.stack([np.broadcast_to(1.0 + i + cols, (height, width)) for i in range(count)])


@pytest.fixture
def clip(tmp_path):
    frames, truth = blob_clip(frames=6)
    return write_pngs(tmp_path / "frames", frames), frames, truth


def test_depth_follows_frame_selection_crop_and_resize(tmp_path, clip):
    folder, frames, truth = clip
    maps = ramp_maps(len(frames), *frames.shape[1:3])
    maps[:, :4, :] = np.nan  # unknown rows stay unknown
    np.save(tmp_path / "depth.npy", maps)
    out = ingest(folder, tmp_path / "ds", IngestOptions(resolution=48, flow=False, stride=2,
                                                        depth=tmp_path / "depth.npy"))
    data = load_dataset(out)
    depth, kind = data.load_depth()
    assert kind == "disparity" and depth.shape == (3, 48, 48)
    # Frames 0, 2, 4 were kept: the integer part of each map says which source map it is.
    known = depth > 0
    for k, source in enumerate((0, 2, 4)):
        assert np.all(np.floor(depth[k][known[k]]) == 1 + source)
    # The crop keeps the column ramp increasing left to right inside the frame.
    row = depth[0, 24][known[0, 24]]
    assert len(row) > 20 and np.all(np.diff(row) >= -1e-6) and row[-1] - row[0] > 0.1
    # The crop follows the object: the ramp is cut like the frames (not the full 0..0.5 range).
    manifest = json.loads((out / "manifest.json").read_text())
    box = manifest["extras"]["crop"]["box"]
    assert manifest["depth"]["kind"] == "disparity" and manifest["depth"]["path"] == "depth/depth.npz"
    assert box is not None
    # Unknown source pixels (NaN rows at the top) are 0 after the crop, never a blend.
    values = depth[known]
    assert np.all(values >= 1.0)


def test_contact_sheet_shows_each_map_beside_its_frame(tmp_path, clip):
    from recon4d.data.contact_sheet import depth_tile

    folder, frames, _ = clip
    np.save(tmp_path / "depth.npy", ramp_maps(len(frames), *frames.shape[1:3]))
    plain = ingest(folder, tmp_path / "plain", IngestOptions(resolution=32, flow=False))
    with_depth = ingest(folder, tmp_path / "ds", IngestOptions(resolution=32, flow=False,
                                                               depth=tmp_path / "depth.npy"))
    sheet = np.asarray(Image.open(with_depth / "contact_sheet.png"))
    assert sheet.shape[1] == 3 * 2 * 160  # three columns of frame + map pairs
    assert np.asarray(Image.open(plain / "contact_sheet.png")).shape[1] == 6 * 160
    # One tile: near is yellow (bright) whichever way the map counts; unknown is grey.
    mask = np.zeros((12, 12), np.uint8)
    mask[2:10, 2:10] = 255
    ramp = np.zeros((12, 12), np.float32)
    ramp[2:10, 2:10] = np.linspace(1.0, 2.0, 8)[None, :]
    disparity = depth_tile(ramp, mask).astype(int).sum(-1)
    depth = depth_tile(ramp, mask, near_is_large=False).astype(int).sum(-1)
    assert disparity[5, 8] > disparity[5, 3] + 100 and depth[5, 8] + 100 < depth[5, 3]
    assert tuple(depth_tile(ramp, mask)[0, 11]) == (64, 64, 64)


def test_depth_folder_of_16_bit_pngs_and_metric_kind(tmp_path, clip):
    folder, frames, truth = clip
    maps = ramp_maps(len(frames), *frames.shape[1:3])
    depth_dir = tmp_path / "depth"
    depth_dir.mkdir()
    for i, m in enumerate(maps):  # natural order: 2 before 10
        Image.fromarray((m * 1000).astype(np.uint16)).save(depth_dir / f"d{i}.png")
    code = main(["ingest", str(folder), "--out", str(tmp_path / "ds"), "--resolution", "32",
                 "--no-flow", "--quiet", "--depth", str(depth_dir), "--depth-kind", "depth"])
    assert code == 0
    depth, kind = load_dataset(tmp_path / "ds").load_depth()
    assert kind == "depth"
    inside = depth[5][depth[5] > 0]
    assert len(inside) > 100 and np.all(np.floor(inside / 1000.0 + 1e-6) == 6)


def test_depth_maps_at_another_resolution_are_resized(tmp_path, clip):
    folder, frames, _ = clip
    small = ramp_maps(len(frames), 32, 32)  # the frames are 64 x 64
    np.save(tmp_path / "depth.npy", small)
    out = ingest(folder, tmp_path / "ds", IngestOptions(resolution=64, flow=False, crop="off",
                                                        depth=tmp_path / "depth.npy"))
    depth, _ = load_dataset(out).load_depth()
    assert depth.shape == (6, 64, 64)
    assert np.allclose(depth[3, :, 0], 4.0, atol=1e-6) and depth[3, 0, -1] > 4.45


def test_oracle_maps_keep_the_shape_up_to_the_stated_invariance():
    from recon4d.scenes.oracle import oracle_maps

    truth = np.zeros((3, 8, 8), np.float32)
    truth[:, 2:6, 2:6] = np.linspace(2.0, 3.0, 16, dtype=np.float32).reshape(4, 4)
    depth = oracle_maps(truth, "depth", seed=1)
    disparity = oracle_maps(truth, "disparity", seed=1)
    known = truth > 0
    assert np.all((depth > 0) == known) and np.all((disparity > 0) == known)
    ratios = depth[known] / truth[known]
    assert not np.allclose(depth, truth)
    for i in range(3):  # one scale per frame, different between frames
        r = depth[i][known[i]] / truth[i][known[i]]
        assert np.allclose(r, r[0], rtol=1e-5)
    assert np.ptp(ratios) > 0.01
    x, y = 1.0 / truth[0][known[0]], disparity[0][known[0]]
    slope, offset = np.polyfit(x, y, 1)
    assert np.allclose(slope * x + offset, y, rtol=1e-5) and abs(offset) > 0.1


def test_a_dataset_without_depth_has_none(tmp_path, clip):
    folder, _, _ = clip
    out = ingest(folder, tmp_path / "ds", IngestOptions(resolution=32, flow=False))
    assert load_dataset(out).load_depth() is None


def test_attach_depth_replaces_maps_atomically_and_checks_the_shape(tmp_path, clip):
    folder, _, _ = clip
    out = ingest(folder, tmp_path / "ds", IngestOptions(resolution=32, flow=False))
    maps = np.full((6, 32, 32), 2.0, np.float32)
    maps[0, 0, 0] = np.inf
    attach_depth(out, maps, "depth", source="test")
    depth, kind = load_dataset(out).load_depth()
    assert kind == "depth" and depth[0, 0, 0] == 0.0 and depth[1, 5, 5] == 2.0
    from recon4d.errors import UserError

    with pytest.raises(UserError, match="the dataset needs"):
        attach_depth(out, maps[:3], "depth")
    assert not list(out.rglob("*.tmp*"))


# Bad maps: one line, exit 2, nothing written -------------------------------------------------
def test_depth_count_mismatch(capsys, tmp_path, clip):
    folder, frames, _ = clip
    np.save(tmp_path / "depth.npy", ramp_maps(4, *frames.shape[1:3]))
    fails(capsys, tmp_path, [str(folder), "--depth", str(tmp_path / "depth.npy")],
          "--depth has 4 maps but the input has 6 frames")


def test_depth_aspect_mismatch(capsys, tmp_path, clip):
    folder, frames, _ = clip
    np.save(tmp_path / "depth.npy", ramp_maps(6, 64, 32))
    fails(capsys, tmp_path, [str(folder), "--depth", str(tmp_path / "depth.npy")],
          "aspect ratios differ")


def test_depth_missing_corrupt_and_wrong_shape(capsys, tmp_path, clip):
    folder, _, _ = clip
    fails(capsys, tmp_path, [str(folder), "--depth", str(tmp_path / "nope.npy")], "does not exist")
    (tmp_path / "bad.npy").write_bytes(b"not numpy")
    fails(capsys, tmp_path, [str(folder), "--depth", str(tmp_path / "bad.npy")],
          "cannot read depth array")
    (tmp_path / "bad.npy").unlink()
    np.save(tmp_path / "flat.npy", np.ones((6, 64), np.float32))
    fails(capsys, tmp_path, [str(folder), "--depth", str(tmp_path / "flat.npy")],
          "expected (frames, height, width)")
    (tmp_path / "flat.npy").unlink()
    rgb = tmp_path / "rgb"
    write_pngs(rgb, np.zeros((6, 64, 64, 3), np.uint8))
    fails(capsys, tmp_path, [str(folder), "--depth", str(rgb)], "not a single-channel map")


def test_depth_empty_on_the_object(capsys, tmp_path, clip):
    folder, frames, _ = clip
    np.save(tmp_path / "depth.npy", np.zeros((6,) + frames.shape[1:3], np.float32))
    fails(capsys, tmp_path, [str(folder), "--depth", str(tmp_path / "depth.npy")],
          "the depth maps are empty")


# The prior in the fit, on real data: the default scene rendered by the independent renderer --
def _novel_depth_error(run_dir, gt) -> float:
    """Mean |fitted - true| camera depth over the scene's novel views (pixels both cover), as a
    fraction of the ground-truth bounding-box diagonal: geometry the input view cannot show."""
    import torch

    from recon4d.eval.evaluate import _align
    from recon4d.model import load_run
    from recon4d.render import render
    from recon4d.render.types import Cameras

    scene = load_run(run_dir)
    times = scene.frame_times.detach().numpy()
    fit_viewmats = scene.input_cameras().viewmats.detach().double().numpy()
    errors = []
    for j, f in enumerate(gt.novel_frames):
        align = _align(gt.viewmats[f], fit_viewmats[f])
        cams = Cameras(torch.as_tensor(np.stack([v @ align for v in gt.novel_viewmats]), dtype=torch.float32),
                       torch.as_tensor(gt.novel_Ks, dtype=torch.float32), gt.width, gt.height)
        with torch.no_grad():
            out = render(scene.surfels_at(float(times[f])), cams)
        for c in range(len(gt.novel_viewmats)):
            both = (gt.novel_masks[c, j] > 0.5) & (out.alpha[c].numpy() > 0.5)
            errors.append(np.abs(out.depth[c].numpy()[both] - gt.novel_depth[c, j][both]))
    return float(np.concatenate(errors).mean() / gt.frame_bbox_diagonal(0))


def test_depth_prior_recovers_the_depth_a_fixed_camera_cannot_see(tmp_path):
    from recon4d.scenes import load_ground_truth, make_scene
    from recon4d.scenes.oracle import attach_oracle_depth
    from recon4d.train import fit

    scene_dir = make_scene("default", tmp_path / "scene", resolution=64, frames=12)
    gt = load_ground_truth(scene_dir)
    with_depth = tmp_path / "with_depth"
    shutil.copytree(scene_dir, with_depth)
    # Metric depth with a wrong scale in every frame, as a metric estimator would give it.
    attach_oracle_depth(with_depth, "depth", seed=3)
    settings = {"num_threads": 1, "coarse.steps": 150, "full.steps": 300,
                "model.num_surfels": 1500, "coarse_surfels": 400, "strategy.max_surfels": 3000,
                "checkpoint_every": 1000,
                # The oracle's edges are exact, and at 64 px the default 2 px border would leave
                # the legs (2-3 px wide) without depth.
                "depth_edge_px": 0,
                # One init for both fits, so the difference is the prior's (with maps the
                # "auto" profile is linear; without, round: 0.082 instead of 0.091).
                "model.init_profile": "linear"}
    errors = {}
    for name, data in (("without", scene_dir), ("with", with_depth)):
        run = fit(data, tmp_path / name, preset="cpu-fast", overrides=settings)
        errors[name] = _novel_depth_error(run, gt)
    # Measured: 0.066 vs 0.091 of the diagonal (0.72x); the full cpu-fast fit at 128 px gives
    # 0.048 vs 0.095. Off or flattening, the prior would give >= 1x.
    assert errors["with"] < 0.85 * errors["without"], errors


def test_depth_near_the_mask_border_is_not_trusted():
    from recon4d.data.depth import inner_masks

    masks = np.zeros((1, 12, 12), np.float32)
    masks[0, 2:10, 2:10] = 1.0
    assert inner_masks(masks, 0).sum() == 64
    inner = inner_masks(masks, 2)
    assert inner.sum() == 16 and inner[0, 4:8, 4:8].all()
