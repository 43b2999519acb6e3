"""Ingest's bad inputs: one clear line, exit code 2, and nothing written (no dataset, no temp dir).
Inputs that are fixable (huge frames, palette / greyscale / 16-bit modes) are converted with a
warning instead, and the result is checked."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from recon4d.cli.main import main
from recon4d.data.dataset import load_dataset
from recon4d.errors import UserError
from test_ingest import BG, blob_clip, write_mp4, write_pngs


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def fails(capsys, tmp_path: Path, args: list[str], fragment: str) -> str:
    """Run ``recon4d ingest ARGS --out tmp/out`` and check the user-error contract."""
    out = tmp_path / "out"
    before = _tree(tmp_path)
    code = main(["ingest", *args, "--out", str(out), "--resolution", "64", "--no-flow", "--quiet"])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("recon4d: error:")]
    assert code == 2, err
    assert len(errors) == 1 and fragment in errors[0], err
    assert "Traceback" not in err
    assert not out.exists()
    assert _tree(tmp_path) == before, "something was left behind"
    return errors[0]


@pytest.fixture
def clip(tmp_path):
    frames, truth = blob_clip(frames=4)
    return write_pngs(tmp_path / "frames", frames), frames, truth


# Paths and files -----------------------------------------------------------------------------
def test_missing_path(capsys, tmp_path):
    fails(capsys, tmp_path, [str(tmp_path / "nope.mp4")], "does not exist")


def test_unsupported_file_type(capsys, tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    fails(capsys, tmp_path, [str(tmp_path / "notes.txt")], "unsupported input")


def test_corrupt_video_garbage_and_truncated(capsys, tmp_path):
    (tmp_path / "junk.mp4").write_bytes(np.random.default_rng(0).bytes(5000))
    fails(capsys, tmp_path, [str(tmp_path / "junk.mp4")], "cannot open video")
    frames, _ = blob_clip(frames=4)
    good = write_mp4(tmp_path / "good.mp4", frames).read_bytes()
    (tmp_path / "cut.mp4").write_bytes(good[: len(good) // 2])
    fails(capsys, tmp_path, [str(tmp_path / "cut.mp4")], "cut.mp4")


def test_corrupt_gif(capsys, tmp_path):
    (tmp_path / "bad.gif").write_bytes(b"GIF89a" + bytes(100))
    fails(capsys, tmp_path, [str(tmp_path / "bad.gif")], "bad.gif")


def test_corrupt_frame_in_folder(capsys, tmp_path, clip):
    folder, _, _ = clip
    data = (folder / "frame2.png").read_bytes()
    (folder / "frame2.png").write_bytes(data[: len(data) // 3])
    fails(capsys, tmp_path, [str(folder)], "frame2.png")


def test_output_exists(capsys, tmp_path, clip):
    folder, _, _ = clip
    (tmp_path / "out").mkdir()
    before = _tree(tmp_path)
    assert main(["ingest", str(folder), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert _tree(tmp_path) == before


# Frame counts and sizes ----------------------------------------------------------------------
def test_zero_frames(capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    fails(capsys, tmp_path, [str(tmp_path / "empty")], "has no frames")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "readme.txt").write_text("no images here")
    fails(capsys, tmp_path, [str(tmp_path / "docs")], "has no frames")


def test_video_without_video_stream(capsys, tmp_path):
    import av

    path = tmp_path / "audio.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp",
                                           layout="mono")
        frame.sample_rate = 8000
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    fails(capsys, tmp_path, [str(path)], "has no video stream")


def test_single_frame_folder_file_gif_and_video(capsys, tmp_path):
    frames, _ = blob_clip(frames=1)
    folder = write_pngs(tmp_path / "one", frames)
    fails(capsys, tmp_path, [str(folder)], "single frame")
    fails(capsys, tmp_path, [str(folder / "frame0.png")], "single frame")
    Image.fromarray(frames[0]).save(tmp_path / "one.gif")
    fails(capsys, tmp_path, [str(tmp_path / "one.gif")], "single frame")
    write_mp4(tmp_path / "one.mp4", frames)
    fails(capsys, tmp_path, [str(tmp_path / "one.mp4")], "single frame")


def test_frames_of_different_sizes(capsys, tmp_path, clip):
    folder, frames, _ = clip
    Image.fromarray(frames[2][:, :50]).save(folder / "frame2.png")
    fails(capsys, tmp_path, [str(folder)], "all frames must have the same size")


# Masks ---------------------------------------------------------------------------------------
def test_mask_count_mismatch(capsys, tmp_path, clip):
    folder, _, truth = clip
    masks = write_pngs(tmp_path / "masks", (truth[:3] * 255).astype(np.uint8))
    fails(capsys, tmp_path, [str(folder), "--masks", str(masks)], "has 3 images but the input has 4")


def test_masks_shifted_by_a_missing_one_and_a_stray_file(capsys, tmp_path, clip):
    """The count matches (4 and 4) but mask0 is missing and a stray preview.png sorts last:
    every mask would land one frame early."""
    from PIL import Image

    folder, _, truth = clip
    masks = tmp_path / "masks"
    masks.mkdir()
    for i in range(1, 4):
        Image.fromarray((truth[i] * 255).astype(np.uint8)).save(masks / f"mask{i}.png")
    Image.fromarray((truth[0] * 255).astype(np.uint8)).save(masks / "preview.png")
    fails(capsys, tmp_path, [str(folder), "--masks", str(masks)],
          "mask 'preview.png' in")


def test_masks_numbered_from_a_different_start_still_pair(tmp_path, clip):
    from PIL import Image

    from recon4d.data.dataset import load_dataset

    folder, _, truth = clip
    masks = tmp_path / "masks"
    masks.mkdir()
    for i in range(4):     # frames frame0..frame3, masks 1-based
        Image.fromarray((truth[i] * 255).astype(np.uint8)).save(masks / f"m_{i + 1:04d}.png")
    out = tmp_path / "out"
    assert main(["ingest", str(folder), "--masks", str(masks), "--out", str(out),
                 "--resolution", "64", "--no-flow", "--quiet"]) == 0
    assert load_dataset(out).manifest["masks_from"] == "given"


def test_mask_video_count_mismatch(capsys, tmp_path, clip):
    folder, _, truth = clip
    video = write_mp4(tmp_path / "m.mp4", np.repeat((truth[:2] * 255).astype(np.uint8)[..., None],
                                                    3, axis=-1))
    fails(capsys, tmp_path, [str(folder), "--masks", str(video)], "has 2 frames but the input has 4")


def test_damaged_mask_animation(capsys, tmp_path, clip):
    """A cut mask GIF used to end with PIL's 'image file is truncated' and exit code 1 (a
    machine error), naming neither the file nor the fix."""
    from PIL import Image

    folder, frames, truth = clip
    images = [Image.fromarray((m * 255).astype(np.uint8)) for m in truth]
    images[0].save(tmp_path / "whole.gif", save_all=True, append_images=images[1:])
    whole = (tmp_path / "whole.gif").read_bytes()
    (tmp_path / "whole.gif").unlink()
    (tmp_path / "masks.gif").write_bytes(whole[: int(len(whole) * 0.6)])
    fails(capsys, tmp_path, [str(folder), "--masks", str(tmp_path / "masks.gif")],
          "mask animation")


def test_mask_size_mismatch(capsys, tmp_path, clip):
    folder, _, truth = clip
    masks = write_pngs(tmp_path / "masks", (truth[:, :32] * 255).astype(np.uint8))
    fails(capsys, tmp_path, [str(folder), "--masks", str(masks)], "masks must match the frames' size")


def test_all_empty_and_all_full_masks(capsys, tmp_path, clip):
    folder, _, truth = clip
    empty = write_pngs(tmp_path / "empty", np.zeros(truth.shape, np.uint8))
    fails(capsys, tmp_path, [str(folder), "--masks", str(empty)], "every mask is empty")
    full = write_pngs(tmp_path / "full", np.full(truth.shape, 255, np.uint8))
    fails(capsys, tmp_path, [str(folder), "--masks", str(full)], "every mask covers the whole frame")


def test_keying_finds_no_object(capsys, tmp_path):
    plain = np.broadcast_to(np.asarray(BG, np.uint8), (3, 64, 64, 3))
    folder = write_pngs(tmp_path / "plain", plain)
    message = fails(capsys, tmp_path, [str(folder)], "every mask is empty")
    assert "keying" in message


def test_background_not_uniform(capsys, tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    folder = write_pngs(tmp_path / "noise", noise)
    fails(capsys, tmp_path, [str(folder)], "not a near-uniform colour")


def test_alpha_requested_but_absent(capsys, tmp_path, clip):
    folder, _, _ = clip
    fails(capsys, tmp_path, [str(folder), "--mask-source", "alpha"], "no alpha channel")


# Options -------------------------------------------------------------------------------------
@pytest.mark.parametrize("option, value, fragment", [
    ("--stride", "0", "--stride must be"),
    ("--max-frames", "1", "--max-frames must be"),
    ("--fov-deg", "0", "--fov-deg must be"),
    ("--camera", "transforms", "needs a transforms.json input"),
    ("--distance", "inf", "--distance must be a positive number"),
    ("--sweep-deg", "nan", "--sweep-deg must be a number of degrees"),
    ("--start-azimuth-deg", "inf", "--start-azimuth-deg must be a number of degrees"),
])
def test_bad_options(capsys, tmp_path, clip, option, value, fragment):
    folder, _, _ = clip
    fails(capsys, tmp_path, [str(folder), option, value], fragment)


def test_bad_resolution(capsys, tmp_path, clip):
    folder, _, _ = clip
    out = tmp_path / "out"
    assert main(["ingest", str(folder), "--out", str(out), "--resolution", "100000"]) == 2
    assert "--resolution must be between" in capsys.readouterr().err
    assert not out.exists()


# Fixable inputs: converted with a warning ----------------------------------------------------
def _ingest_ok(capsys, folder: Path, out: Path, *extra: str):
    code = main(["ingest", str(folder), "--out", str(out), "--crop", "off", "--resolution", "64",
                 "--no-flow", "--quiet", *extra])
    err = capsys.readouterr().err
    assert code == 0, err
    return load_dataset(out), err


def test_huge_frames_are_downscaled_with_a_warning(capsys, tmp_path):
    import cv2

    frames, _ = blob_clip(frames=2, noise=0.0)
    huge = [cv2.resize(f, (4200, 420), interpolation=cv2.INTER_NEAREST) for f in frames]
    folder = write_pngs(tmp_path / "huge", huge)
    dataset, err = _ingest_ok(capsys, folder, tmp_path / "out")
    assert "larger than --max-input-side 4096: downscaled to 4096x410" in err
    assert dataset.manifest["source"]["original_size"] == [4200, 420]
    assert dataset.manifest["extras"]["crop"]["read_scale"] == pytest.approx(4096 / 4200)
    assert (dataset.masks >= 0.5).mean() > 0.01


def test_palette_greyscale_and_16bit_frames_are_converted(capsys, tmp_path):
    import cv2

    frames, _ = blob_clip(frames=3)
    palette = write_pngs(tmp_path / "p", frames, mode="P")
    dataset, err = _ingest_ok(capsys, palette, tmp_path / "out_p")
    assert "palette (mode P) frames: converted to 8-bit RGB" in err
    expected = np.stack([np.asarray(Image.open(palette / f"frame{i}.png").convert("RGB"))
                         for i in range(3)])
    assert np.array_equal(np.round(dataset.frames * 255).astype(np.uint8), expected)

    grey = write_pngs(tmp_path / "l", frames, mode="L")
    dataset, err = _ingest_ok(capsys, grey, tmp_path / "out_l")
    assert "greyscale (mode L)" in err
    assert np.array_equal(dataset.frames[..., 0], dataset.frames[..., 2])

    deep = (frames[..., 0].astype(np.uint16) * 257 + 100)   # 16-bit greyscale
    (tmp_path / "i16").mkdir()
    for i, image in enumerate(deep):
        cv2.imwrite(str(tmp_path / "i16" / f"f{i}.png"), image)
    dataset, err = _ingest_ok(capsys, tmp_path / "i16", tmp_path / "out_16")
    assert "16-bit greyscale" in err
    expected = np.round(deep / 257.0).astype(np.uint8)
    got = np.round(dataset.frames[..., 1] * 255).astype(np.uint8)
    assert np.abs(got.astype(int) - expected).max() <= 1

    rgb16 = frames.astype(np.uint16) * 257
    (tmp_path / "rgb16").mkdir()
    for i, image in enumerate(rgb16):
        cv2.imwrite(str(tmp_path / "rgb16" / f"f{i}.png"), image[..., ::-1])
    dataset, err = _ingest_ok(capsys, tmp_path / "rgb16", tmp_path / "out_rgb16")
    assert "16-bit frames" in err
    assert np.array_equal(np.round(dataset.frames * 255).astype(np.uint8), frames)


def test_png_colour_key_transparency_gives_the_alpha_mask(capsys, tmp_path):
    """RGB and greyscale PNGs can mark one colour transparent (tRNS); that used to be read for
    palettes only, and such frames were keyed instead of taking their alpha."""
    frames, truth = blob_clip(frames=3)
    black = np.where(truth[..., None] > 0.5, frames, 0).astype(np.uint8)  # key: pure black
    black[truth > 0.5] = np.maximum(black[truth > 0.5], 1)                # the object is never
    (tmp_path / "rgb").mkdir()
    for i, image in enumerate(black):
        Image.fromarray(image).save(tmp_path / "rgb" / f"frame{i}.png", transparency=(0, 0, 0))
    dataset, _ = _ingest_ok(capsys, tmp_path / "rgb", tmp_path / "out_rgb")
    assert dataset.manifest["masks_from"] == "alpha"
    assert np.abs((dataset.masks > 0.5).astype(float) - (truth > 0.5)).mean() < 0.01
    assert dataset.frames[:, 0, 0].min() == 1.0                  # transparent: over white


def test_float_frames_are_refused(capsys, tmp_path):
    (tmp_path / "f").mkdir()
    for i in range(2):
        Image.fromarray(np.full((64, 64), 0.5, np.float32), mode="F").save(tmp_path / "f" / f"{i}.tif")
    fails(capsys, tmp_path, [str(tmp_path / "f")], "floating-point image")


# transforms.json with problems ---------------------------------------------------------------
def _transforms(tmp_path: Path, meta) -> Path:
    frames, _ = blob_clip(frames=3)
    write_pngs(tmp_path / "ns" / "images", frames)
    path = tmp_path / "ns" / "transforms.json"
    path.write_text(meta if isinstance(meta, str) else json.dumps(meta))
    return path


def _frame(i: int, **extra) -> dict:
    return {"file_path": f"images/frame{i}.png", "transform_matrix": np.eye(4).tolist(), **extra}


@pytest.mark.parametrize("meta, fragment", [
    ("{not json", "is not valid JSON"),
    ({"fl_x": 50.0}, "lacks 'frames'"),
    ({"fl_x": 50.0, "frames": [_frame(0), {"file_path": "images/frame1.png"}]},
     "frame 1 lacks 'transform_matrix'"),
    ({"fl_x": 50.0, "frames": [_frame(0), {"transform_matrix": np.eye(4).tolist()}]},
     "frame 1 lacks 'file_path'"),
    ({"frames": [_frame(0), _frame(1)]}, "has no focal length"),
    ({"fl_x": 50.0, "frames": [_frame(0), _frame(7)]}, "does not exist"),
    ({"fl_x": 50.0, "frames": [_frame(0, time=0.0), _frame(1)]}, "frame 1 lacks 'time'"),
    ({"fl_x": 50.0, "frames": [_frame(0), dict(_frame(1), transform_matrix=[[1, 0], [0, 1]])]},
     "must be a 4x4 matrix"),
    ({"fl_x": 50.0, "frames": [_frame(0)]}, "single frame"),
    # Each of these used to end in a traceback when the manifest met an infinite or NaN K.
    ({"camera_angle_x": 0, "frames": [_frame(0), _frame(1)]}, "must be an angle in (0, pi)"),
    ({"fl_x": float("nan"), "frames": [_frame(0), _frame(1)]}, "the intrinsics are not usable"),
    ({"fl_x": -50.0, "frames": [_frame(0), _frame(1)]}, "the intrinsics are not usable"),
])
def test_transforms_json_problems(capsys, tmp_path, meta, fragment):
    path = _transforms(tmp_path, meta)
    fails(capsys, tmp_path, [str(path)], fragment)


def test_clip_too_big_for_memory(capsys, tmp_path, clip, monkeypatch):
    """The decoded-size guard stops the read with the options that shrink it (the real limit,
    8 GB, is monkeypatched down to three 64x64 frames' worth)."""
    from recon4d.data import readers

    folder, frames, _ = clip
    monkeypatch.setattr(readers, "MAX_CLIP_BYTES", 2 * 64 * 64 * 3 + 1)
    # The folder declares its length: refused before reading, since shrinking the frames
    # enough would take them under the smallest read size (1024 px).
    line = fails(capsys, tmp_path, [str(folder)], "is 4 frames of 64x64 (0.0 GB decoded), too "
                 "long to hold in memory")
    assert "even at 1024 px: pass --stride or --max-frames" in line
    # A clip of unknown length (a video that declares no frame count) stops when it overflows.
    collector = readers.FrameCollector("video 'x.mp4'", 4096, expected=None)
    collector.add(frames[0], None, "frame 0")
    collector.add(frames[1], None, "frame 1")
    with pytest.raises(UserError, match="too long to hold in memory at 64x64 .*after 3 frames.*"
                       "--stride or --max-frames, or --max-input-side"):
        collector.add(frames[2], None, "frame 2")


@pytest.mark.parametrize("expected", [None, 5, 3])
def test_frame_collector_keeps_every_frame_whatever_the_declared_count(expected):
    """Declared count right (frames go into one array, no copy at the end), too small (the rest
    kept apart, then copied) or unknown; and a subset picked from its list afterwards."""
    from recon4d.data.readers import FrameCollector

    frames = np.random.default_rng(0).integers(0, 256, (5, 8, 6, 3), dtype=np.uint8)
    for pick in (None, [0, 2, 4]):
        collector = FrameCollector("clip", 4096, expected=expected)
        for i, frame in enumerate(frames):
            collector.add(frame, None, f"frame {i}")
        if pick is not None:
            collector.frames = [collector.frames[i] for i in pick]
            collector.alphas = [collector.alphas[i] for i in pick]
        out, alpha = collector.finish()
        want = frames if pick is None else frames[pick]
        assert alpha is None and out.shape == want.shape and np.array_equal(out, want)
        assert out.flags.c_contiguous
        if expected == 5 and pick is None:
            assert out.base is not None  # the preallocated array itself, not a copy of it


def test_clip_too_long_for_memory_is_read_smaller(capsys, tmp_path, monkeypatch):
    """A video whose declared length would not fit is decoded at the size that fits, with a
    warning, and ingests: the frames scale by sqrt(limit / clip), the crop follows."""
    from recon4d.data import ingest as ingest_module
    from recon4d.data import readers

    frames, _ = blob_clip(frames=8, size=192)
    video = write_mp4(tmp_path / "long.mp4", frames)
    monkeypatch.setattr(readers, "MAX_CLIP_BYTES", 2 * 192 * 192 * 3)  # a quarter of the clip
    monkeypatch.setattr(ingest_module, "MIN_READ_SIDE", 16)
    out = tmp_path / "ds"
    assert main(["ingest", str(video), "--out", str(out), "--resolution", "16", "--no-flow"]) == 0
    err = capsys.readouterr().err
    assert "is 8 frames of 192x192" in err and "frames are read at 95x95" in err, err
    dataset = load_dataset(out)
    assert dataset.num_frames == 8 and dataset.manifest["extras"]["crop"]["read_scale"] == pytest.approx(
        95 / 192)
    clip = readers.read_input(video, min_side=16)
    assert clip.frames.shape == (8, 95, 95, 3) and clip.frames.nbytes <= readers.MAX_CLIP_BYTES
