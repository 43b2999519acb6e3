"""Read an ingest input into memory: video file, animated GIF/WebP, frame folder, mask folder/video.

Every reader returns a :class:`RawClip` of uint8 RGB frames at source resolution (downscaled only
when a side exceeds ``max_input_side``), the optional alpha channel, container timestamps and the
source frame numbers that were kept. nerfstudio ``transforms.json`` inputs are read by
:mod:`recon4d.data.nerfstudio` into the same structure. Anything unreadable becomes a
:class:`~recon4d.errors.UserError` naming the file and what to do.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional

import numpy as np

from recon4d.data.dataset import CameraSet
from recon4d.data.display_matrix import DisplayOrientation, frame_orientation
from recon4d.errors import UserError
from recon4d.utils import console

VIDEO_SUFFIXES = {".mp4", ".webm", ".mov", ".mkv", ".avi", ".m4v"}
ANIMATION_SUFFIXES = {".gif", ".webp", ".apng"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
# Decoded frames above this many bytes in memory are refused before we run out of RAM. An
# ingest peaks near 1.6x the decoded clip (docs/ingest.md), so 8 GB keeps it near 13 GB on the
# 24 GB machines recon4d targets; a 10-second 4K clip (6 GB decoded) fits.
MAX_CLIP_BYTES = 8 * 1024 ** 3
MIN_READ_SIDE = 1024
"""Longest side below which a clip too big for memory is not shrunk on reading (the error names
--stride and --max-frames instead): a subject filling a quarter of the frame still gives a
256-pixel crop. ``recon4d ingest`` raises it to 4x --resolution."""


@dataclass
class RawClip:
    """An input read into memory, before masks and normalisation.

    Attributes:
        frames: (F, H, W, 3) uint8 RGB.
        alpha: (F, H, W) uint8 alpha channel, or None when the input has none (or it is opaque).
        timestamps: (F,) float64 seconds from the container, or None.
        source_indices: F frame numbers in the source (after --stride / --max-frames).
        num_source_frames: frames in the source before selection.
        source: JSON-able description (path, type, sha256, fps, original size, ...).
        masks: (F, H, W) uint8 given masks (transforms.json ``mask_path``), or None.
        cameras: per-frame cameras in this clip's pixel coordinates (transforms.json), or None.
        times: (F,) given normalised times (transforms.json ``time``), or None.
        background: given background RGB in [0, 1], or None.
        scale: factor applied to the source pixels on reading (1.0 unless downscaled).
    """

    frames: np.ndarray
    alpha: Optional[np.ndarray]
    timestamps: Optional[np.ndarray]
    source_indices: list[int]
    num_source_frames: int
    source: dict
    masks: Optional[np.ndarray] = None
    cameras: Optional[CameraSet] = None
    times: Optional[np.ndarray] = None
    background: Optional[list[float]] = None
    scale: float = 1.0
    notes: list[str] = field(default_factory=list)

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])


# Frame selection -----------------------------------------------------------------------------
def select_indices(total: int, stride: int = 1, max_frames: int | None = None) -> list[int]:
    """Source frame numbers to keep: every ``stride``-th, then at most ``max_frames`` evenly spaced.

    Evenly spaced (not the first N) so a capped clip still covers the whole motion; the first
    and last kept frames are always included.
    """
    kept = list(range(0, total, max(1, stride)))
    if max_frames is not None and len(kept) > max_frames:
        picks = np.round(np.linspace(0, len(kept) - 1, max_frames)).astype(int)
        kept = [kept[i] for i in picks]
    return kept


# Hashing -------------------------------------------------------------------------------------
def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_files(paths: Iterable[Path], root: Path | None = None) -> str:
    """One hash over many files: the hash of their names (paths relative to ``root`` when
    given, for files in subfolders) and contents in order."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update((str(path.relative_to(root)) if root else path.name).encode("utf-8"))
        digest.update(bytes.fromhex(sha256_file(path)))
    return digest.hexdigest()


# Still images --------------------------------------------------------------------------------
def _png_bit_depth(path: Path) -> int | None:
    """Bit depth from a PNG's IHDR chunk (Pillow silently reduces 16-bit RGB to 8 bits)."""
    try:
        with open(path, "rb") as handle:
            header = handle.read(25)
    except OSError:
        return None
    if len(header) == 25 and header[:8] == b"\x89PNG\r\n\x1a\n":
        return header[24]
    return None


def image_to_arrays(image, what: str) -> tuple[np.ndarray, Optional[np.ndarray], Optional[str]]:
    """A PIL image to (RGB uint8 (H, W, 3), alpha uint8 (H, W) or None, conversion note or None).

    Greyscale, palette, 16-bit and other colour modes are converted; the note says which so the
    caller can warn once. Float images are refused: their range is unknown.
    """
    mode = image.mode
    note = None
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16-bit greyscale: Pillow's convert("RGB") clips at 255 instead of scaling.
        grey = np.asarray(image).astype(np.float64)
        grey = np.clip(grey / 257.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2), None, f"16-bit greyscale (mode {mode})"
    if mode == "F":
        raise UserError(f"{what} is a floating-point image (mode F) of unknown range: save the "
                        "frames as 8-bit RGB PNG or JPEG")
    if mode == "RGBA":
        array = np.asarray(image)
        return np.ascontiguousarray(array[..., :3]), _opaque_to_none(array[..., 3]), None
    # A PNG can make one colour transparent (tRNS colour key) in any mode, not only palettes.
    keyed = "transparency" in image.info
    if mode == "RGB" and not keyed:
        return np.asarray(image), None, None
    if mode == "RGB":
        note = "RGB with a transparent colour key"
        image = image.convert("RGBA")
    elif mode in ("P", "PA"):
        has_alpha = mode == "PA" or keyed
        note = f"palette (mode {mode})"
        image = image.convert("RGBA" if has_alpha else "RGB")
    elif mode in ("L", "LA", "1"):
        note = f"greyscale (mode {mode})"
        image = image.convert("RGBA" if mode == "LA" or keyed else "RGB")
    else:  # CMYK, YCbCr, LAB, HSV, RGBa, ...
        note = f"colour mode {mode}"
        image = image.convert("RGBA" if "A" in mode or "a" in mode else "RGB")
    array = np.asarray(image)
    if array.shape[-1] == 4:
        return np.ascontiguousarray(array[..., :3]), _opaque_to_none(array[..., 3]), note
    return array, None, note


def _opaque_to_none(alpha: np.ndarray) -> Optional[np.ndarray]:
    return None if alpha.min() == 255 else np.ascontiguousarray(alpha)


def open_image(path: Path, transpose: bool = True):
    """Open an image with Pillow; corrupt files become UserError.

    ``transpose`` applies the EXIF orientation (it returns a single-frame copy, so animations
    are opened without it).
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        image = Image.open(path)
        image.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise UserError(f"cannot read image '{path}' ({exc.__class__.__name__}): the file is "
                        "corrupt or not an image; replace or remove it") from exc
    if not transpose:
        return image
    return ImageOps.exif_transpose(image) or image


def limit_side(array: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    """Downscale (area filter) so the longer side is at most ``max_side``; returns (array, scale)."""
    height, width = array.shape[:2]
    longest = max(height, width)
    if longest <= max_side:
        return array, 1.0
    import cv2

    scale = max_side / longest
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(array, size, interpolation=cv2.INTER_AREA), scale


def _downscale_premultiplied(rgb: np.ndarray, alpha: np.ndarray, max_side: int
                             ) -> tuple[np.ndarray, np.ndarray]:
    """:func:`limit_side` of straight-alpha RGB (H, W, 3) and alpha (H, W), both uint8.

    Colour under transparent pixels is arbitrary (black in most RGBA exports): averaged on its
    own it leaked into the edge pixels, which then composited dark fringes. The colour is
    averaged weighted by alpha (premultiplied, then divided back)."""
    weight = alpha.astype(np.float32) / 255.0
    premultiplied = limit_side(rgb.astype(np.float32) * weight[..., None], max_side)[0]
    small_alpha = limit_side(weight, max_side)[0]
    colour = premultiplied / np.maximum(small_alpha, 1e-6)[..., None]
    return (np.clip(colour + 0.5, 0, 255).astype(np.uint8),
            np.clip(small_alpha * 255.0 + 0.5, 0, 255).astype(np.uint8))


def fitting_scale(count: int, width: int, height: int, limit: int | None = None) -> float:
    """Largest scale (at most 1) at which ``count`` RGB frames of width x height, resized with
    :func:`limit_side`, fit in ``limit`` bytes (default :data:`MAX_CLIP_BYTES`)."""
    limit = MAX_CLIP_BYTES if limit is None else limit
    need = count * width * height * 3
    if need <= limit:
        return 1.0
    return math.sqrt(limit / need) * 0.995  # room for the rounding of the resized sides


class FrameCollector:
    """Gathers frames of one size, applying the huge-frame downscale and the memory guard.

    ``expected`` (the number of frames that will be added, when the input declares it) lets a
    clip too big for memory be read smaller from its first frame on, down to ``min_side``, and
    the frames go straight into one preallocated array. Kept frames interleaved with each
    decoded frame's temporaries fragmented the heap: a 400-frame 4K video read at 8.5 GB peaked
    at 17 GB of RSS through a list of frames, 12 GB into one array.
    """

    def __init__(self, what: str, max_side: int, expected: int | None = None,
                 min_side: int = MIN_READ_SIDE):
        self.what = what
        self.max_side = max_side
        self.expected = expected
        self.min_side = min_side
        self.read_side = max_side
        self.frames: list[np.ndarray] = []
        self.alphas: list[Optional[np.ndarray]] = []
        self.scale = 1.0
        self.notes: list[str] = []
        self.original_size: tuple[int, int] | None = None
        self._buffer: np.ndarray | None = None  # (expected, H, W, 3) once the size is known
        self._buffer_ids: list[int] = []        # ids of the views of it in self.frames

    def _store(self, rgb: np.ndarray) -> np.ndarray:
        """Copy ``rgb`` into the preallocated array (a view of it), or keep it as it is."""
        if self.expected and self._buffer is None and not self.frames:
            self._buffer = np.empty((self.expected,) + rgb.shape, np.uint8)  # pages on first use
        filled = len(self._buffer_ids)
        if self._buffer is not None and filled < len(self._buffer) and \
                len(self.frames) == filled:
            self._buffer[filled] = rgb
            view = self._buffer[filled]
            self._buffer_ids.append(id(view))
            return view
        return np.ascontiguousarray(rgb, dtype=np.uint8)  # more frames than declared: a list

    def add(self, rgb: np.ndarray, alpha: Optional[np.ndarray], name: str,
            note: Optional[str] = None) -> None:
        size = (rgb.shape[1], rgb.shape[0])
        if self.original_size is None:
            self.original_size = size
            self._choose_read_size(rgb)
        elif size != self.original_size:
            first = self.original_size
            raise UserError(f"{name} is {size[0]}x{size[1]} but the first frame is "
                            f"{first[0]}x{first[1]}: all frames must have the same size; resize "
                            "or remove the odd ones")
        if self.scale != 1.0:
            if alpha is None:
                rgb = limit_side(rgb, self.read_side)[0]
            else:
                rgb, alpha = _downscale_premultiplied(rgb, alpha, self.read_side)
        if note and note not in self.notes:
            self.notes.append(note)
        self.frames.append(self._store(rgb))
        self.alphas.append(alpha)
        height, width = rgb.shape[:2]
        if len(self.frames) * height * width * 3 > MAX_CLIP_BYTES:
            raise UserError(f"{self.what} is too long to hold in memory at {width}x{height} "
                            f"(over {MAX_CLIP_BYTES // 1024 ** 3} GB after {len(self.frames)} "
                            "frames): pass --stride or --max-frames, or --max-input-side")

    def _choose_read_size(self, first: np.ndarray) -> None:
        """Set ``read_side`` and ``scale`` from the first frame: --max-input-side, then, for a
        clip whose declared length would not fit in memory, the size at which it does."""
        height, width = first.shape[:2]
        longest = max(width, height)
        self.read_side = min(longest, self.max_side)
        if self.read_side < longest:
            small = limit_side(first, self.read_side)[0]
            console.warn(f"{self.what} frames are {width}x{height}, larger than "
                         f"--max-input-side {self.max_side}: downscaled to "
                         f"{small.shape[1]}x{small.shape[0]} on reading")
        if self.expected:
            fit = fitting_scale(self.expected, width, height)
            fitting_side = int(longest * fit)
            if fitting_side < self.read_side:
                gigabytes = self.expected * width * height * 3 / 1024 ** 3
                limit = MAX_CLIP_BYTES / 1024 ** 3
                if fitting_side < self.min_side:
                    raise UserError(
                        f"{self.what} is {self.expected} frames of {width}x{height} "
                        f"({gigabytes:.1f} GB decoded), too long to hold in memory ({limit:.3g} "
                        f"GB) even at {self.min_side} px: pass --stride or --max-frames")
                self.read_side = fitting_side
                small = limit_side(first, fitting_side)[0]
                console.warn(f"{self.what} is {self.expected} frames of {width}x{height} "
                             f"({gigabytes:.1f} GB decoded, over the {limit:.3g} GB an ingest "
                             f"holds): frames are read at {small.shape[1]}x{small.shape[0]} "
                             "(pass --stride or --max-frames to keep their full size)")
        self.scale = self.read_side / longest

    def finish(self) -> tuple[np.ndarray, Optional[np.ndarray]]:
        # Copy into one array frame by frame, dropping each frame as it is copied: np.stack
        # would hold the list and the stack at once (twice the clip in memory at its peak).
        # Callers have checked for at least two frames (require_two_frames).
        count = len(self.frames)
        with_alpha = any(a is not None for a in self.alphas)
        # Every frame already in the preallocated array, in order (callers may have picked a
        # subset of the list since): then no copy.
        in_place = self._buffer is not None and [id(f) for f in self.frames] == self._buffer_ids
        frames = self._buffer[:count] if in_place else np.empty((count,) + self.frames[0].shape,
                                                                  np.uint8)
        self._buffer = None
        alpha = np.empty((count,) + self.frames[0].shape[:2], np.uint8) if with_alpha else None
        for i in range(count):
            if not in_place:
                frames[i] = self.frames[i]
            if alpha is not None:
                alpha[i] = 255 if self.alphas[i] is None else self.alphas[i]
            self.frames[i] = self.alphas[i] = None
        for note in self.notes:
            console.warn(f"{self.what} has {note} frames: converted to 8-bit RGB")
        return frames, alpha


def require_two_frames(count: int, what: str) -> None:
    if count == 0:
        raise UserError(f"{what} has no frames: check that it is the right file or folder")
    if count == 1:
        raise UserError(f"{what} has a single frame: a motion needs at least 2 frames; pass a "
                        "video, GIF or folder of frames")


# Frame folders -------------------------------------------------------------------------------
def list_images(folder: Path) -> list[Path]:
    """Image files directly in ``folder`` in natural order (frame2 before frame10)."""
    from natsort import natsorted

    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
             and not p.name.startswith(".")]
    return natsorted(files, key=lambda p: p.name)


def _refuse_recon4d_folders(folder: Path, has_images: bool) -> None:
    """A UserError when ``folder``, about to be read as frames, is a damaged dataset (its
    manifest.json no longer parses) or a run folder (its dataset is what to pass)."""
    from recon4d.data.dataset import is_dataset_dir
    from recon4d.utils.atomic import read_json

    manifest = folder / "manifest.json"
    if manifest.is_file():
        try:
            read_json(manifest)
        except ValueError as exc:
            raise UserError(f"{manifest} is not valid JSON: if '{folder}' is a recon4d dataset "
                            "it is damaged (ingest the input again); if it is a folder of "
                            "frames, move that file out of it") from exc
    if not has_images and (folder / "config.json").is_file() and is_dataset_dir(folder / "dataset"):
        raise UserError(f"'{folder}' is a recon4d run, not frames: pass its dataset, "
                        f"'{folder / 'dataset'}'")


def read_folder(folder: Path, stride: int, max_frames: int | None, max_side: int,
                min_side: int = MIN_READ_SIDE) -> RawClip:
    files = list_images(folder)
    _refuse_recon4d_folders(folder, has_images=bool(files))
    if not files:
        others = [p.name for p in folder.iterdir() if not p.name.startswith(".")][:3]
        hint = f" (found {', '.join(others)})" if others else " (it is empty)"
        raise UserError(f"folder '{folder}' has no frames: expected PNG or JPEG images{hint}")
    require_two_frames(len(files), f"folder '{folder}'")
    keep = select_indices(len(files), stride, max_frames)
    require_two_frames(len(keep), f"folder '{folder}' after --stride {stride}")
    collector = FrameCollector(f"folder '{folder}'", max_side, len(keep), min_side)
    for index in console.track(keep, description="reading frames"):
        path = files[index]
        image = open_image(path)
        rgb, alpha, note = image_to_arrays(image, f"frame '{path}'")
        if path.suffix.lower() == ".png" and _png_bit_depth(path) == 16 and note is None:
            note = "16-bit"
        collector.add(rgb, alpha, f"frame '{path.name}'", note)
    frames, alpha = collector.finish()
    source = {"path": str(folder.resolve()), "type": "frames", "num_files": len(files),
              "sha256": sha256_files(files), "original_size": list(collector.original_size),
              "files": [files[i].name for i in keep]}
    return RawClip(frames, alpha, None, keep, len(files), source, scale=collector.scale,
                   notes=collector.notes)


# Videos --------------------------------------------------------------------------------------
def _open_container(path: Path):
    import av

    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise UserError(f"cannot open video '{path}' ({exc.__class__.__name__}): the file is "
                        "corrupt or not a supported video (mp4, webm, mov, mkv)") from exc
    if not container.streams.video:
        container.close()
        raise UserError(f"'{path}' has no video stream: pass a video file with frames")
    return container


def _alpha_decoder(stream) -> str | None:
    """The libvpx decoder that keeps a WebM's alpha, or None. WebM stores VP8/VP9 alpha as a
    side stream (``alpha_mode`` 1) that FFmpeg's built-in vp8/vp9 decoders drop: decoded
    through them a transparent WebM reads as opaque yuv420p."""
    import av

    name = {"vp8": "libvpx", "vp9": "libvpx-vp9"}.get(stream.codec_context.name)
    if name is None or str(stream.metadata.get("alpha_mode", "")) != "1":
        return None
    return name if name in av.codecs_available else None


def _decode_with(decoder_name: str, container, stream) -> Iterable[object]:
    """Frames of ``stream`` decoded by the named decoder, with their time stamps."""
    import av

    decoder = av.CodecContext.create(decoder_name, "r")
    decoder.extradata = stream.codec_context.extradata
    for packet in container.demux(stream):
        for frame in decoder.decode(packet if packet.size else None):
            if frame.pts is not None:
                frame.time_base = stream.time_base
            yield frame


def iterate_video(path: Path) -> Iterable[tuple[object, float | None]]:
    """Yield (av.VideoFrame, time in seconds or None) for every decodable frame (with its
    alpha, for a transparent WebM: :func:`_alpha_decoder`)."""
    import av

    container = _open_container(path)
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    alpha_decoder = _alpha_decoder(stream)
    try:
        frames = (_decode_with(alpha_decoder, container, stream) if alpha_decoder
                  else container.decode(stream))
        for frame in frames:
            yield frame, frame.time
    except av.error.FFmpegError as exc:
        raise UserError(f"video '{path}' is corrupt ({exc.__class__.__name__} while decoding): "
                        "re-export or re-download it") from exc
    finally:
        container.close()


def frame_array(frame, pixel_format: str) -> np.ndarray:
    """``frame.to_ndarray(format=pixel_format)``, converted exactly from sub-sampled chroma.

    swscale's default path for 4:2:0 / 4:2:2 sources rounds down and skips the full chroma
    interpolation: a near-white background (Y 234, U = V = 127) came out (251, 253, 250)
    where BT.601 gives (252.2, 255, 251.8), 1-2 levels dark on every pixel. Accurate rounding
    with full chroma costs about 10 ms per 720x720 frame, so other formats keep the fast path.
    """
    components = getattr(getattr(frame, "format", None), "components", ())
    subsampled = any(getattr(c, "is_chroma", False) and (c.width < frame.width or
                                                          c.height < frame.height)
                     for c in components)
    if not subsampled:
        return frame.to_ndarray(format=pixel_format)
    try:
        from av.video.reformatter import Interpolation

        exact = Interpolation.BICUBIC | Interpolation.ACCURATE_RND | Interpolation.FULL_CHR_H_INT
        return frame.to_ndarray(format=pixel_format, interpolation=exact)
    except (ImportError, AttributeError, TypeError):  # a PyAV without these flags
        return frame.to_ndarray(format=pixel_format)


def _count_frames(container, stream) -> int:
    """The number of frames of ``stream`` in the open ``container``, from its packets (demuxed,
    not decoded); 0 when the container cannot tell."""
    import av

    try:
        return sum(1 for packet in container.demux(stream)
                   if packet.size and not getattr(packet, "is_discard", False))
    except av.error.FFmpegError:
        return 0


def upright_array(frame, pixel_format: str) -> np.ndarray:
    """:func:`frame_array` as its player shows it (display matrix applied: phones store
    portrait or mirrored video as plain frames plus that matrix), (H, W[, C])."""
    return frame_orientation(frame).apply(frame_array(frame, pixel_format))


def read_video(path: Path, stride: int, max_frames: int | None, max_side: int,
               min_side: int = MIN_READ_SIDE) -> RawClip:
    container = _open_container(path)
    stream = container.streams.video[0]
    declared = int(stream.frames or 0)
    fps = float(stream.average_rate) if stream.average_rate else None
    pix_fmt = stream.codec_context.pix_fmt or ""
    codec = stream.codec_context.name
    if _alpha_decoder(stream):
        pix_fmt = "yuva420p"   # the alpha side stream, which the stream's own decoder hides
    # An evenly spaced pick is taken from the frames the file really holds: an edit list (a
    # cut made with -c copy, a phone's trim) hides samples the declared count includes, and a
    # pick from that count came out short and uneven. Counting packets needs no decoding.
    held = _count_frames(container, stream) if max_frames is not None and declared > 0 else 0
    container.close()
    has_alpha = pix_fmt.startswith(("yuva", "rgba", "bgra", "argb", "abgr", "gbrap", "ya"))
    times: list[float | None] = []
    kept: list[int] = []
    # Without --max-frames a single streaming pass with --stride bounds memory; with it, an
    # evenly spaced pick needs the frame count, which containers usually declare.
    wanted = None
    if max_frames is not None and declared > 0:
        wanted = set(select_indices(held or declared, stride, max_frames))
    expected = len(wanted) if wanted is not None else -(-declared // stride) if declared else None
    collector = FrameCollector(f"video '{path}'", max_side, expected, min_side)
    total = 0
    orientation: DisplayOrientation | None = None  # read from the first kept frame

    def keep(index: int, frame, time) -> None:
        nonlocal orientation
        if orientation is None:  # the stream's matrix: read once, applied to every frame
            orientation = frame_orientation(frame)
            if not orientation.is_identity:
                console.info(f"video '{path.name}' is shown {orientation.describe()} (its display "
                             "matrix): frames are read as shown")
        if has_alpha:
            rgba = orientation.apply(frame_array(frame, "rgba"))
            rgb, alpha = np.ascontiguousarray(rgba[..., :3]), _opaque_to_none(rgba[..., 3])
        else:
            rgb, alpha = orientation.apply(frame_array(frame, "rgb24")), None
        collector.add(rgb, alpha, f"frame {index} of '{path.name}'")
        kept.append(index)
        times.append(time)

    last = None
    for index, (frame, time) in enumerate(console.track(iterate_video(path), total=declared or None,
                                                        description="decoding video")):
        total = index + 1
        last = (index, frame, time)
        take = (index in wanted) if wanted is not None else index % stride == 0
        if take:
            keep(index, frame, time)
    if wanted is not None and last is not None and max(wanted) >= total and kept[-1:] != [last[0]]:
        # Fewer frames decoded than the container declared (an edit list that trims samples):
        # the pick's last frame never came, so the clip's real last frame takes its place.
        keep(*last)
    require_two_frames(total, f"video '{path}'")
    if max_frames is not None and len(kept) > max_frames:  # count was not declared
        picks = select_indices(len(kept), 1, max_frames)
        collector.frames = [collector.frames[i] for i in picks]
        collector.alphas = [collector.alphas[i] for i in picks]
        kept = [kept[i] for i in picks]
        times = [times[i] for i in picks]
    require_two_frames(len(kept), f"video '{path}' after --stride {stride}")
    frames, alpha = collector.finish()
    stamps = None
    if all(t is not None for t in times):
        stamps = np.asarray(times, np.float64)
    source = {"path": str(path.resolve()), "type": "video", "sha256": sha256_file(path),
              "fps": fps, "num_source_frames": total, "codec": codec, "pix_fmt": pix_fmt,
              "original_size": list(collector.original_size),  # upright, as displayed
              "display": orientation.describe() if orientation else "as stored",
              "display_rotation_deg": orientation.rotation_deg if orientation else 0,
              "display_flip_vertical": bool(orientation and orientation.flip_vertical)}
    return RawClip(frames, alpha, stamps, kept, total, source, scale=collector.scale)


# Animated images (GIF, animated WebP/PNG) ----------------------------------------------------
def read_animation(path: Path, stride: int, max_frames: int | None, max_side: int,
                   min_side: int = MIN_READ_SIDE) -> RawClip:
    from PIL import ImageSequence

    image = open_image(path, transpose=False)
    count = int(getattr(image, "n_frames", 1))
    require_two_frames(count, f"'{path}'")
    keep = select_indices(count, stride, max_frames)
    require_two_frames(len(keep), f"'{path}' after --stride {stride}")
    keep_set = set(keep)
    collector = FrameCollector(f"'{path}'", max_side, len(keep), min_side)
    starts, clock = [], 0.0
    try:
        for index, frame in enumerate(ImageSequence.Iterator(image)):
            duration = frame.info.get("duration")
            if index in keep_set:
                # Pillow composes GIF frames (disposal) for us; RGBA keeps GIF transparency.
                rgb, alpha, _ = image_to_arrays(frame.convert("RGBA"), f"frame {index} of '{path}'")
                collector.add(rgb, alpha, f"frame {index} of '{path.name}'")
                starts.append(clock)
            clock += float(duration or 0.0) / 1000.0
    except (OSError, ValueError, EOFError) as exc:
        raise UserError(f"'{path}' is corrupt ({exc.__class__.__name__} at a frame): re-export "
                        "it") from exc
    frames, alpha = collector.finish()
    stamps = np.asarray(starts, np.float64) if clock > 0 else None
    source = {"path": str(path.resolve()), "type": "animation", "format": image.format,
              "sha256": sha256_file(path), "num_source_frames": count,
              # The average rate over the frame durations (None when they are not given).
              "fps": count / clock if clock > 0 else None,
              "original_size": list(collector.original_size)}
    return RawClip(frames, alpha, stamps, keep, count, source, scale=collector.scale)


# Masks ---------------------------------------------------------------------------------------
def mask_from_image(image) -> np.ndarray:
    """A mask image to uint8 (H, W): its alpha if it has a non-trivial one, else its luminance."""
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        return np.clip(np.asarray(image).astype(np.float64) / 257.0 + 0.5, 0, 255).astype(np.uint8)
    if mode == "F":
        return np.clip(np.asarray(image) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    if "A" in mode or (mode == "P" and "transparency" in image.info):
        rgba = np.asarray(image.convert("RGBA"))
        if rgba[..., 3].min() < 255:
            return np.ascontiguousarray(rgba[..., 3])
    return np.asarray(image.convert("L"))


def _frame_number(name: str) -> int | None:
    """The last run of digits in a file name's stem ('frame_0012.png' -> 12), or None."""
    runs = re.findall(r"\d+", Path(name).stem)
    return int(runs[-1]) if runs else None


def _check_mask_names(clip: RawClip, mask_files: list[Path], folder: Path) -> None:
    """Masks pair with frames by position; where the frames' names are numbered, the masks'
    must be too, at one constant offset (0- against 1-based numbering is fine). A stray file or
    a missing mask shifts every later pair by one frame, which the count alone does not show."""
    frame_names = clip.source.get("files")
    if not frame_names:
        return                                          # not a folder of frames
    frame_numbers = [_frame_number(n) for n in frame_names]
    if any(n is None for n in frame_numbers):
        return
    offsets = set()
    for name, index, number in zip(frame_names, clip.source_indices, frame_numbers):
        mask_number = _frame_number(mask_files[index].name)
        if mask_number is None:
            raise UserError(f"mask '{mask_files[index].name}' in '{folder}' has no frame number "
                            f"but pairs with frame '{name}': remove files that are not masks")
        offsets.add(mask_number - number)
        if len(offsets) > 1:
            raise UserError(f"mask '{mask_files[index].name}' pairs with frame '{name}', but "
                            "earlier masks and frames were numbered alike: a mask is missing or "
                            f"a stray file sits in '{folder}'; give one mask per frame, named "
                            "like the frames")


def read_masks(path: Path, clip: RawClip) -> np.ndarray:
    """Read given masks for ``clip``: one per source frame, the same selection and size.

    Args:
        path: a folder of mask images (natural order) or a mask video.
        clip: the frames they belong to.

    Returns:
        (F, H, W) uint8 masks for the kept frames, resized like the frames if those were
        downscaled on reading.
    """
    import cv2

    if not path.exists():
        raise UserError(f"mask path '{path}' does not exist: check --masks")
    height, width = clip.frames.shape[1:3]
    orig_w, orig_h = clip.source.get("original_size", [width, height])
    keep = set(clip.source_indices)
    masks: dict[int, np.ndarray] = {}

    def accept(index: int, mask: np.ndarray, name: str) -> None:
        if (mask.shape[1], mask.shape[0]) != (orig_w, orig_h):
            raise UserError(f"mask {name} is {mask.shape[1]}x{mask.shape[0]} but the frames are "
                            f"{orig_w}x{orig_h}: masks must match the frames' size")
        if (width, height) != (orig_w, orig_h):
            mask = cv2.resize(mask, (width, height), interpolation=cv2.INTER_AREA)
        masks[index] = mask

    if path.is_dir():
        files = list_images(path)
        count = len(files)
        if count != clip.num_source_frames:
            raise UserError(f"mask folder '{path}' has {count} images but the input has "
                            f"{clip.num_source_frames} frames: give one mask per frame")
        _check_mask_names(clip, files, path)
        for index in sorted(keep):
            accept(index, mask_from_image(open_image(files[index])),
                   f"'{files[index].name}'")
    elif path.suffix.lower() in VIDEO_SUFFIXES or path.suffix.lower() in ANIMATION_SUFFIXES:
        count = 0
        if path.suffix.lower() in ANIMATION_SUFFIXES:
            from PIL import ImageSequence

            frames_iter: Iterable = ((f, None) for f in
                                     ImageSequence.Iterator(open_image(path, transpose=False)))
            to_grey: Callable = mask_from_image
        else:
            frames_iter = iterate_video(path)
            to_grey = lambda f: upright_array(f, "gray")  # noqa: E731
        try:
            for index, (frame, _) in enumerate(frames_iter):
                count = index + 1
                if index in keep:
                    grey = to_grey(frame)
                    # Lossy mask videos smear 0 and 255: snap the near-binary ends back.
                    grey = np.where(grey < 8, 0, np.where(grey > 247, 255, grey)).astype(np.uint8)
                    accept(index, grey, f"frame {index} of '{path.name}'")
        except (OSError, EOFError, SyntaxError, ValueError) as exc:
            # PIL's decoders raise these for a cut or damaged GIF/APNG (iterate_video names a
            # damaged video itself, as a UserError, which passes through).
            raise UserError(f"mask animation '{path}' is damaged after {count} frames "
                            f"({exc.__class__.__name__}: {exc}): export the masks again") from exc
        if count != clip.num_source_frames:
            raise UserError(f"mask video '{path}' has {count} frames but the input has "
                            f"{clip.num_source_frames}: give one mask per frame")
    else:
        raise UserError(f"--masks '{path}' is neither a folder of images nor a video: pass a "
                        "mask folder or a mask video")
    return np.stack([masks[i] for i in clip.source_indices])


# Dispatch ------------------------------------------------------------------------------------
def input_kind(path: Path) -> str:
    """'video', 'animation', 'frames' or 'transforms' for an existing input path."""
    suffix = path.suffix.lower()
    if path.is_dir():
        if (path / "transforms.json").is_file():  # explicit metadata wins over loose images
            return "transforms"
        return "frames"
    if path.name.endswith(".json"):
        return "transforms"
    if suffix in VIDEO_SUFFIXES:
        return "video"
    if suffix in ANIMATION_SUFFIXES or suffix == ".png":
        if suffix == ".png" or suffix == ".webp":
            image = open_image(path, transpose=False)
            if int(getattr(image, "n_frames", 1)) < 2:
                require_two_frames(1, f"image '{path}'")
        return "animation"
    if suffix in IMAGE_SUFFIXES:
        require_two_frames(1, f"image '{path}'")
    raise UserError(f"unsupported input '{path}' (type '{suffix or 'none'}'): pass a video (mp4, "
                    "webm, mov, mkv), an animated GIF, a folder of frames or a transforms.json")


def read_input(path: Path, stride: int = 1, max_frames: int | None = None,
               max_side: int = 4096, min_side: int = MIN_READ_SIDE) -> RawClip:
    """Read any supported input (see :func:`input_kind`) into a :class:`RawClip`.

    A clip whose declared length would not fit in memory is read smaller, down to a longest
    side of ``min_side`` (videos, frame folders, animations; see :class:`FrameCollector`).
    """
    if not path.exists():
        raise UserError(f"input '{path}' does not exist: check the path")
    kind = input_kind(path)
    if kind == "transforms":
        from recon4d.data.nerfstudio import read_transforms

        json_path = path / "transforms.json" if path.is_dir() else path
        return read_transforms(json_path, stride, max_frames, max_side)
    if kind == "frames":
        return read_folder(path, stride, max_frames, max_side, min_side)
    if kind == "video":
        return read_video(path, stride, max_frames, max_side, min_side)
    return read_animation(path, stride, max_frames, max_side, min_side)
