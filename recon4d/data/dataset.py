"""The dataset directory: what ingest writes and the fit, eval, viewer and export read.

::

    DATASET/
      manifest.json      schema_version, source, sizes, frames (time, files, hashes), cameras,
                         masks_from, background, optional flow, free-form "extras"
      frames/00000.png   RGB uint8, H x W
      masks/00000.png    L uint8 (0..255 -> [0, 1]), H x W
      flow/forward.npz   optional, float16 (F-1, H, W, 2) pixel offsets frame i -> i+1
      flow/backward.npz  optional, float16 (F-1, H, W, 2) pixel offsets frame i+1 -> i
      depth/depth.npz    optional, float32 (F, H, W) user depth or disparity, 0 = none
                         (see recon4d.data.depth)
      contact_sheet.png  frames with mask overlays for a person to look at
      gt/                optional ground truth (synthetic scenes only; see recon4d.scenes)

Cameras are stored per frame as OpenCV world-to-camera 4x4 (``viewmats``) and 3x3 pixel
intrinsics (``Ks``); times are normalised to [0, 1] over the clip. The writer is atomic (a
temporary directory renamed into place) and the reader validates everything and raises a
:class:`~recon4d.errors.UserError` that says what is wrong.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from recon4d.errors import UserError
from recon4d.utils.atomic import atomic_directory, atomic_write_json, read_json

DATASET_SCHEMA_VERSION = 1
DATASET_KIND = "recon4d-dataset"
TEST_FRAME_RULE = "index % 4 == 2"


def is_test_frame(index: int) -> bool:
    """Held-out frames of the evaluation protocol: every 4th frame, index % 4 == 2."""
    return index % 4 == 2


def train_frame_indices(num_frames: int, all_frames: bool = False) -> list[int]:
    """Frames to fit: all but the held-out ones (index % 4 == 2) unless ``all_frames``."""
    return [i for i in range(num_frames) if all_frames or not is_test_frame(i)]


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _png_bytes(array: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", compress_level=4)
    return buffer.getvalue()


@dataclass
class CameraSet:
    """Per-frame cameras in numpy, as stored in the manifest.

    Attributes:
        viewmats: (F, 4, 4) float64 world-to-camera, OpenCV axes.
        Ks: (F, 3, 3) float64 pixel intrinsics.
        mode: how they were obtained: "fixed", "orbit", "transforms" or "synthetic".
        params: the options that produced them (fov, radius, sweep, ...), for the record.
    """

    viewmats: np.ndarray
    Ks: np.ndarray
    mode: str = "fixed"
    params: dict = field(default_factory=dict)

    def to_torch(self, width: int, height: int, device="cpu", dtype=None):
        """As a :class:`recon4d.render.types.Cameras` batch (float32 by default)."""
        import torch

        from recon4d.render.types import Cameras

        dtype = dtype or torch.float32
        return Cameras(torch.as_tensor(self.viewmats, dtype=dtype, device=device),
                       torch.as_tensor(self.Ks, dtype=dtype, device=device), int(width), int(height))


@dataclass
class Dataset:
    """A loaded dataset. Arrays are numpy; images float32 in [0, 1].

    Attributes:
        root: the dataset directory.
        frames: (F, H, W, 3) float32 RGB in [0, 1].
        masks: (F, H, W) float32 in [0, 1].
        times: (F,) float32 normalised time in [0, 1].
        cameras: per-frame cameras.
        manifest: the parsed manifest.json.
    """

    root: Path
    frames: np.ndarray
    masks: np.ndarray
    times: np.ndarray
    cameras: CameraSet
    manifest: dict

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def height(self) -> int:
        return int(self.frames.shape[1])

    @property
    def width(self) -> int:
        return int(self.frames.shape[2])

    @property
    def fps(self) -> float | None:
        """Frames per second of this dataset's frames (:func:`manifest_fps`)."""
        return manifest_fps(self.manifest)

    @property
    def background(self) -> np.ndarray:
        """(3,) the background colour the frames were keyed against / composited over."""
        return np.asarray(self.manifest.get("background", [1.0, 1.0, 1.0]), dtype=np.float32)

    def train_indices(self, all_frames: bool = False) -> list[int]:
        """Frames to fit: see :func:`train_frame_indices`."""
        return train_frame_indices(self.num_frames, all_frames)

    def test_indices(self) -> list[int]:
        return [i for i in range(self.num_frames) if is_test_frame(i)]

    def load_flow(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(forward, backward), each (F-1, H, W, 2) float32 pixel offsets, or None."""
        flow = self.manifest.get("flow")
        if not flow:
            return None
        out = []
        for key in ("forward", "backward"):
            path = self.root / flow[key]
            if not path.is_file():
                raise UserError(f"dataset '{self.root}' lists {flow[key]} but it is missing: "
                                "ingest the input again")
            out.append(read_npz_array(path, "flow", "ingest the input again"))
        return out[0], out[1]

    def load_depth(self) -> tuple[np.ndarray, str] | None:
        """((F, H, W) float32 user maps, kind "disparity" or "depth"), or None; 0 = no depth."""
        from recon4d.data.depth import load_depth

        return load_depth(self.root, self.manifest)

    @property
    def gt_dir(self) -> Path | None:
        """The ground-truth folder of a synthetic scene, if there is one."""
        path = self.root / "gt"
        return path if path.is_dir() else None


def write_dataset(out_dir: str | Path, frames: np.ndarray, masks: np.ndarray, times: Sequence[float],
                  cameras: CameraSet, source: dict, masks_from: str,
                  background: Sequence[float] = (1.0, 1.0, 1.0),
                  flow: tuple[np.ndarray, np.ndarray] | None = None,
                  extras: dict | None = None, overwrite: bool = False,
                  extra_writer: Callable[[Path], Any] | None = None,
                  source_indices: Sequence[int] | None = None,
                  depth: tuple[np.ndarray, str, str] | None = None) -> Path:
    """Write a dataset directory atomically.

    Args:
        out_dir: destination; must not exist unless ``overwrite``.
        frames: (F, H, W, 3) uint8 RGB, or float in [0, 1].
        masks: (F, H, W) uint8 (0..255) or float in [0, 1].
        times: F normalised times in [0, 1], non-decreasing.
        cameras: per-frame cameras (F of each).
        source: where it came from, e.g. ``{"path": ..., "type": "video", "sha256": ...}``.
        masks_from: "given", "alpha", "keying", "grabcut" or "synthetic".
        background: RGB in [0, 1] of the background the masks separate the object from.
        flow: optional (forward, backward) each (F-1, H, W, 2) pixel offsets.
        extras: free-form JSON-able notes (mask areas, warnings, crop box ...).
        extra_writer: called with the temporary directory before it is renamed into place, to
            add more files (e.g. ``gt/`` of a synthetic scene) under the same atomic write.
        source_indices: frame numbers in the source for each dataset frame (default 0..F-1).
        depth: optional (maps (F, H, W) float, kind "disparity" | "depth", source) user depth;
            0 where unknown (see :mod:`recon4d.data.depth`).

    Returns:
        The dataset directory.
    """
    out_dir = Path(out_dir)
    frames = _to_uint8(np.asarray(frames), "frames")
    masks = _to_uint8(np.asarray(masks), "masks")
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames: expected (F, H, W, 3), got {frames.shape}")
    num, height, width = frames.shape[:3]
    if masks.shape != (num, height, width):
        raise ValueError(f"masks: expected {(num, height, width)}, got {masks.shape}")
    times = [float(t) for t in times]
    if len(times) != num:
        raise ValueError(f"times: expected {num} values, got {len(times)}")
    if cameras.viewmats.shape != (num, 4, 4) or cameras.Ks.shape != (num, 3, 3):
        raise ValueError(f"cameras: expected {num} viewmats and Ks, got {cameras.viewmats.shape}, "
                         f"{cameras.Ks.shape}")
    source_indices = list(range(num)) if source_indices is None else [int(i) for i in source_indices]
    if out_dir.exists() and not overwrite:
        raise UserError(f"output '{out_dir}' already exists: choose another --out or pass --overwrite")
    try:
        with atomic_directory(out_dir, overwrite=overwrite) as tmp:
            (tmp / "frames").mkdir()
            (tmp / "masks").mkdir()
            entries = []
            for i in range(num):
                frame_png = _png_bytes(frames[i])
                mask_png = _png_bytes(masks[i])
                (tmp / "frames" / f"{i:05d}.png").write_bytes(frame_png)
                (tmp / "masks" / f"{i:05d}.png").write_bytes(mask_png)
                entries.append({
                    "index": i,
                    "source_index": source_indices[i],
                    "time": times[i],
                    "image": f"frames/{i:05d}.png",
                    "mask": f"masks/{i:05d}.png",
                    "image_sha256": sha256_bytes(frame_png),
                    "mask_sha256": sha256_bytes(mask_png),
                    "split": "test" if is_test_frame(i) else "train",
                })
            flow_entry = None
            if flow is not None:
                (tmp / "flow").mkdir()
                for key, array in zip(("forward", "backward"), flow):
                    np.savez_compressed(tmp / "flow" / f"{key}.npz", flow=np.asarray(array, np.float16))
                flow_entry = {"forward": "flow/forward.npz", "backward": "flow/backward.npz",
                              "method": "opencv-dis"}
            depth_entry = None
            if depth is not None:
                from recon4d.data.depth import DEPTH_KINDS, store_depth

                maps, kind, depth_source = depth
                maps = np.asarray(maps)
                if maps.shape != (num, height, width):
                    raise ValueError(f"depth: expected {(num, height, width)}, got {maps.shape}")
                if kind not in DEPTH_KINDS:
                    raise ValueError(f"depth kind: expected one of {DEPTH_KINDS}, got {kind!r}")
                depth_entry = store_depth(tmp, maps, kind, depth_source)
            manifest = {
                "schema_version": DATASET_SCHEMA_VERSION,
                "kind": DATASET_KIND,
                "source": source,
                "width": int(width),
                "height": int(height),
                "num_frames": int(num),
                "frames": entries,
                "cameras": {
                    "mode": cameras.mode,
                    "params": cameras.params,
                    "viewmats": np.asarray(cameras.viewmats, np.float64).tolist(),
                    "Ks": np.asarray(cameras.Ks, np.float64).tolist(),
                },
                "masks_from": masks_from,
                "background": [float(c) for c in background],
                "flow": flow_entry,
                **({"depth": depth_entry} if depth_entry else {}),
                "test_rule": TEST_FRAME_RULE,
                "extras": extras or {},
            }
            atomic_write_json(tmp / "manifest.json", manifest)
            if extra_writer is not None:
                extra_writer(tmp)
    except FileExistsError as exc:
        raise UserError(f"output '{out_dir}' already exists: choose another --out or pass "
                        "--overwrite") from exc
    return out_dir


def _to_uint8(array: np.ndarray, name: str) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"{name}: expected uint8 or float in [0, 1], got {array.dtype}")
    return (np.clip(array, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def read_npz_array(path: Path, key: str, fix: str) -> np.ndarray:
    """Array ``key`` of the .npz file ``path`` as float32; a damaged or truncated file is a
    one-line :class:`UserError` naming it and ``fix``."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return data[key].astype(np.float32)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise UserError(f"{path} cannot be read ({type(exc).__name__}): the dataset is damaged, "
                        f"{fix}") from exc


def is_dataset_dir(path: str | Path) -> bool:
    """True when ``path`` is a directory with a recon4d manifest.json."""
    manifest = Path(path) / "manifest.json"
    if not manifest.is_file():
        return False
    try:
        return read_json(manifest).get("kind") == DATASET_KIND
    except (ValueError, AttributeError):
        return False


def manifest_fps(manifest: dict) -> float | None:
    """Frames per second of a dataset's frames: the source video's rate over the spacing of the
    kept source frames (``--stride``, ``--max-frames``), or a manifest's own ``fps``; None where
    the input has no rate (image folders, transforms.json)."""
    if manifest.get("fps"):
        return float(manifest["fps"])
    rate = (manifest.get("source") or {}).get("fps")
    if not rate:
        return None
    sources = [f.get("source_index") for f in manifest.get("frames", [])]
    if len(sources) < 2 or any(not isinstance(i, int) for i in sources):
        return float(rate)
    spacing = (sources[-1] - sources[0]) / (len(sources) - 1)
    return float(rate) / spacing if spacing > 0 else float(rate)


def run_fps(run_dir: str | Path) -> float | None:
    """The frame rate of a run's dataset (``RUN_DIR/dataset/manifest.json``), or None when the
    run has no readable manifest or the input no rate."""
    try:
        return manifest_fps(read_json(Path(run_dir) / "dataset" / "manifest.json"))
    except (OSError, ValueError, AttributeError):
        return None


def load_dataset(path: str | Path, verify_hashes: bool = False) -> Dataset:
    """Read and validate a dataset directory.

    Raises:
        UserError: naming the missing or malformed part and the fix.
    """
    from PIL import Image

    root = Path(path)
    manifest_path = root / "manifest.json"
    if not manifest_path.is_file():
        raise UserError(f"'{root}' is not a recon4d dataset (no manifest.json): run 'recon4d ingest' "
                        "on your video first")
    try:
        manifest = read_json(manifest_path)
    except ValueError as exc:
        raise UserError(f"{manifest_path} is not valid JSON: ingest the input again") from exc
    if not isinstance(manifest, dict) or manifest.get("kind") != DATASET_KIND:
        raise UserError(f"{manifest_path} is not a recon4d dataset manifest: ingest the input again")
    if manifest.get("schema_version") != DATASET_SCHEMA_VERSION:
        raise UserError(f"{manifest_path} has schema_version {manifest.get('schema_version')!r}, this "
                        f"recon4d reads {DATASET_SCHEMA_VERSION}: ingest the input again")
    for key in ("width", "height", "num_frames", "frames", "cameras"):
        if key not in manifest:
            raise UserError(f"{manifest_path} lacks '{key}': ingest the input again")
    entries = manifest["frames"]
    num, width, height = int(manifest["num_frames"]), int(manifest["width"]), int(manifest["height"])
    if len(entries) != num or num < 1:
        raise UserError(f"{manifest_path} lists {len(entries)} frames but num_frames is {num}: "
                        "ingest the input again")
    frames = np.empty((num, height, width, 3), np.float32)
    masks = np.empty((num, height, width), np.float32)
    for i, entry in enumerate(entries):
        for key, target, mode in (("image", frames, "RGB"), ("mask", masks, "L")):
            file = root / entry[key]
            if not file.is_file():
                raise UserError(f"dataset '{root}' is missing {entry[key]}: ingest the input again")
            data = file.read_bytes()
            if verify_hashes and sha256_bytes(data) != entry.get(f"{key}_sha256"):
                raise UserError(f"{file} does not match its hash in manifest.json (modified or "
                                "damaged): ingest the input again")
            try:
                image = Image.open(io.BytesIO(data)).convert(mode)
            except (OSError, ValueError) as exc:  # not an image, or a truncated one
                raise UserError(f"{file} cannot be read as an image ({type(exc).__name__}): the "
                                "dataset is damaged, ingest the input again") from exc
            if image.size != (width, height):
                raise UserError(f"{file} is {image.size[0]}x{image.size[1]}, manifest says "
                                f"{width}x{height}: ingest the input again")
            target[i] = np.asarray(image, np.float32) / 255.0
    try:
        times = np.asarray([float(e["time"]) for e in entries], np.float64)
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{manifest_path} has a frame without a numeric 'time': ingest the input "
                        "again") from exc
    if not (np.isfinite(times).all() and times.min(initial=0.0) >= -1e-6
            and times.max(initial=0.0) <= 1 + 1e-6):
        raise UserError(f"{manifest_path} has frame times outside [0, 1] (they are normalised "
                        "over the clip): ingest the input again")
    background = manifest.get("background", [1.0, 1.0, 1.0])
    try:
        colour = np.asarray(background, np.float64)
    except (TypeError, ValueError):
        colour = np.zeros(0)
    if colour.shape != (3,) or not np.isfinite(colour).all():
        raise UserError(f"{manifest_path} has background {background!r}, expected 3 numbers (RGB "
                        "in [0, 1]): ingest the input again")
    times = times.astype(np.float32)
    cams = manifest["cameras"]
    viewmats = np.asarray(cams.get("viewmats"), np.float64)
    Ks = np.asarray(cams.get("Ks"), np.float64)
    if viewmats.shape != (num, 4, 4) or Ks.shape != (num, 3, 3):
        raise UserError(f"{manifest_path} cameras have shapes {viewmats.shape} and {Ks.shape}, "
                        f"expected ({num}, 4, 4) and ({num}, 3, 3): ingest the input again")
    cameras = CameraSet(viewmats, Ks, cams.get("mode", "fixed"), cams.get("params", {}))
    return Dataset(root, frames, masks, times, cameras, manifest)
