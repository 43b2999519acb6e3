"""Ablations (issue 6): what each part of the method buys, on scenes with ground truth.

One command::

    nice -n 5 .venv/bin/python benchmarks/ablations.py                 # default + creature_orbit scenes
    .venv/bin/python benchmarks/ablations.py --scenes default --steps default=500

For each scene it fits the baseline (``cpu-fast`` preset, the same full-stage step count for
every variant of a scene) and one variant per removed component:

- ``no-init``    no coarse initialisation stage (``coarse_surfels=0``, ``--no-init-stage``);
- ``no-refine``  no per-surfel time refinement (``model.refine_freqs=0``);
- ``no-normal``  no warped-state normal-consistency loss (``full.losses.normal=0``);
- ``lbs``        linear blend skinning instead of dual quaternions (``model.blend=lbs``);
- ``seed1``, ``seed2`` (only when asked for): the baseline with another seed, to size the noise;

then evaluates each run with :func:`recon4d.eval.evaluate_run` (held-out PSNR/SSIM, novel-view
PSNR, per-frame TSDF mesh Chamfer-L1 / normal consistency / F-score on the held-out frames; the
animated-mesh pass is skipped to keep it fast, and the TSDF settings are lighter than the
exporter defaults, the same for every variant). Results are written after every run to
``benchmarks/results/ablations.json`` and ``benchmarks/results/ablations.md`` (machine, commit,
command, steps), so a cut-short session still leaves what it measured. Runs whose results are
already in the JSON with the same settings are not repeated (``--redo`` forces them).
Work folders go to ``--work`` (default ``runs/ablations``, git-ignored).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO))

VARIANTS: dict[str, dict] = {  # name -> fit overrides on top of the baseline
    "baseline": {},
    "no-init": {"coarse_surfels": 0},
    "no-refine": {"model.refine_freqs": 0},
    "no-normal": {"full.losses.normal": 0.0},
    "lbs": {"model.blend": "lbs"},
    # Not run by default: the baseline with other seeds, to size the single-seed noise.
    "seed1": {"seed": 1},
    "seed2": {"seed": 2},
}
DEFAULT_VARIANTS = ["baseline", "no-init", "no-refine", "no-normal", "lbs"]
DESCRIPTIONS = {
    "baseline": "cpu-fast preset (DQS, coarse stage, refinement, normal loss)",
    "no-init": "no coarse initialisation stage",
    "no-refine": "no per-surfel time refinement",
    "no-normal": "no warped-state normal loss",
    "lbs": "linear blend skinning instead of DQS",
    "seed1": "the baseline with seed 1 (noise reference)",
    "seed2": "the baseline with seed 2 (noise reference)",
}
SCENE_DEFAULTS = {  # scene -> make_scene overrides (small enough for ~1-2 min fits on 2 CPU cores)
    "default": {},
    "rigid": {"resolution": 128, "frames": 20},
    "blob": {"resolution": 128, "frames": 20},
    "creature": {"resolution": 128, "frames": 20},
}
COLUMNS = [  # (header, key, format)
    ("scene", "scene", "{}"), ("variant", "variant", "{}"), ("fit s", "fit_seconds", "{:.0f}"),
    ("PSNR held-out", "psnr_heldout", "{:.2f}"), ("SSIM held-out", "ssim_heldout", "{:.3f}"),
    ("PSNR novel", "psnr_novel", "{:.2f}"), ("Chamfer-L1 %diag", "chamfer_pct", "{:.2f}"),
    ("normal cons.", "normal_consistency", "{:.3f}"), ("F-score@1%", "fscore", "{:.3f}"),
]
DELTA_KEYS = [("psnr_heldout", "{:+.2f}"), ("psnr_novel", "{:+.2f}"), ("chamfer_pct", "{:+.2f}"),
              ("normal_consistency", "{:+.3f}"), ("fscore", "{:+.3f}")]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scenes", default="default,creature_orbit", help="comma-separated ground-truth scenes")
    p.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                   help=f"comma-separated, from {', '.join(VARIANTS)}")
    p.add_argument("--steps", action="append", default=[],
                   help="full-stage steps, SCENE=N (repeatable) or N for all scenes (default 900)")
    p.add_argument("--preset", default="cpu-fast")
    p.add_argument("--threads", type=int, default=1, help="torch threads for fit and eval")
    p.add_argument("--seed", type=int, default=0, help="fit seed (the same for every variant)")
    p.add_argument("--mesh-resolution", type=int, default=64, help="TSDF voxels (exporter: 128)")
    p.add_argument("--mesh-views", type=int, default=12, help="TSDF virtual views (exporter: 24)")
    p.add_argument("--mesh-image", type=int, default=128, help="TSDF view size px (exporter: 256)")
    p.add_argument("--samples", type=int, default=20000, help="surface samples for Chamfer")
    p.add_argument("--work", default=str(REPO / "runs" / "ablations"))
    p.add_argument("--results", default=str(RESULTS))
    p.add_argument("--redo", action="store_true", help="refit runs already in the results")
    p.add_argument("--reading", default=None,
                   help="markdown file with a hand-written reading of the deltas, put in ablations.md")
    return p.parse_args(argv)


def steps_for(scene: str, specs: list[str]) -> int:
    steps = 900  # the cpu-fast preset's full stage at 128²
    for spec in specs:
        if "=" in spec:
            name, value = spec.split("=", 1)
            if name == scene:
                steps = int(value)
        else:
            steps = int(spec)
    return steps


def row_from(scene, variant, steps, fit_s, fit_cpu_s, eval_s, ev, fit_metrics) -> dict:
    s = ev.get("summary", {})
    cham = s.get("chamfer_l1")
    return {"scene": scene, "variant": variant, "steps_full": steps,
            "total_steps": fit_metrics.get("total_steps"),
            "fit_seconds": fit_s, "fit_cpu_seconds": fit_cpu_s, "eval_seconds": eval_s,
            "surfels": fit_metrics.get("surfels"),
            "psnr_train": fit_metrics.get("psnr_train"),
            "psnr_heldout": s.get("psnr_heldout"), "ssim_heldout": s.get("ssim_heldout"),
            "mask_iou_heldout": s.get("mask_iou_heldout"),
            "psnr_novel": s.get("psnr_novel"), "ssim_novel": s.get("ssim_novel"),
            "focal_ratio": s.get("focal_ratio"),
            "chamfer_pct": None if cham is None else 100.0 * cham,
            "normal_consistency": s.get("normal_consistency"), "fscore": s.get("fscore")}


def read_fit_metrics(run_dir: Path) -> dict:
    """Surfel count, train PSNR and step count from the run's logs (best effort)."""
    out: dict = {}
    try:
        fit = json.loads((run_dir / "metrics.json").read_text()).get("fit", {})
        out["surfels"] = fit.get("surfels") or fit.get("num_surfels")
        out["psnr_train"] = fit.get("psnr_train") or fit.get("train_psnr")
        out["total_steps"] = fit.get("steps")
    except (OSError, ValueError):
        pass
    return out


def _without_reading(args: list[str]) -> list[str]:
    """The command line minus ``--reading FILE`` (the reading is text, not a setting)."""
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a == "--reading":
            skip = True
        elif not a.startswith("--reading="):
            out.append(a)
    return out


def fmt(value, pattern):
    return "-" if value is None else pattern.format(value)


def table(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(h for h, _, _ in COLUMNS) + " |",
             "| " + " | ".join("---" for _ in COLUMNS) + " |"]
    for r in rows:
        if r.get("error"):
            lines.append(f"| {r['scene']} | {r['variant']} | failed: {r['error']} |")
            continue
        lines.append("| " + " | ".join(fmt(r.get(k), f) for _, k, f in COLUMNS) + " |")
    return "\n".join(lines)


def delta_table(rows: list[dict]) -> str:
    base = {r["scene"]: r for r in rows if r["variant"] == "baseline" and not r.get("error")}
    heads = ["scene", "variant", "Δ PSNR held-out", "Δ PSNR novel", "Δ Chamfer %diag",
             "Δ normal cons.", "Δ F-score"]
    lines = ["| " + " | ".join(heads) + " |", "| " + " | ".join("---" for _ in heads) + " |"]
    for r in rows:
        b = base.get(r["scene"])
        if r["variant"] == "baseline" or b is None or r.get("error"):
            continue
        cells = []
        for key, pattern in DELTA_KEYS:
            v, bv = r.get(key), b.get(key)
            cells.append("-" if v is None or bv is None else pattern.format(v - bv))
        lines.append(f"| {r['scene']} | {r['variant']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_results(path_dir: Path, payload: dict) -> None:
    from recon4d.utils.atomic import atomic_write_text

    path_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path_dir / "ablations.json", json.dumps(payload, indent=2))
    rows = payload["rows"]
    compute = sum((r.get("fit_seconds") or 0) + (r.get("eval_seconds") or 0) for r in rows)
    md = [
        "# Ablations (issue 6)",
        "",
        f"Machine: {payload['machine'].get('cpu', '?')}, {payload['machine'].get('cpu_count')} cores, "
        f"GPU {payload['machine'].get('gpu')}, torch {payload['machine'].get('torch')}; "
        f"commit `{payload['commit']}`; {payload['started']} - {payload['updated']}.",
        "",
        f"Command: `{payload['command']}`",
        "",
        "Settings: preset `{preset}`, {threads} torch thread(s), seed {seed} (one seed per run); "
        "full-stage steps per scene: {steps} (the coarse stage adds its preset steps except for "
        "`no-init`). Eval: held-out frames (index % 4 == 2) from the input camera, novel views from "
        "the scene's held-out cameras, per-frame TSDF meshes on the held-out frames "
        "({mres} voxels, {mviews} views of {mimg}², lighter than the exporter default, the same for "
        "every variant), {samples} surface samples; no animated-mesh pass.".format(
            preset=payload["settings"]["preset"], threads=payload["settings"]["threads"],
            seed=payload["settings"]["seed"],
            steps=", ".join(f"{k} {v}" for k, v in payload["settings"]["steps"].items()),
            mres=payload["settings"]["mesh_resolution"], mviews=payload["settings"]["mesh_views"],
            mimg=payload["settings"]["mesh_image"], samples=payload["settings"]["samples"]),
        "",
        "Scenes: " + "; ".join(f"`{k}` {v}" for k, v in payload["scenes"].items()),
        "",
        "Variants: " + "; ".join(f"`{k}` = {DESCRIPTIONS[k]} ({VARIANTS[k] or 'no override'})"
                                 for k in payload["settings"]["variants"]),
        "",
        "## Results",
        "",
        f"Fit + eval wall time of the {len(rows)} runs: {compute / 60:.1f} min "
        "(fit s below is wall time on a machine shared with another benchmark).",
        "",
        table(rows),
        "",
        "## Differences to the baseline (variant - baseline)",
        "",
        delta_table(rows),
        "",
    ]
    if payload.get("reading"):
        md += ["## Reading", "", payload["reading"], ""]
    if payload.get("missing"):
        md += ["## Not measured", "", payload["missing"], ""]
    atomic_write_text(path_dir / "ablations.md", "\n".join(md))


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    from recon4d.eval.evaluate import EvalOptions, evaluate_run
    from recon4d.scenes import make_scene
    from recon4d.train import fit
    from run_suite import git_commit, machine_info

    scenes = [s for s in args.scenes.split(",") if s]
    variants = [v for v in args.variants.split(",") if v]
    for v in variants:
        if v not in VARIANTS:
            print(f"unknown variant '{v}': pick from {', '.join(VARIANTS)}", file=sys.stderr)
            return 2
    results_dir = Path(args.results)
    work = Path(args.work)
    previous, old_started = {}, None
    if (results_dir / "ablations.json").is_file() and not args.redo:
        try:
            old = json.loads((results_dir / "ablations.json").read_text())
            old_started = old.get("started")
            previous = {(r["scene"], r["variant"], r.get("steps_full")): r for r in old.get("rows", [])
                        if not r.get("error")}
        except (OSError, ValueError, KeyError):
            previous = {}
    payload = {
        "machine": machine_info(), "commit": git_commit(),
        "command": "nice -n 5 .venv/bin/python benchmarks/ablations.py " + shlex.join(_without_reading(
            sys.argv[1:] if argv is None else argv)),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "updated": None,
        "settings": {"preset": args.preset, "threads": args.threads, "seed": args.seed,
                     "steps": {s: steps_for(s, args.steps) for s in scenes}, "variants": variants,
                     "mesh_resolution": args.mesh_resolution, "mesh_views": args.mesh_views,
                     "mesh_image": args.mesh_image, "samples": args.samples},
        "scenes": {}, "rows": [],
        "reading": Path(args.reading).read_text().strip() if args.reading else None,
    }
    options = EvalOptions(geometry_frames="test", animated=False, plot=False, samples=args.samples,
                          mesh_kwargs={"resolution": args.mesh_resolution, "views": args.mesh_views,
                                       "image_size": args.mesh_image})
    t_all = time.monotonic()
    for scene in scenes:
        overrides = SCENE_DEFAULTS.get(scene, {"resolution": 128, "frames": 20})
        payload["scenes"][scene] = overrides or "as defined"
        scene_dir = work / f"scene_{scene}"
        if not (scene_dir / "manifest.json").is_file():
            print(f"[ablations] making scene {scene} {overrides}", flush=True)
            make_scene(scene, scene_dir, **overrides)
        steps = steps_for(scene, args.steps)
        for variant in variants:
            key = (scene, variant, steps)
            if key in previous:
                print(f"[ablations] {scene}/{variant}: reusing earlier result", flush=True)
                payload["rows"].append(previous[key])
                payload["started"] = old_started or payload["started"]  # the earliest run's start
                continue
            run_dir = work / f"{scene}_{variant}_s{steps}"
            fit_overrides = {"full.steps": steps, "num_threads": args.threads, "seed": args.seed,
                             **VARIANTS[variant]}
            print(f"[ablations] {scene}/{variant}: fit {fit_overrides}", flush=True)
            try:
                t0, c0 = time.monotonic(), time.process_time()
                fit(scene_dir, run_dir, preset=args.preset, overrides=fit_overrides)
                fit_s, fit_cpu = time.monotonic() - t0, time.process_time() - c0
                t1 = time.monotonic()
                ev = evaluate_run(run_dir, options=options)
                eval_s = time.monotonic() - t1
                row = row_from(scene, variant, steps, round(fit_s, 1), round(fit_cpu, 1),
                               round(eval_s, 1), ev, read_fit_metrics(run_dir))
            except Exception as exc:  # noqa: BLE001 - recorded, the benchmark goes on
                traceback.print_exc()
                row = {"scene": scene, "variant": variant, "steps_full": steps,
                       "error": f"{type(exc).__name__}: {exc}"}
            payload["rows"].append(row)
            payload["updated"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
            write_results(results_dir, payload)
            print(f"[ablations] {scene}/{variant}: {json.dumps(row)}", flush=True)
    payload["updated"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    payload["invocation_seconds"] = round(time.monotonic() - t_all, 1)  # reused runs cost nothing
    write_results(results_dir, payload)
    print(table(payload["rows"]))
    print()
    print(delta_table(payload["rows"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
