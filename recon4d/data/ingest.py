"""Ingest: any supported input -> a validated dataset directory, in one atomic write.

Steps: read (:mod:`~recon4d.data.readers`, :mod:`~recon4d.data.nerfstudio`) -> masks (given >
alpha > background keying, optional GrabCut; :mod:`~recon4d.data.masks`) -> checks (no all-empty
or all-full sequence, warnings on empty frames and mask-area jumps) -> crop to the union of mask
boxes, pad to square, resize (:mod:`~recon4d.data.normalize`) -> normalised times -> cameras
(:mod:`~recon4d.data.cameras`) -> optional DIS flow (:mod:`~recon4d.data.flow`) -> manifest,
PNGs, flow and a contact sheet written by :func:`recon4d.data.dataset.write_dataset`.

Python entry points: :func:`ingest` and :func:`ensure_dataset`.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from recon4d.data.dataset import CameraSet, is_dataset_dir, write_dataset
from recon4d.data.options import IngestOptions
from recon4d.data.readers import MIN_READ_SIDE, RawClip, input_kind, read_input, read_masks
from recon4d.errors import UserError
from recon4d.utils import console
from recon4d.utils.atomic import read_json


def _check_paths(input_path: Path, out_dir: Path, overwrite: bool) -> None:
    if not input_path.exists():
        raise UserError(f"input '{input_path}' does not exist: check the path")
    if is_dataset_dir(input_path):
        raise UserError(f"input '{input_path}' already is a recon4d dataset: use it as it is (e.g. "
                        "'recon4d fit DATASET'), or export it with recon4d.data.nerfstudio first")
    if out_dir.exists() and not overwrite:
        raise UserError(f"output '{out_dir}' already exists: choose another --out or pass "
                        "--overwrite")
    resolved_in, resolved_out = input_path.resolve(), out_dir.resolve()
    if resolved_out == resolved_in or resolved_out in resolved_in.parents:
        raise UserError(f"output '{out_dir}' would replace the input '{input_path}': choose "
                        "another --out")
    if out_dir.exists() and not is_dataset_dir(out_dir):
        raise UserError(f"output '{out_dir}' exists and is not a recon4d dataset, so "
                        "--overwrite will not replace it: choose another --out")


def _background_from_masks(frames: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Median colour (3,) in [0, 1] of pixels the masks call background (white if there are none)."""
    step = max(1, frames.shape[0] // 8)
    pixels = frames[::step][masks[::step] < 26]
    if pixels.shape[0] < 16:
        return np.ones(3)
    # An evenly strided quarter-million pixels give the median as well as millions do, without a
    # float64 copy of every background pixel of a full-resolution clip.
    pixels = pixels[::max(1, pixels.shape[0] // 250_000)]
    return np.median(pixels.astype(np.float64), axis=0) / 255.0


def resolve_masks(clip: RawClip, options: IngestOptions) -> tuple[np.ndarray, np.ndarray, str, dict]:
    """Masks by trust: --masks, masks listed in transforms.json, alpha channel, background keying.

    Returns:
        (frames (F, H, W, 3) uint8 -- composited over white whenever they came with alpha,
         masks (F, H, W) uint8, masks_from, notes for the manifest). The background colour is in
        notes["background"] (RGB in [0, 1]).
    """
    from recon4d.data.masks import key_background

    frames = clip.frames
    if clip.alpha is not None:
        # Colour under transparent pixels is arbitrary: composite over white, the eval background.
        # Frame by frame and in place (the raw colours are not used again): float copies of a
        # whole full-resolution clip were 5x its size.
        for frame, alpha in zip(frames, clip.alpha):
            weight = alpha.astype(np.float32)[..., None] / 255.0
            blend = frame.astype(np.float32) * weight + 255.0 * (1.0 - weight)
            frame[...] = np.clip(blend + 0.5, 0, 255).astype(np.uint8)
    mode = options.mask_source
    if options.masks is not None:
        masks = read_masks(Path(options.masks), clip)
        background = clip.background or _background_from_masks(frames, masks)
        return frames, masks, "given", {"background": list(map(float, background)),
                                        "masks_path": str(Path(options.masks).resolve())}
    if clip.masks is not None and mode in ("auto", "given"):
        background = clip.background or _background_from_masks(frames, clip.masks)
        return frames, clip.masks, "given", {"background": list(map(float, background))}
    if mode == "given":
        raise UserError("--mask-source given needs masks: pass --masks FOLDER_OR_VIDEO")
    if clip.alpha is not None and mode in ("auto", "alpha"):
        return frames, clip.alpha, "alpha", {"background": [1.0, 1.0, 1.0]}
    if mode == "alpha":
        raise UserError("--mask-source alpha, but the input has no alpha channel (or it is fully "
                        "opaque): use RGBA frames, or --mask-source key")
    keyed = key_background(frames, options.key_tolerance)
    return frames, keyed.masks, "keying", {
        "background": [float(c) for c in keyed.background],
        "key_tolerance": keyed.tolerance,
        "key_border_agreement": keyed.border_agreement,
    }


def _times(clip: RawClip) -> tuple[np.ndarray, str]:
    from recon4d.data.normalize import normalise_times

    if clip.times is not None:
        times = clip.times
        if times.min() >= 0.0 and times.max() <= 1.0:
            return times.astype(np.float64), "file"
        span = times.max() - times.min()
        return ((times - times.min()) / span if span > 0 else np.zeros_like(times)), "file"
    return normalise_times(clip.source_indices, clip.timestamps)


def _cameras(clip: RawClip, options: IngestOptions, kind: str, affine: np.ndarray,
             times: np.ndarray, extent: float) -> CameraSet:
    from recon4d.data.cameras import fixed_cameras, orbit_cameras, transform_intrinsics

    mode = options.camera
    if mode == "auto":
        mode = "transforms" if clip.cameras is not None else "fixed"
    count, res = clip.num_frames, options.resolution
    if mode == "transforms":
        if clip.cameras is None:
            raise UserError(f"--camera transforms needs a transforms.json input, but the input is "
                            f"a {kind}: use --camera fixed or orbit")
        return CameraSet(clip.cameras.viewmats.copy(),
                         transform_intrinsics(clip.cameras.Ks, affine), "transforms",
                         dict(clip.cameras.params))
    if mode == "fixed":
        return fixed_cameras(count, res, options.fov_deg, options.distance, extent)
    return orbit_cameras(times, res, options.fov_deg, options.distance, options.sweep_deg,
                         options.elevation_deg, options.start_azimuth_deg, options.direction,
                         extent)


def ingest(input_path: str | Path, out_dir: str | Path, options: IngestOptions | None = None) -> Path:
    """Turn a video, animated GIF, frame folder or transforms.json into a dataset directory.

    Args:
        input_path: the input (see :func:`recon4d.data.readers.input_kind`).
        out_dir: the dataset directory to create (written atomically).
        options: see :class:`recon4d.data.options.IngestOptions`.

    Returns:
        ``out_dir``.

    Raises:
        UserError: bad input or options; nothing is written.
    """
    from recon4d import __version__
    from recon4d.data.contact_sheet import contact_sheet
    from recon4d.data.masks import (check_sequence, edge_cut_warning, find_jumps, frame_edge_cuts,
                                    grabcut_refine, mask_areas)
    from recon4d.data.normalize import box_affine, crop_box, crop_resize, full_box, union_box
    from recon4d.rundir import to_jsonable
    from recon4d.utils.atomic import atomic_write_bytes

    started = time.monotonic()
    options = options or IngestOptions()
    options.validate()
    input_path, out_dir = Path(input_path), Path(out_dir)
    _check_paths(input_path, out_dir, options.overwrite)
    kind = input_kind(input_path)
    clip = read_input(input_path, options.stride, options.max_frames, options.max_input_side,
                      min_side=max(MIN_READ_SIDE, 4 * options.resolution))
    frames, masks, masks_from, mask_notes = resolve_masks(clip, options)
    check_sequence(masks, masks_from)
    edge_cuts = frame_edge_cuts(masks)

    crop = options.crop == "on" or (options.crop == "auto" and kind != "transforms")
    height, width = frames.shape[1:3]
    depth_maps = None
    if options.depth is not None:
        from recon4d.data.depth import fit_to_frames, read_depth_source

        depth_maps = fit_to_frames(read_depth_source(options.depth), clip.source_indices,
                                   clip.num_source_frames, width, height)
    box = crop_box(masks, options.margin) if crop else full_box(width, height)
    background = np.asarray(mask_notes["background"], np.float64)
    fill = np.round(background * 255.0).astype(np.uint8)
    res = options.resolution
    if box.side < res:
        console.info(f"the crop is {box.side} px, smaller than --resolution {res}: frames are "
                     "enlarged (a smaller --resolution would lose nothing)")
    out_frames = np.stack([crop_resize(f, box, res, fill) for f in frames])
    out_masks = np.stack([crop_resize(m, box, res, 0) for m in masks])
    out_depth = None
    if depth_maps is not None:
        from recon4d.data.depth import check_coverage, crop_resize_depth

        out_depth = np.stack([crop_resize_depth(d, box, res) for d in depth_maps])
    if options.grabcut:
        out_masks = grabcut_refine(out_frames, out_masks)
        mask_notes["refined_from"] = masks_from
        masks_from = "grabcut"
        check_sequence(out_masks, masks_from)

    warnings: list[str] = [f"converted {note} frames to 8-bit RGB" for note in clip.notes]
    if clip.scale != 1.0:
        warnings.append(f"input downscaled by {clip.scale:.3f} on reading (--max-input-side, or "
                        "a clip too long for memory at full size)")
    cut_message = edge_cut_warning(edge_cuts, len(masks))
    if cut_message:
        console.warn(cut_message)
        warnings.append(cut_message)
    if out_depth is not None:
        check_coverage(out_depth, out_masks)
    areas = mask_areas(out_masks)
    jumps = find_jumps(areas)
    if jumps:
        message = (f"mask area jumps at frame(s) {', '.join(map(str, jumps[:12]))}: check them in "
                   "the contact sheet (a keying failure or a distorted generated frame)")
        console.warn(message)
        warnings.append(message)
    empty = [i for i, a in enumerate(areas) if a < 1e-4]
    if empty:
        warnings.append(f"empty masks at frame(s) {', '.join(map(str, empty[:12]))}")

    times, time_from = _times(clip)
    bounds = union_box(out_masks)
    extent = 0.8 if bounds is None else max(bounds[2] - bounds[0], bounds[3] - bounds[1]) / res
    cameras = _cameras(clip, options, kind, box_affine(box, res), times, extent)
    flow = None
    if options.flow:
        from recon4d.data.flow import dis_flow

        flow = dis_flow(out_frames)

    sheet = contact_sheet(out_frames, out_masks, times, areas, depth=out_depth,
                          depth_kind=options.depth_kind)

    def write_sheet(tmp: Path) -> None:
        import io

        from PIL import Image

        buffer = io.BytesIO()
        Image.fromarray(sheet).save(buffer, format="PNG", compress_level=6)
        atomic_write_bytes(tmp / "contact_sheet.png", buffer.getvalue())

    extras = {
        "recon4d_version": __version__,
        "input_kind": kind,
        "options": to_jsonable(options),
        "crop": {"enabled": crop, "box": box.to_json(), "in_size": [int(width), int(height)],
                 "read_scale": clip.scale},
        "time_from": time_from,
        "mask_area": [round(float(a), 6) for a in areas],
        "mask_jumps": jumps,
        "edge_cuts": edge_cuts,   # {side: input frames in which the object runs off that edge}
        "masks": {k: v for k, v in mask_notes.items() if k != "background"},
        "warnings": warnings,
        "contact_sheet": "contact_sheet.png",
        "ingest_seconds": round(time.monotonic() - started, 3),  # before the PNG writes
        "inputs_sha256": side_inputs_sha256(input_path, options),
    }
    write_dataset(out_dir, out_frames, out_masks, times, cameras, clip.source, masks_from,
                  background=background, flow=flow, extras=extras, overwrite=options.overwrite,
                  depth=None if out_depth is None else (out_depth, options.depth_kind,
                                                        str(options.depth)),
                  extra_writer=write_sheet, source_indices=clip.source_indices)
    console.info(f"dataset: {out_dir} ({clip.num_frames} frames at {res}x{res}, masks from "
                 f"{masks_from}, cameras {cameras.mode}, mask area {100 * areas.min():.1f}-"
                 f"{100 * areas.max():.1f}%, {time.monotonic() - started:.1f}s); contact sheet: "
                 f"{out_dir / 'contact_sheet.png'}")
    return out_dir


def input_sha256(path: Path) -> str:
    """The sha256 a dataset's manifest records for the raw input ``path``: the file's, a
    transforms.json's, or a frame folder's images' together."""
    from recon4d.data.readers import list_images, sha256_file, sha256_files

    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    if input_kind(path) == "transforms":
        return sha256_file(path / "transforms.json")
    return sha256_files(list_images(path))


def ensure_dataset(input_or_dataset: str | Path, out_dir: str | Path,
                   options: IngestOptions | None = None) -> Path:
    """A dataset directory for ``input_or_dataset``: itself if it already is one, else ingest it.

    When ``out_dir`` already holds a dataset ingested from the same input file(s) (same sha256)
    with the same options (e.g. a resumed fit), that dataset is reused instead of ingesting again.

    Returns:
        The dataset directory (``input_or_dataset`` unchanged, or ``out_dir``).
    """
    path = Path(input_or_dataset)
    if is_dataset_dir(path):
        return path
    out_dir = Path(out_dir)
    if is_dataset_dir(out_dir) and not (options and options.overwrite) and path.exists():
        from recon4d.rundir import to_jsonable

        manifest = read_json(out_dir / "manifest.json")
        recorded = manifest.get("source", {}).get("sha256")
        same_options = manifest.get("extras", {}).get("options") == to_jsonable(
            options or IngestOptions())
        current = input_sha256(path)
        same_side_inputs = manifest.get("extras", {}).get("inputs_sha256") == side_inputs_sha256(
            path, options or IngestOptions())
        if recorded == current and same_options and same_side_inputs:
            console.info(f"reusing the dataset already ingested at {out_dir}")
            return out_dir
    return ingest(path, out_dir, options)


def side_inputs_sha256(path: Path, options: IngestOptions) -> dict[str, str]:
    """Hashes of what an ingest reads besides the frames: the ``--masks`` and ``--depth``
    files or folders and, for a transforms.json input, every file in its folder (its images
    and masks; the manifest hashes only the JSON). A dataset is reused only while these match
    too (rewritten masks used to be ignored)."""
    from recon4d.data.readers import sha256_file, sha256_files

    def tree(root: Path) -> str:
        return sha256_files(sorted(p for p in root.rglob("*") if p.is_file()), root=root)

    def one(target: Path) -> str:
        return tree(target) if target.is_dir() else sha256_file(target)

    out = {}
    for name in ("masks", "depth"):
        target = getattr(options, name)
        if target is not None and Path(target).exists():
            out[name] = one(Path(target))
    if path.exists() and input_kind(path) == "transforms":
        out["transforms_folder"] = tree(path if path.is_dir() else path.parent)
    return out
