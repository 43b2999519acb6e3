"""Ingest: real clips and synthetic inputs in, validated datasets out (masks, times, cameras, flow,
transforms.json round trip). Bad inputs are in test_ingest_errors.py."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from recon4d.cli.main import main
from recon4d.data.dataset import load_dataset
from recon4d.data.readers import read_input
from recon4d.data.flow import midpoint_frame
from recon4d.data.ingest import ensure_dataset, ingest
from recon4d.data.options import IngestOptions
from recon4d.errors import UserError
from recon4d.eval.metrics import composite, psnr

BG = (252, 253, 250)
SMALL = dict(resolution=64, flow=False)


# Synthetic inputs ----------------------------------------------------------------------------
def blob_clip(frames: int = 6, size: int = 64, step: float = 3.0, seed: int = 0,
              noise: float = 1.0, shift_y: float = 0.0):
    """A striped, shaded ellipse moving right over a noisy near-white background.

    Returns:
        (frames (F, H, W, 3) uint8, masks (F, H, W) bool) -- the masks are the exact ellipses.
    """
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    out, masks = [], []
    for i in range(frames):
        cx, cy = 0.3 * size + step * i, 0.5 * size + shift_y * i
        inside = ((xs - cx) / (0.2 * size)) ** 2 + ((ys - cy) / (0.28 * size)) ** 2 <= 1.0
        u, v = xs - step * i, ys - shift_y * i   # texture moves with the ellipse
        texture = np.stack([90 + 60 * np.sin(u / 2.5), 60 + 40 * np.cos((u + v) / 4.0),
                            140 + 50 * np.sin(v / 3.0)], -1)
        image = np.where(inside[..., None], texture, np.asarray(BG, np.float64))
        image = image + rng.normal(0.0, noise, image.shape)
        out.append(np.clip(image + 0.5, 0, 255).astype(np.uint8))
        masks.append(inside)
    return np.stack(out), np.stack(masks)


def write_pngs(folder: Path, images, prefix: str = "frame", mode: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        picture = Image.fromarray(np.asarray(image))
        if mode:
            picture = picture.convert(mode)
        picture.save(folder / f"{prefix}{i}.png")
    return folder


def write_mp4(path: Path, images, fps: int = 10, pts=None, crf: int = 18,
              codec: str = "libx264", rotation: int = 0, hflip: bool = False,
              vflip: bool = False) -> Path:
    """Encode uint8 RGB frames with PyAV (any container its suffix names); ``rotation``
    (degrees, counter-clockwise) and the flips go into the display matrix, as phones store
    portrait and mirrored video."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.height, stream.width = images[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf)}
        if rotation or hflip or vflip:
            stream.set_display_rotation(rotation, hflip=hflip, vflip=vflip)
        if pts is not None:
            stream.codec_context.time_base = Fraction(1, fps)
        for i, image in enumerate(images):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            if pts is not None:
                frame.pts = int(pts[i])
                frame.time_base = stream.codec_context.time_base
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


# Real clips ----------------------------------------------------------------------------------
def _composited_jay(clips_dir: Path, seed: int = 0):
    files = sorted((clips_dir / "pecking_blue_jay_rgba").glob("*.png"))
    rgba = np.stack([np.asarray(Image.open(f).convert("RGBA")) for f in files])
    alpha = rgba[..., 3:].astype(np.float64) / 255.0
    rng = np.random.default_rng(seed)
    image = rgba[..., :3] * alpha + np.asarray(BG, np.float64) * (1.0 - alpha)
    image = image + rng.normal(0.0, 1.5, image.shape)
    return np.clip(image + 0.5, 0, 255).astype(np.uint8), rgba[..., 3]


def test_keying_accuracy_blue_jay_after_mp4_round_trip(clips_dir, tmp_path):
    """The issue's figure: key the RGBA bird composited over noisy near-white and compressed."""
    frames, alpha = _composited_jay(clips_dir)
    video = write_mp4(tmp_path / "jay.mp4", frames, crf=23)
    out = tmp_path / "jay"
    # Full frame at source size: the keyed masks are compared pixel for pixel with the alpha.
    assert main(["ingest", str(video), "--out", str(out), "--crop", "off", "--resolution",
                 str(frames.shape[1]), "--no-flow", "--quiet"]) == 0
    dataset = load_dataset(out, verify_hashes=True)
    assert dataset.manifest["masks_from"] == "keying"
    keyed = dataset.masks >= 0.5
    truth = alpha >= 128
    ious = [iou(k, t) for k, t in zip(keyed, truth)]
    assert np.mean(ious) >= 0.97, ious
    assert min(ious) >= 0.9
    assert np.allclose(dataset.background, np.asarray(BG) / 255.0, atol=3 / 255.0)


def test_rgba_folder_masks_are_its_alpha_and_frames_composited_over_white(clips_dir, tmp_path):
    out = ingest(clips_dir / "pecking_blue_jay_rgba", tmp_path / "jay",
                 IngestOptions(crop="off", resolution=384, max_frames=4, flow=False))
    dataset = load_dataset(out)
    files = sorted((clips_dir / "pecking_blue_jay_rgba").glob("*.png"))
    picks = [e["source_index"] for e in dataset.manifest["frames"]]
    assert picks == [0, 10, 21, 31]
    rgba = np.stack([np.asarray(Image.open(files[i]).convert("RGBA")) for i in picks])
    alpha = rgba[..., 3].astype(np.float64) / 255.0
    expected = rgba[..., :3] * alpha[..., None] + 255.0 * (1.0 - alpha[..., None])
    assert dataset.manifest["masks_from"] == "alpha"
    assert np.abs(dataset.masks - alpha).max() <= 0.5 / 255.0 + 1e-6
    assert np.abs(dataset.frames * 255.0 - expected).max() <= 1.0
    # Forcing keying on RGBA frames keys their composite over white, not the hidden colours.
    keyed = load_dataset(ingest(clips_dir / "pecking_blue_jay_rgba", tmp_path / "keyed",
                                IngestOptions(crop="off", resolution=384, max_frames=4,
                                              flow=False, mask_source="key")))
    assert keyed.manifest["masks_from"] == "keying"
    assert np.array_equal(keyed.frames, dataset.frames)
    assert min(iou(k >= 0.5, a >= 0.5) for k, a in zip(keyed.masks, alpha)) >= 0.97


def test_transparent_webm_masks_are_its_alpha(tmp_path):
    """WebM keeps VP9 alpha in a side stream that FFmpeg's own vp9 decoder drops: such a clip
    read as opaque and was keyed on its hidden colours ('every mask is empty')."""
    import av

    box = np.zeros((6, 64, 64), bool)
    path = tmp_path / "alpha.webm"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libvpx-vp9", rate=8)
        stream.width = stream.height = 64
        stream.pix_fmt = "yuva420p"
        for k in range(6):
            rgba = np.zeros((64, 64, 4), np.uint8)         # black where transparent
            box[k, 16:48, 8 + 2 * k:36 + 2 * k] = True
            rgba[box[k]] = [60, 160, 90, 255]
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgba, format="rgba")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    dataset = load_dataset(ingest(path, tmp_path / "ds", IngestOptions(crop="off", **SMALL)))
    assert dataset.manifest["masks_from"] == "alpha"
    assert dataset.times.tolist() == pytest.approx(np.linspace(0, 1, 6).tolist())
    assert min(iou(m >= 0.5, b) for m, b in zip(dataset.masks, box)) >= 0.95
    # Over white where transparent (the hidden colour is black).
    assert dataset.frames[:, 2, 2].min() > 0.95


def test_shared_clips_ingest_and_masks_sit_on_the_object(clips_dir, tmp_path):
    """Every shared clip ingests; inside the masks pixels are far from the background colour,
    outside they are the background (checked on the written dataset)."""
    names = sorted(p.name for p in clips_dir.iterdir() if p.name != "README.md")
    assert len(names) >= 14
    for name in names:
        out = ingest(clips_dir / name, tmp_path / Path(name).stem,
                     IngestOptions(resolution=64, max_frames=5, flow=False))
        dataset = load_dataset(out)
        assert dataset.num_frames == 5 and dataset.width == dataset.height == 64, name
        expected = "alpha" if name.endswith("rgba") else "keying"
        assert dataset.manifest["masks_from"] == expected, name
        areas = np.asarray(dataset.manifest["extras"]["mask_area"])
        assert ((areas > 0.02) & (areas < 0.8)).all(), (name, areas)
        distance = np.linalg.norm(dataset.frames - dataset.background, axis=-1)
        inside, outside = dataset.masks > 0.9, dataset.masks < 0.1
        assert np.median(distance[outside]) < 0.03, name
        assert np.mean(distance[inside]) > 5 * np.mean(distance[outside]), name
        assert np.isclose(dataset.times[0], 0) and np.isclose(dataset.times[-1], 1), name
        sheet = Image.open(out / "contact_sheet.png")
        assert sheet.size[0] > 0 and sheet.mode == "RGB"


def test_clip_with_defaults_through_the_cli(clips_dir, tmp_path):
    out = tmp_path / "parrot"
    assert main(["ingest", str(clips_dir / "hiphop_parrot.mp4"), "--out", str(out),
                 "--quiet"]) == 0
    dataset = load_dataset(out, verify_hashes=True)
    assert (dataset.num_frames, dataset.height, dataset.width) == (21, 256, 256)
    assert dataset.manifest["cameras"]["mode"] == "fixed"
    params = dataset.manifest["cameras"]["params"]
    assert params["fov_deg"] == 40.0 and 2.5 <= params["distance"] <= 3.0
    assert dataset.manifest["extras"]["time_from"] == "timestamps"
    forward, backward = dataset.load_flow()
    assert forward.shape == backward.shape == (20, 256, 256, 2)
    assert dataset.manifest["source"]["sha256"]
    # The object (union of masks, with the margin) fills the square crop.
    union = (dataset.masks >= 0.5).any(axis=0)
    rows, cols = np.flatnonzero(union.any(1)), np.flatnonzero(union.any(0))
    extent = max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1
    assert abs(extent - 256 / 1.2) <= 4


# Synthetic inputs: formats, masks, times -----------------------------------------------------
def test_frame_folder_keying_matches_truth_and_stride(tmp_path):
    frames, truth = blob_clip(frames=10)
    folder = write_pngs(tmp_path / "frames", frames)
    out = ingest(folder, tmp_path / "ds", IngestOptions(stride=2, crop="off", **SMALL))
    dataset = load_dataset(out)
    assert [e["source_index"] for e in dataset.manifest["frames"]] == [0, 2, 4, 6, 8]
    assert np.allclose(dataset.times, [0, 0.25, 0.5, 0.75, 1.0])
    for mask, true in zip(dataset.masks, truth[::2]):
        assert iou(mask >= 0.5, true) >= 0.95
    # Natural sort: frame10 after frame9, not after frame1.
    write_pngs(tmp_path / "eleven", np.concatenate([frames, frames[:1]]))
    dataset = load_dataset(ingest(tmp_path / "eleven", tmp_path / "ds11",
                                  IngestOptions(crop="off", **SMALL)))
    assert dataset.manifest["source"]["files"][-2:] == ["frame9.png", "frame10.png"]


def test_max_frames_picks_evenly_spaced_frames(tmp_path):
    frames, _ = blob_clip(frames=9, step=2.0)
    folder = write_pngs(tmp_path / "frames", frames)
    dataset = load_dataset(ingest(folder, tmp_path / "ds", IngestOptions(max_frames=3, **SMALL)))
    assert [e["source_index"] for e in dataset.manifest["frames"]] == [0, 4, 8]


def test_max_frames_keeps_the_last_frame_of_a_video_shorter_than_declared(tmp_path, monkeypatch):
    """A container can declare more frames than it decodes (an edit list trimming samples):
    the evenly spaced pick's last index then never came and the clip lost its end."""
    import recon4d.data.readers as readers

    frames, _ = blob_clip(frames=10, step=2.0)
    video = write_mp4(tmp_path / "clip.mp4", frames)
    whole = readers.iterate_video

    def two_short(path):                       # decodes 8 of the 10 declared frames
        for index, item in enumerate(whole(path)):
            if index < 8:
                yield item

    monkeypatch.setattr(readers, "iterate_video", two_short)
    clip = readers.read_video(video, 1, 3, 4096)
    assert clip.source_indices[0] == 0 and clip.source_indices[-1] == 7
    assert len(clip.source_indices) == 3 and clip.frames.shape[0] == 3


def test_max_frames_picks_evenly_from_an_mp4_with_an_edit_list(tmp_path):
    """20 frames encoded, the first 6 hidden by an edit list (negative timestamps, as a cut
    made with -c copy leaves): 14 play. The pick came from the declared 20, so --max-frames 5
    kept 4 frames and 10 kept 7, unevenly."""
    import av

    path = tmp_path / "trimmed.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width = stream.height = 64
        stream.pix_fmt = "yuv420p"
        stream.options = {"bf": "0"}
        for k in range(20):
            image = np.full((64, 64, 3), 255, np.uint8)
            image[20:40, 2 + 2 * k:8 + 2 * k] = 0
            frame = av.VideoFrame.from_ndarray(image, "rgb24")
            frame.pts = k - 6
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    with av.open(str(path)) as container:
        assert sum(1 for _ in container.decode(video=0)) == 14
    for count, expected in ((5, [0, 3, 6, 10, 13]), (10, [0, 1, 3, 4, 6, 7, 9, 10, 12, 13])):
        clip = read_input(path, 1, count)
        assert list(clip.source_indices) == expected, count


def test_subsampled_video_decodes_to_the_exact_bt601_colour(clips_dir):
    """wave_hello is yuv420p with a near-white background (Y 234, U = V = 127). swscale's fast
    path rounded it to (251, 253, 250); BT.601 limited range gives (252.2, 255, 251.8)."""
    import av

    with av.open(str(clips_dir / "wave_hello.mp4")) as container:
        first = next(container.decode(video=0))
        assert first.format.name == "yuv420p"
        planar = first.to_ndarray().astype(np.float64)   # Y rows, then U and V at half size
    height, width = first.height, first.width
    quarter = (height // 2) * (width // 2)
    chroma = planar[height:].reshape(-1)
    y = planar[:16, :16]
    u = np.repeat(np.repeat(chroma[:quarter].reshape(height // 2, width // 2)[:8, :8], 2, 0), 2, 1)
    v = np.repeat(np.repeat(chroma[quarter:2 * quarter].reshape(height // 2, width // 2)[:8, :8],
                            2, 0), 2, 1)
    luma = 1.164 * (y - 16)
    exact = np.stack([luma + 1.596 * (v - 128), luma - 0.392 * (u - 128) - 0.813 * (v - 128),
                      luma + 2.017 * (u - 128)], -1).clip(0, 255)
    clip = read_input(clips_dir / "wave_hello.mp4", 1, 2)
    read = clip.frames[0, :16, :16].astype(np.float64)
    assert np.abs(read.mean((0, 1)) - exact.mean((0, 1))).max() < 0.75, (read.mean((0, 1)),
                                                                          exact.mean((0, 1)))


def test_downscaled_rgba_edges_keep_their_colour(tmp_path):
    """RGB and alpha were area-resized apart, so the black under transparent pixels leaked
    into a half-covered edge pixel: a red object's edge composited (255, 127, 127) over white
    was read (191, 127, 127) before compositing, a dark fringe."""
    folder = tmp_path / "rgba"
    folder.mkdir()
    for k in range(2):
        image = np.zeros((200, 200, 4), np.uint8)           # transparent pixels stored black
        image[50:150, 50:101] = (255, 0, 0, 255)            # right edge at an odd column
        Image.fromarray(image, "RGBA").save(folder / f"{k:03d}.png")
    clip = read_input(folder, 1, None, 100)
    assert clip.frames.shape[1:3] == (100, 100)
    edge = clip.frames[0, 50, 50].astype(int)
    assert clip.alpha[0][50, 50] == 128
    np.testing.assert_array_equal(edge, [255, 0, 0])        # the colour under the coverage


def test_video_times_follow_container_timestamps(tmp_path):
    frames, _ = blob_clip(frames=5)
    video = write_mp4(tmp_path / "vfr.mp4", frames, fps=10, pts=[0, 1, 2, 4, 8])
    dataset = load_dataset(ingest(video, tmp_path / "ds", IngestOptions(**SMALL)))
    assert dataset.manifest["extras"]["time_from"] == "timestamps"
    assert np.allclose(dataset.times, [0, 0.125, 0.25, 0.5, 1.0], atol=1e-6)


@pytest.mark.parametrize("suffix, codec", [(".webm", "libvpx-vp9"), (".mov", "libx264"),
                                           (".mkv", "mpeg4")])
def test_other_containers(tmp_path, suffix, codec):
    frames, truth = blob_clip(frames=4)
    video = write_mp4(tmp_path / f"clip{suffix}", frames, codec=codec)
    dataset = load_dataset(ingest(video, tmp_path / "ds", IngestOptions(crop="off", **SMALL)))
    assert dataset.num_frames == 4 and dataset.manifest["source"]["type"] == "video"
    assert min(iou(m >= 0.5, t) for m, t in zip(dataset.masks, truth)) >= 0.9


def test_gif_times_follow_frame_durations(tmp_path):
    frames, truth = blob_clip(frames=4, noise=0.0)
    pictures = [Image.fromarray(f) for f in frames]
    gif = tmp_path / "clip.gif"
    pictures[0].save(gif, save_all=True, append_images=pictures[1:], duration=[100, 100, 200, 100],
                     loop=0)
    dataset = load_dataset(ingest(gif, tmp_path / "ds", IngestOptions(crop="off", **SMALL)))
    assert np.allclose(dataset.times, [0, 0.25, 0.5, 1.0], atol=1e-6)
    assert dataset.manifest["source"]["type"] == "animation"
    assert iou(dataset.masks[0] >= 0.5, truth[0]) >= 0.9
    # Its playback rate is the durations' average: 4 frames in 0.5 s (it had none: 24 fps).
    assert dataset.fps == pytest.approx(8.0)


def test_given_mask_folder_and_mask_video(tmp_path):
    frames, truth = blob_clip(frames=6)
    folder = write_pngs(tmp_path / "frames", frames)
    # Deliberately different from what keying would give: the given masks must win.
    given = np.zeros_like(truth)
    given[:, 10:40, 12:30] = True
    masks = write_pngs(tmp_path / "masks", (given * 255).astype(np.uint8), prefix="m")
    dataset = load_dataset(ingest(folder, tmp_path / "ds", IngestOptions(
        masks=masks, crop="off", **SMALL)))
    assert dataset.manifest["masks_from"] == "given"
    assert np.array_equal(dataset.masks >= 0.5, given)
    video = write_mp4(tmp_path / "masks.mp4", np.repeat((truth * 255).astype(np.uint8)[..., None],
                                                        3, axis=-1))
    dataset = load_dataset(ingest(folder, tmp_path / "ds2", IngestOptions(
        masks=video, crop="off", **SMALL)))
    assert dataset.manifest["masks_from"] == "given"
    assert min(iou(m >= 0.5, t) for m, t in zip(dataset.masks, truth)) >= 0.97


# (degrees, hflip, vflip) written by PyAV -> (counter-clockwise quarter turns, then rows reversed)
# that show the frame as ffmpeg 9's autorotate does: read off `ffmpeg -i clip.mp4 frame.png`
# (imageio-ffmpeg's binary) for each case when this table was made. PyAV's own `frame.rotation`
# gives -180 for a plain left-right mirror, which a rotation alone would turn upside down.
DISPLAY_CASES = {
    (90, False, False): (1, False),   # portrait phone video
    (-90, False, False): (3, False),
    (180, False, False): (2, False),
    (0, True, False): (2, True),      # front camera, mirrored left to right
    (0, False, True): (0, True),
    (90, True, False): (3, True),
    (90, False, True): (1, True),
}


@pytest.mark.parametrize("rotation, hflip, vflip", list(DISPLAY_CASES))
def test_video_display_matrix_shows_frames_and_mask_videos_as_players_do(
        tmp_path, rotation, hflip, vflip):
    """A phone's portrait or mirrored video: plain frames plus a display matrix, which decoding
    ignores. Frames and a mask video with the same matrix come out as shown and aligned."""
    from recon4d.data.display_matrix import DisplayOrientation

    turns, flip = DISPLAY_CASES[(rotation, hflip, vflip)]

    def shown(array):  # (N, H, W[, C]) stored -> as displayed
        array = np.rot90(array, turns, axes=(1, 2))
        return array[:, ::-1] if flip else array

    frames, truth = blob_clip(frames=6)
    video = write_mp4(tmp_path / "turned.mp4", frames, rotation=rotation, hflip=hflip,
                      vflip=vflip)
    clip = read_input(video)
    assert clip.source["display_rotation_deg"] == 90 * turns
    assert clip.source["display_flip_vertical"] is flip
    assert clip.source["display"] == DisplayOrientation(turns, flip).describe() != "as stored"
    error_as_shown = np.abs(clip.frames.astype(float) - shown(frames)).mean()
    error_as_stored = np.abs(clip.frames.astype(float) - frames).mean()
    assert error_as_shown < 3.0
    assert error_as_stored > error_as_shown + 4.0  # the matrix matters
    mask_video = write_mp4(tmp_path / "masks.mp4", np.repeat(
        (truth * 255).astype(np.uint8)[..., None], 3, axis=-1), rotation=rotation,
        hflip=hflip, vflip=vflip)
    dataset = load_dataset(ingest(video, tmp_path / "ds", IngestOptions(
        masks=mask_video, crop="off", **SMALL)))
    assert min(iou(m >= 0.5, t) for m, t in zip(dataset.masks, shown(truth))) >= 0.97


def test_display_matrix_values_give_the_orientation_and_its_array_operations():
    """The (a, b, c, d) entries PyAV wrote for each case above (read off the clips' side data
    when the table was made), in 16.16 fixed point, give the same orientations; `apply` moves
    pixels that way, and a degenerate matrix shows the frame as stored."""
    from recon4d.data.display_matrix import DisplayOrientation, orientation_from_matrix

    written = {(90, False, False): (0, -1, 1, 0), (-90, False, False): (0, 1, -1, 0),
               (180, False, False): (-1, 0, 0, -1), (0, True, False): (-1, 0, 0, 1),
               (0, False, True): (1, 0, 0, -1), (90, True, False): (0, -1, -1, 0),
               (90, False, True): (0, 1, 1, 0)}
    image = np.arange(12).reshape(3, 4)
    for case, (a, b, c, d) in written.items():
        turns, flip = DISPLAY_CASES[case]
        one = 1 << 16
        orientation = orientation_from_matrix([a * one, b * one, 0, c * one, d * one, 0, 0, 0,
                                               1 << 30])
        assert (orientation.turns, orientation.flip_vertical) == (turns, flip), case
        expected = np.rot90(image, turns)
        assert np.array_equal(orientation.apply(image), expected[::-1] if flip else expected)
    assert orientation_from_matrix([0] * 9).is_identity
    assert DisplayOrientation(2, True).describe() == "mirrored left to right"
    assert DisplayOrientation(1, False).describe() == "turned 90 degrees"


def test_grabcut_tightens_loose_given_masks(tmp_path):
    import cv2

    frames, truth = blob_clip(frames=4)
    folder = write_pngs(tmp_path / "frames", frames)
    kernel = np.ones((5, 5), np.uint8)
    loose = np.stack([cv2.dilate(t.astype(np.uint8), kernel) for t in truth]).astype(bool)
    masks = write_pngs(tmp_path / "masks", (loose * 255).astype(np.uint8), prefix="m")
    dataset = load_dataset(ingest(folder, tmp_path / "ds", IngestOptions(
        masks=masks, crop="off", grabcut=True, **SMALL)))
    assert dataset.manifest["masks_from"] == "grabcut"
    assert dataset.manifest["extras"]["masks"]["refined_from"] == "given"
    for refined, before, true in zip(dataset.masks, loose, truth):
        assert iou(refined >= 0.5, true) >= 0.9
        assert iou(refined >= 0.5, true) > iou(before, true) + 0.1


def test_mask_jump_is_reported(tmp_path, capsys):
    frames, _ = blob_clip(frames=6)
    # Frame 3 loses most of the object, as a keying failure or a broken generated frame would.
    frames[3, :, 20:] = np.asarray(BG, np.uint8)
    folder = write_pngs(tmp_path / "frames", frames)
    assert main(["ingest", str(folder), "--out", str(tmp_path / "ds"), "--resolution", "64",
                 "--no-flow"]) == 0
    assert "mask area jumps at frame(s) 3" in capsys.readouterr().err
    manifest = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    assert manifest["extras"]["mask_jumps"] == [3]


def test_object_running_off_the_frame_edge_is_reported(tmp_path, capsys):
    """A subject leaving the picture (feet, a perch) gets one warning naming the side and how
    many frames; a subject inside the frame gets none."""
    frames, truth = blob_clip(frames=6, step=9.0)   # moves right, out through the right edge
    cut = [i for i in range(6) if truth[i, :, -2:].sum() > 0.01 * truth.shape[1]]
    assert 0 < len(cut) < 6 and not truth[:, :, :2].any()  # the clip is as the test needs
    folder = write_pngs(tmp_path / "frames", frames)
    assert main(["ingest", str(folder), "--out", str(tmp_path / "ds"), "--resolution", "64",
                 "--no-flow"]) == 0
    expected = f"runs off the frame's edge: right ({len(cut)} of 6 frames);"
    assert expected in capsys.readouterr().err
    manifest = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    assert any(expected in w for w in manifest["extras"]["warnings"])
    assert manifest["extras"]["edge_cuts"] == {"right": cut}

    inside, _ = blob_clip(frames=6)
    assert main(["ingest", str(write_pngs(tmp_path / "inside", inside)), "--out",
                 str(tmp_path / "ds2"), "--resolution", "64", "--no-flow"]) == 0
    assert "frame's edge" not in capsys.readouterr().err
    assert json.loads((tmp_path / "ds2" / "manifest.json").read_text())["extras"]["edge_cuts"] == {}


def test_dis_flow_recovers_a_known_translation(tmp_path):
    frames, truth = blob_clip(frames=4, size=96, step=3.0, shift_y=1.0, noise=0.0)
    folder = write_pngs(tmp_path / "frames", frames)
    dataset = load_dataset(ingest(folder, tmp_path / "ds", IngestOptions(
        crop="off", resolution=96, flow=True)))
    forward, backward = dataset.load_flow()
    assert forward.shape == (3, 96, 96, 2)
    for i in range(3):
        core = truth[i] & truth[i + 1]
        assert np.allclose(np.median(forward[i][core], axis=0), [3.0, 1.0], atol=0.35)
        core_next = truth[i + 1] & truth[i]
        assert np.allclose(np.median(backward[i][core_next], axis=0), [-3.0, -1.0], atol=0.35)


def test_midpoint_frame_predicts_the_frame_between_two_moving_frames():
    frames, _ = blob_clip(frames=3, size=96, step=4.0, shift_y=2.0, noise=0.0)
    before, middle, after = (f.astype(np.float32) / 255.0 for f in frames)
    predicted = midpoint_frame(before, after)
    assert predicted.shape == middle.shape and predicted.dtype == np.float32
    flow_psnr = psnr(predicted, middle)
    blend_psnr = psnr(0.5 * (before + after), middle)
    # Following the flow puts the stripes where they are; a cross-fade ghosts them.
    assert flow_psnr > blend_psnr + 6.0, (flow_psnr, blend_psnr)
    assert flow_psnr > 28.0
    with pytest.raises(ValueError, match="frames"):
        midpoint_frame(before, after[:32])


def test_midpoint_frame_on_a_real_clip_beats_a_cross_fade(clips_dir, tmp_path):
    """On the robot clip (all 21 frames: smooth motion) the flow midpoint of frames i-1, i+1
    predicts frame i better than their average on most frames (median gain about 2.8 dB)."""
    dataset = load_dataset(ingest(clips_dir / "green_robot.mp4", tmp_path / "robot",
                                  IngestOptions(resolution=128, flow=False)))
    gains = []
    for i in range(1, dataset.num_frames - 1):
        before, target, after = (composite(dataset.frames[k], dataset.masks[k])
                                 for k in (i - 1, i, i + 1))
        gains.append(psnr(midpoint_frame(before, after), target)
                     - psnr(0.5 * (before + after), target))
    assert np.median(gains) > 1.0, gains


# Cameras -------------------------------------------------------------------------------------
def _project(viewmat, K, point):
    cam = viewmat[:3, :3] @ point + viewmat[:3, 3]
    uvw = K @ cam
    return uvw[:2] / uvw[2], cam[2]


def test_fixed_camera_puts_the_object_centre_at_the_image_centre(tmp_path):
    frames, _ = blob_clip(frames=3)
    folder = write_pngs(tmp_path / "frames", frames)
    dataset = load_dataset(ingest(folder, tmp_path / "ds", IngestOptions(fov_deg=50.0, **SMALL)))
    cams = dataset.cameras
    params = cams.params
    assert np.allclose(cams.viewmats, np.eye(4))
    uv, depth = _project(cams.viewmats[0], cams.Ks[0], np.asarray(params["object_center"]))
    assert np.allclose(uv, [32, 32]) and np.isclose(depth, params["distance"])
    # A point at the edge of the field of view lands on the image border.
    edge = np.array([params["distance"] * np.tan(np.radians(25.0)), 0.0, params["distance"]])
    assert np.allclose(_project(cams.viewmats[0], cams.Ks[0], edge)[0], [64, 32])


def test_orbit_cameras_circle_the_object(tmp_path):
    frames, _ = blob_clip(frames=5)
    folder = write_pngs(tmp_path / "frames", frames)
    out = tmp_path / "ds"
    assert main(["ingest", str(folder), "--out", str(out), "--camera", "orbit", "--sweep-deg",
                 "90", "--elevation-deg", "30", "--distance", "3", "--resolution", "64",
                 "--no-flow", "--quiet"]) == 0
    cams = load_dataset(out).cameras
    assert cams.mode == "orbit"
    centres = []
    for viewmat, K in zip(cams.viewmats, cams.Ks):
        rotation = viewmat[:3, :3]
        assert np.allclose(rotation @ rotation.T, np.eye(3), atol=1e-9)
        assert np.isclose(np.linalg.det(rotation), 1.0)
        uv, depth = _project(viewmat, K, np.zeros(3))
        assert np.allclose(uv, [32, 32]) and np.isclose(depth, 3.0)
        centres.append(-rotation.T @ viewmat[:3, 3])
    centres = np.asarray(centres)
    assert np.allclose(np.linalg.norm(centres, axis=1), 3.0)
    assert np.allclose(centres[:, 1], -3.0 * np.sin(np.radians(30)))  # above: up is -y
    horizontal = centres[:, [0, 2]]
    angles = np.degrees(np.unwrap(np.arctan2(horizontal[:, 0], -horizontal[:, 1])))
    assert np.allclose(angles - angles[0], [0, 22.5, 45, 67.5, 90])  # ccw: towards +x first


def test_opengl_camera_conversion_known_pose():
    from recon4d.data.cameras import opengl_c2w_to_viewmat, viewmat_to_opengl_c2w

    c2w = np.eye(4)
    c2w[:3, 3] = [0.0, 0.0, 3.0]   # OpenGL: at +3 z, looking down -z at the origin, y up
    viewmat = opengl_c2w_to_viewmat(c2w)
    assert np.allclose(viewmat @ [0, 0, 0, 1], [0, 0, 3, 1])      # in front, depth 3
    assert (viewmat @ [1, 0, 0, 1])[0] > 0                         # world right -> image right
    assert (viewmat @ [0, 1, 0, 1])[1] < 0                         # world up -> image up (-y)
    assert np.allclose(viewmat_to_opengl_c2w(viewmat), c2w)


# transforms.json -----------------------------------------------------------------------------
def test_transforms_json_round_trip(tmp_path):
    frames, _ = blob_clip(frames=6)
    folder = write_pngs(tmp_path / "frames", frames)
    first = load_dataset(ingest(folder, tmp_path / "ds", IngestOptions(
        camera="orbit", sweep_deg=120, elevation_deg=20, **SMALL)))
    assert main(["ingest", str(first.root), "--out", str(tmp_path / "ns"), "--to", "nerfstudio",
                 "--quiet"]) == 0
    json_path = tmp_path / "ns" / "transforms.json"
    meta = json.loads(json_path.read_text())
    assert meta["frames"][0]["file_path"] == "images/frame_00000.png"
    second = load_dataset(ingest(json_path, tmp_path / "ds2", IngestOptions(**SMALL)),
                          verify_hashes=True)
    assert second.cameras.mode == "transforms"
    assert np.abs(second.cameras.viewmats - first.cameras.viewmats).max() < 1e-6
    assert np.abs(second.cameras.Ks - first.cameras.Ks).max() < 1e-6
    assert np.array_equal(second.frames, first.frames)
    assert np.array_equal(second.masks, first.masks)
    assert np.allclose(second.times, first.times, atol=1e-6)
    assert second.manifest["masks_from"] == "given"


def test_transforms_json_blender_style_intrinsics_and_padding(tmp_path):
    """camera_angle_x, extension-less paths, a non-square image padded to square."""
    frames, _ = blob_clip(frames=3)
    frames = frames[:, 8:56]                       # 64 wide, 48 high
    write_pngs(tmp_path / "ns" / "train", frames, prefix="r_")
    angle = np.radians(60.0)
    c2w = np.eye(4)
    c2w[:3, 3] = [0.0, 0.0, 4.0]
    meta = {"camera_angle_x": angle,
            "frames": [{"file_path": f"./train/r_{i}", "transform_matrix": c2w.tolist()}
                       for i in range(3)]}
    (tmp_path / "ns" / "transforms.json").write_text(json.dumps(meta))
    dataset = load_dataset(ingest(tmp_path / "ns", tmp_path / "ds", IngestOptions(**SMALL)))
    K = dataset.cameras.Ks[0]
    focal = 32.0 / np.tan(angle / 2)
    assert np.allclose(K, [[focal, 0, 32], [0, focal, 24 + 8], [0, 0, 1]])
    assert np.allclose(dataset.times, [0, 0.5, 1])
    # Padding rows (8 above, 8 below) are background colour with an empty mask.
    assert (dataset.masks[:, :8] == 0).all() and (dataset.masks[:, -8:] == 0).all()
    assert np.array_equal((dataset.frames[:, 8:56] * 255).round().astype(np.uint8), frames)
    # Intrinsics stated for a 128x96 original while the images are a half-size copy.
    meta = {"fl_x": 100.0, "fl_y": 90.0, "cx": 60.0, "cy": 50.0, "w": 128, "h": 96,
            "frames": meta["frames"]}
    (tmp_path / "ns" / "transforms.json").write_text(json.dumps(meta))
    dataset = load_dataset(ingest(tmp_path / "ns", tmp_path / "ds2", IngestOptions(**SMALL)))
    assert np.allclose(dataset.cameras.Ks[0], [[50, 0, 30], [0, 45, 25 + 8], [0, 0, 1]])


# Python entry points -------------------------------------------------------------------------
def test_ensure_dataset_passes_datasets_through_and_reuses_same_input(tmp_path):
    frames, _ = blob_clip(frames=3)
    folder = write_pngs(tmp_path / "frames", frames)
    options = IngestOptions(**SMALL)
    out = ensure_dataset(folder, tmp_path / "run" / "dataset", options)
    assert out == tmp_path / "run" / "dataset"
    stamp = (out / "manifest.json").stat().st_mtime_ns
    assert ensure_dataset(out, tmp_path / "elsewhere", options) == out
    assert not (tmp_path / "elsewhere").exists()
    assert ensure_dataset(folder, out, options) == out             # resumed: not re-ingested
    assert (out / "manifest.json").stat().st_mtime_ns == stamp


def test_ensure_dataset_does_not_reuse_a_dataset_whose_masks_changed(tmp_path):
    """The reuse check hashed the frames and the options only: masks rewritten in place were
    ignored and the old dataset was fitted."""
    frames, truth = blob_clip(frames=3)
    folder = write_pngs(tmp_path / "frames", frames)
    masks = write_pngs(tmp_path / "masks", (truth * 255).astype(np.uint8))
    options = IngestOptions(**SMALL, masks=masks)
    out = ensure_dataset(folder, tmp_path / "run" / "dataset", options)
    assert ensure_dataset(folder, out, options) == out                # unchanged: reused
    write_pngs(masks, (np.roll(truth, 5, axis=2) * 255).astype(np.uint8))
    with pytest.raises(UserError, match="exists"):
        ensure_dataset(folder, out, options)                           # changed: not reused


def test_mask_cleanup_fills_small_holes_keeps_large_ones_and_drops_specks():
    from recon4d.data.masks import clean_mask

    ys, xs = np.mgrid[0:96, 0:96]
    radius = np.hypot(xs - 40, ys - 48)
    ring = (radius <= 30) & (radius > 14)            # a big enclosed hole: background, kept
    blob = ((xs - 80) ** 2 + (ys - 20) ** 2) <= 64   # a second part, small but not a speck
    body = ring | blob
    holed = body.copy()
    holed[26:28, 40:42] = False                      # a 4-pixel hole inside the ring: filled
    speck = holed.copy()
    speck[90, 5] = True                              # a lone pixel of noise: removed
    cleaned = clean_mask(speck)
    assert np.array_equal(cleaned, body)
    assert not cleaned[48, 40]                       # the ring's hole stays open


def test_video_straight_to_nerfstudio_leaves_no_scratch(tmp_path):
    from recon4d.data.nerfstudio import read_transforms

    frames, _ = blob_clip(frames=4)
    video = write_mp4(tmp_path / "clip.mp4", frames)
    assert main(["ingest", str(video), "--out", str(tmp_path / "ns"), "--to", "nerfstudio",
                 "--resolution", "64", "--no-flow", "--quiet"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4", "ns"]
    clip = read_transforms(tmp_path / "ns" / "transforms.json")
    assert clip.num_frames == 4 and clip.masks is not None
    assert clip.frames.shape[1:3] == (64, 64)


def test_keying_follows_a_drifting_background(tmp_path):
    """Generated clips drift in exposure: each frame is keyed against its own border colour, so
    the drift neither leaks into the masks nor inflates the tolerance (which would eat the pale
    parts of an object)."""
    frames, truth = blob_clip(frames=6)
    pale = np.where(truth[..., None], 0.25 * frames + 0.75 * 215.0, frames)
    drift = np.linspace(-30.0, 3.0, 6)[:, None, None, None] * ~truth[..., None]
    frames = np.clip(pale + drift, 0, 255).astype(np.uint8)
    folder = write_pngs(tmp_path / "frames", frames)
    dataset = load_dataset(ingest(folder, tmp_path / "ds", IngestOptions(crop="off", **SMALL)))
    assert min(iou(m >= 0.5, t) for m, t in zip(dataset.masks, truth)) >= 0.95
    assert dataset.manifest["extras"]["masks"]["key_tolerance"] < 0.1


@pytest.mark.parametrize("alpha", [False, True])
def test_ingest_memory_stays_near_the_clip_size(tmp_path, alpha):
    """Peak traced memory of an ingest stays under 2.5x the decoded clip (frames + alpha),
    for keyed and RGBA inputs. Whole-clip float copies (8-byte mask areas, a float RGBA
    composite) took a 4K clip to 4x its size, past what a 24 GB machine holds."""
    import tracemalloc

    from recon4d.data.ingest import ingest
    from recon4d.data.options import IngestOptions

    frames, masks = blob_clip(frames=12, size=768, step=12.0, noise=0.0)
    if alpha:
        images = [np.dstack([f, np.where(m, 255, 0).astype(np.uint8)]) for f, m in zip(frames, masks)]
    else:
        images = list(frames)
    folder = write_pngs(tmp_path / "frames", images)
    clip_bytes = sum(image.nbytes for image in images)
    tracemalloc.start()
    try:
        ingest(folder, tmp_path / "out", IngestOptions(resolution=64, flow=False))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert load_dataset(tmp_path / "out").num_frames == 12
    assert peak < 2.5 * clip_bytes, f"peak {peak / 1e6:.0f} MB for a {clip_bytes / 1e6:.0f} MB clip"


@pytest.mark.parametrize("edit, message", [
    (lambda m: m["frames"][1].update(time=1.7), "frame times outside"),
    (lambda m: m["frames"][1].update(time="soon"), "numeric 'time'"),
    (lambda m: m.update(background=[1.0, 1.0]), "expected 3 numbers"),
])
def test_a_hand_edited_manifest_is_refused_with_one_line(tmp_path, edit, message):
    """Times beyond [0, 1] or a background without 3 values failed later, far from the cause."""
    frames, _ = blob_clip(frames=4)
    out = ingest(write_pngs(tmp_path / "frames", frames), tmp_path / "ds", IngestOptions(**SMALL))
    manifest = json.loads((out / "manifest.json").read_text())
    edit(manifest)
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match=message):
        load_dataset(out)
