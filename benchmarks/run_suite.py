"""The reconstruction benchmark: fit + export + eval over the scene suite and the shared clips.

One command::

    .venv/bin/python benchmarks/run_suite.py                      # everything, default preset
    .venv/bin/python benchmarks/run_suite.py --scenes default --clips none   # just the default scene
    .venv/bin/python benchmarks/run_suite.py --dry-run            # check inputs and imports, plan only

For each synthetic scene (``recon4d scenes make``) and each clip entry of ``scenes/definitions``
(ingested by the fit with the entry's suggested options), it runs ``recon4d.train.fit``,
``recon4d export RUN_DIR`` and ``recon4d.eval.evaluate_run``, then prints a table and writes
``benchmarks/results/suite.json`` and ``benchmarks/results/suite.md`` with the machine, the
renderer backend, the preset and the git commit. Each item's failure is recorded and the suite
goes on. Work folders go to ``--work`` (default ``runs/benchmarks``, git-ignored).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
DEFAULT_SCENES = ["default", "creature", "blob", "orbit", "rigid"]
DEFAULT_CLIPS = ["hiphop_parrot", "wave_hello", "green_robot", "pecking_blue_jay_rgba"]

COLUMNS = [  # (header, key in the row, format)
    ("item", "name", "{}"), ("kind", "kind", "{}"), ("frames", "frames", "{}"),
    ("px", "resolution", "{}"), ("preset", "preset", "{}"), ("steps", "steps", "{}"),
    ("fit s", "fit_seconds", "{:.0f}"),
    ("export s", "export_seconds", "{:.0f}"), ("eval s", "eval_seconds", "{:.0f}"),
    ("PSNR held-out", "psnr_heldout", "{:.2f}"), ("SSIM held-out", "ssim_heldout", "{:.3f}"),
    ("held-out by flow interp.", "psnr_heldout_interp_baseline", "{:.2f}"),
    ("PSNR novel", "psnr_novel", "{:.2f}"), ("Chamfer-L1 %diag", "chamfer_pct", "{:.2f}"),
    ("Chamfer depth-scaled %diag", "chamfer_depth_scaled_pct", "{:.2f}"),
    ("Chamfer anim. %diag", "chamfer_animated_pct", "{:.2f}"),
    ("normal cons.", "normal_consistency", "{:.3f}"), ("F-score@1%", "fscore", "{:.3f}"),
    ("jitter / GT", "jitter_ratio", "{:.2f}"), ("status", "status", "{}"),
]


def machine_info() -> dict:
    """CPU model, cores, memory, GPU (if any), OS, Python and torch versions."""
    info = {"platform": platform.platform(), "python": platform.python_version(),
            "cpu_count": os.cpu_count()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                info["memory_gb"] = round(int(line.split()[1]) / 1024 ** 2, 1)
                break
    except OSError:
        pass
    try:
        import torch

        info["torch"] = torch.__version__
        info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception as exc:  # noqa: BLE001 - recorded, not fatal
        info["torch"] = f"unavailable ({exc})"
    return info


def git_commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, check=True).stdout.strip()
        return head + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def render_backend() -> str:
    try:
        import torch

        from recon4d.render import resolve_backend

        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return resolve_backend("auto", device)
    except Exception as exc:  # noqa: BLE001
        return f"unknown ({exc})"


def _parse_overrides(items: list[str]) -> dict:
    out = {}
    for item in items:
        if "=" not in item:
            raise SystemExit(f"--fit-override expects KEY=VALUE, got '{item}'")
        key, value = item.split("=", 1)
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _select(names: str, default: list[str]) -> list[str]:
    if names == "all":
        return list(default)
    if names in ("", "none"):
        return []
    return [n.strip() for n in names.split(",") if n.strip()]


def plan(args) -> list[dict]:
    """The items to run, each checked: synthetic scene definitions and clip files exist."""
    from recon4d.scenes import list_scenes

    defs = {row["name"]: row for row in list_scenes()}
    items = []
    for name in _select(args.scenes, DEFAULT_SCENES):
        row = defs.get(name)
        ok = row is not None and row["kind"] == "synthetic"
        # Oracle-depth rows get their own name: they must never replace a plain row on --merge.
        label = name if args.oracle_depth == "none" else f"{name} + oracle {args.oracle_depth}"
        items.append({"name": label, "scene": name, "slug": label.replace(" + oracle ", "_oracle_"),
                      "kind": "scene", "ready": ok,
                      "note": "" if ok else "no such synthetic scene",
                      "frames": args.frames or (row or {}).get("frames"),
                      "resolution": args.resolution or (row or {}).get("resolution")})
    every_clip = sorted(n for n, r in defs.items() if r["kind"] == "clip")
    clips = every_clip if args.clips == "shared" else _select(args.clips, DEFAULT_CLIPS)
    for name in clips:
        row = defs.get(name)
        ok = row is not None and row["kind"] == "clip" and row["exists"]
        items.append({"name": name, "kind": "clip", "ready": ok,
                      "note": "" if ok else ("missing clip file" if row else "no such clip entry"),
                      "path": (row or {}).get("path"), "ingest": (row or {}).get("ingest", {}),
                      "frames": None, "resolution": (row or {}).get("ingest", {}).get("resolution")})
    return items


def run_item(item: dict, args, work: Path, overrides: dict) -> dict:
    from recon4d.cli.main import main as cli_main
    from recon4d.eval import evaluate_run
    from recon4d.eval.evaluate import EvalOptions
    from recon4d.train import fit

    row = dict(item)
    slug = item.get("slug", item["name"])
    run_dir = work / "runs" / slug
    try:
        if item["kind"] == "scene":
            from recon4d.scenes import make_scene

            start = time.monotonic()
            source = make_scene(item["scene"], work / "scenes" / slug, seed=args.seed,
                                overwrite=True, resolution=args.resolution, frames=args.frames)
            if args.oracle_depth != "none":
                from recon4d.scenes.oracle import attach_oracle_depth

                attach_oracle_depth(source, args.oracle_depth, seed=args.seed)
            row["make_seconds"] = time.monotonic() - start
            ingest_options = None
        else:
            from recon4d.data.options import IngestOptions

            source = Path(item["path"])
            ingest_options = IngestOptions(**item["ingest"])
        start = time.monotonic()
        fit(source, run_dir, preset=args.preset, overrides=overrides or None,
            ingest_options=ingest_options)
        row["fit_seconds"] = time.monotonic() - start
        if not args.skip_export:
            start = time.monotonic()
            # The CLI resets the global quiet switch from its own argv: pass it on.
            rc = cli_main(["export", str(run_dir)] + (["--quiet"] if args.quiet else []))
            row["export_seconds"] = time.monotonic() - start
            row["export_rc"] = rc
        start = time.monotonic()
        result = evaluate_run(run_dir, options=EvalOptions(geometry_frames=args.geometry_frames))
        row["eval_seconds"] = time.monotonic() - start
        s = result["summary"]
        row.update({k: s.get(k) for k in ("psnr_heldout", "ssim_heldout", "psnr_heldout_interp_baseline",
                                          "psnr_novel", "ssim_novel",
                                          "normal_consistency", "fscore", "jitter", "jitter_gt")})
        for key, name in (("chamfer_l1", "chamfer_pct"), ("chamfer_l1_animated", "chamfer_animated_pct"),
                          ("chamfer_l1_depth_scaled", "chamfer_depth_scaled_pct")):
            row[name] = None if s.get(key) is None else 100.0 * s[key]
        if s.get("jitter") is not None and s.get("jitter_gt"):
            row["jitter_ratio"] = s["jitter"] / s["jitter_gt"]
        with open(run_dir / "dataset" / "manifest.json", encoding="utf-8") as handle:
            manifest = json.load(handle)
        row["frames"], row["resolution"] = manifest["num_frames"], manifest["width"]
        row.update(_fit_settings(run_dir))
        row["status"] = "ok" if row.get("export_rc", 0) == 0 else f"export rc {row['export_rc']}"
    except Exception as exc:  # noqa: BLE001 - one item's failure must not stop the suite
        row["status"] = f"failed: {type(exc).__name__}: {exc}"[:200]
        row["traceback"] = traceback.format_exc()
    row["run_dir"] = str(run_dir)
    return row


def _fit_settings(run_dir: Path) -> dict:
    """Preset, coarse+full steps and threads as the fit recorded them (after resolution scaling)."""
    try:
        with open(run_dir / "config.json", encoding="utf-8") as handle:
            cfg = json.load(handle)["config"]
    except (OSError, KeyError, json.JSONDecodeError):
        return {}
    coarse, full = cfg.get("coarse", {}).get("steps"), cfg.get("full", {}).get("steps")
    return {"preset": cfg.get("preset"), "coarse_steps": coarse, "full_steps": full,
            "steps": f"{coarse}+{full}" if coarse is not None else full,
            "fit_threads": cfg.get("num_threads")}


def merge_rows(rows: list[dict], previous: list[dict]) -> list[dict]:
    """Rows of earlier invocations (``--merge``) followed by this run's; a re-run item replaces its old row."""
    names = {r["name"] for r in rows}
    return [r for r in previous if r.get("name") not in names] + rows


def format_table(rows: list[dict], markdown: bool) -> str:
    def cell(row, key, fmt):
        value = row.get(key)
        if value is None:
            return "-"
        try:
            return fmt.format(value)
        except (ValueError, TypeError):
            return str(value)

    headers = [h for h, _, _ in COLUMNS]
    body = [[cell(r, k, f) for _, k, f in COLUMNS] for r in rows]
    if markdown:
        lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
        lines += ["| " + " | ".join(b) + " |" for b in body]
        return "\n".join(lines)
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(b, widths)) for b in body]
    return "\n".join(lines)


def clip_summary(rows: list[dict], target: float = 27.0) -> str | None:
    """One line over the clip rows that finished: mean held-out PSNR, the flow-interpolation
    baseline's mean over the same clips, and how many reach ``target`` dB (the published method
    averages 27.3 dB held-out on its own generated clips). None when no clip row has a figure."""
    done = [r for r in rows if r.get("kind") == "clip" and r.get("status") == "ok"
            and r.get("psnr_heldout") is not None]
    if not done:
        return None
    mean = sum(r["psnr_heldout"] for r in done) / len(done)
    paired = [r for r in done if r.get("psnr_heldout_interp_baseline") is not None]
    line = f"Clips: mean held-out PSNR {mean:.2f} dB over {len(done)}"
    if paired:
        fit_mean = sum(r["psnr_heldout"] for r in paired) / len(paired)
        base_mean = sum(r["psnr_heldout_interp_baseline"] for r in paired) / len(paired)
        line += (f"; on the {len(paired)} with a flow-interpolation baseline: fit {fit_mean:.2f} dB, "
                 f"baseline {base_mean:.2f} dB")
    reached = sum(r["psnr_heldout"] >= target for r in done)
    return line + f"; {reached} of {len(done)} at or above {target:g} dB."


def write_results(rows: list[dict], meta: dict, out_dir: Path) -> None:
    from recon4d.utils.atomic import atomic_write_json, atomic_write_text

    out_dir.mkdir(parents=True, exist_ok=True)
    clean = [{k: v for k, v in r.items() if k != "traceback"} for r in rows]
    payload = {"meta": meta, "rows": clean}
    if meta.get("merged"):
        payload["merged"] = meta["merged"]
    atomic_write_json(out_dir / "suite.json", payload)
    m = meta["machine"]
    md = [
        "# recon4d benchmark suite",
        "",
        f"- date: {meta['date']}",
        f"- commit: `{meta['commit']}`",
        f"- machine: {m.get('cpu', '?')}, {m.get('cpu_count')} cores, {m.get('memory_gb', '?')} GB, "
        f"GPU: {m.get('gpu') or 'none'}; {m.get('platform')}; torch {m.get('torch')}",
        f"- renderer backend: {meta['backend']}; preset: {meta['preset']}; seed: {meta['seed']}"
        + (f"; fit overrides: {meta['fit_overrides']}" if meta["fit_overrides"] else ""),
        f"- command: `{meta['command']}`",
        *[f"- merged rows from an earlier invocation: `{c}" for c in meta.get("merged", [])],
        "",
        "Wall times are seconds on this machine (shared with other jobs; fit threads per row in "
        "suite.json). steps = coarse+full stage steps as the fit ran them (after resolution scaling).",
        "",
        "PSNR/SSIM over white on held-out frames (index % 4 == 2) and, for synthetic scenes, from "
        "held-out cameras; Chamfer-L1 between surface samples in % of the ground-truth bbox "
        "diagonal (per-frame TSDF meshes; animated = the fixed-topology mesh; depth-scaled = after "
        "the best scaling about a fixed input camera, which that camera cannot see); F-score at 1% of "
        "the diagonal; jitter / GT = vertex acceleration of the animated mesh over the ground "
        "truth's (docs/scenes_eval.md).",
        "",
        format_table(rows, markdown=True),
        "",
    ]
    summary = clip_summary(rows)
    if summary:
        md += [summary, ""]
    atomic_write_text(out_dir / "suite.md", "\n".join(md))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", default="all",
                        help=f"comma-separated synthetic scenes, 'all' ({','.join(DEFAULT_SCENES)}) or 'none'")
    parser.add_argument("--clips", default="all",
                        help=f"comma-separated clip entries, 'all' ({','.join(DEFAULT_CLIPS)}), 'shared' "
                             "(every clip entry of scenes/definitions) or 'none'")
    parser.add_argument("--preset", default=None, help="fit preset (default: the fit's default)")
    parser.add_argument("--fit-override", action="append", default=[], metavar="KEY=VALUE",
                        help="dotted fit setting, e.g. full.steps=300 (repeatable)")
    parser.add_argument("--resolution", type=int, default=None, help="override the scenes' resolution")
    parser.add_argument("--frames", type=int, default=None, help="override the scenes' frame count")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--geometry-frames", default="test", choices=["test", "all", "none"])
    parser.add_argument("--skip-export", action="store_true", help="fit and eval only")
    parser.add_argument("--oracle-depth", default="none", choices=["none", "depth", "disparity"],
                        help="give each synthetic scene user depth maps made from its ground truth "
                             "(random per-frame scale, or affine of inverse depth), to measure the "
                             "depth prior's ceiling; rows are named 'SCENE + oracle KIND'")
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "benchmarks",
                        help="scenes and run directories (runs/ is git-ignored)")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--quiet", action="store_true", help="no progress lines from the steps")
    parser.add_argument("--merge", type=Path, action="append", default=[], metavar="SUITE_JSON",
                        help="keep the rows of an earlier suite.json (repeatable); items run now replace "
                             "rows of the same name")
    parser.add_argument("--dry-run", action="store_true",
                        help="check scenes, clips and imports, print the plan, run nothing")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.quiet:
        from recon4d.utils import console

        console.set_quiet(True)
    overrides = _parse_overrides(args.fit_override)

    items = plan(args)
    meta = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "commit": git_commit(),
            "machine": machine_info(), "backend": render_backend(),
            "preset": args.preset or "default", "seed": args.seed, "fit_overrides": overrides,
            "command": " ".join(["python", "benchmarks/run_suite.py", *(argv if argv is not None else sys.argv[1:])])}
    print(f"commit {meta['commit']}, backend {meta['backend']}, preset {meta['preset']}, "
          f"{meta['machine'].get('cpu', '?')} x{meta['machine'].get('cpu_count')}", flush=True)
    if args.dry_run:
        problems = [f"{i['name']}: {i['note']}" for i in items if not i["ready"]]
        for module, name in (("recon4d.train", "fit"), ("recon4d.eval", "evaluate_run"),
                             ("recon4d.scenes", "make_scene"), ("recon4d.cli.export", "run")):
            try:
                getattr(__import__(module, fromlist=[name]), name)
            except (ImportError, AttributeError) as exc:
                problems.append(f"{module}.{name} unavailable: {exc}")
        for i in items:
            print(f"  would run {i['kind']:<5} {i['name']:<24} "
                  f"{'ready' if i['ready'] else 'NOT READY: ' + i['note']}")
        for p in problems:
            print(f"problem: {p}")
        return 1 if problems else 0

    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    previous = []
    merged = []
    for path in args.merge:
        with open(path, encoding="utf-8") as handle:
            old = json.load(handle)
        old_rows = [{**_fit_settings(Path(r["run_dir"])), **r} if r.get("run_dir") else r
                    for r in old.get("rows", [])]  # rows written before preset/steps were recorded
        previous = merge_rows(old_rows, previous)  # a later --merge file wins
        old_meta = old.get("meta", {})
        merged += old.get("merged", []) + [f"{old_meta.get('command', str(path))}` (commit "
                                           f"`{old_meta.get('commit', '?')}`, {old_meta.get('date', '?')})"]
    meta["merged"] = merged
    rows = []
    for item in items:
        if not item["ready"]:
            rows.append({**item, "status": f"skipped: {item['note']}"})
            continue
        print(f"== {item['kind']} {item['name']}", flush=True)
        row = run_item(item, args, work, overrides)
        if row.get("traceback"):
            print(row["traceback"], file=sys.stderr)
        rows.append(row)
        write_results(merge_rows(rows, previous), meta, args.results)  # partial results survive a crash
    all_rows = merge_rows(rows, previous)
    print(format_table(all_rows, markdown=False))
    summary = clip_summary(all_rows)
    if summary:
        print(summary)
    write_results(all_rows, meta, args.results)
    print(f"results: {args.results / 'suite.md'}, {args.results / 'suite.json'}")
    return 0 if all(r.get("status") == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
