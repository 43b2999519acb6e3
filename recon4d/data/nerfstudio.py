"""nerfstudio ``transforms.json``: read it as an ingest input, and export a dataset to it.

The format (the nerfstudio package itself is not used): a JSON object with intrinsics at the top
level and/or per frame (``fl_x``, ``fl_y``, ``cx``, ``cy``, ``w``, ``h``, or Blender-style
``camera_angle_x``), and ``frames``: a list of ``{"file_path", "transform_matrix"}`` with optional
``mask_path`` and ``time``. ``transform_matrix`` is camera-to-world with OpenGL camera axes
(x right, y up, z backward); recon4d converts it to OpenCV world-to-camera at this boundary only.
Paths are relative to the JSON file's folder.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from recon4d.data.cameras import opengl_c2w_to_viewmat, viewmat_to_opengl_c2w
from recon4d.data.dataset import CameraSet, load_dataset
from recon4d.data.readers import (RawClip, FrameCollector, require_two_frames, image_to_arrays,
                                  mask_from_image, open_image, select_indices, sha256_file)
from recon4d.errors import UserError
from recon4d.utils import console
from recon4d.utils.atomic import atomic_directory, atomic_write_json

INTRINSIC_KEYS = ("fl_x", "fl_y", "cx", "cy", "w", "h", "camera_angle_x", "camera_angle_y")
DISTORTION_KEYS = ("k1", "k2", "k3", "k4", "p1", "p2")


def _load_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"'{path}' is not valid JSON ({exc.__class__.__name__}): fix or "
                        "regenerate the file") from exc
    if not isinstance(data, dict):
        raise UserError(f"'{path}' is not a transforms.json object (got a JSON "
                        f"{type(data).__name__}): expected {{\"frames\": [...], ...}}")
    return data


def _resolve_image(base: Path, rel: str, what: str) -> Path:
    path = (base / rel).resolve() if not Path(rel).is_absolute() else Path(rel)
    if path.is_file():
        return path
    if not path.suffix:  # Blender-style paths omit the extension
        for suffix in (".png", ".jpg", ".jpeg"):
            if path.with_suffix(suffix).is_file():
                return path.with_suffix(suffix)
    raise UserError(f"{what} '{rel}' listed in transforms.json does not exist (looked in "
                    f"'{base}'): fix the path or add the file")


def _matrix(value, what: str) -> np.ndarray:
    try:
        matrix = np.asarray(value, np.float64)
    except (TypeError, ValueError) as exc:
        raise UserError(f"{what} is not a 4x4 matrix of numbers: fix transforms.json") from exc
    if matrix.shape == (3, 4):
        matrix = np.vstack([matrix, [0.0, 0.0, 0.0, 1.0]])
    if matrix.shape != (4, 4) or not np.isfinite(matrix).all():
        raise UserError(f"{what} must be a 4x4 matrix of finite numbers, got shape "
                        f"{matrix.shape}: fix transforms.json")
    if abs(np.linalg.det(matrix[:3, :3])) < 1e-9:
        raise UserError(f"{what} has a singular rotation: fix transforms.json")
    return matrix


def _intrinsics(meta: dict, frame: dict, width: int, height: int, what: str) -> np.ndarray:
    """K (3, 3) for one frame at the image's actual size ``width`` x ``height``."""
    def get(key):
        value = frame.get(key, meta.get(key))
        if value is not None and not isinstance(value, (int, float)):
            raise UserError(f"{what}: '{key}' must be a number, got {value!r}: fix transforms.json")
        return value

    # w/h in the file describe the size the intrinsics refer to; images may be a scaled copy.
    file_w, file_h = get("w") or width, get("h") or height
    fl_x, fl_y = get("fl_x"), get("fl_y")
    for key in ("camera_angle_x", "camera_angle_y"):
        angle = get(key)
        if angle is not None and not 0 < angle < np.pi:
            raise UserError(f"{what}: '{key}' must be an angle in (0, pi) radians, got {angle!r}: "
                            "fix transforms.json")
    if fl_x is None and get("camera_angle_x") is not None:
        fl_x = 0.5 * file_w / np.tan(0.5 * get("camera_angle_x"))
    if fl_y is None and get("camera_angle_y") is not None:
        fl_y = 0.5 * file_h / np.tan(0.5 * get("camera_angle_y"))
    if fl_x is None and fl_y is None:
        raise UserError(f"{what} has no focal length: transforms.json needs 'fl_x' (and 'fl_y') "
                        "or 'camera_angle_x', at the top level or per frame")
    fl_x = fl_y if fl_x is None else fl_x
    fl_y = fl_x if fl_y is None else fl_y
    cx = get("cx")
    cy = get("cy")
    cx = 0.5 * file_w if cx is None else cx
    cy = 0.5 * file_h if cy is None else cy
    if not all(np.isfinite(v) for v in (file_w, file_h, fl_x, fl_y, cx, cy)) or min(
            file_w, file_h, fl_x, fl_y) <= 0:
        raise UserError(f"{what}: the intrinsics are not usable (focal {fl_x!r}, {fl_y!r}, centre "
                        f"{cx!r}, {cy!r}, size {file_w!r}x{file_h!r}; focal lengths and sizes must "
                        "be finite and positive, camera_angle_x in (0, pi)): fix transforms.json")
    sx, sy = width / file_w, height / file_h
    return np.array([[fl_x * sx, 0.0, cx * sx], [0.0, fl_y * sy, cy * sy], [0.0, 0.0, 1.0]])


def read_transforms(json_path: Path, stride: int = 1, max_frames: int | None = None,
                    max_side: int = 4096) -> RawClip:
    """Read a nerfstudio transforms.json and its images into a :class:`RawClip` with cameras."""
    meta = _load_json(json_path)
    base = json_path.parent
    frames_meta = meta.get("frames")
    if not isinstance(frames_meta, list):
        raise UserError(f"'{json_path}' lacks 'frames' (a list of {{file_path, "
                        "transform_matrix}}): fix or regenerate transforms.json")
    for i, frame in enumerate(frames_meta):
        if not isinstance(frame, dict):
            raise UserError(f"'{json_path}' frame {i} is not an object: fix transforms.json")
        for key in ("file_path", "transform_matrix"):
            if key not in frame:
                raise UserError(f"'{json_path}' frame {i} lacks '{key}': every frame needs "
                                "'file_path' and 'transform_matrix'")
    require_two_frames(len(frames_meta), f"'{json_path}'")
    for key in ("time", "mask_path"):
        have = [key in f for f in frames_meta]
        if any(have) and not all(have):
            raise UserError(f"'{json_path}': frame {have.index(False)} lacks '{key}' while "
                            "others have it: give it on every frame or on none")
    order = list(range(len(frames_meta)))
    has_time = "time" in frames_meta[0]
    if has_time:
        for i, frame in enumerate(frames_meta):
            if not isinstance(frame["time"], (int, float)) or not np.isfinite(frame["time"]):
                raise UserError(f"'{json_path}' frame {i} has time {frame['time']!r}: times must "
                                "be numbers")
        order.sort(key=lambda i: frames_meta[i]["time"])  # stable: ties keep file order
    if any(meta.get(k) or 0 for k in DISTORTION_KEYS):
        console.warn(f"'{json_path}' has lens distortion coefficients: recon4d assumes a pinhole "
                     "camera and ignores them")
    keep = select_indices(len(order), stride, max_frames)
    require_two_frames(len(keep), f"'{json_path}' after --stride {stride}")
    chosen = [order[i] for i in keep]

    collector = FrameCollector(f"'{json_path}'", max_side)
    viewmats, Ks, masks, times, files = [], [], [], [], []
    for index in console.track(chosen, description="reading frames"):
        frame = frames_meta[index]
        what = f"'{json_path}' frame {index}"
        path = _resolve_image(base, str(frame["file_path"]), "image")
        image = open_image(path)
        rgb, alpha, note = image_to_arrays(image, f"image '{path}'")
        collector.add(rgb, alpha, f"image '{path.name}'", note)
        height, width = rgb.shape[:2]
        # Intrinsics at the stored size: the file's size scaled by the huge-frame downscale.
        stored_h, stored_w = collector.frames[-1].shape[:2]
        K = _intrinsics(meta, frame, width, height, what)
        K = np.diag([stored_w / width, stored_h / height, 1.0]) @ K
        Ks.append(K)
        viewmats.append(opengl_c2w_to_viewmat(_matrix(frame["transform_matrix"],
                                                      f"{what} 'transform_matrix'")))
        files.append(str(frame["file_path"]))
        if has_time:
            times.append(float(frame["time"]))
        if "mask_path" in frame:
            mask_file = _resolve_image(base, str(frame["mask_path"]), "mask")
            mask = mask_from_image(open_image(mask_file))
            if mask.shape != (height, width):
                raise UserError(f"mask '{mask_file}' is {mask.shape[1]}x{mask.shape[0]} but its "
                                f"image is {width}x{height}: masks must match the frames' size")
            if (stored_w, stored_h) != (width, height):
                import cv2

                mask = cv2.resize(mask, (stored_w, stored_h), interpolation=cv2.INTER_AREA)
            masks.append(mask)
    frames, alpha = collector.finish()
    given_times = np.asarray(times, np.float64) if has_time else None
    extras = meta.get("recon4d") if isinstance(meta.get("recon4d"), dict) else {}
    background = extras.get("background")
    source = {"path": str(json_path.resolve()), "type": "transforms",
              "sha256": sha256_file(json_path), "num_source_frames": len(frames_meta),
              "original_size": list(collector.original_size), "files": files}
    cameras = CameraSet(np.stack(viewmats), np.stack(Ks), "transforms",
                        {"file": str(json_path.resolve()),
                         "converted": "OpenGL cam-to-world -> OpenCV world-to-camera"})
    return RawClip(frames, alpha, None, chosen, len(frames_meta), source,
                   masks=np.stack(masks) if masks else None, cameras=cameras, times=given_times,
                   background=background, scale=collector.scale, notes=collector.notes)


def export_transforms(dataset_dir: str | Path, out_dir: str | Path, overwrite: bool = False) -> Path:
    """Write a dataset as a nerfstudio folder: transforms.json, images/, masks/.

    Frames and masks are copied byte for byte; cameras become OpenGL camera-to-world; per-frame
    ``time`` is kept. Intrinsics go to the top level when all frames share them, else per frame.
    The folder is written atomically.

    Returns:
        The path of the written transforms.json.
    """
    dataset = load_dataset(dataset_dir)
    root = Path(dataset_dir)
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise UserError(f"output '{out_dir}' already exists: choose another folder or pass "
                        "--overwrite")
    if out_dir.exists() and not (out_dir / "transforms.json").is_file():
        raise UserError(f"output '{out_dir}' exists and is not a nerfstudio folder, so "
                        "--overwrite will not replace it: choose another folder")
    Ks = dataset.cameras.Ks
    shared = bool(np.allclose(Ks, Ks[0], rtol=0, atol=0))
    meta: dict = {"camera_model": "OPENCV", "w": dataset.width, "h": dataset.height}

    def intrinsics(K: np.ndarray) -> dict:
        return {"fl_x": float(K[0, 0]), "fl_y": float(K[1, 1]), "cx": float(K[0, 2]),
                "cy": float(K[1, 2])}

    if shared:
        meta.update(intrinsics(Ks[0]))
    frames = []
    c2ws = viewmat_to_opengl_c2w(dataset.cameras.viewmats)
    for i, entry in enumerate(dataset.manifest["frames"]):
        frame = {"file_path": f"images/frame_{i:05d}.png", "mask_path": f"masks/mask_{i:05d}.png",
                 "transform_matrix": c2ws[i].tolist(), "time": float(entry["time"])}
        if not shared:
            frame.update(intrinsics(Ks[i]))
        frames.append(frame)
    meta["frames"] = frames
    meta["recon4d"] = {"exported_from": str(root.resolve()),
                       "background": [float(c) for c in dataset.background],
                       "camera_mode": dataset.cameras.mode}
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        (tmp / "images").mkdir()
        (tmp / "masks").mkdir()
        for i, entry in enumerate(dataset.manifest["frames"]):
            shutil.copyfile(root / entry["image"], tmp / frames[i]["file_path"])
            shutil.copyfile(root / entry["mask"], tmp / frames[i]["mask_path"])
        atomic_write_json(tmp / "transforms.json", meta)
    return out_dir / "transforms.json"
