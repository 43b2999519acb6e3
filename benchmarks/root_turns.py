"""How far the point tracks say each clip and fixed-camera scene turns, and what the estimate costs.

One command::

    .venv/bin/python benchmarks/root_turns.py          # every clip entry + 3 scenes, ~5 minutes
    .venv/bin/python benchmarks/root_turns.py --clips none --scenes rigid

For each clip entry of ``scenes/definitions`` (ingested with its suggested options) and each
named synthetic scene (made at its own size), runs what the fit's ``model.root_init = "auto"``
runs before fitting: the initial surface from the training frames' masks, the DIS point tracks
and :func:`recon4d.model.root_from_tracks.estimate_root_poses`. Reports the largest turn, the
tracks, the median reprojection error, the seconds, the view resultant and whether 'auto' keeps
the estimate; for scenes also the worst per-frame rotation error against the truth (Kabsch fit
of the ground-truth vertices) and the worst depth error: the truth's first-frame centroid moved
by the estimate against moved by the truth, in percent of its true camera depth. Prints a table, writes ``benchmarks/results/root_turns.json``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SCENES = "default,rigid,creature_turntable"


def measure(dataset: Path, truth=None) -> dict:
    """The estimate on one dataset directory: turn, tracks, residual, seconds, truth error."""
    from scipy.spatial.transform import Rotation

    from recon4d.data.dataset import load_dataset
    from recon4d.data.tracks import point_tracks
    from recon4d.export.transforms import kabsch
    from recon4d.model.init import init_from_masks
    from recon4d.model.root_from_tracks import estimate_root_poses_from_init
    from recon4d.train.config import FitConfig

    data = load_dataset(dataset)
    train = data.train_indices()
    frames, masks = data.frames[train], data.masks[train]
    viewmats, Ks = data.cameras.viewmats[train], data.cameras.Ks[train]
    start = time.monotonic()
    init = init_from_masks(frames, masks, viewmats, Ks, 2000)
    tracks = point_tracks(frames, masks)
    estimate = estimate_root_poses_from_init(tracks, viewmats, Ks, init, data.height, data.width,
                                             times=np.asarray(data.times)[train])
    seconds = time.monotonic() - start
    turn = float(estimate.turn_degrees().max())
    row = {"frames": len(train), "px": data.width, "tracks": estimate.num_tracks,
           "residual_px": round(estimate.residual_px, 3), "max_turn_deg": round(turn, 1),
           "seconds": round(seconds, 1),
           "view_resultant": round(estimate.view_resultant(viewmats, init.center), 3),
           "auto_keeps": turn >= FitConfig().model.root_auto_turn_deg}
    if truth is not None:
        motion = np.stack([kabsch(truth.vertices[train[0]], truth.vertices[k]) for k in train])
        errors = (Rotation.from_rotvec(estimate.rotvecs)
                  * Rotation.from_matrix(motion[:, :3, :3]).inv()).magnitude()
        row["max_error_deg"] = round(float(np.degrees(errors).max()), 1)
        centre = np.append(truth.vertices[train[0]].mean(0), 1.0)
        moved = estimate.transforms() @ centre
        true_moved = motion @ centre
        depth_ratio = (np.einsum("fj,fj->f", viewmats[:, 2], moved)
                       / np.einsum("fj,fj->f", viewmats[:, 2], true_moved))
        row["max_depth_error_pct"] = round(float(100 * np.abs(depth_ratio - 1).max()), 1)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", default="all", help="comma-separated clip entries, 'all' or 'none'")
    parser.add_argument("--scenes", default=DEFAULT_SCENES,
                        help="comma-separated fixed-camera synthetic scenes or 'none'")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "root_turns.json")
    args = parser.parse_args()

    from recon4d.utils import console
    from recon4d.data.ingest import ingest
    from recon4d.data.options import IngestOptions
    from recon4d.scenes import list_scenes, load_ground_truth, make_scene

    console.set_quiet(True)
    entries = {row["name"]: row for row in list_scenes()}
    clips = sorted(n for n, r in entries.items() if r["kind"] == "clip" and r["exists"])
    if args.clips != "all":
        clips = [] if args.clips == "none" else args.clips.split(",")
    scenes = [] if args.scenes == "none" else args.scenes.split(",")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in scenes + clips:
            if name in scenes:
                dataset = make_scene(name, Path(tmp) / name)
                row = {"item": name, "kind": "scene", **measure(dataset, load_ground_truth(dataset))}
            else:
                entry = entries[name]
                dataset = ingest(entry["path"], Path(tmp) / name,
                                 IngestOptions(**entry.get("ingest", {})))
                row = {"item": name, "kind": "clip", **measure(dataset)}
            rows.append(row)
            print(f"{name:24s} {row['frames']:3d} fr {row['px']:4d} px  turn {row['max_turn_deg']:6.1f} deg"
                  f"  {row['tracks']:5d} tracks  {row['residual_px']:5.2f} px  {row['seconds']:5.1f} s"
                  f"  resultant {row['view_resultant']:.2f}  auto {'tracks' if row['auto_keeps'] else 'identity'}"
                  + (f"  worst error {row['max_error_deg']:.1f} deg, depth {row['max_depth_error_pct']:.1f} %"
                     if "max_error_deg" in row else ""),
                  flush=True)

    from run_suite import git_commit, machine_info

    from recon4d.utils.atomic import atomic_write_json

    command = ("python benchmarks/root_turns.py"
               + (f" --clips {args.clips}" if args.clips != "all" else "")
               + (f" --scenes {args.scenes}" if args.scenes != DEFAULT_SCENES else ""))
    atomic_write_json(args.out, {"commit": git_commit(), "machine": machine_info(),
                                 "command": command, "rows": rows})
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
